//! mTLS between sidecars with SPIFFE identities.
//!
//! With `--enable-mtls` (or Configuration `spec.mtls.enabled`) every sidecar holds a workload
//! certificate for `spiffe://<trust domain>/ns/<namespace>/<app-id>` (trust domain from
//! `spec.accessControl.trustDomain`, default `public`; namespace from `NAMESPACE`, default
//! `default`), an ECDSA P-256 key it generated itself, signed by an issuer:
//!
//! * `DAPR_TRUST_ANCHORS` + `DAPR_CERT_CHAIN` + `DAPR_CERT_KEY` (PEM, all three): the trust
//!   anchors (root certificates) every peer must chain to; the issuer certificate (first in
//!   `DAPR_CERT_CHAIN`, any further ones are intermediates sent along) and the issuer's
//!   PKCS#8 private key (ECDSA P-256/P-384 or Ed25519). This is the `issuer.crt`,
//!   `issuer.key` and `ca.crt` of Dapr's `dapr-trust-bundle`. Sentry (`--sentry-address`)
//!   is not contacted.
//! * otherwise, the local CA: created once under the Tandem home folder (`$TANDEM_HOME`,
//!   else `~/.tandem`) as `ca/ca.crt` and `ca/ca.key` (mode 0600), shared by every sidecar
//!   of that user, so local sidecars talk mTLS with no set-up.
//!
//! The workload certificate lives `spec.mtls.workloadCertTTL` (default 24 h) and is renewed
//! in the background at half its life; new connections use the new one at once.
//!
//! The internal listener requires a client certificate chaining to the trust anchors and takes
//! the caller's identity from it ([`PeerIdentity`]); the outbound client presents its own and
//! accepts the called sidecar only when its SPIFFE id is `/ns/<namespace>/<app-id>` of the app
//! it means to call (any trust domain, as daprd).

mod ca;
mod spiffe;

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SignatureScheme};

pub use spiffe::SpiffeId;

use ca::Issuer;

/// The default workload certificate lifetime (Sentry's).
pub const DEFAULT_WORKLOAD_TTL: Duration = Duration::from_secs(24 * 3600);

/// Where the issuer comes from.
#[derive(Clone)]
pub enum CertSource {
    /// `DAPR_TRUST_ANCHORS`, `DAPR_CERT_CHAIN`, `DAPR_CERT_KEY` (PEM).
    Pem {
        /// The trust anchors.
        trust_anchors: String,
        /// The issuer certificate, then intermediates.
        cert_chain: String,
        /// The issuer's private key.
        cert_key: String,
    },
    /// The local CA under this home folder.
    LocalCa(PathBuf),
}

impl fmt::Debug for CertSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pem { .. } => f.write_str("Pem"),
            Self::LocalCa(home) => f.debug_tuple("LocalCa").field(home).finish(),
        }
    }
}

/// What [`Security::new`] is built from.
#[derive(Clone, Debug)]
pub struct MtlsOptions {
    /// The issuer.
    pub source: CertSource,
    /// This sidecar's identity.
    pub identity: SpiffeId,
    /// The workload certificate lifetime.
    pub workload_ttl: Duration,
    /// Where renewals are counted, when metrics are on.
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
}

/// The verified identity of the sidecar at the other end of an internal connection, attached
/// to each request it sends.
#[derive(Clone, Debug)]
pub struct PeerIdentity(pub Arc<SpiffeId>);

/// This sidecar's certificates and TLS settings.
pub struct Security {
    identity: SpiffeId,
    provider: Arc<CryptoProvider>,
    roots: Arc<RootCertStore>,
    current: Arc<Current>,
    issuer: Issuer,
    ttl: Duration,
    server: Arc<ServerConfig>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

impl fmt::Debug for Security {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Security")
            .field("identity", &self.identity.to_string())
            .finish_non_exhaustive()
    }
}

/// The current workload certificate, swapped on renewal.
#[derive(Debug)]
struct Current {
    key: ArcSwap<CertifiedKey>,
    /// When the current certificate was issued and when it expires.
    validity: ArcSwap<(SystemTime, SystemTime)>,
}

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.key.load_full())
    }
}

