//! `secretstores.local.file`: secrets read from a JSON file at start-up.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde_json::Value;
use tandem_components::secrets::{Secret, SecretStore};
use tandem_components::state::RequestMetadata;
use tandem_components::{Error, Metadata, Result};

use crate::metadata::FileSecretStoreMetadata;

/// The `secretstores.local.file` component.
#[derive(Debug)]
pub struct LocalFileSecretStore {
    secrets: BTreeMap<String, Secret>,
    multi_valued: bool,
}

impl LocalFileSecretStore {
    /// Reads and flattens the secrets file.
    pub async fn build(meta: &Metadata) -> Result<Self> {
        let settings = FileSecretStoreMetadata::decode(meta)?;
        let text = tokio::fs::read(&settings.secrets_file).await.map_err(|e| {
            Error::invalid_metadata("secretsFile", format!("cannot read the secrets file: {e}"))
        })?;
        Self::from_json(&text, &settings)
    }

    /// Builds the store from the file's contents.
    pub fn from_json(text: &[u8], settings: &FileSecretStoreMetadata) -> Result<Self> {
        let root: Value = serde_json::from_slice(text).map_err(|e| {
            Error::invalid_metadata(
                "secretsFile",
                format!("the secrets file is not valid JSON: {e}"),
            )
        })?;
        let Value::Object(top) = root else {
            return Err(Error::invalid_metadata(
                "secretsFile",
                "the secrets file must hold a JSON object",
            ));
        };
        let sep = &settings.nested_separator;
        let mut secrets = BTreeMap::new();
        if settings.multi_valued {
            for (name, value) in top {
                let mut secret = Secret::new();
                match value {
                    Value::Object(_) | Value::Array(_) => flatten("", &value, sep, &mut secret),
                    scalar => {
                        secret.insert(name.clone(), scalar_text(&scalar));
                    }
                }
                secrets.insert(name, secret);
            }
        } else {
            let mut flat = Secret::new();
            flatten("", &Value::Object(top), sep, &mut flat);
            for (name, value) in flat {
                secrets.insert(name.clone(), Secret::from([(name, value)]));
            }
        }
        Ok(Self {
            secrets,
            multi_valued: settings.multi_valued,
        })
    }
}

fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn flatten(prefix: &str, value: &Value, sep: &str, out: &mut Secret) {
    let join = |k: &str| {
        if prefix.is_empty() {
            k.to_owned()
        } else {
            format!("{prefix}{sep}{k}")
        }
    };
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                flatten(&join(k), v, sep, out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                flatten(&join(&i.to_string()), v, sep, out);
            }
        }
        scalar => {
            out.insert(prefix.to_owned(), scalar_text(scalar));
        }
    }
}

#[async_trait]
impl SecretStore for LocalFileSecretStore {
    async fn get(&self, name: &str, _metadata: &RequestMetadata) -> Result<Secret> {
        self.secrets
            .get(name)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("secret {name} not found")))
    }

    async fn bulk_get(&self, _metadata: &RequestMetadata) -> Result<BTreeMap<String, Secret>> {
        Ok(self.secrets.clone())
    }

    fn features(&self) -> &'static [&'static str] {
        if self.multi_valued {
            &["MULTIPLE_KEY_VALUES_PER_SECRET"]
        } else {
            &[]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(sep: &str, multi: bool) -> FileSecretStoreMetadata {
        FileSecretStoreMetadata {
            secrets_file: String::new(),
            nested_separator: sep.into(),
            multi_valued: multi,
        }
    }

    const DOC: &[u8] = br#"{"plain": "p", "db": {"user": "u", "password": "pw", "opts": {"tls": true}}, "n": 3, "list": ["a", "b"]}"#;

    #[tokio::test]
    async fn nested_keys_are_flattened() {
        let s = LocalFileSecretStore::from_json(DOC, &settings(":", false)).unwrap();
        let m = RequestMetadata::new();
        assert_eq!(s.get("plain", &m).await.unwrap()["plain"], "p");
        assert_eq!(s.get("db:password", &m).await.unwrap()["db:password"], "pw");
        assert_eq!(
            s.get("db:opts:tls", &m).await.unwrap()["db:opts:tls"],
            "true"
        );
        assert_eq!(s.get("n", &m).await.unwrap()["n"], "3");
        assert_eq!(s.get("list:1", &m).await.unwrap()["list:1"], "b");
        assert!(matches!(s.get("db", &m).await, Err(Error::NotFound(_))));
        let all = s.bulk_get(&m).await.unwrap();
        assert_eq!(all.len(), 7);
    }

    #[tokio::test]
    async fn custom_separator() {
        let s = LocalFileSecretStore::from_json(DOC, &settings(".", false)).unwrap();
        let m = RequestMetadata::new();
        assert_eq!(s.get("db.user", &m).await.unwrap()["db.user"], "u");
        assert!(s.get("db:user", &m).await.is_err());
    }

    #[tokio::test]
    async fn multi_valued_groups_by_top_level_key() {
        let s = LocalFileSecretStore::from_json(DOC, &settings(":", true)).unwrap();
        let m = RequestMetadata::new();
        let db = s.get("db", &m).await.unwrap();
        assert_eq!(db.len(), 3);
        assert_eq!(db["password"], "pw");
        assert_eq!(db["opts:tls"], "true");
        assert_eq!(s.get("plain", &m).await.unwrap()["plain"], "p");
        assert_eq!(s.features(), &["MULTIPLE_KEY_VALUES_PER_SECRET"]);
    }

    #[test]
    fn bad_files_are_rejected_without_leaking_content() {
        let err =
            LocalFileSecretStore::from_json(b"{\"a\": secret", &settings(":", false)).unwrap_err();
        assert!(err.to_string().contains("secretsFile"));
        assert!(!err.to_string().contains("secret\""));
        assert!(LocalFileSecretStore::from_json(b"[1]", &settings(":", false)).is_err());
    }
}
