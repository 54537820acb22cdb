//! `state.redis` against the state store conformance suite, on the Redis at 127.0.0.1:6379
//! (skipped when it is unreachable, unless `TANDEM_REQUIRE_SERVICES=1`). Every case builds a
//! fresh store; the suite's keys are unique per run, so cases share the server safely.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_components::state::{
    Concurrency, DeleteRequest, ETag, GetRequest, RequestMetadata, SetRequest, StateOptions,
    StateStore, TransactionOperation, TransactionRequest,
};
use tandem_components::{Error, Metadata};
use tandem_redis::RedisStateStore;
use tandem_testkit::services;

const ADDR: &str = "127.0.0.1:6379";

fn metadata(extra: &[(&str, &str)]) -> Metadata {
    let mut meta = Metadata::new("redis", "conformance").with("redisHost", ADDR);
    for (key, value) in extra {
        meta.insert(*key, *value);
    }
    meta
}

async fn store_with(extra: &[(&str, &str)]) -> Option<RedisStateStore> {
    if !services::require("Redis", ADDR) {
        return None;
    }
    Some(
        RedisStateStore::build(&metadata(extra))
            .await
            .expect("build"),
    )
}

async fn build() -> Option<Arc<dyn StateStore>> {
    store_with(&[])
        .await
        .map(|s| Arc::new(s) as Arc<dyn StateStore>)
}

tandem_components::state_store_conformance!(build());

/// The same suite on another database (`redisDB`), which every connection selects.
mod other_database {
    use super::*;

    async fn build() -> Option<Arc<dyn StateStore>> {
        store_with(&[("redisDB", "3")])
            .await
            .map(|s| Arc::new(s) as Arc<dyn StateStore>)
    }

    tandem_components::state_store_conformance!(build());
}

/// Builds a store for an opt-in backend named by an environment variable (`None`, with a
/// one-line note, when it is unset): TLS and cluster servers are not part of the standard
/// local set-up.
async fn opt_in(
    var: &str,
    settings: impl FnOnce(&str) -> Vec<(String, String)>,
) -> Option<RedisStateStore> {
    let Ok(addr) = std::env::var(var) else {
        eprintln!("skipping: set {var} to run this case");
        return None;
    };
    let mut meta = Metadata::new("redis", "conformance");
    for (key, value) in settings(&addr) {
        meta.insert(key, value);
    }
    Some(RedisStateStore::build(&meta).await.expect("build"))
}

/// The suite over TLS, when `TANDEM_REDIS_TLS` names a TLS-only Redis (`host:port`), with
/// `insecureSkipTLSVerify` (a self-signed test certificate), `TANDEM_REDIS_TLS_PASSWORD` as
/// `redisPassword` if set, and `TANDEM_REDIS_TLS_CLIENT_CERT` / `_KEY` (PEM files) for mutual
/// TLS if set.
mod tls {
    use super::*;

    async fn build() -> Option<Arc<dyn StateStore>> {
        let store = opt_in("TANDEM_REDIS_TLS", |addr| {
            let mut m = vec![
                ("redisHost".to_owned(), addr.to_owned()),
                ("enableTLS".to_owned(), "true".to_owned()),
                ("insecureSkipTLSVerify".to_owned(), "true".to_owned()),
            ];
            if let Ok(pw) = std::env::var("TANDEM_REDIS_TLS_PASSWORD") {
                m.push(("redisPassword".to_owned(), pw));
            }
            for (var, field) in [
                ("TANDEM_REDIS_TLS_CLIENT_CERT", "clientCert"),
                ("TANDEM_REDIS_TLS_CLIENT_KEY", "clientKey"),
            ] {
                if let Ok(path) = std::env::var(var) {
                    m.push((
                        field.to_owned(),
                        std::fs::read_to_string(path).expect("PEM file"),
                    ));
                }
            }
            m
        })
        .await?;
        Some(Arc::new(store))
    }

    tandem_components::state_store_conformance!(build());
}

/// The suite on Redis Cluster, when `TANDEM_REDIS_CLUSTER` lists cluster nodes
/// (`host:port,...`). The suite's two transaction cases use keys of different hash slots, which
/// cluster mode refuses; [`cluster::transactions_within_one_slot`] covers transactions there.
mod cluster {
    use super::*;

    async fn store() -> Option<RedisStateStore> {
        opt_in("TANDEM_REDIS_CLUSTER", |addr| {
            vec![
                ("redisHost".to_owned(), addr.to_owned()),
                ("redisType".to_owned(), "cluster".to_owned()),
            ]
        })
        .await
    }

