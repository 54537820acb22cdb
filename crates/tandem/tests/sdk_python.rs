//! Compatibility: the official Python SDK (`dapr` 1.19 with its grpc and fastapi extras,
//! installed by this test into a virtualenv in tests/sdk/python/.venv) drives the real binary,
//! unmodified.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{client, start, tandem};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

fn sdk_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/sdk/python")
}

fn python() -> PathBuf {
    sdk_dir().join(".venv/bin/python")
}

/// Creates the virtualenv and installs the SDK once per test run.
fn install() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let ready = std::process::Command::new(python())
            .args(["-c", "import dapr.clients, dapr.ext.fastapi, uvicorn"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ready {
            return;
        }
        let dir = sdk_dir();
        let venv = std::process::Command::new("python3")
            .args(["-m", "venv", ".venv"])
            .current_dir(&dir)
            .output()
            .expect("python3 is needed for the Python SDK tests");
        assert!(
            venv.status.success(),
            "venv failed: {}",
            String::from_utf8_lossy(&venv.stderr)
        );
        let pip = std::process::Command::new(dir.join(".venv/bin/pip"))
            .args(["install", "-q", "-r", "requirements.txt"])
            .current_dir(&dir)
            .output()
            .expect("pip");
        assert!(
            pip.status.success(),
            "pip install failed: {}",
            String::from_utf8_lossy(&pip.stderr)
        );
    });
}

fn components(secrets: &std::path::Path) -> String {
    format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: statestore\nspec:\n  type: state.in-memory\n  version: v1\n---\napiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: pubsub\nspec:\n  type: pubsub.in-memory\n  version: v1\n---\napiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: localsecrets\nspec:\n  type: secretstores.local.file\n  version: v1\n  metadata:\n  - name: secretsFile\n    value: {}\n",
        secrets.display()
    )
}

/// Starts an SDK-written app and returns its JSON event lines.
fn spawn_app(
    script: &str,
    app_port: u16,
    sc: &tandem_testkit::Sidecar,
) -> (
    tokio::process::Child,
    tokio::sync::mpsc::UnboundedReceiver<Value>,
) {
    let mut app = tokio::process::Command::new(python())
        .arg(sdk_dir().join(script))
        .env("APP_PORT", app_port.to_string())
        .env("DAPR_HTTP_PORT", sc.http_port.to_string())
        .env("DAPR_GRPC_PORT", sc.grpc_port.to_string())
        .env("PYTHONUNBUFFERED", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start the SDK app");
    let mut lines = BufReader::new(app.stdout.take().unwrap()).lines();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                let _ = tx.send(v);
            }
        }
    });
    (app, rx)
}

