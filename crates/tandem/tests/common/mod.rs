//! Shared helpers of the end-to-end tests.
#![allow(dead_code, unreachable_pub)]

pub mod binding;
pub mod pubsub;

use serde_json::Value;
use tandem_testkit::mock_app::MockApp;
use tandem_testkit::{Sidecar, SidecarBuilder};

/// A builder for the binary under test.
pub fn tandem() -> SidecarBuilder {
    SidecarBuilder::new(env!("CARGO_BIN_EXE_tandem"))
}

pub const IN_MEMORY: &str = r#"
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: statestore
spec:
  type: state.in-memory
  version: v1
"#;

pub fn sqlite_store(name: &str, path: &std::path::Path, extra: &str) -> String {
    format!(
        r#"
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: {name}
spec:
  type: state.sqlite
  version: v1
  metadata:
  - name: connectionString
    value: "{}"
{extra}
"#,
        path.display()
    )
}

/// A sidecar for the mock `app` (its name as app-id, its port as app port), registered in the
/// SQLite name resolution database `db`.
pub fn tandem_for(app: &MockApp, db: impl AsRef<std::path::Path>) -> SidecarBuilder {
    tandem()
        .app_id(app.name())
        .app_port(app.port())
        .name_resolution_db(db)
}

/// `builder` with Prometheus metrics served on 127.0.0.1:`port`.
pub fn with_metrics(builder: SidecarBuilder, port: u16) -> SidecarBuilder {
    builder
        .arg("--metrics-port")
        .arg(port.to_string())
        .arg("--metrics-listen-address")
        .arg("127.0.0.1")
}

/// The metrics text served on 127.0.0.1:`port`.
pub async fn scrape_metrics(port: u16) -> String {
    let resp = client()
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .expect("scrape");
    assert_eq!(resp.status(), 200);
    resp.text().await.expect("metrics body")
}

/// Scrapes 127.0.0.1:`port` until `done` holds for the text (up to 15 s); `what` says what
/// was missing when it never does.
pub async fn scrape_until(port: u16, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let text = scrape_metrics(port).await;
        if done(&text) {
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}; last scrape:\n{text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The value of the series `series` (name and labels, as written) in `text`, as written.
pub fn series_value<'a>(text: &'a str, series: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
}

/// The value of the counter series `series` (name and labels, as written) in `text`.
pub fn counter_value(text: &str, series: &str) -> Option<u64> {
    series_value(text, series).map(|v| v.parse().expect("a counter's value"))
}

/// Starts a sidecar, panicking with its log on failure.
pub async fn start(builder: SidecarBuilder) -> Sidecar {
    builder.spawn().await.unwrap_or_else(|e| panic!("{e}"))
}

pub fn client() -> reqwest::Client {
    reqwest::Client::new()
}

/// `GET /v1.0/state/{store}/{key}`: status and body text.
pub async fn get_state(sc: &Sidecar, store: &str, key: &str) -> (u16, String) {
    let resp = client()
        .get(sc.url(&format!("/v1.0/state/{store}/{key}")))
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// The names of the components `GET /v1.0/metadata` lists, sorted.
pub async fn component_names(sc: &Sidecar) -> Vec<String> {
    let m: Value = client()
        .get(sc.url("/v1.0/metadata"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut names: Vec<String> = m["components"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    names
}

/// Asserts an error answer: status, `errorCode`, and that the message contains `msg`.
pub async fn assert_error(resp: reqwest::Response, status: u16, code: &str, msg: &str) -> Value {
    assert_eq!(resp.status().as_u16(), status, "status");
    assert_eq!(
        resp.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    let body: Value = resp.json().await.expect("JSON error body");
    assert_eq!(body["errorCode"], code, "errorCode in {body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(msg),
        "message {message:?} should contain {msg:?}"
    );
    body
}

/// Freezes `callee` (SIGSTOP: its sockets stay open, as when its machine vanishes without
/// closing anything), calls `path` (`/v1.0/invoke/<id>/method/…`) through `caller`, and
/// thaws it: the call must come back, well before the client's 60 s timeout, as
/// `ERR_DIRECT_INVOKE` for `<id>` naming the PING check of the connection between the
/// sidecars, not hang.
pub async fn assert_silent_callee_fails_the_call(caller: &Sidecar, callee: &Sidecar, path: &str) {
    callee.freeze();
    let resp = client()
        .get(caller.url(path))
        .timeout(std::time::Duration::from_secs(60))
        .send()
        .await;
    callee.thaw();
    let resp = resp.expect("the call is answered instead of hanging");
    let id = path
        .strip_prefix("/v1.0/invoke/")
        .and_then(|rest| rest.split('/').next())
        .expect("an invocation path");
    let body = assert_error(
        resp,
        500,
        "ERR_DIRECT_INVOKE",
        &format!("failed to invoke, id: {id}, err: calling the sidecar at"),
    )
    .await;
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("PING"), "{message}");
}

/// Asserts that `traceparent` (a JSON string) continues the trace of `parent` with another span.
pub fn assert_child_of(traceparent: &Value, parent: &str) {
    let tp = traceparent.as_str().unwrap_or_default();
    assert_eq!(tp.len(), 55, "traceparent {tp:?}");
    assert_eq!(tp[3..35], parent[3..35], "trace id of {tp}");
    assert_ne!(tp[36..52], parent[36..52], "span id of {tp}");
}
