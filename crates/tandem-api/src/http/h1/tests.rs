//! The server against hyper's HTTP/1.1 client (an independent implementation) and against
//! scripted bytes on raw sockets.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body as AxumBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

const WAIT: Duration = Duration::from_secs(10);

/// Echoes each request: method, path and query, version and selected headers in
/// `x-echo-*` fields, the body as the answer's body. `/stream` answers with a body of
/// unknown length, `/empty` with 204, `/ignore` without reading the body, `/hang` never.
async fn echo(req: Request<RequestBody>) -> Result<Response<AxumBody>, Infallible> {
    let path = req.uri().path().to_owned();
    let mut answer = Response::builder()
        .header("x-echo-method", req.method().as_str())
        .header("x-echo-uri", req.uri().to_string())
        .header("x-echo-version", format!("{:?}", req.version()))
        .header(
            "x-echo-fields",
            req.headers()
                .get_all("x-field")
                .iter()
                .map(|v| v.to_str().unwrap_or("?"))
                .collect::<Vec<_>>()
                .join("|"),
        );
    match path.as_str() {
        "/empty" => {
            answer = answer.status(StatusCode::NO_CONTENT);
            return Ok(answer.body(AxumBody::empty()).unwrap());
        }
        "/ignore" => return Ok(answer.body(AxumBody::from("ignored")).unwrap()),
        "/hang" => std::future::pending::<()>().await,
        "/hold" => {
            // Reads the body to its end but keeps it for a while after answering.
            let mut body = req.into_body();
            let mut len = 0;
            while let Some(frame) = body.frame().await {
                len += frame.unwrap().into_data().map_or(0, |d| d.len());
            }
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                drop(body);
            });
            return Ok(answer.body(AxumBody::from(len.to_string())).unwrap());
        }
        _ => {}
    }
    let body = match req.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => {
            return Ok(Response::builder()
                .status(StatusCode::BAD_REQUEST)
                .body(AxumBody::from(format!("body: {e}")))
                .unwrap());
        }
    };
    if path == "/stream" {
        let pieces: Vec<Result<Frame<Bytes>, Infallible>> = vec![
            Ok(Frame::data(Bytes::from_static(b"one,"))),
            Ok(Frame::data(body)),
            Ok(Frame::data(Bytes::from_static(b",three"))),
        ];
        let stream = StreamBody::new(futures_util::stream::iter(pieces));
        return Ok(answer.body(AxumBody::new(stream)).unwrap());
    }
    Ok(answer.body(AxumBody::from(body)).unwrap())
}

/// A server on a free port; each connection on its own task. The sender stops it.
async fn server() -> (u16, watch::Sender<bool>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, stopped) = watch::channel(false);
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve_connection(
                tcp,
                tower::service_fn(echo),
                stopped.clone(),
            ));
        }
    });
    (port, stop, accepted)
}

async fn raw(port: u16) -> TcpStream {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    tcp
}

/// Reads until the peer closes the connection.
async fn read_to_close(tcp: &mut TcpStream) -> String {
    let mut all = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut all))
        .await
        .expect("the server did not close the connection")
        .unwrap();
    String::from_utf8_lossy(&all).into_owned()
}

/// Reads until `all` holds `n` complete answers with `content-length` bodies (or one ends
/// with a `0` chunk), returning what was read.
async fn read_answers(tcp: &mut TcpStream, n: usize) -> String {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if complete_answers(&all) >= n {
            return String::from_utf8_lossy(&all).into_owned();
        }
        let read = tokio::time::timeout(WAIT, tcp.read(&mut buf))
            .await
            .expect("no answer")
            .unwrap();
        assert!(
            read > 0,
            "closed early after: {}",
            String::from_utf8_lossy(&all)
        );
        all.extend_from_slice(&buf[..read]);
    }
}

fn complete_answers(mut all: &[u8]) -> usize {
    let mut n = 0;
    loop {
        let mut fields = [httparse::EMPTY_HEADER; 32];
        let mut answer = httparse::Response::new(&mut fields);
        let Ok(httparse::Status::Complete(len)) = answer.parse(all) else {
            return n;
        };
        if answer.code == Some(100) {
            all = &all[len..];
            continue;
        }
        let length = answer
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .map_or(0, |h| {
                std::str::from_utf8(h.value)
                    .unwrap()
                    .parse::<usize>()
                    .unwrap()
            });
        let chunked = answer
            .headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case("transfer-encoding"));
        let rest = &all[len..];
        let end = if chunked {
            match rest.windows(5).position(|w| w == b"0\r\n\r\n") {
                Some(at) => at + 5,
                None => return n,
            }
        } else if rest.len() >= length {
            length
        } else {
            return n;
        };
        n += 1;
        all = &rest[end..];
    }
}

