//! End-to-end: API security through the real binary.
//!
//! Configuration `spec.api` allow/deny lists on the HTTP and gRPC APIs; mTLS between sidecars
//! (local CA, SPIFFE identities, access control on the certificate's identity, refusal of
//! other CAs and of plaintext callers, the mTLS metrics).

mod common;

use std::path::Path;
use std::sync::Arc;

use common::{IN_MEMORY, assert_error, assert_silent_callee_fails_the_call, client, start, tandem};
use dapr::dapr::proto::runtime::v1 as pb;
use dapr::dapr::proto::runtime::v1::dapr_client::DaprClient;
use serde_json::Value;
use tandem_testkit::mock_app::MockApp;
use tandem_testkit::{Sidecar, SidecarBuilder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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

/// A sidecar for `app_id` with mTLS on, its local CA under `home`, registered in `db`.
fn mtls(app_id: &str, home: &Path, db: &Path) -> SidecarBuilder {
    tandem()
        .app_id(app_id)
        .name_resolution_db(db)
        .env("TANDEM_HOME", &home.display().to_string())
        .arg("--enable-mtls")
}

/// Apps `a` and `b` behind sidecars that talk mTLS, from one local CA under `dir/home`, and
/// find each other in `dir/nr.db`.
async fn mtls_pair(dir: &Path) -> ((MockApp, MockApp), Sidecar, Sidecar) {
    let (home, db) = (dir.join("home"), dir.join("nr.db"));
    let (app_a, app_b) = (MockApp::start("a").await, MockApp::start("b").await);
    let a = start(mtls("a", &home, &db).app_port(app_a.port())).await;
    let b = start(mtls("b", &home, &db).app_port(app_b.port())).await;
    ((app_a, app_b), a, b)
}

async fn echo(resp: reqwest::Response) -> Value {
    let status = resp.status();
    let text = resp.text().await.unwrap();
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).unwrap()
}

