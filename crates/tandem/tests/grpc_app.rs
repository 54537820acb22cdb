//! End-to-end: the gRPC app channel (`--app-protocol grpc` / `grpcs`) and gRPC proxying,
//! through the real binary, with the testkit's scriptable gRPC app.
//!
//! Invocation (HTTP and gRPC callers, local and through a second sidecar, the app's gRPC
//! errors), pub/sub through `ListTopicSubscriptions` / `OnTopicEvent` / bulk events (routing,
//! RETRY, DROP, errors), health checks through `AppCallbackHealthCheck`, the API token, TLS to
//! the app, and gRPC proxying with `dapr-app-id` metadata: unary, bidirectional streaming with
//! trailers, errors and the API token.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{client, start, tandem};
use dapr::dapr::proto::common::v1 as pb_common;
use dapr::dapr::proto::runtime::v1 as pb;
use dapr::dapr::proto::runtime::v1::app_callback_client::AppCallbackClient;
use dapr::dapr::proto::runtime::v1::dapr_client::DaprClient;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tandem_testkit::grpc_app::{ChannelBody, EventAnswer, GrpcApp, grpc_frame};
use tandem_testkit::{Sidecar, SidecarBuilder};
use tonic::Code;
use tonic::transport::Channel;

const PUBSUB: &str = r#"
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: pubsub
spec:
  type: pubsub.in-memory
  version: v1
"#;

fn grpc_sidecar(app_id: &str, app: &GrpcApp, db: &Path) -> SidecarBuilder {
    tandem()
        .app_id(app_id)
        .app_port(app.port)
        .arg("--app-protocol")
        .arg("grpc")
        .name_resolution_db(db)
}

async fn dapr_client(sc: &Sidecar) -> DaprClient<Channel> {
    DaprClient::connect(format!("http://127.0.0.1:{}", sc.grpc_port))
        .await
        .expect("connect to the gRPC API")
}

async fn json(resp: reqwest::Response) -> Value {
    let status = resp.status();
    let text = resp.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("{status}: {text}"))
}

fn invoke_request(id: &str, method: &str, data: &[u8]) -> pb::InvokeServiceRequest {
    pb::InvokeServiceRequest {
        id: id.into(),
        message: Some(pb_common::InvokeRequest {
            method: method.into(),
            data: Some(prost_types::Any {
                type_url: String::new(),
                value: data.to_vec(),
            }),
            content_type: "text/plain".into(),
            http_extension: Some(pb_common::HttpExtension {
                verb: pb_common::http_extension::Verb::Put as i32,
                querystring: "a=b".into(),
            }),
        }),
    }
}

