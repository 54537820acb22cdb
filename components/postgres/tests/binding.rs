//! `bindings.postgresql` against the PostgreSQL at 127.0.0.1:5432 (database `test`; skipped
//! when unreachable, unless `TANDEM_REQUIRE_SERVICES=1`): `exec` with parameters and its
//! response metadata, `query` with the JSON Dapr's binding answers for each column type
//! (NULLs included), the error answers, unnamed statements (`queryExecMode: exec`), and
//! `close`. Every test works in its own table.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tandem_components::bindings::{InvokeRequest, InvokeResponse, OutputBinding};
use tandem_components::{Error, Metadata};
use tandem_postgres::PostgresBinding;
use tandem_testkit::services;

const ADDR: &str = "127.0.0.1:5432";
const CONN: &str = "host=127.0.0.1 port=5432 user=postgres database=test";

async fn binding(extra: &[(&str, &str)]) -> Option<PostgresBinding> {
    if !services::require("PostgreSQL", ADDR) {
        return None;
    }
    let mut md = Metadata::new("db", "binding-test").with("connectionString", CONN);
    for (k, v) in extra {
        md.insert(*k, *v);
    }
    Some(PostgresBinding::build(&md).await.expect("build"))
}

/// A table name no other run uses.
fn table(what: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("binding_{what}_{}_{nanos}", std::process::id())
}

fn req(op: &str, sql: &str, params: Option<Value>) -> InvokeRequest {
    let mut metadata = HashMap::from([("sql".to_owned(), sql.to_owned())]);
    if let Some(p) = params {
        metadata.insert("params".to_owned(), p.to_string());
    }
    InvokeRequest {
        operation: op.to_owned(),
        metadata,
        ..InvokeRequest::default()
    }
}

async fn exec(b: &PostgresBinding, sql: &str, params: Option<Value>) -> InvokeResponse {
    b.invoke(req("exec", sql, params))
        .await
        .unwrap_or_else(|e| panic!("exec {sql}: {e}"))
}

async fn query(b: &PostgresBinding, sql: &str, params: Option<Value>) -> Value {
    let resp = b
        .invoke(req("query", sql, params))
        .await
        .unwrap_or_else(|e| panic!("query {sql}: {e}"));
    serde_json::from_slice(resp.data.as_deref().expect("query data")).expect("JSON rows")
}

#[tokio::test]
async fn exec_and_query_with_parameters() {
    let Some(b) = binding(&[]).await else {
        return;
    };
    assert_eq!(b.operations(), ["exec", "query", "close"]);
    let t = table("orders");
    exec(
        &b,
        &format!("CREATE TABLE {t} (id integer PRIMARY KEY, item text, qty integer)"),
        None,
    )
    .await;

    let sql = format!("INSERT INTO {t} (id, item, qty) VALUES ($1, $2, $3), ($4, $5, $6)");
    let resp = exec(&b, &sql, Some(json!([1, "apple", 3, 2, "pear", null]))).await;
    assert_eq!(resp.data.as_deref(), Some(&b""[..]), "exec answers no body");
    let md = &resp.metadata;
    assert_eq!(md["operation"], "exec");
    assert_eq!(md["sql"], sql);
    assert_eq!(md["rows-affected"], "2");
    for key in ["start-time", "end-time"] {
        assert!(
            md[key].ends_with('Z') && md[key].contains('T'),
            "{key}: {}",
            md[key]
        );
    }
    assert!(md["start-time"] <= md["end-time"]);
    assert!(
        ["ns", "µs", "ms", "s"]
            .iter()
            .any(|u| md["duration"].ends_with(u)),
        "duration {}",
        md["duration"]
    );

    // Strings bind to any type; JSON numbers as their text.
    let resp = exec(
        &b,
        &format!("UPDATE {t} SET qty = $1 WHERE id = $2"),
        Some(json!(["7", 2])),
    )
    .await;
    assert_eq!(resp.metadata["rows-affected"], "1");

    let resp = b
        .invoke(req(
            "query",
            &format!("SELECT id, item, qty FROM {t} WHERE id >= $1 ORDER BY id"),
            Some(json!([1])),
        ))
        .await
        .unwrap();
    assert_eq!(resp.metadata["operation"], "query");
    assert!(!resp.metadata.contains_key("rows-affected"));
    let rows: Value = serde_json::from_slice(resp.data.as_deref().unwrap()).unwrap();
    assert_eq!(rows, json!([[1, "apple", 3], [2, "pear", 7]]));

    // No rows: an empty array. Several statements in one exec without parameters.
    assert_eq!(
        query(&b, &format!("SELECT * FROM {t} WHERE id < 0"), None).await,
        json!([])
    );
    let resp = exec(
        &b,
        &format!("DELETE FROM {t} WHERE id = 1; DELETE FROM {t} WHERE id > 0"),
        None,
    )
    .await;
    assert_eq!(
        resp.metadata["rows-affected"], "1",
        "the last statement's count"
    );
    exec(&b, &format!("DROP TABLE {t}"), None).await;
}

