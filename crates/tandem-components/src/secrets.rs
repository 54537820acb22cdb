//! The secret store contract (`secretstores.*` components).

use std::collections::BTreeMap;

use async_trait::async_trait;

use crate::error::Result;
use crate::state::RequestMetadata;

/// One secret: a secret may hold several key/value pairs.
pub type Secret = BTreeMap<String, String>;

/// A secret store component.
#[async_trait]
pub trait SecretStore: Send + Sync + 'static {
    /// Reads the secret `name`. A missing secret is [`crate::Error::NotFound`].
    async fn get(&self, name: &str, metadata: &RequestMetadata) -> Result<Secret>;

    /// Reads every secret the store holds, by name.
    async fn bulk_get(&self, metadata: &RequestMetadata) -> Result<BTreeMap<String, Secret>>;

    /// Capability strings for the metadata API (`MULTIPLE_KEY_VALUES_PER_SECRET`).
    fn features(&self) -> &'static [&'static str] {
        &[]
    }
}