#[tokio::test]
async fn invocation_reaches_a_grpc_app_through_on_invoke() {
    let app = GrpcApp::start(Vec::new()).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("nr.db");
    let sc = start(grpc_sidecar("g", &app, &db).env("APP_API_TOKEN", "app-secret")).await;
    let c = client();

    // HTTP caller: method, verb, query, content type, body and headers become the
    // InvokeRequest and its metadata; the answer's data and content type come back.
    let resp = c
        .post(sc.url("/v1.0/invoke/g/method/orders/1?x=1"))
        .header("content-type", "text/plain")
        .header("x-custom", "kept")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(resp.headers()["x-grpc-app"], "yes");
    let v = json(resp).await;
    assert_eq!(v["method"], "orders/1");
    assert_eq!(v["verb"], pb_common::http_extension::Verb::Post as i32);
    assert_eq!(v["query"], "x=1");
    assert_eq!(v["contentType"], "text/plain");
    assert_eq!(v["data"], "hello");
    assert_eq!(v["metadata"]["x-custom"], "kept");
    assert_eq!(v["metadata"]["dapr-api-token"], "app-secret");
    assert_eq!(v["metadata"]["dapr-caller-app-id"], "g");

    // The app's gRPC error becomes daprd's HTTP status with the Status as JSON.
    let resp = c
        .get(sc.url("/v1.0/invoke/g/method/fail-not-found"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let v = json(resp).await;
    assert_eq!(v["code"], Code::NotFound as i32);
    assert_eq!(v["message"], "no such order");

    // gRPC caller (InvokeService): the answer, and the app's own error status.
    let mut d = dapr_client(&sc).await;
    let resp = d
        .invoke_service(invoke_request("g", "echo", b"via grpc"))
        .await
        .expect("InvokeService")
        .into_inner();
    assert_eq!(resp.content_type, "application/json");
    let v: Value = serde_json::from_slice(&resp.data.unwrap().value).unwrap();
    assert_eq!(v["method"], "echo");
    assert_eq!(v["verb"], pb_common::http_extension::Verb::Put as i32);
    assert_eq!(v["query"], "a=b");
    assert_eq!(v["data"], "via grpc");
    let err = d
        .invoke_service(invoke_request("g", "fail-permission", b""))
        .await
        .expect_err("the app's error");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(err.message(), "not yours");

    // From another sidecar: over the internal hop, the same answers.
    let other = start(tandem().app_id("caller").name_resolution_db(&db)).await;
    let resp = c
        .post(other.url("/v1.0/invoke/g/method/remote"))
        .body("hi")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v = json(resp).await;
    assert_eq!(v["method"], "remote");
    assert_eq!(v["metadata"]["dapr-caller-app-id"], "caller");
    let mut d = dapr_client(&other).await;
    let err = d
        .invoke_service(invoke_request("g", "fail-not-found", b""))
        .await
        .expect_err("the app's error across sidecars");
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.message(), "no such order");
    assert_eq!(app.invocations().len(), 6);
}

fn subscription(topic: &str, routes: Option<pb::TopicRoutes>) -> pb::TopicSubscription {
    pb::TopicSubscription {
        pubsub_name: "pubsub".into(),
        topic: topic.into(),
        routes,
        ..Default::default()
    }
}

async fn publish(sc: &Sidecar, topic: &str, body: Value, query: &str) {
    let resp = client()
        .post(sc.url(&format!("/v1.0/publish/pubsub/{topic}{query}")))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204, "publish to {topic}");
}