#[tokio::test]
async fn column_types_as_dapr_writes_them() {
    let Some(b) = binding(&[]).await else {
        return;
    };
    let t = table("types");
    exec(
        &b,
        &format!(
            "CREATE TABLE {t} (id int, small smallint, big bigint, real_ real, dbl double precision, \
             num numeric(10,2), flag boolean, name varchar(20), ch char(3), doc jsonb, js json, \
             raw bytea, uid uuid, day date, ts timestamp, tstz timestamptz, tm time, \
             span interval, ints int[], texts text[], addr inet)"
        ),
        None,
    )
    .await;
    exec(
        &b,
        &format!(
            "INSERT INTO {t} VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, \
             $15, $16, $17, $18, $19, $20, $21)"
        ),
        Some(json!([
            1,
            -2,
            "9007199254740993",
            1.5,
            0.1,
            "12.5",
            true,
            "<a&b>",
            "ab",
            {"z": 1, "a": [true, null]},
            "{\"k\": 2.0}",
            "\\x00ff",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "2024-05-01",
            "2024-05-01 10:30:00.25",
            "2024-05-01T10:30:00+02:00",
            "10:30:00.5",
            "1 year 2 days 00:00:01.5",
            [1, null, 3],
            ["x", "y \"q\""],
            "10.0.0.1"
        ])),
    )
    .await;
    exec(&b, &format!("INSERT INTO {t} (id) VALUES (2)"), None).await;

    let rows = query(&b, &format!("SELECT * FROM {t} ORDER BY id"), None).await;
    assert_eq!(
        rows[0],
        json!([
            1,
            -2,
            9007199254740993_i64,
            1.5,
            0.1,
            12.50,
            true,
            "<a&b>",
            "ab ",
            {"a": [true, null], "z": 1},
            {"k": 2},
            "AP8=",
            [160, 238, 188, 153, 156, 11, 78, 248, 187, 109, 107, 185, 189, 56, 10, 17],
            "2024-05-01T00:00:00Z",
            "2024-05-01T10:30:00.25Z",
            "2024-05-01T08:30:00Z",
            {"Microseconds": 37_800_500_000_i64, "Valid": true},
            {"Microseconds": 1_500_000, "Days": 2, "Months": 12, "Valid": true},
            [1, null, 3],
            ["x", "y \"q\""],
            "10.0.0.1/32"
        ])
    );
    // NULLs are null, column by column.
    let nulls: Vec<Value> = vec![Value::Null; 20];
    assert_eq!(rows[1][0], json!(2));
    assert_eq!(rows[1].as_array().unwrap()[1..], nulls[..]);

    // The raw text, to check numeric scale and Go's escaping of <, > and &.
    let resp = b
        .invoke(req(
            "query",
            &format!("SELECT num, name FROM {t} WHERE id = 1"),
            None,
        ))
        .await
        .unwrap();
    assert_eq!(
        std::str::from_utf8(resp.data.as_deref().unwrap()).unwrap(),
        r#"[[12.50,"\u003ca\u0026b\u003e"]]"#
    );
    exec(&b, &format!("DROP TABLE {t}"), None).await;
}

#[tokio::test]
async fn errors_are_clear() {
    let Some(b) = binding(&[]).await else {
        return;
    };
    let err = b
        .invoke(InvokeRequest {
            operation: "exec".into(),
            ..InvokeRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "required metadata not set: sql");

    let mut bad_params = req("query", "SELECT $1::int", None);
    bad_params
        .metadata
        .insert("params".into(), "{\"a\":1}".into());
    let err = b.invoke(bad_params).await.unwrap_err();
    assert!(
        err.to_string()
            .starts_with("invalid metadata property params: failed to unserialize into an array"),
        "{err}"
    );

    let err = b
        .invoke(req("query", "SELECT * FROM no_such_table_here", None))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Backend(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        "error executing query: ERROR: relation \"no_such_table_here\" does not exist (SQLSTATE 42P01)"
    );
    let err = b
        .invoke(req("exec", "SELEKT 1", Some(json!([1]))))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("SQLSTATE 42601"), "{err}");
    let err = b
        .invoke(req("query", "SELECT $1::int", Some(json!(["seven"]))))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("SQLSTATE 22P02"), "{err}");
}

#[tokio::test]
async fn unnamed_statements_and_close() {
    let Some(b) = binding(&[("queryExecMode", "exec")]).await else {
        return;
    };
    let t = table("unnamed");
    exec(
        &b,
        &format!("CREATE TABLE {t} (id int, doc jsonb, at timestamptz)"),
        None,
    )
    .await;
    let resp = exec(
        &b,
        &format!("INSERT INTO {t} VALUES ($1, $2, $3)"),
        Some(json!([5, [1, 2], "2024-01-02T03:04:05.678Z"])),
    )
    .await;
    assert_eq!(resp.metadata["rows-affected"], "1");
    assert_eq!(
        query(
            &b,
            &format!("SELECT id, doc, at FROM {t} WHERE id = $1"),
            Some(json!([5]))
        )
        .await,
        json!([[5, [1, 2], "2024-01-02T03:04:05.678Z"]])
    );
    exec(&b, &format!("DROP TABLE {t}"), None).await;

    // close: later calls fail; closing again is fine.
    assert!(
        b.invoke(req("close", "", None))
            .await
            .unwrap()
            .data
            .is_none()
    );
    let err = b.invoke(req("query", "SELECT 1", None)).await.unwrap_err();
    assert_eq!(err.to_string(), "component is closed");
    b.invoke(req("close", "", None)).await.unwrap();
}

#[tokio::test]
async fn database_down_fails_calls_with_a_backend_error() {
    let md = Metadata::new("db", "binding-test")
        .with("connectionString", "host=127.0.0.1 port=1 user=postgres")
        .with("timeout", "2s");
    let b = PostgresBinding::build(&md)
        .await
        .expect("build without a server");
    let err = b.invoke(req("query", "SELECT 1", None)).await.unwrap_err();
    assert!(matches!(err, Error::Backend(_)), "{err:?}");
}
