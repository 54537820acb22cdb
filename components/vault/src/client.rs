//! The HTTP side: one pooled hyper client per component (HTTP/1.1, and HTTP/2 when TLS
//! negotiates it), TLS from the CA settings, the token and namespace headers, and the mapping
//! of transport failures to backend errors.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tandem_components::{Error, Result};

use crate::metadata::TlsSettings;
use crate::token::Token;

type HttpClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// Answers larger than this are refused: a secret store answer is a few kilobytes.
const MAX_BODY: usize = 32 << 20;

/// A client of one Vault server.
pub(crate) struct VaultClient {
    client: HttpClient,
    addr: String,
    namespace: Option<HeaderValue>,
    token: Arc<Token>,
}

/// An answer: status and body.
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) body: Bytes,
}

impl VaultClient {
    /// Builds the client. Reading CA files and the system trust store is blocking I/O, so it
    /// runs on the blocking pool; nothing connects yet.
    pub(crate) async fn new(
        addr: String,
        tls: TlsSettings,
        namespace: Option<&str>,
        token: Arc<Token>,
    ) -> Result<Self> {
        let https = addr.starts_with("https://");
        let connector = tokio::task::spawn_blocking(move || connector(https, &tls))
            .await
            .map_err(|e| Error::backend(format!("building the TLS settings failed: {e}")))??;
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        let namespace = namespace
            .map(|ns| {
                HeaderValue::try_from(ns).map_err(|_| {
                    Error::invalid_metadata("vaultNamespace", "not a valid header value")
                })
            })
            .transpose()?;
        Ok(Self {
            client,
            addr,
            namespace,
            token,
        })
    }

    /// Sends `method` to `<vaultAddr>/v1/<path>` (`path` already percent-encoded, with its
    /// query). A `403` after the token file changed is retried once with the new token.
    pub(crate) async fn call(&self, method: &Method, path: &str) -> Result<Answer> {
        self.token.check_soon();
        let used = self.token.current();
        let answer = self.send(method, path, &used).await?;
        if answer.status == StatusCode::FORBIDDEN && self.token.reload(&used).await {
            return self.send(method, path, &self.token.current()).await;
        }
        Ok(answer)
    }

    async fn send(&self, method: &Method, path: &str, token: &HeaderValue) -> Result<Answer> {
        let uri = format!("{}/v1/{path}", self.addr);
        let mut req = Request::builder()
            .method(method.clone())
            .uri(&uri)
            .header("X-Vault-Token", token.clone())
            .header("X-Vault-Request", "true");
        if let Some(ns) = &self.namespace {
            req = req.header("X-Vault-Namespace", ns.clone());
        }
        let req = req
            .body(Empty::new())
            .map_err(|e| Error::InvalidRequest(format!("invalid vault request path: {e}")))?;
        let resp = self.client.request(req).await.map_err(|e| {
            Error::backend(format!("vault at {} unreachable: {}", self.addr, chain(&e)))
        })?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| {
                Error::backend(format!(
                    "reading the answer of vault at {} failed: {e}",
                    self.addr
                ))
            })?
            .to_bytes();
        Ok(Answer { status, body })
    }
}

/// `err` and its sources, joined: hyper's own message ("client error (Connect)") says little.
fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

