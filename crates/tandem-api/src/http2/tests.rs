//! The server against the `h2` crate's client: the HTTP/2 implementation tonic's and hyper's
//! clients use.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use super::*;

/// Answers with the request's own body and trailers, plus one trailer of its own; a request
/// with `x-delay-ms` waits that long first; a request with `x-fixed` is read whole and
/// answered with its body, a head field `x-head` with the same bytes, written from the body
/// ([`AnswerBody::head_fields`]), and the [`FIXED`] trailers, given as fixed ones
/// ([`AnswerBody::fixed_trailers`]); every call still running is counted in `live`.
#[derive(Clone, Default)]
struct Echo {
    live: Arc<AtomicUsize>,
}

struct Live(Arc<AtomicUsize>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

struct EchoBody {
    inner: RecvBody,
    done: bool,
    /// For `x-fixed`: the body still to send (`Some(None)` once it is out).
    fixed: Option<Option<Bytes>>,
    _live: Live,
}

/// The head field an `x-fixed` answer's body carries itself: the request's body.
static X_HEAD: HeaderName = HeaderName::from_static("x-head");

static FIXED: [(HeaderName, HeaderValue); 2] = [
    (
        HeaderName::from_static("grpc-status"),
        HeaderValue::from_static("0"),
    ),
    (
        HeaderName::from_static("x-fixed"),
        HeaderValue::from_static("yes"),
    ),
];

impl AnswerBody for EchoBody {
    fn head_fields(&self, enc: &mut hpack::Encoder, dst: &mut BytesMut) {
        if let Some(Some(body)) = &self.fixed {
            enc.header_bytes(dst, &X_HEAD, body, true);
        }
    }

    fn fixed_trailers(&self) -> Option<&'static [(HeaderName, HeaderValue)]> {
        matches!(self.fixed, Some(None)).then_some(&FIXED[..])
    }
}

impl Body for EchoBody {
    type Data = Bytes;
    type Error = StreamReset;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, StreamReset>>> {
        if let Some(data) = &mut self.fixed {
            // Polled past the data only by a server that ignores the fixed trailers.
            return Poll::Ready(data.take().map(|d| Ok(Frame::data(d))));
        }
        if self.done {
            return Poll::Ready(None);
        }
        match std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
            Some(Ok(frame)) if frame.is_data() => Poll::Ready(Some(Ok(frame))),
            Some(Ok(frame)) => {
                let mut t = frame.into_trailers().unwrap_or_default();
                t.insert("x-echo", "trailers".parse().unwrap());
                self.done = true;
                Poll::Ready(Some(Ok(Frame::trailers(t))))
            }
            None => {
                self.done = true;
                let mut t = HeaderMap::new();
                t.insert("x-echo", "end".parse().unwrap());
                Poll::Ready(Some(Ok(Frame::trailers(t))))
            }
            Some(Err(e)) => Poll::Ready(Some(Err(e))),
        }
    }
}

type EchoFuture = Pin<Box<dyn Future<Output = Result<Response<EchoBody>, Infallible>> + Send>>;

impl Service<Request<RecvBody>> for Echo {
    type Response = Response<EchoBody>;
    type Error = Infallible;
    type Future = EchoFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<RecvBody>) -> EchoFuture {
        self.live.fetch_add(1, Ordering::SeqCst);
        let live = Live(self.live.clone());
        Box::pin(async move {
            let delay = req
                .headers()
                .get("x-delay-ms")
                .and_then(|v| v.to_str().ok()?.parse().ok());
            if let Some(ms) = delay {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            let path = req.uri().path().to_owned();
            let fixed = req.headers().contains_key("x-fixed");
            let mut body = EchoBody {
                inner: req.into_body(),
                done: false,
                fixed: None,
                _live: live,
            };
            if fixed {
                let whole = std::mem::replace(&mut body.inner, RecvBody::full(None, None));
                let whole = http_body_util::BodyExt::collect(whole).await;
                body.fixed = Some(Some(whole.map(|c| c.to_bytes()).unwrap_or_default()));
            }
            Ok(Response::builder()
                .header("x-path", path)
                .body(body)
                .unwrap())
        })
    }
}