#[tokio::test]
async fn pubsub_reaches_a_grpc_app_through_on_topic_event() {
    let routes = pb::TopicRoutes {
        rules: vec![pb::TopicRule {
            r#match: r#"event.type == "widget""#.into(),
            path: "/widgets".into(),
        }],
        default: "/orders".into(),
    };
    let mut bulk = subscription(
        "bulk",
        Some(pb::TopicRoutes {
            rules: Vec::new(),
            default: "/bulk".into(),
        }),
    );
    bulk.bulk_subscribe = Some(pb::BulkSubscribeConfig {
        enabled: true,
        max_messages_count: 10,
        max_await_duration_ms: 50,
    });
    let app = GrpcApp::start(vec![
        subscription("orders", Some(routes)),
        subscription("plain", None),
        subscription(
            "retry",
            Some(pb::TopicRoutes {
                rules: Vec::new(),
                default: "/retry".into(),
            }),
        ),
        subscription(
            "broken",
            Some(pb::TopicRoutes {
                rules: Vec::new(),
                default: "/broken".into(),
            }),
        ),
        bulk,
    ])
    .await;
    app.answer("/retry", EventAnswer::RetryTimes(2));
    app.answer("/broken", EventAnswer::Error(Code::Unimplemented));
    let dir = tempfile::tempdir().unwrap();
    let sc = start(
        grpc_sidecar("g", &app, &dir.path().join("nr.db"))
            .resource("pubsub.yaml", PUBSUB)
            .env("APP_API_TOKEN", "app-secret"),
    )
    .await;

    // The subscriptions are listed as programmatic, once the app's list was read (after the
    // sidecar reports healthy).
    let deadline = Instant::now() + Duration::from_secs(10);
    let meta = loop {
        let meta = json(client().get(sc.url("/v1.0/metadata")).send().await.unwrap()).await;
        if meta["subscriptions"].is_array() || Instant::now() > deadline {
            break meta;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let subs = meta["subscriptions"].as_array().expect("subscriptions");
    assert_eq!(subs.len(), 5, "{meta}");
    assert!(subs.iter().all(|s| s["type"] == "PROGRAMMATIC"), "{meta}");

    publish(&sc, "orders", json!({"id": 1}), "").await;
    publish(
        &sc,
        "orders",
        json!({"id": 2}),
        "?metadata.cloudevent.type=widget",
    )
    .await;
    publish(&sc, "plain", json!("text"), "").await;
    let events = app
        .wait_for_events(Duration::from_secs(10), "three events", |e| e.len() >= 3)
        .await;
    let by_path = |p: &str| {
        events
            .iter()
            .find(|e| e.request.path == p)
            .unwrap_or_else(|| panic!("no event on {p:?}: {events:#?}"))
    };
    let order = by_path("/orders");
    assert_eq!(order.request.topic, "orders");
    assert_eq!(order.request.pubsub_name, "pubsub");
    assert_eq!(order.request.data_content_type, "application/json");
    assert_eq!(order.request.spec_version, "1.0");
    let data: Value = serde_json::from_slice(&order.request.data).unwrap();
    assert_eq!(data, json!({"id": 1}));
    let ext = order.request.extensions.as_ref().expect("extensions");
    assert!(ext.fields.contains_key("traceparent"), "{ext:?}");
    assert_eq!(order.metadata["dapr-api-token"], "app-secret");
    let widget = by_path("/widgets");
    assert_eq!(widget.request.r#type, "widget");
    // A subscription without routes delivers with an empty path.
    let plain = by_path("");
    assert_eq!(plain.request.topic, "plain");

    // RETRY twice, then SUCCESS: three deliveries of one event.
    publish(&sc, "retry", json!({"n": 1}), "").await;
    let events = app
        .wait_for_events(Duration::from_secs(10), "three deliveries", |e| {
            e.iter().filter(|e| e.request.path == "/retry").count() >= 3
        })
        .await;
    let ids: Vec<&str> = events
        .iter()
        .filter(|e| e.request.path == "/retry")
        .map(|e| e.request.id.as_str())
        .collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "one event: {ids:?}");

    // Unimplemented is final: delivered once, never again.
    publish(&sc, "broken", json!({"n": 1}), "").await;
    app.wait_for_events(Duration::from_secs(10), "the broken delivery", |e| {
        e.iter().any(|e| e.request.path == "/broken")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let broken = app
        .events()
        .iter()
        .filter(|e| e.request.path == "/broken")
        .count();
    assert_eq!(broken, 1, "an Unimplemented answer is not retried");

    // Bulk: the app answers OnBulkTopicEvent with Unimplemented; the Alpha1 RPC gets it.
    for i in 0..3 {
        publish(&sc, "bulk", json!({"i": i}), "").await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got: usize = app.bulk().iter().map(|b| b.entries.len()).sum();
        if got >= 3 {
            break;
        }
        assert!(Instant::now() < deadline, "bulk entries: {got}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let batch = &app.bulk()[0];
    assert_eq!(batch.topic, "bulk");
    assert_eq!(batch.path, "/bulk");
    use pb::topic_event_bulk_request_entry::Event;
    match &batch.entries[0].event {
        Some(Event::CloudEvent(ce)) => {
            let v: Value = serde_json::from_slice(&ce.data).unwrap();
            assert!(v["i"].is_number(), "{v}");
        }
        other => panic!("expected a CloudEvent entry, got {other:?}"),
    }
}

#[tokio::test]
async fn health_checks_use_app_callback_health_check() {
    let app = GrpcApp::start(Vec::new()).await;
    let dir = tempfile::tempdir().unwrap();
    let sc = start(
        grpc_sidecar("g", &app, &dir.path().join("nr.db"))
            .arg("--enable-app-health-check")
            .arg("--app-health-probe-interval")
            .arg("1")
            .arg("--app-health-threshold")
            .arg("1"),
    )
    .await;
    let c = client();
    let call = || c.post(sc.url("/v1.0/invoke/g/method/ping")).send();
    let deadline = Instant::now() + Duration::from_secs(10);
    while call().await.unwrap().status() != 200 {
        assert!(Instant::now() < deadline, "the app never became healthy");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(app.health_checks() >= 1);

    app.set_healthy(false);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let resp = call().await.unwrap();
        if resp.status() == 500 {
            let v = json(resp).await;
            assert_eq!(v["errorCode"], "ERR_DIRECT_INVOKE");
            assert!(v["message"].as_str().unwrap().contains("healthy"), "{v}");
            break;
        }
        assert!(Instant::now() < deadline, "never marked unhealthy");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.set_healthy(true);
    let deadline = Instant::now() + Duration::from_secs(10);
    while call().await.unwrap().status() != 200 {
        assert!(Instant::now() < deadline, "never healthy again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn grpcs_apps_are_called_over_tls() {
    let app = GrpcApp::start_tls(vec![subscription("orders", None)]).await;
    let dir = tempfile::tempdir().unwrap();
    let sc = start(
        tandem()
            .app_id("g")
            .app_port(app.port)
            .arg("--app-protocol")
            .arg("grpcs")
            .resource("pubsub.yaml", PUBSUB)
            .name_resolution_db(dir.path().join("nr.db")),
    )
    .await;
    let resp = client()
        .post(sc.url("/v1.0/invoke/g/method/secure"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", sc.log());
    assert_eq!(json(resp).await["method"], "secure");
    publish(&sc, "orders", json!({"tls": true}), "").await;
    app.wait_for_events(Duration::from_secs(10), "an event over TLS", |e| {
        !e.is_empty()
    })
    .await;
}

async fn app_callback(sc: &Sidecar) -> AppCallbackClient<Channel> {
    AppCallbackClient::connect(format!("http://127.0.0.1:{}", sc.grpc_port))
        .await
        .expect("connect")
}

fn with_app_id<T>(msg: T, app_id: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut()
        .insert("dapr-app-id", app_id.parse().unwrap());
    req
}

/// An `OnInvoke` of `method` proxied to `app_id` (its `dapr-app-id` metadata).
fn proxied(method: &str, app_id: &str) -> tonic::Request<pb_common::InvokeRequest> {
    with_app_id(
        pb_common::InvokeRequest {
            method: method.into(),
            ..Default::default()
        },
        app_id,
    )
}

#[tokio::test]
async fn grpc_proxying_with_dapr_app_id() {
    let app = GrpcApp::start(Vec::new()).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("nr.db");
    let target = start(grpc_sidecar("g", &app, &db)).await;
    let caller = start(
        tandem()
            .app_id("caller")
            .name_resolution_db(&db)
            .env("DAPR_API_TOKEN", "api-secret"),
    )
    .await;

    // Unary, through the caller's sidecar and the target's: the app's own service, its
    // answer and its error status, unchanged.
    let mut c = app_callback(&caller).await;
    let mut req = proxied("proxied", "g");
    req.metadata_mut()
        .insert("dapr-api-token", "api-secret".parse().unwrap());
    let resp = c.on_invoke(req).await.expect("proxied OnInvoke");
    assert_eq!(resp.metadata().get("x-grpc-app").unwrap(), "yes");
    let v: Value = serde_json::from_slice(&resp.into_inner().data.unwrap().value).unwrap();
    assert_eq!(v["method"], "proxied");
    assert!(v["metadata"].get("dapr-api-token").is_none(), "{v}");
    assert_eq!(v["metadata"]["dapr-caller-app-id"], "caller");

    let mut req = proxied("fail-not-found", "g");
    req.metadata_mut()
        .insert("dapr-api-token", "api-secret".parse().unwrap());
    let err = c.on_invoke(req).await.expect_err("the app's status");
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.message(), "no such order");

    // The API token is enforced on proxied calls too.
    let err = c
        .on_invoke(with_app_id(pb_common::InvokeRequest::default(), "g"))
        .await
        .expect_err("no token");
    assert_eq!(err.code(), Code::Unauthenticated);

    // No app id: an unknown service.
    let mut plain = app_callback(&target).await;
    let err = plain
        .on_invoke(tonic::Request::new(pb_common::InvokeRequest::default()))
        .await
        .expect_err("no app id");
    assert_eq!(err.code(), Code::Unimplemented);
    assert!(err.message().contains("dapr-app-id"), "{}", err.message());

    // Local proxying: the target's own sidecar.
    let resp = plain
        .on_invoke(proxied("local", "g"))
        .await
        .expect("local proxy");
    let v: Value = serde_json::from_slice(&resp.into_inner().data.unwrap().value).unwrap();
    assert_eq!(v["method"], "local");

    // A bidirectional stream through both sidecars: each message is echoed before the next
    // one is sent, and the trailers arrive at the end.
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<ChannelBody>();
    let (tx, body) = ChannelBody::new();
    let req = http::Request::post(format!(
        "http://127.0.0.1:{}/tandem.test.Echo/Stream",
        caller.grpc_port
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .header("dapr-app-id", "g")
    .header("dapr-api-token", "api-secret")
    .body(body)
    .unwrap();
    tx.send(grpc_frame(b"one")).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), http.request(req))
        .await
        .expect("stream opened in time")
        .expect("stream");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("a frame in time")
            .expect("a frame")
            .expect("no error")
    };
    let first = next().await.into_data().expect("data");
    assert_eq!(first, grpc_frame(b"one"));
    tx.send(grpc_frame(b"two")).unwrap();
    let second = next().await.into_data().expect("data");
    assert_eq!(second, grpc_frame(b"two"));
    drop(tx);
    let trailers = next().await.into_trailers().expect("trailers");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["x-echo-trailer"], "done");
}

#[tokio::test]
async fn a_proxied_call_to_a_silent_sidecar_fails_instead_of_hanging() {
    // SIGSTOP leaves the target sidecar's sockets open: to the caller's sidecar it is a
    // machine that vanished without closing anything. Its HTTP/2 connection to the target
    // notices that its PINGs go unanswered and fails the call in flight.
    let app = GrpcApp::start(Vec::new()).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("nr.db");
    let target = start(grpc_sidecar("g", &app, &db)).await;
    let caller = start(tandem().app_id("caller").name_resolution_db(&db)).await;
    let mut c = app_callback(&caller).await;
    let call = |method: &str| proxied(method, "g");
    c.on_invoke(call("before")).await.expect("proxied OnInvoke");

    target.freeze();
    let answer = tokio::time::timeout(Duration::from_secs(60), c.on_invoke(call("frozen"))).await;
    target.thaw();
    let err = answer
        .expect("the call is answered instead of hanging")
        .expect_err("the target never answered");
    assert_eq!(err.code(), Code::Internal, "{err:?}");
    assert!(
        err.message()
            .starts_with("failed to invoke, id: g, err: calling the sidecar at")
            && err.message().contains("keep-alive timed out"),
        "{}",
        err.message()
    );

    // Once the target runs again (and has renewed its registration), calls reach it.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match c.on_invoke(call("after")).await {
            Ok(resp) => {
                let v: Value =
                    serde_json::from_slice(&resp.into_inner().data.unwrap().value).unwrap();
                assert_eq!(v["method"], "after");
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "not reached again: {e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn grpc_proxying_between_sidecars_over_mtls() {
    // Under mTLS the target's sidecar serves the proxied call on its HTTP/2 server over TLS,
    // with the caller's identity taken from its certificate.
    let app = GrpcApp::start(Vec::new()).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("nr.db");
    let home = dir.path().join("home").display().to_string();
    let secure = |b: SidecarBuilder| b.env("TANDEM_HOME", &home).arg("--enable-mtls");
    let _target = start(secure(grpc_sidecar("g", &app, &db))).await;
    let caller = start(secure(tandem().app_id("caller").name_resolution_db(&db))).await;
    let mut c = app_callback(&caller).await;
    for method in ["one", "two"] {
        let mut req = proxied(method, "g");
        req.metadata_mut()
            .insert("dapr-caller-app-id", "forged".parse().unwrap());
        let resp = c.on_invoke(req).await.expect("proxied over mTLS");
        assert_eq!(resp.metadata().get("x-grpc-app").unwrap(), "yes");
        let v: Value = serde_json::from_slice(&resp.into_inner().data.unwrap().value).unwrap();
        assert_eq!(v["method"], method);
        assert_eq!(v["metadata"]["dapr-caller-app-id"], "caller", "{v}");
    }
}

#[tokio::test]
async fn a_proxied_call_the_target_sidecar_refuses_gets_a_grpc_status() {
    // The target's sidecar denies every call (accessControl): its refusal reaches the gRPC
    // client as a status, not as an HTTP error body the client cannot read.
    let app = GrpcApp::start(Vec::new()).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("nr.db");
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: acl\nspec:\n  accessControl:\n    defaultAction: deny\n    trustDomain: public\n",
    )
    .unwrap();
    let _target = start(
        grpc_sidecar("g", &app, &db)
            .arg("--config")
            .arg(config.display().to_string()),
    )
    .await;
    let caller = start(tandem().app_id("caller").name_resolution_db(&db)).await;
    let mut c = app_callback(&caller).await;
    let err = c
        .on_invoke(with_app_id(pb_common::InvokeRequest::default(), "g"))
        .await
        .expect_err("denied by the target's sidecar");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains(
            "access control policy has denied access to id: spiffe://public/ns/default/caller"
        ),
        "{}",
        err.message()
    );
}