impl ResolvesClientCert for Current {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.key.load_full())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl Security {
    /// Loads or creates the issuer, issues this sidecar's certificate and builds the TLS
    /// settings. Renewal starts in the background when called inside a Tokio runtime.
    pub fn new(options: MtlsOptions) -> Result<Arc<Self>, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (issuer, anchors) = match &options.source {
            CertSource::Pem {
                trust_anchors,
                cert_chain,
                cert_key,
            } => Issuer::from_pem(trust_anchors, cert_chain, cert_key)?,
            CertSource::LocalCa(home) => Issuer::local(home)?,
        };
        let mut roots = RootCertStore::empty();
        for anchor in anchors {
            roots
                .add(anchor)
                .map_err(|e| format!("invalid trust anchor: {e}"))?;
        }
        let roots = Arc::new(roots);
        let ttl = options.workload_ttl;
        let first = issuer.issue(&options.identity, ttl)?;
        let current = Arc::new(Current {
            validity: ArcSwap::from_pointee((first.not_before, first.not_after)),
            key: ArcSwap::from_pointee(certified(&provider, first)?),
        });
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| format!("mTLS: {e}"))?;
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("mTLS: {e}"))?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(current.clone());
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let security = Arc::new(Self {
            identity: options.identity,
            provider,
            roots,
            current,
            issuer,
            ttl,
            server: Arc::new(server),
            metrics: options.metrics,
        });
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(renew(Arc::downgrade(&security)));
        }
        Ok(security)
    }

    /// This sidecar's identity.
    pub fn identity(&self) -> &SpiffeId {
        &self.identity
    }

    /// The internal listener's TLS settings (client certificates required).
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server.clone()
    }

    /// TLS settings for calls to the sidecars of `app_id` in `namespace` (ALPN is left to
    /// the connector).
    pub(crate) fn client_config(&self, namespace: &str, app_id: &str) -> ClientConfig {
        let verifier =
            spiffe::PeerVerifier::new(self.roots.clone(), self.provider.clone(), namespace, app_id);
        ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_cert_resolver(self.current.clone())
    }

    /// When the current workload certificate expires.
    pub fn not_after(&self) -> SystemTime {
        self.current.validity.load().1
    }

    /// Issues a new workload certificate and uses it for new connections.
    pub fn renew(&self) -> Result<(), String> {
        let issued = self.issuer.issue(&self.identity, self.ttl)?;
        let validity = (issued.not_before, issued.not_after);
        self.current
            .key
            .store(Arc::new(certified(&self.provider, issued)?));
        self.current.validity.store(Arc::new(validity));
        Ok(())
    }
}

fn certified(provider: &CryptoProvider, issued: ca::Issued) -> Result<CertifiedKey, String> {
    let key = provider
        .key_provider
        .load_private_key(issued.key)
        .map_err(|e| format!("loading the workload key: {e}"))?;
    Ok(CertifiedKey::new(issued.chain, key))
}

/// Renews the workload certificate at half its life (as daprd), retrying a failure after a
/// minute; stops when the sidecar's [`Security`] is gone.
async fn renew(security: Weak<Security>) {
    loop {
        let wait = {
            let Some(s) = security.upgrade() else { return };
            let (from, until) = **s.current.validity.load();
            let half = until.duration_since(from).unwrap_or_default() / 2;
            (from + half)
                .duration_since(SystemTime::now())
                .unwrap_or_default()
        };
        tokio::time::sleep(wait.max(Duration::from_secs(1))).await;
        let Some(s) = security.upgrade() else { return };
        let renewed = s.renew();
        if let Some(m) = &s.metrics {
            m.workload_cert_rotated(renewed.is_ok());
        }
        match renewed {
            Ok(()) => tracing::info!(identity = %s.identity, "workload certificate renewed"),
            Err(e) => {
                tracing::error!(error = %e, "renewing the workload certificate failed");
                drop(s);
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
        }
    }
}
