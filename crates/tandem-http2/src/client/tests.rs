//! The client against an independent HTTP/2 server (the `h2` crate's).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use http_body::Frame;
use http_body_util::BodyExt;
use tokio::net::TcpListener;

use super::*;

/// A request body: whole, or fed through a channel.
struct TestBody {
    full: Option<Bytes>,
    rx: Option<mpsc::Receiver<Bytes>>,
}

impl TestBody {
    fn full(b: impl Into<Bytes>) -> Self {
        let b = b.into();
        TestBody {
            full: Some(b).filter(|b| !b.is_empty()),
            rx: None,
        }
    }

    fn channel() -> (mpsc::Sender<Bytes>, Self) {
        let (tx, rx) = mpsc::channel(4);
        (
            tx,
            TestBody {
                full: None,
                rx: Some(rx),
            },
        )
    }
}

impl Body for TestBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(b) = self.full.take() {
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        match &mut self.rx {
            Some(rx) => rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b)))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.full.is_none() && self.rx.is_none()
    }
}

/// What the test server saw.
#[derive(Default)]
struct Seen {
    connections: AtomicUsize,
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
    resets: AtomicUsize,
}

/// An `h2` server that echoes every request: status 200, `x-path` set to the request's path,
/// the body streamed back as it arrives, and trailers when the request has `want-trailers`.
/// `x-delay-ms` delays the answer; `x-hold` sends one chunk, then waits for the client to
/// reset the stream; `x-close` closes the connection instead of answering.
async fn echo_server(max_streams: Option<u32>) -> (SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            s.connections.fetch_add(1, Ordering::SeqCst);
            let seen = s.clone();
            tokio::spawn(async move {
                let mut builder = h2::server::Builder::new();
                if let Some(n) = max_streams {
                    builder.max_concurrent_streams(n);
                }
                let mut conn = builder.handshake::<_, Bytes>(tcp).await.unwrap();
                while let Some(Ok((req, respond))) = conn.accept().await {
                    if req.headers().contains_key("x-close") {
                        return;
                    }
                    tokio::spawn(echo(req, respond, seen.clone()));
                }
            });
        }
    });
    (addr, seen)
}

async fn echo(
    req: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    seen: Arc<Seen>,
) {
    let now = seen.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    seen.most_in_flight.fetch_max(now, Ordering::SeqCst);
    let (parts, mut body) = req.into_parts();
    if let Some(ms) = parts.headers.get("x-delay-ms") {
        let ms: u64 = ms.to_str().unwrap().parse().unwrap();
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let resp = http::Response::builder()
        .status(200)
        .header("x-path", parts.uri.path_and_query().unwrap().as_str())
        .body(())
        .unwrap();
    let mut send = respond.send_response(resp, false).unwrap();
    if parts.headers.contains_key("x-hold") {
        send.send_data(Bytes::from_static(b"first"), false).unwrap();
        let reset = std::future::poll_fn(|cx| send.poll_reset(cx)).await;
        if reset.is_ok() {
            seen.resets.fetch_add(1, Ordering::SeqCst);
        }
        seen.in_flight.fetch_sub(1, Ordering::SeqCst);
        return;
    }
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        send.send_data(chunk, false).unwrap();
    }
    seen.in_flight.fetch_sub(1, Ordering::SeqCst);
    if parts.headers.contains_key("want-trailers") {
        let mut t = HeaderMap::new();
        t.insert("x-trailer", "done".parse().unwrap());
        send.send_trailers(t).unwrap();
    } else {
        send.send_data(Bytes::new(), true).unwrap();
    }
}

fn request(path: &str, body: TestBody) -> Request<TestBody> {
    let mut req = Request::new(body);
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = path.parse().unwrap();
    req
}

/// A call to `/slow` that the echo server answers after `ms` milliseconds.
fn delayed(body: TestBody, ms: &'static str) -> Request<TestBody> {
    let mut req = request("/slow", body);
    req.headers_mut()
        .insert("x-delay-ms", http::HeaderValue::from_static(ms));
    req
}

/// Sends `req` to `address`, which must answer.
async fn answered(
    client: &Client<TestBody>,
    address: &str,
    req: Request<TestBody>,
) -> Response<RecvBody> {
    client
        .send(address, req)
        .await
        .map_err(SendError::into_error)
        .unwrap()
}

async fn body_of(resp: Response<RecvBody>) -> Bytes {
    resp.into_body().collect().await.unwrap().to_bytes()
}

