//! End-to-end: secret stores, secret references in components, secret scopes.

mod common;

use common::{assert_error, client, sqlite_store, start, tandem};
use serde_json::{Value, json};

fn file_store(name: &str, path: &std::path::Path, extra: &str) -> String {
    format!(
        r#"apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: {name}
spec:
  type: secretstores.local.file
  version: v1
  metadata:
  - name: secretsFile
    value: {}
{extra}"#,
        path.display()
    )
}

fn write_secrets(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("secrets.json");
    std::fs::write(
        &path,
        json!({"api-key": "k-123", "db": {"user": "admin", "password": "s3cret"}}).to_string(),
    )
    .unwrap();
    path
}

#[tokio::test]
async fn file_store_get_bulk_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_secrets(dir.path());
    let sc = start(tandem().resource("secrets.yaml", &file_store("localsecrets", &path, ""))).await;
    let c = client();
    let v: Value = c
        .get(sc.url("/v1.0/secrets/localsecrets/api-key"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v, json!({"api-key": "k-123"}));
    let v: Value = c
        .get(sc.url("/v1.0/secrets/localsecrets/db:password"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v, json!({"db:password": "s3cret"}));
    let all: Value = c
        .get(sc.url("/v1.0/secrets/localsecrets/bulk"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(all["db:user"], json!({"db:user": "admin"}));
    assert_eq!(all.as_object().unwrap().len(), 3);

    let resp = c
        .get(sc.url("/v1.0/secrets/nope/api-key"))
        .send()
        .await
        .unwrap();
    assert_error(
        resp,
        401,
        "ERR_SECRET_STORE_NOT_FOUND",
        "failed finding secret store with key nope",
    )
    .await;
    let resp = c
        .get(sc.url("/v1.0/secrets/localsecrets/missing"))
        .send()
        .await
        .unwrap();
    assert_error(
        resp,
        500,
        "ERR_SECRET_GET",
        "failed getting secret with key missing from secret store localsecrets",
    )
    .await;
}

#[tokio::test]
async fn multi_valued_and_env_stores() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_secrets(dir.path());
    let multi = file_store(
        "multi",
        &path,
        "  - name: multiValued\n    value: \"true\"\n",
    );
    let env = "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: envsecrets\nspec:\n  type: secretstores.local.env\n  version: v1\n  metadata:\n  - name: prefix\n    value: TANDEM_TEST_\n";
    let sc = start(
        tandem()
            .resource("multi.yaml", &multi)
            .resource("env.yaml", env)
            .env("TANDEM_TEST_TOKEN", "from-env"),
    )
    .await;
    let c = client();
    let v: Value = c
        .get(sc.url("/v1.0/secrets/multi/db"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v, json!({"user": "admin", "password": "s3cret"}));
    let v: Value = c
        .get(sc.url("/v1.0/secrets/envsecrets/TOKEN"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v, json!({"TOKEN": "from-env"}));
}

#[tokio::test]
async fn no_secret_store_configured() {
    let sc = start(tandem()).await;
    let resp = client()
        .get(sc.url("/v1.0/secrets/any/key"))
        .send()
        .await
        .unwrap();
    assert_error(
        resp,
        500,
        "ERR_SECRET_STORES_NOT_CONFIGURED",
        "secret store is not configured",
    )
    .await;
}

#[tokio::test]
async fn secret_scopes_from_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_secrets(dir.path());
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: cfg\nspec:\n  secrets:\n    scopes:\n    - storeName: localsecrets\n      defaultAccess: deny\n      allowedSecrets: [\"api-key\"]\n",
    )
    .unwrap();
    let sc = start(
        tandem()
            .resource("secrets.yaml", &file_store("localsecrets", &path, ""))
            .arg("--config")
            .arg(config.to_string_lossy()),
    )
    .await;
    let c = client();
    assert_eq!(
        c.get(sc.url("/v1.0/secrets/localsecrets/api-key"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let resp = c
        .get(sc.url("/v1.0/secrets/localsecrets/db:password"))
        .send()
        .await
        .unwrap();
    assert_error(
        resp,
        403,
        "ERR_PERMISSION_DENIED",
        "access denied by policy to get \"db:password\" from \"localsecrets\"",
    )
    .await;
    let all: Value = c
        .get(sc.url("/v1.0/secrets/localsecrets/bulk"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(all, json!({"api-key": {"api-key": "k-123"}}));
}

#[tokio::test]
async fn secret_key_ref_resolves_component_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("from-secret.db");
    let secrets = dir.path().join("conn.json");
    std::fs::write(
        &secrets,
        json!({"sqlite": {"path": db.to_string_lossy()}}).to_string(),
    )
    .unwrap();
    // The state store is defined before its secret store, in another file.
    let state = "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: statestore\nspec:\n  type: state.sqlite\n  version: v1\n  metadata:\n  - name: connectionString\n    secretKeyRef:\n      name: sqlite:path\n      key: sqlite:path\nauth:\n  secretStore: vault\n".to_owned();
    let sc = start(
        tandem()
            .resource("a-state.yaml", &state)
            .resource("b-secrets.yaml", &file_store("vault", &secrets, "")),
    )
    .await;
    let resp = client()
        .post(sc.url("/v1.0/state/statestore"))
        .json(&json!([{"key": "k", "value": 1}]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert!(db.exists(), "the database path came from the secret store");

    // A reference to a secret that does not exist fails start-up, naming component, field and
    // store, without printing secret values.
    let bad = sqlite_store("broken", &db, "").replace(
        &format!("    value: \"{}\"", db.display()),
        "    secretKeyRef:\n      name: nope\n",
    ) + "auth:\n  secretStore: vault\n";
    let out = tandem()
        .resource("bad.yaml", &bad)
        .resource("secrets.yaml", &file_store("vault", &secrets, ""))
        .run_to_exit()
        .await;
    assert!(!out.status.success());
    assert!(out.log.contains("broken"), "{}", out.log);
    assert!(out.log.contains("connectionString"), "{}", out.log);
    assert!(out.log.contains("vault"), "{}", out.log);
    assert!(
        !out.log.contains(&*db.to_string_lossy()),
        "a secret value leaked into the log: {}",
        out.log
    );
}
