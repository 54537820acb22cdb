//! End-to-end: `bindings.mysql` through the real binary, against the MariaDB (or MySQL) at
//! 127.0.0.1:3306 (skipped when unreachable, unless `TANDEM_REQUIRE_SERVICES=1`): `exec` with
//! `params` over `/v1.0/bindings/{name}` answering the response metadata as `metadata.*`
//! headers, `query` answering rows as JSON objects, the error answers, and `query` over gRPC
//! `InvokeBinding`.

mod common;

use common::binding::{
    self, assert_exec_answer, assert_grpc_query, assert_query_answer, component, invoke,
};
use common::{assert_error, start, tandem};
use serde_json::{Value, json};
use tandem_testkit::{Sidecar, services};

const MYSQL: &str = "127.0.0.1:3306";

fn binding() -> String {
    component(
        "db",
        "bindings.mysql",
        &[
            (
                "url",
                "root:@tcp(127.0.0.1:3306)/test?allowNativePasswords=true&parseTime=true",
            ),
            ("maxOpenConns", "4"),
        ],
    )
}

async fn call(sc: &Sidecar, body: Value) -> reqwest::Response {
    invoke(sc, "db", body).await
}

#[tokio::test]
async fn mysql_binding_over_http_and_grpc() {
    if !services::require("MySQL/MariaDB", MYSQL) {
        return;
    }
    let sc = start(tandem().resource("db.yaml", &binding())).await;
    let t = binding::unique("e2e", "binding").replace('-', "_");

    let resp = call(
        &sc,
        json!({"operation": "exec", "metadata": {"sql": format!("CREATE TABLE {t} (id INT PRIMARY KEY, item VARCHAR(20), price DECIMAL(8,2), at DATETIME)")}}),
    )
    .await;
    assert_eq!(resp.status(), 200);

    // exec with params: 200, no body, Dapr's metadata headers.
    let insert = format!("INSERT INTO {t} VALUES (?, ?, ?, ?), (?, ?, ?, ?)");
    let resp = call(
        &sc,
        json!({"operation": "exec", "metadata": {
            "sql": insert,
            "params": json!([1, "apple", 1.5, "2024-05-01 10:00:00", 2, "pear", "2", null]).to_string(),
        }}),
    )
    .await;
    assert_exec_answer(resp, &insert, "2").await;

    // query: rows as objects keyed by column name; the NULL column is left out.
    let resp = call(
        &sc,
        json!({"operation": "query", "metadata": {
            "sql": format!("SELECT id, item, price, at FROM {t} WHERE id >= ? ORDER BY id"),
            "params": "[1]",
        }}),
    )
    .await;
    assert_query_answer(
        resp,
        r#"[{"at":"2024-05-01T10:00:00Z","id":1,"item":"apple","price":"1.50"},{"id":2,"item":"pear","price":"2.00"}]"#,
    )
    .await;

    // Errors.
    let resp = call(&sc, json!({"operation": "exec"})).await;
    assert_error(
        resp,
        500,
        "ERR_INVOKE_OUTPUT_BINDING",
        "error invoking output binding db: required metadata not set: sql",
    )
    .await;
    let resp = call(
        &sc,
        json!({"operation": "query", "metadata": {"sql": "SELECT * FROM no_such_table_e2e"}}),
    )
    .await;
    assert_error(
        resp,
        500,
        "ERR_INVOKE_OUTPUT_BINDING",
        "error executing query: Error 1146 (42S02): Table 'test.no_such_table_e2e' doesn't exist",
    )
    .await;

    // gRPC InvokeBinding.
    assert_grpc_query(
        &sc,
        "db",
        format!("SELECT item FROM {t} WHERE id = ?"),
        "[2]",
        br#"[{"item":"pear"}]"#,
    )
    .await;

    let resp = call(
        &sc,
        json!({"operation": "exec", "metadata": {"sql": format!("DROP TABLE {t}")}}),
    )
    .await;
    assert_eq!(resp.status(), 200);
}
