//! End-to-end: Prometheus metrics on `--metrics-port` through the real binary — HTTP request
//! counts and latency labelled by route template, completed gRPC calls by method and status,
//! loaded components; every component family, pub/sub in and out, service invocation between
//! two sidecars, resiliency, process metrics; bounded series under many distinct URLs;
//! Configuration `spec.metric`; `--enable-metrics=false`; a metrics port already taken.

mod common;

use std::time::Duration;

use common::{IN_MEMORY, client, start, tandem};
use dapr::dapr::proto::runtime::v1 as pb;
use dapr::dapr::proto::runtime::v1::dapr_client::DaprClient;
use serde_json::json;
use tandem_testkit::mock_app::MockApp;
use tandem_testkit::proxy::free_port;
use tandem_testkit::subscriber::Subscriber;

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
    common::series_value(text, series).map(str::to_owned)
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

const PUBSUB: &str = "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: pubsub\nspec:\n  type: pubsub.in-memory\n  version: v1\n";

const RESILIENCY: &str = r#"
apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata:
  name: res
spec:
  policies:
    retries:
      twice:
        policy: constant
        duration: 10ms
        maxRetries: 2
  targets:
    apps:
      callee:
        retry: twice
"#;

fn metered(app_id: &str, port: u16) -> tandem_testkit::SidecarBuilder {
    common::with_metrics(tandem().app_id(app_id), port)
}

fn count_lines(text: &str, prefix: &str) -> usize {
    text.lines().filter(|l| l.starts_with(prefix)).count()
}

