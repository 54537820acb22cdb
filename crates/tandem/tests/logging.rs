//! End-to-end: logs through the real binary — `--log-as-json` lines in daprd's shape,
//! `--log-level`, API logging (`--enable-api-logging`, Configuration
//! `spec.logging.apiLogging` with `obfuscateURLs` and `omitHealthChecks`), and that no
//! secret value nor request or response payload ever reaches the log, even at debug level.

mod common;

use std::time::Duration;

use common::{IN_MEMORY, client, start, tandem};
use dapr::dapr::proto::runtime::v1 as pb;
use dapr::dapr::proto::runtime::v1::dapr_client::DaprClient;
use serde_json::{Value, json};
use tandem_testkit::subscriber::Subscriber;

const PUBSUB: &str = "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: pubsub\nspec:\n  type: pubsub.in-memory\n  version: v1\n";

const SECRET: &str = "s3cr3t-never-logged";
const STATE_PAYLOAD: &str = "state-payload-never-logged";
const EVENT_PAYLOAD: &str = "event-payload-never-logged";
const INVOKE_PAYLOAD: &str = "invoke-payload-never-logged";

fn secrets_component(path: &std::path::Path) -> String {
    format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: localsecrets\nspec:\n  type: secretstores.local.file\n  version: v1\n  metadata:\n  - name: secretsFile\n    value: {}\n",
        path.display()
    )
}

async fn wait_subscribed(sc: &tandem_testkit::Sidecar) {
    for _ in 0..200 {
        let m: Value = client()
            .get(sc.url("/v1.0/metadata"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if m["subscriptions"].as_array().is_some_and(|s| !s.is_empty()) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no subscription; log:\n{}", sc.log());
}

#[tokio::test]
async fn json_lines_api_logs_and_no_payloads_at_debug_level() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets.json");
    std::fs::write(&secrets, format!(r#"{{"password": "{SECRET}"}}"#)).unwrap();
    let sub =
        Subscriber::start(json!([{"pubsubname": "pubsub", "topic": "orders", "route": "/orders"}]))
            .await;
    let sc = start(
        tandem()
            .app_id("logged")
            .app_port(sub.port)
            .resource("store.yaml", IN_MEMORY)
            .resource("pubsub.yaml", PUBSUB)
            .resource("secrets.yaml", &secrets_component(&secrets))
            .arg("--log-level")
            .arg("debug")
            .arg("--log-as-json")
            .arg("--enable-api-logging"),
    )
    .await;
    wait_subscribed(&sc).await;
    let http = client();
    let r = http
        .post(sc.url("/v1.0/state/statestore"))
        .json(&json!([{"key": "k", "value": STATE_PAYLOAD}]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = http
        .get(sc.url("/v1.0/state/statestore/k"))
        .header("user-agent", "log-test/1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains(STATE_PAYLOAD));
    let r = http
        .get(sc.url("/v1.0/secrets/localsecrets/password"))
        .send()
        .await
        .unwrap();
    assert!(r.text().await.unwrap().contains(SECRET));
    let r = http
        .get(sc.url("/v1.0/secrets/localsecrets/bulk"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .post(sc.url("/v1.0/publish/pubsub/orders"))
        .json(&json!({"data": EVENT_PAYLOAD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    sub.wait_for(Duration::from_secs(10), "the event", |r| !r.is_empty())
        .await;
    let _ = http
        .post(sc.url("/v1.0/invoke/logged/method/orders"))
        .body(INVOKE_PAYLOAD)
        .send()
        .await
        .unwrap()
        .bytes()
        .await;
    // A failing call logs an error line; its message must not carry the payload either.
    let r = http
        .post(sc.url("/v1.0/state/statestore"))
        .body(format!("[{{\"key\": \"k\", \"value\": \"{STATE_PAYLOAD}\""))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let mut g = DaprClient::connect(format!("http://127.0.0.1:{}", sc.grpc_port))
        .await
        .unwrap();
    let got = g
        .get_state(pb::GetStateRequest {
            store_name: "statestore".into(),
            key: "k".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(String::from_utf8_lossy(&got.data).contains(STATE_PAYLOAD));
    g.get_secret(pb::GetSecretRequest {
        store_name: "localsecrets".into(),
        key: "password".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let log = sc.log();
    for marker in [SECRET, STATE_PAYLOAD, EVENT_PAYLOAD, INVOKE_PAYLOAD] {
        assert!(!log.contains(marker), "{marker} in the log:\n{log}");
    }
    let lines: Vec<Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for l in &lines {
        for field in ["time", "level", "msg", "scope", "instance", "ver"] {
            assert!(l[field].is_string(), "{field} missing in {l}");
        }
        assert_eq!(l["type"], "log", "{l}");
        assert_eq!(l["app_id"], "logged", "{l}");
        assert!(
            ["debug", "info", "warning", "error"].contains(&l["level"].as_str().unwrap()),
            "{l}"
        );
    }
    assert!(lines.iter().any(|l| l["level"] == "debug"), "no debug line");
    let http_api: Vec<&Value> = lines
        .iter()
        .filter(|l| l["scope"] == "dapr.runtime.http-info")
        .collect();
    let get = http_api
        .iter()
        .find(|l| l["method"] == "GET /v1.0/state/statestore/k")
        .unwrap_or_else(|| panic!("no API line for the GET:\n{log}"));
    assert_eq!(get["msg"], "HTTP API Called");
    assert_eq!(get["level"], "info");
    assert_eq!(get["code"], 200);
    assert!(get["duration"].is_u64(), "{get}");
    assert_eq!(get["useragent"], "log-test/1");
    assert!(
        http_api
            .iter()
            .any(|l| l["method"] == "POST /v1.0/state/statestore" && l["code"] == 400),
        "{log}"
    );
    let grpc = lines
        .iter()
        .find(|l| {
            l["scope"] == "dapr.runtime.grpc-info"
                && l["method"] == "/dapr.proto.runtime.v1.Dapr/GetState"
        })
        .unwrap_or_else(|| panic!("no gRPC API line:\n{log}"));
    assert_eq!(grpc["msg"], "gRPC API Called");
    assert_eq!(grpc["code"], 0);
}

#[tokio::test]
async fn configuration_obfuscates_urls_and_omits_health_checks() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: cfg\nspec:\n  logging:\n    apiLogging:\n      enabled: true\n      obfuscateURLs: true\n      omitHealthChecks: true\n",
    )
    .unwrap();
    let sc = start(
        tandem()
            .app_id("quiet")
            .resource("store.yaml", IN_MEMORY)
            .arg("--config")
            .arg(config.display().to_string())
            .arg("--log-level")
            .arg("warn"),
    )
    .await;
    let http = client();
    http.get(sc.url("/v1.0/state/statestore/private-key"))
        .send()
        .await
        .unwrap();
    http.get(sc.url("/v1.0/healthz")).send().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = sc.log();
    // API lines are written at info even though the level is warn.
    assert!(
        log.contains("HTTP API Called") && log.contains("GET /v1.0/state/{store}/{key}"),
        "{log}"
    );
    assert!(!log.contains("private-key"), "{log}");
    assert!(!log.contains("/v1.0/healthz"), "{log}");
    assert!(
        !log.contains("tandem sidecar is ready"),
        "info lines at warn:\n{log}"
    );

    // The flag turns API logging off whatever the Configuration says.
    let sc = start(
        tandem()
            .app_id("silent")
            .arg("--config")
            .arg(config.display().to_string())
            .arg("--enable-api-logging=false"),
    )
    .await;
    http.get(sc.url("/v1.0/metadata")).send().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!sc.log().contains("API Called"), "{}", sc.log());
}
