//! `secretstores.hashicorp.vault`: secrets read from a KV engine of HashiCorp Vault (or
//! OpenBao) over its HTTP API, with Dapr's paths:
//!
//! - get: `GET /v1/<enginePath>/data/<vaultKVPrefix>/<name>[?version=<version_id>]` (KV v2) or
//!   `GET /v1/<enginePath>/<vaultKVPrefix>/<name>` (KV v1);
//! - bulk get: `LIST /v1/<enginePath>/metadata/<vaultKVPrefix>/` (KV v1: without `metadata/`),
//!   recursively into sub-folders, then a get of each secret found. Secret names below a
//!   folder keep the folder (`team/db`).
//!
//! With `vaultValueType: map` a secret answers all its key/value pairs; with `text` it answers
//! one pair named after the secret whose value is the secret's data as JSON text (Dapr's
//! behaviour). A `404` is [`Error::NotFound`]; a Vault that cannot be reached or answers
//! anything else is [`Error::Backend`] (or [`Error::InvalidRequest`] for a `400`).

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use http::{Method, StatusCode};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;
use tandem_components::secrets::{Secret, SecretStore};
use tandem_components::state::RequestMetadata;
use tandem_components::{Error, Metadata, Result};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::client::{Answer, VaultClient};
use crate::metadata::{KvVersion, ValueType, VaultMetadata};
use crate::token::Token;

/// The request metadata key selecting a secret version (KV v2).
pub const VERSION_ID: &str = "version_id";

/// How many secrets a bulk get reads at once.
const BULK_CONCURRENCY: usize = 8;

/// Characters escaped inside one path segment (`/` separates segments and is kept).
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'\\')
    .add(b'^')
    .add(b'|');

/// A query value: everything but unreserved characters escaped.
const QUERY: &AsciiSet = &SEGMENT.add(b'&').add(b'=').add(b'+').add(b'/').add(b';');

/// The `secretstores.hashicorp.vault` component.
pub struct VaultSecretStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: VaultClient,
    settings: VaultMetadata,
}

impl std::fmt::Debug for VaultSecretStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultSecretStore")
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

impl VaultSecretStore {
    /// Decodes the metadata, reads the token and prepares the client. Vault is not contacted:
    /// a Vault that is down at start-up makes calls fail until it answers.
    pub async fn build(meta: &Metadata) -> Result<Self> {
        Self::from_settings(VaultMetadata::decode(meta)?).await
    }

    /// Builds the store from decoded settings.
    pub async fn from_settings(settings: VaultMetadata) -> Result<Self> {
        let token = Token::new(&settings.token).await?;
        let client = VaultClient::new(
            settings.addr.clone(),
            settings.tls.clone(),
            settings.namespace.as_deref(),
            token,
        )
        .await?;
        let store = Self {
            inner: Arc::new(Inner { client, settings }),
        };
        store.probe();
        Ok(store)
    }

    /// Says once, in the log, when Vault cannot be reached or is not ready, without holding up
    /// the start-up.
    fn probe(&self) {
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let addr = &inner.settings.addr;
            match inner
                .client
                .call(&Method::GET, "sys/health?standbyok=true&perfstandbyok=true")
                .await
            {
                Ok(answer) if answer.status.is_success() => {}
                Ok(answer) => {
                    tracing::warn!(%addr, status = %answer.status, "vault is not ready (sealed or not initialised?); secret reads fail until it is")
                }
                Err(e) => {
                    tracing::error!(%addr, error = %e, "vault unreachable; secret reads fail until it answers")
                }
            }
        });
    }
}

/// `a/b c` → `a/b%20c`.
fn encode_path(path: &str) -> String {
    utf8_percent_encode(path, SEGMENT).to_string()
}

