//! End-to-end: API security through the real binary.
//!
//! Configuration `spec.api` allow/deny lists on the HTTP and gRPC APIs.

mod common;

use common::{IN_MEMORY, assert_error, client, start, tandem};
use dapr::dapr::proto::runtime::v1 as pb;
use dapr::dapr::proto::runtime::v1::dapr_client::DaprClient;
use tonic::Code;

fn config(dir: &std::path::Path, api: &str) -> String {
    let path = dir.join("config.yaml");
    std::fs::write(
        &path,
        format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: api\nspec:\n  api:\n{api}"
        ),
    )
    .unwrap();
    path.display().to_string()
}

#[tokio::test]
async fn http_allow_list_serves_only_the_listed_apis() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        "    allowed:\n    - name: state\n      version: v1.0\n      protocol: http\n    - name: metadata\n      version: v1\n      protocol: http\n",
    );
    let sc = start(
        tandem()
            .resource("state.yaml", IN_MEMORY)
            .arg("--config")
            .arg(cfg),
    )
    .await;
    let c = client();
    // Allowed: state (legacy `v1.0` path prefix form), metadata (group form), health always.
    let resp = c
        .post(sc.url("/v1.0/state/statestore"))
        .body(r#"[{"key":"k","value":1}]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let resp = c
        .get(sc.url("/v1.0/state/statestore/k"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.text().await.unwrap(), "1");
    assert_eq!(
        c.get(sc.url("/v1.0/metadata"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c.get(sc.url("/v1.0/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    // Not listed: publish and secrets are not registered; with invocation blocked too,
    // Go's plain not-found answer.
    for path in [
        "/v1.0/publish/pubsub/orders",
        "/v1.0/invoke/x/method/y",
        "/v1.0-alpha1/state/statestore/query",
    ] {
        let resp = c.post(sc.url(path)).body("{}").send().await.unwrap();
        assert_eq!(resp.status(), 404, "{path}");
        assert_eq!(resp.text().await.unwrap(), "404 page not found\n", "{path}");
    }
}

#[tokio::test]
async fn http_deny_list_falls_through_to_invocation() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        "    denied:\n    - name: state\n      version: v1\n      protocol: http\n    - name: healthz\n      version: v1\n      protocol: http\n",
    );
    let sc = start(
        tandem()
            .resource("state.yaml", IN_MEMORY)
            .arg("--config")
            .arg(cfg),
    )
    .await;
    let c = client();
    // A blocked endpoint reaches the service-invocation fallback, as in daprd.
    let resp = c
        .get(sc.url("/v1.0/state/statestore/k"))
        .send()
        .await
        .unwrap();
    assert_error(
        resp,
        404,
        "ERR_DIRECT_INVOKE",
        "failed getting app id either from the URL path or the header dapr-app-id",
    )
    .await;
    // Health cannot be denied; other groups still work.
    assert_eq!(
        c.get(sc.url("/v1.0/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    assert_eq!(
        c.get(sc.url("/v1.0/metadata"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn grpc_allow_and_deny_lists() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        "    allowed:\n    - name: state\n      version: v1\n      protocol: grpc\n    - name: metadata\n      version: v1\n      protocol: grpc\n    denied:\n    - name: metadata\n      version: v1\n      protocol: grpc\n",
    );
    let sc = start(
        tandem()
            .resource("state.yaml", IN_MEMORY)
            .arg("--config")
            .arg(cfg),
    )
    .await;
    let mut c = DaprClient::connect(format!("http://127.0.0.1:{}", sc.grpc_port))
        .await
        .unwrap();
    // Allowed (the lean unary path): state works.
    c.save_state(pb::SaveStateRequest {
        store_name: "statestore".into(),
        states: vec![dapr::dapr::proto::common::v1::StateItem {
            key: "k".into(),
            value: b"v".to_vec(),
            ..Default::default()
        }],
    })
    .await
    .expect("SaveState is allowed");
    // Not in the allow list (lean path and tonic's path alike): UNIMPLEMENTED.
    let err = c
        .publish_event(pb::PublishEventRequest {
            pubsub_name: "p".into(),
            topic: "t".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    assert_eq!(err.message(), "Not Implemented");
    let err = c
        .query_state_alpha1(pb::QueryStateRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    assert_eq!(err.message(), "Not Implemented");
    // Denied wins over allowed.
    let err = c
        .get_metadata(pb::GetMetadataRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    // The HTTP API is untouched by gRPC rules.
    let resp = client()
        .get(sc.url("/v1.0/state/statestore/k"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}
