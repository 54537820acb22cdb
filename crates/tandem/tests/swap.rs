//! End-to-end "swap": one client script runs against the sidecar with each state store,
//! changing only the component YAML, and must see the same results.

mod common;

use common::{client, start, tandem};
use serde_json::{Value, json};
use tandem_testkit::services;

fn component(type_name: &str, version: &str, metadata: &[(&str, &str)]) -> String {
    let mut yaml = format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: statestore\nspec:\n  type: {type_name}\n  version: {version}\n  metadata:\n"
    );
    for (k, v) in metadata {
        yaml.push_str(&format!("  - name: {k}\n    value: \"{v}\"\n"));
    }
    yaml
}

/// The client script: every answer is recorded as (step, status, body) with ETags and
/// generated values replaced by placeholders, so stores can be compared.
async fn script(sc: &tandem_testkit::Sidecar, run: &str) -> Vec<(String, u16, Value)> {
    let c = client();
    let mut out = Vec::new();
    let key = |k: &str| format!("{run}-{k}");
    let state = sc.url("/v1.0/state/statestore");
    let mut record =
        |step: &str, status: u16, body: Value| out.push((step.to_owned(), status, body));

    let r = c.post(&state).json(&json!([{"key": key("a"), "value": {"n": 1, "tags": ["x", "y"]}}, {"key": key("b"), "value": "text"}])).send().await.unwrap();
    record("save", r.status().as_u16(), Value::Null);
    let r = c
        .get(sc.url(&format!("/v1.0/state/statestore/{}", key("a"))))
        .send()
        .await
        .unwrap();
    let etag = r
        .headers()
        .get("etag")
        .map(|v| v.to_str().unwrap().to_owned());
    record("get a", r.status().as_u16(), r.json().await.unwrap());
    record("has etag", 200, json!(etag.is_some()));
    let r = c
        .post(&state)
        .json(&json!([{"key": key("a"), "value": {"n": 2}, "etag": "999999"}]))
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    let body: Value = r.json().await.unwrap();
    record("stale etag", s, body["errorCode"].clone());
    let r = c
        .post(&state)
        .json(&json!([{"key": key("a"), "value": {"n": 2}, "etag": etag}]))
        .send()
        .await
        .unwrap();
    record("good etag", r.status().as_u16(), Value::Null);
    let r = c
        .post(&state)
        .json(&json!([{"key": key("a"), "value": 0, "options": {"concurrency": "first-write"}}]))
        .send()
        .await
        .unwrap();
    record("first-write on existing", r.status().as_u16(), Value::Null);
    let tx = json!({"operations": [
        {"operation": "upsert", "request": {"key": key("c"), "value": [1, 2, 3]}},
        {"operation": "delete", "request": {"key": key("b")}},
    ]});
    let r = c
        .post(sc.url("/v1.0/state/statestore/transaction"))
        .json(&tx)
        .send()
        .await
        .unwrap();
    record("transaction", r.status().as_u16(), Value::Null);
    let bad_tx = json!({"operations": [
        {"operation": "upsert", "request": {"key": key("d"), "value": 4}},
        {"operation": "upsert", "request": {"key": key("a"), "value": 5, "etag": "999999"}},
    ]});
    let r = c
        .post(sc.url("/v1.0/state/statestore/transaction"))
        .json(&bad_tx)
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    let body: Value = r.json().await.unwrap();
    record("failing transaction", s, body["errorCode"].clone());
    let r = c
        .post(sc.url("/v1.0/state/statestore/bulk"))
        .json(&json!({"keys": [key("a"), key("b"), key("c"), key("d")]}))
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    let mut items: Vec<Value> = r.json().await.unwrap();
    for item in &mut items {
        if let Some(obj) = item.as_object_mut() {
            obj.remove("etag");
            obj.remove("metadata");
            // Keys carry a per-store run prefix; compare only what the script named them.
            let short = obj["key"]
                .as_str()
                .and_then(|k| k.rsplit('-').next())
                .unwrap_or_default()
                .to_owned();
            obj.insert("key".into(), json!(short));
        }
    }
    record("bulk", s, json!(items));
    let r = c
        .delete(sc.url(&format!("/v1.0/state/statestore/{}", key("a"))))
        .send()
        .await
        .unwrap();
    record("delete", r.status().as_u16(), Value::Null);
    let r = c
        .get(sc.url(&format!("/v1.0/state/statestore/{}", key("a"))))
        .send()
        .await
        .unwrap();
    record("get deleted", r.status().as_u16(), Value::Null);
    let r = c
        .post(format!("{state}?metadata.ttlInSeconds=1"))
        .json(&json!([{"key": key("t"), "value": true}]))
        .send()
        .await
        .unwrap();
    record("save ttl", r.status().as_u16(), Value::Null);
    tokio::time::sleep(std::time::Duration::from_millis(2200)).await;
    let r = c
        .get(sc.url(&format!("/v1.0/state/statestore/{}", key("t"))))
        .send()
        .await
        .unwrap();
    record("ttl expired", r.status().as_u16(), Value::Null);
    out
}

#[tokio::test]
async fn the_same_script_sees_the_same_results_on_every_store() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("swap.db");
    let run = uuid_like();
    let mut stores: Vec<(&str, String)> = vec![(
        "sqlite",
        component(
            "state.sqlite",
            "v1",
            &[("connectionString", &db.display().to_string())],
        ),
    )];
    if services::require("Redis", "127.0.0.1:6379") {
        stores.push((
            "redis",
            component("state.redis", "v1", &[("redisHost", "127.0.0.1:6379")]),
        ));
    }
    if services::require("PostgreSQL", "127.0.0.1:5432") {
        let conn = "host=127.0.0.1 port=5432 user=postgres dbname=test";
        stores.push((
            "postgresql v1",
            component(
                "state.postgresql",
                "v1",
                &[("connectionString", conn), ("tableName", "swap_state_v1")],
            ),
        ));
        stores.push((
            "postgresql v2",
            component(
                "state.postgresql",
                "v2",
                &[("connectionString", conn), ("tablePrefix", "swap_")],
            ),
        ));
    }
    if services::require("MariaDB", "127.0.0.1:3306") {
        stores.push((
            "mysql",
            component(
                "state.mysql",
                "v1",
                &[
                    (
                        "connectionString",
                        "root:@tcp(127.0.0.1:3306)/?allowNativePasswords=true",
                    ),
                    ("tableName", "swap_state"),
                ],
            ),
        ));
    }
    let mut results = Vec::new();
    for (name, yaml) in &stores {
        let sc = start(tandem().app_id("swap-app").resource("store.yaml", yaml)).await;
        results.push((
            *name,
            script(&sc, &format!("{run}-{}", name.replace(' ', "-"))).await,
        ));
    }
    let (first_name, first) = &results[0];
    for (name, got) in &results[1..] {
        for (a, b) in first.iter().zip(got) {
            assert_eq!(a, b, "{name} differs from {first_name} at step {:?}", a.0);
        }
        assert_eq!(first.len(), got.len());
    }
    // And the script's expectations themselves.
    let step = |s: &str| first.iter().find(|(n, _, _)| n == s).unwrap().clone();
    assert_eq!(step("get a").2, json!({"n": 1, "tags": ["x", "y"]}));
    assert_eq!(step("stale etag").1, 409);
    assert_eq!(step("first-write on existing").1, 409);
    assert_eq!(step("failing transaction").1, 500);
    assert_eq!(step("ttl expired").1, 204);
}

fn uuid_like() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}