    async fn build() -> Option<Arc<dyn StateStore>> {
        Some(Arc::new(store().await?))
    }

    tandem_components::state_store_conformance!(@cases build();
        crud, missing_key, etags, first_write, ttl, bulk_get, unicode_and_binary, large_value,
        concurrent_writers, unsupported_answers, query);

    /// Keys sharing a hash tag form one atomic transaction; keys of different slots are refused
    /// before anything is written. Bulk writes across slots still apply in order.
    #[tokio::test]
    async fn transactions_within_one_slot() {
        let Some(store) = store().await else {
            return;
        };
        let tx = store.transactional().expect("transactional");
        let tag = key("tag");
        let (a, b) = (format!("{{{tag}}}-a"), format!("{{{tag}}}-b"));
        store.set(set(&b, b"old")).await.unwrap();
        tx.multi(TransactionRequest {
            operations: vec![
                TransactionOperation::Upsert(set(&a, b"1")),
                TransactionOperation::Delete(DeleteRequest {
                    key: b.clone(),
                    etag: Some(ETag::from("1")),
                    ..Default::default()
                }),
            ],
            metadata: Default::default(),
        })
        .await
        .expect("same-slot transaction");
        assert!(read(&store, &a).await.is_some() && read(&store, &b).await.is_none());

        let (x, y) = (key("slot-x"), key("slot-y"));
        let res = tx
            .multi(TransactionRequest {
                operations: vec![
                    TransactionOperation::Upsert(set(&x, b"1")),
                    TransactionOperation::Upsert(set(&y, b"1")),
                ],
                metadata: Default::default(),
            })
            .await;
        assert!(matches!(res, Err(Error::InvalidRequest(_))), "{res:?}");
        assert!(read(&store, &x).await.is_none());

        store
            .bulk_set(vec![set(&x, b"1"), set(&y, b"2"), set(&a, b"3")])
            .await
            .expect("bulk set across slots");
        let items = store
            .bulk_get(&[x.clone(), y.clone(), a.clone()], &RequestMetadata::new())
            .await
            .unwrap();
        let values: Vec<_> = items
            .iter()
            .map(|i| i.item.as_ref().map(|it| it.value.clone()))
            .collect();
        assert_eq!(
            values,
            [Some("1".into()), Some("2".into()), Some("3".into())]
        );
    }
}

fn key(case: &str) -> String {
    tandem_components::conformance::unique_key(case)
}

fn set(key: &str, value: &[u8]) -> SetRequest {
    SetRequest {
        key: key.to_owned(),
        value: bytes::Bytes::copy_from_slice(value),
        ..Default::default()
    }
}

async fn read(store: &RedisStateStore, key: &str) -> Option<tandem_components::state::StateItem> {
    let meta = RequestMetadata::new();
    store
        .get(GetRequest {
            key,
            consistency: Default::default(),
            metadata: &meta,
        })
        .await
        .expect("get")
}

/// ETags are Dapr's integer versions, counting writes from 1.
#[tokio::test]
async fn etags_count_writes() {
    let Some(store) = store_with(&[]).await else {
        return;
    };
    let k = key("versions");
    for n in 1..=3 {
        store.set(set(&k, b"x")).await.expect("set");
        assert_eq!(
            read(&store, &k).await.unwrap().etag,
            Some(ETag::from(n.to_string()))
        );
    }
    let mut bad = set(&k, b"y");
    bad.etag = Some(ETag::from("3.0"));
    assert!(matches!(store.set(bad).await, Err(Error::ETagInvalid(_))));
    let mut bad_delete = DeleteRequest {
        key: k.clone(),
        etag: Some(ETag::from("v3")),
        ..Default::default()
    };
    assert!(matches!(
        store.delete(bad_delete.clone()).await,
        Err(Error::ETagInvalid(_))
    ));
    bad_delete.etag = Some(ETag::from("9"));
    assert!(matches!(
        store.delete(bad_delete).await,
        Err(Error::ETagMismatch)
    ));
    let missing = DeleteRequest {
        key: key("never-written"),
        etag: Some(ETag::from("1")),
        ..Default::default()
    };
    assert!(matches!(
        store.delete(missing).await,
        Err(Error::ETagMismatch)
    ));
}