fn connector(https: bool, tls: &TlsSettings) -> Result<HttpsConnector<HttpConnector>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = HttpsConnectorBuilder::new();
    let builder = if !https {
        // Plain HTTP: the TLS side is never used, so do not read any trust store.
        builder.with_tls_config(client_config(&provider, RootCertStore::empty())?)
    } else if tls.skip_verify {
        tracing::warn!(
            "secretstores.hashicorp.vault: skipVerify is set, the server's certificate is not checked"
        );
        let verifier = Arc::new(AnyCertificate {
            algorithms: provider.signature_verification_algorithms,
        });
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::backend(format!("TLS setup failed: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        builder.with_tls_config(config)
    } else if let Some(roots) = custom_roots(tls)? {
        builder.with_tls_config(client_config(&provider, roots)?)
    } else {
        builder
            .with_provider_and_native_roots(provider)
            .map_err(|e| Error::backend(format!("cannot load the system CA certificates: {e}")))?
    };
    let mut builder = builder.https_or_http();
    if https
        && !tls.skip_verify
        && let Some(name) = &tls.server_name
    {
        let name = ServerName::try_from(name.clone()).map_err(|_| {
            Error::invalid_metadata("tlsServerName", "not a valid DNS name or IP address")
        })?;
        builder = builder.with_server_name_resolver(FixedServerNameResolver::new(name));
    }
    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    tcp.set_connect_timeout(Some(Duration::from_secs(10)));
    tcp.set_keepalive(Some(Duration::from_secs(30)));
    Ok(builder.enable_http1().enable_http2().wrap_connector(tcp))
}

fn client_config(
    provider: &Arc<CryptoProvider>,
    roots: RootCertStore,
) -> Result<rustls::ClientConfig> {
    Ok(
        rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::backend(format!("TLS setup failed: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// The CA certificates of `caPem`, else `caPath`, else `caCert` (Dapr's precedence); `None`
/// when none is set (the system store applies).
fn custom_roots(tls: &TlsSettings) -> Result<Option<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    if let Some(pem) = &tls.ca_pem {
        add_pem(&mut roots, pem.as_bytes(), "caPem")?;
    } else if let Some(dir) = &tls.ca_path {
        add_folder(&mut roots, dir)?;
        if roots.is_empty() {
            return Err(Error::invalid_metadata(
                "caPath",
                "the folder holds no certificate",
            ));
        }
    } else if let Some(file) = &tls.ca_cert {
        let pem = std::fs::read(file).map_err(|e| {
            Error::invalid_metadata("caCert", format!("cannot read the CA file: {e}"))
        })?;
        add_pem(&mut roots, &pem, "caCert")?;
    } else {
        return Ok(None);
    }
    Ok(Some(roots))
}

/// Every file under `dir`, recursively, must be PEM certificates (as Dapr reads `caPath`).
fn add_folder(roots: &mut RootCertStore, dir: &Path) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        Error::invalid_metadata("caPath", format!("cannot read the CA folder: {e}"))
    })?;
    let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        if path.is_dir() {
            add_folder(roots, &path)?;
        } else {
            let pem = std::fs::read(&path).map_err(|e| {
                Error::invalid_metadata("caPath", format!("cannot read {}: {e}", path.display()))
            })?;
            add_pem(roots, &pem, "caPath")?;
        }
    }
    Ok(())
}

fn add_pem(roots: &mut RootCertStore, pem: &[u8], field: &str) -> Result<()> {
    let mut added = 0;
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| Error::invalid_metadata(field, format!("invalid PEM: {e}")))?;
        roots.add(cert).map_err(|e| {
            Error::invalid_metadata(field, format!("not a usable CA certificate: {e}"))
        })?;
        added += 1;
    }
    if added == 0 {
        return Err(Error::invalid_metadata(field, "no PEM certificate found"));
    }
    Ok(())
}

/// `skipVerify`: accepts any certificate chain and name; still checks handshake signatures.
#[derive(Debug)]
struct AnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_ca_settings_name_their_field() {
        let tls = TlsSettings {
            ca_pem: Some("not a certificate".into()),
            ..Default::default()
        };
        let err = connector(true, &tls).err().unwrap();
        assert!(err.to_string().contains("caPem"), "{err}");
        let tls = TlsSettings {
            ca_cert: Some("/nonexistent/ca.pem".into()),
            ..Default::default()
        };
        let err = connector(true, &tls).err().unwrap();
        assert!(err.to_string().contains("caCert"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let tls = TlsSettings {
            ca_path: Some(dir.path().into()),
            ..Default::default()
        };
        let err = connector(true, &tls).err().unwrap();
        assert!(err.to_string().contains("caPath"), "{err}");
        let tls = TlsSettings {
            skip_verify: false,
            server_name: Some("bad name!".into()),
            ca_pem: None,
            ..Default::default()
        };
        let err = connector(true, &tls).err();
        // The system store may be missing on a bare machine; when it loads, the name is checked.
        if let Some(err) = err {
            assert!(
                err.to_string().contains("tlsServerName") || err.to_string().contains("system"),
                "{err}"
            );
        }
    }

    #[test]
    fn error_chains_are_joined() {
        let inner = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let outer = std::io::Error::other(inner);
        assert_eq!(chain(&outer), "refused");
    }
}
