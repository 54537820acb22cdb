//! End-to-end: `state.sqlite` through the real binary, including durability across `kill -9`.

mod common;

use common::{client, sqlite_store, start, tandem};
use serde_json::{Value, json};

#[tokio::test]
async fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    let yaml = sqlite_store("statestore", &db, "");
    let mut sc = start(tandem().resource("state.yaml", &yaml)).await;
    let c = client();
    for i in 0..50 {
        let resp = c
            .post(sc.url("/v1.0/state/statestore"))
            .json(&json!([{"key": format!("k{i}"), "value": {"i": i}}]))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 204);
    }
    let tx = json!({"operations": [{"operation": "upsert", "request": {"key": "tx", "value": "committed"}}]});
    assert_eq!(
        c.post(sc.url("/v1.0/state/statestore/transaction"))
            .json(&tx)
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    let etag_before = c
        .get(sc.url("/v1.0/state/statestore/k7"))
        .send()
        .await
        .unwrap()
        .headers()["etag"]
        .clone();
    sc.kill9().await;

    let sc = start(tandem().resource("state.yaml", &yaml)).await;
    for i in 0..50 {
        let resp = c
            .get(sc.url(&format!("/v1.0/state/statestore/k{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "k{i} lost after kill -9");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v, json!({"i": i}));
    }
    let resp = c
        .get(sc.url("/v1.0/state/statestore/k7"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["etag"], etag_before, "etag survives restart");
    assert_eq!(
        c.get(sc.url("/v1.0/state/statestore/tx"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "\"committed\""
    );
}

#[tokio::test]
async fn key_prefixes_isolate_apps_unless_none() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shared.db");
    let scoped = sqlite_store("statestore", &db, "");
    let c = client();
    let a = start(tandem().app_id("app-a").resource("s.yaml", &scoped)).await;
    let b = start(tandem().app_id("app-b").resource("s.yaml", &scoped)).await;
    let resp = c
        .post(a.url("/v1.0/state/statestore"))
        .json(&json!([{"key": "k", "value": "from-a"}]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(
        c.get(b.url("/v1.0/state/statestore/k"))
            .send()
            .await
            .unwrap()
            .status(),
        204,
        "app-b must not see app-a's key"
    );
    assert_eq!(
        c.get(a.url("/v1.0/state/statestore/k"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let unprefixed = sqlite_store("statestore", &db, "  - name: keyPrefix\n    value: none\n");
    let n1 = start(tandem().app_id("n1").resource("s.yaml", &unprefixed)).await;
    let n2 = start(tandem().app_id("n2").resource("s.yaml", &unprefixed)).await;
    c.post(n1.url("/v1.0/state/statestore"))
        .json(&json!([{"key": "shared", "value": 42}]))
        .send()
        .await
        .unwrap();
    assert_eq!(
        c.get(n2.url("/v1.0/state/statestore/shared"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "42"
    );
    // The prefixed key written by app-a is stored as "app-a||k".
    assert_eq!(
        c.get(n2.url("/v1.0/state/statestore/k"))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
}
