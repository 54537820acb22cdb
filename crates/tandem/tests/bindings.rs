//! End-to-end: bindings through the real binary.
//!
//! Output bindings over HTTP (`/v1.0/bindings/{name}`) and gRPC (`InvokeBinding`) with
//! `bindings.localstorage` and `bindings.http` (against an in-process HTTP app), the error
//! answers, and input bindings (`bindings.cron`) delivered to an HTTP app (after its `OPTIONS`
//! answer) and to a gRPC app (`ListInputBindings` / `OnBindingEvent`, whose answer saves state
//! and feeds an output binding).

mod common;

use std::time::{Duration, Instant};

use common::binding::{component, invoke};
use common::{assert_error, client, start, tandem};
use dapr::dapr::proto::common::v1 as pb_common;
use dapr::dapr::proto::runtime::v1 as pb;
use dapr::dapr::proto::runtime::v1::dapr_client::DaprClient;
use serde_json::{Value, json};
use tandem_testkit::grpc_app::GrpcApp;
use tandem_testkit::mock_app::MockApp;
use tandem_testkit::subscriber::{Answer, Subscriber};

fn localstorage(name: &str, root: &std::path::Path) -> String {
    component(
        name,
        "bindings.localstorage",
        &[("rootPath", &root.display().to_string())],
    )
}

fn cron(name: &str, schedule: &str, extra: &[(&str, &str)]) -> String {
    let mut metadata = vec![("schedule", schedule)];
    metadata.extend_from_slice(extra);
    component(name, "bindings.cron", &metadata)
}

