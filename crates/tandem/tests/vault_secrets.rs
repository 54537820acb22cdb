//! End-to-end: `secretstores.hashicorp.vault` through the real binary, against an OpenBao dev
//! server started by the test (skipped when it cannot be, unless `TANDEM_REQUIRE_SERVICES=1`).
//!
//! HTTP and gRPC secret reads (one secret, versions, bulk), a state store whose metadata comes
//! from Vault through `secretKeyRef` (the secret store defined in another file), a missing
//! secret failing that component, Configuration secret scopes, and Vault going away and coming
//! back.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{assert_error, client, sqlite_store, start, tandem};
use dapr::dapr::proto::runtime::v1 as pb;
use dapr::dapr::proto::runtime::v1::dapr_client::DaprClient;
use serde_json::{Value, json};
use tandem_testkit::Sidecar;
use tandem_testkit::openbao::{OpenBao, ROOT_TOKEN};
use tandem_testkit::proxy::{TcpProxy, quiet_port};
use tonic::Code;
use tonic::transport::Channel;

/// A Vault secret store component named `name` reading `<prefix>/*` of the `secret/` engine.
fn vault_store(name: &str, addr: &str, prefix: &str) -> String {
    format!(
        r#"apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: {name}
spec:
  type: secretstores.hashicorp.vault
  version: v1
  metadata:
  - name: vaultAddr
    value: {addr}
  - name: vaultToken
    value: {ROOT_TOKEN}
  - name: vaultKVPrefix
    value: {prefix}
"#
    )
}

/// A prefix of this test's own on the shared server.
fn prefix(case: &str) -> String {
    format!("e2e-{case}-{}", std::process::id())
}

/// Seeds `<prefix>/api-key` and two versions of `<prefix>/db`.
async fn seed(bao: &OpenBao, p: &str) {
    bao.kv2_put(
        "secret",
        &format!("{p}/api-key"),
        json!({"api-key": "k-123"}),
    )
    .await;
    bao.kv2_put(
        "secret",
        &format!("{p}/db"),
        json!({"user": "admin", "password": "s3cret"}),
    )
    .await;
    bao.kv2_put(
        "secret",
        &format!("{p}/db"),
        json!({"user": "admin", "password": "rotated"}),
    )
    .await;
}

async fn get_json(sc: &Sidecar, path: &str) -> Value {
    let resp = client().get(sc.url(path)).send().await.unwrap();
    assert_eq!(resp.status(), 200, "GET {path}");
    resp.json().await.unwrap()
}

async fn grpc(sc: &Sidecar) -> DaprClient<Channel> {
    DaprClient::connect(format!("http://127.0.0.1:{}", sc.grpc_port))
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the gRPC API: {e}; log:\n{}", sc.log()))
}

async fn grpc_get(
    c: &mut DaprClient<Channel>,
    store: &str,
    key: &str,
    metadata: &[(&str, &str)],
) -> Result<HashMap<String, String>, tonic::Status> {
    c.get_secret(pb::GetSecretRequest {
        store_name: store.into(),
        key: key.into(),
        metadata: metadata
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    })
    .await
    .map(|r| r.into_inner().data)
}

async fn grpc_bulk(
    c: &mut DaprClient<Channel>,
    store: &str,
) -> Result<HashMap<String, HashMap<String, String>>, tonic::Status> {
    c.get_bulk_secret(pb::GetBulkSecretRequest {
        store_name: store.into(),
        metadata: HashMap::new(),
    })
    .await
    .map(|r| {
        r.into_inner()
            .data
            .into_iter()
            .map(|(k, v)| (k, v.secrets))
            .collect()
    })
}

