//! Settings of `secretstores.hashicorp.vault`, decoded from `spec.metadata` with Dapr's names
//! and defaults.

use std::fmt;
use std::path::PathBuf;

use tandem_components::{Error, Metadata, Result};

/// Dapr's default `vaultAddr`.
pub const DEFAULT_ADDR: &str = "https://127.0.0.1:8200";
/// Dapr's default `vaultKVPrefix`.
pub const DEFAULT_PREFIX: &str = "dapr";
/// Dapr's default `enginePath`.
pub const DEFAULT_ENGINE_PATH: &str = "secret";

/// How a secret's data is returned (`vaultValueType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueType {
    /// `map` (default): every key/value pair of the Vault secret.
    Map,
    /// `text`: one pair, named after the secret, holding the secret's data as JSON text.
    Text,
}

/// The KV secrets engine version mounted at `enginePath` (`vaultKVVersion`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvVersion {
    /// `v1`: unversioned; secrets at `<engine>/<path>`. Beyond Dapr, which speaks v2 only.
    V1,
    /// `v2` (default): versioned; secrets at `<engine>/data/<path>`, listed under
    /// `<engine>/metadata/<path>`.
    V2,
}

/// Where the Vault token comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `vaultToken`: the token itself.
    Inline(String),
    /// `vaultTokenMountPath`: a file holding the token (surrounding whitespace ignored), read
    /// again when it changes.
    File(PathBuf),
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // The token is a credential: never print it.
            TokenSource::Inline(_) => f.write_str("Inline(<redacted>)"),
            TokenSource::File(path) => f.debug_tuple("File").field(path).finish(),
        }
    }
}

/// TLS settings for an `https://` `vaultAddr`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// `caPem`: CA certificates inline, in PEM. Takes precedence over `caPath` and `caCert`.
    pub ca_pem: Option<String>,
    /// `caPath`: a folder whose files are all PEM CA certificates. Takes precedence over
    /// `caCert`.
    pub ca_path: Option<PathBuf>,
    /// `caCert`: a PEM file of CA certificates.
    pub ca_cert: Option<PathBuf>,
    /// `skipVerify`: accept any server certificate (the CA settings and `tlsServerName` are
    /// then ignored, as in Dapr). Only the value `true` turns it on, as in Dapr.
    pub skip_verify: bool,
    /// `tlsServerName`: the name sent in SNI and checked against the certificate, instead of
    /// the host of `vaultAddr`.
    pub server_name: Option<String>,
}

/// The decoded settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VaultMetadata {
    /// `vaultAddr` (default `https://127.0.0.1:8200`): the server's base URL.
    pub addr: String,
    /// `vaultToken` or `vaultTokenMountPath`: exactly one is required.
    pub token: TokenSource,
    /// `vaultKVPrefix` (default `dapr`), or empty when `vaultKVUsePrefix` is `false`: the path
    /// under the engine where the secrets live.
    pub prefix: String,
    /// `enginePath` (default `secret`): where the KV engine is mounted.
    pub engine_path: String,
    /// `vaultValueType` (`map` default, or `text`).
    pub value_type: ValueType,
    /// `vaultKVVersion` (`v2` default, or `v1`).
    pub kv_version: KvVersion,
    /// `vaultNamespace`: sent as `X-Vault-Namespace` (Vault Enterprise and OpenBao
    /// namespaces). Beyond Dapr.
    pub namespace: Option<String>,
    /// `caPem`, `caPath`, `caCert`, `skipVerify`, `tlsServerName`.
    pub tls: TlsSettings,
}

