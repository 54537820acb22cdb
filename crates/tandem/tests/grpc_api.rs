//! End-to-end: the Dapr gRPC API through the real binary, driven by the `dapr` crate's
//! generated client (`dapr.proto.runtime.v1.Dapr`).
//!
//! State (ETags, bulk, transactions, query, raw vs JSON values across protocols), publishing
//! with delivery to an HTTP subscriber, `InvokeService` to a mock app, secrets, metadata, the
//! API token, an unimplemented RPC, the message-size limit and `Shutdown`.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{IN_MEMORY, client, start, tandem, tandem_for};
use dapr::dapr::proto::common::v1 as pb_common;
use dapr::dapr::proto::runtime::v1 as pb;
use dapr::dapr::proto::runtime::v1::dapr_client::DaprClient;
use prost::Message;
use serde_json::{Value, json};
use tandem_api::grpc::error::{ERROR_INFO_TYPE, ErrorInfo};
use tandem_testkit::Sidecar;
use tandem_testkit::mock_app::MockApp;
use tandem_testkit::subscriber::Subscriber;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

type Client = DaprClient<Channel>;

async fn grpc(sc: &Sidecar) -> Client {
    assert_ne!(sc.grpc_port, 0, "the ports file names no gRPC port");
    DaprClient::connect(format!("http://127.0.0.1:{}", sc.grpc_port))
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the gRPC API: {e}; log:\n{}", sc.log()))
}

/// The `ErrorInfo` detail of a status (decoded from its `google.rpc.Status` details).
fn error_info(s: &Status) -> ErrorInfo {
    let rpc = dapr::google::rpc::Status::decode(s.details()).expect("google.rpc.Status details");
    assert_eq!(rpc.code, s.code() as i32, "details code");
    assert_eq!(rpc.message, s.message(), "details message");
    let any = rpc
        .details
        .iter()
        .find(|d| d.type_url == ERROR_INFO_TYPE)
        .unwrap_or_else(|| panic!("no ErrorInfo in {:?}", rpc.details));
    let info = ErrorInfo::decode(any.value.as_slice()).expect("ErrorInfo");
    assert_eq!(info.domain, "dapr.io");
    info
}

fn item(key: &str, value: &[u8]) -> pb_common::StateItem {
    pb_common::StateItem {
        key: key.into(),
        value: value.to_vec(),
        ..Default::default()
    }
}

fn with_etag(mut i: pb_common::StateItem, etag: &str) -> pb_common::StateItem {
    i.etag = Some(pb_common::Etag { value: etag.into() });
    i
}

async fn save(c: &mut Client, store: &str, items: Vec<pb_common::StateItem>) -> Result<(), Status> {
    c.save_state(pb::SaveStateRequest {
        store_name: store.into(),
        states: items,
    })
    .await
    .map(|_| ())
}

async fn get(c: &mut Client, key: &str) -> pb::GetStateResponse {
    c.get_state(pb::GetStateRequest {
        store_name: "statestore".into(),
        key: key.into(),
        ..Default::default()
    })
    .await
    .expect("GetState")
    .into_inner()
}

