//! End-to-end: the state HTTP API through the real binary.

mod common;

use common::{IN_MEMORY, assert_error, client, start, tandem};
use serde_json::{Value, json};

#[tokio::test]
async fn save_get_delete_with_etags() {
    let sc = start(tandem().resource("state.yaml", IN_MEMORY)).await;
    let c = client();
    let resp = c
        .post(sc.url("/v1.0/state/statestore"))
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
    assert_eq!(resp.headers()["content-type"], "application/json");
    let etag = resp.headers()["etag"].to_str().unwrap().to_owned();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body, json!({"qty": 3, "name": "cup"}));

    // A stale ETag is a conflict; the current one works.
    let stale = c
        .post(sc.url("/v1.0/state/statestore"))
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
        .put(sc.url("/v1.0/state/statestore"))
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
    let new_etag = resp.headers()["etag"].to_str().unwrap().to_owned();
    assert_ne!(new_etag, etag);
    assert_eq!(resp.text().await.unwrap(), "\"second\"");

    // Delete with a stale If-Match, then with the right one.
    let resp = c
        .delete(sc.url("/v1.0/state/statestore/order-1"))
        .header("If-Match", etag)
        .send()
        .await
        .unwrap();
    assert_error(
        resp,
        409,
        "ERR_STATE_DELETE",
        "failed deleting state with key order-1",
    )
    .await;
    let resp = c
        .delete(sc.url("/v1.0/state/statestore/order-1"))
        .header("If-Match", new_etag)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let resp = c
        .get(sc.url("/v1.0/state/statestore/order-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert!(resp.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn first_write_and_case_insensitive_fields() {
    let sc = start(tandem().resource("state.yaml", IN_MEMORY)).await;
    let c = client();
    let body = json!([{"Key": "fw", "VALUE": 1, "Options": {"Concurrency": "first-write"}}]);
    let first = c
        .post(sc.url("/v1.0/state/statestore"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 204);
    let second = c
        .post(sc.url("/v1.0/state/statestore"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_error(second, 409, "ERR_STATE_SAVE", "etag").await;
    let got = c
        .get(sc.url("/v1.0/state/statestore/fw"))
        .send()
        .await
        .unwrap();
    assert_eq!(got.text().await.unwrap(), "1");
}

#[tokio::test]
async fn bulk_get_and_transactions() {
    let sc = start(tandem().resource("state.yaml", IN_MEMORY)).await;
    let c = client();
    let resp = c
        .post(sc.url("/v1.0/state/statestore"))
        .json(&json!([{"key": "a", "value": {"n": 1}}, {"key": "b", "value": "two"}]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let resp = c
        .post(sc.url("/v1.0/state/statestore/bulk"))
        .json(&json!({"keys": ["a", "missing", "b"], "parallelism": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let items: Vec<Value> = resp.json().await.unwrap();
    assert_eq!(items.len(), 3);
    let find = |k: &str| items.iter().find(|i| i["key"] == k).unwrap().clone();
    assert_eq!(find("a")["data"], json!({"n": 1}));
    assert!(find("a")["etag"].is_string());
    assert_eq!(find("b")["data"], json!("two"));
    assert_eq!(find("missing"), json!({"key": "missing"}));

    let etag_b = c
        .get(sc.url("/v1.0/state/statestore/b"))
        .send()
        .await
        .unwrap()
        .headers()["etag"]
        .to_str()
        .unwrap()
        .to_owned();
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
    let c_val: Value = c
        .get(sc.url("/v1.0/state/statestore/c"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(c_val, json!([1, 2, 3]));
    assert_eq!(
        c.get(sc.url("/v1.0/state/statestore/b"))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );

    // All or nothing: a stale ETag fails the transaction with 500 and nothing applies.
    let tx = json!({"operations": [
        {"operation": "upsert", "request": {"key": "d", "value": 4}},
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
    assert_eq!(
        c.get(sc.url("/v1.0/state/statestore/d"))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );

    let tx = json!({"operations": [{"operation": "merge", "request": {"key": "x"}}]});
    let resp = c
        .post(sc.url("/v1.0/state/statestore/transaction"))
        .json(&tx)
        .send()
        .await
        .unwrap();
    assert_error(
        resp,
        400,
        "ERR_NOT_SUPPORTED_STATE_OPERATION",
        "operation type merge not supported",
    )
    .await;
}

#[tokio::test]
async fn ttl_from_query_metadata() {
    let sc = start(tandem().resource("state.yaml", IN_MEMORY)).await;
    let c = client();
    let resp = c
        .post(sc.url("/v1.0/state/statestore?metadata.ttlInSeconds=1"))
        .json(&json!([{"key": "t", "value": "soon gone"}]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
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
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let resp = c
        .get(sc.url("/v1.0/state/statestore/t"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
}

#[tokio::test]
async fn request_errors() {
    let sc = start(
        tandem()
            .resource("state.yaml", IN_MEMORY)
            .arg("--max-body-size")
            .arg("1Ki"),
    )
    .await;
    let c = client();
    let resp = c.get(sc.url("/v1.0/state/nostore/k")).send().await.unwrap();
    let body = assert_error(
        resp,
        400,
        "ERR_STATE_STORE_NOT_FOUND",
        "state store nostore is not found",
    )
    .await;
    assert_eq!(
        body["details"][0]["@type"],
        "type.googleapis.com/google.rpc.ErrorInfo"
    );
    assert_eq!(body["details"][0]["reason"], "DAPR_STATE_NOT_FOUND");

    let resp = c
        .post(sc.url("/v1.0/state/statestore"))
        .header("content-type", "application/json")
        .body("[{\"key\": ")
        .send()
        .await
        .unwrap();
    assert_error(resp, 400, "ERR_MALFORMED_REQUEST", "EOF").await;

    let resp = c
        .post(sc.url("/v1.0/state/statestore"))
        .json(&json!([{"value": 1}]))
        .send()
        .await
        .unwrap();
    assert_error(
        resp,
        400,
        "ERR_MALFORMED_REQUEST",
        "\"key\" is a required field",
    )
    .await;

    let resp = c
        .post(sc.url("/v1.0/state/statestore"))
        .json(&json!({"key": "obj"}))
        .send()
        .await
        .unwrap();
    assert_error(resp, 400, "ERR_MALFORMED_REQUEST", "").await;

    let resp = c
        .post(sc.url("/v1.0/state/statestore"))
        .json(&json!([{"key": "a||b", "value": 1}]))
        .send()
        .await
        .unwrap();
    let body = assert_error(resp, 400, "ERR_MALFORMED_REQUEST", "can't contain '||'").await;
    assert_eq!(
        body["details"].as_array().unwrap().last().unwrap()["reason"],
        "DAPR_STATE_ILLEGAL_KEY"
    );

    let big = json!([{"key": "big", "value": "x".repeat(2048)}]);
    let resp = c
        .post(sc.url("/v1.0/state/statestore"))
        .json(&big)
        .send()
        .await
        .unwrap();
    assert_error(resp, 400, "ERR_BODY_READ", "maximum size").await;

    let resp = c
        .post(sc.url("/v1.0/state/statestore"))
        .json(&json!([]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204, "an empty save is a no-op");

    // The sidecar is still healthy after all of that.
    let resp = c.get(sc.url("/v1.0/healthz")).send().await.unwrap();
    assert_eq!(resp.status(), 204);
}

#[tokio::test]
async fn no_state_store_configured() {
    let sc = start(tandem()).await;
    let resp = client()
        .get(sc.url("/v1.0/state/statestore/k"))
        .send()
        .await
        .unwrap();
    assert_error(
        resp,
        500,
        "ERR_STATE_STORE_NOT_CONFIGURED",
        "state store statestore is not configured",
    )
    .await;
}

#[tokio::test]
async fn h2c_is_accepted() {
    let sc = start(tandem().resource("state.yaml", IN_MEMORY)).await;
    let c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let resp = c
        .post(sc.url("/v1.0/state/statestore"))
        .json(&json!([{"key": "h2", "value": true}]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 204);
    let resp = c
        .get(sc.url("/v1.0/state/statestore/h2"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.text().await.unwrap(), "true");
}

#[tokio::test]
async fn unknown_routes_fall_through_to_invocation() {
    let sc = start(tandem()).await;
    let resp = client().get(sc.url("/no/such/route")).send().await.unwrap();
    assert_error(resp, 404, "ERR_DIRECT_INVOKE", "failed getting app id").await;
    let resp = client()
        .delete(sc.url("/v1.0/metadata"))
        .send()
        .await
        .unwrap();
    assert_error(resp, 404, "ERR_DIRECT_INVOKE", "failed getting app id").await;
}

#[tokio::test]
async fn query_api_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = common::sqlite_store("sqlitestore", &dir.path().join("q.db"), "");
    let sc = start(
        tandem()
            .resource("state.yaml", IN_MEMORY)
            .resource("sqlite.yaml", &sqlite),
    )
    .await;
    let c = client();
    for store in ["statestore", "sqlitestore"] {
        let items = json!([
            {"key": "1", "value": {"state": "CA", "person": {"org": "A", "id": 3}}},
            {"key": "2", "value": {"state": "WA", "person": {"org": "B", "id": 1}}},
            {"key": "3", "value": {"state": "CA", "person": {"org": "C", "id": 2}}},
            {"key": "4", "value": {"state": "CA", "person": {"org": "B", "id": 5}}},
        ]);
        let resp = c
            .post(sc.url(&format!("/v1.0/state/{store}")))
            .json(&items)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 204);
        let q = json!({
            "filter": {"AND": [{"EQ": {"state": "CA"}}, {"IN": {"person.org": ["A", "B"]}}]},
            "sort": [{"key": "person.id", "order": "DESC"}],
            "page": {"limit": 1}
        });
        let url = sc.url(&format!("/v1.0-alpha1/state/{store}/query"));
        let page: Value = c
            .post(&url)
            .json(&q)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(page["results"][0]["key"], "4", "{store}: {page}");
        assert_eq!(page["results"][0]["data"]["person"]["id"], 5);
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
        assert_eq!(page2["results"][0]["key"], "1", "{store}: {page2}");

        let none = json!({"filter": {"EQ": {"state": "NY"}}});
        assert_eq!(c.post(&url).json(&none).send().await.unwrap().status(), 204);
        let bad = json!({"filter": {"LIKE": {"state": "C%"}}});
        let resp = c.post(&url).json(&bad).send().await.unwrap();
        assert_error(
            resp,
            500,
            "ERR_STATE_QUERY",
            &format!("state store {store} query failed"),
        )
        .await;
    }
    let m: Value = c
        .get(sc.url("/v1.0/metadata"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let caps = m["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "sqlitestore")
        .unwrap()["capabilities"]
        .clone();
    assert!(
        caps.as_array().unwrap().contains(&json!("QUERY_API")),
        "{caps}"
    );
}
