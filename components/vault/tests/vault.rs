//! `secretstores.hashicorp.vault` beyond the conformance suite, on real OpenBao dev servers:
//! several keys per secret, the text value type, versions, prefixes and folders, namespaces,
//! TLS settings, a token file that is rotated, and Vault going away and coming back.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tandem_components::secrets::SecretStore;
use tandem_components::state::RequestMetadata;
use tandem_components::{Error, Metadata};
use tandem_testkit::openbao::{OpenBao, ROOT_TOKEN};
use tandem_testkit::proxy::{TcpProxy, quiet_port};
use tandem_vault::VaultSecretStore;

fn meta(addr: &str) -> Metadata {
    Metadata::new("vault", "app")
        .with("vaultAddr", addr)
        .with("vaultToken", ROOT_TOKEN)
}

/// A prefix of its own, so tests sharing a server do not see each other's secrets.
fn prefix(case: &str) -> String {
    tandem_components::conformance::unique_key(case)
}

async fn store(meta: Metadata) -> VaultSecretStore {
    VaultSecretStore::build(&meta).await.expect("build")
}

fn none() -> RequestMetadata {
    RequestMetadata::new()
}

fn version(v: &str) -> RequestMetadata {
    RequestMetadata::from([("version_id".to_owned(), v.to_owned())])
}

#[tokio::test]
async fn map_and_text_value_types() {
    let Some(bao) = OpenBao::shared().await else {
        return;
    };
    let p = prefix("types");
    bao.kv2_put(
        "secret",
        &format!("{p}/multi"),
        json!({"first": "1", "second": "2", "third": "3"}),
    )
    .await;
    let map = store(meta(&bao.addr()).with("vaultKVPrefix", &p)).await;
    let secret = map.get("multi", &none()).await.unwrap();
    assert_eq!(secret.len(), 3);
    assert_eq!(secret["second"], "2");
    assert_eq!(map.features(), &["MULTIPLE_KEY_VALUES_PER_SECRET"]);

    let text = store(
        meta(&bao.addr())
            .with("vaultKVPrefix", &p)
            .with("vaultValueType", "text"),
    )
    .await;
    let secret = text.get("multi", &none()).await.unwrap();
    assert_eq!(
        secret.into_iter().collect::<Vec<_>>(),
        vec![(
            "multi".to_owned(),
            r#"{"first":"1","second":"2","third":"3"}"#.to_owned()
        )]
    );
    assert!(text.features().is_empty());
    let all = text.bulk_get(&none()).await.unwrap();
    assert_eq!(all.len(), 1);
    assert!(all["multi"]["multi"].contains("\"third\":\"3\""));
}

#[tokio::test]
async fn versions_by_version_id() {
    let Some(bao) = OpenBao::shared().await else {
        return;
    };
    let p = prefix("versions");
    assert_eq!(
        bao.kv2_put("secret", &format!("{p}/rotated"), json!({"k": "one"}))
            .await,
        1
    );
    assert_eq!(
        bao.kv2_put("secret", &format!("{p}/rotated"), json!({"k": "two"}))
            .await,
        2
    );
    bao.kv2_put("secret", &format!("{p}/other"), json!({"o": "x"}))
        .await;
    bao.kv2_put("secret", &format!("{p}/other"), json!({"o": "y"}))
        .await;
    bao.kv2_put("secret", &format!("{p}/young"), json!({"y": "1"}))
        .await;
    let s = store(meta(&bao.addr()).with("vaultKVPrefix", &p)).await;
    assert_eq!(s.get("rotated", &none()).await.unwrap()["k"], "two");
    assert_eq!(s.get("rotated", &version("0")).await.unwrap()["k"], "two");
    assert_eq!(s.get("rotated", &version("1")).await.unwrap()["k"], "one");
    assert!(matches!(
        s.get("rotated", &version("7")).await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        s.get("rotated", &version("not-a-number")).await,
        Err(Error::InvalidRequest(_))
    ));
    // Bulk at a version skips the secrets that lack it, as Dapr does.
    let all = s.bulk_get(&version("2")).await.unwrap();
    assert_eq!(all.keys().collect::<Vec<_>>(), ["other", "rotated"]);
    assert_eq!(all["other"]["o"], "y");
    let all = s.bulk_get(&none()).await.unwrap();
    assert_eq!(all.len(), 3);
}

