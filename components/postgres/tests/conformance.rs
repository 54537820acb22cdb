//! `state.postgresql` v1 and v2 against the state store conformance suite and the real server
//! at 127.0.0.1:5432 (database `test`, user `postgres`), plus behaviour specific to this store:
//! Dapr's table layout and migration bookkeeping, the query translation's semantics, TTL
//! cleanup and recovery from an unreachable database.
//!
//! Every case uses unique keys, so the fixed tables below can be shared by concurrent cases
//! and runs. Tests that need a table of their own create one with a random name and drop it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tandem_components::Metadata;
use tandem_components::state::StateStore;
use tandem_postgres::{PostgresStateStore, PostgresStateStoreV2};
use tandem_testkit::services;

const ADDR: &str = "127.0.0.1:5432";
/// In Dapr's style (`database`, as pgx accepts it).
const CONN: &str = "host=127.0.0.1 port=5432 user=postgres database=test";
/// For the tests' own direct connection.
const DIRECT: &str = "host=127.0.0.1 port=5432 user=postgres dbname=test";

fn available() -> bool {
    services::require("PostgreSQL", ADDR)
}

fn meta(extra: &[(&str, &str)]) -> Metadata {
    let mut m = Metadata::new("pg", "conformance").with("connectionString", CONN);
    for (k, v) in extra {
        m.insert(*k, *v);
    }
    m
}

async fn v1(extra: &[(&str, &str)]) -> Option<Arc<dyn StateStore>> {
    if !available() {
        return None;
    }
    let store = PostgresStateStore::build(&meta(extra))
        .await
        .expect("build v1");
    Some(Arc::new(store))
}

async fn v2(extra: &[(&str, &str)]) -> Option<Arc<dyn StateStore>> {
    if !available() {
        return None;
    }
    let store = PostgresStateStoreV2::build(&meta(extra))
        .await
        .expect("build v2");
    Some(Arc::new(store))
}

/// `version: v1` on table `conformance_v1`.
mod v1_suite {
    use super::*;

    async fn build() -> Option<Arc<dyn StateStore>> {
        v1(&[("tableName", "conformance_v1")]).await
    }

    tandem_components::state_store_conformance!(build());
}

/// `version: v1` with `queryExecMode: exec` (unnamed statements, as for PgBouncer).
mod v1_unprepared_suite {
    use super::*;

    async fn build() -> Option<Arc<dyn StateStore>> {
        v1(&[
            ("tableName", "public.conformance_v1"),
            ("queryExecMode", "exec"),
        ])
        .await
    }

    tandem_components::state_store_conformance!(build());
}

/// `version: v2` on table `conformance_state`.
mod v2_suite {
    use super::*;

    async fn build() -> Option<Arc<dyn StateStore>> {
        v2(&[("tablePrefix", "conformance_")]).await
    }

    tandem_components::state_store_conformance!(build());
}

/// Behaviour beyond the generic suite.
mod postgres {
    use super::*;
    use tandem_components::Error;
    use tandem_components::query::Query;
    use tandem_components::state::{
        DeleteRequest, ETag, GetRequest, RequestMetadata, SetRequest, TransactionOperation,
        TransactionRequest,
    };
    use tandem_testkit::proxy::{TcpProxy, quiet_port};
    use tokio_postgres::NoTls;

