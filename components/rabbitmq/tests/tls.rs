//! `amqps` with `caCert`, `clientCert` and `clientKey`: the component talks TLS to a test
//! terminator (a certificate authority made up by the test, client certificates required)
//! that forwards to the RabbitMQ at 127.0.0.1:5672. Skipped when RabbitMQ is unreachable,
//! unless `TANDEM_REQUIRE_SERVICES=1`. (SASL EXTERNAL needs the broker itself to see the
//! client certificate, which this set-up cannot show.)

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Once};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use tandem_components::Metadata;
use tandem_components::conformance::pubsub::{collector, publish_req, recv_n, subscribe};
use tandem_components::conformance::unique_key;
use tandem_components::pubsub::{Delivery, PubSub};
use tandem_rabbitmq::RabbitPubSub;
use tandem_testkit::services;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

const ADDR: &str = "127.0.0.1:5672";

/// A certificate authority, a server certificate for 127.0.0.1 and a client certificate, PEM.
struct Pki {
    ca: String,
    server_cert: CertificateDer<'static>,
    server_key: Vec<u8>,
    client_cert: String,
    client_key: String,
}

fn pki() -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "tandem test ca");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&server_key, &ca)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let mut client_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    client_params
        .distinguished_name
        .push(DnType::CommonName, "guest");
    let client = client_params.signed_by(&client_key, &ca).unwrap();
    Pki {
        ca: ca.pem(),
        server_cert: server.der().clone(),
        server_key: server_key.serialize_der(),
        client_cert: client.pem(),
        client_key: client_key.serialize_pem(),
    }
}

/// Terminates TLS (client certificate required) on a free port and forwards to RabbitMQ.
/// Returns the port and a count of handshakes that presented a client certificate.
async fn terminator(pki: &Pki) -> (u16, Arc<AtomicUsize>) {
    static PROVIDER: Once = Once::new();
    PROVIDER.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(pki.ca.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
        .build()
        .unwrap();
    let config = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![pki.server_cert.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.server_key.clone())),
        )
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let with_client_cert = Arc::new(AtomicUsize::new(0));
    let seen = with_client_cert.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                if tls.get_ref().1.peer_certificates().is_some() {
                    seen.fetch_add(1, Ordering::SeqCst);
                }
                if let Ok(mut broker) = TcpStream::connect(ADDR).await {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut broker).await;
                }
            });
        }
    });
    (port, with_client_cert)
}

fn metadata(port: u16, pki: &Pki, ca: bool) -> Metadata {
    let mut md = Metadata::new("rabbitmq-tls", "tls-test")
        .with(
            "connectionString",
            format!("amqps://guest:guest@127.0.0.1:{port}"),
        )
        .with("clientCert", pki.client_cert.as_str())
        .with("clientKey", pki.client_key.as_str())
        .with("reconnectWaitSeconds", "200ms");
    if ca {
        md.insert("caCert", pki.ca.as_str());
    }
    md
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_with_a_private_ca_and_a_client_certificate() {
    if !services::require("RabbitMQ", ADDR) {
        return;
    }
    let pki = pki();
    let (port, with_client_cert) = terminator(&pki).await;
    let ps = RabbitPubSub::build(&metadata(port, &pki, true))
        .await
        .unwrap();
    let topic = unique_key("ps-tls");
    let (h, mut rx) = collector(Delivery::Ack);
    let sub = subscribe(&ps, &topic, "tls", 1, h).await;
    ps.publish(publish_req(&topic, "over tls")).await.unwrap();
    assert_eq!(recv_n(&mut rx, 1).await[0].data.as_ref(), b"over tls");
    assert!(
        with_client_cert.load(Ordering::SeqCst) >= 1,
        "the client certificate was presented"
    );
    sub.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_refuses_a_server_it_cannot_verify() {
    if !services::require("RabbitMQ", ADDR) {
        return;
    }
    let pki = pki();
    let (port, _) = terminator(&pki).await;
    // Without caCert the made-up authority is not trusted.
    let ps = RabbitPubSub::build(&metadata(port, &pki, false))
        .await
        .unwrap();
    let err = ps
        .publish(publish_req(&unique_key("ps-tls-untrusted"), "no"))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("unreachable") && text.contains("UnknownIssuer"),
        "{text}"
    );
}
