//! Tests of `state.mysql` against the real server (MariaDB at 127.0.0.1:3306, skipped when it
//! is not there), each on tables of its own in the `tandem_mysql_test` schema.

use std::path::Path;
use std::sync::atomic::AtomicU32;
use std::time::Instant;

use tandem_components::state::{StateOptions, TransactionOperation};
use tandem_testkit::proxy::{TcpProxy, quiet_port};

use super::*;

const SERVER: &str = "127.0.0.1:3306";
const DSN: &str = "root:@tcp(127.0.0.1:3306)/?allowNativePasswords=true&parseTime=true";
const SCHEMA: &str = "tandem_mysql_test";

fn server_up() -> bool {
    tandem_testkit::services::require("MariaDB", SERVER)
}

/// Table names no other test (or test process) uses.
fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}_{}_{nanos}_{n}", std::process::id())
}

/// Metadata for a store on fresh tables of the test schema.
fn fresh(dsn: &str) -> (Metadata, String, String) {
    let table = unique("state");
    let meta_table = unique("meta");
    let meta = Metadata::new("statestore", "app")
        .with("connectionString", dsn)
        .with("schemaName", SCHEMA)
        .with("tableName", &table)
        .with("metadataTableName", &meta_table);
    (meta, table, meta_table)
}

/// A store on fresh tables, ready (tables created).
async fn store() -> (MySqlStateStore, String, String) {
    let (meta, table, meta_table) = fresh(DSN);
    let store = MySqlStateStore::build(&meta).await.expect("build");
    store.ping().await.expect("ping creates the tables");
    (store, table, meta_table)
}

async fn raw(store: &MySqlStateStore) -> Conn {
    store.inner.pool.get_conn().await.expect("raw connection")
}

async fn drop_tables(store: &MySqlStateStore, tables: &[&str]) {
    let mut conn = raw(store).await;
    for t in tables {
        conn.query_drop(format!("DROP TABLE IF EXISTS `{SCHEMA}`.`{t}`"))
            .await
            .expect("drop test table");
    }
}

fn set_req(key: &str, value: &[u8]) -> SetRequest {
    SetRequest {
        key: key.to_owned(),
        value: Bytes::copy_from_slice(value),
        ..Default::default()
    }
}

