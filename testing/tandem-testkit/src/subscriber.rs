//! A scriptable subscriber app for pub/sub tests.
//!
//! It answers `GET /dapr/subscribe` with the subscriptions it was given, records every event
//! POSTed to it, and answers each one as scripted: success, `RETRY` a number of times before
//! succeeding, `DROP`, a status code, or success after a delay. `GET /healthz` answers 200 or
//! 500 as toggled.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokio::net::TcpListener;

/// How the subscriber answers events delivered to one path.
#[derive(Clone, Debug)]
pub enum Answer {
    /// `200 {"status":"SUCCESS"}`.
    Success,
    /// `200 {"status":"RETRY"}` for the first `n` deliveries of each event id, then success.
    RetryTimes(usize),
    /// `200 {"status":"DROP"}`.
    Drop,
    /// An empty answer with this status code.
    Status(u16),
    /// Success after sleeping this long.
    Slow(Duration),
    /// A bulk answer: every entry `SUCCESS`.
    BulkSuccess,
}

/// One delivery the subscriber received.
#[derive(Clone, Debug)]
pub struct Received {
    /// Request path.
    pub path: String,
    /// Request headers (lower-case names).
    pub headers: HashMap<String, String>,
    /// The parsed body (`Value::Null` if it was not JSON).
    pub body: Value,
    /// When it arrived.
    pub at: Instant,
}

#[derive(Default)]
struct Inner {
    subscriptions: Value,
    answers: HashMap<String, Answer>,
    received: Vec<Received>,
    attempts: HashMap<String, usize>,
}

/// A running subscriber app.
#[derive(Clone)]
pub struct Subscriber {
    inner: Arc<Mutex<Inner>>,
    healthy: Arc<AtomicBool>,
    /// The port it listens on (127.0.0.1).
    pub port: u16,
}

impl Subscriber {
    /// Starts a subscriber on a free port answering `GET /dapr/subscribe` with `subscriptions`.
    pub async fn start(subscriptions: Value) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind subscriber");
        Self::serve(listener, subscriptions)
    }

    /// Starts a subscriber on a given listener (to restart on a known port).
    pub fn serve(listener: TcpListener, subscriptions: Value) -> Self {
        let port = listener.local_addr().expect("addr").port();
        let sub = Self {
            inner: Arc::new(Mutex::new(Inner {
                subscriptions,
                ..Default::default()
            })),
            healthy: Arc::new(AtomicBool::new(true)),
            port,
        };
        let app = Router::new().fallback(handle).with_state(sub.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        sub
    }

    /// Scripts the answer for events delivered to `path` (default: success).
    pub fn answer(&self, path: &str, answer: Answer) {
        self.inner
            .lock()
            .unwrap()
            .answers
            .insert(path.to_owned(), answer);
    }

    /// Toggles `GET /healthz`.
    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::SeqCst);
    }

    /// Everything received so far (except `/dapr/subscribe` and health probes).
    pub fn received(&self) -> Vec<Received> {
        self.inner.lock().unwrap().received.clone()
    }

    /// Deliveries to `path` so far.
    pub fn received_on(&self, path: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    /// Waits until `pred(received)` holds, or panics after `within`.
    pub async fn wait_for(
        &self,
        within: Duration,
        what: &str,
        pred: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = Instant::now() + within;
        loop {
            let got = self.received();
            if pred(&got) {
                return got;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}; received {} deliveries: {:#?}",
                    got.len(),
                    got.iter().map(|r| (&r.path, &r.body)).collect::<Vec<_>>()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn handle(
    State(sub): State<Subscriber>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    if path == "/dapr/subscribe" {
        let subs = sub.inner.lock().unwrap().subscriptions.clone();
        return axum::Json(subs).into_response();
    }
    if path == "/healthz" {
        return if sub.healthy.load(Ordering::SeqCst) {
            StatusCode::OK
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        }
        .into_response();
    }
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let id = parsed
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let answer = {
        let mut inner = sub.inner.lock().unwrap();
        inner.received.push(Received {
            path: path.clone(),
            headers: headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body: parsed.clone(),
            at: Instant::now(),
        });
        let n = inner.attempts.entry(format!("{path}|{id}")).or_default();
        *n += 1;
        let attempt = *n;
        (
            inner.answers.get(&path).cloned().unwrap_or(Answer::Success),
            attempt,
        )
    };
    match answer {
        (Answer::Success, _) => {
            axum::Json(serde_json::json!({"status": "SUCCESS"})).into_response()
        }
        (Answer::RetryTimes(n), attempt) if attempt <= n => {
            axum::Json(serde_json::json!({"status": "RETRY"})).into_response()
        }
        (Answer::RetryTimes(_), _) => {
            axum::Json(serde_json::json!({"status": "SUCCESS"})).into_response()
        }
        (Answer::Drop, _) => axum::Json(serde_json::json!({"status": "DROP"})).into_response(),
        (Answer::Status(code), _) => StatusCode::from_u16(code)
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            .into_response(),
        (Answer::Slow(d), _) => {
            tokio::time::sleep(d).await;
            axum::Json(serde_json::json!({"status": "SUCCESS"})).into_response()
        }
        (Answer::BulkSuccess, _) => {
            let statuses: Vec<Value> = parsed
                .get("entries")
                .and_then(Value::as_array)
                .map(|es| {
                    es.iter()
                        .map(|e| serde_json::json!({"entryId": e["entryId"], "status": "SUCCESS"}))
                        .collect()
                })
                .unwrap_or_default();
            axum::Json(serde_json::json!({"statuses": statuses})).into_response()
        }
    }
}