#[tokio::test]
async fn two_sidecars_invoke_each_other_over_mtls_from_the_local_ca() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let db = dir.path().join("nr.db");
    let (_apps, a, b) = mtls_pair(dir.path()).await;
    // One CA for both, created once, its key private to the user.
    assert!(home.join("ca/ca.crt").is_file());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(home.join("ca/ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let c = client();
    for _ in 0..3 {
        let v = echo(
            c.post(a.url("/v1.0/invoke/b/method/hello"))
                .body("from a")
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(v["app"], "b");
        assert_eq!(v["body"], "from a");
        assert_eq!(v["headers"]["dapr-caller-app-id"], "a");
    }
    let v = echo(
        c.get(b.url("/v1.0/invoke/a/method/back"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(v["app"], "a");
    assert_eq!(v["headers"]["dapr-caller-app-id"], "b");
    // The same CA given in the environment (issuer = the root): same trust, no local CA.
    let ca_cert = std::fs::read_to_string(home.join("ca/ca.crt")).unwrap();
    let ca_key = std::fs::read_to_string(home.join("ca/ca.key")).unwrap();
    let app_c = MockApp::start("c").await;
    let other_home = dir.path().join("unused");
    let c_sidecar = start(
        mtls("c", &other_home, &db)
            .app_port(app_c.port())
            .env("DAPR_TRUST_ANCHORS", &ca_cert)
            .env("DAPR_CERT_CHAIN", &ca_cert)
            .env("DAPR_CERT_KEY", &ca_key),
    )
    .await;
    assert!(
        !other_home.join("ca").exists(),
        "no local CA when PEM is given"
    );
    let v = echo(
        c.get(a.url("/v1.0/invoke/c/method/pem"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(v["app"], "c");
    let v = echo(
        c.get(c_sidecar.url("/v1.0/invoke/b/method/pem"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(v["headers"]["dapr-caller-app-id"], "c");
}

#[tokio::test]
async fn mtls_set_up_and_certificate_renewals_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    // A workload certificate this short-lived is renewed about every second.
    std::fs::write(
        &config,
        "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: short\nspec:\n  mtls:\n    enabled: true\n    workloadCertTTL: 2s\n",
    )
    .unwrap();
    let port = tandem_testkit::proxy::free_port();
    let _m = start(common::with_metrics(
        mtls("m", &dir.path().join("home"), &dir.path().join("nr.db"))
            .arg("--config")
            .arg(config.display().to_string()),
        port,
    ))
    .await;
    let value = common::counter_value;
    let text = common::scrape_until(port, "fewer than two renewals counted", |text| {
        value(
            text,
            "dapr_runtime_mtls_workload_cert_rotated_total{app_id=\"m\"}",
        )
        .is_some_and(|n| n >= 2)
    })
    .await;
    assert_eq!(
        value(&text, "dapr_runtime_mtls_init_total{app_id=\"m\"}"),
        Some(1),
        "{text}"
    );
    assert!(
        value(
            &text,
            "dapr_runtime_mtls_workload_cert_rotated_total{app_id=\"m\"}"
        )
        .is_some_and(|n| n >= 2),
        "{text}"
    );
    assert!(!text.contains("dapr_runtime_mtls_workload_cert_rotated_fail_total{"));
    assert!(!text.contains("dapr_runtime_mtls_init_fail_total{"));
    assert!(text.contains("# TYPE dapr_runtime_mtls_init_fail_total counter"));
}

#[tokio::test]
async fn other_ca_and_plaintext_peers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("nr.db");
    let app_b = MockApp::start("b").await;
    let b = start(mtls("b", &dir.path().join("home"), &db).app_port(app_b.port())).await;
    // Another CA (another home): its certificate does not verify, either way round.
    let stranger = start(mtls("stranger", &dir.path().join("other"), &db)).await;
    let c = client();
    let resp = c
        .get(stranger.url("/v1.0/invoke/b/method/x"))
        .send()
        .await
        .unwrap();
    assert_error(resp, 500, "ERR_DIRECT_INVOKE", "identity did not verify").await;
    // A sidecar without mTLS gets a clear answer from the mTLS sidecar.
    let plain = start(tandem().app_id("plain").name_resolution_db(&db)).await;
    let resp = c
        .get(plain.url("/v1.0/invoke/b/method/x"))
        .send()
        .await
        .unwrap();
    assert_error(resp, 500, "ERR_DIRECT_INVOKE", "identity did not verify").await;
    // And an mTLS sidecar does not talk to a plaintext one.
    let resp = c
        .get(b.url("/v1.0/invoke/plain/method/x"))
        .send()
        .await
        .unwrap();
    assert_error(resp, 500, "ERR_DIRECT_INVOKE", "identity did not verify").await;
    assert!(
        app_b.invocations().is_empty(),
        "no refused call reached the app: {:?}",
        app_b.invocations()
    );
}

/// A client certificate for `app_id` signed by the local CA under `home`.
fn workload_cert(home: &Path, app_id: &str) -> (Vec<u8>, Vec<u8>) {
    let ca_cert = std::fs::read_to_string(home.join("ca/ca.crt")).unwrap();
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(home.join("ca/ca.key")).unwrap())
            .unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_cert, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        format!("spiffe://public/ns/default/{app_id}")
            .try_into()
            .unwrap(),
    )];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
    ];
    let cert = params.signed_by(&key, &issuer).unwrap();
    (cert.der().to_vec(), key.serialize_der())
}

/// Accepts any server certificate: this client tests the server's checks, not its own.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Sends one raw HTTP/1.1 request over mTLS, presenting a certificate for `app_id`, claiming
/// to be app `a` in the headers. Answers the status line and the body.
async fn forged_call(home: &Path, port: u16, app_id: &str, path: &str) -> (String, String) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let (cert, key) = workload_cert(home, app_id);
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_client_auth_cert(
            vec![cert.into()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.into()),
        )
        .unwrap();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nhost: localhost\r\ndapr-callee-app-id: b\r\ndapr-caller-app-id: a\r\ndapr-caller-namespace: default\r\nconnection: close\r\n\r\n"
    );
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (
        head.lines().next().unwrap_or_default().to_owned(),
        body.to_owned(),
    )
}

#[tokio::test]
async fn access_control_uses_the_certificate_identity_not_the_headers() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let db = dir.path().join("nr.db");
    let config = dir.path().join("acl.yaml");
    std::fs::write(
        &config,
        r#"apiVersion: dapr.io/v1alpha1
kind: Configuration
metadata:
  name: acl
spec:
  accessControl:
    defaultAction: deny
    trustDomain: public
    policies:
    - appId: a
      defaultAction: allow
      trustDomain: public
      namespace: default
"#,
    )
    .unwrap();
    let app_b = MockApp::start("b").await;
    let b = start(
        mtls("b", &home, &db)
            .app_port(app_b.port())
            .arg("--config")
            .arg(config.display().to_string()),
    )
    .await;
    // Through sidecars: a is allowed, evil is denied by its certificate's identity.
    let a = start(mtls("a", &home, &db)).await;
    let evil = start(mtls("evil", &home, &db)).await;
    let c = client();
    echo(
        c.get(a.url("/v1.0/invoke/b/method/x"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let resp = c
        .get(evil.url("/v1.0/invoke/b/method/x"))
        .header("dapr-caller-app-id", "a")
        .send()
        .await
        .unwrap();
    assert_error(
        resp,
        403,
        "ERR_DIRECT_INVOKE",
        "access control policy has denied access to id: spiffe://public/ns/default/evil",
    )
    .await;
    // A raw client with a valid certificate for evil, whose headers claim to be a.
    let (status, body) = forged_call(&home, b.internal_port, "evil", "/x").await;
    assert!(status.contains("403"), "{status} {body}");
    assert!(body.contains("spiffe://public/ns/default/evil"), "{body}");
    // The same request with a certificate for a passes, and the app sees a.
    let (status, body) = forged_call(&home, b.internal_port, "a", "/x").await;
    assert!(status.contains("200"), "{status} {body}");
    assert!(body.contains(r#""dapr-caller-app-id":"a""#), "{body}");
}

#[tokio::test]
async fn under_mtls_a_sidecar_gone_silent_fails_the_call_instead_of_hanging_it() {
    // Under mTLS too the hop is one multiplexed HTTP/2 connection (over TLS), with its PING
    // check: SIGSTOP leaves b's sockets open, and a's call to it fails once b no longer
    // answers PINGs, instead of waiting for the client's own timeout.
    let dir = tempfile::tempdir().unwrap();
    let (_apps, a, b) = mtls_pair(dir.path()).await;
    let c = client();
    let v = echo(
        c.get(a.url("/v1.0/invoke/b/method/before"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(v["app"], "b");
    assert_silent_callee_fails_the_call(&a, &b, "/v1.0/invoke/b/method/frozen").await;
}

#[tokio::test]
async fn under_mtls_a_sidecar_that_speaks_only_http1_is_called_over_http1() {
    // A sidecar that does not agree to HTTP/2 in the TLS handshake (an older Tandem) is
    // called over HTTP/1.1 over TLS, the call's body intact.
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let db = dir.path().join("nr.db");
    let app_a = MockApp::start("a").await;
    let a = start(mtls("a", &home, &db).app_port(app_a.port())).await;

    // The older sidecar of app `old`: TLS with a certificate of the same CA and no ALPN,
    // answering every HTTP/1.1 request with what it read.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let (cert, key) = workload_cert(&home, "old");
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.into()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = tls.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    if buf.len() < end + 4 + length {
                        continue;
                    }
                    let body = buf[end + 4..end + 4 + length].to_vec();
                    buf.drain(..end + 4 + length);
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
                        4 + body.len()
                    );
                    let _ = tls.write_all(answer.as_bytes()).await;
                    let _ = tls.write_all(b"old:").await;
                    let _ = tls.write_all(&body).await;
                }
            });
        }
    });
    let resolver = tandem_sqlite::SqliteNameResolver::build(
        &tandem_components::metadata::Metadata::new("nr", "old")
            .with("connectionString", db.to_str().unwrap()),
    )
    .await
    .unwrap();
    tandem_components::nameresolution::NameResolver::register(
        &resolver,
        &tandem_components::nameresolution::Instance {
            app_id: "old".into(),
            namespace: "default".into(),
            address: format!("127.0.0.1:{port}"),
        },
    )
    .await
    .unwrap();

    let c = client();
    for body in ["first", "second"] {
        let resp = c
            .post(a.url("/v1.0/invoke/old/method/m"))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap(), format!("old:{body}"));
    }
}