async fn get(store: &MySqlStateStore, key: &str) -> Option<StateItem> {
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

/// `(value text, isbinary, eTag)` of the row as stored.
async fn raw_row(
    store: &MySqlStateStore,
    table: &str,
    key: &str,
) -> Option<(String, bool, String)> {
    raw(store)
        .await
        .exec_first(
            format!("SELECT value, isbinary, eTag FROM `{SCHEMA}`.`{table}` WHERE id = ?"),
            (key,),
        )
        .await
        .expect("raw row")
}

#[tokio::test]
async fn creates_daprs_layout() {
    if !server_up() {
        return;
    }
    let (store, table, meta_table) = store().await;
    let mut conn = raw(&store).await;
    let columns: Vec<(String, String, String, Option<String>, String)> = conn
        .exec(
            "SELECT column_name, column_type, is_nullable, column_default, column_key \
             FROM information_schema.columns WHERE table_schema = ? AND table_name = ? \
             ORDER BY ordinal_position",
            (SCHEMA, table.as_str()),
        )
        .await
        .unwrap();
    let names: Vec<&str> = columns.iter().map(|c| c.0.as_str()).collect();
    assert_eq!(
        names,
        [
            "id",
            "value",
            "isbinary",
            "insertDate",
            "updateDate",
            "eTag",
            "expiredate"
        ]
    );
    let by_name = |n: &str| columns.iter().find(|c| c.0 == n).unwrap();
    assert_eq!(by_name("id").1, "varchar(255)");
    assert_eq!(by_name("id").4, "PRI");
    // MariaDB's JSON is LONGTEXT with a JSON_VALID check.
    assert!(matches!(by_name("value").1.as_str(), "longtext" | "json"));
    assert_eq!(by_name("isbinary").1, "tinyint(1)");
    assert_eq!(by_name("eTag").1, "varchar(36)");
    assert_eq!(by_name("expiredate").1, "timestamp");
    assert_eq!(by_name("expiredate").2, "YES");
    assert_eq!(by_name("eTag").2, "NO");
    assert!(
        by_name("updateDate")
            .3
            .as_deref()
            .is_some_and(|d| d.to_ascii_lowercase().contains("current_timestamp"))
    );
    let indexed: Option<i64> = conn
        .exec_first(
            "SELECT COUNT(*) FROM information_schema.statistics \
             WHERE table_schema = ? AND table_name = ? AND index_name = 'expiredate_idx'",
            (SCHEMA, table.as_str()),
        )
        .await
        .unwrap();
    assert_eq!(indexed, Some(1));
    let meta_columns: Vec<(String, String)> = conn
        .exec(
            "SELECT column_name, column_type FROM information_schema.columns \
             WHERE table_schema = ? AND table_name = ? ORDER BY ordinal_position",
            (SCHEMA, meta_table.as_str()),
        )
        .await
        .unwrap();
    assert_eq!(
        meta_columns,
        vec![
            ("id".to_owned(), "varchar(255)".to_owned()),
            ("value".to_owned(), "text".to_owned())
        ]
    );

    store.set(set_req("app||k", br#"{"a":1}"#)).await.unwrap();
    let (value, is_binary, etag) = raw_row(&store, &table, "app||k").await.unwrap();
    assert_eq!(value, r#"{"a":1}"#);
    assert!(!is_binary);
    assert_eq!(etag.len(), 36, "a UUID etag");
    assert_eq!(
        get(&store, "app||k").await.unwrap().etag.unwrap().as_str(),
        etag
    );
    drop(conn);
    drop_tables(&store, &[&table, &meta_table]).await;
}

#[tokio::test]
async fn json_as_text_everything_else_as_base64_json_strings() {
    if !server_up() {
        return;
    }
    let (store, table, meta_table) = store().await;
    let deep = format!("{}1{}", "[".repeat(40), "]".repeat(40));
    let binary: &[u8] = &[0, 159, 146, 150, 255, b'{'];
    let cases: Vec<(&str, &[u8], bool)> = vec![
        ("json", br#" {"a": [1, "x"]} "#, false),
        ("json-string", "\"ünïcode 🌍\"".as_bytes(), false),
        ("binary", binary, true),
        ("not-json", b"hello", true),
        ("empty", b"", true),
        // Valid JSON that MariaDB's JSON_VALID refuses (nesting deeper than 32, lone
        // surrogate): stored as binary instead.
        ("deep", deep.as_bytes(), true),
        ("surrogate", br#""\ud800""#, true),
    ];
    for (key, value, _) in &cases {
        store.set(set_req(key, value)).await.unwrap();
    }
    for (key, value, is_binary) in &cases {
        let (stored, flag, _) = raw_row(&store, &table, key).await.expect("row exists");
        assert_eq!(flag, *is_binary, "{key}: isbinary");
        let expected = if *is_binary {
            format!("\"{}\"", BASE64.encode(value))
        } else {
            String::from_utf8(value.to_vec()).unwrap()
        };
        assert_eq!(stored, expected, "{key}: stored text");
        assert_eq!(
            get(&store, key).await.unwrap().value.as_ref(),
            *value,
            "{key}"
        );
    }
    drop_tables(&store, &[&table, &meta_table]).await;
}

#[tokio::test]
async fn reads_rows_written_by_dapr() {
    if !server_up() {
        return;
    }
    let (store, table, meta_table) = store().await;
    // What daprd writes: json.Marshal of the value, base64 JSON strings for bytes, expiry from
    // the server clock.
    raw(&store)
        .await
        .query_drop(format!(
            "INSERT INTO `{SCHEMA}`.`{table}` (id, value, isbinary, eTag, expiredate) VALUES
                ('app||map', '{{\"n\":1,\"s\":\"x\"}}', 0, 'e-map', NULL),
                ('app||bytes', '\"AAEC/w==\"', 1, 'e-bytes', NULL),
                ('app||expired', '\"old\"', 0, 'e-old', CURRENT_TIMESTAMP - INTERVAL 1 SECOND),
                ('app||future', '\"new\"', 0, 'e-new', '2037-01-01 00:00:00')"
        ))
        .await
        .unwrap();
    let map = get(&store, "app||map").await.unwrap();
    assert_eq!(map.value.as_ref(), br#"{"n":1,"s":"x"}"#);
    assert_eq!(map.etag.unwrap().as_str(), "e-map");
    assert!(map.metadata.is_empty());
    assert_eq!(
        get(&store, "app||bytes").await.unwrap().value.as_ref(),
        &[0, 1, 2, 255][..]
    );
    assert!(get(&store, "app||expired").await.is_none());
    let future = get(&store, "app||future").await.unwrap();
    assert_eq!(
        future.metadata.get(TTL_EXPIRE_TIME_KEY).map(String::as_str),
        Some("2037-01-01T00:00:00Z")
    );

    let keys: Vec<String> = ["app||future", "app||expired", "app||bytes", "app||none"]
        .into_iter()
        .map(String::from)
        .collect();
    let items = store
        .bulk_get(&keys, &RequestMetadata::new())
        .await
        .unwrap();
    let got: Vec<(&str, Option<&[u8]>)> = items
        .iter()
        .map(|i| (i.key.as_str(), i.item.as_ref().map(|it| it.value.as_ref())))
        .collect();
    assert_eq!(
        got,
        vec![
            ("app||future", Some(&b"\"new\""[..])),
            ("app||expired", None),
            ("app||bytes", Some(&[0, 1, 2, 255][..])),
            ("app||none", None),
        ]
    );

    // An expired row is absent for ETags and first-write too.
    let mut stale = set_req("app||expired", b"1");
    stale.etag = Some(ETag::from("e-old"));
    assert!(matches!(store.set(stale).await, Err(Error::ETagMismatch)));
    let stale_delete = DeleteRequest {
        key: "app||expired".into(),
        etag: Some(ETag::from("e-old")),
        ..Default::default()
    };
    assert!(matches!(
        store.delete(stale_delete).await,
        Err(Error::ETagMismatch)
    ));
    let mut first = set_req("app||expired", b"2");
    first.options = StateOptions {
        concurrency: Concurrency::FirstWrite,
        ..Default::default()
    };
    store
        .set(first.clone())
        .await
        .expect("first-write over an expired row");
    assert_eq!(
        get(&store, "app||expired").await.unwrap().value.as_ref(),
        b"2"
    );
    assert!(matches!(store.set(first).await, Err(Error::ETagMismatch)));
    drop_tables(&store, &[&table, &meta_table]).await;
}

#[tokio::test]
async fn keys_compare_exactly_and_are_limited_to_255_characters() {
    if !server_up() {
        return;
    }
    let (store, table, meta_table) = store().await;
    for (key, value) in [("k", b"1"), ("K", b"2"), ("k ", b"3")] {
        store.set(set_req(key, value)).await.unwrap();
    }
    assert_eq!(get(&store, "k").await.unwrap().value.as_ref(), b"1");
    assert_eq!(get(&store, "K").await.unwrap().value.as_ref(), b"2");
    assert_eq!(get(&store, "k ").await.unwrap().value.as_ref(), b"3");

    let longest = "🔑".repeat(MAX_KEY_CHARS);
    store
        .set(set_req(&longest, b"1"))
        .await
        .expect("255 characters fit");
    assert!(get(&store, &longest).await.is_some());
    let too_long = "k".repeat(MAX_KEY_CHARS + 1);
    match store.set(set_req(&too_long, b"1")).await {
        Err(Error::InvalidRequest(msg)) => {
            assert!(msg.contains("255"), "{msg}");
            assert!(!msg.contains(&too_long), "{msg}");
        }
        other => panic!("expected InvalidRequest, got {other:?}"),
    }
    assert!(get(&store, &too_long).await.is_none());
    drop_tables(&store, &[&table, &meta_table]).await;
}

#[tokio::test]
async fn ttl_rounds_up_and_reports_the_expiry() {
    if !server_up() {
        return;
    }
    let (store, table, meta_table) = store().await;
    let before = SystemTime::now();
    let mut req = set_req("ttl", b"1");
    req.metadata.insert("ttlInSeconds".into(), "100".into());
    store.set(req).await.unwrap();
    let written = SystemTime::now();
    let item = get(&store, "ttl").await.unwrap();
    let reported = item
        .metadata
        .get(TTL_EXPIRE_TIME_KEY)
        .expect("ttlExpireTime");
    // Compared as instants: RFC 3339 strings with and without fractional
    // seconds do not sort as the times they name ("12Z" > "12.5Z").
    let reported_at = SystemTime::from(
        time::OffsetDateTime::parse(reported, &time::format_description::well_known::Rfc3339)
            .expect("ttlExpireTime is RFC 3339"),
    );
    // Rounded up to a whole second: the item lives at least the TTL, and less
    // than a second more than the TTL after the write returned.
    let earliest = before + Duration::from_secs(100);
    let latest = written + Duration::from_secs(101);
    assert!(
        earliest <= reported_at && reported_at <= latest,
        "{} <= {reported} <= {}",
        format_expire_time(earliest),
        format_expire_time(latest)
    );
    // A write without a TTL clears it.
    store.set(set_req("ttl", b"2")).await.unwrap();
    assert!(get(&store, "ttl").await.unwrap().metadata.is_empty());
    drop_tables(&store, &[&table, &meta_table]).await;
}

#[tokio::test]
async fn a_failed_transaction_changes_nothing() {
    if !server_up() {
        return;
    }
    let (store, table, meta_table) = store().await;
    store.set(set_req("exists", b"1")).await.unwrap();
    let mut first = set_req("exists", b"2");
    first.options.concurrency = Concurrency::FirstWrite;
    let res = store
        .multi(TransactionRequest {
            operations: vec![
                TransactionOperation::Upsert(set_req("new", b"1")),
                TransactionOperation::Delete(DeleteRequest {
                    key: "exists".into(),
                    ..Default::default()
                }),
                TransactionOperation::Upsert(set_req("exists", b"3")),
                TransactionOperation::Upsert(first),
            ],
            metadata: Default::default(),
        })
        .await;
    assert!(matches!(res, Err(Error::ETagMismatch)), "{res:?}");
    assert!(get(&store, "new").await.is_none());
    assert_eq!(get(&store, "exists").await.unwrap().value.as_ref(), b"1");
    drop_tables(&store, &[&table, &meta_table]).await;
}

#[tokio::test]
async fn tables_dropped_while_running_are_created_again() {
    if !server_up() {
        return;
    }
    let (store, table, meta_table) = store().await;
    store.set(set_req("k", b"1")).await.unwrap();
    drop_tables(&store, &[&table, &meta_table]).await;
    assert!(
        matches!(store.set(set_req("k", b"2")).await, Err(Error::Backend(_))),
        "the call that finds the table gone fails"
    );
    store
        .set(set_req("k", b"3"))
        .await
        .expect("the next one recreates it");
    assert_eq!(get(&store, "k").await.unwrap().value.as_ref(), b"3");
    drop_tables(&store, &[&table, &meta_table]).await;
}

#[tokio::test]
async fn cleanup_deletes_expired_rows_and_records_it() {
    if !server_up() {
        return;
    }
    let (meta, table, meta_table) = fresh(DSN);
    let store = MySqlStateStore::build(&meta.with("cleanupInterval", "1s"))
        .await
        .unwrap();
    store.ping().await.unwrap();
    raw(&store)
        .await
        .query_drop(format!(
            "INSERT INTO `{SCHEMA}`.`{table}` (id, value, isbinary, eTag, expiredate) VALUES
                ('expired', '1', 0, 'e1', CURRENT_TIMESTAMP - INTERVAL 1 SECOND),
                ('live', '2', 0, 'e2', CURRENT_TIMESTAMP + INTERVAL 1 HOUR),
                ('forever', '3', 0, 'e3', NULL)"
        ))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while raw_row(&store, &table, "expired").await.is_some() {
        assert!(
            Instant::now() < deadline,
            "the expired row was not cleaned up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(raw_row(&store, &table, "live").await.is_some());
    assert!(raw_row(&store, &table, "forever").await.is_some());
    let last: Option<String> = raw(&store)
        .await
        .query_first(format!(
            "SELECT value FROM `{SCHEMA}`.`{meta_table}` WHERE id = 'last-cleanup'"
        ))
        .await
        .unwrap();
    assert!(last.is_some_and(|v| v.len() == "2024-01-01 00:00:00".len()));
    drop_tables(&store, &[&table, &meta_table]).await;
}

#[tokio::test]
async fn builds_while_the_server_is_down_and_recovers() {
    if !server_up() {
        return;
    }
    let port = quiet_port();
    let (meta, table, meta_table) = fresh(&format!(
        "root:@tcp(127.0.0.1:{port})/?allowNativePasswords=true"
    ));
    let store = MySqlStateStore::build(&meta)
        .await
        .expect("build needs no server");
    assert!(!store.inner.ready.load(Ordering::Relaxed));

    let started = Instant::now();
    match store.set(set_req("k", b"1")).await {
        Err(Error::Backend(err)) => {
            let text = err.to_string();
            assert!(text.contains("connecting"), "{text}");
        }
        other => panic!("expected a backend error, got {other:?}"),
    }
    assert!(matches!(store.ping().await, Err(Error::Backend(_))));
    assert!(started.elapsed() < Duration::from_secs(2), "fails promptly");

    let target = SERVER.parse().unwrap();
    let proxy = TcpProxy::start(port, target).await.unwrap();
    store
        .set(set_req("k", b"1"))
        .await
        .expect("works once the server is up");
    assert!(store.inner.ready.load(Ordering::Relaxed), "tables created");
    assert_eq!(get(&store, "k").await.unwrap().value.as_ref(), b"1");

    proxy.stop();
    let meta_req = RequestMetadata::new();
    let down = store
        .get(GetRequest {
            key: "k",
            consistency: Default::default(),
            metadata: &meta_req,
        })
        .await;
    assert!(matches!(down, Err(Error::Backend(_))), "{down:?}");

    let proxy = TcpProxy::start(port, target).await.unwrap();
    assert_eq!(get(&store, "k").await.unwrap().value.as_ref(), b"1");
    drop_tables(&store, &[&table, &meta_table]).await;
    proxy.stop();
}

#[tokio::test]
async fn a_silent_server_times_out() {
    // Accepts connections but never greets: only the timeout ends the call.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let meta = Metadata::new("s", "app")
        .with("connectionString", format!("root:@tcp(127.0.0.1:{port})/"))
        .with("timeoutInSeconds", "1");
    let store = MySqlStateStore::build(&meta).await.unwrap();
    let started = Instant::now();
    match store.set(set_req("k", b"1")).await {
        Err(Error::Backend(err)) => assert!(err.to_string().contains("timed out"), "{err}"),
        other => panic!("expected a timeout, got {other:?}"),
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
    drop(listener);
}

#[tokio::test]
async fn dsn_session_variables_and_utc_sessions() {
    if !server_up() {
        return;
    }
    let (meta, table, meta_table) = fresh(&format!(
        "{DSN}&sql_mode=%27STRICT_ALL_TABLES%27&max_statement_time=30"
    ));
    let store = MySqlStateStore::build(&meta).await.unwrap();
    store.ping().await.unwrap();
    let (mode, zone, limit): (String, String, f64) = raw(&store)
        .await
        .query_first("SELECT @@session.sql_mode, @@session.time_zone, @@session.max_statement_time")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(mode, "STRICT_ALL_TABLES");
    assert_eq!(zone, "+00:00");
    assert_eq!(limit, 30.0);
    drop_tables(&store, &[&table, &meta_table]).await;
}

#[tokio::test]
async fn pem_path_is_checked_and_tls_is_never_downgraded() {
    let dir = std::env::temp_dir().join(unique("tandem-mysql-pem"));
    std::fs::create_dir_all(&dir).unwrap();
    let missing = dir.join("missing-secret-name.pem");
    let with_pem = |path: &Path| {
        Metadata::new("s", "app")
            .with("connectionString", DSN)
            .with("pemPath", path.to_str().unwrap())
    };
    let field_and_text = |err: Error| match err {
        Error::InvalidMetadata { ref field, .. } => (field.clone(), err.to_string()),
        other => panic!("expected InvalidMetadata, got {other:?}"),
    };
    let (field, text) = field_and_text(
        MySqlStateStore::build(&with_pem(&missing))
            .await
            .unwrap_err(),
    );
    assert_eq!(field, "pemPath");
    assert!(!text.contains("missing-secret-name"), "{text}");

    let not_pem = dir.join("not.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let (field, _) = field_and_text(
        MySqlStateStore::build(&with_pem(&not_pem))
            .await
            .unwrap_err(),
    );
    assert_eq!(field, "pemPath");

    if server_up() {
        // The test server has no TLS: a store that wants TLS must fail, not fall back.
        let pem = dir.join("ca.pem");
        std::fs::write(
            &pem,
            "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUJ0fVxkn1\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let store = MySqlStateStore::build(&with_pem(&pem))
            .await
            .expect("build");
        let err = store.ping().await.expect_err("no plaintext fallback");
        assert!(err.to_string().contains("SSL"), "{err}");
        assert!(matches!(err, Error::Backend(_)));
        let skip =
            Metadata::new("s", "app").with("connectionString", format!("{DSN}&tls=skip-verify"));
        let store = MySqlStateStore::build(&skip).await.expect("build");
        let err = store.ping().await.expect_err("no plaintext fallback");
        assert!(err.to_string().contains("SSL"), "{err}");
        assert!(matches!(err, Error::Backend(_)));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn collation_per_server() {
    assert_eq!(
        key_collation("10.11.19-MariaDB-0+deb12u1"),
        "utf8mb4_nopad_bin"
    );
    assert_eq!(key_collation("8.0.36"), "utf8mb4_0900_bin");
    assert_eq!(key_collation("5.7.44-log"), "utf8mb4_bin");
}

#[test]
fn binary_values_decode_from_either_json_form() {
    assert_eq!(
        decode_value(br#""AAEC""#.to_vec(), true).unwrap().as_ref(),
        &[0, 1, 2]
    );
    // A JSON string with a (needless) escape is still a JSON string.
    assert_eq!(
        decode_value(br#""AA\u0045C""#.to_vec(), true)
            .unwrap()
            .as_ref(),
        BASE64.decode("AAEC").unwrap().as_slice()
    );
    assert!(decode_value(b"\"not base64!\"".to_vec(), true).is_err());
    assert_eq!(encode_binary(&[0, 1, 2]), br#""AAEC""#.to_vec());
    assert!(is_json(b" [1, {\"a\": null}] "));
    assert!(!is_json(b"hello"));
    assert!(!is_json(b""));
    assert!(!is_json(&[b'"', 0xff, b'"']));
}