async fn wait_subscribed(sc: &tandem_testkit::Sidecar) {
    let deadline = Instant::now() + Duration::from_secs(30);
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
            tokio::time::sleep(Duration::from_millis(200)).await;
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no subscription from the SDK app; log:\n{}",
            sc.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn run_client(
    sc: &tandem_testkit::Sidecar,
    app_id: &str,
    run: &str,
    token: Option<&str>,
) -> Value {
    run_client_for(sc, app_id, run, token, false).await
}

/// Runs client.py; `grpc_app` adds the gRPC-proxying step (the app is a gRPC server).
async fn run_client_for(
    sc: &tandem_testkit::Sidecar,
    app_id: &str,
    run: &str,
    token: Option<&str>,
    grpc_app: bool,
) -> Value {
    let mut cmd = tokio::process::Command::new(python());
    if grpc_app {
        cmd.env("GRPC_APP", "1");
    }
    cmd.arg(sdk_dir().join("client.py"))
        .env("DAPR_HTTP_PORT", sc.http_port.to_string())
        .env("DAPR_GRPC_PORT", sc.grpc_port.to_string())
        .env("APP_ID", app_id)
        .env("RUN_ID", run)
        .env("DAPR_HEALTH_TIMEOUT", "20")
        .env_remove("DAPR_API_TOKEN");
    if let Some(t) = token {
        cmd.env("DAPR_API_TOKEN", t);
    }
    let out = cmd.output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap_or_else(|e| {
        panic!(
            "no report ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn check_report(report: &Value, sc: &tandem_testkit::Sidecar, run: &str) {
    let ok = |step: &str| -> Value {
        let s = &report[step];
        assert_eq!(
            s["ok"],
            true,
            "step {step} failed: {s}\nfull report: {report}\nsidecar log:\n{}",
            sc.log()
        );
        s["value"].clone()
    };
    ok("save");
    assert_eq!(ok("get"), json!({"data": {"n": 1}, "etag": true}));
    assert_eq!(
        ok("etag"),
        json!({"stale": "ABORTED", "reason": "ERR_STATE_SAVE"})
    );
    let bulk = ok("bulk");
    assert_eq!(
        bulk,
        json!([
            [format!("{run}-a"), "{\"n\": 2}"],
            [format!("{run}-missing"), ""]
        ]),
        "{bulk}"
    );
    assert_eq!(ok("transaction"), json!({"t1": {"t": 1}, "a": ""}));
    ok("saveBulk");
    assert_eq!(ok("raw"), "two", "gRPC SaveState stores raw bytes");
    assert!(ok("query").as_u64().unwrap() >= 1);
    ok("publish");
    assert_eq!(ok("invoke"), json!({"greeting": "hello sdk"}));
    assert_eq!(ok("secret"), json!({"api-key": "k-1"}));
    assert_eq!(ok("secretBulk")["other"], json!({"other": "o-2"}));
    ok("setMetadata");
    let meta = ok("metadata");
    assert_eq!(meta["sdk"], "python");
    assert_eq!(
        meta["components"],
        json!(["localsecrets", "pubsub", "statestore"])
    );
    assert_eq!(
        ok("missingStore"),
        json!({"code": "INVALID_ARGUMENT", "reason": "DAPR_STATE_NOT_FOUND"})
    );
    assert_eq!(
        ok("stream"),
        json!({"topic": format!("stream-{run}"), "data": {"streamed": run}}),
        "streaming subscription"
    );
}

async fn wait_order(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Value>, run: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = tokio::time::timeout(left, rx.recv())
            .await
            .expect("the published order reached the SDK app")
            .unwrap();
        if ev["event"] == "order" && ev["data"]["orderId"] == run {
            return;
        }
    }
}

#[tokio::test]
async fn python_sdk_client_with_a_fastapi_subscriber() {
    install();
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets.json");
    std::fs::write(
        &secrets,
        json!({"api-key": "k-1", "other": "o-2"}).to_string(),
    )
    .unwrap();
    let app_port = tandem_testkit::proxy::free_port();
    let sc = start(
        tandem()
            .app_id("py-app")
            .resource("components.yaml", &components(&secrets))
            .app_port(app_port),
    )
    .await;
    let (_app, mut rx) = spawn_app("http_app.py", app_port, &sc);
    wait_subscribed(&sc).await;
    let run = format!("py{}", std::process::id());
    let report = run_client(&sc, "py-app", &run, None).await;
    check_report(&report, &sc, &run);
    wait_order(&mut rx, &run).await;
}

#[tokio::test]
async fn python_sdk_with_an_api_token() {
    install();
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets.json");
    std::fs::write(
        &secrets,
        json!({"api-key": "k-1", "other": "o-2"}).to_string(),
    )
    .unwrap();
    let sc = start(
        tandem()
            .app_id("py-token")
            .resource("components.yaml", &components(&secrets))
            .env("DAPR_API_TOKEN", "s3cret-token"),
    )
    .await;
    let run = format!("pytok{}", std::process::id());
    let good = run_client(&sc, "py-token", &run, Some("s3cret-token")).await;
    assert_eq!(good["save"]["ok"], true, "{good}");
    assert_eq!(good["secret"]["ok"], true, "{good}");
    let bad = run_client(&sc, "py-token", &format!("{run}x"), Some("wrong")).await;
    assert_eq!(bad["save"]["ok"], false, "{bad}");
    assert!(
        bad["save"]["error"]
            .as_str()
            .unwrap()
            .contains("UNAUTHENTICATED"),
        "{bad}"
    );
}

#[tokio::test]
async fn python_sdk_with_a_grpc_app() {
    install();
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets.json");
    std::fs::write(
        &secrets,
        json!({"api-key": "k-1", "other": "o-2"}).to_string(),
    )
    .unwrap();
    let app_port = tandem_testkit::proxy::free_port();
    let sc = start(
        tandem()
            .app_id("py-grpc")
            .resource("components.yaml", &components(&secrets))
            .app_port(app_port)
            .arg("--app-protocol")
            .arg("grpc"),
    )
    .await;
    // dapr.ext.grpc.App: subscriptions through ListTopicSubscriptions, events through
    // OnTopicEvent, the `hello` method through OnInvoke.
    let (_app, mut rx) = spawn_app("grpc_app.py", app_port, &sc);
    wait_subscribed(&sc).await;
    let run = format!("pyg{}", std::process::id());
    let report = run_client_for(&sc, "py-grpc", &run, None, true).await;
    check_report(&report, &sc, &run);
    assert_eq!(
        report["proxy"],
        json!({"ok": true, "value": {"greeting": "hello proxy"}}),
        "gRPC proxying; log:\n{}",
        sc.log()
    );
    wait_order(&mut rx, &run).await;
}
