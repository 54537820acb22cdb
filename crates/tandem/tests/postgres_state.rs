//! End-to-end: `state.postgresql` v1 and v2 through the real binary against the PostgreSQL at
//! 127.0.0.1:5432 (database `test`, user `postgres`): CRUD with ETags, transactions, the query
//! API, Dapr's table layout as seen from the database, and a database that is down at start-up
//! or goes away.
//!
//! Each test uses tables of its own (random names) and drops them at the end.

mod common;

use common::{assert_error, client, start, tandem};
use serde_json::{Value, json};
use tandem_testkit::proxy::{TcpProxy, quiet_port};
use tandem_testkit::services;
use tokio_postgres::NoTls;

const ADDR: &str = "127.0.0.1:5432";

/// A name unique to this run.
fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}_{}_{nanos}", std::process::id())
}

/// A `state.postgresql` component. `version` may be empty (= v1); `extra` is more metadata.
fn pg_store(
    name: &str,
    type_name: &str,
    version: &str,
    conn: &str,
    extra: &[(&str, &str)],
) -> String {
    let mut yaml = format!(
        r#"
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: {name}
spec:
  type: {type_name}
  version: "{version}"
  metadata:
  - name: connectionString
    value: "{conn}"
"#
    );
    for (k, v) in extra {
        yaml.push_str(&format!("  - name: {k}\n    value: \"{v}\"\n"));
    }
    yaml
}

const CONN: &str = "host=127.0.0.1 port=5432 user=postgres database=test";

async fn db() -> tokio_postgres::Client {
    let (client, conn) =
        tokio_postgres::connect("host=127.0.0.1 port=5432 user=postgres dbname=test", NoTls)
            .await
            .expect("connect to PostgreSQL");
    tokio::spawn(conn);
    client
}

/// Drops tables when the test ends.
struct Tables(Vec<String>);

impl Drop for Tables {
    fn drop(&mut self) {
        let tables = std::mem::take(&mut self.0);
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let c = db().await;
                for t in tables {
                    let _ = c.batch_execute(&format!("DROP TABLE IF EXISTS {t}")).await;
                }
            });
        })
        .join();
    }
}

async fn save(c: &reqwest::Client, url: &str, body: Value) -> reqwest::Response {
    c.post(url).json(&body).send().await.unwrap()
}