/// A transaction sees its own earlier operations when checking ETags, and a failed check in
/// the middle applies nothing.
#[tokio::test]
async fn transactions_check_against_their_own_writes() {
    let Some(store) = store_with(&[]).await else {
        return;
    };
    let tx = store.transactional().expect("transactional");
    let a = key("tx-chain");
    let b = key("tx-chain-b");
    store.set(set(&a, b"0")).await.unwrap();
    let with_etag = |value: &[u8], etag: &str| {
        let mut r = set(&a, value);
        r.etag = Some(ETag::from(etag));
        TransactionOperation::Upsert(r)
    };
    tx.multi(TransactionRequest {
        operations: vec![with_etag(b"1", "1"), with_etag(b"2", "2")],
        metadata: Default::default(),
    })
    .await
    .expect("chained etags");
    let item = read(&store, &a).await.unwrap();
    assert_eq!(item.value.as_ref(), b"2");
    assert_eq!(item.etag, Some(ETag::from("3")));

    let res = tx
        .multi(TransactionRequest {
            operations: vec![
                TransactionOperation::Upsert(set(&b, b"new")),
                TransactionOperation::Delete(DeleteRequest {
                    key: a.clone(),
                    etag: Some(ETag::from("3")),
                    ..Default::default()
                }),
                with_etag(b"late", "3"),
            ],
            metadata: Default::default(),
        })
        .await;
    assert!(matches!(res, Err(Error::ETagMismatch)), "{res:?}");
    assert!(read(&store, &b).await.is_none(), "nothing applied");
    assert_eq!(read(&store, &a).await.unwrap().value.as_ref(), b"2");
}

/// Bulk writes apply in order and stop at the first failed check.
#[tokio::test]
async fn bulk_writes_stop_at_the_first_failure() {
    let Some(store) = store_with(&[]).await else {
        return;
    };
    let (a, b, c) = (key("bulk-1"), key("bulk-2"), key("bulk-3"));
    store.set(set(&b, b"old")).await.unwrap();
    let mut conflict = set(&b, b"new");
    conflict.options = StateOptions {
        concurrency: Concurrency::FirstWrite,
        ..Default::default()
    };
    let res = store
        .bulk_set(vec![set(&a, b"1"), conflict, set(&c, b"3")])
        .await;
    assert!(matches!(res, Err(Error::ETagMismatch)), "{res:?}");
    assert!(
        read(&store, &a).await.is_some(),
        "written before the failure"
    );
    assert_eq!(read(&store, &b).await.unwrap().value.as_ref(), b"old");
    assert!(
        read(&store, &c).await.is_none(),
        "not written after the failure"
    );
    store
        .bulk_delete(vec![
            DeleteRequest {
                key: a.clone(),
                ..Default::default()
            },
            DeleteRequest {
                key: b.clone(),
                ..Default::default()
            },
        ])
        .await
        .expect("bulk delete");
    assert!(read(&store, &a).await.is_none() && read(&store, &b).await.is_none());
}

/// TTLs: request metadata, the component default, `PERSIST` for values ≤ 0, and an
/// untouched expiry when a write names none.
#[tokio::test]
async fn ttl_rules() {
    let Some(store) = store_with(&[("ttlInSeconds", "100")]).await else {
        return;
    };
    let k = key("ttl-default");
    store.set(set(&k, b"1")).await.unwrap();
    let expires = read(&store, &k).await.unwrap().metadata;
    assert!(expires.contains_key("ttlExpireTime"), "default ttl applied");
    let mut persist = set(&k, b"2");
    persist.metadata.insert("ttlInSeconds".into(), "0".into());
    store.set(persist).await.unwrap();
    assert!(
        read(&store, &k).await.unwrap().metadata.is_empty(),
        "persisted"
    );

    let Some(plain) = store_with(&[]).await else {
        return;
    };
    let mut short = set(&k, b"3");
    short.metadata.insert("ttlInSeconds".into(), "50".into());
    plain.set(short).await.unwrap();
    plain.set(set(&k, b"4")).await.unwrap();
    let item = read(&plain, &k).await.unwrap();
    assert_eq!(item.value.as_ref(), b"4");
    assert!(
        item.metadata.contains_key("ttlExpireTime"),
        "a write without a ttl keeps the expiry"
    );
}