#[tokio::test]
async fn concurrent_calls_share_one_connection_and_each_gets_its_own_answer() {
    let (addr, seen) = echo_server(None).await;
    let client = Arc::new(Client::<TestBody>::default());
    let address = addr.to_string();
    let calls = (0..50).map(|i| {
        let (client, address) = (client.clone(), address.clone());
        tokio::spawn(async move {
            let path = format!("/method/{i}?q={i}");
            let body = format!("body of call {i}").repeat(i % 7 + 1);
            let resp = answered(
                &client,
                &address,
                request(&path, TestBody::full(body.clone())),
            )
            .await;
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.headers()["x-path"], path.as_str());
            assert_eq!(body_of(resp).await, body);
        })
    });
    for call in calls.collect::<Vec<_>>() {
        call.await.unwrap();
    }
    // An empty body too.
    let resp = answered(&client, &address, request("/empty", TestBody::full(""))).await;
    assert_eq!(body_of(resp).await, "");
    assert_eq!(seen.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn large_bodies_stream_both_ways_under_flow_control() {
    let (addr, _) = echo_server(None).await;
    let client = Client::<TestBody>::default();
    let (tx, body) = TestBody::channel();
    let chunk: Bytes = (0..65_536)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into();
    // 6 MiB: more than both the connection and the stream windows, in each direction.
    let chunks = 96;
    let feed = {
        let chunk = chunk.clone();
        tokio::spawn(async move {
            for _ in 0..chunks {
                tx.send(chunk.clone()).await.unwrap();
            }
        })
    };
    let resp = tokio::time::timeout(
        Duration::from_secs(20),
        client.send(&addr.to_string(), request("/big", body)),
    )
    .await
    .expect("the answer head arrives while the request still streams")
    .map_err(SendError::into_error)
    .unwrap();
    let mut body = resp.into_body();
    let mut got = 0usize;
    let read = async {
        while let Some(frame) = body.frame().await {
            let data = frame.unwrap().into_data().unwrap();
            for (i, b) in data.iter().enumerate() {
                assert_eq!(*b, chunk[(got + i) % chunk.len()]);
            }
            got += data.len();
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("the echo completes");
    feed.await.unwrap();
    assert_eq!(got, chunks * chunk.len());
}

#[tokio::test]
async fn answer_trailers_arrive_after_the_data() {
    let (addr, _) = echo_server(None).await;
    let client = Client::<TestBody>::default();
    let mut req = request("/t", TestBody::full("abc"));
    req.headers_mut()
        .insert("want-trailers", http::HeaderValue::from_static("1"));
    let resp = answered(&client, &addr.to_string(), req).await;
    let collected = resp.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["x-trailer"], "done");
    assert_eq!(collected.to_bytes(), "abc");
}

#[tokio::test]
async fn a_refused_connection_hands_the_body_back() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let client = Client::<TestBody>::default();
    match client
        .send(&addr.to_string(), request("/x", TestBody::full("keep me")))
        .await
    {
        Err(SendError::NotSent { error, request }) => {
            assert_eq!(error.kind(), io::ErrorKind::ConnectionRefused);
            assert_eq!(request.uri(), "/x");
            assert_eq!(request.into_body().full.take().unwrap(), "keep me");
        }
        Err(SendError::Failed(e)) => panic!("expected NotSent, got Failed({e})"),
        Ok(_) => panic!("expected an error"),
    }
}

#[tokio::test]
async fn a_closed_connection_fails_its_calls_and_the_next_call_reconnects() {
    let (addr, seen) = echo_server(None).await;
    let client = Client::<TestBody>::default();
    let address = addr.to_string();
    let mut req = request("/close", TestBody::full("x"));
    req.headers_mut()
        .insert("x-close", http::HeaderValue::from_static("1"));
    let failed = tokio::time::timeout(Duration::from_secs(10), client.send(&address, req))
        .await
        .expect("the call fails instead of hanging");
    assert!(failed.is_err());
    let resp = answered(&client, &address, request("/again", TestBody::full("y"))).await;
    assert_eq!(body_of(resp).await, "y");
    assert_eq!(seen.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn calls_past_the_server_stream_limit_wait_their_turn() {
    let (addr, seen) = echo_server(Some(2)).await;
    let client = Arc::new(Client::<TestBody>::default());
    let address = addr.to_string();
    let calls: Vec<_> = (0..10)
        .map(|i| {
            let (client, address) = (client.clone(), address.clone());
            tokio::spawn(async move {
                let req = delayed(TestBody::full(format!("{i}")), "20");
                let resp = answered(&client, &address, req).await;
                assert_eq!(body_of(resp).await, format!("{i}"));
            })
        })
        .collect();
    for call in calls {
        call.await.unwrap();
    }
    let most = seen.most_in_flight.load(Ordering::SeqCst);
    assert!(most <= 2, "{most} calls in flight at once");
    assert_eq!(seen.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn dropping_an_answer_body_resets_its_stream() {
    let (addr, seen) = echo_server(None).await;
    let client = Client::<TestBody>::default();
    let mut req = request("/hold", TestBody::full("x"));
    req.headers_mut()
        .insert("x-hold", http::HeaderValue::from_static("1"));
    let resp = answered(&client, &addr.to_string(), req).await;
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "first");
    drop(body);
    let reset = async {
        while seen.resets.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), reset)
        .await
        .expect("the server sees the stream reset");
    // The connection still serves calls.
    let resp = answered(
        &client,
        &addr.to_string(),
        request("/after", TestBody::full("z")),
    )
    .await;
    assert_eq!(body_of(resp).await, "z");
}

/// A peer that accepts connections, reads whatever comes and never writes a byte, or, with
/// `settings`, writes its SETTINGS and then nothing: a machine gone, as seen from the client.
async fn silent_peer(settings: bool) -> (SocketAddr, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if settings {
                    let mut empty = BytesMut::new();
                    put_settings(&mut empty, &[]);
                    tcp.write_all(&empty).await.unwrap();
                }
                let mut buf = vec![0u8; 1 << 16];
                while matches!(tcp.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    (addr, connections)
}

/// One call to a [`silent_peer`] with checks every 100 ms: its outcome (which must come within
/// 10 s) and how many connections the peer saw.
async fn call_silent_peer(
    settings: bool,
    body: &'static str,
) -> (Result<Response<RecvBody>, SendError<TestBody>>, usize) {
    let (addr, connections) = silent_peer(settings).await;
    let client = Client::<TestBody>::with_ping_interval(Duration::from_millis(100));
    let sent = tokio::time::timeout(
        Duration::from_secs(10),
        client.send(&addr.to_string(), request("/x", TestBody::full(body))),
    )
    .await
    .expect("the call ends instead of hanging");
    (sent, connections.load(Ordering::SeqCst))
}

#[tokio::test]
async fn a_call_to_a_peer_that_went_silent_fails_instead_of_hanging() {
    let (sent, connections) = call_silent_peer(true, "x").await;
    match sent {
        Err(SendError::Failed(e)) => {
            assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
            assert!(e.to_string().contains("PING"), "{e}");
        }
        Err(SendError::NotSent { error, .. }) => panic!("the call was written: {error}"),
        Ok(_) => panic!("a silent peer answered"),
    }
    assert_eq!(connections, 1);
}

#[tokio::test]
async fn calls_queued_on_a_silent_connection_come_back_unsent() {
    // No SETTINGS ever arrive, so no call is written: each connection is given up, the call
    // goes to a new one once, and then comes back with its body.
    let (sent, connections) = call_silent_peer(false, "keep me").await;
    match sent {
        Err(SendError::NotSent { request, .. }) => {
            assert_eq!(request.into_body().full.take().unwrap(), "keep me");
        }
        Err(SendError::Failed(e)) => panic!("expected NotSent, got Failed({e})"),
        Ok(_) => panic!("a silent peer answered"),
    }
    assert_eq!(connections, 2);
}

#[tokio::test]
async fn a_slow_answer_from_a_live_peer_keeps_its_connection() {
    // The answer takes many check intervals; the server answers the PINGs meanwhile.
    let (addr, seen) = echo_server(None).await;
    let client = Client::<TestBody>::with_ping_interval(Duration::from_millis(50));
    let address = addr.to_string();
    let req = delayed(TestBody::full("late"), "600");
    let resp = answered(&client, &address, req).await;
    assert_eq!(body_of(resp).await, "late");
    // Idle now: no timer, and the connection stays usable.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let resp = answered(&client, &address, request("/again", TestBody::full("y"))).await;
    assert_eq!(body_of(resp).await, "y");
    assert_eq!(seen.connections.load(Ordering::SeqCst), 1);
}