#[tokio::test]
async fn http_and_grpc_reads() {
    let Some(bao) = OpenBao::shared().await else {
        return;
    };
    let p = prefix("reads");
    seed(&bao, &p).await;
    let sc = start(tandem().resource("vault.yaml", &vault_store("vault", &bao.addr(), &p))).await;

    // HTTP: one secret (all its keys), a version, bulk, a miss.
    assert_eq!(
        get_json(&sc, "/v1.0/secrets/vault/api-key").await,
        json!({"api-key": "k-123"})
    );
    assert_eq!(
        get_json(&sc, "/v1.0/secrets/vault/db").await,
        json!({"user": "admin", "password": "rotated"})
    );
    assert_eq!(
        get_json(&sc, "/v1.0/secrets/vault/db?metadata.version_id=1").await,
        json!({"user": "admin", "password": "s3cret"})
    );
    assert_eq!(
        get_json(&sc, "/v1.0/secrets/vault/bulk").await,
        json!({
            "api-key": {"api-key": "k-123"},
            "db": {"user": "admin", "password": "rotated"},
        })
    );
    let resp = client()
        .get(sc.url("/v1.0/secrets/vault/missing"))
        .send()
        .await
        .unwrap();
    assert_error(
        resp,
        500,
        "ERR_SECRET_GET",
        "failed getting secret with key missing from secret store vault",
    )
    .await;

    // The metadata API lists it with Dapr's capability for several keys per secret.
    let meta = get_json(&sc, "/v1.0/metadata").await;
    let vault = meta["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "vault")
        .unwrap_or_else(|| panic!("vault in {meta}"));
    assert_eq!(vault["type"], "secretstores.hashicorp.vault");
    assert_eq!(
        vault["capabilities"],
        json!(["MULTIPLE_KEY_VALUES_PER_SECRET"])
    );

    // gRPC: the same reads.
    let mut c = grpc(&sc).await;
    let db = grpc_get(&mut c, "vault", "db", &[]).await.unwrap();
    assert_eq!(db["password"], "rotated");
    let db = grpc_get(&mut c, "vault", "db", &[("version_id", "1")])
        .await
        .unwrap();
    assert_eq!(db["password"], "s3cret");
    let all = grpc_bulk(&mut c, "vault").await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all["api-key"]["api-key"], "k-123");
    let err = grpc_get(&mut c, "vault", "missing", &[]).await.unwrap_err();
    assert_eq!(err.code(), Code::Internal, "{err:?}");
}

#[tokio::test]
async fn secret_key_refs_resolve_from_vault() {
    let Some(bao) = OpenBao::shared().await else {
        return;
    };
    let p = prefix("refs");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("from-vault.db");
    bao.kv2_put(
        "secret",
        &format!("{p}/sqlite"),
        json!({"path": db.to_string_lossy(), "unused": "x"}),
    )
    .await;
    let reference = |component: &str, name: &str, key: &str| {
        sqlite_store(component, &db, "").replace(
            &format!("    value: \"{}\"", db.display()),
            &format!("    secretKeyRef:\n      name: {name}\n      key: {key}\n"),
        ) + "auth:\n  secretStore: vault\n"
    };

    // The state store is defined before its secret store, in another file.
    let sc = start(
        tandem()
            .resource("a-state.yaml", &reference("statestore", "sqlite", "path"))
            .resource("b-vault.yaml", &vault_store("vault", &bao.addr(), &p)),
    )
    .await;
    let resp = client()
        .post(sc.url("/v1.0/state/statestore"))
        .json(&json!([{"key": "k", "value": 1}]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204, "{}", sc.log());
    assert!(db.exists(), "the database path came from Vault");
    drop(sc);

    // A secret that Vault does not hold, and a key the secret lacks, fail start-up naming the
    // component, the field and the store, without printing secret values.
    for (name, key, reason) in [
        ("nope", "path", "cannot read secret 'nope'"),
        ("sqlite", "nokey", "has no key 'nokey'"),
    ] {
        let out = tandem()
            .resource("a-state.yaml", &reference("broken", name, key))
            .resource("b-vault.yaml", &vault_store("vault", &bao.addr(), &p))
            .run_to_exit()
            .await;
        assert!(!out.status.success(), "{}", out.log);
        for needle in ["broken", "connectionString", "vault", reason] {
            assert!(out.log.contains(needle), "{needle} in:\n{}", out.log);
        }
        for secret in [&*db.to_string_lossy(), ROOT_TOKEN] {
            assert!(
                !out.log.contains(secret),
                "a secret value leaked into the log:\n{}",
                out.log
            );
        }
    }
}

#[tokio::test]
async fn secret_scopes_over_http_and_grpc() {
    let Some(bao) = OpenBao::shared().await else {
        return;
    };
    let p = prefix("scopes");
    seed(&bao, &p).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        r#"apiVersion: dapr.io/v1alpha1
kind: Configuration
metadata:
  name: cfg
spec:
  secrets:
    scopes:
    - storeName: locked
      defaultAccess: deny
      allowedSecrets: ["api-key"]
    - storeName: open
      defaultAccess: allow
      deniedSecrets: ["db"]
"#,
    )
    .unwrap();
    let sc = start(
        tandem()
            .resource("locked.yaml", &vault_store("locked", &bao.addr(), &p))
            .resource("open.yaml", &vault_store("open", &bao.addr(), &p))
            .arg("--config")
            .arg(config.to_string_lossy()),
    )
    .await;

    for store in ["locked", "open"] {
        assert_eq!(
            get_json(&sc, &format!("/v1.0/secrets/{store}/api-key")).await,
            json!({"api-key": "k-123"})
        );
        let resp = client()
            .get(sc.url(&format!("/v1.0/secrets/{store}/db")))
            .send()
            .await
            .unwrap();
        assert_error(
            resp,
            403,
            "ERR_PERMISSION_DENIED",
            &format!("access denied by policy to get \"db\" from \"{store}\""),
        )
        .await;
        assert_eq!(
            get_json(&sc, &format!("/v1.0/secrets/{store}/bulk")).await,
            json!({"api-key": {"api-key": "k-123"}})
        );
    }

    let mut c = grpc(&sc).await;
    for store in ["locked", "open"] {
        let err = grpc_get(&mut c, store, "db", &[]).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
        assert!(
            err.message().contains(&format!(
                "access denied by policy to get \"db\" from \"{store}\""
            )),
            "{err:?}"
        );
        let allowed = grpc_get(&mut c, store, "api-key", &[]).await.unwrap();
        assert_eq!(allowed["api-key"], "k-123");
        let all = grpc_bulk(&mut c, store).await.unwrap();
        assert_eq!(all.keys().collect::<Vec<_>>(), ["api-key"]);
    }
}