impl VaultMetadata {
    /// Decodes the settings.
    pub fn decode(meta: &Metadata) -> Result<Self> {
        let addr = meta
            .string_or("vaultAddr", DEFAULT_ADDR)
            .trim()
            .trim_end_matches('/')
            .to_owned();
        if !(addr.starts_with("http://") || addr.starts_with("https://")) {
            return Err(Error::invalid_metadata(
                "vaultAddr",
                "expected an http:// or https:// URL",
            ));
        }
        if addr.parse::<http::Uri>().is_err() {
            return Err(Error::invalid_metadata("vaultAddr", "not a valid URL"));
        }
        let token = match (meta.get("vaultToken"), meta.get("vaultTokenMountPath")) {
            (Some(_), Some(_)) => {
                return Err(Error::invalid_metadata(
                    "vaultToken",
                    "vaultToken and vaultTokenMountPath are both set; set one of them",
                ));
            }
            (None, None) => {
                return Err(Error::invalid_metadata(
                    "vaultToken",
                    "set vaultToken or vaultTokenMountPath",
                ));
            }
            (Some(t), None) => TokenSource::Inline(t.to_owned()),
            (None, Some(p)) => TokenSource::File(PathBuf::from(p.trim())),
        };
        let prefix = if meta.bool_or("vaultKVUsePrefix", true)? {
            meta.string_or("vaultKVPrefix", DEFAULT_PREFIX)
        } else {
            String::new()
        };
        let prefix = prefix.trim().trim_matches('/').to_owned();
        let engine_path = meta
            .string_or("enginePath", DEFAULT_ENGINE_PATH)
            .trim()
            .trim_matches('/')
            .to_owned();
        let value_type = match meta.get("vaultValueType").map(str::trim) {
            None | Some("map") => ValueType::Map,
            Some("text") => ValueType::Text,
            Some(_) => {
                return Err(Error::invalid_metadata(
                    "vaultValueType",
                    "accepted values are map or text",
                ));
            }
        };
        let kv_version = match meta
            .get("vaultKVVersion")
            .map(|v| v.trim().to_ascii_lowercase())
            .as_deref()
        {
            None | Some("v2") | Some("2") => KvVersion::V2,
            Some("v1") | Some("1") => KvVersion::V1,
            Some(_) => {
                return Err(Error::invalid_metadata(
                    "vaultKVVersion",
                    "accepted values are v1 or v2",
                ));
            }
        };
        let tls = TlsSettings {
            ca_pem: meta.get("caPem").map(str::to_owned),
            ca_path: meta.get("caPath").map(|p| PathBuf::from(p.trim())),
            ca_cert: meta.get("caCert").map(|p| PathBuf::from(p.trim())),
            skip_verify: meta
                .get("skipVerify")
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("true")),
            server_name: meta.get("tlsServerName").map(|n| n.trim().to_owned()),
        };
        Ok(Self {
            addr,
            token,
            prefix,
            engine_path,
            value_type,
            kv_version,
            namespace: meta
                .get("vaultNamespace")
                .map(|n| n.trim().trim_matches('/').to_owned()),
            tls,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Metadata {
        Metadata::new("vault", "app").with("vaultToken", "s.secret-token")
    }

    #[test]
    fn daprs_defaults() {
        let m = VaultMetadata::decode(&meta()).unwrap();
        assert_eq!(m.addr, "https://127.0.0.1:8200");
        assert_eq!(m.prefix, "dapr");
        assert_eq!(m.engine_path, "secret");
        assert_eq!(m.value_type, ValueType::Map);
        assert_eq!(m.kv_version, KvVersion::V2);
        assert_eq!(m.namespace, None);
        assert_eq!(m.tls, TlsSettings::default());
    }

    #[test]
    fn prefix_engine_and_types() {
        let m = VaultMetadata::decode(
            &meta()
                .with("vaultAddr", "http://vault:8200/")
                .with("vaultKVPrefix", "team/app")
                .with("enginePath", "/kv/")
                .with("vaultValueType", "text")
                .with("vaultKVVersion", "V1")
                .with("vaultNamespace", "ns1/"),
        )
        .unwrap();
        assert_eq!(m.addr, "http://vault:8200");
        assert_eq!(m.prefix, "team/app");
        assert_eq!(m.engine_path, "kv");
        assert_eq!(m.value_type, ValueType::Text);
        assert_eq!(m.kv_version, KvVersion::V1);
        assert_eq!(m.namespace.as_deref(), Some("ns1"));
        let m = VaultMetadata::decode(
            &meta()
                .with("vaultKVPrefix", "ignored")
                .with("vaultKVUsePrefix", "false"),
        )
        .unwrap();
        assert_eq!(m.prefix, "");
    }

    #[test]
    fn exactly_one_token_source() {
        let none = VaultMetadata::decode(&Metadata::new("v", "a")).unwrap_err();
        assert!(none.to_string().contains("vaultToken"), "{none}");
        let both = VaultMetadata::decode(&meta().with("vaultTokenMountPath", "/var/run/token"))
            .unwrap_err();
        assert!(both.to_string().contains("both"), "{both}");
        assert!(!both.to_string().contains("s.secret-token"));
        let file = VaultMetadata::decode(
            &Metadata::new("v", "a").with("vaultTokenMountPath", "/var/run/token"),
        )
        .unwrap();
        assert_eq!(file.token, TokenSource::File("/var/run/token".into()));
        assert!(!format!("{:?}", VaultMetadata::decode(&meta()).unwrap()).contains("secret-token"));
    }

    #[test]
    fn bad_values_are_refused_without_echoing_them() {
        for (k, v) in [
            ("vaultValueType", "yaml"),
            ("vaultKVVersion", "v3"),
            ("vaultKVUsePrefix", "maybe"),
            ("vaultAddr", "vault:8200"),
        ] {
            let err = VaultMetadata::decode(&meta().with(k, v)).unwrap_err();
            assert!(err.to_string().contains(k), "{err}");
            assert!(!err.to_string().contains(v), "{err}");
        }
    }

    #[test]
    fn skip_verify_only_when_true() {
        let on = VaultMetadata::decode(&meta().with("skipVerify", "true")).unwrap();
        assert!(on.tls.skip_verify);
        let off = VaultMetadata::decode(&meta().with("skipVerify", "1")).unwrap();
        assert!(!off.tls.skip_verify);
    }
}
