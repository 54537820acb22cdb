//! End-to-end: `bindings.redis` through the real binary, against the Redis at 127.0.0.1:6379
//! (skipped when unreachable, unless `TANDEM_REQUIRE_SERVICES=1`): `create` with a TTL, `get`,
//! `increment` and `delete` over `/v1.0/bindings/{name}`, checked with a plain Redis client,
//! a missing key as `ERR_INVOKE_OUTPUT_BINDING`, and `get` over gRPC `InvokeBinding`.

mod common;

use common::binding::{self, component, invoke};
use common::{assert_error, start, tandem};
use dapr::dapr::proto::runtime::v1 as pb;
use dapr::dapr::proto::runtime::v1::dapr_client::DaprClient;
use serde_json::{Value, json};
use tandem_testkit::{Sidecar, services};

const REDIS: &str = "127.0.0.1:6379";

fn binding() -> String {
    component(
        "cache",
        "bindings.redis",
        &[("redisHost", REDIS), ("redisDB", "1")],
    )
}

/// A key no other run uses.
fn unique(what: &str) -> String {
    binding::unique("redis-binding-e2e", what)
}

async fn call(sc: &Sidecar, body: Value) -> reqwest::Response {
    invoke(sc, "cache", body).await
}

#[tokio::test]
async fn redis_binding_over_http_and_grpc() {
    if !services::require("Redis", REDIS) {
        return;
    }
    let mut r = redis::Client::open(format!("redis://{REDIS}/1"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("connect to redis");
    let sc = start(tandem().resource("cache.yaml", &binding())).await;
    let key = unique("order");

    // create: the JSON-encoded data under `key` (database 1), with the TTL; 204.
    let resp = call(
        &sc,
        json!({"operation": "create", "data": {"id": 7}, "metadata": {"key": key, "ttlInSeconds": "300"}}),
    )
    .await;
    assert_eq!(resp.status(), 204);
    let stored: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(stored, r#"{"id":7}"#);
    let ttl: i64 = redis::cmd("TTL")
        .arg(&key)
        .query_async(&mut r)
        .await
        .unwrap();
    assert!((290..=300).contains(&ttl), "ttl {ttl}");

    // get: the stored bytes.
    let resp = call(&sc, json!({"operation": "get", "metadata": {"key": key}})).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap(), json!({"id": 7}));

    // increment twice, then read it back.
    let counter = unique("counter");
    for _ in 0..2 {
        let resp = call(
            &sc,
            json!({"operation": "increment", "metadata": {"key": counter}}),
        )
        .await;
        assert_eq!(resp.status(), 204);
    }
    let resp = call(
        &sc,
        json!({"operation": "get", "metadata": {"key": counter}}),
    )
    .await;
    assert_eq!(resp.text().await.unwrap(), "2");

    // delete, then get answers 200 with no body.
    for k in [&key, &counter] {
        let resp = call(&sc, json!({"operation": "delete", "metadata": {"key": k}})).await;
        assert_eq!(resp.status(), 204);
    }
    let exists: i64 = redis::cmd("EXISTS")
        .arg(&key)
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(exists, 0);
    let resp = call(&sc, json!({"operation": "get", "metadata": {"key": key}})).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.bytes().await.unwrap().is_empty());

    // Errors: no key; an operation the binding does not have.
    let resp = call(&sc, json!({"operation": "get"})).await;
    assert_error(
        resp,
        500,
        "ERR_INVOKE_OUTPUT_BINDING",
        "error invoking output binding cache: redis binding: missing key in request metadata",
    )
    .await;
    let resp = call(&sc, json!({"operation": "exec", "metadata": {"key": key}})).await;
    assert_error(
        resp,
        500,
        "ERR_INVOKE_OUTPUT_BINDING",
        "supported operations:create get delete increment",
    )
    .await;

    // gRPC: create raw bytes, get them back.
    let mut d = DaprClient::connect(format!("http://127.0.0.1:{}", sc.grpc_port))
        .await
        .unwrap();
    let raw = unique("raw");
    d.invoke_binding(pb::InvokeBindingRequest {
        name: "cache".into(),
        data: b"raw bytes".to_vec(),
        metadata: [("key".to_owned(), raw.clone())].into(),
        operation: "create".into(),
    })
    .await
    .expect("InvokeBinding create");
    let got = d
        .invoke_binding(pb::InvokeBindingRequest {
            name: "cache".into(),
            metadata: [
                ("key".to_owned(), raw.clone()),
                ("delete".to_owned(), "true".to_owned()),
            ]
            .into(),
            operation: "get".into(),
            ..Default::default()
        })
        .await
        .expect("InvokeBinding get")
        .into_inner();
    assert_eq!(got.data, b"raw bytes");
    let exists: i64 = redis::cmd("EXISTS")
        .arg(&raw)
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(exists, 0, "get with delete removed the key");
}
