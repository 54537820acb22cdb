//! End-to-end: `bindings.postgresql` (and its alias `bindings.postgres`) through the real
//! binary, against the PostgreSQL at 127.0.0.1:5432 (skipped when unreachable, unless
//! `TANDEM_REQUIRE_SERVICES=1`): `exec` with `params` over `/v1.0/bindings/{name}` answering
//! the response metadata as `metadata.*` headers, `query` answering rows as JSON arrays, the
//! error answers, and `query` over gRPC `InvokeBinding`.

mod common;

use common::binding::{
    self, assert_exec_answer, assert_grpc_query, assert_query_answer, component, invoke,
};
use common::{assert_error, start, tandem};
use serde_json::json;
use tandem_testkit::services;

const POSTGRES: &str = "127.0.0.1:5432";

fn binding(name: &str, kind: &str) -> String {
    component(
        name,
        kind,
        &[(
            "connectionString",
            "host=127.0.0.1 port=5432 user=postgres database=test",
        )],
    )
}

#[tokio::test]
async fn postgres_binding_over_http_and_grpc() {
    if !services::require("PostgreSQL", POSTGRES) {
        return;
    }
    let sc = start(
        tandem()
            .resource("db.yaml", &binding("db", "bindings.postgresql"))
            .resource("pg.yaml", &binding("pg", "bindings.postgres")),
    )
    .await;
    let t = binding::unique("e2e", "binding").replace('-', "_");

    let resp = invoke(
        &sc,
        "db",
        json!({"operation": "exec", "metadata": {"sql": format!("CREATE TABLE {t} (id int PRIMARY KEY, item text, price numeric(8,2), at timestamptz)")}}),
    )
    .await;
    assert_eq!(resp.status(), 200);

    // exec with params: 200, no body, Dapr's metadata headers.
    let insert = format!("INSERT INTO {t} VALUES ($1, $2, $3, $4), ($5, $6, $7, $8)");
    let resp = invoke(
        &sc,
        "db",
        json!({"operation": "exec", "metadata": {
            "sql": insert,
            "params": json!([1, "apple", "1.5", "2024-05-01T10:00:00Z", 2, "pear", 2, null]).to_string(),
        }}),
    )
    .await;
    assert_exec_answer(resp, &insert, "2").await;

    // query through the alias: rows as arrays of column values.
    let resp = invoke(
        &sc,
        "pg",
        json!({"operation": "query", "metadata": {
            "sql": format!("SELECT id, item, price, at FROM {t} WHERE id >= $1 ORDER BY id"),
            "params": "[1]",
        }}),
    )
    .await;
    assert_query_answer(
        resp,
        r#"[[1,"apple",1.50,"2024-05-01T10:00:00Z"],[2,"pear",2.00,null]]"#,
    )
    .await;

    // Errors.
    let resp = invoke(&sc, "db", json!({"operation": "query"})).await;
    assert_error(
        resp,
        500,
        "ERR_INVOKE_OUTPUT_BINDING",
        "error invoking output binding db: required metadata not set: sql",
    )
    .await;
    let resp = invoke(
        &sc,
        "db",
        json!({"operation": "query", "metadata": {"sql": "SELECT * FROM no_such_table_e2e"}}),
    )
    .await;
    assert_error(
        resp,
        500,
        "ERR_INVOKE_OUTPUT_BINDING",
        "error executing query: ERROR: relation \"no_such_table_e2e\" does not exist (SQLSTATE 42P01)",
    )
    .await;
    let resp = invoke(&sc, "db", json!({"operation": "get"})).await;
    assert_error(
        resp,
        500,
        "ERR_INVOKE_OUTPUT_BINDING",
        "supported operations:exec query close",
    )
    .await;

    // gRPC InvokeBinding.
    assert_grpc_query(
        &sc,
        "db",
        format!("SELECT item FROM {t} WHERE id = $1"),
        "[2]",
        br#"[["pear"]]"#,
    )
    .await;

    let resp = invoke(
        &sc,
        "db",
        json!({"operation": "exec", "metadata": {"sql": format!("DROP TABLE {t}")}}),
    )
    .await;
    assert_eq!(resp.status(), 200);
}