#[tokio::test]
async fn prefixes_folders_and_engines() {
    let Some(bao) = OpenBao::shared().await else {
        return;
    };
    let p = prefix("folders");
    bao.mount_kv(&format!("{p}-engine"), 2).await;
    let engine = format!("{p}-engine");
    bao.kv2_put(&engine, "dapr/top", json!({"t": "1"})).await;
    bao.kv2_put(&engine, "dapr/team/db", json!({"user": "u"}))
        .await;
    bao.kv2_put(&engine, "dapr/team/deep/x", json!({"x": "2"}))
        .await;
    bao.kv2_put(&engine, "elsewhere/y", json!({"y": "3"})).await;

    let s = store(meta(&bao.addr()).with("enginePath", &engine)).await;
    let all = s.bulk_get(&none()).await.unwrap();
    assert_eq!(
        all.keys().collect::<Vec<_>>(),
        ["team/db", "team/deep/x", "top"]
    );
    assert_eq!(s.get("team/db", &none()).await.unwrap()["user"], "u");
    assert!(matches!(
        s.get("elsewhere/y", &none()).await,
        Err(Error::NotFound(_))
    ));

    let unprefixed = store(
        meta(&bao.addr())
            .with("enginePath", &engine)
            .with("vaultKVPrefix", "ignored")
            .with("vaultKVUsePrefix", "false"),
    )
    .await;
    assert_eq!(
        unprefixed.get("elsewhere/y", &none()).await.unwrap()["y"],
        "3"
    );
    assert_eq!(unprefixed.bulk_get(&none()).await.unwrap().len(), 4);

    // A prefix with nothing under it lists nothing (Dapr answers an error here).
    let empty = store(meta(&bao.addr()).with("vaultKVPrefix", prefix("empty"))).await;
    assert!(empty.bulk_get(&none()).await.unwrap().is_empty());
}

#[tokio::test]
async fn namespaces() {
    let Some(bao) = OpenBao::shared().await else {
        return;
    };
    let ns = prefix("ns");
    let (status, answer) = bao.api("POST", &format!("sys/namespaces/{ns}"), None).await;
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = bao
        .api(
            "POST",
            &format!("{ns}/sys/mounts/secret"),
            Some(json!({"type": "kv", "options": {"version": "2"}})),
        )
        .await;
    assert_eq!(status, 204, "{answer}");
    bao.kv2_put(&format!("{ns}/secret"), "dapr/inside", json!({"in": "ns"}))
        .await;
    let s = store(meta(&bao.addr()).with("vaultNamespace", &ns)).await;
    assert_eq!(s.get("inside", &none()).await.unwrap()["in"], "ns");
    let outside = store(meta(&bao.addr())).await;
    assert!(matches!(
        outside.get("inside", &none()).await,
        Err(Error::NotFound(_))
    ));
}

#[tokio::test]
async fn wrong_token_is_a_backend_error_not_a_miss() {
    let Some(bao) = OpenBao::shared().await else {
        return;
    };
    let s = store(
        Metadata::new("vault", "app")
            .with("vaultAddr", bao.addr())
            .with("vaultToken", "not-a-token"),
    )
    .await;
    match s.get("anything", &none()).await {
        Err(Error::Backend(e)) => {
            let msg = e.to_string();
            assert!(msg.contains("403"), "{msg}");
            assert!(msg.contains("permission denied"), "{msg}");
            assert!(!msg.contains("not-a-token"), "{msg}");
        }
        other => panic!("expected a backend error, got {other:?}"),
    }
}