#[tokio::test]
async fn vault_down_then_back() {
    let Some(bao) = OpenBao::shared().await else {
        return;
    };
    let p = prefix("down");
    seed(&bao, &p).await;
    let target = format!("127.0.0.1:{}", bao.port).parse().unwrap();
    let port = quiet_port();
    // Vault is not there when the sidecar starts: the sidecar starts anyway.
    let sc = start(tandem().resource(
        "vault.yaml",
        &vault_store("vault", &format!("http://127.0.0.1:{port}"), &p),
    ))
    .await;
    let down = || async {
        let resp = client()
            .get(sc.url("/v1.0/secrets/vault/api-key"))
            .send()
            .await
            .unwrap();
        assert_error(
            resp,
            500,
            "ERR_SECRET_GET",
            "failed getting secret with key api-key from secret store vault",
        )
        .await;
        let resp = client()
            .get(sc.url("/v1.0/secrets/vault/bulk"))
            .send()
            .await
            .unwrap();
        assert_error(
            resp,
            500,
            "ERR_SECRET_GET",
            "failed getting secrets from secret store vault",
        )
        .await;
    };
    down().await;
    // ... and says so once in its log.
    let start = std::time::Instant::now();
    while !sc.log().contains("vault unreachable") {
        assert!(start.elapsed() < Duration::from_secs(10), "{}", sc.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut c = grpc(&sc).await;
    let err = grpc_get(&mut c, "vault", "api-key", &[]).await.unwrap_err();
    assert_eq!(err.code(), Code::Internal, "{err:?}");

    // Vault arrives.
    let proxy = listen(port, target).await;
    assert_eq!(
        get_json(&sc, "/v1.0/secrets/vault/api-key").await,
        json!({"api-key": "k-123"})
    );

    // Goes away, and comes back.
    proxy.stop();
    down().await;
    let proxy = listen(port, target).await;
    assert_eq!(
        get_json(&sc, "/v1.0/secrets/vault/db").await["password"],
        "rotated"
    );
    assert_eq!(
        grpc_bulk(&mut c, "vault").await.unwrap()["db"]["password"],
        "rotated"
    );
    proxy.stop();
}

/// Listens on `port` again (the previous listener may take a moment to close).
async fn listen(port: u16, target: std::net::SocketAddr) -> TcpProxy {
    for _ in 0..50 {
        if let Ok(p) = TcpProxy::start(port, target).await {
            return p;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("cannot listen on {port} again");
}
