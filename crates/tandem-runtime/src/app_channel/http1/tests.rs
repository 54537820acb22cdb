//! The client against an independent HTTP/1.1 server (hyper's), and against scripted answers
//! for the framings a server may choose.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};

use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::*;
use crate::app_channel::full_body;

/// A request body fed through a channel, of unknown length.
struct Streamed(mpsc::Receiver<Bytes>);

impl hyper::body::Body for Streamed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

fn streamed() -> (mpsc::Sender<Bytes>, AppBody) {
    let (tx, rx) = mpsc::channel(4);
    (tx, Streamed(rx).boxed_unsync())
}

/// A hyper HTTP/1.1 server that echoes the request body and reports the request's framing
/// and `Host` in headers; returns its address and the count of accepted connections.
async fn echo_server() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (io, _) = listener.accept().await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let service = service_fn(|req: Request<hyper::body::Incoming>| async move {
                    let framing = if req.headers().contains_key(http::header::TRANSFER_ENCODING) {
                        "chunked".to_owned()
                    } else {
                        req.headers()
                            .get(http::header::CONTENT_LENGTH)
                            .map_or("none".to_owned(), |v| v.to_str().unwrap().to_owned())
                    };
                    let host = req.headers()[http::header::HOST].clone();
                    let path = req.uri().to_string();
                    let method = req.method().to_string();
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    let mut resp = Response::new(Full::new(body));
                    let h = resp.headers_mut();
                    h.insert("x-framing", framing.parse().unwrap());
                    h.insert("x-host", host);
                    h.insert("x-path", path.parse().unwrap());
                    h.insert("x-method", method.parse().unwrap());
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(io), service)
                    .await;
            });
        }
    });
    (port, accepted)
}

/// A server that reads one request head per answer and writes the scripted answers, in the
/// given pieces, one connection after another; counts connections.
async fn scripted(answers: Vec<Vec<&'static [u8]>>, close_after: bool) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut answers = answers.into_iter();
        'conns: loop {
            let (mut io, _) = listener.accept().await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            loop {
                let Some(answer) = answers.next() else {
                    break 'conns;
                };
                // Read up to the end of the request head (the tests send no bodies here).
                let mut seen = Vec::new();
                while !seen.ends_with(b"\r\n\r\n") {
                    let mut b = [0u8; 1];
                    if io.read(&mut b).await.unwrap_or(0) == 0 {
                        continue 'conns;
                    }
                    seen.push(b[0]);
                }
                for piece in answer {
                    io.write_all(piece).await.unwrap();
                    io.flush().await.unwrap();
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                if close_after {
                    break;
                }
            }
        }
    });
    (port, accepted)
}

async fn body_of(resp: Response<Body>) -> Result<Bytes, BoxError> {
    Ok(resp.into_body().collect().await?.to_bytes())
}

fn post(body: AppBody) -> Request<AppBody> {
    let mut req = Request::new(body);
    *req.method_mut() = Method::POST;
    req
}

#[tokio::test]
async fn calls_reuse_one_connection_and_bodies_come_back() {
    let (port, accepted) = echo_server().await;
    let pool = Arc::new(Pool::new("127.0.0.1", port));
    for i in 0..20 {
        let payload = Bytes::from(vec![b'a' + (i % 26) as u8; 1024 + i]);
        let resp = pool
            .send(post(full_body(payload.clone())), &format!("/echo/{i}?q=1"))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["x-framing"], (1024 + i).to_string().as_str());
        assert_eq!(
            resp.headers()["x-host"],
            format!("127.0.0.1:{port}").as_str()
        );
        assert_eq!(resp.headers()["x-path"], format!("/echo/{i}?q=1").as_str());
        assert_eq!(resp.headers()["x-method"], "POST");
        assert_eq!(body_of(resp).await.unwrap(), payload);
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);

    // An empty GET carries no framing header.
    let resp = pool.send(Request::new(full_body("")), "/").await.unwrap();
    assert_eq!(resp.headers()["x-framing"], "none");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn concurrent_calls_get_their_own_answers() {
    let (port, accepted) = echo_server().await;
    let pool = Arc::new(Pool::new("127.0.0.1", port));
    let calls = (0..30).map(|i| {
        let pool = pool.clone();
        tokio::spawn(async move {
            let payload = format!("call {i}");
            let resp = pool
                .send(post(full_body(payload.clone())), "/")
                .await
                .unwrap();
            assert_eq!(body_of(resp).await.unwrap(), payload);
        })
    });
    for call in calls.collect::<Vec<_>>() {
        call.await.unwrap();
    }
    let opened = accepted.load(Ordering::SeqCst);
    assert!((1..=30).contains(&opened), "{opened} connections");
    // Later calls reuse the idle connections.
    for _ in 0..10 {
        let resp = pool.send(post(full_body("again")), "/").await.unwrap();
        assert_eq!(body_of(resp).await.unwrap(), "again");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), opened);
}

