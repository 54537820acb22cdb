//! SPIFFE identities (`spiffe://<trust domain>/ns/<namespace>/<app-id>`) and the verifier an
//! outbound sidecar connection uses to check that the peer is the app it means to call.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{DigitallySignedStruct, Error, RootCertStore, SignatureScheme};

/// An app's SPIFFE identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpiffeId {
    /// The trust domain (`public` unless the Configuration says otherwise).
    pub trust_domain: String,
    /// The namespace.
    pub namespace: String,
    /// The app-id.
    pub app_id: String,
}

impl SpiffeId {
    /// Parses `spiffe://<td>/ns/<ns>/<app-id>`; anything else is `None`.
    pub fn parse(uri: &str) -> Option<Self> {
        let rest = uri.strip_prefix("spiffe://")?;
        let (trust_domain, path) = rest.split_once('/')?;
        let mut parts = path.split('/');
        let (Some("ns"), Some(namespace), Some(app_id), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        if trust_domain.is_empty() || namespace.is_empty() || app_id.is_empty() {
            return None;
        }
        Some(Self {
            trust_domain: trust_domain.to_owned(),
            namespace: namespace.to_owned(),
            app_id: app_id.to_owned(),
        })
    }

    /// The identity in a certificate (its first `spiffe://` URI subject alternative name).
    pub fn from_certificate(der: &[u8]) -> Option<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let san = cert.subject_alternative_name().ok()??;
        san.value.general_names.iter().find_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) => Self::parse(uri),
            _ => None,
        })
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/{}",
            self.trust_domain, self.namespace, self.app_id
        )
    }
}

/// Verifies a called sidecar: its chain must lead to the trust anchors and its SPIFFE id must
/// be `/ns/<namespace>/<app-id>` of the app being called, in any trust domain (as daprd
/// does: the caller does not know the callee's trust domain).
#[derive(Debug)]
pub(crate) struct PeerVerifier {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    namespace: String,
    app_id: String,
}

impl PeerVerifier {
    pub(crate) fn new(
        roots: Arc<RootCertStore>,
        provider: Arc<CryptoProvider>,
        namespace: &str,
        app_id: &str,
    ) -> Self {
        Self {
            roots,
            provider,
            namespace: namespace.to_owned(),
            app_id: app_id.to_owned(),
        }
    }
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let id = SpiffeId::from_certificate(end_entity).ok_or_else(|| {
            Error::General("the peer's certificate carries no SPIFFE id".to_owned())
        })?;
        if id.namespace != self.namespace || id.app_id != self.app_id {
            return Err(Error::General(format!(
                "the peer's SPIFFE id is {id}, not the expected spiffe://*/ns/{}/{}",
                self.namespace, self.app_id
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::security::ca::Issuer;

    fn home(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "tandem-spiffe-test-{tag}-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn peer_verifier_checks_the_ca_and_the_app_id() {
        let (one, two) = (home("one"), home("two"));
        let (issuer, anchors) = Issuer::local(&one).unwrap();
        let (stranger, _) = Issuer::local(&two).unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(anchors[0].clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = PeerVerifier::new(Arc::new(roots), provider, "default", "b");
        let check = |issuer: &Issuer, id: &str| {
            let cert = issuer
                .issue(&SpiffeId::parse(id).unwrap(), Duration::from_secs(60))
                .unwrap();
            verifier.verify_server_cert(
                &cert.chain[0],
                &cert.chain[1..],
                &ServerName::try_from("localhost").unwrap(),
                &[],
                UnixTime::now(),
            )
        };
        assert!(check(&issuer, "spiffe://public/ns/default/b").is_ok());
        // Any trust domain is accepted for the callee, as daprd.
        assert!(check(&issuer, "spiffe://example.org/ns/default/b").is_ok());
        let wrong_app = check(&issuer, "spiffe://public/ns/default/c").unwrap_err();
        assert!(
            wrong_app.to_string().contains("not the expected"),
            "{wrong_app}"
        );
        assert!(check(&issuer, "spiffe://public/ns/other/b").is_err());
        let wrong_ca = check(&stranger, "spiffe://public/ns/default/b").unwrap_err();
        assert!(wrong_ca.to_string().contains("UnknownIssuer"), "{wrong_ca}");
        let _ = std::fs::remove_dir_all(one);
        let _ = std::fs::remove_dir_all(two);
    }

    #[test]
    fn parse_spiffe_ids() {
        let id = SpiffeId::parse("spiffe://public/ns/default/orders").unwrap();
        assert_eq!(id.app_id, "orders");
        assert_eq!(id.namespace, "default");
        assert_eq!(id.trust_domain, "public");
        assert_eq!(id.to_string(), "spiffe://public/ns/default/orders");
        for bad in [
            "spiffe://public/ns/default",
            "spiffe://public/ns/default/a/b",
            "spiffe:///ns/default/a",
            "spiffe://public/xx/default/a",
            "https://public/ns/default/a",
            "spiffe://public/ns//a",
        ] {
            assert!(SpiffeId::parse(bad).is_none(), "{bad}");
        }
    }
}
