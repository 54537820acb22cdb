//! Settings of the local components, decoded from `spec.metadata`.

use tandem_components::{Metadata, Result};

/// `secretstores.local.file` settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileSecretStoreMetadata {
    /// `secretsFile` (required): path of the JSON file holding the secrets.
    pub secrets_file: String,
    /// `nestedSeparator` (default `:`): joins the keys of nested objects into one secret name,
    /// so `{"db": {"password": "x"}}` holds the secret `db:password`.
    pub nested_separator: String,
    /// `multiValued` (default `false`): when true, each top-level key is one secret whose
    /// key/value pairs are everything nested under it.
    pub multi_valued: bool,
}

impl FileSecretStoreMetadata {
    /// Decodes the settings.
    pub fn decode(meta: &Metadata) -> Result<Self> {
        Ok(Self {
            secrets_file: meta.required("secretsFile")?.to_owned(),
            nested_separator: meta.string_or("nestedSeparator", ":"),
            multi_valued: meta.bool_or("multiValued", false)?,
        })
    }
}

/// `secretstores.local.env` settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EnvSecretStoreMetadata {
    /// `prefix` (optional, case-insensitive): only variables starting with it are secrets,
    /// named without it.
    pub prefix: String,
}

impl EnvSecretStoreMetadata {
    /// Decodes the settings.
    pub fn decode(meta: &Metadata) -> Result<Self> {
        Ok(Self {
            prefix: meta.string_or("prefix", ""),
        })
    }
}
