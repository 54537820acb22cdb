//! Where workload certificates come from: an issuer certificate and key (given in the
//! environment, or the local CA that `tandem` creates once under its home folder), from which
//! the sidecar signs its own short-lived certificate.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::spiffe::SpiffeId;

/// How long the local CA lasts (as Sentry's self-generated root).
const LOCAL_CA_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// A workload certificate is valid from this long before it is issued (clock skew).
const BACKDATE: Duration = Duration::from_secs(15 * 60);

/// The signer of workload certificates.
pub(crate) struct Issuer {
    issuer: rcgen::Issuer<'static, KeyPair>,
    /// Certificates sent after the workload certificate (the issuer chain, when the issuer is
    /// not itself a trust anchor).
    chain: Vec<CertificateDer<'static>>,
}

/// A freshly issued workload certificate.
pub(crate) struct Issued {
    pub(crate) chain: Vec<CertificateDer<'static>>,
    pub(crate) key: PrivateKeyDer<'static>,
    pub(crate) not_before: SystemTime,
    pub(crate) not_after: SystemTime,
}

fn certs(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what}: invalid PEM: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{what}: no certificate found"));
    }
    Ok(certs)
}

impl Issuer {
    /// An issuer from PEM: `chain` starts with the issuer certificate, `key` is its PKCS#8
    /// private key (ECDSA P-256/P-384 or Ed25519). Answers the issuer and the trust anchors
    /// parsed from `anchors`.
    pub(crate) fn from_pem(
        anchors: &str,
        chain: &str,
        key: &str,
    ) -> Result<(Self, Vec<CertificateDer<'static>>), String> {
        let anchors = certs(anchors, "DAPR_TRUST_ANCHORS")?;
        let chain = certs(chain, "DAPR_CERT_CHAIN")?;
        let key = KeyPair::from_pem(key).map_err(|e| {
            format!("DAPR_CERT_KEY: {e} (a PKCS#8 ECDSA or Ed25519 key in PEM is expected)")
        })?;
        let issuer = rcgen::Issuer::from_ca_cert_der(&chain[0], key)
            .map_err(|e| format!("DAPR_CERT_CHAIN: cannot use the first certificate: {e}"))?;
        let chain = chain.into_iter().filter(|c| !anchors.contains(c)).collect();
        Ok((Self { issuer, chain }, anchors))
    }

    /// The local CA under `home` (`<home>/ca/ca.crt` and `ca.key`, the key readable by its
    /// owner only), created on first use. Answers the issuer and the CA certificate, the
    /// only trust anchor.
    pub(crate) fn local(home: &Path) -> Result<(Self, Vec<CertificateDer<'static>>), String> {
        let dir = home.join("ca");
        if !dir.join("ca.key").exists() {
            create_local(home, &dir)?;
        }
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name))
                .map_err(|e| format!("local CA {}: {e}", dir.join(name).display()))
        };
        let cert = read("ca.crt")?;
        let key = read("ca.key")?;
        let anchors = certs(&cert, "local CA certificate")?;
        let key = KeyPair::from_pem(&key).map_err(|e| format!("local CA key: {e}"))?;
        let issuer = rcgen::Issuer::from_ca_cert_der(&anchors[0], key)
            .map_err(|e| format!("local CA certificate: {e}"))?;
        Ok((
            Self {
                issuer,
                chain: Vec::new(),
            },
            anchors,
        ))
    }

    /// Signs a new key pair's certificate for `id`, valid for `ttl`.
    pub(crate) fn issue(&self, id: &SpiffeId, ttl: Duration) -> Result<Issued, String> {
        let key = KeyPair::generate().map_err(|e| format!("generating a key: {e}"))?;
        let now = SystemTime::now();
        let not_before = now - BACKDATE;
        let not_after = now + ttl;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        let uri = id
            .to_string()
            .try_into()
            .map_err(|e| format!("invalid SPIFFE id {id}: {e}"))?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| format!("signing the workload certificate: {e}"))?;
        let mut chain = vec![cert.der().clone()];
        chain.extend(self.chain.iter().cloned());
        Ok(Issued {
            chain,
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            not_before,
            not_after,
        })
    }
}

/// A new self-signed CA, written next to `dir` and renamed into place, so two sidecars
/// starting together end up with one CA (the loser of the race uses the winner's).
fn create_local(home: &Path, dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(home).map_err(|e| format!("cannot create {}: {e}", home.display()))?;
    let key = KeyPair::generate().map_err(|e| format!("generating the local CA key: {e}"))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "tandem");
    // A name of its own, so a certificate from another machine's local CA is an unknown
    // issuer rather than a bad signature.
    let tag = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
        ^ u128::from(std::process::id());
    dn.push(DnType::CommonName, format!("tandem local CA {tag:x}"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = SystemTime::now();
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + LOCAL_CA_TTL).into();
    let cert = params
        .self_signed(&key)
        .map_err(|e| format!("creating the local CA: {e}"))?;
    let tmp: PathBuf = home.join(format!(".ca-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(&tmp)?;
        write_private(&tmp.join("ca.key"), key.serialize_pem().as_bytes())?;
        std::fs::write(tmp.join("ca.crt"), cert.pem())?;
        Ok(())
    };
    write().map_err(|e| format!("cannot write the local CA under {}: {e}", tmp.display()))?;
    if let Err(e) = std::fs::rename(&tmp, dir) {
        let _ = std::fs::remove_dir_all(&tmp);
        // Another process created it meanwhile.
        if !dir.join("ca.key").exists() {
            return Err(format!("cannot create the local CA {}: {e}", dir.display()));
        }
    } else {
        tracing::info!(path = %dir.display(), "created the local CA for mTLS between sidecars");
    }
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_ca_is_created_once_with_a_private_key() {
        let home = tempfile_dir();
        let (issuer, anchors) = Issuer::local(&home).unwrap();
        let (_, again) = Issuer::local(&home).unwrap();
        assert_eq!(anchors, again, "the CA is reused");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(home.join("ca/ca.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let id = SpiffeId::parse("spiffe://public/ns/default/a").unwrap();
        let issued = issuer.issue(&id, Duration::from_secs(3600)).unwrap();
        assert_eq!(issued.chain.len(), 1);
        assert_eq!(SpiffeId::from_certificate(&issued.chain[0]), Some(id));
        let _ = std::fs::remove_dir_all(home);
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "tandem-ca-test-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
