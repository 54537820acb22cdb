//! `tandem injector` end to end: the real binary serves the webhook over TLS with a
//! certificate made here, answers AdmissionReviews as the API server sends them, and picks up
//! a replaced certificate without restarting. The args it injects are accepted by
//! `tandem sidecar`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const IMAGE: &str = "ghcr.io/tandem-runtime/tandem:test";

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tandem-injector/tests/fixtures")
        .join(name);
    std::fs::read(path).unwrap()
}

struct Ca {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    der: CertificateDer<'static>,
}

fn ca() -> Ca {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "tandem test CA");
    let cert = params.self_signed(&key).unwrap();
    Ca {
        der: cert.der().clone(),
        issuer: rcgen::Issuer::new(params, key),
    }
}

/// Writes a fresh serving certificate for `localhost` (signed by `ca`) to `dir`, replacing
/// any previous one by rename, as a Secret volume update does. Returns its DER.
fn write_server_cert(ca: &Ca, dir: &Path) -> Vec<u8> {
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    for (name, body) in [("tls.crt", cert.pem()), ("tls.key", key.serialize_pem())] {
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, body).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    }
    cert.der().to_vec()
}

struct Injector {
    child: tokio::process::Child,
    https: u16,
    healthz: u16,
    log: PathBuf,
}

