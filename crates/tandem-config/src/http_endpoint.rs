//! `HTTPEndpoint` (`dapr.io/v1alpha1`): a non-Dapr HTTP service callable through service
//! invocation (§6.6).

use serde::Deserialize;
use serde_norway::Value;

use crate::Source;
use crate::component::{MetadataItem, MetadataValue, RawAuth, RawNameValue, RawSecretKeyRef};
use crate::de::{self, from_value};
use crate::error::FieldError;

/// An external HTTP endpoint: `/v1.0/invoke/<name>/method/<path>` goes to `base_url` + path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpEndpoint {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`, when set.
    pub namespace: Option<String>,
    /// `spec.baseUrl`.
    pub base_url: String,
    /// `spec.headers`, sent with every request.
    pub headers: Vec<MetadataItem>,
    /// `spec.clientTLS`.
    pub client_tls: Option<ClientTls>,
    /// Top-level `auth.secretStore`, for `secretKeyRef`s.
    pub secret_store: Option<String>,
    /// `scopes`: app-ids allowed to use it (empty = all).
    pub scopes: Vec<String>,
    /// Where the manifest was read.
    pub source: Source,
}

/// `spec.clientTLS`: each PEM document is a literal value or a secret reference.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientTls {
    /// `rootCA`.
    pub root_ca: Option<MetadataValue>,
    /// `certificate`.
    pub certificate: Option<MetadataValue>,
    /// `privateKey`.
    pub private_key: Option<MetadataValue>,
    /// `renegotiation`.
    pub renegotiation: Option<TlsRenegotiation>,
}

/// `clientTLS.renegotiation` (Go's `tls.RenegotiationSupport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum TlsRenegotiation {
    /// `RenegotiateNever`.
    RenegotiateNever,
    /// `RenegotiateOnceAsClient`.
    RenegotiateOnceAsClient,
    /// `RenegotiateFreelyAsClient`.
    RenegotiateFreelyAsClient,
}

#[derive(Deserialize)]
struct RawEndpoint {
    #[serde(default)]
    spec: RawSpec,
    #[serde(default)]
    auth: RawAuth,
    #[serde(default)]
    scopes: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawSpec {
    #[serde(default)]
    base_url: Option<String>,
    #[serde(default)]
    headers: Vec<RawNameValue>,
    #[serde(default, rename = "clientTLS")]
    client_tls: Option<RawTls>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawTls {
    #[serde(default, rename = "rootCA")]
    root_ca: Option<RawDocument>,
    #[serde(default)]
    certificate: Option<RawDocument>,
    #[serde(default)]
    private_key: Option<RawDocument>,
    #[serde(default)]
    renegotiation: Option<TlsRenegotiation>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDocument {
    #[serde(default, deserialize_with = "de::opt_scalar_string")]
    value: Option<String>,
    #[serde(default)]
    secret_key_ref: Option<RawSecretKeyRef>,
}

impl RawDocument {
    fn into_value(self) -> Option<MetadataValue> {
        self.secret_key_ref
            .and_then(RawSecretKeyRef::into_value)
            .or(self.value.map(MetadataValue::Value))
    }
}

/// Decodes an HTTPEndpoint document.
pub(crate) fn parse(
    value: Value,
    name: String,
    namespace: Option<String>,
    source: Source,
) -> Result<HttpEndpoint, FieldError> {
    let raw: RawEndpoint = from_value(value)?;
    let base_url = raw
        .spec
        .base_url
        .filter(|u| !u.trim().is_empty())
        .ok_or_else(|| FieldError::required("spec.baseUrl"))?;
    Ok(HttpEndpoint {
        name,
        namespace,
        base_url,
        headers: raw
            .spec
            .headers
            .into_iter()
            .map(RawNameValue::into_item)
            .collect(),
        client_tls: raw.spec.client_tls.map(|tls| ClientTls {
            root_ca: tls.root_ca.and_then(RawDocument::into_value),
            certificate: tls.certificate.and_then(RawDocument::into_value),
            private_key: tls.private_key.and_then(RawDocument::into_value),
            renegotiation: tls.renegotiation,
        }),
        secret_store: raw.auth.secret_store.filter(|s| !s.is_empty()),
        scopes: raw.scopes,
        source,
    })
}
