//! The local secret stores against the secret store conformance suite.

use std::sync::Arc;

use tandem_components::Metadata;
use tandem_components::conformance::secrets::FIXTURE;
use tandem_components::secrets::SecretStore;
use tandem_local::{LocalEnvSecretStore, LocalFileSecretStore};

mod file {
    use super::*;

    async fn build() -> Option<Arc<dyn SecretStore>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secrets.json");
        let doc: serde_json::Map<String, serde_json::Value> = FIXTURE
            .iter()
            .map(|(k, v)| ((*k).to_owned(), serde_json::Value::from(*v)))
            .collect();
        std::fs::write(&path, serde_json::to_vec(&doc).unwrap()).expect("write fixture");
        let meta =
            Metadata::new("files", "conformance").with("secretsFile", path.to_string_lossy());
        Some(Arc::new(
            LocalFileSecretStore::build(&meta).await.expect("build"),
        ))
    }

    tandem_components::secret_store_conformance!(build());
}

mod env {
    use super::*;

    async fn build() -> Option<Arc<dyn SecretStore>> {
        let vars = FIXTURE
            .iter()
            .map(|(k, v)| (format!("TEST_{k}"), (*v).to_owned()));
        let meta = Metadata::new("env", "conformance").with("prefix", "TEST_");
        Some(Arc::new(
            LocalEnvSecretStore::from_vars(&meta, vars).expect("build"),
        ))
    }

    tandem_components::secret_store_conformance!(build());
}
