//! End-to-end: `tandem run` with the two-app example on the embedded defaults.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::client;
use serde_json::Value;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn example(file: &str) -> String {
    format!(
        "{}/../../examples/two-apps/{file}",
        env!("CARGO_MANIFEST_DIR")
    )
}

#[tokio::test]
async fn two_apps_publish_subscribe_and_invoke_with_nothing_installed() {
    if std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("python3 is needed for the example apps");
    }
    let home = tempfile::tempdir().unwrap();
    let log = home.path().join("processor.log");
    let (app_port, processor_http, publisher_http) = (free_port(), free_port(), free_port());

    let mut processor = tokio::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args([
            "run",
            "--app-id",
            "order-processor",
            "--app-port",
            &app_port.to_string(),
        ])
        .args([
            "--dapr-http-port",
            &processor_http.to_string(),
            "--dapr-grpc-port",
            &free_port().to_string(),
        ])
        .args([
            "--metrics-port",
            &free_port().to_string(),
            "--",
            "python3",
            &example("subscriber.py"),
        ])
        .env("TANDEM_HOME", home.path())
        .env_remove("TANDEM_NAME_RESOLUTION_DB")
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    // Wait until order-processor's subscription is running.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let url = format!("http://127.0.0.1:{processor_http}/v1.0/metadata");
        if let Ok(resp) = client().get(&url).send().await
            && let Ok(m) = resp.json::<Value>().await
            && m["subscriptions"].as_array().is_some_and(|s| !s.is_empty())
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "order-processor never subscribed; log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args([
            "run",
            "--app-id",
            "order-publisher",
            "--dapr-http-port",
            &publisher_http.to_string(),
        ])
        .args([
            "--dapr-grpc-port",
            &free_port().to_string(),
            "--metrics-port",
            &free_port().to_string(),
        ])
        .args(["--", "python3", &example("publisher.py")])
        .env("TANDEM_HOME", home.path())
        .env_remove("TANDEM_NAME_RESOLUTION_DB")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "publisher failed: {}\n{}\n{}",
        out.status,
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("== APP == invoke order-processor/hello -> 200"),
        "{stdout}"
    );
    assert!(
        stdout.contains("\"greeting\": \"hello order-publisher\""),
        "{stdout}"
    );
    assert!(
        stdout.contains("== APP == published order 5 -> 204"),
        "{stdout}"
    );

    // Every order reaches order-processor, which stores it through its own sidecar.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if (1..=5).all(|i| text.contains(&format!("received order {i} "))) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "orders missing; processor log:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let url = format!("http://127.0.0.1:{processor_http}/v1.0/state/statestore/order-3");
    let order: Value = client()
        .get(&url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(order["qty"], 3);
    assert!(
        home.path().join("resources/statestore.yaml").exists(),
        "embedded defaults created under TANDEM_HOME"
    );

    // Stopping `tandem run` stops the app and the sidecar and exits with the app's status.
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(processor.id().unwrap().to_string())
        .status();
    let status = tokio::time::timeout(Duration::from_secs(15), processor.wait())
        .await
        .expect("tandem run stops")
        .unwrap();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains("== APP == order-processor listening"),
        "{text}"
    );
    assert!(status.code().is_some(), "exited normally: {status}");
}