/// A store built while nothing listens answers quickly with a backend error.
#[tokio::test]
async fn unreachable_redis_fails_fast() {
    let port = tandem_testkit::proxy::quiet_port();
    let host = format!("127.0.0.1:{port}");
    let store = RedisStateStore::build(&metadata(&[("redisHost", host.as_str())]))
        .await
        .expect("build does not connect");
    let started = Instant::now();
    let meta = RequestMetadata::new();
    let res = store
        .get(GetRequest {
            key: "k",
            consistency: Default::default(),
            metadata: &meta,
        })
        .await;
    assert!(matches!(res, Err(Error::Backend(_))), "{res:?}");
    assert!(matches!(store.ping().await, Err(Error::Backend(_))));
    assert!(started.elapsed() < Duration::from_secs(3));
}

/// Values not written by a state store: a plain string reads as its bytes without an ETag and
/// is replaced by the next write (as in Dapr); a hash whose `version` is not an integer is
/// refused without writing anything.
#[tokio::test]
async fn foreign_values() {
    let Some(store) = store_with(&[]).await else {
        return;
    };
    let mut direct = redis::Client::open(format!("redis://{ADDR}/"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let plain = key("plain-string");
    redis::cmd("SET")
        .arg(&plain)
        .arg("legacy")
        .exec_async(&mut direct)
        .await
        .unwrap();
    let item = read(&store, &plain).await.expect("plain string read");
    assert_eq!((item.value.as_ref(), item.etag), (&b"legacy"[..], None));
    let items = store
        .bulk_get(std::slice::from_ref(&plain), &RequestMetadata::new())
        .await
        .unwrap();
    assert_eq!(items[0].item.as_ref().unwrap().value.as_ref(), b"legacy");
    store.set(set(&plain, b"\"new\"")).await.expect("replace");
    let item = read(&store, &plain).await.unwrap();
    assert_eq!(item.etag, Some(ETag::from("1")));

    let corrupt = key("corrupt-version");
    redis::cmd("HSET")
        .arg(&corrupt)
        .arg("data")
        .arg("x")
        .arg("version")
        .arg("abc")
        .exec_async(&mut direct)
        .await
        .unwrap();
    assert!(matches!(
        store.set(set(&corrupt, b"y")).await,
        Err(Error::Backend(_))
    ));
    let fresh = key("beside-corrupt");
    let res = store
        .transactional()
        .unwrap()
        .multi(TransactionRequest {
            operations: vec![
                TransactionOperation::Upsert(set(&fresh, b"1")),
                TransactionOperation::Upsert(set(&corrupt, b"y")),
            ],
            metadata: Default::default(),
        })
        .await;
    assert!(matches!(res, Err(Error::Backend(_))), "{res:?}");
    assert!(read(&store, &fresh).await.is_none(), "nothing written");
    let data: Vec<u8> = redis::cmd("HGET")
        .arg(&corrupt)
        .arg("data")
        .query_async(&mut direct)
        .await
        .unwrap();
    assert_eq!(data, b"x");
    for k in [&plain, &corrupt] {
        redis::cmd("DEL")
            .arg(k)
            .exec_async(&mut direct)
            .await
            .unwrap();
    }
}

/// A failed login is retried by later calls: the store works once the ACL user exists, without
/// being rebuilt. The password never appears in errors.
#[tokio::test]
async fn login_failure_recovers_once_the_user_exists() {
    if !services::require("Redis", ADDR) {
        return;
    }
    let user = key("acl-user");
    let password = "pw-for-a-test-only";
    let store = RedisStateStore::build(&metadata(&[
        ("redisUsername", user.as_str()),
        ("redisPassword", password),
    ]))
    .await
    .expect("build");
    let meta = RequestMetadata::new();
    let get = || {
        store.get(GetRequest {
            key: "k",
            consistency: Default::default(),
            metadata: &meta,
        })
    };
    let err = get().await.expect_err("unknown user");
    assert!(matches!(err, Error::Backend(_)), "{err:?}");
    assert!(!err.to_string().contains(password), "{err}");

    let mut direct = redis::Client::open(format!("redis://{ADDR}/"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    redis::cmd("ACL")
        .arg("SETUSER")
        .arg(&user)
        .arg("on")
        .arg(format!(">{password}"))
        .arg("~*")
        .arg("+@all")
        .exec_async(&mut direct)
        .await
        .unwrap();
    let outcome = get().await;
    redis::cmd("ACL")
        .arg("DELUSER")
        .arg(&user)
        .exec_async(&mut direct)
        .await
        .unwrap();
    assert!(matches!(outcome, Ok(None)), "{outcome:?}");
}
