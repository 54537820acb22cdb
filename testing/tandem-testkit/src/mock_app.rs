//! A small HTTP app for service-invocation tests, served in-process on a free port.
//!
//! Every path and verb answers. What it answers is steered by request headers, so the method
//! path stays free for the test:
//!
//! - default: `200` with a JSON echo of the request: `app` (the mock's name), `method`,
//!   `path`, `query`, `headers` (lower-case name → values joined with `, `), `body` (text, when
//!   at most 64 KiB), `body_len` and `body_hash` (FNV-1a, hex).
//! - `mock-status: <code>`: answer with that status.
//! - `mock-fail-first: <n>`: the first `n` requests with this verb and path (counted since
//!   the mock started) answer `500` with body `planned failure <i>`; later ones answer as
//!   usual. A path segment `fail-first-<n>` does the same for `POST`s, for callers that set
//!   no headers (input bindings, whose `OPTIONS` probe still succeeds).
//! - `mock-wait-ms: <ms>`: wait that long before answering.
//! - `mock-set-header: <name>: <value>` (repeatable): add that response header verbatim (also
//!   hop-by-hop ones, to check that the sidecar strips them).
//! - `mock-mode: raw`: stream the request body back as the response body, unread.
//! - `mock-mode: stream`: a slow Server-Sent-Events stream: `mock-chunks` events (default 5),
//!   `data: <i>\n\n`, one every `mock-delay-ms` (default 200).
//!
//! Every answer carries `x-mock-app: <name>`; [`MockApp::requests`] lists what arrived (the
//! sidecar's own start-up calls such as `GET /dapr/subscribe` included).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper::body::Frame;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// A running mock app; stopped when dropped.
pub struct MockApp {
    name: String,
    port: u16,
    hits: Arc<AtomicUsize>,
    log: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

#[derive(Clone)]
struct Shared {
    name: Arc<str>,
    hits: Arc<AtomicUsize>,
    log: Arc<Mutex<Vec<String>>>,
}

impl MockApp {
    /// Starts a mock named `name` on `127.0.0.1:0`.
    pub async fn start(name: &str) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind mock app");
        let port = listener.local_addr().expect("mock app address").port();
        let hits = Arc::new(AtomicUsize::new(0));
        let log = Arc::new(Mutex::new(Vec::new()));
        let shared = Shared {
            name: Arc::from(name),
            hits: hits.clone(),
            log: log.clone(),
        };
        let app = Router::new().fallback(handle).with_state(shared);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            name: name.to_owned(),
            port,
            hits,
            log,
            task,
        }
    }

    /// The mock's name (`x-mock-app`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The port it listens on (pass it as `--app-port`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// How many requests it received.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Every request received so far, as `METHOD /path`, in arrival order.
    pub fn requests(&self) -> Vec<String> {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The requests received so far, the sidecar's own calls under `/dapr/` left out.
    pub fn invocations(&self) -> Vec<String> {
        self.requests()
            .into_iter()
            .filter(|r| {
                !r.split(' ')
                    .nth(1)
                    .unwrap_or_default()
                    .starts_with("/dapr/")
            })
            .collect()
    }
}

impl Drop for MockApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn header<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

async fn handle(State(shared): State<Shared>, req: Request) -> Response {
    shared.hits.fetch_add(1, Ordering::SeqCst);
    let earlier = {
        let mut log = shared.log.lock().unwrap_or_else(PoisonError::into_inner);
        let line = format!("{} {}", req.method(), req.uri().path());
        let earlier = log.iter().filter(|r| **r == line).count();
        log.push(line);
        earlier
    };
    let fail_first = header(&req, "mock-fail-first")
        .and_then(|s| s.parse::<usize>().ok())
        .or_else(|| {
            (req.method() == axum::http::Method::POST).then_some(())?;
            req.uri()
                .path()
                .split('/')
                .find_map(|seg| seg.strip_prefix("fail-first-")?.parse().ok())
        });
    if let Some(ms) = header(&req, "mock-wait-ms").and_then(|s| s.parse().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Some(n) = fail_first
        && earlier < n
    {
        let mut resp = (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("planned failure {}", earlier + 1),
        )
            .into_response();
        if let Ok(v) = HeaderValue::from_str(&shared.name) {
            resp.headers_mut().insert("x-mock-app", v);
        }
        return resp;
    }
    let status = header(&req, "mock-status")
        .and_then(|s| s.parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    let mut extra: Vec<(HeaderName, HeaderValue)> = Vec::new();
    for v in req.headers().get_all("mock-set-header") {
        if let Some((n, v)) = v.to_str().ok().and_then(|s| s.split_once(':'))
            && let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(n.trim().as_bytes()),
                HeaderValue::from_str(v.trim()),
            )
        {
            extra.push((n, v));
        }
    }
    let mode = header(&req, "mock-mode").unwrap_or_default().to_owned();
    let mut resp = match mode.as_str() {
        "raw" => {
            let content_type = req.headers().get("content-type").cloned();
            let mut resp = Response::new(req.into_body());
            if let Some(ct) = content_type {
                resp.headers_mut().insert("content-type", ct);
            }
            resp
        }
        "stream" => {
            let chunks = header(&req, "mock-chunks")
                .and_then(|s| s.parse().ok())
                .unwrap_or(5u32);
            let delay = Duration::from_millis(
                header(&req, "mock-delay-ms")
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(200),
            );
            let (tx, rx) = mpsc::channel(1);
            tokio::spawn(async move {
                for i in 0..chunks {
                    if i > 0 {
                        tokio::time::sleep(delay).await;
                    }
                    if tx
                        .send(Bytes::from(format!("data: {i}\n\n")))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
            let mut resp = Response::new(Body::new(ChannelBody(rx)));
            resp.headers_mut().insert(
                "content-type",
                HeaderValue::from_static("text/event-stream"),
            );
            resp
        }
        _ => echo(&shared, req).await,
    };
    *resp.status_mut() = status;
    for (n, v) in extra {
        resp.headers_mut().append(n, v);
    }
    if let Ok(v) = HeaderValue::from_str(&shared.name) {
        resp.headers_mut().insert("x-mock-app", v);
    }
    resp
}

async fn echo(shared: &Shared, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in &parts.headers {
        headers
            .entry(k.as_str().to_owned())
            .or_default()
            .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    let headers: BTreeMap<String, String> = headers
        .into_iter()
        .map(|(k, v)| (k, v.join(", ")))
        .collect();
    let bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let text = if bytes.len() <= 64 << 10 {
        String::from_utf8_lossy(&bytes).into_owned()
    } else {
        String::new()
    };
    let json = serde_json::json!({
        "app": &*shared.name,
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
        "body": text,
        "body_len": bytes.len(),
        "body_hash": fnv1a(&bytes),
    });
    let mut resp = Response::new(Body::from(json.to_string()));
    resp.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    resp
}

/// FNV-1a (64-bit) of `bytes` as hex: how tests compare large bodies without echoing them.
pub fn fnv1a(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// A response body fed by a channel: each message is sent as its own chunk when it arrives.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|m| m.map(|b| Ok(Frame::data(b))))
    }
}