async fn start(
    echo: Echo,
) -> (
    std::net::SocketAddr,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        serve(listener, echo, async move {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    (addr, stop, server)
}

async fn client(addr: std::net::SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

fn request(path: &str) -> Request<()> {
    Request::post(format!("http://localhost{path}"))
        .header("content-type", "application/grpc")
        .body(())
        .unwrap()
}

/// Sends `body` in chunks of `chunk` bytes and reads the whole answer back.
async fn exchange(
    send: &mut h2::client::SendRequest<Bytes>,
    req: Request<()>,
    body: &[u8],
    chunk: usize,
) -> (http::response::Parts, Vec<u8>, HeaderMap) {
    let mut send = send.clone().ready().await.unwrap();
    let (resp, mut stream) = send.send_request(req, body.is_empty()).unwrap();
    let body = Bytes::copy_from_slice(body);
    let writer = async move {
        let mut at = 0;
        while at < body.len() {
            let n = chunk.min(body.len() - at);
            stream.reserve_capacity(n);
            let cap = std::future::poll_fn(|cx| stream.poll_capacity(cx))
                .await
                .unwrap()
                .unwrap();
            let n = n.min(cap);
            stream
                .send_data(body.slice(at..at + n), at + n == body.len())
                .unwrap();
            at += n;
        }
    };
    let reader = async move {
        let resp = resp.await.unwrap();
        let (parts, mut recv) = resp.into_parts();
        let mut got = Vec::new();
        while let Some(d) = recv.data().await {
            let d = d.unwrap();
            recv.flow_control().release_capacity(d.len()).unwrap();
            got.extend_from_slice(&d);
        }
        let trailers = recv.trailers().await.unwrap().unwrap_or_default();
        (parts, got, trailers)
    };
    let ((), answer) = tokio::join!(writer, reader);
    answer
}

#[tokio::test]
async fn unary_calls_on_one_connection() {
    let (addr, _stop, _) = start(Echo::default()).await;
    let mut send = client(addr).await;
    for i in 0..20 {
        let msg = format!("message {i}");
        let (parts, body, trailers) = exchange(
            &mut send,
            request("/pkg.Svc/Method"),
            msg.as_bytes(),
            1 << 20,
        )
        .await;
        assert_eq!(parts.status, 200);
        assert_eq!(parts.version, http::Version::HTTP_2);
        assert_eq!(parts.headers["x-path"], "/pkg.Svc/Method");
        assert_eq!(body, msg.as_bytes());
        assert_eq!(trailers["x-echo"], "end");
    }
    // No body at all (END_STREAM on the request's HEADERS).
    let (parts, body, trailers) = exchange(&mut send, request("/empty"), b"", 1).await;
    assert_eq!((parts.status, body.len()), (http::StatusCode::OK, 0));
    assert_eq!(trailers["x-echo"], "end");
}

#[tokio::test]
async fn head_fields_and_fixed_trailers_are_written_from_the_body() {
    let (addr, _stop, _) = start(Echo::default()).await;
    let mut send = client(addr).await;
    // Several calls on one connection: the fields go through the HPACK tables each time.
    for i in 0..5 {
        let msg = format!("fixed {i}");
        let mut req = request("/pkg.Svc/Fixed");
        req.headers_mut()
            .insert("x-fixed", HeaderValue::from_static("1"));
        let (parts, body, trailers) = exchange(&mut send, req, msg.as_bytes(), 1 << 20).await;
        assert_eq!(parts.status, 200);
        assert_eq!(parts.headers["x-head"], msg.as_str());
        assert_eq!(parts.headers["x-path"], "/pkg.Svc/Fixed");
        assert_eq!(body, msg.as_bytes());
        assert_eq!(trailers.len(), 2, "{trailers:?}");
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(trailers["x-fixed"], "yes");
        // Calls answered the usual way still work in between.
        let (parts, body, trailers) =
            exchange(&mut send, request("/pkg.Svc/Echo"), b"plain", 1 << 20).await;
        assert!(!parts.headers.contains_key("x-head"));
        assert_eq!(body, b"plain");
        assert_eq!(trailers["x-echo"], "end");
    }
}

#[tokio::test]
async fn large_bodies_stream_both_ways_under_flow_control() {
    let (addr, _stop, _) = start(Echo::default()).await;
    let mut send = client(addr).await;
    // 5 MiB: past both windows this server offers and the client's own 64 KiB default.
    let big: Vec<u8> = (0..5 << 20).map(|i: u32| (i % 251) as u8).collect();
    let calls = (0..3).map(|_| {
        let mut send = send.clone();
        let big = big.clone();
        tokio::spawn(async move {
            let (_, body, trailers) = exchange(&mut send, request("/big"), &big, 100_000).await;
            assert!(body == big, "the echoed body differs");
            assert_eq!(trailers["x-echo"], "end");
        })
    });
    for call in calls.collect::<Vec<_>>() {
        tokio::time::timeout(Duration::from_secs(60), call)
            .await
            .expect("flow control stalled")
            .unwrap();
    }
    let (_, body, _) = exchange(&mut send, request("/after"), b"still fine", 4).await;
    assert_eq!(body, b"still fine");
}

#[tokio::test]
async fn concurrent_calls_answer_out_of_order() {
    let (addr, _stop, _) = start(Echo::default()).await;
    let send = client(addr).await;
    // Two rounds on one connection: the second round's streams get the wakers the first
    // round's left, and each must still wake its own call.
    for round in 0..2u64 {
        let calls = (0..100u64).map(|i| {
            let mut send = send.clone();
            tokio::spawn(async move {
                let mut req = request("/slow");
                req.headers_mut().insert(
                    "x-delay-ms",
                    ((100 - i + round * 3) % 7 * 10)
                        .to_string()
                        .parse()
                        .unwrap(),
                );
                let msg = format!("{round} {i}");
                let (_, body, _) = exchange(&mut send, req, msg.as_bytes(), 64).await;
                assert_eq!(body, msg.as_bytes());
            })
        });
        for call in calls.collect::<Vec<_>>() {
            tokio::time::timeout(Duration::from_secs(10), call)
                .await
                .expect("a call was never woken")
                .unwrap();
        }
    }
}

#[tokio::test]
async fn client_trailers_reach_the_service() {
    let (addr, _stop, _) = start(Echo::default()).await;
    let send = client(addr).await;
    let mut send = send.ready().await.unwrap();
    let (resp, mut stream) = send.send_request(request("/t"), false).unwrap();
    stream.send_data(Bytes::from_static(b"abc"), false).unwrap();
    let mut t = HeaderMap::new();
    t.insert("x-client", "done".parse().unwrap());
    stream.send_trailers(t).unwrap();
    let (_, mut recv) = resp.await.unwrap().into_parts();
    assert_eq!(recv.data().await.unwrap().unwrap(), "abc");
    let trailers = recv.trailers().await.unwrap().unwrap();
    assert_eq!(trailers["x-client"], "done");
    assert_eq!(trailers["x-echo"], "trailers");
}

#[tokio::test]
async fn a_reset_stream_drops_its_call() {
    let echo = Echo::default();
    let live = echo.live.clone();
    let (addr, _stop, _) = start(echo).await;
    let send = client(addr).await;
    let mut send = send.ready().await.unwrap();
    // The service answers at once and then waits for the rest of the request.
    let (resp, mut stream) = send.send_request(request("/held"), false).unwrap();
    stream
        .send_data(Bytes::from_static(b"part"), false)
        .unwrap();
    let (_, mut recv) = resp.await.unwrap().into_parts();
    assert_eq!(recv.data().await.unwrap().unwrap(), "part");
    assert_eq!(live.load(Ordering::SeqCst), 1);
    stream.send_reset(h2::Reason::CANCEL);
    for _ in 0..100 {
        if live.load(Ordering::SeqCst) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        live.load(Ordering::SeqCst),
        0,
        "the call outlived its stream"
    );
    // The connection goes on.
    let (_, body, _) = exchange(&mut send, request("/next"), b"ok", 8).await;
    assert_eq!(body, b"ok");
}

#[tokio::test]
async fn a_graceful_stop_lets_calls_in_flight_finish() {
    let (addr, stop, server) = start(Echo::default()).await;
    let mut send = client(addr).await;
    let mut req = request("/slow");
    req.headers_mut()
        .insert("x-delay-ms", "300".parse().unwrap());
    let call = tokio::spawn(async move { exchange(&mut send, req, b"late", 8).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.send(()).unwrap();
    let (parts, body, _) = call.await.unwrap();
    assert_eq!(
        (parts.status, &body[..]),
        (http::StatusCode::OK, &b"late"[..])
    );
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the server did not stop after its last call")
        .unwrap();
}

#[tokio::test]
async fn protocol_errors_close_the_connection() {
    let (addr, _stop, _) = start(Echo::default()).await;
    // HTTP/1.1 on the HTTP/2 port: closed without a word.
    let said = said_before_closing(addr, &[b"GET / HTTP/1.1\r\nhost: x\r\n\r\n"]).await;
    assert!(find_frame(&said, GOAWAY).is_none());
    // A frame larger than the maximum: GOAWAY with FRAME_SIZE_ERROR, then the end.
    let said = said_before_closing(
        addr,
        &[
            PREFACE,
            &[0, 0, 0, SETTINGS, 0, 0, 0, 0, 0],
            &[0, 0x80, 0, DATA, 0, 0, 0, 0, 1],
        ],
    )
    .await;
    assert_eq!(goaway_code(&said), FRAME_SIZE_ERROR);
    // A header block that is not valid HPACK: COMPRESSION_ERROR.
    let headers = [0, 0, 1, HEADERS, END_HEADERS | END_STREAM, 0, 0, 0, 1, 0x80];
    let said = said_before_closing(addr, &[PREFACE, &headers]).await;
    assert_eq!(goaway_code(&said), COMPRESSION_ERROR);
}

/// Everything the server sends on a connection where `writes` were sent, until it closes it.
async fn said_before_closing(addr: std::net::SocketAddr, writes: &[&[u8]]) -> Vec<u8> {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    for w in writes {
        tcp.write_all(w).await.unwrap();
    }
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf))
        .await
        .expect("the connection stayed open")
        .unwrap();
    buf
}

/// Sends a PING and returns everything the server sends up to and including its answer,
/// which must carry the PING's payload.
async fn said_until_ping_answered(tcp: &mut TcpStream) -> Vec<u8> {
    tcp.write_all(&[0, 0, 8, PING, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8])
        .await
        .unwrap();
    let mut said = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
            .await
            .expect("no PING answer")
            .unwrap();
        assert!(n > 0, "the connection closed");
        said.extend_from_slice(&buf[..n]);
        if let Some(ping) = find_frame(&said, PING) {
            assert_eq!(ping, [1, 2, 3, 4, 5, 6, 7, 8]);
            return said;
        }
    }
}

/// The error code of the GOAWAY in `said`.
fn goaway_code(said: &[u8]) -> u32 {
    let goaway = find_frame(said, GOAWAY).expect("no GOAWAY");
    u32::from_be_bytes(goaway[4..8].try_into().unwrap())
}

/// The payload of the first frame of `kind` in `buf`.
fn find_frame(mut buf: &[u8], kind: u8) -> Option<&[u8]> {
    while buf.len() >= 9 {
        let len = (usize::from(buf[0]) << 16) | (usize::from(buf[1]) << 8) | usize::from(buf[2]);
        let payload = buf.get(9..9 + len)?;
        if buf[3] == kind {
            return Some(payload);
        }
        buf = &buf[9 + len..];
    }
    None
}

#[tokio::test]
async fn a_malformed_request_is_refused_alone() {
    let (addr, _stop, _) = start(Echo::default()).await;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(PREFACE).await.unwrap();
    tcp.write_all(&[0, 0, 0, SETTINGS, 0, 0, 0, 0, 0])
        .await
        .unwrap();
    // :method POST, :path missing, then an uppercase field name.
    let block = [0x83, 0x00, 0x01, b'X', 0x01, b'y'];
    let mut frame = vec![
        0,
        0,
        block.len() as u8,
        HEADERS,
        END_HEADERS | END_STREAM,
        0,
        0,
        0,
        1,
    ];
    frame.extend_from_slice(&block);
    tcp.write_all(&frame).await.unwrap();
    // A PING still gets its answer: the connection is fine.
    let got = said_until_ping_answered(&mut tcp).await;
    let rst = find_frame(&got, RST_STREAM).expect("no RST_STREAM");
    assert_eq!(u32::from_be_bytes(rst.try_into().unwrap()), PROTOCOL_ERROR);
}

/// HEADERS (the request still open) then RST_STREAM (CANCEL) for `n` streams.
fn open_and_cancel(n: u32) -> Vec<u8> {
    let block = [0x83, 0x86, 0x84]; // :method POST, :scheme http, :path /
    let mut buf = Vec::new();
    for i in 0..n {
        let id = (1 + 2 * i).to_be_bytes();
        buf.extend_from_slice(&[0, 0, block.len() as u8, HEADERS, END_HEADERS]);
        buf.extend_from_slice(&id);
        buf.extend_from_slice(&block);
        buf.extend_from_slice(&[0, 0, 4, RST_STREAM, 0]);
        buf.extend_from_slice(&id);
        buf.extend_from_slice(&8u32.to_be_bytes());
    }
    buf
}

#[tokio::test]
async fn rapid_resets_close_the_connection() {
    let (addr, _stop, _) = start(Echo::default()).await;
    let settings = [0, 0, 0, SETTINGS, 0, 0, 0, 0, 0];
    // Up to the limit, cancelled calls are fine: the connection still answers a PING.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(PREFACE).await.unwrap();
    tcp.write_all(&settings).await.unwrap();
    tcp.write_all(&open_and_cancel(MAX_RESET_DEBT))
        .await
        .unwrap();
    let said = said_until_ping_answered(&mut tcp).await;
    assert!(find_frame(&said, GOAWAY).is_none());
    // One more: GOAWAY with ENHANCE_YOUR_CALM, then the end.
    let said = said_before_closing(
        addr,
        &[PREFACE, &settings, &open_and_cancel(MAX_RESET_DEBT + 1)],
    )
    .await;
    assert_eq!(goaway_code(&said), ENHANCE_YOUR_CALM);
}
