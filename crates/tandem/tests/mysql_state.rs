//! End-to-end: `state.mysql` through the real binary, against the MariaDB at 127.0.0.1:3306
//! (skipped when unreachable, unless `TANDEM_REQUIRE_SERVICES=1`): the HTTP state API, Dapr's
//! table layout read back with a plain MySQL client, and a database that is down at start-up,
//! comes up, goes away and comes back.

mod common;

use std::time::Duration;

use common::{assert_error, client, start, tandem};
use mysql_async::prelude::Queryable;
use serde_json::{Value, json};
use tandem_testkit::proxy::{TcpProxy, quiet_port};
use tandem_testkit::services;

const MARIADB: &str = "127.0.0.1:3306";
/// The schema these tests use (Dapr's default table names inside it).
const SCHEMA: &str = "tandem_e2e";

fn mysql_store(port: u16, extra: &str) -> String {
    format!(
        r#"
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: statestore
spec:
  type: state.mysql
  version: v1
  metadata:
  - name: connectionString
    value: "root:@tcp(127.0.0.1:{port})/?allowNativePasswords=true&parseTime=true"
  - name: schemaName
    value: {SCHEMA}
{extra}
"#
    )
}

/// An app-id no other test run uses, so that runs sharing the server never see each other.
fn unique_app_id(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("mysql-e2e-{test}-{}-{nanos}", std::process::id())
}

fn direct() -> mysql_async::Pool {
    mysql_async::Pool::new("mysql://root@127.0.0.1:3306/?prefer_socket=false")
}

/// `(value, isbinary, eTag, expiredate is set)` of a row as stored.
async fn row(db: &mysql_async::Pool, id: &str) -> Option<(String, bool, String, bool)> {
    db.get_conn()
        .await
        .unwrap()
        .exec_first(
            format!(
                "SELECT value, isbinary, eTag, expiredate IS NOT NULL FROM `{SCHEMA}`.`state` \
                 WHERE id = ?"
            ),
            (id,),
        )
        .await
        .unwrap()
}