#[tokio::test]
async fn long_bodies_stream_both_ways() {
    let (port, accepted) = echo_server().await;
    let pool = Arc::new(Pool::new("127.0.0.1", port));

    // Unknown length: chunked.
    let (tx, body) = streamed();
    let feeder = tokio::spawn(async move {
        for i in 0..48u8 {
            tx.send(Bytes::from(vec![i; 64 * 1024])).await.unwrap();
        }
    });
    let resp = pool.send(post(body), "/").await.unwrap();
    assert_eq!(resp.headers()["x-framing"], "chunked");
    let got = body_of(resp).await.unwrap();
    feeder.await.unwrap();
    assert_eq!(got.len(), 48 * 64 * 1024);
    assert!(
        got.chunks(64 * 1024)
            .enumerate()
            .all(|(i, c)| c.iter().all(|&b| b == i as u8))
    );

    // Known length past the buffered size: streamed after the head.
    let payload = Bytes::from((0..300_000u32).map(|i| i as u8).collect::<Vec<_>>());
    let resp = pool
        .send(post(full_body(payload.clone())), "/")
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-framing"], "300000");
    assert_eq!(body_of(resp).await.unwrap(), payload);
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn chunked_answers_with_trailers_split_across_reads() {
    let answer: Vec<&'static [u8]> = vec![
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-a: 1\r\n",
        b"\r\n5\r\nhel",
        b"lo\r\n6;ext=1\r\n world\r",
        b"\n0\r\nx-trailer: t\r\n",
        b"\r\n",
    ];
    let (port, accepted) = scripted(vec![answer.clone(), answer], false).await;
    let pool = Arc::new(Pool::new("127.0.0.1", port));
    for _ in 0..2 {
        let resp = pool.send(Request::new(full_body("")), "/").await.unwrap();
        assert_eq!(resp.headers()["x-a"], "1");
        assert_eq!(body_of(resp).await.unwrap(), "hello world");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn interim_heads_are_skipped_and_bodiless_answers_end_at_once() {
    let (port, accepted) = scripted(
        vec![
            vec![
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok",
            ],
            vec![b"HTTP/1.1 204 No Content\r\n\r\n"],
            vec![b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n"],
            vec![b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nend"],
        ],
        false,
    )
    .await;
    let pool = Arc::new(Pool::new("127.0.0.1", port));
    let resp = pool.send(post(full_body("x")), "/").await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(body_of(resp).await.unwrap(), "ok");
    let resp = pool.send(Request::new(full_body("")), "/").await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(body_of(resp).await.unwrap(), "");
    let mut head = Request::new(full_body(""));
    *head.method_mut() = Method::HEAD;
    let resp = pool.send(head, "/").await.unwrap();
    assert_eq!(resp.headers()[http::header::CONTENT_LENGTH], "10");
    assert_eq!(body_of(resp).await.unwrap(), "");
    let resp = pool.send(Request::new(full_body("")), "/").await.unwrap();
    assert_eq!(body_of(resp).await.unwrap(), "end");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_answer_without_length_ends_with_its_connection() {
    let (port, accepted) = scripted(
        vec![
            vec![b"HTTP/1.1 200 OK\r\n\r\nuntil ", b"close"],
            vec![b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 4\r\n\r\nnext"],
            vec![b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nthird"],
        ],
        true,
    )
    .await;
    let pool = Arc::new(Pool::new("127.0.0.1", port));
    let resp = pool.send(Request::new(full_body("")), "/").await.unwrap();
    assert_eq!(body_of(resp).await.unwrap(), "until close");
    let resp = pool.send(Request::new(full_body("")), "/").await.unwrap();
    assert_eq!(body_of(resp).await.unwrap(), "next");
    let resp = pool.send(Request::new(full_body("")), "/").await.unwrap();
    assert_eq!(body_of(resp).await.unwrap(), "third");
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_connection_the_app_closed_is_not_used() {
    // The server answers and then closes without saying so.
    let answer: Vec<&'static [u8]> = vec![b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"];
    let (port, accepted) = scripted(vec![answer.clone(), answer.clone(), answer], true).await;
    let pool = Arc::new(Pool::new("127.0.0.1", port));
    for i in 1..=3 {
        // A POST is not sent twice, so the closed connection must be noticed before use. (No
        // body: the server reads none, and unread bytes would make its close a reset, which
        // fails the write and is retried.)
        let resp = pool.send(post(full_body("")), "/").await.unwrap();
        assert_eq!(body_of(resp).await.unwrap(), "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), i);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_body_dropped_early_closes_its_connection() {
    let (port, accepted) = echo_server().await;
    let pool = Arc::new(Pool::new("127.0.0.1", port));
    let payload = Bytes::from(vec![7u8; 2 << 20]);
    let resp = pool.send(post(full_body(payload)), "/").await.unwrap();
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.is_data());
    drop(body);
    let resp = pool.send(post(full_body("after")), "/").await.unwrap();
    assert_eq!(body_of(resp).await.unwrap(), "after");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn failures_are_errors_not_hangs() {
    // Nothing listens.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let pool = Arc::new(Pool::new("127.0.0.1", port));
    let err = pool
        .send(Request::new(full_body("")), "/")
        .await
        .unwrap_err();
    assert!(err.contains("connecting to 127.0.0.1"), "{err}");

    // Not HTTP.
    let (port, _) = scripted(vec![vec![b"SSH-2.0-OpenSSH\r\n\r\n"]], true).await;
    let pool = Arc::new(Pool::new("127.0.0.1", port));
    let err = pool
        .send(Request::new(full_body("")), "/")
        .await
        .unwrap_err();
    assert!(err.contains("invalid answer"), "{err}");

    // A body cut short.
    let (port, _) = scripted(
        vec![vec![b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort"]],
        true,
    )
    .await;
    let pool = Arc::new(Pool::new("127.0.0.1", port));
    let resp = pool.send(Request::new(full_body("")), "/").await.unwrap();
    let err = body_of(resp).await.unwrap_err().to_string();
    assert!(err.contains("before the answer's body ended"), "{err}");

    // A request whose stated length is not its body's, and a path that would split the line.
    let (port, _) = echo_server().await;
    let pool = Arc::new(Pool::new("127.0.0.1", port));
    let mut req = post(full_body("abc"));
    req.headers_mut()
        .insert(http::header::CONTENT_LENGTH, HeaderValue::from_static("5"));
    let err = pool.send(req, "/").await.unwrap_err();
    assert!(err.contains("ended after 3 of 5 bytes"), "{err}");
    let err = pool
        .send(Request::new(full_body("")), "/a b\r\nx: y")
        .await
        .unwrap_err();
    assert!(err.contains("invalid path"), "{err}");
    // The pool still works.
    let resp = pool.send(post(full_body("fine")), "/").await.unwrap();
    assert_eq!(body_of(resp).await.unwrap(), "fine");
}
