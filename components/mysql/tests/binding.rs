//! `bindings.mysql` against the MariaDB (or MySQL) at 127.0.0.1:3306, database `test`
//! (skipped when unreachable, unless `TANDEM_REQUIRE_SERVICES=1`): `exec` with parameters
//! and its response metadata, `query` with the JSON Dapr's binding answers for each column
//! type (NULLs left out), the error answers, and `close`. Every test works in its own table.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tandem_components::bindings::{InvokeRequest, InvokeResponse, OutputBinding};
use tandem_components::{Error, Metadata};
use tandem_mysql::binding::MySqlBinding;
use tandem_testkit::services;

const ADDR: &str = "127.0.0.1:3306";
const URL: &str = "root:@tcp(127.0.0.1:3306)/test?allowNativePasswords=true&parseTime=true";

async fn binding() -> Option<MySqlBinding> {
    if !services::require("MySQL/MariaDB", ADDR) {
        return None;
    }
    let md = Metadata::new("db", "binding-test").with("url", URL);
    Some(MySqlBinding::build(&md).await.expect("build"))
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

async fn exec(b: &MySqlBinding, sql: &str, params: Option<Value>) -> InvokeResponse {
    b.invoke(req("exec", sql, params))
        .await
        .unwrap_or_else(|e| panic!("exec {sql}: {e}"))
}

async fn query_text(b: &MySqlBinding, sql: &str, params: Option<Value>) -> String {
    let resp = b
        .invoke(req("query", sql, params))
        .await
        .unwrap_or_else(|e| panic!("query {sql}: {e}"));
    String::from_utf8(resp.data.expect("query data").to_vec()).unwrap()
}

async fn query(b: &MySqlBinding, sql: &str, params: Option<Value>) -> Value {
    serde_json::from_str(&query_text(b, sql, params).await).expect("JSON rows")
}

#[tokio::test]
async fn exec_and_query_with_parameters() {
    let Some(b) = binding().await else {
        return;
    };
    assert_eq!(b.operations(), ["exec", "query", "close"]);
    let t = table("orders");
    exec(
        &b,
        &format!("CREATE TABLE {t} (id INT PRIMARY KEY, item VARCHAR(20), qty INT)"),
        None,
    )
    .await;

    let sql = format!("INSERT INTO {t} (id, item, qty) VALUES (?, ?, ?), (?, ?, ?)");
    let resp = exec(&b, &sql, Some(json!([1, "apple", 3, 2, "pear", null]))).await;
    assert_eq!(resp.data.as_deref(), Some(&b""[..]), "exec answers no body");
    let md = &resp.metadata;
    assert_eq!(md["operation"], "exec");
    assert_eq!(md["sql"], sql);
    assert_eq!(md["rows-affected"], "2");
    for key in ["start-time", "end-time", "duration"] {
        assert!(!md[key].is_empty(), "{key}");
    }
    assert!(md["start-time"].ends_with('Z'));

    let resp = exec(
        &b,
        &format!("UPDATE {t} SET qty = ? WHERE id = ?"),
        Some(json!(["7", 2])),
    )
    .await;
    assert_eq!(resp.metadata["rows-affected"], "1");

    // Objects keyed by column name (sorted), with and without parameters.
    let sql = format!("SELECT id, item, qty FROM {t} ORDER BY id");
    assert_eq!(
        query_text(&b, &sql, None).await,
        r#"[{"id":1,"item":"apple","qty":3},{"id":2,"item":"pear","qty":7}]"#
    );
    let resp = b
        .invoke(req(
            "query",
            &format!("SELECT qty, id FROM {t} WHERE id = ?"),
            Some(json!([2])),
        ))
        .await
        .unwrap();
    assert_eq!(resp.metadata["operation"], "query");
    assert!(!resp.metadata.contains_key("rows-affected"));
    assert_eq!(resp.data.as_deref(), Some(&br#"[{"id":2,"qty":7}]"#[..]));

    // No rows: null, as Dapr answers. Several statements in one exec without parameters.
    assert_eq!(
        query_text(&b, &format!("SELECT * FROM {t} WHERE id < 0"), None).await,
        "null"
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
    let Some(b) = binding().await else {
        return;
    };
    let t = table("types");
    exec(
        &b,
        &format!(
            "CREATE TABLE {t} (id INT NOT NULL, tiny TINYINT, flag BOOLEAN, big BIGINT UNSIGNED, \
             f FLOAT, f_nn FLOAT NOT NULL DEFAULT 0, d DOUBLE, dec_ DECIMAL(8,2), name VARCHAR(20), \
             note TEXT, doc JSON, color ENUM('red','green'), raw VARBINARY(8), blob_ BLOB, \
             day DATE, at DATETIME(3), stamp TIMESTAMP NULL, tm TIME, yr YEAR)"
        ),
        None,
    )
    .await;
    let insert = format!(
        "INSERT INTO {t} (id, tiny, flag, big, f, f_nn, d, dec_, name, note, doc, color, raw, \
         blob_, day, at, stamp, tm, yr) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, \
         ?, ?, ?)"
    );
    exec(
        &b,
        &insert,
        Some(json!([
            1,
            -5,
            true,
            18446744073709551615_u64,
            1.1,
            1.1,
            0.1,
            "12.5",
            "<a&b>",
            "long text",
            {"k": [1, 2]},
            "green",
            "hi",
            "blob",
            "2024-05-01",
            "2024-05-01 10:30:00.25",
            "2024-05-01 10:30:00",
            "-10:30:05",
            2024
        ])),
    )
    .await;
    exec(&b, &format!("INSERT INTO {t} (id) VALUES (2)"), None).await;

    let expected_full = json!({
        "id": 1, "tiny": -5, "flag": 1, "big": 18446744073709551615_u64,
        "f": 1.100000023841858, "f_nn": 1.1, "d": 0.1, "dec_": "12.50",
        "name": "<a&b>", "note": "long text", "doc": "{\"k\":[1,2]}", "color": "green",
        "raw": "aGk=", "blob_": "YmxvYg==", "day": "2024-05-01T00:00:00Z",
        "at": "2024-05-01T10:30:00.25Z", "stamp": "2024-05-01T10:30:00Z",
        "tm": "-10:30:05", "yr": 2024
    });
    // NULLs are left out, except in binary columns, which answer null.
    let expected_nulls = json!({"id": 2, "f_nn": 0, "raw": null, "blob_": null});
    let sql = format!("SELECT * FROM {t} ORDER BY id");
    // The text protocol (no parameters) and the binary one (prepared) answer alike.
    assert_eq!(
        query(&b, &sql, None).await,
        json!([expected_full, expected_nulls])
    );
    let by_id = format!("SELECT * FROM {t} WHERE id >= ? ORDER BY id");
    assert_eq!(
        query(&b, &by_id, Some(json!([1]))).await,
        json!([expected_full, expected_nulls])
    );

    // The raw text: Go's escaping of <, > and &, and keys in sorted order.
    assert_eq!(
        query_text(
            &b,
            &format!("SELECT name, dec_, id FROM {t} WHERE id = 1"),
            None
        )
        .await,
        r#"[{"dec_":"12.50","id":1,"name":"\u003ca\u0026b\u003e"}]"#
    );
    // A column of no type answers null rather than leaving the key out.
    assert_eq!(
        query_text(&b, "SELECT NULL AS nothing, 1 AS one", None).await,
        r#"[{"nothing":null,"one":1}]"#
    );
    exec(&b, &format!("DROP TABLE {t}"), None).await;
}

#[tokio::test]
async fn errors_and_close() {
    let Some(b) = binding().await else {
        return;
    };
    let err = b
        .invoke(InvokeRequest {
            operation: "query".into(),
            ..InvokeRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "required metadata not set: sql");

    let mut bad_params = req("query", "SELECT ?", None);
    bad_params.metadata.insert("params".into(), "1,2".into());
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
        "error executing query: Error 1146 (42S02): Table 'test.no_such_table_here' doesn't exist"
    );
    let err = b
        .invoke(req("exec", "SELEKT ?", Some(json!([1]))))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("error executing query: Error 1064 (42000)"),
        "{err}"
    );

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
async fn server_down_fails_calls_with_a_backend_error() {
    let md =
        Metadata::new("db", "binding-test").with("url", "root:@tcp(127.0.0.1:1)/test?timeout=2s");
    let b = MySqlBinding::build(&md)
        .await
        .expect("build without a server");
    let err = b.invoke(req("query", "SELECT 1", None)).await.unwrap_err();
    assert!(matches!(err, Error::Backend(_)), "{err:?}");
    assert!(
        err.to_string()
            .starts_with("error connecting to the server"),
        "{err}"
    );
}