/// CRUD, ETags, bulk reads and transactions on one store, as any Dapr state store answers them.
async fn exercise(sc: &tandem_testkit::Sidecar, store: &str) {
    let c = client();
    let base = sc.url(&format!("/v1.0/state/{store}"));
    let resp = save(
        &c,
        &base,
        json!([{"key": "order-1", "value": {"qty": 3, "name": "cup"}}]),
    )
    .await;
    assert_eq!(resp.status(), 204, "{store}");
    let resp = c.get(format!("{base}/order-1")).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{store}");
    let etag = resp.headers()["etag"].to_str().unwrap().to_owned();
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"qty": 3, "name": "cup"})
    );

    let stale = save(
        &c,
        &base,
        json!([{"key": "order-1", "value": 1, "etag": "1"}]),
    )
    .await;
    // "1" is a valid v1 (xmin) ETag, and not a v2 (UUID) one: both are simply stale.
    assert_error(stale, 409, "ERR_STATE_SAVE", "failed saving state").await;
    let garbage = save(
        &c,
        &base,
        json!([{"key": "order-1", "value": 1, "etag": "not-an-etag"}]),
    )
    .await;
    // Not a number: malformed for v1 (400); for v2 any non-UUID ETag is a mismatch (409).
    let expect_garbage = if store.contains("v2") { 409 } else { 400 };
    assert_error(
        garbage,
        expect_garbage,
        "ERR_STATE_SAVE",
        "failed saving state",
    )
    .await;
    let ok = save(
        &c,
        &base,
        json!([{"key": "order-1", "value": "second", "etag": etag}]),
    )
    .await;
    assert_eq!(ok.status(), 204, "{store}");
    let resp = c.get(format!("{base}/order-1")).send().await.unwrap();
    let new_etag = resp.headers()["etag"].to_str().unwrap().to_owned();
    assert_ne!(new_etag, etag);
    assert_eq!(resp.text().await.unwrap(), "\"second\"");
    let again = save(
        &c,
        &base,
        json!([{"key": "order-1", "value": 3, "etag": etag}]),
    )
    .await;
    assert_error(again, 409, "ERR_STATE_SAVE", "failed saving state").await;

    let resp = c
        .delete(format!("{base}/order-1"))
        .header("If-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_error(resp, 409, "ERR_STATE_DELETE", "order-1").await;
    let resp = c
        .delete(format!("{base}/order-1"))
        .header("If-Match", &new_etag)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let resp = c.get(format!("{base}/order-1")).send().await.unwrap();
    assert_eq!(resp.status(), 204);

    // Transactions: all or nothing.
    let tx = json!({"operations": [
        {"operation": "upsert", "request": {"key": "a", "value": {"n": 1}}},
        {"operation": "upsert", "request": {"key": "b", "value": "bee"}},
        {"operation": "delete", "request": {"key": "missing"}}
    ]});
    let resp = c
        .post(format!("{base}/transaction"))
        .json(&tx)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204, "{store}");
    let a_etag = c.get(format!("{base}/a")).send().await.unwrap().headers()["etag"]
        .to_str()
        .unwrap()
        .to_owned();
    let failing = json!({"operations": [
        {"operation": "upsert", "request": {"key": "c", "value": "sea"}},
        {"operation": "delete", "request": {"key": "b"}},
        {"operation": "upsert", "request": {"key": "a", "value": 2, "etag": new_etag}}
    ]});
    let resp = c
        .post(format!("{base}/transaction"))
        .json(&failing)
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
    assert_eq!(
        c.get(format!("{base}/c")).send().await.unwrap().status(),
        204,
        "rolled back"
    );
    assert_eq!(
        c.get(format!("{base}/b"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "\"bee\""
    );
    let ok = json!({"operations": [
        {"operation": "upsert", "request": {"key": "a", "value": 2, "etag": a_etag}},
        {"operation": "delete", "request": {"key": "b"}}
    ]});
    let resp = c
        .post(format!("{base}/transaction"))
        .json(&ok)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);

    let bulk: Value = c
        .post(format!("{base}/bulk"))
        .json(&json!({"keys": ["a", "b", "nope"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(bulk[0]["key"], "a");
    assert_eq!(bulk[0]["data"], 2);
    assert!(bulk[0]["etag"].is_string());
    assert_eq!(bulk[1], json!({"key": "b"}));
    assert_eq!(bulk[2], json!({"key": "nope"}));

    // TTL is reported back.
    let resp = save(
        &c,
        &base,
        json!([{"key": "ttl", "value": 1, "metadata": {"ttlInSeconds": "60"}}]),
    )
    .await;
    assert_eq!(resp.status(), 204);
    let resp = c.get(format!("{base}/ttl")).send().await.unwrap();
    assert!(
        resp.headers().contains_key("metadata.ttlexpiretime"),
        "{:?}",
        resp.headers()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_and_v2_through_the_sidecar_with_daprs_tables() {
    if !services::require("PostgreSQL", ADDR) {
        return;
    }
    let v1_table = unique("e2e_v1");
    let v2_prefix = format!("{}_", unique("e2e"));
    let meta_table = unique("e2e_meta");
    let _tables = Tables(vec![
        v1_table.clone(),
        format!("{v2_prefix}state"),
        meta_table.clone(),
    ]);
    // Empty version means v1; `state.postgres` is an alias.
    let v1 = pg_store(
        "pgv1",
        "state.postgresql",
        "",
        CONN,
        &[("tableName", &v1_table), ("metadataTableName", &meta_table)],
    );
    let v2 = pg_store(
        "pgv2",
        "state.postgres",
        "v2",
        CONN,
        &[
            ("tablePrefix", &v2_prefix),
            ("metadataTableName", &meta_table),
        ],
    );
    let sc = start(tandem().resource("v1.yaml", &v1).resource("v2.yaml", &v2)).await;
    exercise(&sc, "pgv1").await;
    exercise(&sc, "pgv2").await;

    // What daprd would find in the database.
    let c = client();
    c.post(sc.url("/v1.0/state/pgv1"))
        .json(&json!([{"key": "layout", "value": {"b": 1, "a": [true]}}]))
        .send()
        .await
        .unwrap();
    c.post(sc.url("/v1.0/state/pgv2"))
        .json(&json!([{"key": "layout", "value": {"b": 1, "a": [true]}}]))
        .send()
        .await
        .unwrap();
    let pg = db().await;
    let row = pg
        .query_one(
            &format!(
                "SELECT value::text, isbinary, xmin::text, insertdate IS NOT NULL, row_id \
                 FROM {v1_table} WHERE key = 'test-app||layout'"
            ),
            &[],
        )
        .await
        .expect("v1 row under the app-id prefix");
    assert_eq!(row.get::<_, String>(0), r#"{"a": [true], "b": 1}"#);
    assert!(!row.get::<_, bool>(1));
    assert!(row.get::<_, bool>(3));
    assert!(row.get::<_, i64>(4) > 0);
    let resp = c
        .get(sc.url("/v1.0/state/pgv1/layout"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["etag"].to_str().unwrap(),
        row.get::<_, String>(2),
        "etag = xmin"
    );
    assert_eq!(resp.text().await.unwrap(), r#"{"a":[true],"b":1}"#);

    let row = pg
        .query_one(
            &format!(
                "SELECT value, etag::text FROM {v2_prefix}state WHERE key = 'test-app||layout'"
            ),
            &[],
        )
        .await
        .expect("v2 row under the app-id prefix");
    assert_eq!(row.get::<_, Vec<u8>>(0), br#"{"a":[true],"b":1}"#.to_vec());
    let resp = c
        .get(sc.url("/v1.0/state/pgv2/layout"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["etag"].to_str().unwrap(),
        row.get::<_, String>(1)
    );

    let levels: Vec<(String, String)> = pg
        .query(
            &format!("SELECT key, value FROM {meta_table} ORDER BY key"),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(
        levels.contains(&("migrations".into(), "3".into())),
        "{levels:?}"
    );
    assert!(
        levels.contains(&(format!("migrations-state-v2-{v2_prefix}"), "2".into())),
        "{levels:?}"
    );
    let v1_columns: Vec<String> = pg
        .query(
            "SELECT column_name::text FROM information_schema.columns WHERE table_name = $1 \
             ORDER BY ordinal_position",
            &[&v1_table],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        v1_columns,
        [
            "key",
            "value",
            "isbinary",
            "insertdate",
            "updatedate",
            "expiredate",
            "row_id"
        ]
    );

    // Capabilities as Dapr lists them: v1 queries, v2 does not.
    let m: Value = c
        .get(sc.url("/v1.0/metadata"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let caps = |name: &str| {
        m["components"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {m}"))["capabilities"]
            .clone()
    };
    for cap in ["ETAG", "TTL", "TRANSACTIONAL", "QUERY_API", "ACTOR"] {
        assert!(
            caps("pgv1").as_array().unwrap().contains(&json!(cap)),
            "pgv1 {cap}"
        );
    }
    for cap in ["ETAG", "TTL", "TRANSACTIONAL", "ACTOR"] {
        assert!(
            caps("pgv2").as_array().unwrap().contains(&json!(cap)),
            "pgv2 {cap}"
        );
    }
    assert!(
        !caps("pgv2")
            .as_array()
            .unwrap()
            .contains(&json!("QUERY_API"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_api_over_http() {
    if !services::require("PostgreSQL", ADDR) {
        return;
    }
    let table = unique("e2e_query");
    let prefix = format!("{}_", unique("e2e_q"));
    let meta = unique("e2e_q_meta");
    let _tables = Tables(vec![table.clone(), format!("{prefix}state"), meta.clone()]);
    let v1 = pg_store(
        "pgstore",
        "state.postgresql",
        "v1",
        CONN,
        &[("tableName", &table), ("metadataTableName", &meta)],
    );
    let v2 = pg_store(
        "pgv2",
        "state.postgresql",
        "v2",
        CONN,
        &[("tablePrefix", &prefix), ("metadataTableName", &meta)],
    );
    let sc = start(tandem().resource("v1.yaml", &v1).resource("v2.yaml", &v2)).await;
    // Another app sharing the table: its keys must not show up in our queries.
    let other = start(tandem().app_id("other-app").resource("v1.yaml", &v1)).await;
    let c = client();
    let items = json!([
        {"key": "1", "value": {"state": "CA", "person": {"org": "A", "id": 3}}},
        {"key": "2", "value": {"state": "WA", "person": {"org": "B", "id": 1}}},
        {"key": "3", "value": {"state": "CA", "person": {"org": "C", "id": 2}}},
        {"key": "4", "value": {"state": "CA", "person": {"org": "B", "id": 5}}},
        {"key": "5", "value": {"state": "CA", "person": {"org": "A", "id": 10}}},
    ]);
    let resp = c
        .post(sc.url("/v1.0/state/pgstore"))
        .json(&items)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let resp = c
        .post(other.url("/v1.0/state/pgstore"))
        .json(&items)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let q = json!({
        "filter": {"AND": [{"EQ": {"state": "CA"}}, {"IN": {"person.org": ["A", "B"]}}]},
        "sort": [{"key": "person.id", "order": "DESC"}],
        "page": {"limit": 2}
    });
    let url = sc.url("/v1.0-alpha1/state/pgstore/query");
    let page: Value = c
        .post(&url)
        .json(&q)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let keys = |page: &Value| -> Vec<String> {
        page["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["key"].as_str().unwrap().to_owned())
            .collect()
    };
    // Numeric order: 10 before 5 (Dapr's text comparison would put "5" first).
    assert_eq!(keys(&page), ["5", "4"], "{page}");
    assert_eq!(
        page["results"][0]["data"],
        json!({"state": "CA", "person": {"org": "A", "id": 10}})
    );
    assert!(page["results"][0]["etag"].is_string());
    let token = page["token"]
        .as_str()
        .expect("a next-page token")
        .to_owned();
    let mut q2 = q.clone();
    q2["page"]["token"] = json!(token);
    let page2: Value = c
        .post(&url)
        .json(&q2)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(keys(&page2), ["1"], "{page2}");
    assert!(page2.get("token").is_none(), "{page2}");

    let gt = json!({"filter": {"GT": {"person.id": 2}}, "sort": [{"key": "person.id"}]});
    let resp: Value = c
        .post(&url)
        .json(&gt)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(keys(&resp), ["1", "4", "5"]);

    let none = json!({"filter": {"EQ": {"state": "NY"}}});
    assert_eq!(c.post(&url).json(&none).send().await.unwrap().status(), 204);
    let bad = json!({"filter": {"LIKE": {"state": "C%"}}});
    let resp = c.post(&url).json(&bad).send().await.unwrap();
    assert_error(
        resp,
        500,
        "ERR_STATE_QUERY",
        "state store pgstore query failed",
    )
    .await;
    let bad_token = json!({"page": {"limit": 1, "token": "x'; DROP TABLE x; --"}});
    let resp = c.post(&url).json(&bad_token).send().await.unwrap();
    assert_error(
        resp,
        500,
        "ERR_STATE_QUERY",
        "state store pgstore query failed",
    )
    .await;

    let resp = c
        .post(sc.url("/v1.0-alpha1/state/pgv2/query"))
        .json(&q)
        .send()
        .await
        .unwrap();
    assert_error(
        resp,
        500,
        "ERR_STATE_STORE_NOT_SUPPORTED",
        "does not support querying",
    )
    .await;
}

/// The database is unreachable at start-up: the sidecar starts anyway, state calls fail with
/// 500, and they succeed as soon as the database is reachable, without a restart; the same
/// when it goes away and comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_down_at_start_and_back() {
    if !services::require("PostgreSQL", ADDR) {
        return;
    }
    let port = quiet_port();
    let table = unique("e2e_down");
    let prefix = format!("{}_", unique("e2e_down"));
    let meta = unique("e2e_down_meta");
    let _tables = Tables(vec![table.clone(), format!("{prefix}state"), meta.clone()]);
    let conn = format!("host=127.0.0.1 port={port} user=postgres password=hunter2 database=test");
    let v1 = pg_store(
        "pgv1",
        "state.postgresql",
        "v1",
        &conn,
        &[
            ("tableName", &table),
            ("metadataTableName", &meta),
            ("timeout", "5s"),
        ],
    );
    let v2 = pg_store(
        "pgv2",
        "state.postgresql",
        "v2",
        &conn,
        &[
            ("tablePrefix", &prefix),
            ("metadataTableName", &meta),
            ("timeout", "5s"),
        ],
    );
    let sc = start(tandem().resource("v1.yaml", &v1).resource("v2.yaml", &v2)).await;
    let c = client();
    assert_eq!(
        c.get(sc.url("/v1.0/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );

    let write = |store: &'static str, value: i64| {
        let c = c.clone();
        let url = sc.url(&format!("/v1.0/state/{store}"));
        async move {
            c.post(url)
                .json(&json!([{"key": "k", "value": value}]))
                .send()
                .await
                .unwrap()
        }
    };
    for store in ["pgv1", "pgv2"] {
        let started = std::time::Instant::now();
        let body = assert_error(
            write(store, 1).await,
            500,
            "ERR_STATE_SAVE",
            "failed saving state",
        )
        .await;
        assert!(!body.to_string().contains("hunter2"), "{body}");
        let resp = c
            .get(sc.url(&format!("/v1.0/state/{store}/k")))
            .send()
            .await
            .unwrap();
        assert_error(resp, 500, "ERR_STATE_GET", "fail to get").await;
        assert!(
            started.elapsed() < std::time::Duration::from_secs(3),
            "fails promptly"
        );
    }

    let proxy = TcpProxy::start(port, ADDR.parse().unwrap()).await.unwrap();
    for store in ["pgv1", "pgv2"] {
        assert_eq!(
            write(store, 2).await.status(),
            204,
            "{store} after the database came up"
        );
        let resp = c
            .get(sc.url(&format!("/v1.0/state/{store}/k")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.text().await.unwrap(), "2");
    }

    proxy.stop();
    for store in ["pgv1", "pgv2"] {
        // The first call may still find a pooled connection that is just being torn down;
        // either way it must fail, and so must the next.
        for _ in 0..2 {
            let resp = write(store, 3).await;
            assert_eq!(resp.status(), 500, "{store} while the database is away");
        }
    }

    let proxy = TcpProxy::start(port, ADDR.parse().unwrap()).await.unwrap();
    for store in ["pgv1", "pgv2"] {
        assert_eq!(
            write(store, 4).await.status(),
            204,
            "{store} after the database came back"
        );
        let resp = c
            .get(sc.url(&format!("/v1.0/state/{store}/k")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.text().await.unwrap(), "4");
    }
    proxy.stop();
    assert_eq!(
        c.get(sc.url("/v1.0/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
}
