//! End-to-end: `state.redis` through the real binary, against the Redis at 127.0.0.1:6379
//! (skipped when unreachable, unless `TANDEM_REQUIRE_SERVICES=1`): the HTTP state API, Dapr's
//! storage layout read back with a plain Redis client, and a Redis that is down at start-up,
//! comes up, goes away and comes back.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{assert_error, client, start, tandem};
use serde_json::{Value, json};
use tandem_testkit::proxy::{TcpProxy, quiet_port};
use tandem_testkit::services;

const REDIS: &str = "127.0.0.1:6379";

fn redis_store(host: &str) -> String {
    format!(
        r#"
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: statestore
spec:
  type: state.redis
  version: v1
  metadata:
  - name: redisHost
    value: "{host}"
  - name: dialTimeout
    value: 1s
"#
    )
}

/// An app-id no other test run uses, so that runs sharing the server never see each other.
fn unique_app_id(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("redis-e2e-{test}-{}-{nanos}", std::process::id())
}

async fn redis() -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://{REDIS}/"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("connect to redis")
}

async fn hash(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> HashMap<String, Vec<u8>> {
    redis::cmd("HGETALL")
        .arg(key)
        .query_async(conn)
        .await
        .unwrap()
}

fn etag_of(resp: &reqwest::Response) -> String {
    resp.headers()["etag"].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn crud_etags_bulk_and_transactions_in_daprs_layout() {
    if !services::require("Redis", REDIS) {
        return;
    }
    let app = unique_app_id("crud");
    let sc = start(
        tandem()
            .app_id(&app)
            .resource("state.yaml", &redis_store(REDIS)),
    )
    .await;
    let c = client();
    let mut direct = redis().await;

    let resp = c
        .post(sc.url("/v1.0/state/statestore"))
        .json(&json!([{"key": "order", "value": {"qty": 3}}]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let resp = c
        .get(sc.url("/v1.0/state/statestore/order"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(etag_of(&resp), "1");
    assert_eq!(resp.json::<Value>().await.unwrap(), json!({"qty": 3}));

    // Dapr's layout: a hash at `<appid>||<key>` with `data` and an integer `version`.
    let stored = hash(&mut direct, &format!("{app}||order")).await;
    assert_eq!(stored["data"], br#"{"qty":3}"#);
    assert_eq!(stored["version"], b"1");

    let resp = c
        .post(sc.url("/v1.0/state/statestore"))
        .json(&json!([{"key": "order", "value": {"qty": 4}, "etag": "1"}]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204, "write with the current etag");
    assert_eq!(
        hash(&mut direct, &format!("{app}||order")).await["version"],
        b"2"
    );
    let stale = c
        .post(sc.url("/v1.0/state/statestore"))
        .json(&json!([{"key": "order", "value": 5, "etag": "1"}]))
        .send()
        .await
        .unwrap();
    assert_error(
        stale,
        409,
        "ERR_STATE_SAVE",
        "failed saving state in state store statestore",
    )
    .await;
    let malformed = c
        .post(sc.url("/v1.0/state/statestore"))
        .json(&json!([{"key": "order", "value": 5, "etag": "not-a-version"}]))
        .send()
        .await
        .unwrap();
    assert_error(malformed, 400, "ERR_STATE_SAVE", "invalid etag value").await;
    let first_write = c
        .post(sc.url("/v1.0/state/statestore"))
        .json(&json!([{"key": "order", "value": 6, "options": {"concurrency": "first-write"}}]))
        .send()
        .await
        .unwrap();
    assert_error(first_write, 409, "ERR_STATE_SAVE", "etag").await;

    // A hash written the way Go daprd writes it reads back with its version as the ETag.
    redis::cmd("HSET")
        .arg(format!("{app}||from-go"))
        .arg("data")
        .arg(r#""written by daprd""#)
        .arg("version")
        .arg("7")
        .exec_async(&mut direct)
        .await
        .unwrap();
    let resp = c
        .get(sc.url("/v1.0/state/statestore/from-go"))
        .send()
        .await
        .unwrap();
    assert_eq!(etag_of(&resp), "7");
    assert_eq!(resp.text().await.unwrap(), r#""written by daprd""#);

    // Bulk get: one entry per key, in order, missing keys bare.
    let resp = c
        .post(sc.url("/v1.0/state/statestore/bulk"))
        .json(&json!({"keys": ["order", "missing", "from-go"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let items: Vec<Value> = resp.json().await.unwrap();
    assert_eq!(
        items,
        vec![
            json!({"key": "order", "data": {"qty": 4}, "etag": "2"}),
            json!({"key": "missing"}),
            json!({"key": "from-go", "data": "written by daprd", "etag": "7"}),
        ]
    );

    // Transactions: all applied, or (stale etag) none.
    let tx = json!({"operations": [
        {"operation": "upsert", "request": {"key": "line-1", "value": [1, 2]}},
        {"operation": "delete", "request": {"key": "from-go", "etag": "7"}},
        {"operation": "upsert", "request": {"key": "order", "value": {"qty": 9}, "etag": "2"}},
    ]});
    let resp = c
        .post(sc.url("/v1.0/state/statestore/transaction"))
        .json(&tx)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let exists: i64 = redis::cmd("EXISTS")
        .arg(format!("{app}||from-go"))
        .query_async(&mut direct)
        .await
        .unwrap();
    assert_eq!(exists, 0);
    let order = hash(&mut direct, &format!("{app}||order")).await;
    assert_eq!(
        (&order["data"][..], &order["version"][..]),
        (&br#"{"qty":9}"#[..], &b"3"[..])
    );

    let tx = json!({"operations": [
        {"operation": "upsert", "request": {"key": "line-2", "value": 2}},
        {"operation": "upsert", "request": {"key": "order", "value": 0, "etag": "2"}},
    ]});
    let resp = c
        .post(sc.url("/v1.0/state/statestore/transaction"))
        .json(&tx)
        .send()
        .await
        .unwrap();
    assert_error(
        resp,
        500,
        "ERR_STATE_TRANSACTION",
        "error while executing state transaction",
    )
    .await;
    let status = |key: &'static str| {
        let url = sc.url(&format!("/v1.0/state/statestore/{key}"));
        let c = c.clone();
        async move { c.get(url).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(
        status("line-2").await,
        204,
        "nothing of a failed transaction applies"
    );

    // Deletes: a stale If-Match conflicts, the current one deletes the hash.
    let resp = c
        .delete(sc.url("/v1.0/state/statestore/order"))
        .header("If-Match", "2")
        .send()
        .await
        .unwrap();
    assert_error(
        resp,
        409,
        "ERR_STATE_DELETE",
        "failed deleting state with key order",
    )
    .await;
    let resp = c
        .delete(sc.url("/v1.0/state/statestore/order"))
        .header("If-Match", "3")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(status("order").await, 204);
    let resp = c
        .delete(sc.url("/v1.0/state/statestore/line-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);

    // The metadata API lists the store's capabilities.
    let meta: Value = c
        .get(sc.url("/v1.0/metadata"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let component = meta["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "statestore")
        .expect("statestore listed")
        .clone();
    assert_eq!(component["type"], "state.redis");
    for cap in ["ETAG", "TTL", "TRANSACTIONAL", "ACTOR"] {
        assert!(
            component["capabilities"]
                .as_array()
                .unwrap()
                .contains(&json!(cap)),
            "{cap} in {component}"
        );
    }
}

#[tokio::test]
async fn ttl_expires_keys_and_is_reported() {
    if !services::require("Redis", REDIS) {
        return;
    }
    let app = unique_app_id("ttl");
    let sc = start(
        tandem()
            .app_id(&app)
            .resource("state.yaml", &redis_store(REDIS)),
    )
    .await;
    let c = client();
    let mut direct = redis().await;
    let resp = c
        .post(sc.url("/v1.0/state/statestore"))
        .json(&json!([
            {"key": "short", "value": "soon gone", "metadata": {"ttlInSeconds": "1"}},
            {"key": "kept", "value": "stays", "metadata": {"ttlInSeconds": "-1"}},
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let pttl: i64 = redis::cmd("PTTL")
        .arg(format!("{app}||short"))
        .query_async(&mut direct)
        .await
        .unwrap();
    assert!((1..=1000).contains(&pttl), "EXPIRE set: {pttl}");
    let resp = c
        .get(sc.url("/v1.0/state/statestore/short"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers().contains_key("metadata.ttlexpiretime"),
        "{:?}",
        resp.headers()
    );
    let bad = c
        .post(sc.url("/v1.0/state/statestore?metadata.ttlInSeconds=soon"))
        .json(&json!([{"key": "short", "value": 1}]))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 500, "a non-integer ttl is refused");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let gone = c
        .get(sc.url("/v1.0/state/statestore/short"))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 204, "expired");
    let kept = c
        .get(sc.url("/v1.0/state/statestore/kept"))
        .send()
        .await
        .unwrap();
    assert_eq!(kept.status(), 200);
    assert!(!kept.headers().contains_key("metadata.ttlexpiretime"));
    c.delete(sc.url("/v1.0/state/statestore/kept"))
        .send()
        .await
        .unwrap();
}

/// Polls `probe` until it returns true or `within` passes.
async fn eventually<F, Fut>(within: Duration, what: &str, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !probe().await {
        assert!(
            start.elapsed() < within,
            "{what} did not happen within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn starts_while_redis_is_down_and_follows_it_coming_and_going() {
    if !services::require("Redis", REDIS) {
        return;
    }
    let target = REDIS.parse().unwrap();
    let port = quiet_port();
    let app = unique_app_id("resilience");
    let sc = start(
        tandem()
            .app_id(&app)
            .resource("state.yaml", &redis_store(&format!("127.0.0.1:{port}"))),
    )
    .await;
    let c = client();
    let healthz = c.get(sc.url("/v1.0/healthz")).send().await.unwrap();
    assert_eq!(healthz.status(), 204, "the sidecar starts without Redis");

    let started = Instant::now();
    let resp = c
        .get(sc.url("/v1.0/state/statestore/k"))
        .send()
        .await
        .unwrap();
    assert_error(
        resp,
        500,
        "ERR_STATE_GET",
        "fail to get k from state store statestore",
    )
    .await;
    let resp = c
        .post(sc.url("/v1.0/state/statestore"))
        .json(&json!([{"key": "k", "value": "v"}]))
        .send()
        .await
        .unwrap();
    assert_error(resp, 500, "ERR_STATE_SAVE", "failed saving state").await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "calls fail fast while Redis is down"
    );

    let save = |value: &'static str| {
        let c = c.clone();
        let url = sc.url("/v1.0/state/statestore");
        async move {
            c.post(url)
                .json(&json!([{"key": "k", "value": value}]))
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }
    };
    let read = || {
        let c = c.clone();
        let url = sc.url("/v1.0/state/statestore/k");
        async move {
            let resp = c.get(url).send().await.unwrap();
            (
                resp.status().as_u16(),
                resp.text().await.unwrap_or_default(),
            )
        }
    };

    // Redis comes up: the same sidecar recovers by itself.
    let proxy = TcpProxy::start(port, target).await.unwrap();
    eventually(
        Duration::from_secs(10),
        "saving after Redis came up",
        || async { save("first").await == 204 },
    )
    .await;
    assert_eq!(read().await, (200, r#""first""#.to_owned()));

    // Redis goes away: calls fail.
    proxy.stop();
    eventually(
        Duration::from_secs(10),
        "failing after Redis went away",
        || async { read().await.0 == 500 },
    )
    .await;
    assert_eq!(save("lost").await, 500);

    // And comes back: calls succeed again.
    let proxy = TcpProxy::start(port, target).await.unwrap();
    eventually(
        Duration::from_secs(10),
        "reading after Redis came back",
        || async { read().await.0 == 200 },
    )
    .await;
    assert_eq!(save("second").await, 204);
    assert_eq!(read().await, (200, r#""second""#.to_owned()));
    let resp = c
        .delete(sc.url("/v1.0/state/statestore/k"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    proxy.stop();
}
