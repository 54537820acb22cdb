//! `bindings.redis` against the Redis at 127.0.0.1:6379 (skipped when it is unreachable,
//! unless `TANDEM_REQUIRE_SERVICES=1`), checked with a plain Redis client: `create` with and
//! without a TTL, `get` (also `delete: "true"` and a missing key), `delete`, `increment`, and
//! the errors for a missing key, a bad TTL and a non-integer value.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tandem_components::bindings::{InvokeRequest, InvokeResponse, OutputBinding};
use tandem_components::{Error, Metadata};
use tandem_redis::RedisBinding;
use tandem_testkit::services;

const ADDR: &str = "127.0.0.1:6379";

async fn binding(db: &str) -> Option<RedisBinding> {
    if !services::require("Redis", ADDR) {
        return None;
    }
    let md = Metadata::new("cache", "binding-test")
        .with("redisHost", ADDR)
        .with("redisDB", db);
    Some(RedisBinding::build(&md).await.expect("build"))
}

async fn redis(db: u8) -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://{ADDR}/{db}"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("connect to redis")
}

/// A key no other run uses.
fn unique(what: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("binding-test-{what}-{}-{nanos}", std::process::id())
}

fn req(op: &str, data: &[u8], md: &[(&str, &str)]) -> InvokeRequest {
    InvokeRequest {
        operation: op.to_owned(),
        data: Bytes::copy_from_slice(data),
        metadata: md
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<HashMap<_, _>>(),
    }
}

async fn call(b: &RedisBinding, op: &str, data: &[u8], md: &[(&str, &str)]) -> InvokeResponse {
    b.invoke(req(op, data, md))
        .await
        .unwrap_or_else(|e| panic!("{op}: {e}"))
}

#[tokio::test]
async fn operations_on_plain_keys() {
    let Some(b) = binding("0").await else {
        return;
    };
    assert_eq!(b.operations(), ["create", "get", "delete", "increment"]);
    let mut r = redis(0).await;
    let key = unique("plain");

    // create: SET without expiry; the answer is empty (204 over HTTP).
    let resp = call(&b, "create", br#"{"n":1}"#, &[("key", &key)]).await;
    assert!(resp.data.is_none() && resp.metadata.is_empty());
    let stored: Vec<u8> = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(stored, br#"{"n":1}"#);
    let ttl: i64 = redis::cmd("TTL")
        .arg(&key)
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(ttl, -1, "no expiry");

    // get: the bytes as stored.
    let resp = call(&b, "get", b"", &[("key", &key)]).await;
    assert_eq!(resp.data.as_deref(), Some(&br#"{"n":1}"#[..]));

    // delete, then get answers empty data (200 with no body).
    assert!(
        call(&b, "delete", b"", &[("key", &key)])
            .await
            .data
            .is_none()
    );
    let exists: i64 = redis::cmd("EXISTS")
        .arg(&key)
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(exists, 0);
    let resp = call(&b, "get", b"", &[("key", &key)]).await;
    assert_eq!(resp.data.as_deref(), Some(&b""[..]));

    // get with delete: "true" is GETDEL.
    call(&b, "create", b"once", &[("key", &key)]).await;
    let resp = call(&b, "get", b"", &[("key", &key), ("delete", "true")]).await;
    assert_eq!(resp.data.as_deref(), Some(&b"once"[..]));
    let exists: i64 = redis::cmd("EXISTS")
        .arg(&key)
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(exists, 0, "GETDEL removed the key");
}

#[tokio::test]
async fn ttls_and_increments() {
    let Some(b) = binding("2").await else {
        return;
    };
    let mut r = redis(2).await;
    let key = unique("ttl");

    call(
        &b,
        "create",
        b"v",
        &[("key", &key), ("ttlInSeconds", "100")],
    )
    .await;
    let ttl: i64 = redis::cmd("TTL")
        .arg(&key)
        .query_async(&mut r)
        .await
        .unwrap();
    assert!((90..=100).contains(&ttl), "ttl {ttl}");
    call(&b, "create", b"v", &[("key", &key), ("ttl", "2m")]).await;
    let ttl: i64 = redis::cmd("TTL")
        .arg(&key)
        .query_async(&mut r)
        .await
        .unwrap();
    assert!((110..=120).contains(&ttl), "ttl {ttl}");
    // A zero duration expires the key at once, as in Dapr.
    call(&b, "create", b"v", &[("key", &key), ("ttl", "0s")]).await;
    let exists: i64 = redis::cmd("EXISTS")
        .arg(&key)
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(exists, 0);

    // increment: INCR from nothing, then with an expiry.
    let counter = unique("counter");
    assert!(
        call(&b, "increment", b"", &[("key", &counter)])
            .await
            .data
            .is_none()
    );
    call(
        &b,
        "increment",
        b"",
        &[("key", &counter), ("ttlInSeconds", "50")],
    )
    .await;
    let n: i64 = redis::cmd("GET")
        .arg(&counter)
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(n, 2);
    let ttl: i64 = redis::cmd("TTL")
        .arg(&counter)
        .query_async(&mut r)
        .await
        .unwrap();
    assert!((40..=50).contains(&ttl), "ttl {ttl}");
    let resp = call(&b, "get", b"", &[("key", &counter)]).await;
    assert_eq!(resp.data.as_deref(), Some(&b"2"[..]));

    // A bad TTL is refused before anything is written.
    let bad = unique("bad-ttl");
    for ttl in ["-1", "soon"] {
        let err = b
            .invoke(req("create", b"v", &[("key", &bad), ("ttlInSeconds", ttl)]))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidRequest(_)), "{err:?}");
    }
    let exists: i64 = redis::cmd("EXISTS")
        .arg(&bad)
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(exists, 0);

    // INCR on a value that is not an integer: Redis' error comes back.
    let text = unique("text");
    call(&b, "create", b"\"abc\"", &[("key", &text)]).await;
    let err = b
        .invoke(req("increment", b"", &[("key", &text)]))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Backend(_)), "{err:?}");
    assert!(err.to_string().contains("not an integer"), "{err}");
    call(&b, "delete", b"", &[("key", &text)]).await;
    call(&b, "delete", b"", &[("key", &counter)]).await;
}

#[tokio::test]
async fn the_key_is_required() {
    let Some(b) = binding("0").await else {
        return;
    };
    for op in ["create", "get", "delete", "increment"] {
        for md in [&[][..], &[("key", "")][..], &[("Key", "k")][..]] {
            let err = b.invoke(req(op, b"v", md)).await.unwrap_err();
            assert_eq!(
                err.to_string(),
                "redis binding: missing key in request metadata",
                "{op} {md:?}"
            );
        }
    }
}

#[tokio::test]
async fn redis_down_fails_calls_with_a_backend_error() {
    // Nothing listens on port 1: building succeeds, calls fail promptly.
    let md = Metadata::new("cache", "binding-test")
        .with("redisHost", "127.0.0.1:1")
        .with("dialTimeout", "1s");
    let b = RedisBinding::build(&md).await.expect("build without Redis");
    let err = b
        .invoke(req("get", b"", &[("key", "k")]))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Backend(_)), "{err:?}");
}
