//! End-to-end: `bindings.mysql` through the real binary, against the MariaDB (or MySQL) at
//! 127.0.0.1:3306 (skipped when unreachable, unless `TANDEM_REQUIRE_SERVICES=1`): `exec` with
//! `params` over `/v1.0/bindings/{name}` answering the response metadata as `metadata.*`
//! headers, `query` answering rows as JSON objects, the error answers, and `query` over gRPC
//! `InvokeBinding`.

mod common;

use common::{assert_error, client, start, tandem};
use dapr::dapr::proto::runtime::v1 as pb;
use dapr::dapr::proto::runtime::v1::dapr_client::DaprClient;
use serde_json::{Value, json};
use tandem_testkit::{Sidecar, services};

const MYSQL: &str = "127.0.0.1:3306";

const BINDING: &str = r#"
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: db
spec:
  type: bindings.mysql
  version: v1
  metadata:
  - name: url
    value: "root:@tcp(127.0.0.1:3306)/test?allowNativePasswords=true&parseTime=true"
  - name: maxOpenConns
    value: "4"
"#;

async fn call(sc: &Sidecar, body: Value) -> reqwest::Response {
    client()
        .post(sc.url("/v1.0/bindings/db"))
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn mysql_binding_over_http_and_grpc() {
    if !services::require("MySQL/MariaDB", MYSQL) {
        return;
    }
    let sc = start(tandem().resource("db.yaml", BINDING)).await;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let t = format!("e2e_binding_{}_{nanos}", std::process::id());

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

    // query: rows as objects keyed by column name; the NULL column is left out.
    let resp = call(
        &sc,
        json!({"operation": "query", "metadata": {
            "sql": format!("SELECT id, item, price, at FROM {t} WHERE id >= ? ORDER BY id"),
            "params": "[1]",
        }}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(resp.headers()["metadata.operation"], "query");
    assert_eq!(
        resp.text().await.unwrap(),
        r#"[{"at":"2024-05-01T10:00:00Z","id":1,"item":"apple","price":"1.50"},{"id":2,"item":"pear","price":"2.00"}]"#
    );

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
    let mut d = DaprClient::connect(format!("http://127.0.0.1:{}", sc.grpc_port))
        .await
        .unwrap();
    let got = d
        .invoke_binding(pb::InvokeBindingRequest {
            name: "db".into(),
            metadata: [
                (
                    "sql".to_owned(),
                    format!("SELECT item FROM {t} WHERE id = ?"),
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
    assert_eq!(got.data, br#"[{"item":"pear"}]"#);
    assert_eq!(got.metadata["operation"], "query");

    let resp = call(
        &sc,
        json!({"operation": "exec", "metadata": {"sql": format!("DROP TABLE {t}")}}),
    )
    .await;
    assert_eq!(resp.status(), 200);
}
