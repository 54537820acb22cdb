//! `secretstores.local.env`: secrets read from the sidecar's environment variables.
//!
//! The environment is read once when the component is built. Beyond Dapr, the sidecar's own
//! credentials (`DAPR_API_TOKEN`, `APP_API_TOKEN`) are never served as secrets, and an unset
//! variable is reported as not found instead of an empty value.

use std::collections::BTreeMap;

use async_trait::async_trait;
use tandem_components::secrets::{Secret, SecretStore};
use tandem_components::state::RequestMetadata;
use tandem_components::{Error, Metadata, Result};

use crate::metadata::EnvSecretStoreMetadata;

const HIDDEN: &[&str] = &["DAPR_API_TOKEN", "APP_API_TOKEN"];

/// The `secretstores.local.env` component.
#[derive(Debug)]
pub struct LocalEnvSecretStore {
    /// Secret name (prefix stripped) → value.
    vars: BTreeMap<String, String>,
}

impl LocalEnvSecretStore {
    /// Builds the store from the process environment.
    pub async fn build(meta: &Metadata) -> Result<Self> {
        Self::from_vars(meta, std::env::vars())
    }

    /// Builds the store from the given variables.
    pub fn from_vars(
        meta: &Metadata,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self> {
        let settings = EnvSecretStoreMetadata::decode(meta)?;
        let prefix = settings.prefix.to_ascii_lowercase();
        let vars = vars
            .into_iter()
            .filter(|(k, _)| !HIDDEN.contains(&k.as_str()))
            .filter_map(|(k, v)| {
                if prefix.is_empty() {
                    return Some((k, v));
                }
                let head = k.get(..prefix.len())?;
                (head.to_ascii_lowercase() == prefix).then(|| (k[prefix.len()..].to_owned(), v))
            })
            .filter(|(k, _)| !k.is_empty())
            .collect();
        Ok(Self { vars })
    }
}

#[async_trait]
impl SecretStore for LocalEnvSecretStore {
    async fn get(&self, name: &str, _metadata: &RequestMetadata) -> Result<Secret> {
        self.vars
            .get(name)
            .map(|v| Secret::from([(name.to_owned(), v.clone())]))
            .ok_or_else(|| Error::NotFound(format!("secret {name} not found")))
    }

    async fn bulk_get(&self, _metadata: &RequestMetadata) -> Result<BTreeMap<String, Secret>> {
        Ok(self
            .vars
            .iter()
            .map(|(k, v)| (k.clone(), Secret::from([(k.clone(), v.clone())])))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vec<(String, String)> {
        [
            ("APP_DB_PASSWORD", "pw"),
            ("APP_USER", "u"),
            ("HOME", "/root"),
            ("DAPR_API_TOKEN", "t"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    #[tokio::test]
    async fn prefix_is_stripped_case_insensitively() {
        let meta = Metadata::new("env", "app").with("prefix", "app_");
        let s = LocalEnvSecretStore::from_vars(&meta, vars()).unwrap();
        let m = RequestMetadata::new();
        assert_eq!(s.get("DB_PASSWORD", &m).await.unwrap()["DB_PASSWORD"], "pw");
        assert!(s.get("HOME", &m).await.is_err());
        assert_eq!(s.bulk_get(&m).await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn own_tokens_are_hidden() {
        let s = LocalEnvSecretStore::from_vars(&Metadata::new("env", "app"), vars()).unwrap();
        let m = RequestMetadata::new();
        assert!(matches!(
            s.get("DAPR_API_TOKEN", &m).await,
            Err(Error::NotFound(_))
        ));
        assert_eq!(s.get("HOME", &m).await.unwrap()["HOME"], "/root");
        assert!(!s.bulk_get(&m).await.unwrap().contains_key("DAPR_API_TOKEN"));
    }
}