/// Joins non-empty path parts with `/`.
fn join(parts: &[&str]) -> String {
    parts
        .iter()
        .filter(|p| !p.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join("/")
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ListData {
    #[serde(default)]
    keys: Vec<String>,
}

#[derive(Deserialize)]
struct Errors {
    #[serde(default)]
    errors: Vec<String>,
}

fn scalar_text(v: Value) -> String {
    match v {
        Value::String(s) => s,
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

impl Inner {
    fn secret_path(&self, name: &str) -> String {
        let s = &self.settings;
        match s.kv_version {
            KvVersion::V2 => join(&[&s.engine_path, "data", &s.prefix, name]),
            KvVersion::V1 => join(&[&s.engine_path, &s.prefix, name]),
        }
    }

    /// The listing path of the folder `folder` (empty, or ending with `/`).
    fn list_path(&self, folder: &str) -> String {
        let s = &self.settings;
        let base = match s.kv_version {
            KvVersion::V2 => join(&[&s.engine_path, "metadata", &s.prefix]),
            KvVersion::V1 => join(&[&s.engine_path, &s.prefix]),
        };
        format!("{base}/{folder}")
    }

    fn version<'m>(&self, metadata: &'m RequestMetadata) -> Result<Option<&'m str>> {
        let version = metadata
            .get(VERSION_ID)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty());
        match (self.settings.kv_version, version) {
            (KvVersion::V1, Some(v)) if v != "0" => Err(Error::InvalidRequest(
                "version_id needs a KV version 2 engine (vaultKVVersion: v2)".into(),
            )),
            (KvVersion::V1, _) => Ok(None),
            (KvVersion::V2, v) => Ok(v),
        }
    }

    fn failure(&self, what: &str, answer: &Answer) -> Error {
        let detail = serde_json::from_slice::<Errors>(&answer.body)
            .map(|e| e.errors.join("; "))
            .unwrap_or_default();
        let detail = if detail.is_empty() {
            String::new()
        } else {
            format!(": {detail}")
        };
        let message = format!("{what}: vault answered {}{detail}", answer.status);
        if answer.status == StatusCode::BAD_REQUEST {
            Error::InvalidRequest(message)
        } else {
            Error::backend(message)
        }
    }

    async fn get(&self, name: &str, version: Option<&str>) -> Result<Secret> {
        let mut path = encode_path(&self.secret_path(name));
        if let Some(v) = version {
            path.push_str("?version=");
            path.push_str(&utf8_percent_encode(v, QUERY).to_string());
        }
        let answer = self.client.call(&Method::GET, &path).await?;
        match answer.status {
            StatusCode::OK => self.decode(name, &answer.body),
            StatusCode::NOT_FOUND => Err(Error::NotFound(format!(
                "secret {name} not found: no such secret or version"
            ))),
            _ => Err(self.failure(&format!("cannot read secret {name}"), &answer)),
        }
    }

    /// The secret's data: `data.data` (KV v2) or `data` (KV v1).
    fn decode(&self, name: &str, body: &[u8]) -> Result<Secret> {
        let bad = |e: serde_json::Error| {
            Error::backend(format!(
                "vault's answer for secret {name} is not understood: {e}"
            ))
        };
        let outer: Envelope<'_> = serde_json::from_slice(body).map_err(bad)?;
        let mut data = outer.data;
        if self.settings.kv_version == KvVersion::V2 {
            data = match data {
                Some(raw) => {
                    serde_json::from_str::<Envelope<'_>>(raw.get())
                        .map_err(bad)?
                        .data
                }
                None => None,
            };
        }
        let data = data.filter(|raw| raw.get() != "null");
        match self.settings.value_type {
            ValueType::Text => {
                let text = match data {
                    None => String::new(),
                    Some(raw) => match serde_json::from_str::<String>(raw.get()) {
                        Ok(s) => s,
                        Err(_) => raw.get().to_owned(),
                    },
                };
                Ok(Secret::from([(name.to_owned(), text)]))
            }
            ValueType::Map => {
                let Some(raw) = data else {
                    return Ok(Secret::new());
                };
                let map: BTreeMap<String, Value> = serde_json::from_str(raw.get()).map_err(bad)?;
                Ok(map.into_iter().map(|(k, v)| (k, scalar_text(v))).collect())
            }
        }
    }

    /// Every secret name under `folder`, recursively (Dapr's listing). A folder that does not
    /// exist lists nothing.
    async fn list(&self, folder: String) -> Result<Vec<String>> {
        let mut names = Vec::new();
        let mut folders = vec![folder];
        while let Some(folder) = folders.pop() {
            let path = encode_path(&self.list_path(&folder));
            let answer = self
                .client
                .call(&Method::from_bytes(b"LIST").expect("method"), &path)
                .await?;
            match answer.status {
                StatusCode::OK => {}
                StatusCode::NOT_FOUND => continue,
                _ => return Err(self.failure("cannot list secrets", &answer)),
            }
            #[derive(Deserialize)]
            struct Listing {
                data: ListData,
            }
            let listing: Listing = serde_json::from_slice(&answer.body).map_err(|e| {
                Error::backend(format!("vault's secret listing is not understood: {e}"))
            })?;
            for key in listing.data.keys {
                if key.ends_with('/') {
                    folders.push(format!("{folder}{key}"));
                } else {
                    names.push(format!("{folder}{key}"));
                }
            }
        }
        Ok(names)
    }
}

#[async_trait]
impl SecretStore for VaultSecretStore {
    async fn get(&self, name: &str, metadata: &RequestMetadata) -> Result<Secret> {
        let version = self.inner.version(metadata)?;
        self.inner.get(name, version).await
    }

    async fn bulk_get(&self, metadata: &RequestMetadata) -> Result<BTreeMap<String, Secret>> {
        let version = self.inner.version(metadata)?.map(str::to_owned);
        let names = self.inner.list(String::new()).await?;
        let permits = Arc::new(Semaphore::new(BULK_CONCURRENCY));
        let mut tasks = JoinSet::new();
        for name in names {
            let inner = self.inner.clone();
            let permits = permits.clone();
            let version = version.clone();
            tasks.spawn(async move {
                let _permit = permits.acquire_owned().await;
                let res = inner.get(&name, version.as_deref()).await;
                (name, res)
            });
        }
        let mut all = BTreeMap::new();
        while let Some(joined) = tasks.join_next().await {
            let (name, res) =
                joined.map_err(|e| Error::backend(format!("bulk read failed: {e}")))?;
            match res {
                Ok(secret) => {
                    all.insert(name, secret);
                }
                // Listed but without the requested version (or deleted since): skipped, as
                // in Dapr.
                Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(all)
    }

    fn features(&self) -> &'static [&'static str] {
        match self.inner.settings.value_type {
            ValueType::Map => &["MULTIPLE_KEY_VALUES_PER_SECRET"],
            ValueType::Text => &[],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store(extra: &[(&str, &str)]) -> VaultSecretStore {
        let mut meta = Metadata::new("vault", "app")
            .with("vaultToken", "t")
            .with("vaultAddr", "http://127.0.0.1:1");
        for (k, v) in extra {
            meta.insert(*k, *v);
        }
        VaultSecretStore::build(&meta).await.unwrap()
    }

    #[tokio::test]
    async fn paths_follow_daprs_layout() {
        let s = store(&[]).await;
        assert_eq!(s.inner.secret_path("db"), "secret/data/dapr/db");
        assert_eq!(s.inner.list_path(""), "secret/metadata/dapr/");
        assert_eq!(s.inner.list_path("team/"), "secret/metadata/dapr/team/");
        let s = store(&[("vaultKVUsePrefix", "false"), ("enginePath", "kv")]).await;
        assert_eq!(s.inner.secret_path("team/db"), "kv/data/team/db");
        assert_eq!(s.inner.list_path(""), "kv/metadata/");
        let s = store(&[("vaultKVVersion", "v1"), ("vaultKVPrefix", "app")]).await;
        assert_eq!(s.inner.secret_path("db"), "secret/app/db");
        assert_eq!(s.inner.list_path(""), "secret/app/");
        assert_eq!(encode_path("a b/c?d#e%"), "a%20b/c%3Fd%23e%25");
    }

    #[tokio::test]
    async fn decoding_map_and_text() {
        let body = br#"{"data":{"data":{"user":"u","n":3,"ok":true,"nested":{"a":1}},"metadata":{"version":2}}}"#;
        let s = store(&[]).await;
        let m = s.inner.decode("db", body).unwrap();
        assert_eq!(m["user"], "u");
        assert_eq!(m["n"], "3");
        assert_eq!(m["ok"], "true");
        assert_eq!(m["nested"], r#"{"a":1}"#);
        let s = store(&[("vaultValueType", "text")]).await;
        let t = s.inner.decode("db", body).unwrap();
        assert_eq!(t["db"], r#"{"user":"u","n":3,"ok":true,"nested":{"a":1}}"#);
        assert_eq!(s.features(), &[] as &[&str]);
        let s = store(&[("vaultKVVersion", "v1")]).await;
        let m = s.inner.decode("db", br#"{"data":{"k":"v"}}"#).unwrap();
        assert_eq!(m["k"], "v");
    }

    #[tokio::test]
    async fn versions_need_kv_v2() {
        let s = store(&[("vaultKVVersion", "v1")]).await;
        let md = RequestMetadata::from([(VERSION_ID.to_owned(), "2".to_owned())]);
        assert!(matches!(
            s.get("x", &md).await,
            Err(Error::InvalidRequest(_))
        ));
    }

    #[tokio::test]
    async fn an_unreachable_vault_is_a_backend_error() {
        let s = store(&[]).await;
        match s.get("x", &RequestMetadata::new()).await {
            Err(Error::Backend(e)) => assert!(e.to_string().contains("unreachable"), "{e}"),
            other => panic!("expected a backend error, got {other:?}"),
        }
    }
}