    async fn client() -> tokio_postgres::Client {
        // tokio-postgres' own parser: `dbname`, not pgx's `database`.
        let (client, conn) = tokio_postgres::connect(DIRECT, NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        client
    }

    fn unique(prefix: &str) -> String {
        format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
    }

    /// Drops the test's tables when it ends, however it ends.
    struct Cleanup(Vec<String>);

    impl Drop for Cleanup {
        fn drop(&mut self) {
            let tables = std::mem::take(&mut self.0);
            // A fresh thread and runtime: the test's runtime may be shutting down.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    let Ok((c, conn)) = tokio_postgres::connect(DIRECT, NoTls).await else {
                        return;
                    };
                    tokio::spawn(conn);
                    for t in tables {
                        let _ = c.batch_execute(&format!("DROP TABLE IF EXISTS {t}")).await;
                    }
                });
            })
            .join();
        }
    }

    fn set(key: &str, value: &[u8]) -> SetRequest {
        SetRequest {
            key: key.to_owned(),
            value: Bytes::copy_from_slice(value),
            ..Default::default()
        }
    }

    async fn get(store: &dyn StateStore, key: &str) -> Option<tandem_components::state::StateItem> {
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

    async fn columns(c: &tokio_postgres::Client, table: &str) -> Vec<(String, String, bool, bool)> {
        c.query(
            "SELECT column_name::text, data_type::text, is_nullable = 'YES', column_default IS NOT NULL \
             FROM information_schema.columns WHERE table_name = $1 ORDER BY ordinal_position",
            &[&table],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
    }

    async fn meta_value(c: &tokio_postgres::Client, table: &str, key: &str) -> Option<String> {
        c.query_opt(
            &format!("SELECT value FROM {table} WHERE key = $1"),
            &[&key],
        )
        .await
        .unwrap()
        .map(|r| r.get(0))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn v1_layout_values_and_etags_are_daprs() {
        if !available() {
            return;
        }
        let (table, meta_table) = (unique("t_v1"), unique("m_v1"));
        let _cleanup = Cleanup(vec![table.clone(), meta_table.clone()]);
        let store = PostgresStateStore::build(&meta(&[
            ("tableName", &table),
            ("metadataTableName", &meta_table),
        ]))
        .await
        .unwrap();
        store
            .set(set("json", br#"{"b": [1, 2],  "a":"x"}"#))
            .await
            .unwrap();
        store.set(set("bin", &[0, 159, 255])).await.unwrap();
        let c = client().await;
        let cols = columns(&c, &table).await;
        let names: Vec<(&str, &str, bool)> = cols
            .iter()
            .map(|(n, t, null, _)| (n.as_str(), t.as_str(), *null))
            .collect();
        assert_eq!(
            names,
            vec![
                ("key", "text", false),
                ("value", "jsonb", false),
                ("isbinary", "boolean", false),
                ("insertdate", "timestamp with time zone", false),
                ("updatedate", "timestamp with time zone", true),
                ("expiredate", "timestamp with time zone", true),
                ("row_id", "bigint", false),
            ]
        );
        assert_eq!(
            meta_value(&c, &meta_table, "migrations").await.as_deref(),
            Some("3")
        );
        assert!(meta_value(&c, &meta_table, "lock").await.is_some());

        let row = c
            .query_one(
                &format!(
                    "SELECT value::text, isbinary, xmin::text FROM {table} WHERE key = 'json'"
                ),
                &[],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), r#"{"a": "x", "b": [1, 2]}"#);
        assert!(!row.get::<_, bool>(1));
        let item = get(&store, "json").await.unwrap();
        assert_eq!(
            item.value.as_ref(),
            br#"{"a":"x","b":[1,2]}"#,
            "JSONB order, compact"
        );
        assert_eq!(
            item.etag.unwrap().as_str(),
            row.get::<_, String>(2),
            "etag = xmin"
        );
        let bin = c
            .query_one(
                &format!("SELECT value::text, isbinary FROM {table} WHERE key = 'bin'"),
                &[],
            )
            .await
            .unwrap();
        assert_eq!(bin.get::<_, String>(0), "\"AJ//\"");
        assert!(bin.get::<_, bool>(1));
        assert_eq!(
            get(&store, "bin").await.unwrap().value.as_ref(),
            &[0, 159, 255]
        );

        // A row written by Dapr (no row_id needed by us, expiry in the past) is honoured.
        c.batch_execute(&format!(
            "INSERT INTO {table} (key, value, isbinary, expiredate) VALUES \
             ('expired', '\"old\"', false, now() - interval '1 minute'), \
             ('dapr', '{{\"z\": 1}}', false, now() + interval '1 hour')"
        ))
        .await
        .unwrap();
        assert!(get(&store, "expired").await.is_none());
        let dapr = get(&store, "dapr").await.unwrap();
        assert_eq!(dapr.value.as_ref(), br#"{"z":1}"#);
        assert!(
            dapr.metadata["ttlExpireTime"].ends_with('Z'),
            "{:?}",
            dapr.metadata
        );
        assert!(
            !dapr.metadata["ttlExpireTime"].contains('.'),
            "whole seconds"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn v2_layout_and_uuid_etags() {
        if !available() {
            return;
        }
        let (prefix, meta_table) = (format!("{}_", unique("p")), unique("m_v2"));
        let table = format!("{prefix}state");
        let _cleanup = Cleanup(vec![table.clone(), meta_table.clone()]);
        let store = PostgresStateStoreV2::build(&meta(&[
            ("tablePrefix", &prefix),
            ("metadataTableName", &meta_table),
        ]))
        .await
        .unwrap();
        store.set(set("k", br#"{"b": 1,  "a": 2}"#)).await.unwrap();
        let c = client().await;
        let names: Vec<(String, String, bool, bool)> = columns(&c, &table).await;
        let names: Vec<(&str, &str, bool, bool)> = names
            .iter()
            .map(|(n, t, null, def)| (n.as_str(), t.as_str(), *null, *def))
            .collect();
        assert_eq!(
            names,
            vec![
                ("key", "text", false, false),
                ("value", "bytea", false, false),
                ("etag", "uuid", false, true),
                ("created_at", "timestamp with time zone", false, true),
                ("updated_at", "timestamp with time zone", true, false),
                ("expires_at", "timestamp with time zone", true, false),
                // An identity column, which information_schema lists without a default.
                ("row_id", "bigint", false, false),
            ]
        );
        assert_eq!(
            meta_value(&c, &meta_table, &format!("migrations-state-v2-{prefix}"))
                .await
                .as_deref(),
            Some("2")
        );
        let item = get(&store, "k").await.unwrap();
        assert_eq!(
            item.value.as_ref(),
            br#"{"b": 1,  "a": 2}"#,
            "bytes as they are"
        );
        let etag = item.etag.unwrap();
        let stored: String = c
            .query_one(
                &format!("SELECT etag::text FROM {table} WHERE key = 'k'"),
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(etag.as_str(), stored);
        let mut bad = set("k", b"1");
        bad.etag = Some(ETag::from("1"));
        assert!(matches!(store.set(bad).await, Err(Error::ETagMismatch)));
        let del = DeleteRequest {
            key: "k".into(),
            etag: Some(ETag::from(uuid::Uuid::new_v4().to_string())),
            ..Default::default()
        };
        assert!(matches!(store.delete(del).await, Err(Error::ETagMismatch)));
    }

    /// A table created by an older Dapr (level 2: no `row_id`) is migrated to level 3 under the
    /// lock; a second v1 table sharing the metadata table is created although the shared level
    /// is already 3.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn migrates_tables_created_by_older_dapr() {
        if !available() {
            return;
        }
        let (old, other, meta_table) = (unique("old"), unique("other"), unique("m_mig"));
        let _cleanup = Cleanup(vec![old.clone(), other.clone(), meta_table.clone()]);
        let c = client().await;
        c.batch_execute(&format!(
            "CREATE TABLE {meta_table} (key text NOT NULL PRIMARY KEY, value text NOT NULL);
             INSERT INTO {meta_table} VALUES ('migrations', '2');
             CREATE TABLE {old} (key text NOT NULL PRIMARY KEY, value jsonb NOT NULL,
                isbinary boolean NOT NULL, insertdate TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
                updatedate TIMESTAMP WITH TIME ZONE NULL, expiredate TIMESTAMP WITH TIME ZONE);
             INSERT INTO {old} (key, value, isbinary) VALUES ('b', '1', false), ('a', '2', false);"
        ))
        .await
        .unwrap();
        let store = PostgresStateStore::build(&meta(&[
            ("tableName", &old),
            ("metadataTableName", &meta_table),
        ]))
        .await
        .unwrap();
        store.ping().await.expect("ping runs the migrations");
        assert_eq!(
            meta_value(&c, &meta_table, "migrations").await.as_deref(),
            Some("3")
        );
        let ids: Vec<(String, i64)> = c
            .query(
                &format!("SELECT key, row_id FROM {old} ORDER BY row_id"),
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        assert_eq!(ids, vec![("a".into(), 1), ("b".into(), 2)]);
        store.set(set("c", b"3")).await.unwrap();
        let c_id: i64 = c
            .query_one(&format!("SELECT row_id FROM {old} WHERE key = 'c'"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(c_id, 3, "the identity continues after the back-filled ids");

        let second = PostgresStateStore::build(&meta(&[
            ("tableName", &other),
            ("metadataTableName", &meta_table),
        ]))
        .await
        .unwrap();
        second
            .set(set("x", b"1"))
            .await
            .expect("its own table is created");
        assert_eq!(get(&second, "x").await.unwrap().value.as_ref(), b"1");
        assert_eq!(
            meta_value(&c, &meta_table, "migrations").await.as_deref(),
            Some("3")
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn query_semantics() {
        let Some(store) = v1(&[("tableName", "conformance_v1")]).await else {
            return;
        };
        let prefix = format!("{}||", unique("q"));
        let docs: [(&str, &[u8]); 7] = [
            ("a", br#"{"n": 9, "s": "b", "tags": ["x"]}"#),
            ("b", br#"{"n": 10, "s": "B"}"#),
            ("c", br#"{"n": 10.0, "s": "a", "flag": true}"#),
            ("d", br#"{"n": "10", "s": "c"}"#),
            ("e", r#"{"s": "é"}"#.as_bytes()),
            ("f", br#""just a string""#),
            ("g", &[0xff, 0x00]),
        ];
        for (k, v) in docs {
            store.set(set(&format!("{prefix}{k}"), v)).await.unwrap();
        }
        let mut expiring = set(&format!("{prefix}h"), br#"{"n": 10}"#);
        expiring.metadata.insert("ttlInSeconds".into(), "1".into());
        store.set(expiring).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1100)).await;

        let run = |doc: &'static str| {
            let store = store.clone();
            let prefix = prefix.clone();
            async move {
                let mut q = Query::parse(doc.as_bytes()).unwrap();
                q.key_prefix = prefix.clone();
                let resp = store
                    .querier()
                    .unwrap()
                    .query(&q, &RequestMetadata::new())
                    .await
                    .unwrap();
                resp.results
                    .into_iter()
                    .map(|r| r.key.strip_prefix(&prefix).unwrap().to_owned())
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(
            run(r#"{"filter":{"GT":{"n":9}}}"#).await,
            ["b", "c"],
            "numeric, not text"
        );
        assert_eq!(
            run(r#"{"filter":{"EQ":{"n":10}}}"#).await,
            ["b", "c"],
            "10 = 10.0, not \"10\""
        );
        assert_eq!(run(r#"{"filter":{"EQ":{"n":"10"}}}"#).await, ["d"]);
        assert_eq!(
            run(r#"{"filter":{"NEQ":{"n":10}}}"#).await,
            ["a", "d", "e", "f"],
            "a missing field is not equal"
        );
        assert_eq!(
            run(r#"{"filter":{"GTE":{"s":"a"}}}"#).await,
            ["a", "c", "d", "e"],
            "code points: \"B\" < \"a\""
        );
        assert_eq!(
            run(r#"{"filter":{"IN":{"s":["B","é"]}}}"#).await,
            ["b", "e"]
        );
        assert_eq!(run(r#"{"filter":{"EQ":{"flag":true}}}"#).await, ["c"]);
        assert_eq!(run(r#"{"filter":{"EQ":{"tags":["x"]}}}"#).await, ["a"]);
        assert_eq!(
            run(r#"{"sort":[{"key":"s"}]}"#).await,
            ["b", "c", "a", "d", "e", "f"],
            "strings by code point, missing last"
        );
        assert_eq!(
            run(r#"{"sort":[{"key":"n","order":"DESC"}]}"#).await,
            ["e", "f", "b", "c", "a", "d"],
            "missing first, numbers numerically (10 = 10.0, then by key), strings apart"
        );
        let mut q = Query::parse(br#"{"sort":[{"key":"s"}],"page":{"limit":4}}"#).unwrap();
        q.key_prefix = prefix.clone();
        let page = store
            .querier()
            .unwrap()
            .query(&q, &RequestMetadata::new())
            .await
            .unwrap();
        assert_eq!(page.results.len(), 4);
        assert_eq!(page.token.as_deref(), Some("4"));
        assert_eq!(page.results[0].data.as_ref(), br#"{"n":10,"s":"B"}"#);
        q.token = page.token;
        let last = store
            .querier()
            .unwrap()
            .query(&q, &RequestMetadata::new())
            .await
            .unwrap();
        assert_eq!(last.results.len(), 2);
        assert_eq!(last.token, None, "no token after the last page");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cleanup_deletes_expired_rows_and_records_it() {
        if !available() {
            return;
        }
        for layout in ["v1", "v2"] {
            let meta_table = unique("m_gc");
            let prefix = format!("{}_", unique("gc"));
            let table = if layout == "v1" {
                unique("gc")
            } else {
                format!("{prefix}state")
            };
            let _cleanup = Cleanup(vec![table.clone(), meta_table.clone()]);
            let extra = [
                ("tableName", table.as_str()),
                ("tablePrefix", prefix.as_str()),
                ("metadataTableName", meta_table.as_str()),
                ("cleanupInterval", "200ms"),
            ];
            let store = if layout == "v1" {
                v1(&extra).await.unwrap()
            } else {
                v2(&extra).await.unwrap()
            };
            let mut short = set("short", b"1");
            short.metadata.insert("ttlInSeconds".into(), "1".into());
            store.set(short).await.unwrap();
            store.set(set("long", b"2")).await.unwrap();
            let c = client().await;
            let count = |key: &'static str| {
                let c = &c;
                let table = table.clone();
                async move {
                    let n: i64 = c
                        .query_one(
                            &format!("SELECT count(*) FROM {table} WHERE key = $1"),
                            &[&key],
                        )
                        .await
                        .unwrap()
                        .get(0);
                    n
                }
            };
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while count("short").await > 0 {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{layout}: not cleaned up"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert_eq!(count("long").await, 1);
            let key = if layout == "v1" {
                "last-cleanup".to_owned()
            } else {
                format!("last-cleanup-state-v2-{prefix}")
            };
            assert!(
                meta_value(&c, &meta_table, &key).await.is_some(),
                "{layout}"
            );
            drop(store);
        }
    }

    /// `connectionMaxIdleTime` closes pooled connections that sat unused; connection-string
    /// keywords reach the server (`application_name`, and `search_path` as a run-time
    /// parameter, as pgx sends unknown keywords).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_connections_are_closed() {
        if !available() {
            return;
        }
        let app = unique("tandem_idle");
        let conn = format!("{CONN} application_name={app} search_path=public");
        let m = Metadata::new("pg", "conformance")
            .with("connectionString", &conn)
            .with("tableName", "conformance_v1")
            .with("connectionMaxIdleTime", "1s");
        let store = PostgresStateStore::build(&m).await.unwrap();
        store.set(set(&unique("idle"), b"1")).await.unwrap();
        let c = client().await;
        let sessions = || async {
            let n: i64 = c
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                    &[&app],
                )
                .await
                .unwrap()
                .get(0);
            n
        };
        assert_eq!(sessions().await, 1);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while sessions().await > 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "idle connection kept"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        store
            .ping()
            .await
            .expect("a new connection is opened on demand");
        assert_eq!(sessions().await, 1);
    }

    /// Built while nothing listens; fails promptly; works once the database is reachable; fails
    /// again when it goes away; recovers again, all without rebuilding.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn down_at_build_then_recovers() {
        if !available() {
            return;
        }
        for layout in ["v1", "v2"] {
            let port = quiet_port();
            let conn =
                format!("host=127.0.0.1 port={port} user=postgres password=hunter2 database=test");
            let m = Metadata::new("pg", "conformance")
                .with("connectionString", &conn)
                .with("tableName", "conformance_v1")
                .with("tablePrefix", "conformance_")
                .with("timeout", "2s");
            let store: Arc<dyn StateStore> = if layout == "v1" {
                Arc::new(
                    PostgresStateStore::build(&m)
                        .await
                        .expect("builds while down"),
                )
            } else {
                Arc::new(
                    PostgresStateStoreV2::build(&m)
                        .await
                        .expect("builds while down"),
                )
            };
            let key = unique("resilient");
            let started = std::time::Instant::now();
            match store.set(set(&key, b"1")).await {
                Err(Error::Backend(e)) => assert!(!e.to_string().contains("hunter2"), "{e}"),
                other => panic!("{layout}: expected a backend error, got {other:?}"),
            }
            assert!(store.ping().await.is_err());
            assert!(started.elapsed() < Duration::from_secs(2), "fails promptly");

            let proxy = TcpProxy::start(port, ADDR.parse().unwrap()).await.unwrap();
            store
                .set(set(&key, b"1"))
                .await
                .expect("works once reachable");
            assert_eq!(get(&*store, &key).await.unwrap().value.as_ref(), b"1");
            proxy.stop();
            tokio::time::sleep(Duration::from_millis(100)).await;
            let meta = RequestMetadata::new();
            let down = store
                .get(GetRequest {
                    key: &key,
                    consistency: Default::default(),
                    metadata: &meta,
                })
                .await;
            assert!(matches!(down, Err(Error::Backend(_))), "{layout}: {down:?}");
            let proxy = TcpProxy::start(port, ADDR.parse().unwrap()).await.unwrap();
            store
                .transactional()
                .unwrap()
                .multi(TransactionRequest {
                    operations: vec![TransactionOperation::Upsert(set(&key, b"2"))],
                    metadata: Default::default(),
                })
                .await
                .expect("works again after the database came back");
            assert_eq!(get(&*store, &key).await.unwrap().value.as_ref(), b"2");
            proxy.stop();
        }
    }
}
