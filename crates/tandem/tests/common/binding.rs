//! Shared parts of the binding end-to-end tests: component YAML, unique names, invoking an
//! output binding over `/v1.0/bindings/{name}`, waiting for input bindings to start, the
//! events an HTTP app received, the redelivery of an event the app refused, and the checks of
//! the SQL bindings' response metadata and gRPC `query`.

use std::time::{Duration, Instant};

use dapr::dapr::proto::runtime::v1 as pb;
use dapr::dapr::proto::runtime::v1::dapr_client::DaprClient;
use serde_json::Value;
use tandem_testkit::Sidecar;
use tandem_testkit::subscriber::{Answer, Received, Subscriber};

use super::client;

/// A binding component named `name` of type `type_name` with `metadata` as name/value pairs.
pub fn component(name: &str, type_name: &str, metadata: &[(&str, &str)]) -> String {
    let mut yaml = format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: {name}\nspec:\n  type: {type_name}\n  version: v1\n"
    );
    if !metadata.is_empty() {
        yaml.push_str("  metadata:\n");
        for (key, value) in metadata {
            yaml.push_str(&format!("  - name: {key}\n    value: \"{value}\"\n"));
        }
    }
    yaml
}

/// A name no other test run uses (`{prefix}-{what}-{pid}-{nanos}`), so that runs sharing a
/// backend never see each other.
pub fn unique(prefix: &str, what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("{prefix}-{what}-{}-{nanos}", std::process::id())
}

/// `POST /v1.0/bindings/{name}` with `body`.
pub async fn invoke(sc: &Sidecar, name: &str, body: Value) -> reqwest::Response {
    client()
        .post(sc.url(&format!("/v1.0/bindings/{name}")))
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// Waits (up to `wait`) until the sidecar logged `n` started input bindings.
pub async fn wait_started(sc: &Sidecar, n: usize, wait: Duration) {
    let until = Instant::now() + wait;
    loop {
        let log = sc.log();
        if log.matches("input binding started").count() >= n {
            return;
        }
        assert!(
            Instant::now() < until,
            "the input bindings never started; log:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Events delivered to `path` (the `OPTIONS` probe has no body).
pub fn events(got: &[Received], path: &str) -> Vec<Received> {
    got.iter()
        .filter(|r| r.path == path && !r.body.is_null())
        .cloned()
        .collect()
}

/// With the app refusing `path` (set before the event `n` was sent), waits for three
/// refusals of the event whose body has `"n": n`, lets the app take it, and checks that a
/// delivery after the switch came and that no more follow (acknowledged once taken).
pub async fn redelivered_until_taken(app: &Subscriber, path: &str, n: i64, wait: Duration) {
    let refused = |r: &[Received]| events(r, path).iter().filter(|e| e.body["n"] == n).count();
    app.wait_for(wait, "three refusals", |r| refused(r) >= 3)
        .await;
    app.answer(path, Answer::Success);
    let switched = Instant::now();
    app.wait_for(wait, "a delivery after the switch", |r| {
        events(r, path)
            .iter()
            .any(|e| e.body["n"] == n && e.at > switched)
    })
    .await;
    let total = refused(&app.received());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(refused(&app.received()), total, "acknowledged once taken");
}

/// Checks a SQL binding's answer to `exec` of `sql` that changed `rows` rows: 200, no body,
/// and Dapr's response metadata as `metadata.*` headers.
pub async fn assert_exec_answer(resp: reqwest::Response, sql: &str, rows: &str) {
    assert_eq!(resp.status(), 200);
    let h = resp.headers().clone();
    assert_eq!(h["metadata.operation"], "exec");
    assert_eq!(h["metadata.sql"], sql);
    assert_eq!(h["metadata.rows-affected"], rows);
    for key in [
        "metadata.start-time",
        "metadata.end-time",
        "metadata.duration",
    ] {
        assert!(h.contains_key(key), "{key} in {h:?}");
    }
    assert!(resp.bytes().await.unwrap().is_empty());
}

/// Checks a SQL binding's answer to `query`: 200, JSON, the `operation` header, and `body`.
pub async fn assert_query_answer(resp: reqwest::Response, body: &str) {
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(resp.headers()["metadata.operation"], "query");
    assert_eq!(resp.text().await.unwrap(), body);
}

/// Runs `query` of `sql` with `params` on the SQL binding `name` over gRPC `InvokeBinding`
/// and checks that it answers `data` with the `operation` metadata.
pub async fn assert_grpc_query(sc: &Sidecar, name: &str, sql: String, params: &str, data: &[u8]) {
    let mut d = DaprClient::connect(format!("http://127.0.0.1:{}", sc.grpc_port))
        .await
        .unwrap();
    let got = d
        .invoke_binding(pb::InvokeBindingRequest {
            name: name.into(),
            metadata: [
                ("sql".to_owned(), sql),
                ("params".to_owned(), params.to_owned()),
            ]
            .into(),
            operation: "query".into(),
            ..Default::default()
        })
        .await
        .expect("InvokeBinding query")
        .into_inner();
    assert_eq!(got.data, data);
    assert_eq!(got.metadata["operation"], "query");
}
