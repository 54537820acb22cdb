//! End-to-end: `bindings.postgresql` (and its alias `bindings.postgres`) through the real
//! binary, against the PostgreSQL at 127.0.0.1:5432 (skipped when unreachable, unless
//! `TANDEM_REQUIRE_SERVICES=1`): `exec` with `params` over `/v1.0/bindings/{name}` answering
//! the response metadata as `metadata.*` headers, `query` answering rows as JSON arrays, the
//! error answers, and `query` over gRPC `InvokeBinding`.

mod common;

use common::{assert_error, client, start, tandem};
use dapr::dapr::proto::runtime::v1 as pb;
use dapr::dapr::proto::runtime::v1::dapr_client::DaprClient;
use serde_json::{Value, json};
use tandem_testkit::{Sidecar, services};

const POSTGRES: &str = "127.0.0.1:5432";

fn binding(name: &str, kind: &str) -> String {
    format!(
        r#"
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: {name}
spec:
  type: {kind}
  version: v1
  metadata:
  - name: connectionString
    value: "host=127.0.0.1 port=5432 user=postgres database=test"
"#
    )
}

async fn call(sc: &Sidecar, name: &str, body: Value) -> reqwest::Response {
    client()
        .post(sc.url(&format!("/v1.0/bindings/{name}")))
        .json(&body)
        .send()
        .await
        .unwrap()
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
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let t = format!("e2e_binding_{}_{nanos}", std::process::id());

    let resp = call(
        &sc,
        "db",
        json!({"operation": "exec", "metadata": {"sql": format!("CREATE TABLE {t} (id int PRIMARY KEY, item text, price numeric(8,2), at timestamptz)")}}),
    )
    .await;
    assert_eq!(resp.status(), 200);

    // exec with params: 200, no body, Dapr's metadata headers.
    let insert = format!("INSERT INTO {t} VALUES ($1, $2, $3, $4), ($5, $6, $7, $8)");
    let resp = call(
        &sc,
        "db",
        json!({"operation": "exec", "metadata": {
            "sql": insert,
            "params": json!([1, "apple", "1.5", "2024-05-01T10:00:00Z", 2, "pear", 2, null]).to_string(),
        }}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let h = resp.headers().clone();
    assert_eq!(h["metadata.operation"], "exec");
    assert_eq!(h["metadata.sql"], insert.as_str());
    assert_eq!(h["metadata.rows-affected"], "2");
    for key in [
        "metadata.start-time",
        "metadata.end-time",
        "metadata.duration",
    ] {
        assert!(h.contains_key(key), "{key} in {h:?}");
    }
    assert!(resp.bytes().await.unwrap().is_empty());

    // query through the alias: rows as arrays of column values.
    let resp = call(
        &sc,
        "pg",
        json!({"operation": "query", "metadata": {
            "sql": format!("SELECT id, item, price, at FROM {t} WHERE id >= $1 ORDER BY id"),
            "params": "[1]",
        }}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(resp.headers()["metadata.operation"], "query");
    assert_eq!(
        resp.text().await.unwrap(),
        r#"[[1,"apple",1.50,"2024-05-01T10:00:00Z"],[2,"pear",2.00,null]]"#
    );

    // Errors.
    let resp = call(&sc, "db", json!({"operation": "query"})).await;
    assert_error(
        resp,
        500,
        "ERR_INVOKE_OUTPUT_BINDING",
        "error invoking output binding db: required metadata not set: sql",
    )
    .await;
    let resp = call(
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
    let resp = call(&sc, "db", json!({"operation": "get"})).await;
    assert_error(
        resp,
        500,
        "ERR_INVOKE_OUTPUT_BINDING",
        "supported operations:exec query close",
    )
    .await;

    // gRPC InvokeBinding.
    let mut d = DaprClient::connect(format!("http://127.0.0.1:{}", sc.grpc_port))
        .await
        .unwrap();
    let got = d
        .invoke_binding(pb::InvokeBindingRequest {
            name: "db".into(),
            metadata: [
                (
                    "sql".to_owned(),
                    format!("SELECT item FROM {t} WHERE id = $1"),
                ),
                ("params".to_owned(), "[2]".to_owned()),
            ]
            .into(),
            operation: "query".into(),
            ..Default::default()
        })
        .await
        .expect("InvokeBinding query")
        .into_inner();
    assert_eq!(got.data, br#"[["pear"]]"#);
    assert_eq!(got.metadata["operation"], "query");

    let resp = call(
        &sc,
        "db",
        json!({"operation": "exec", "metadata": {"sql": format!("DROP TABLE {t}")}}),
    )
    .await;
    assert_eq!(resp.status(), 200);
}