fn etag_of(resp: &reqwest::Response) -> String {
    resp.headers()["etag"].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn crud_etags_bulk_transactions_and_ttl_in_daprs_layout() {
    if !services::require("MariaDB", MARIADB) {
        return;
    }
    let app = unique_app_id("crud");
    let sc = start(
        tandem()
            .app_id(&app)
            .resource("state.yaml", &mysql_store(3306, "")),
    )
    .await;
    let c = client();
    let db = direct();
    let state = sc.url("/v1.0/state/statestore");

    // Save and read back; the row is Dapr's: id `<appid>||<key>`, JSON text, a UUID eTag.
    let resp = c
        .post(&state)
        .json(&json!([{"key": "order-1", "value": {"qty": 3, "name": "cup"}}]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let resp = c
        .get(sc.url("/v1.0/state/statestore/order-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let etag = etag_of(&resp);
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"qty": 3, "name": "cup"})
    );
    let (value, is_binary, stored_etag, expires) = row(&db, &format!("{app}||order-1"))
        .await
        .expect("row under <appid>||<key>");
    assert_eq!(
        serde_json::from_str::<Value>(&value).unwrap(),
        json!({"qty": 3, "name": "cup"})
    );
    assert!(!is_binary);
    assert_eq!(stored_etag, etag);
    assert_eq!(etag.len(), 36);
    assert!(!expires);

    // Stale ETag: 409 and nothing changes; the current one works.
    let stale = c
        .post(&state)
        .json(&json!([{"key": "order-1", "value": 1, "etag": "not-the-etag"}]))
        .send()
        .await
        .unwrap();
    assert_error(
        stale,
        409,
        "ERR_STATE_SAVE",
        "failed saving state in state store statestore",
    )
    .await;
    let ok = c
        .post(&state)
        .json(&json!([{"key": "order-1", "value": "second", "etag": etag}]))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 204);
    let resp = c
        .get(sc.url("/v1.0/state/statestore/order-1"))
        .send()
        .await
        .unwrap();
    let new_etag = etag_of(&resp);
    assert_ne!(new_etag, etag);
    assert_eq!(resp.text().await.unwrap(), "\"second\"");
    let resp = c
        .delete(sc.url("/v1.0/state/statestore/order-1"))
        .header("If-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_error(resp, 409, "ERR_STATE_DELETE", "order-1").await;
    assert!(row(&db, &format!("{app}||order-1")).await.is_some());

    // first-write only creates.
    let fw = json!([{"key": "fw", "value": 1, "options": {"concurrency": "first-write"}}]);
    assert_eq!(c.post(&state).json(&fw).send().await.unwrap().status(), 204);
    let again = c.post(&state).json(&fw).send().await.unwrap();
    assert_error(again, 409, "ERR_STATE_SAVE", "etag").await;

    // Bulk save and bulk get.
    let resp = c
        .post(&state)
        .json(&json!([{"key": "a", "value": {"n": 1}}, {"key": "b", "value": "two"}]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let items: Vec<Value> = c
        .post(sc.url("/v1.0/state/statestore/bulk"))
        .json(&json!({"keys": ["a", "missing", "b"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let find = |k: &str| items.iter().find(|i| i["key"] == k).unwrap().clone();
    assert_eq!(items.len(), 3);
    assert_eq!(find("a")["data"], json!({"n": 1}));
    assert_eq!(find("b")["data"], json!("two"));
    assert!(find("b")["etag"].is_string());
    assert_eq!(find("missing"), json!({"key": "missing"}));

    // Transactions: all, then nothing when one operation fails.
    let etag_b = find("b")["etag"].as_str().unwrap().to_owned();
    let tx = json!({"operations": [
        {"operation": "upsert", "request": {"key": "c", "value": [1, 2, 3]}},
        {"operation": "delete", "request": {"key": "b", "etag": etag_b}},
    ]});
    let resp = c
        .post(sc.url("/v1.0/state/statestore/transaction"))
        .json(&tx)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert!(row(&db, &format!("{app}||c")).await.is_some());
    assert!(row(&db, &format!("{app}||b")).await.is_none());
    let tx = json!({"operations": [
        {"operation": "upsert", "request": {"key": "d", "value": 4}},
        {"operation": "delete", "request": {"key": "c"}},
        {"operation": "upsert", "request": {"key": "a", "value": 0, "etag": "stale"}},
    ]});
    let resp = c
        .post(sc.url("/v1.0/state/statestore/transaction"))
        .json(&tx)
        .send()
        .await
        .unwrap();
    assert_error(
        resp,
        500,
        "ERR_STATE_TRANSACTION",
        "error while executing state transaction",
    )
    .await;
    assert!(
        row(&db, &format!("{app}||d")).await.is_none(),
        "nothing applied"
    );
    assert!(
        row(&db, &format!("{app}||c")).await.is_some(),
        "nothing deleted"
    );

    // TTL: expiredate is set, ttlExpireTime reported, the item disappears.
    let resp = c
        .post(sc.url("/v1.0/state/statestore?metadata.ttlInSeconds=1"))
        .json(&json!([{"key": "t", "value": "soon gone"}]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let (_, _, _, expires) = row(&db, &format!("{app}||t")).await.unwrap();
    assert!(expires, "expiredate set");
    let resp = c
        .get(sc.url("/v1.0/state/statestore/t"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers().contains_key("metadata.ttlexpiretime"),
        "{:?}",
        resp.headers()
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let resp = c
        .get(sc.url("/v1.0/state/statestore/t"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);

    // The metadata API reports what the store declares.
    let meta: Value = c
        .get(sc.url("/v1.0/metadata"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let component = meta["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "statestore")
        .unwrap()
        .clone();
    assert_eq!(component["type"], "state.mysql");
    for cap in ["ETAG", "TRANSACTIONAL", "TTL", "ACTOR"] {
        assert!(
            component["capabilities"]
                .as_array()
                .unwrap()
                .contains(&json!(cap)),
            "{cap} in {component}"
        );
    }

    let mut conn = db.get_conn().await.unwrap();
    conn.exec_drop(
        format!("DELETE FROM `{SCHEMA}`.`state` WHERE id LIKE ?"),
        (format!("{app}||%"),),
    )
    .await
    .unwrap();
    drop(conn);
    db.disconnect().await.unwrap();
}

#[tokio::test]
async fn starts_while_the_database_is_down_and_recovers() {
    if !services::require("MariaDB", MARIADB) {
        return;
    }
    let port = quiet_port();
    let app = unique_app_id("down");
    let yaml = mysql_store(port, "  - name: timeoutInSeconds\n    value: \"3\"\n");
    let sc = start(tandem().app_id(&app).resource("state.yaml", &yaml)).await;
    let c = client();
    let health = c.get(sc.url("/v1.0/healthz")).send().await.unwrap();
    assert_eq!(
        health.status(),
        204,
        "the sidecar starts without its database"
    );

    let save = |value: i64| {
        c.post(sc.url("/v1.0/state/statestore"))
            .json(&json!([{"key": "k", "value": value}]))
            .send()
    };
    let started = std::time::Instant::now();
    assert_error(save(1).await.unwrap(), 500, "ERR_STATE_SAVE", "statestore").await;
    let get = c
        .get(sc.url("/v1.0/state/statestore/k"))
        .send()
        .await
        .unwrap();
    assert_error(get, 500, "ERR_STATE_GET", "state store statestore").await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "calls fail promptly"
    );

    let target = MARIADB.parse().unwrap();
    let proxy = TcpProxy::start(port, target).await.unwrap();
    assert_eq!(save(2).await.unwrap().status(), 204, "recovers by itself");
    let got = c
        .get(sc.url("/v1.0/state/statestore/k"))
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.text().await.unwrap(), "2");

    proxy.stop();
    assert_error(save(3).await.unwrap(), 500, "ERR_STATE_SAVE", "statestore").await;

    let proxy = TcpProxy::start(port, target).await.unwrap();
    assert_eq!(save(4).await.unwrap().status(), 204);
    let got = c
        .get(sc.url("/v1.0/state/statestore/k"))
        .send()
        .await
        .unwrap();
    assert_eq!(got.text().await.unwrap(), "4");
    proxy.stop();

    let db = direct();
    let mut conn = db.get_conn().await.unwrap();
    conn.exec_drop(
        format!("DELETE FROM `{SCHEMA}`.`state` WHERE id LIKE ?"),
        (format!("{app}||%"),),
    )
    .await
    .unwrap();
    drop(conn);
    db.disconnect().await.unwrap();
}