#[tokio::test]
async fn token_file_is_read_again_when_it_changes() {
    let Some(bao) = OpenBao::shared().await else {
        return;
    };
    let p = prefix("token");
    bao.kv2_put("secret", &format!("{p}/s"), json!({"v": "ok"}))
        .await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    let first = bao.create_token().await;
    std::fs::write(&file, format!("{first}\n")).unwrap();
    let s = store(
        Metadata::new("vault", "app")
            .with("vaultAddr", bao.addr())
            .with("vaultTokenMountPath", file.to_string_lossy())
            .with("vaultKVPrefix", &p),
    )
    .await;
    assert_eq!(s.get("s", &none()).await.unwrap()["v"], "ok");

    // Rotation: the file gets a new token and the old one is revoked.
    let second = bao.create_token().await;
    std::fs::write(&file, &second).unwrap();
    bao.revoke_token(&first).await;
    assert_eq!(s.get("s", &none()).await.unwrap()["v"], "ok");
    assert_eq!(s.bulk_get(&none()).await.unwrap().len(), 1);

    // A file changed while its token still works is picked up in the background, so a later
    // revocation of the old one costs nothing.
    let third = bao.create_token().await;
    std::fs::write(&file, &third).unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    s.get("s", &none()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    bao.revoke_token(&second).await;
    assert_eq!(s.get("s", &none()).await.unwrap()["v"], "ok");

    // A revoked token with nothing new in the file stays an error.
    bao.revoke_token(&third).await;
    assert!(matches!(s.get("s", &none()).await, Err(Error::Backend(_))));
}

#[tokio::test]
async fn vault_down_then_back() {
    let Some(bao) = OpenBao::shared().await else {
        return;
    };
    let p = prefix("down");
    bao.kv2_put("secret", &format!("{p}/s"), json!({"v": "ok"}))
        .await;
    let target = format!("127.0.0.1:{}", bao.port).parse().unwrap();
    let port = quiet_port();
    // Down at start-up: the store builds, calls fail as backend errors.
    let s =
        Arc::new(store(meta(&format!("http://127.0.0.1:{port}")).with("vaultKVPrefix", &p)).await);
    assert!(matches!(s.get("s", &none()).await, Err(Error::Backend(_))));
    assert!(matches!(s.bulk_get(&none()).await, Err(Error::Backend(_))));

    let proxy = TcpProxy::start(port, target).await.unwrap();
    assert_eq!(s.get("s", &none()).await.unwrap()["v"], "ok");

    // Goes away: pooled connections are cut too.
    proxy.stop();
    let err = s.get("s", &none()).await.unwrap_err();
    assert!(matches!(err, Error::Backend(_)), "{err:?}");
    assert!(err.to_string().contains("unreachable"), "{err}");

    // Comes back on the same address.
    let proxy = restart(port, target).await;
    assert_eq!(s.get("s", &none()).await.unwrap()["v"], "ok");
    assert_eq!(s.bulk_get(&none()).await.unwrap().len(), 1);
    proxy.stop();
}

/// Starts the proxy again on `port` (the old listener may take a moment to close).
async fn restart(port: u16, target: std::net::SocketAddr) -> TcpProxy {
    for _ in 0..50 {
        if let Ok(p) = TcpProxy::start(port, target).await {
            return p;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("cannot listen on {port} again");
}

#[tokio::test]
async fn tls_settings() {
    let Some(bao) = OpenBao::start_with_tls().await else {
        return;
    };
    bao.kv2_put("secret", "dapr/tls", json!({"over": "tls"}))
        .await;
    let tls = bao.tls.as_ref().unwrap();
    let https = |host: &str| format!("https://{host}:{}", tls.port);
    let ok = |m: Metadata| async move {
        let s = VaultSecretStore::build(&m).await.expect("build");
        s.get("tls", &none()).await
    };

    // caCert, caPem, caPath (a folder of CA files), each with the URL's host checked.
    let r = ok(meta(&https("localhost")).with("caCert", tls.ca_file.to_string_lossy())).await;
    assert_eq!(r.unwrap()["over"], "tls");
    let r = ok(meta(&https("127.0.0.1")).with("caPem", &tls.ca_pem)).await;
    assert_eq!(r.unwrap()["over"], "tls");
    let cas = tempfile::tempdir().unwrap();
    std::fs::write(cas.path().join("ca.pem"), &tls.ca_pem).unwrap();
    let r = ok(meta(&https("localhost")).with("caPath", cas.path().to_string_lossy())).await;
    assert_eq!(r.unwrap()["over"], "tls");

    // tlsServerName replaces the name checked.
    let r = ok(meta(&https("127.0.0.1"))
        .with("caPem", &tls.ca_pem)
        .with("tlsServerName", "localhost"))
    .await;
    assert_eq!(r.unwrap()["over"], "tls");
    let r = ok(meta(&https("localhost"))
        .with("caPem", &tls.ca_pem)
        .with("tlsServerName", "vault.example.com"))
    .await;
    assert!(matches!(r, Err(Error::Backend(_))), "{r:?}");

    // Without the CA (system roots) the certificate is refused; skipVerify accepts it.
    let r = ok(meta(&https("localhost"))).await;
    assert!(matches!(r, Err(Error::Backend(_))), "{r:?}");
    let r = ok(meta(&https("localhost")).with("skipVerify", "true")).await;
    assert_eq!(r.unwrap()["over"], "tls");

    // A CA that did not issue the server's certificate.
    let other = OpenBao::start_with_tls().await.unwrap();
    let r = ok(meta(&https("localhost")).with("caPem", &other.tls.as_ref().unwrap().ca_pem)).await;
    assert!(matches!(r, Err(Error::Backend(_))), "{r:?}");
}
