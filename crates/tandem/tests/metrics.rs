//! End-to-end: Prometheus metrics on `--metrics-port` through the real binary — HTTP request
//! counts and latency labelled by route template, completed gRPC calls by method and status,
//! loaded components; `--enable-metrics=false`; a metrics port already taken.

mod common;

use common::{IN_MEMORY, client, start, tandem};
use dapr::dapr::proto::runtime::v1 as pb;
use dapr::dapr::proto::runtime::v1::dapr_client::DaprClient;
use tandem_testkit::proxy::free_port;

async fn scrape(port: u16, path: &str) -> (String, String) {
    let resp = client()
        .get(format!("http://127.0.0.1:{port}{path}"))
        .send()
        .await
        .expect("scrape");
    assert_eq!(resp.status(), 200);
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (ct, resp.text().await.expect("metrics body"))
}

/// The value of the series `name{labels}` in `text`, if present.
fn value(text: &str, series: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(str::to_owned)
}

#[tokio::test]
async fn http_and_grpc_calls_are_counted_by_template_and_status() {
    let port = free_port();
    let sc = start(
        tandem()
            .app_id("metered")
            .resource("store.yaml", IN_MEMORY)
            .arg("--metrics-port")
            .arg(port.to_string())
            .arg("--metrics-listen-address")
            .arg("127.0.0.1"),
    )
    .await;
    let http = client();
    // Two keys, one template: one series.
    for key in ["a", "b"] {
        let r = http
            .get(sc.url(&format!("/v1.0/state/statestore/{key}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    }
    let r = http
        .post(sc.url("/v1.0/state/statestore"))
        .json(&serde_json::json!([{"key": "a", "value": 1}]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = http
        .get(sc.url("/v1.0/state/nosuchstore/a"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    let mut c = DaprClient::connect(format!("http://127.0.0.1:{}", sc.grpc_port))
        .await
        .expect("gRPC connect");
    for _ in 0..3 {
        c.get_state(pb::GetStateRequest {
            store_name: "statestore".into(),
            key: "a".into(),
            ..Default::default()
        })
        .await
        .expect("GetState");
    }
    let err = c
        .get_state(pb::GetStateRequest {
            store_name: "nosuchstore".into(),
            key: "a".into(),
            ..Default::default()
        })
        .await
        .expect_err("unknown store");
    let code = format!("{:?}", err.code());

    let (ct, text) = scrape(port, "/metrics").await;
    assert_eq!(ct, "text/plain; version=0.0.4; charset=utf-8");
    let app = "app_id=\"metered\"";
    let count = |method: &str, path: &str, status: u16| {
        value(
            &text,
            &format!(
                "dapr_http_server_request_count{{{app},method=\"{method}\",path=\"{path}\",status=\"{status}\"}}"
            ),
        )
    };
    assert_eq!(
        count("GET", "/v1.0/state/{store}/{key}", 204).as_deref(),
        Some("2"),
        "{text}"
    );
    assert_eq!(
        count("POST", "/v1.0/state/{store}", 204).as_deref(),
        Some("1"),
        "{text}"
    );
    assert_eq!(
        count("GET", "/v1.0/state/{store}/{key}", 400).as_deref(),
        Some("1"),
        "{text}"
    );
    assert!(
        !text.contains("/v1.0/state/statestore/a"),
        "raw path in labels:\n{text}"
    );
    assert_eq!(
        value(
            &text,
            &format!(
                "dapr_http_server_latency_count{{{app},method=\"GET\",path=\"/v1.0/state/{{store}}/{{key}}\",status=\"204\"}}"
            )
        )
        .as_deref(),
        Some("2"),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            &format!(
                "dapr_http_server_latency_bucket{{{app},method=\"GET\",path=\"/v1.0/state/{{store}}/{{key}}\",status=\"204\",le=\"+Inf\"}}"
            )
        )
        .as_deref(),
        Some("2"),
        "{text}"
    );
    let grpc = |status: &str| {
        value(
            &text,
            &format!(
                "dapr_grpc_io_server_completed_rpcs{{{app},grpc_server_method=\"/dapr.proto.runtime.v1.Dapr/GetState\",grpc_server_status=\"{status}\"}}"
            ),
        )
    };
    assert_eq!(grpc("OK").as_deref(), Some("3"), "{text}");
    assert_eq!(code, "InvalidArgument", "unknown store status");
    assert_eq!(grpc("INVALID_ARGUMENT").as_deref(), Some("1"), "{text}");
    assert_eq!(
        value(&text, &format!("dapr_runtime_component_loaded{{{app}}}")).as_deref(),
        Some("1"),
        "{text}"
    );
    // Any path answers, as daprd's endpoint does; scrapes are not counted as API calls.
    let (_, again) = scrape(port, "/").await;
    assert!(again.contains("# TYPE dapr_http_server_request_count counter"));
}

#[tokio::test]
async fn disabled_metrics_and_a_taken_port_leave_the_sidecar_running() {
    let port = free_port();
    let sc = start(
        tandem()
            .app_id("unmetered")
            .arg("--metrics-port")
            .arg(port.to_string())
            .arg("--enable-metrics=false"),
    )
    .await;
    let r = client().get(sc.url("/v1.0/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "metrics served although disabled"
    );
    drop(sc);

    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().unwrap().port();
    let sc = start(
        tandem()
            .app_id("portless")
            .arg("--metrics-port")
            .arg(port.to_string())
            .arg("--metrics-listen-address")
            .arg("127.0.0.1"),
    )
    .await;
    let r = client().get(sc.url("/v1.0/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert!(
        sc.log().contains("--metrics-port"),
        "no error about the metrics port:\n{}",
        sc.log()
    );
}