#[tokio::test]
async fn output_bindings_over_http_and_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("files");
    let web = MockApp::start("web").await;
    let http_binding = component("web", "bindings.http", &[("url", &web.url("/api"))]);
    let sc = start(
        tandem()
            .resource("files.yaml", &localstorage("files", &root))
            .resource("web.yaml", &http_binding),
    )
    .await;

    // localstorage: create (JSON string data is unquoted), get, list, delete.
    let resp = invoke(
        &sc,
        "files",
        json!({"operation": "create", "data": "hello", "metadata": {"fileName": "a.txt"}}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"fileName": "a.txt"})
    );
    assert_eq!(
        std::fs::read_to_string(root.join("a.txt")).unwrap(),
        "hello"
    );
    let resp = invoke(
        &sc,
        "files",
        json!({"operation": "get", "metadata": {"fileName": "a.txt"}}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "hello");
    let resp = invoke(&sc, "files", json!({"operation": "list"})).await;
    let files: Vec<String> = resp.json().await.unwrap();
    assert_eq!(files.len(), 1, "{files:?}");
    let resp = invoke(
        &sc,
        "files",
        json!({"operation": "delete", "metadata": {"fileName": "a.txt"}}),
    )
    .await;
    assert_eq!(resp.status(), 204);
    assert!(!root.join("a.txt").exists());

    // Errors: a missing file, an unknown operation, an unknown binding, a malformed body.
    let resp = invoke(
        &sc,
        "files",
        json!({"operation": "get", "metadata": {"fileName": "a.txt"}}),
    )
    .await;
    assert_error(resp, 500, "ERR_INVOKE_OUTPUT_BINDING", "file not found").await;
    let resp = invoke(&sc, "files", json!({"operation": "explode"})).await;
    assert_error(
        resp,
        500,
        "ERR_INVOKE_OUTPUT_BINDING",
        "does not support operation explode",
    )
    .await;
    let resp = invoke(&sc, "nope", json!({"operation": "create"})).await;
    assert_error(
        resp,
        500,
        "ERR_INVOKE_OUTPUT_BINDING",
        "couldn't find output binding nope",
    )
    .await;
    let resp = client()
        .post(sc.url("/v1.0/bindings/files"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_error(resp, 400, "ERR_MALFORMED_REQUEST", "").await;

    // bindings.http: path, upper-case metadata as headers, JSON data; the answer's status and
    // headers as metadata.* headers.
    let resp = invoke(
        &sc,
        "web",
        json!({"operation": "post", "data": {"n": 1}, "metadata": {"path": "orders", "X-Custom": "yes"}}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["metadata.statuscode"], "200");
    assert_eq!(resp.headers()["metadata.x-mock-app"], "web");
    let echo: Value = resp.json().await.unwrap();
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/api/orders");
    assert_eq!(echo["headers"]["x-custom"], "yes", "{echo}");
    assert_eq!(echo["body"], r#"{"n":1}"#, "{echo}");
    // A non-2xx answer is an error (errorIfNot2XX defaults to true), unless turned off.
    let resp = invoke(
        &sc,
        "web",
        json!({"operation": "get", "metadata": {"Mock-Status": "503"}}),
    )
    .await;
    assert_error(
        resp,
        500,
        "ERR_INVOKE_OUTPUT_BINDING",
        "received status code 503",
    )
    .await;
    let resp = invoke(
        &sc,
        "web",
        json!({"operation": "get", "metadata": {"Mock-Status": "503", "errorIfNot2XX": "false"}}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["metadata.statuscode"], "503");

    // gRPC InvokeBinding: data is raw bytes there.
    let mut d = DaprClient::connect(format!("http://127.0.0.1:{}", sc.grpc_port))
        .await
        .unwrap();
    d.invoke_binding(pb::InvokeBindingRequest {
        name: "files".into(),
        data: b"raw bytes".to_vec(),
        metadata: [("fileName".to_owned(), "g.bin".to_owned())].into(),
        operation: "create".into(),
    })
    .await
    .expect("InvokeBinding create");
    let got = d
        .invoke_binding(pb::InvokeBindingRequest {
            name: "files".into(),
            metadata: [("fileName".to_owned(), "g.bin".to_owned())].into(),
            operation: "get".into(),
            ..Default::default()
        })
        .await
        .expect("InvokeBinding get")
        .into_inner();
    assert_eq!(got.data, b"raw bytes");
    let err = d
        .invoke_binding(pb::InvokeBindingRequest {
            name: "nope".into(),
            operation: "create".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Internal);
    assert!(err.message().contains("couldn't find output binding nope"));

    // The metadata API lists the bindings with their directions.
    let meta: Value = client()
        .get(sc.url("/v1.0/metadata"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let files = meta["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "files")
        .unwrap();
    assert_eq!(files["capabilities"], json!(["OUTPUT_BINDING"]));
}

#[tokio::test]
async fn cron_input_binding_reaches_an_http_app() {
    let app = Subscriber::start(json!([])).await;
    // The app declines `unwanted` (404 to OPTIONS): it is never started.
    app.answer("/unwanted", Answer::Status(404));
    let sc = start(
        tandem()
            .app_port(app.port)
            .resource("tick.yaml", &cron("tick", "@every 1s", &[]))
            .resource(
                "routed.yaml",
                &cron("routed", "*/1 * * * * *", &[("route", "/custom")]),
            )
            .resource("unwanted.yaml", &cron("unwanted", "@every 1s", &[])),
    )
    .await;
    let fired = |path: &str, got: &[tandem_testkit::subscriber::Received]| {
        got.iter()
            .filter(|r| r.path == path && r.headers.contains_key("readtimeutc"))
            .count()
    };
    let got = app
        .wait_for(
            Duration::from_secs(10),
            "two cron firings on each route",
            |got| fired("/tick", got) >= 2 && fired("/custom", got) >= 2,
        )
        .await;
    let event = got
        .iter()
        .find(|r| r.path == "/tick" && r.headers.contains_key("readtimeutc"))
        .unwrap();
    assert_eq!(event.headers["timezone"], "Local");
    assert_eq!(event.headers["content-type"], "application/json");
    assert!(event.headers["readtimeutc"].ends_with("+0000 UTC"));
    assert_eq!(fired("/unwanted", &got), 0);
    drop(sc);
}

#[tokio::test]
async fn bad_binding_definitions_stop_the_sidecar() {
    // `direction: output` on an input-only binding, and a schedule that does not parse.
    let out = tandem()
        .resource(
            "bad.yaml",
            &cron("bad", "@every 1s", &[("direction", "output")]),
        )
        .run_to_exit()
        .await;
    assert!(!out.status.success());
    assert!(out.log.contains("no output side"), "{}", out.log);
    let out = tandem()
        .resource("bad.yaml", &cron("bad", "every day", &[]))
        .run_to_exit()
        .await;
    assert!(!out.status.success());
    assert!(out.log.contains("invalid schedule format"), "{}", out.log);
}

#[tokio::test]
async fn input_bindings_reach_a_grpc_app_and_its_answer_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("files");
    let app = GrpcApp::start(Vec::new()).await;
    app.set_input_bindings(&["tick"]);
    // The answer saves a state item and sends its data to the `files` output binding.
    app.answer_bindings(pb::BindingEventResponse {
        store_name: "statestore".into(),
        states: vec![pb_common::StateItem {
            key: "from-binding".into(),
            value: br#"{"fired":true}"#.to_vec(),
            ..Default::default()
        }],
        to: vec!["files".into()],
        data: b"forwarded".to_vec(),
        concurrency: 1,
    });
    let sc = start(
        tandem()
            .app_port(app.port)
            .arg("--app-protocol")
            .arg("grpc")
            .resource("store.yaml", common::IN_MEMORY)
            .resource("files.yaml", &localstorage("files", &root))
            .resource("tick.yaml", &cron("tick", "@every 1s", &[]))
            .resource("other.yaml", &cron("other", "@every 1s", &[])),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.binding_events().is_empty() {
        assert!(
            Instant::now() < deadline,
            "no binding event; log:\n{}",
            sc.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ev = &app.binding_events()[0];
    assert_eq!(ev.name, "tick");
    assert_eq!(ev.metadata["timeZone"], "Local");
    // Only the listed binding runs.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(app.binding_events().iter().all(|e| e.name == "tick"));

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let resp = client()
            .get(sc.url("/v1.0/state/statestore/from-binding"))
            .send()
            .await
            .unwrap();
        if resp.status() == 200 {
            assert_eq!(resp.json::<Value>().await.unwrap(), json!({"fired": true}));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the answer's state was not saved"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let files: Vec<_> = std::fs::read_dir(&root).unwrap().collect();
    assert!(
        !files.is_empty(),
        "the answer's data did not reach the output binding"
    );
    let first = files[0].as_ref().unwrap().path();
    assert_eq!(std::fs::read(first).unwrap(), b"forwarded");
}