#[tokio::test]
async fn keep_alive_with_hyper_client() {
    let (port, _stop, accepted) = server().await;
    let io = TokioIo::new(raw(port).await);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    for i in 0..20 {
        let body = format!("body number {i}");
        let req = Request::post(format!("/v1.0/state/s/k{i}?a=b"))
            .header("x-field", "one")
            .header("x-field", "two")
            .body(AxumBody::from(body.clone()))
            .unwrap();
        let answer = sender.send_request(req).await.unwrap();
        assert_eq!(answer.status(), StatusCode::OK);
        assert_eq!(answer.headers()["x-echo-method"], "POST");
        assert_eq!(
            answer.headers()["x-echo-uri"],
            format!("/v1.0/state/s/k{i}?a=b")
        );
        assert_eq!(answer.headers()["x-echo-version"], "HTTP/1.1");
        assert_eq!(answer.headers()["x-echo-fields"], "one|two");
        assert_eq!(answer.headers()["content-length"], body.len().to_string());
        assert!(answer.headers().contains_key("date"));
        let got = answer.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(got, body.as_bytes());
    }
    // Chunked both ways, with a body that arrives in pieces.
    let pieces: Vec<Result<Frame<Bytes>, Infallible>> = (0..50)
        .map(|i| Ok(Frame::data(Bytes::from(vec![b'a' + (i % 26) as u8; 3000]))))
        .collect();
    let req = Request::post("/stream")
        .body(AxumBody::new(StreamBody::new(futures_util::stream::iter(
            pieces,
        ))))
        .unwrap();
    let answer = sender.send_request(req).await.unwrap();
    assert_eq!(answer.headers()["transfer-encoding"], "chunked");
    let got = answer.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(got.len(), 4 + 150_000 + 6);
    assert!(got.starts_with(b"one,aaa") && got.ends_with(b"xxx,three"));
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let (port, _stop, _) = server().await;
    let mut tcp = raw(port).await;
    tcp.write_all(
        b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nxyzGET /empty HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await
    .unwrap();
    let all = read_answers(&mut tcp, 3).await;
    let a = all.find("x-echo-uri: /a").unwrap();
    let b = all.find("x-echo-uri: /b").unwrap();
    let c = all.find("HTTP/1.1 204 No Content").unwrap();
    assert!(a < b && b < c, "{all}");
    assert!(all.contains("\r\n\r\nxyz"), "{all}");
    let empty = &all[c..];
    assert!(!empty.contains("content-length"), "{empty}");
}

#[tokio::test]
async fn chunked_request_split_across_writes() {
    let (port, _stop, _) = server().await;
    let mut tcp = raw(port).await;
    let wire: &[u8] = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: t\r\n\r\n";
    for piece in wire.chunks(7) {
        tcp.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let all = read_answers(&mut tcp, 1).await;
    assert!(all.starts_with("HTTP/1.1 200 OK\r\n"), "{all}");
    assert!(all.ends_with("\r\n\r\nhello world"), "{all}");
    // The connection carries on.
    tcp.write_all(b"GET /again HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let all = read_answers(&mut tcp, 1).await;
    assert!(all.contains("x-echo-uri: /again"), "{all}");
}

#[tokio::test]
async fn expect_continue_is_answered_when_the_body_is_read() {
    let (port, _stop, _) = server().await;
    let mut tcp = raw(port).await;
    tcp.write_all(
        b"PUT /up HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], b"HTTP/1.1 100 Continue\r\n\r\n");
    tcp.write_all(b"hello").await.unwrap();
    let all = read_answers(&mut tcp, 1).await;
    assert!(
        all.starts_with("HTTP/1.1 200 OK\r\n") && all.ends_with("hello"),
        "{all}"
    );

    // A service that answers without reading: no 100, and the connection closes after the
    // answer since the client may or may not send the body.
    tcp.write_all(
        b"PUT /ignore HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    let all = read_to_close(&mut tcp).await;
    assert!(all.starts_with("HTTP/1.1 200 OK\r\n"), "{all}");
    assert!(
        all.contains("connection: close\r\n") || all.ends_with("ignored"),
        "{all}"
    );
    assert!(!all.contains("100 Continue"), "{all}");
}

#[tokio::test]
async fn http_1_0_closes_unless_kept_alive() {
    let (port, _stop, _) = server().await;
    let mut tcp = raw(port).await;
    tcp.write_all(b"GET /old HTTP/1.0\r\n\r\n").await.unwrap();
    let all = read_to_close(&mut tcp).await;
    assert!(all.starts_with("HTTP/1.0 200 OK\r\n"), "{all}");
    assert!(all.contains("x-echo-version: HTTP/1.0"), "{all}");

    let mut tcp = raw(port).await;
    tcp.write_all(b"GET /old HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .await
        .unwrap();
    let all = read_answers(&mut tcp, 1).await;
    assert!(all.contains("connection: keep-alive\r\n"), "{all}");
    // An answer of unknown length ends with the connection.
    tcp.write_all(
        b"POST /stream HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 3\r\n\r\ntwo",
    )
    .await
    .unwrap();
    let all = read_to_close(&mut tcp).await;
    assert!(!all.contains("transfer-encoding"), "{all}");
    assert!(all.ends_with("\r\n\r\none,two,three"), "{all}");
}

#[tokio::test]
async fn bad_requests_are_refused_and_closed() {
    let (port, _stop, _) = server().await;
    let many: String = (0..120).map(|i| format!("x-f{i}: v\r\n")).collect();
    let long = format!(
        "GET / HTTP/1.1\r\nx-long: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"NOT HTTP AT ALL\r\n\r\n".to_vec(), "400"),
        (b"GET / HTTP/1.1\r\nbad header\r\n\r\n".to_vec(), "400"),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
            "400",
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec(),
            "400",
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 1, 2\r\n\r\n".to_vec(),
            "400",
        ),
        (format!("GET / HTTP/1.1\r\n{many}\r\n").into_bytes(), "431"),
        (long.into_bytes(), "431"),
    ];
    for (wire, status) in cases {
        let mut tcp = raw(port).await;
        // The server may answer and close before the whole head is written.
        let _ = tcp.write_all(&wire).await;
        let all = read_to_close(&mut tcp).await;
        assert!(
            all.starts_with(&format!("HTTP/1.1 {status} ")),
            "{status}: {all}"
        );
        assert!(all.contains("connection: close\r\n"), "{all}");
    }
    // A bad chunk reaches the service as a body error.
    let mut tcp = raw(port).await;
    tcp.write_all(b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
        .await
        .unwrap();
    let all = read_to_close(&mut tcp).await;
    assert!(all.starts_with("HTTP/1.1 400 "), "{all}");
    assert!(all.contains("invalid chunk size"), "{all}");
}

#[tokio::test]
async fn head_and_no_content_answers_have_no_body() {
    let (port, _stop, _) = server().await;
    let mut tcp = raw(port).await;
    tcp.write_all(b"HEAD /x HTTP/1.1\r\nHost: x\r\n\r\nGET /y HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // The first answer states a length of 0 (an empty echo) and has no body; the second follows.
    let all = read_answers(&mut tcp, 2).await;
    let second = all
        .find("HTTP/1.1 200 OK\r\n")
        .map(|first| all[first + 1..].find("HTTP/1.1 200 OK\r\n").unwrap() + first + 1);
    let second = second.unwrap();
    assert!(all[..second].ends_with("\r\n\r\n"), "{all}");
    assert!(all[second..].contains("x-echo-uri: /y"), "{all}");
}

#[tokio::test]
async fn long_bodies_stream_and_unread_ones_close_the_connection() {
    let (port, _stop, accepted) = server().await;
    let io = TokioIo::new(raw(port).await);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let big = Bytes::from(vec![7u8; 300 * 1024]);
    for _ in 0..3 {
        let req = Request::put("/echo").body(Full::new(big.clone())).unwrap();
        let answer = sender.send_request(req).await.unwrap();
        assert_eq!(answer.into_body().collect().await.unwrap().to_bytes(), big);
    }
    // A body read to its end but still held after the answer leaves the connection usable.
    for _ in 0..2 {
        let req = Request::put("/hold").body(Full::new(big.clone())).unwrap();
        let answer = sender.send_request(req).await.unwrap();
        assert!(!answer.headers().contains_key("connection"));
        let got = answer.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(got, big.len().to_string().as_bytes());
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);

    // 300 KiB the service never reads: the answer goes out, then the connection closes.
    let mut tcp = raw(port).await;
    let head = format!(
        "PUT /ignore HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        big.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let _ = tcp.write_all(&big[..1000]).await;
    let all = read_to_close(&mut tcp).await;
    assert!(
        all.starts_with("HTTP/1.1 200 OK\r\n") && all.ends_with("ignored"),
        "{all}"
    );
}

#[tokio::test]
async fn a_client_that_goes_away_cancels_its_call() {
    struct Dropped(Arc<AtomicBool>);
    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = dropped.clone();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (_stop, stopped) = watch::channel(false);
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let service = tower::service_fn(move |_req: Request<RequestBody>| {
            let guard = Dropped(flag.clone());
            async move {
                std::future::pending::<()>().await;
                drop(guard);
                Ok::<_, Infallible>(Response::new(AxumBody::empty()))
            }
        });
        serve_connection(tcp, service, stopped).await;
    });
    let mut tcp = raw(port).await;
    tcp.write_all(b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!dropped.load(Ordering::SeqCst));
    drop(tcp);
    tokio::time::timeout(WAIT, async {
        while !dropped.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the call was not cancelled");
}

#[tokio::test]
async fn stopping_closes_idle_connections_and_busy_ones_after_their_answer() {
    let (port, stop, _) = server().await;
    let mut idle = raw(port).await;
    idle.write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    read_answers(&mut idle, 1).await;
    // A request whose body is still coming when the server stops.
    let mut busy = raw(port).await;
    busy.write_all(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    stop.send_replace(true);
    assert_eq!(read_to_close(&mut idle).await, "");
    busy.write_all(b"0\r\n\r\n").await.unwrap();
    let all = read_to_close(&mut busy).await;
    assert!(all.starts_with("HTTP/1.1 200 OK\r\n"), "{all}");
    assert!(
        all.contains("connection: close\r\n") && all.ends_with("abc"),
        "{all}"
    );
}

/// A request head must arrive within `HEAD_TIMEOUT` (daprd's `ReadHeaderTimeout`): counted
/// from the connection's start for its first request, from the head's first byte for the
/// next ones, and not restarted by each piece. An idle connection between requests stays.
#[tokio::test(start_paused = true)]
async fn slow_request_heads_are_cut_off_and_idle_connections_are_not() {
    let (port, _stop, _) = server().await;
    let second = Duration::from_secs(1);
    let mut buf = [0u8; 256];

    // Nothing at all: closed once the time has passed, and not before.
    let mut silent = raw(port).await;
    let early = tokio::time::timeout(HEAD_TIMEOUT - second, silent.read(&mut buf)).await;
    assert!(early.is_err(), "closed too early: {early:?}");
    let later = tokio::time::timeout(2 * second, silent.read(&mut buf)).await;
    assert!(matches!(later, Ok(Ok(0))), "not closed: {later:?}");

    // A head in pieces, all within the time: served.
    let mut patient = raw(port).await;
    for piece in ["GET /pieces HT", "TP/1.1\r\nHo", "st: x\r\n", "\r\n"] {
        patient.write_all(piece.as_bytes()).await.unwrap();
        tokio::time::sleep(3 * second).await;
    }
    let all = read_answers(&mut patient, 1).await;
    assert!(all.contains("x-echo-uri: /pieces"), "{all}");

    // Idle between requests for a minute: still served.
    tokio::time::sleep(60 * second).await;
    patient
        .write_all(b"GET /again HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let all = read_answers(&mut patient, 1).await;
    assert!(all.contains("x-echo-uri: /again"), "{all}");

    // The next head, in pieces that keep coming but add up to too long: cut off without an
    // answer, the time counted from its first byte.
    tokio::time::sleep(60 * second).await;
    for piece in ["GET /slow HT", "TP/1.1\r\nHo", "st: x\r\n"] {
        patient.write_all(piece.as_bytes()).await.unwrap();
        tokio::time::sleep(4 * second).await;
    }
    let cut = tokio::time::timeout(2 * second, patient.read(&mut buf)).await;
    assert!(matches!(cut, Ok(Ok(0))), "not cut off: {cut:?}");
}