#[tokio::test]
async fn state_round_trip_with_etags_and_rich_errors() {
    let sc = start(tandem().resource("store.yaml", IN_MEMORY)).await;
    let mut c = grpc(&sc).await;

    save(&mut c, "statestore", vec![item("k", b"v1")])
        .await
        .unwrap();
    let got = get(&mut c, "k").await;
    assert_eq!(got.data, b"v1");
    assert!(!got.etag.is_empty());
    let etag = got.etag;

    // A stale ETag: ABORTED, with an ErrorInfo detail naming the error code.
    save(
        &mut c,
        "statestore",
        vec![with_etag(item("k", b"v2"), &etag)],
    )
    .await
    .unwrap();
    let err = save(
        &mut c,
        "statestore",
        vec![with_etag(item("k", b"v3"), &etag)],
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::Aborted, "{err:?}");
    assert!(
        err.message()
            .contains("failed saving state in state store statestore")
    );
    assert_eq!(error_info(&err).reason, "ERR_STATE_SAVE");
    let fresh = get(&mut c, "k").await;
    assert_eq!(fresh.data, b"v2");

    // Delete with a stale ETag, then with the right one.
    let err = c
        .delete_state(pb::DeleteStateRequest {
            store_name: "statestore".into(),
            key: "k".into(),
            etag: Some(pb_common::Etag { value: etag }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Aborted);
    assert_eq!(error_info(&err).reason, "ERR_STATE_DELETE");
    c.delete_state(pb::DeleteStateRequest {
        store_name: "statestore".into(),
        key: "k".into(),
        etag: Some(pb_common::Etag { value: fresh.etag }),
        ..Default::default()
    })
    .await
    .unwrap();
    // A missing key is an empty answer, not an error.
    let gone = get(&mut c, "k").await;
    assert!(gone.data.is_empty() && gone.etag.is_empty());

    // Rich errors: store not found, illegal key.
    let err = save(&mut c, "nope", vec![item("k", b"v")])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(err.message(), "state store nope is not found");
    let info = error_info(&err);
    assert_eq!(info.reason, "DAPR_STATE_NOT_FOUND");
    assert_eq!(info.metadata["appID"], "test-app");
    let err = save(&mut c, "statestore", vec![item("a||b", b"v")])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(error_info(&err).reason, "DAPR_STATE_ILLEGAL_KEY");
    let rpc = dapr::google::rpc::Status::decode(err.details()).unwrap();
    let types: Vec<&str> = rpc.details.iter().map(|d| d.type_url.as_str()).collect();
    assert_eq!(
        types,
        [
            "type.googleapis.com/google.rpc.BadRequest",
            "type.googleapis.com/google.rpc.ResourceInfo",
            ERROR_INFO_TYPE
        ]
    );
}

#[tokio::test]
async fn bulk_get_bulk_delete_transaction_and_query() {
    let sc = start(tandem().resource("store.yaml", IN_MEMORY)).await;
    let mut c = grpc(&sc).await;
    let json_item = |key: &str, v: Value| {
        let mut i = item(key, v.to_string().as_bytes());
        i.metadata
            .insert("contentType".into(), "application/json".into());
        i
    };
    save(
        &mut c,
        "statestore",
        vec![
            json_item("p1", json!({"state": "CA", "n": 1})),
            json_item("p2", json!({"state": "CA", "n": 2})),
            json_item("p3", json!({"state": "NY", "n": 3})),
        ],
    )
    .await
    .unwrap();

    let bulk = c
        .get_bulk_state(pb::GetBulkStateRequest {
            store_name: "statestore".into(),
            keys: vec!["p1".into(), "missing".into(), "p3".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let by_key: HashMap<&str, &pb::BulkStateItem> =
        bulk.items.iter().map(|i| (i.key.as_str(), i)).collect();
    assert_eq!(by_key.len(), 3);
    let p1: Value = serde_json::from_slice(&by_key["p1"].data).unwrap();
    assert_eq!(p1["n"], 1);
    assert!(!by_key["p1"].etag.is_empty());
    assert!(by_key["missing"].data.is_empty());

    let resp = c
        .query_state_alpha1(pb::QueryStateRequest {
            store_name: "statestore".into(),
            query: json!({"filter": {"EQ": {"state": "CA"}}, "sort": [{"key": "n"}]}).to_string(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let keys: Vec<&str> = resp.results.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(keys, ["p1", "p2"]);
    let first: Value = serde_json::from_slice(&resp.results[0].data).unwrap();
    assert_eq!(first["state"], "CA");

    // Transaction: upsert one, delete another; an unknown operation is refused.
    let op = |kind: &str, i: pb_common::StateItem| pb::TransactionalStateOperation {
        operation_type: kind.into(),
        request: Some(i),
    };
    c.execute_state_transaction(pb::ExecuteStateTransactionRequest {
        store_name: "statestore".into(),
        operations: vec![
            op("upsert", item("t1", b"raw")),
            op("delete", item("p3", b"")),
        ],
        metadata: HashMap::new(),
    })
    .await
    .unwrap();
    assert_eq!(get(&mut c, "t1").await.data, b"raw");
    assert!(get(&mut c, "p3").await.data.is_empty());
    let err = c
        .execute_state_transaction(pb::ExecuteStateTransactionRequest {
            store_name: "statestore".into(),
            operations: vec![op("merge", item("t1", b"x"))],
            metadata: HashMap::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(error_info(&err).reason, "ERR_NOT_SUPPORTED_STATE_OPERATION");

    // Bulk delete.
    c.delete_bulk_state(pb::DeleteBulkStateRequest {
        store_name: "statestore".into(),
        states: vec![item("p1", b""), item("p2", b"")],
    })
    .await
    .unwrap();
    assert!(get(&mut c, "p1").await.data.is_empty());
    assert!(get(&mut c, "p2").await.data.is_empty());
}

#[tokio::test]
async fn values_are_raw_over_grpc_and_json_over_http() {
    let sc = start(tandem().resource("store.yaml", IN_MEMORY)).await;
    let mut c = grpc(&sc).await;
    let http = client();

    // Non-JSON bytes saved over gRPC come back byte for byte over gRPC.
    let raw = [0u8, 159, 146, 150, 255, b'x'];
    save(&mut c, "statestore", vec![item("raw", &raw)])
        .await
        .unwrap();
    assert_eq!(get(&mut c, "raw").await.data, raw);

    // A value saved over HTTP is stored as JSON text, which gRPC hands back as is.
    let resp = http
        .post(sc.url("/v1.0/state/statestore"))
        .header("content-type", "application/json")
        .body(r#"[{"key": "h", "value": "hello"}, {"key": "o", "value": {"a": [1, 2]}}]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(get(&mut c, "h").await.data, b"\"hello\"");
    assert_eq!(get(&mut c, "o").await.data, br#"{"a": [1, 2]}"#);

    // A gRPC value marked application/json reads back over HTTP as that JSON.
    let mut j = item("j", br#"{"n":7}"#);
    j.metadata
        .insert("contentType".into(), "application/json".into());
    save(&mut c, "statestore", vec![j]).await.unwrap();
    let v: Value = http
        .get(sc.url("/v1.0/state/statestore/j"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v, json!({"n": 7}));

    // ... and it must then be JSON.
    let mut bad = item("bad", b"not json");
    bad.metadata
        .insert("contentType".into(), "application/json".into());
    let err = save(&mut c, "statestore", vec![bad]).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(error_info(&err).reason, "ERR_MALFORMED_REQUEST");

    // A raw text value saved over gRPC reads over HTTP as its bytes.
    save(&mut c, "statestore", vec![item("text", b"plain words")])
        .await
        .unwrap();
    let body = http
        .get(sc.url("/v1.0/state/statestore/text"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(&body[..], b"plain words");
}

const PUBSUB: &str = "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: pubsub\nspec:\n  type: pubsub.in-memory\n  version: v1\n";

#[tokio::test]
async fn publish_and_bulk_publish_reach_an_http_subscriber() {
    let sub = Subscriber::start(json!([
        {"pubsubname": "pubsub", "topic": "orders", "route": "/orders"}
    ]))
    .await;
    let sc = start(
        tandem()
            .app_id("grpc-pub")
            .resource("pubsub.yaml", PUBSUB)
            .app_port(sub.port),
    )
    .await;
    let mut c = grpc(&sc).await;
    // Wait for the app's subscription to be listed (over gRPC metadata).
    for _ in 0..500 {
        let m = c.get_metadata(pb::GetMetadataRequest {}).await.unwrap();
        if !m.get_ref().subscriptions.is_empty() {
            let s = &m.get_ref().subscriptions[0];
            assert_eq!(s.topic, "orders");
            assert_eq!(s.r#type, pb::PubsubSubscriptionType::Programmatic as i32);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;

    let mut req = Request::new(pb::PublishEventRequest {
        pubsub_name: "pubsub".into(),
        topic: "orders".into(),
        data: br#"{"orderId":7}"#.to_vec(),
        data_content_type: "application/json".into(),
        metadata: HashMap::new(),
    });
    req.metadata_mut().insert(
        "traceparent",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
            .parse()
            .unwrap(),
    );
    c.publish_event(req).await.unwrap();
    let got = sub
        .wait_for(Duration::from_secs(10), "the published order", |r| {
            !r.is_empty()
        })
        .await;
    let ev = &got[0].body;
    assert_eq!(ev["data"], json!({"orderId": 7}));
    assert_eq!(ev["source"], "grpc-pub");
    assert_eq!(ev["topic"], "orders");
    // The sidecar continues the caller's trace with a span of its own.
    common::assert_child_of(
        &ev["traceparent"],
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    );

    let entry = |id: &str, body: &str| pb::BulkPublishRequestEntry {
        entry_id: id.into(),
        event: body.as_bytes().to_vec(),
        content_type: "text/plain".into(),
        metadata: HashMap::new(),
    };
    let resp = c
        .bulk_publish_event(pb::BulkPublishRequest {
            pubsub_name: "pubsub".into(),
            topic: "orders".into(),
            entries: vec![entry("1", "one"), entry("2", "two")],
            metadata: HashMap::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(resp.failed_entries.is_empty());
    let got = sub
        .wait_for(Duration::from_secs(10), "the bulk-published events", |r| {
            r.len() >= 3
        })
        .await;
    let mut texts: Vec<String> = got[1..]
        .iter()
        .map(|r| r.body["data"].as_str().unwrap_or_default().to_owned())
        .collect();
    texts.sort();
    assert_eq!(texts, ["one", "two"]);

    // Errors: an unknown pub/sub is INVALID_ARGUMENT with its reason; duplicate entry ids too.
    let err = c
        .publish_event(pb::PublishEventRequest {
            pubsub_name: "nope".into(),
            topic: "orders".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(error_info(&err).reason, "DAPR_PUBSUB_NOT_FOUND");
    #[allow(deprecated)] // the Alpha1 name is deprecated but still served
    let err = c
        .bulk_publish_event_alpha1(pb::BulkPublishRequest {
            pubsub_name: "pubsub".into(),
            topic: "orders".into(),
            entries: vec![entry("1", "a"), entry("1", "b")],
            metadata: HashMap::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(error_info(&err).reason, "DAPR_PUBSUB_MARSHAL_EVENTS");
}

#[tokio::test]
async fn invoke_service_reaches_the_local_app() {
    let app = MockApp::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let sc = start(tandem_for(&app, dir.path().join("nr.db"))).await;
    let mut c = grpc(&sc).await;
    let invoke = |method: &str, verb: i32, query: &str, body: &[u8]| {
        let mut req = invoke_request("a", method, verb, query, body);
        req.metadata_mut()
            .insert("x-custom", "kept".parse().unwrap());
        req
    };

    // POST with a body and a query: the echo comes back in data.value, typed, with the status.
    let resp = c
        .invoke_service(invoke("orders/1", 3, "x=1", b"hello"))
        .await
        .unwrap();
    assert_eq!(resp.metadata().get("dapr-http-status").unwrap(), "200");
    assert_eq!(resp.metadata().get("x-mock-app").unwrap(), "a");
    assert_eq!(
        resp.metadata().get("dapr-content-type").unwrap(),
        "application/json"
    );
    let resp = resp.into_inner();
    assert_eq!(resp.content_type, "application/json");
    let echo: Value = serde_json::from_slice(&resp.data.unwrap().value).unwrap();
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/orders/1");
    assert_eq!(echo["query"], "x=1");
    assert_eq!(echo["body"], "hello");
    assert_eq!(echo["headers"]["content-type"], "text/plain");
    assert_eq!(echo["headers"]["x-custom"], "kept");
    assert_eq!(echo["headers"]["dapr-caller-app-id"], "a");
    assert!(echo["headers"].get("grpc-timeout").is_none());
    assert!(echo["headers"].get("te").is_none());

    // GET (verb 1); NONE (0) is sent as POST.
    let resp = c
        .invoke_service(invoke("items", 1, "", b""))
        .await
        .unwrap()
        .into_inner();
    let echo: Value = serde_json::from_slice(&resp.data.unwrap().value).unwrap();
    assert_eq!(echo["method"], "GET");
    let resp = c
        .invoke_service(invoke("items", 0, "", b""))
        .await
        .unwrap()
        .into_inner();
    let echo: Value = serde_json::from_slice(&resp.data.unwrap().value).unwrap();
    assert_eq!(echo["method"], "POST");

    // A non-2xx answer is an error mapped from the HTTP status, with the body's start.
    let mut req = invoke("missing", 1, "", b"");
    req.metadata_mut()
        .insert("mock-status", "404".parse().unwrap());
    let err = c.invoke_service(req).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.message(), "Not Found");
    assert_eq!(err.metadata().get("dapr-http-status").unwrap(), "404");
    let info = error_info(&err);
    assert_eq!(info.reason, "Not Found");
    assert_eq!(info.metadata["http.code"], "404");

    // An unknown app: the runtime's invocation error.
    let mut req = invoke("x", 1, "", b"");
    req.get_mut().id = "nobody".into();
    let err = c.invoke_service(req).await.unwrap_err();
    assert_eq!(err.code(), Code::Internal);
    assert!(
        err.message().contains("failed to invoke, id: nobody"),
        "{err:?}"
    );
    assert_eq!(error_info(&err).reason, "ERR_DIRECT_INVOKE");
}

/// The caller's `grpc-timeout` is enforced by the sidecar: the client below has no timer of
/// its own (no tonic `Channel`), so only the sidecar can end the call early.
#[tokio::test]
async fn grpc_timeout_ends_a_call_with_deadline_exceeded() {
    let app = MockApp::start("slow").await;
    let dir = tempfile::tempdir().unwrap();
    let sc = start(tandem_for(&app, dir.path().join("nr.db"))).await;
    let transport =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http::<tonic::body::Body>();
    let origin = format!("http://127.0.0.1:{}", sc.grpc_port)
        .parse()
        .unwrap();
    let mut c = DaprClient::with_origin(transport, origin);
    let call = |wait_ms: &str, timeout: &str| {
        let mut req = invoke_request("slow", "work", 3, "", b"x");
        req.metadata_mut()
            .insert("mock-wait-ms", wait_ms.parse().unwrap());
        req.metadata_mut()
            .insert("grpc-timeout", timeout.parse().unwrap());
        req
    };
    let started = std::time::Instant::now();
    let err = c
        .invoke_service(call("5000", "300m"))
        .await
        .expect_err("the app answers after the deadline");
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "answered after {:?}",
        started.elapsed()
    );
    // Within its deadline a call is answered as usual.
    let resp = c.invoke_service(call("10", "10S")).await.unwrap();
    assert!(resp.into_inner().data.is_some());
}

/// `InvokeService` of `method` on `app` with an HTTP verb (1 GET, 3 POST, …), a query and a
/// `text/plain` body.
fn invoke_request(
    app: &str,
    method: &str,
    verb: i32,
    query: &str,
    body: &[u8],
) -> Request<pb::InvokeServiceRequest> {
    Request::new(pb::InvokeServiceRequest {
        id: app.into(),
        message: Some(pb_common::InvokeRequest {
            method: method.into(),
            data: Some(any_of(body)),
            content_type: "text/plain".into(),
            http_extension: Some(pb_common::HttpExtension {
                verb,
                querystring: query.into(),
            }),
        }),
    })
}

fn any_of(body: &[u8]) -> prost_types::Any {
    prost_types::Any {
        type_url: String::new(),
        value: body.to_vec(),
    }
}

#[tokio::test]
async fn secrets_get_and_bulk() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secrets.json");
    std::fs::write(
        &path,
        json!({"api-key": "k-123", "db": {"user": "admin"}}).to_string(),
    )
    .unwrap();
    let store = format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: localsecrets\nspec:\n  type: secretstores.local.file\n  version: v1\n  metadata:\n  - name: secretsFile\n    value: {}\n",
        path.display()
    );
    let sc = start(tandem().resource("secrets.yaml", &store)).await;
    let mut c = grpc(&sc).await;
    let one = c
        .get_secret(pb::GetSecretRequest {
            store_name: "localsecrets".into(),
            key: "api-key".into(),
            metadata: HashMap::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        one.data,
        HashMap::from([("api-key".into(), "k-123".into())])
    );
    let all = c
        .get_bulk_secret(pb::GetBulkSecretRequest {
            store_name: "localsecrets".into(),
            metadata: HashMap::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.data["api-key"].secrets["api-key"], "k-123");
    assert_eq!(all.data["db:user"].secrets["db:user"], "admin");
    let err = c
        .get_secret(pb::GetSecretRequest {
            store_name: "nope".into(),
            key: "api-key".into(),
            metadata: HashMap::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(err.message(), "failed finding secret store with key nope");
    assert_eq!(error_info(&err).reason, "ERR_SECRET_STORE_NOT_FOUND");
}

#[tokio::test]
async fn metadata_get_and_set() {
    let sc = start(
        tandem()
            .app_id("meta-app")
            .resource("store.yaml", IN_MEMORY),
    )
    .await;
    let mut c = grpc(&sc).await;
    c.set_metadata(pb::SetMetadataRequest {
        key: "color".into(),
        value: "blue".into(),
    })
    .await
    .unwrap();
    let m = c
        .get_metadata(pb::GetMetadataRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m.id, "meta-app");
    assert_eq!(m.extended_metadata["color"], "blue");
    assert!(m.extended_metadata.contains_key("daprRuntimeVersion"));
    assert!(!m.runtime_version.is_empty());
    let store = m
        .registered_components
        .iter()
        .find(|c| c.name == "statestore")
        .expect("statestore listed");
    assert_eq!(store.r#type, "state.in-memory");
    assert_eq!(store.version, "v1");
    assert!(store.capabilities.iter().any(|c| c == "ETAG"));
    assert!(store.capabilities.iter().any(|c| c == "TRANSACTIONAL"));
    let app = m.app_connection_properties.expect("app connection");
    assert_eq!(app.protocol, "http");
    let actors = m.actor_runtime.expect("actor runtime");
    assert_eq!(
        actors.runtime_status,
        pb::actor_runtime::ActorRuntimeStatus::Disabled as i32
    );
    // The same extended attribute is visible over HTTP.
    let v: Value = client()
        .get(sc.url("/v1.0/metadata"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["extended"]["color"], "blue");
}

#[tokio::test]
async fn api_token_is_required_on_every_call() {
    let sc = start(
        tandem()
            .resource("store.yaml", IN_MEMORY)
            .env("DAPR_API_TOKEN", "s3cret"),
    )
    .await;
    let mut c = grpc(&sc).await;
    let err = c.get_metadata(pb::GetMetadataRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(err.message(), "Unauthorized");
    let info = error_info(&err);
    assert_eq!(info.reason, "Unauthorized");
    assert_eq!(info.metadata["http.code"], "401");
    assert_eq!(
        info.metadata["http.error_message"],
        "missing api token in request metadata"
    );

    let with = |token: &str| {
        let mut req = Request::new(pb::GetMetadataRequest {});
        req.metadata_mut()
            .insert("dapr-api-token", token.parse().unwrap());
        req
    };
    let err = c.get_metadata(with("wrong")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(
        error_info(&err).metadata["http.error_message"],
        "authentication error: api token mismatch"
    );
    let m = c.get_metadata(with("s3cret")).await.unwrap().into_inner();
    assert_eq!(m.id, "test-app");
    // Unimplemented RPCs are behind the token too.
    let err = c
        .invoke_binding(pb::InvokeBindingRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn unimplemented_rpcs_and_message_size_limit() {
    let sc = start(
        tandem()
            .resource("store.yaml", IN_MEMORY)
            .arg("--max-body-size")
            .arg("1Ki"),
    )
    .await;
    let mut c = grpc(&sc).await;
    let err = c
        .get_configuration(pb::GetConfigurationRequest {
            store_name: "config".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    assert_eq!(
        err.message(),
        "GetConfiguration is not implemented by Tandem yet"
    );
    let err = c
        .try_lock_alpha1(pb::TryLockRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);

    // --max-body-size bounds decoded messages.
    let err = save(&mut c, "statestore", vec![item("big", &[b'x'; 4096])])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    save(&mut c, "statestore", vec![item("small", b"ok")])
        .await
        .unwrap();
}

#[tokio::test]
async fn shutdown_stops_the_sidecar() {
    let mut sc = start(tandem()).await;
    let mut c = grpc(&sc).await;
    c.shutdown(pb::ShutdownRequest {}).await.unwrap();
    let status = sc.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "exit status {status}");

    let mut sc = start(tandem()).await;
    let mut c = grpc(&sc).await;
    let mut req = Request::new(pb::ShutdownRequest {});
    req.metadata_mut()
        .insert("dapr-force-shutdown", "true".parse().unwrap());
    c.shutdown(req).await.unwrap();
    let status = sc.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(1));
}

#[tokio::test]
async fn streaming_subscription_receives_and_acknowledges_events() {
    use pb::subscribe_topic_events_request_alpha1::SubscribeTopicEventsRequestType as In;
    use pb::subscribe_topic_events_response_alpha1::SubscribeTopicEventsResponseType as Out;
    use pb::topic_event_response::TopicEventResponseStatus;
    use tonic::codegen::tokio_stream::wrappers::ReceiverStream;

    let sc = start(tandem().app_id("streamer").resource("pubsub.yaml", PUBSUB)).await;
    let mut c = grpc(&sc).await;

    // The first message must be the initial request, with a topic.
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(pb::SubscribeTopicEventsRequestAlpha1 {
        subscribe_topic_events_request_type: Some(In::InitialRequest(
            pb::SubscribeTopicEventsRequestInitialAlpha1 {
                pubsub_name: "pubsub".into(),
                ..Default::default()
            },
        )),
    })
    .await
    .unwrap();
    let err = c
        .subscribe_topic_events_alpha1(ReceiverStream::new(rx))
        .await
        .unwrap_err();
    assert_eq!(err.message(), "topic is required");

    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(pb::SubscribeTopicEventsRequestAlpha1 {
        subscribe_topic_events_request_type: Some(In::InitialRequest(
            pb::SubscribeTopicEventsRequestInitialAlpha1 {
                pubsub_name: "pubsub".into(),
                topic: "jobs".into(),
                ..Default::default()
            },
        )),
    })
    .await
    .unwrap();
    let mut events = c
        .subscribe_topic_events_alpha1(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), events.message())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(
        first.and_then(|m| m.subscribe_topic_events_response_type),
        Some(Out::InitialResponse(_))
    ));

    // Listed as STREAMING while open.
    let m = c
        .get_metadata(pb::GetMetadataRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m.subscriptions.len(), 1);
    assert_eq!(m.subscriptions[0].topic, "jobs");
    assert_eq!(
        m.subscriptions[0].r#type,
        pb::PubsubSubscriptionType::Streaming as i32
    );

    c.publish_event(pb::PublishEventRequest {
        pubsub_name: "pubsub".into(),
        topic: "jobs".into(),
        data: br#"{"job":1}"#.to_vec(),
        data_content_type: "application/json".into(),
        metadata: HashMap::new(),
    })
    .await
    .unwrap();
    let ev = recv_event(&mut events).await;
    assert_eq!(ev.topic, "jobs");
    assert_eq!(ev.pubsub_name, "pubsub");
    assert_eq!(ev.path, "/");
    assert_eq!(ev.source, "streamer");
    assert_eq!(ev.data_content_type, "application/json");
    let data: Value = serde_json::from_slice(&ev.data).unwrap();
    assert_eq!(data, json!({"job": 1}));
    assert!(
        ev.extensions
            .as_ref()
            .is_some_and(|e| e.fields.contains_key("traceparent"))
    );

    // RETRY: the same event comes again; SUCCESS acknowledges it for good.
    let answer =
        |id: &str, status: TopicEventResponseStatus| pb::SubscribeTopicEventsRequestAlpha1 {
            subscribe_topic_events_request_type: Some(In::EventProcessed(
                pb::SubscribeTopicEventsRequestProcessedAlpha1 {
                    id: id.to_owned(),
                    status: Some(pb::TopicEventResponse {
                        status: status as i32,
                    }),
                },
            )),
        };
    tx.send(answer(&ev.id, TopicEventResponseStatus::Retry))
        .await
        .unwrap();
    let again = recv_event(&mut events).await;
    assert_eq!(again.id, ev.id);
    tx.send(answer(&ev.id, TopicEventResponseStatus::Success))
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), events.message())
            .await
            .is_err(),
        "nothing more should arrive"
    );

    // Closing our side ends the stream and the listing.
    drop(tx);
    let end = tokio::time::timeout(Duration::from_secs(10), events.message())
        .await
        .unwrap();
    assert!(matches!(end, Ok(None)), "{end:?}");
    for _ in 0..100 {
        let m = c
            .get_metadata(pb::GetMetadataRequest {})
            .await
            .unwrap()
            .into_inner();
        if m.subscriptions.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the streaming subscription is still listed");
}

/// The next event of a subscription stream (within 10 s).
async fn recv_event(
    events: &mut tonic::Streaming<pb::SubscribeTopicEventsResponseAlpha1>,
) -> pb::TopicEventRequest {
    use pb::subscribe_topic_events_response_alpha1::SubscribeTopicEventsResponseType as Out;
    let m = tokio::time::timeout(Duration::from_secs(10), events.message())
        .await
        .expect("an event in time")
        .expect("stream ok");
    match m.and_then(|m| m.subscribe_topic_events_response_type) {
        Some(Out::EventMessage(ev)) => ev,
        other => panic!("expected an event, got {other:?}"),
    }
}

#[tokio::test]
async fn shutdown_ends_open_subscription_streams_at_once() {
    use pb::subscribe_topic_events_request_alpha1::SubscribeTopicEventsRequestType as In;
    use tonic::codegen::tokio_stream::wrappers::ReceiverStream;

    let mut sc = start(tandem().resource("pubsub.yaml", PUBSUB)).await;
    let mut c = grpc(&sc).await;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(pb::SubscribeTopicEventsRequestAlpha1 {
        subscribe_topic_events_request_type: Some(In::InitialRequest(
            pb::SubscribeTopicEventsRequestInitialAlpha1 {
                pubsub_name: "pubsub".into(),
                topic: "t".into(),
                ..Default::default()
            },
        )),
    })
    .await
    .unwrap();
    let mut events = c
        .subscribe_topic_events_alpha1(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    events.message().await.unwrap();
    let started = std::time::Instant::now();
    c.shutdown(pb::ShutdownRequest {}).await.unwrap();
    // The stream ends instead of holding the drain for the whole grace period (5 s).
    let status = sc.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "exit status {status}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "shutdown took {:?}",
        started.elapsed()
    );
    drop(tx);
}