impl Drop for Injector {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

async fn start(dir: &Path, extra: &[&str]) -> Injector {
    let ports = dir.join("ports.json");
    let log = dir.join("injector.log");
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
        .arg("injector")
        .args([
            "--port",
            "0",
            "--healthz-port",
            "0",
            "--listen-address",
            "127.0.0.1",
        ])
        .arg("--tls-cert")
        .arg(dir.join("tls.crt"))
        .arg("--tls-key")
        .arg(dir.join("tls.key"))
        .args(["--sidecar-image", IMAGE])
        .arg("--ports-file")
        .arg(&ports)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn tandem injector");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(&ports)
            && let Ok(v) = serde_json::from_str::<Value>(&text)
        {
            return Injector {
                child,
                https: v["https"].as_u64().unwrap() as u16,
                healthz: v["healthz"].as_u64().unwrap() as u16,
                log,
            };
        }
        assert!(
            Instant::now() < deadline,
            "injector did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One HTTPS request over a new connection, trusting only `ca`. Returns the status, the body
/// and the certificate the server presented.
async fn request(
    port: u16,
    ca: &CertificateDer<'static>,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> (u16, Vec<u8>, Vec<u8>) {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake with the injector");
    let presented = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost");
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let resp = sender
        .send_request(req.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, bytes.to_vec(), presented)
}

#[tokio::test]
async fn webhook_over_tls_with_certificate_reload() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca();
    let first = write_server_cert(&ca, dir.path());
    let inj = start(dir.path(), &[]).await;

    // A real-shaped AdmissionReview: allowed, same uid, base64 JSON Patch.
    let review = fixture("replicaset-pod.json");
    let input: Value = serde_json::from_slice(&review).unwrap();
    let (status, body, presented) = request(
        inj.https,
        &ca.der,
        "POST",
        "/mutate",
        Some("application/json"),
        review.clone(),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(presented, first);
    let out: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(out["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(out["kind"], "AdmissionReview");
    assert_eq!(out["response"]["uid"], input["request"]["uid"]);
    assert_eq!(out["response"]["allowed"], true);
    assert_eq!(out["response"]["patchType"], "JSONPatch");
    let patch = base64::engine::general_purpose::STANDARD
        .decode(out["response"]["patch"].as_str().unwrap())
        .unwrap();
    let ops: Vec<Value> = serde_json::from_slice(&patch).unwrap();
    let daprd = ops
        .iter()
        .find(|o| o["path"] == "/spec/containers/-")
        .expect("container op");
    assert_eq!(daprd["value"]["name"], "daprd");
    assert_eq!(daprd["value"]["image"], IMAGE);

    // The injected command line is one `tandem sidecar` accepts.
    let mut argv: Vec<String> = daprd["value"]["command"]
        .as_array()
        .unwrap()
        .iter()
        .skip(1)
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    argv.extend(
        daprd["value"]["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_owned()),
    );
    argv.push("--version".to_owned());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(&argv)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tandem {argv:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Wrong content type, empty and malformed bodies: clear 4xx answers, and the server lives on.
    let (status, _, _) = request(
        inj.https,
        &ca.der,
        "POST",
        "/mutate",
        Some("text/plain"),
        review.clone(),
    )
    .await;
    assert_eq!(status, 415);
    for bad in [&b""[..], b"{\"kind\":", b"null", b"{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"AdmissionReview\",\"request\":{\"uid\":\"u\",\"kind\":{\"kind\":\"Pod\"},\"object\":[]}}"] {
        let (status, body, _) = request(
            inj.https,
            &ca.der,
            "POST",
            "/mutate",
            Some("application/json"),
            bad.to_vec(),
        )
        .await;
        assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
        assert!(!body.is_empty());
    }

    // Health on the TLS port and on the plain port.
    let (status, _, _) = request(inj.https, &ca.der, "GET", "/healthz", None, Vec::new()).await;
    assert_eq!(status, 200);
    let mut plain = TcpStream::connect(("127.0.0.1", inj.healthz))
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    plain.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // Replace the certificate on disk: the next connection gets the new one, no restart.
    let second = write_server_cert(&ca, dir.path());
    assert_ne!(first, second);
    let (status, _, presented) = request(
        inj.https,
        &ca.der,
        "POST",
        "/mutate",
        Some("application/json"),
        review.clone(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        presented, second,
        "the replaced certificate was not picked up"
    );

    // A broken replacement keeps the last good certificate in service.
    std::fs::write(dir.path().join("tls.crt"), "not a certificate").unwrap();
    let (status, _, presented) =
        request(inj.https, &ca.der, "GET", "/healthz", None, Vec::new()).await;
    assert_eq!(status, 200);
    assert_eq!(presented, second);
    let log = std::fs::read_to_string(&inj.log).unwrap();
    assert!(log.contains("reloaded"), "{log}");
}

#[tokio::test]
async fn refuses_to_start_without_a_usable_certificate() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tls.crt"), "nope").unwrap();
    std::fs::write(dir.path().join("tls.key"), "nope").unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
        .arg("injector")
        .args([
            "--port",
            "0",
            "--healthz-port",
            "0",
            "--listen-address",
            "127.0.0.1",
        ])
        .arg("--tls-cert")
        .arg(dir.path().join("tls.crt"))
        .arg("--tls-key")
        .arg(dir.path().join("tls.key"))
        .args(["--sidecar-image", IMAGE])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("serving certificate"), "{err}");
}

#[test]
fn every_annotation_becomes_flags_tandem_sidecar_accepts() {
    let annotations: serde_json::Map<String, Value> = [
        ("dapr.io/enabled", "true"),
        ("dapr.io/app-id", "orders"),
        ("dapr.io/app-port", "8080"),
        ("dapr.io/app-protocol", "grpcs"),
        ("dapr.io/app-ssl", "false"),
        ("dapr.io/app-channel-address", "127.0.0.1"),
        ("dapr.io/config", "appconfig"),
        ("dapr.io/log-level", "warn"),
        ("dapr.io/log-as-json", "yes"),
        ("dapr.io/enable-profiling", "on"),
        ("dapr.io/enable-api-logging", "false"),
        ("dapr.io/api-token-secret", "tok"),
        ("dapr.io/app-token-secret", "apptok"),
        ("dapr.io/app-max-concurrency", "-1"),
        ("dapr.io/enable-metrics", "true"),
        ("dapr.io/metrics-port", "9191"),
        ("dapr.io/grpc-port", "50011"),
        ("dapr.io/internal-grpc-port", "50012"),
        ("dapr.io/sidecar-listen-addresses", "0.0.0.0"),
        ("dapr.io/env", "A=1"),
        ("dapr.io/env-from-secret", "B=sec:key"),
        ("dapr.io/sidecar-cpu-request", "50m"),
        ("dapr.io/sidecar-memory-limit", "1Gi"),
        ("dapr.io/sidecar-liveness-probe-period-seconds", "20"),
        ("dapr.io/sidecar-readiness-probe-threshold", "3"),
        ("dapr.io/sidecar-image", "example/tandem:dev"),
        ("dapr.io/sidecar-seccomp-profile-type", "RuntimeDefault"),
        ("dapr.io/max-body-size", "16Mi"),
        ("dapr.io/read-buffer-size", "8Ki"),
        ("dapr.io/http-max-request-size", "16"),
        ("dapr.io/http-read-buffer-size", "8"),
        ("dapr.io/graceful-shutdown-seconds", "0"),
        ("dapr.io/block-shutdown-duration", "10s"),
        ("dapr.io/unix-domain-socket-path", "/tmp/dapr"),
        ("dapr.io/volume-mounts", "data:/data"),
        ("dapr.io/volume-mounts-rw", "scratch:/scratch"),
        ("dapr.io/disable-builtin-k8s-secret-store", "true"),
        ("dapr.io/enable-app-health-check", "true"),
        ("dapr.io/app-health-check-path", "/ready"),
        ("dapr.io/app-health-probe-interval", "2"),
        ("dapr.io/app-health-probe-timeout", "300"),
        ("dapr.io/app-health-threshold", "4"),
        ("dapr.io/app-binding-options-timeout", "5s"),
        ("dapr.io/placement-host-address", "\"placement.dapr:50005\""),
        ("dapr.io/actors-disseminate-timeout", "2s"),
        ("dapr.io/scheduler-host-address", ""),
        ("dapr.io/sentry-request-jwt-audiences", "aud1,aud2"),
        ("dapr.io/disable-init-endpoints", "healthz"),
        ("dapr.io/enable-native-sidecar", "false"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), Value::String(v.to_owned())))
    .collect();
    let pod = serde_json::json!({
        "metadata": {"name": "orders-0", "annotations": annotations},
        "spec": {
            "volumes": [{"name": "data", "emptyDir": {}}, {"name": "scratch", "emptyDir": {}}],
            "containers": [{"name": "app", "image": "example/app"}],
        },
    });
    let ann = tandem_injector::annotations::of_pod(&pod);
    let spec = tandem_injector::annotations::parse(&ann, &pod).expect("all values valid");
    let args = tandem_injector::patch::args(&spec);
    for flag in [
        "--app-id",
        "--app-port",
        "--app-protocol",
        "--app-channel-address",
        "--config",
        "--log-level",
        "--log-as-json",
        "--enable-profiling",
        "--enable-api-logging=false",
        "--app-max-concurrency",
        "--enable-metrics=true",
        "--metrics-port",
        "--dapr-grpc-port",
        "--dapr-internal-grpc-port",
        "--dapr-listen-addresses",
        "--max-body-size",
        "--read-buffer-size",
        "--dapr-http-max-request-size",
        "--dapr-http-read-buffer-size",
        "--dapr-graceful-shutdown-seconds",
        "--dapr-block-shutdown-duration",
        "--unix-domain-socket",
        "--disable-builtin-k8s-secret-store",
        "--enable-app-health-check",
        "--app-health-check-path",
        "--app-health-probe-interval",
        "--app-health-probe-timeout",
        "--app-health-threshold",
        "--app-binding-options-timeout",
        "--placement-host-address",
        "--actors-disseminate-timeout",
        "--scheduler-host-address",
        "--sentry-request-jwt-audiences",
        "--disable-init-endpoints",
    ] {
        assert!(
            args.iter().any(|a| a == flag),
            "{flag} missing from {args:?}"
        );
    }
    let pos = args
        .iter()
        .position(|a| a == "--placement-host-address")
        .unwrap();
    assert_eq!(args[pos + 1], "placement.dapr:50005", "quotes are trimmed");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
        .arg("sidecar")
        .args(&args)
        .arg("--version")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tandem sidecar {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