#[tokio::test]
async fn building_blocks_invocation_and_resiliency_are_measured() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("nr.db");
    let secrets = dir.path().join("secrets.json");
    std::fs::write(&secrets, r#"{"password": "s3cr3t-value"}"#).unwrap();
    let files = dir.path().join("files");
    std::fs::create_dir_all(&files).unwrap();

    let callee_app = MockApp::start("callee").await;
    let callee_port = free_port();
    let callee = start(
        metered("callee", callee_port)
            .app_port(callee_app.port())
            .name_resolution_db(&db),
    )
    .await;

    let sub =
        Subscriber::start(json!([{"pubsubname": "pubsub", "topic": "orders", "route": "/orders"}]))
            .await;
    let port = free_port();
    let sc = start(
        metered("caller", port)
            .app_port(sub.port)
            .name_resolution_db(&db)
            .resource("store.yaml", IN_MEMORY)
            .resource("pubsub.yaml", PUBSUB)
            .resource("resiliency.yaml", RESILIENCY)
            .resource(
                "secrets.yaml",
                &format!(
                    "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: localsecrets\nspec:\n  type: secretstores.local.file\n  version: v1\n  metadata:\n  - name: secretsFile\n    value: {}\n",
                    secrets.display()
                ),
            )
            .resource(
                "files.yaml",
                &format!(
                    "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: files\nspec:\n  type: bindings.localstorage\n  version: v1\n  metadata:\n  - name: rootPath\n    value: {}\n",
                    files.display()
                ),
            ),
    )
    .await;
    let http = client();

    // State over HTTP and gRPC.
    let r = http
        .post(sc.url("/v1.0/state/statestore"))
        .json(&json!([{"key": "k", "value": {"secret": "payload-value"}}]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = http
        .get(sc.url("/v1.0/state/statestore/k"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut g = DaprClient::connect(format!("http://127.0.0.1:{}", sc.grpc_port))
        .await
        .expect("gRPC connect");
    g.get_state(pb::GetStateRequest {
        store_name: "statestore".into(),
        key: "k".into(),
        ..Default::default()
    })
    .await
    .expect("GetState");

    // A secret, a binding, a publish delivered to the app.
    let r = http
        .get(sc.url("/v1.0/secrets/localsecrets/password"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .post(sc.url("/v1.0/bindings/files"))
        .json(&json!({"operation": "create", "data": "hello", "metadata": {"fileName": "a.txt"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    for _ in 0..200 {
        let m: serde_json::Value = http
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
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = http
        .post(sc.url("/v1.0/publish/pubsub/orders"))
        .json(&json!({"id": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    sub.wait_for(Duration::from_secs(10), "the order", |r| !r.is_empty())
        .await;

    // An invocation of the other sidecar that fails once and is retried.
    let r = http
        .post(sc.url("/v1.0/invoke/callee/method/flaky"))
        .header("mock-fail-first", "1")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Let the delivery's outcome be recorded.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, text) = scrape(port, "/").await;
    let app = "app_id=\"caller\"";
    let has = |series: &str, want: &str| {
        assert_eq!(
            value(&text, series).as_deref(),
            Some(want),
            "{series} in:\n{text}"
        );
    };
    let comp = |family: &str, component: &str, op: &str| {
        format!(
            "dapr_component_{family}_count{{{app},namespace=\"\",component=\"{component}\",operation=\"{op}\",success=\"true\"}}"
        )
    };
    has(&comp("state", "statestore", "get"), "2");
    has(&comp("state", "statestore", "set"), "1");
    has(&comp("secret", "localsecrets", "get"), "1");
    has(&comp("output_binding", "files", "create"), "1");
    has(
        &format!(
            "dapr_component_state_latencies_count{{{app},namespace=\"\",component=\"statestore\",operation=\"get\",success=\"true\"}}"
        ),
        "2",
    );
    has(
        &format!(
            "dapr_component_pubsub_egress_count{{{app},namespace=\"\",component=\"pubsub\",success=\"true\",topic=\"orders\"}}"
        ),
        "1",
    );
    has(
        &format!(
            "dapr_component_pubsub_ingress_count{{{app},namespace=\"\",component=\"pubsub\",process_status=\"success\",status=\"success\",topic=\"orders\"}}"
        ),
        "1",
    );
    for t in [
        "state.in-memory",
        "pubsub.in-memory",
        "secretstores.local.file",
        "bindings.localstorage",
    ] {
        has(
            &format!("dapr_runtime_component_init_total{{{app},component=\"{t}\"}}"),
            "1",
        );
    }
    // One call, two attempts: both sent, one failure and one success answered.
    has(
        &format!(
            "dapr_runtime_service_invocation_req_sent_total{{{app},dst_app_id=\"callee\",type=\"unary\"}}"
        ),
        "2",
    );
    for status in ["500", "200"] {
        has(
            &format!(
                "dapr_runtime_service_invocation_res_recv_total{{{app},src_app_id=\"callee\",status=\"{status}\",type=\"unary\"}}"
            ),
            "1",
        );
    }
    has(
        &format!(
            "dapr_runtime_service_invocation_res_recv_latency_ms_count{{{app},src_app_id=\"callee\",status=\"200\"}}"
        ),
        "1",
    );
    has(
        &format!("dapr_resiliency_loaded{{{app},name=\"res\",namespace=\"\"}}"),
        "1",
    );
    let res = |family: &str| {
        format!(
            "{family}{{{app},name=\"res\",policy=\"retry\",namespace=\"\",flow_direction=\"outbound\",target=\"app_callee\",status=\"\"}}"
        )
    };
    has(&res("dapr_resiliency_count"), "1");
    has(&res("dapr_resiliency_activations_total"), "1");
    // The subscription call and the delivery went to the app over HTTP; no raw path.
    has(
        &format!(
            "dapr_http_client_completed_count{{{app},method=\"POST\",path=\"\",status=\"200\"}}"
        ),
        "1",
    );
    has(
        &format!(
            "dapr_grpc_io_server_completed_rpcs{{{app},grpc_server_method=\"/dapr.proto.runtime.v1.Dapr/GetState\",grpc_server_status=\"OK\"}}"
        ),
        "1",
    );
    has(
        &format!(
            "dapr_grpc_io_server_server_latency_count{{{app},grpc_server_method=\"/dapr.proto.runtime.v1.Dapr/GetState\",grpc_server_status=\"OK\"}}"
        ),
        "1",
    );
    assert!(
        text.contains(&format!(
            "dapr_grpc_io_server_received_bytes_per_rpc_count{{{app},grpc_server_method=\"/dapr.proto.runtime.v1.Dapr/GetState\"}} 1\n"
        )),
        "{text}"
    );
    assert!(text.contains(&format!("dapr_http_server_request_bytes_count{{{app}}} ")));
    assert!(text.contains(&format!("dapr_http_server_response_bytes_count{{{app}}} ")));
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ] {
        let v: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("{name} missing:\n{text}"))
            .parse()
            .unwrap();
        if name != "process_cpu_seconds_total" {
            assert!(v > 0.0, "{name} = {v}");
        }
    }
    assert!(!text.contains("s3cr3t-value") && !text.contains("payload-value"));

    // The other side of the invocation.
    let (_, text) = scrape(callee_port, "/").await;
    let app = "app_id=\"callee\"";
    assert_eq!(
        value(
            &text,
            &format!(
                "dapr_runtime_service_invocation_req_recv_total{{{app},src_app_id=\"caller\"}}"
            )
        )
        .as_deref(),
        Some("2"),
        "{text}"
    );
    for status in ["500", "200"] {
        assert_eq!(
            value(&text, &format!("dapr_runtime_service_invocation_res_sent_total{{{app},dst_app_id=\"caller\",status=\"{status}\"}}")).as_deref(),
            Some("1"),
            "{text}"
        );
    }
    drop(callee);
}

/// `dapr_resiliency_cb_state`: once a call went through a circuit breaker, one series per
/// state, 1 on the state it is in; it follows the breaker open and closed again.
#[tokio::test]
async fn circuit_breaker_state_is_a_gauge_per_state() {
    let dir = tempfile::tempdir().unwrap();
    let app = MockApp::start("guarded").await;
    let port = free_port();
    let sc = start(
        metered("guarded", port)
            .app_port(app.port())
            .name_resolution_db(dir.path().join("nr.db"))
            .resource(
                "resiliency.yaml",
                r#"apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata:
  name: guard
spec:
  policies:
    circuitBreakers:
      cb:
        maxRequests: 1
        timeout: 1s
        trip: consecutiveFailures >= 2
  targets:
    apps:
      guarded:
        circuitBreaker: cb
"#,
            ),
    )
    .await;
    let http = client();
    let call = |status: u16| {
        http.get(sc.url("/v1.0/invoke/guarded/method/op"))
            .header("mock-status", status.to_string())
            .send()
    };
    let states = |text: &str| {
        ["closed", "half-open", "open", "unknown"].map(|state| {
            let series = format!(
                "dapr_resiliency_cb_state{{app_id=\"guarded\",name=\"guard\",policy=\"circuitbreaker\",namespace=\"\",flow_direction=\"outbound\",target=\"app_guarded\",status=\"{state}\"}}"
            );
            value(text, &series).unwrap_or_else(|| panic!("no {series} in:\n{text}"))
        })
    };

    // No call through the breaker yet: no series.
    let (_, text) = scrape(port, "/").await;
    assert!(!text.contains("dapr_resiliency_cb_state{"), "{text}");

    assert_eq!(call(200).await.unwrap().status(), 200);
    let (_, text) = scrape(port, "/").await;
    assert_eq!(states(&text), ["1", "0", "0", "0"]);

    // Two failures trip it.
    assert_eq!(call(500).await.unwrap().status(), 500);
    assert_eq!(call(500).await.unwrap().status(), 500);
    let (_, text) = scrape(port, "/").await;
    assert_eq!(states(&text), ["0", "0", "1", "0"]);

    // After its timeout a trial call succeeds and closes it.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(call(200).await.unwrap().status(), 200);
    let (_, text) = scrape(port, "/").await;
    assert_eq!(states(&text), ["1", "0", "0", "0"]);
}

/// A counter's value as a number (0 when the series is missing).
fn number(text: &str, series: &str) -> u64 {
    value(text, series).map_or(0, |v| v.parse().unwrap())
}

/// App health probes over HTTP are counted by the status the app answered, with their
/// latency, and not among the sidecar's other calls to the app.
#[tokio::test]
async fn http_health_probes_are_measured_by_status() {
    let app = Subscriber::start(json!([])).await;
    let port = free_port();
    let _sc = start(
        metered("probed", port)
            .arg("--app-port")
            .arg(app.port.to_string())
            .arg("--enable-app-health-check")
            .arg("--app-health-probe-interval")
            .arg("1"),
    )
    .await;
    let series =
        |family: &str, status: &str| format!("{family}{{app_id=\"probed\",status=\"{status}\"}}");
    let ok = series("dapr_http_healthprobes_completed_count", "200");
    let text =
        common::scrape_until(port, "no successful probe counted", |t| number(t, &ok) >= 1).await;
    assert!(
        number(
            &text,
            &series("dapr_http_healthprobes_roundtrip_latency_count", "200")
        ) >= 1,
        "{text}"
    );
    assert!(!text.contains("path=\"/healthz\""), "{text}");

    app.set_healthy(false);
    let failed = series("dapr_http_healthprobes_completed_count", "500");
    common::scrape_until(port, "no failed probe counted", |t| number(t, &failed) >= 1).await;
}

/// App health probes over gRPC are counted by gRPC status, not as calls to the app.
#[tokio::test]
async fn grpc_health_probes_are_measured_by_status() {
    let app = tandem_testkit::grpc_app::GrpcApp::start(Vec::new()).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _sc = start(
        metered("probed-grpc", port)
            .app_port(app.port)
            .arg("--app-protocol")
            .arg("grpc")
            .name_resolution_db(dir.path().join("nr.db"))
            .arg("--enable-app-health-check")
            .arg("--app-health-probe-interval")
            .arg("1"),
    )
    .await;
    let series = |family: &str, status: &str| {
        format!("{family}{{app_id=\"probed-grpc\",grpc_client_status=\"{status}\"}}")
    };
    let ok = series("dapr_grpc_io_healthprobes_completed_count", "OK");
    let text =
        common::scrape_until(port, "no successful probe counted", |t| number(t, &ok) >= 1).await;
    assert!(
        number(
            &text,
            &series("dapr_grpc_io_healthprobes_roundtrip_latency_count", "OK")
        ) >= 1,
        "{text}"
    );
    assert!(!text.contains("HealthCheck/HealthCheck"), "{text}");

    app.set_healthy(false);
    let failed = series("dapr_grpc_io_healthprobes_completed_count", "UNAVAILABLE");
    common::scrape_until(port, "no failed probe counted", |t| number(t, &failed) >= 1).await;
}

/// With `recordErrorCodes: true`, API errors over HTTP and gRPC are counted in
/// `dapr_error_code_total` by code and category; without it the family is absent.
#[tokio::test]
async fn error_codes_are_counted_when_the_configuration_asks() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: cfg\nspec:\n  metric:\n    recordErrorCodes: true\n",
    )
    .unwrap();
    let port = free_port();
    let sc = start(
        metered("erring", port)
            .resource("store.yaml", IN_MEMORY)
            .arg("--config")
            .arg(config.display().to_string()),
    )
    .await;
    let http = client();
    let r = http
        .get(sc.url("/v1.0/state/nosuchstore/k"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = http
        .post(sc.url("/v1.0/state/statestore"))
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // The same code for an illegal key: daprd counts it as a state error.
    let r = http
        .post(sc.url("/v1.0/state/statestore"))
        .json(&json!([{"key": "a||b", "value": 1}]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let mut grpc = DaprClient::connect(format!("http://127.0.0.1:{}", sc.grpc_port))
        .await
        .unwrap();
    let err = grpc
        .get_state(pb::GetStateRequest {
            store_name: "nosuchstore".into(),
            key: "k".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");

    let (_, text) = scrape(port, "/").await;
    let series = |code: &str, category: &str| {
        format!(
            "dapr_error_code_total{{app_id=\"erring\",error_code=\"{code}\",category=\"{category}\"}}"
        )
    };
    assert_eq!(
        value(&text, &series("ERR_STATE_STORE_NOT_FOUND", "state")).as_deref(),
        Some("2"),
        "{text}"
    );
    assert_eq!(
        value(&text, &series("ERR_MALFORMED_REQUEST", "common")).as_deref(),
        Some("1"),
        "{text}"
    );
    assert_eq!(
        value(&text, &series("ERR_MALFORMED_REQUEST", "state")).as_deref(),
        Some("1"),
        "{text}"
    );

    // Not asked for: not counted.
    let quiet_port = free_port();
    let quiet = start(metered("quiet", quiet_port).resource("store.yaml", IN_MEMORY)).await;
    let r = http
        .get(quiet.url("/v1.0/state/nosuchstore/k"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let (_, text) = scrape(quiet_port, "/").await;
    assert!(!text.contains("dapr_error_code_total"), "{text}");
}

#[tokio::test]
async fn distinct_raw_urls_do_not_add_series() {
    let port = free_port();
    let sc = start(metered("bounded", port).resource("store.yaml", IN_MEMORY)).await;
    let http = client();
    let warm = |i: usize| {
        let http = http.clone();
        let a = sc.url(&format!("/v1.0/state/statestore/key-{i}"));
        let b = sc.url(&format!("/no/such/route/{i}"));
        let c = sc.url(&format!("/v1.0/invoke/nobody-{}/method/x/{i}", i % 3));
        async move {
            for u in [a, b, c] {
                let _ = http.get(u).send().await.unwrap().bytes().await;
            }
        }
    };
    for i in 0..10 {
        warm(i).await;
    }
    let (_, before) = scrape(port, "/").await;
    for chunk in (10..1000).collect::<Vec<_>>().chunks(50) {
        futures_join(chunk.iter().map(|i| warm(*i))).await;
    }
    let (_, after) = scrape(port, "/").await;
    for family in [
        "dapr_http_server_request_count{",
        "dapr_http_server_latency_bucket{",
        "dapr_http_server_response_count{",
    ] {
        assert_eq!(
            count_lines(&before, family),
            count_lines(&after, family),
            "{family} grew:\n{after}"
        );
    }
    assert!(!after.contains("key-5"), "raw key in labels");
    assert!(!after.contains("/no/such"), "raw path in labels");
    // Calls to other apps are counted by app id: three distinct targets, at most three series.
    assert!(
        count_lines(&after, "dapr_runtime_service_invocation_req_sent_total{") <= 3,
        "{after}"
    );
}

async fn futures_join<F: std::future::Future<Output = ()>>(futs: impl Iterator<Item = F>) {
    let handles: Vec<_> = futs.collect();
    for f in handles {
        f.await;
    }
}

#[tokio::test]
async fn configuration_path_matching_verbs_rules_and_buckets() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        r#"
apiVersion: dapr.io/v1alpha1
kind: Configuration
metadata:
  name: cfg
spec:
  metrics:
    enabled: true
    latencyDistributionBuckets: [5, 50]
    http:
      increasedCardinality: false
      excludeVerbs: true
      pathMatching: ["/v1.0/state/statestore/{key}"]
    rules:
    - name: dapr_component_state_count
      labels:
      - name: component
        regex:
          "store": "^state.*"
"#,
    )
    .unwrap();
    let port = free_port();
    let sc = start(
        metered("configured", port)
            .resource("store.yaml", IN_MEMORY)
            .arg("--config")
            .arg(config.display().to_string()),
    )
    .await;
    let http = client();
    for key in ["a", "b"] {
        http.get(sc.url(&format!("/v1.0/state/statestore/{key}")))
            .send()
            .await
            .unwrap();
    }
    http.get(sc.url("/v1.0/healthz")).send().await.unwrap();
    let (_, text) = scrape(port, "/").await;
    let app = "app_id=\"configured\"";
    assert_eq!(
        value(&text, &format!("dapr_http_server_request_count{{{app},method=\"\",path=\"/v1.0/state/statestore/{{key}}\",status=\"204\"}}")).as_deref(),
        Some("2"),
        "{text}"
    );
    // Without a matching template and with low cardinality, the path is empty (health checks).
    assert!(
        value(
            &text,
            &format!(
                "dapr_http_server_request_count{{{app},method=\"\",path=\"\",status=\"204\"}}"
            )
        )
        .is_some(),
        "{text}"
    );
    assert!(!text.contains("path=\"/v1.0/healthz"), "{text}");
    assert!(!text.contains("dapr_http_server_response_count"), "{text}");
    assert!(text.contains(&format!(
        "dapr_http_server_latency_bucket{{{app},method=\"\",path=\"/v1.0/state/statestore/{{key}}\",status=\"204\",le=\"50\"}} 2\n"
    )), "{text}");
    assert!(!text.contains("le=\"1\""), "default buckets:\n{text}");
    assert_eq!(
        value(&text, &format!("dapr_component_state_count{{{app},namespace=\"\",component=\"store\",operation=\"get\",success=\"true\"}}")).as_deref(),
        Some("2"),
        "{text}"
    );
}

#[tokio::test]
async fn calls_to_a_grpc_app_are_measured_as_grpc_client_calls() {
    let app = tandem_testkit::grpc_app::GrpcApp::start(Vec::new()).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let sc = start(
        metered("grpcapp", port)
            .app_port(app.port)
            .arg("--app-protocol")
            .arg("grpc")
            .name_resolution_db(dir.path().join("nr.db")),
    )
    .await;
    let r = client()
        .post(sc.url("/v1.0/invoke/grpcapp/method/orders"))
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (_, text) = scrape(port, "/").await;
    let series = "dapr_grpc_io_client_completed_rpcs{app_id=\"grpcapp\",grpc_client_method=\"/dapr.proto.runtime.v1.AppCallback/OnInvoke\",grpc_client_status=\"OK\"}";
    assert_eq!(value(&text, series).as_deref(), Some("1"), "{text}");
    assert!(text.contains(
        "dapr_grpc_io_client_sent_bytes_per_rpc_sum{app_id=\"grpcapp\",grpc_client_method=\"/dapr.proto.runtime.v1.AppCallback/OnInvoke\"} 5\n"
    ), "{text}");
}
