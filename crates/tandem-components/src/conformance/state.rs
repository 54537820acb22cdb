//! The state store conformance suite.
//!
//! Use [`crate::state_store_conformance!`] in a component crate's `tests/conformance.rs`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::unique_key;
use crate::error::Error;
use crate::state::{
    Concurrency, DeleteRequest, ETag, GetRequest, RequestMetadata, SetRequest, StateFeature,
    StateItem, StateOptions, StateStore, TTL_EXPIRE_TIME_KEY, TransactionOperation,
    TransactionRequest,
};

/// Expands to one test per conformance case. `$build` is an async expression yielding
/// `Option<Arc<dyn StateStore>>`; `None` skips the case (backend unreachable).
#[macro_export]
macro_rules! state_store_conformance {
    ($build:expr) => {
        $crate::state_store_conformance!(@cases $build;
            crud, missing_key, etags, first_write, ttl, transactions, transaction_rollback,
            bulk_get, unicode_and_binary, large_value, concurrent_writers, unsupported_answers,
            query);
    };
    (@cases $build:expr; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                if let Some(store) = $build.await {
                    $crate::conformance::state::$case(store).await;
                }
            }
        )*
    };
}

fn has(store: &dyn StateStore, feature: StateFeature) -> bool {
    store.features().contains(&feature)
}

fn set_req(key: &str, value: &[u8]) -> SetRequest {
    SetRequest {
        key: key.to_owned(),
        value: Bytes::copy_from_slice(value),
        ..Default::default()
    }
}

async fn get(store: &dyn StateStore, key: &str) -> Option<StateItem> {
    let meta = RequestMetadata::new();
    store
        .get(GetRequest {
            key,
            consistency: Default::default(),
            metadata: &meta,
        })
        .await
        .expect("get failed")
}

fn assert_etag_error<T: std::fmt::Debug>(res: Result<T, Error>, what: &str) {
    match res {
        Err(Error::ETagMismatch) | Err(Error::ETagInvalid(_)) => {}
        other => panic!("{what}: expected an etag error, got {other:?}"),
    }
}

