//! Compatibility: the official JavaScript SDK (`@dapr/dapr` 3.18, installed by this test with
//! npm into tests/sdk/js) drives the real binary, unmodified.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{client, start, tandem};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

fn sdk_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/sdk/js")
}

/// Installs the SDK once per test run (`npm ci` from the committed lockfile).
fn install() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let dir = sdk_dir();
        if dir.join("node_modules/@dapr/dapr/package.json").exists() {
            return;
        }
        let out = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .output()
            .expect("npm is needed for the JavaScript SDK tests");
        assert!(
            out.status.success(),
            "npm ci failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

async fn run_sdk(protocol: &str) {
    install();
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets.json");
    std::fs::write(
        &secrets,
        json!({"api-key": "k-1", "other": "o-2"}).to_string(),
    )
    .unwrap();
    let app_port = tandem_testkit::proxy::free_port();
    let resources = format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: statestore\nspec:\n  type: state.in-memory\n  version: v1\n---\napiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: pubsub\nspec:\n  type: pubsub.in-memory\n  version: v1\n---\napiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: localsecrets\nspec:\n  type: secretstores.local.file\n  version: v1\n  metadata:\n  - name: secretsFile\n    value: {}\n",
        secrets.display()
    );
    // The SDK server speaks the client's protocol: an HTTP app, or a gRPC app
    // (`AppCallback`) for `--app-protocol grpc`.
    let sc = start(
        tandem()
            .app_id("js-app")
            .resource("components.yaml", &resources)
            .app_port(app_port)
            .arg("--app-protocol")
            .arg(protocol),
    )
    .await;
    let grpc_port = sc.grpc_port.to_string();

    let mut server = tokio::process::Command::new("node")
        .arg(sdk_dir().join("server.mjs"))
        .env("APP_PORT", app_port.to_string())
        .env("DAPR_HTTP_PORT", sc.http_port.to_string())
        .env("DAPR_GRPC_PORT", &grpc_port)
        .env("SDK_PROTOCOL", protocol)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node is needed for the JavaScript SDK tests");
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                let _ = tx.send(v);
            }
        }
    });
    let started = tokio::time::timeout(Duration::from_secs(40), rx.recv())
        .await
        .expect("the SDK server started");
    assert_eq!(started.unwrap()["event"], "started");
    // The sidecar reads the SDK server's subscriptions once the app port opens.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m: Value = client()
            .get(sc.url("/v1.0/metadata"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if m["subscriptions"].as_array().is_some_and(|s| !s.is_empty()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no subscription from the SDK server; log:\n{}",
            sc.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    let run = format!("js{protocol}{}", std::process::id());
    let out = tokio::process::Command::new("node")
        .arg(sdk_dir().join("client.mjs"))
        .env("DAPR_HTTP_PORT", sc.http_port.to_string())
        .env("DAPR_GRPC_PORT", &grpc_port)
        .env("SDK_PROTOCOL", protocol)
        .env("APP_ID", "js-app")
        .env("RUN_ID", &run)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("the SDK client finished within 60 s")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| {
            panic!(
                "no report ({e}): {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let ok = |step: &str| -> Value {
        let s = &report[step];
        assert_eq!(
            s["ok"],
            true,
            "{protocol}: step {step} failed: {s}\nfull report: {report}\nsidecar log:\n{}",
            sc.log()
        );
        s["value"].clone()
    };
    ok("save");
    assert_eq!(ok("get"), json!({"n": 1, "tags": ["x"]}));
    let bulk = ok("getBulk");
    assert_eq!(bulk.as_array().unwrap().len(), 3, "{bulk}");
    assert!(
        bulk.as_array()
            .unwrap()
            .iter()
            .any(|i| i["key"] == format!("{run}-b") && i["data"] == "text"),
        "{bulk}"
    );
    ok("transaction");
    let after = ok("afterTransaction");
    // Over gRPC the SDK sends transaction values as raw bytes (`Buffer.from([1, 2])`), which
    // the sidecar stores as given, as daprd does.
    let expect_c = if protocol == "grpc" {
        json!("\u{1}\u{2}")
    } else {
        json!([1, 2])
    };
    assert_eq!(after["c"], expect_c, "{after}");
    assert!(after["b"].is_null() || after["b"] == "", "{after}");
    ok("delete");
    let gone = ok("afterDelete");
    assert!(gone.is_null() || gone == "", "{gone}");
    ok("query");
    ok("publish");
    assert_eq!(ok("invoke"), json!({"greeting": "hello sdk"}));
    assert_eq!(ok("secret"), json!({"api-key": "k-1"}));
    assert_eq!(ok("secretBulk")["other"], json!({"other": "o-2"}));
    ok("metadataSet");
    let meta = ok("metadata");
    assert_eq!(meta["id"], "js-app");
    assert_eq!(meta["sdk"], "js");

    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = tokio::time::timeout(left, rx.recv())
            .await
            .expect("the published order reached the SDK server")
            .unwrap();
        if ev["event"] == "order" && ev["data"]["orderId"] == run {
            break;
        }
    }
    let _ = server.kill().await;
}

#[tokio::test]
async fn javascript_sdk_over_http() {
    run_sdk("http").await;
}

#[tokio::test]
async fn javascript_sdk_over_grpc() {
    run_sdk("grpc").await;
}