/// Save, read back, overwrite, delete.
pub async fn crud(store: Arc<dyn StateStore>) {
    let key = unique_key("crud");
    store.set(set_req(&key, br#"{"a":1}"#)).await.expect("set");
    let item = get(&*store, &key).await.expect("value after set");
    assert_eq!(item.value.as_ref(), br#"{"a":1}"#);
    if has(&*store, StateFeature::ETag) {
        assert!(item.etag.is_some(), "an ETAG store returns an etag");
    }
    store
        .set(set_req(&key, b"\"second\""))
        .await
        .expect("overwrite");
    let item2 = get(&*store, &key).await.expect("value after overwrite");
    assert_eq!(item2.value.as_ref(), b"\"second\"");
    if has(&*store, StateFeature::ETag) {
        assert_ne!(item.etag, item2.etag, "a write changes the etag");
    }
    store
        .delete(DeleteRequest {
            key: key.clone(),
            ..Default::default()
        })
        .await
        .expect("delete");
    assert!(get(&*store, &key).await.is_none(), "deleted key is gone");
}

/// A missing key reads as `None` and deletes without error.
pub async fn missing_key(store: Arc<dyn StateStore>) {
    let key = unique_key("missing");
    assert!(get(&*store, &key).await.is_none());
    store
        .delete(DeleteRequest {
            key,
            ..Default::default()
        })
        .await
        .expect("deleting a missing key succeeds");
}

/// Conditional writes and deletes.
pub async fn etags(store: Arc<dyn StateStore>) {
    if !has(&*store, StateFeature::ETag) {
        return;
    }
    let key = unique_key("etag");
    store.set(set_req(&key, b"1")).await.expect("set");
    let first = get(&*store, &key).await.unwrap().etag.unwrap();
    let mut update = set_req(&key, b"2");
    update.etag = Some(first.clone());
    store
        .set(update)
        .await
        .expect("write with the current etag");
    let second = get(&*store, &key).await.unwrap().etag.unwrap();

    let mut stale = set_req(&key, b"3");
    stale.etag = Some(first.clone());
    assert!(
        matches!(store.set(stale).await, Err(Error::ETagMismatch)),
        "stale etag write"
    );
    assert_eq!(get(&*store, &key).await.unwrap().value.as_ref(), b"2");

    let mut garbage = set_req(&key, b"4");
    garbage.etag = Some(ETag::from("not-an-etag-\u{1F600}"));
    assert_etag_error(store.set(garbage).await, "malformed etag write");

    let stale_delete = DeleteRequest {
        key: key.clone(),
        etag: Some(first),
        ..Default::default()
    };
    assert!(
        matches!(store.delete(stale_delete).await, Err(Error::ETagMismatch)),
        "stale delete"
    );
    assert!(
        get(&*store, &key).await.is_some(),
        "stale delete kept the value"
    );

    let delete = DeleteRequest {
        key: key.clone(),
        etag: Some(second),
        ..Default::default()
    };
    store
        .delete(delete)
        .await
        .expect("delete with the current etag");
    assert!(get(&*store, &key).await.is_none());

    let mut on_missing = set_req(&key, b"5");
    on_missing.etag = Some(ETag::from("1"));
    assert_etag_error(store.set(on_missing).await, "etag write to a missing key");
}

/// `first-write` without an etag only creates.
pub async fn first_write(store: Arc<dyn StateStore>) {
    if !has(&*store, StateFeature::ETag) {
        return;
    }
    let key = unique_key("first-write");
    let fw = |v: &[u8]| {
        let mut r = set_req(&key, v);
        r.options = StateOptions {
            concurrency: Concurrency::FirstWrite,
            ..Default::default()
        };
        r
    };
    store.set(fw(b"1")).await.expect("first write creates");
    assert!(
        matches!(store.set(fw(b"2")).await, Err(Error::ETagMismatch)),
        "second first-write"
    );
    assert_eq!(get(&*store, &key).await.unwrap().value.as_ref(), b"1");
    let etag = get(&*store, &key).await.unwrap().etag;
    let mut with_etag = fw(b"3");
    with_etag.etag = etag;
    store
        .set(with_etag)
        .await
        .expect("first-write with the current etag");
    assert_eq!(get(&*store, &key).await.unwrap().value.as_ref(), b"3");
}

/// Items with `ttlInSeconds` expire.
pub async fn ttl(store: Arc<dyn StateStore>) {
    if !has(&*store, StateFeature::Ttl) {
        return;
    }
    let key = unique_key("ttl");
    let keep = unique_key("ttl-keep");
    let mut req = set_req(&key, b"\"short\"");
    req.metadata.insert("ttlInSeconds".into(), "1".into());
    store.set(req).await.expect("set with ttl");
    let mut forever = set_req(&keep, b"\"long\"");
    forever.metadata.insert("ttlInSeconds".into(), "-1".into());
    store.set(forever).await.expect("set with ttl -1");
    let item = get(&*store, &key).await.expect("present before expiry");
    assert!(
        item.metadata.contains_key(TTL_EXPIRE_TIME_KEY),
        "ttlExpireTime reported: {:?}",
        item.metadata
    );
    let mut bad = set_req(&key, b"1");
    bad.metadata.insert("ttlInSeconds".into(), "soon".into());
    assert!(
        matches!(store.set(bad).await, Err(Error::InvalidRequest(_))),
        "non-numeric ttl"
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(get(&*store, &key).await.is_none(), "expired after its ttl");
    assert!(get(&*store, &keep).await.is_some(), "ttl -1 never expires");
}

/// A transaction applies every operation.
pub async fn transactions(store: Arc<dyn StateStore>) {
    let Some(tx) = store.transactional() else {
        return;
    };
    let a = unique_key("tx-a");
    let b = unique_key("tx-b");
    store.set(set_req(&b, b"old")).await.expect("seed");
    tx.multi(TransactionRequest {
        operations: vec![
            TransactionOperation::Upsert(set_req(&a, b"\"A\"")),
            TransactionOperation::Delete(DeleteRequest {
                key: b.clone(),
                ..Default::default()
            }),
            TransactionOperation::Upsert(set_req(&a, b"\"A2\"")),
        ],
        metadata: Default::default(),
    })
    .await
    .expect("transaction");
    assert_eq!(get(&*store, &a).await.unwrap().value.as_ref(), b"\"A2\"");
    assert!(get(&*store, &b).await.is_none());
}

/// A failing operation rolls the whole transaction back.
pub async fn transaction_rollback(store: Arc<dyn StateStore>) {
    let Some(tx) = store.transactional() else {
        return;
    };
    if !has(&*store, StateFeature::ETag) {
        return;
    }
    let a = unique_key("rb-a");
    let b = unique_key("rb-b");
    store.set(set_req(&b, b"kept")).await.expect("seed");
    let mut stale = set_req(&b, b"changed");
    stale.etag = Some(ETag::from("00000000-0000-0000-0000-000000000000"));
    let res = tx
        .multi(TransactionRequest {
            operations: vec![
                TransactionOperation::Upsert(set_req(&a, b"\"new\"")),
                TransactionOperation::Upsert(stale),
            ],
            metadata: Default::default(),
        })
        .await;
    assert_etag_error(res, "transaction with a stale etag");
    assert!(
        get(&*store, &a).await.is_none(),
        "no operation of a failed transaction applies"
    );
    assert_eq!(get(&*store, &b).await.unwrap().value.as_ref(), b"kept");
}

/// Bulk reads return one entry per key, in order, missing keys without a value.
pub async fn bulk_get(store: Arc<dyn StateStore>) {
    let a = unique_key("bulk-a");
    let b = unique_key("bulk-b");
    let missing = unique_key("bulk-missing");
    store
        .bulk_set(vec![set_req(&a, b"1"), set_req(&b, b"2")])
        .await
        .expect("bulk set");
    let keys = vec![a.clone(), missing.clone(), b.clone()];
    let items = store
        .bulk_get(&keys, &RequestMetadata::new())
        .await
        .expect("bulk get");
    assert_eq!(items.len(), 3);
    let find = |k: &str| {
        items
            .iter()
            .find(|i| i.key == k)
            .expect("key in bulk answer")
    };
    assert_eq!(find(&a).item.as_ref().unwrap().value.as_ref(), b"1");
    assert_eq!(find(&b).item.as_ref().unwrap().value.as_ref(), b"2");
    assert!(find(&missing).item.is_none());
    assert!(find(&missing).error.is_none());
}

/// Unicode keys and values, and arbitrary bytes, round-trip exactly.
pub async fn unicode_and_binary(store: Arc<dyn StateStore>) {
    let key = format!("{}-ключ-鍵-🔑", unique_key("unicode"));
    let text = "\"héllo wörld — 你好 🌍\"".as_bytes();
    store.set(set_req(&key, text)).await.expect("unicode set");
    assert_eq!(get(&*store, &key).await.unwrap().value.as_ref(), text);

    let bin_key = unique_key("binary");
    let bytes: Vec<u8> = (0..=255u8).chain([0, 0, 255, 254]).collect();
    store
        .set(set_req(&bin_key, &bytes))
        .await
        .expect("binary set");
    assert_eq!(
        get(&*store, &bin_key).await.unwrap().value.as_ref(),
        &bytes[..]
    );
}

/// A 1 MiB value round-trips.
pub async fn large_value(store: Arc<dyn StateStore>) {
    let key = unique_key("large");
    let value: Vec<u8> = (0..1024 * 1024).map(|i| b'a' + (i % 26) as u8).collect();
    store.set(set_req(&key, &value)).await.expect("large set");
    let got = get(&*store, &key).await.unwrap();
    assert_eq!(got.value.len(), value.len());
    assert_eq!(got.value.as_ref(), &value[..]);
}

/// Concurrent read-modify-write loops with ETags lose no update.
pub async fn concurrent_writers(store: Arc<dyn StateStore>) {
    if !has(&*store, StateFeature::ETag) {
        return;
    }
    let key = unique_key("counter");
    store.set(set_req(&key, b"0")).await.expect("seed");
    const WRITERS: usize = 6;
    const INCREMENTS: usize = 5;
    let mut tasks = Vec::new();
    for _ in 0..WRITERS {
        let store = store.clone();
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..INCREMENTS {
                loop {
                    let cur = get(&*store, &key).await.expect("counter exists");
                    let n: u64 = std::str::from_utf8(&cur.value).unwrap().parse().unwrap();
                    let mut req = set_req(&key, (n + 1).to_string().as_bytes());
                    req.etag = cur.etag;
                    match store.set(req).await {
                        Ok(()) => break,
                        Err(Error::ETagMismatch) => continue,
                        Err(e) => panic!("unexpected error: {e}"),
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer task");
    }
    let n = get(&*store, &key).await.unwrap().value;
    assert_eq!(n.as_ref(), (WRITERS * INCREMENTS).to_string().as_bytes());
}

/// What a store does not declare, it refuses instead of silently ignoring.
pub async fn unsupported_answers(store: Arc<dyn StateStore>) {
    if !has(&*store, StateFeature::Ttl) {
        let mut req = set_req(&unique_key("no-ttl"), b"1");
        req.metadata.insert("ttlInSeconds".into(), "10".into());
        assert!(matches!(store.set(req).await, Err(Error::NotSupported(_))));
    }
    if !has(&*store, StateFeature::ETag) {
        let mut req = set_req(&unique_key("no-etag"), b"1");
        req.etag = Some(ETag::from("1"));
        assert!(matches!(store.set(req).await, Err(Error::NotSupported(_))));
    }
}

/// The query API, for stores with one: filters, sort and pagination over JSON values, limited
/// to a key prefix.
pub async fn query(store: Arc<dyn StateStore>) {
    let Some(querier) = store.querier() else {
        return;
    };
    let prefix = format!("{}||", unique_key("query"));
    let docs = [
        ("1", r#"{"state":"CA","person":{"org":"A","id":3}}"#),
        ("2", r#"{"state":"WA","person":{"org":"B","id":1}}"#),
        ("3", r#"{"state":"CA","person":{"org":"C","id":2}}"#),
        ("4", r#"{"state":"CA","person":{"org":"B","id":5}}"#),
    ];
    for (k, v) in docs {
        store
            .set(set_req(&format!("{prefix}{k}"), v.as_bytes()))
            .await
            .expect("seed query data");
    }
    store
        .set(set_req(
            &format!("other-{prefix}9"),
            br#"{"state":"CA","person":{"org":"A","id":9}}"#,
        ))
        .await
        .expect("seed a key outside the prefix");
    let mut q = crate::query::Query::parse(
        br#"{"filter":{"AND":[{"EQ":{"state":"CA"}},{"IN":{"person.org":["A","B"]}}]},"sort":[{"key":"person.id","order":"DESC"}],"page":{"limit":1}}"#,
    )
    .unwrap();
    q.key_prefix = prefix.clone();
    let meta = RequestMetadata::new();
    let page1 = querier.query(&q, &meta).await.expect("query page 1");
    assert_eq!(page1.results.len(), 1);
    assert_eq!(page1.results[0].key, format!("{prefix}4"));
    assert!(page1.token.is_some(), "more results remain");
    q.token = page1.token;
    let page2 = querier.query(&q, &meta).await.expect("query page 2");
    assert_eq!(page2.results.len(), 1);
    assert_eq!(page2.results[0].key, format!("{prefix}1"));
    if let Some(token) = page2.token {
        q.token = Some(token);
        let page3 = querier.query(&q, &meta).await.expect("query page 3");
        assert!(page3.results.is_empty(), "only two results match");
    }

    let mut or = crate::query::Query::parse(br#"{"filter":{"OR":[{"EQ":{"state":"WA"}},{"EQ":{"person.id":2}}]},"sort":[{"key":"person.id"}]}"#).unwrap();
    or.key_prefix = prefix.clone();
    let keys: Vec<String> = querier
        .query(&or, &meta)
        .await
        .expect("OR query")
        .results
        .into_iter()
        .map(|r| r.key)
        .collect();
    assert_eq!(keys, vec![format!("{prefix}2"), format!("{prefix}3")]);
}
