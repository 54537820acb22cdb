//! `secretstores.hashicorp.vault` against the secret store conformance suite, on a real
//! OpenBao dev server (started by the test; skipped when it cannot be, unless
//! `TANDEM_REQUIRE_SERVICES=1`): a KV v2 engine (Dapr's layout) and a KV v1 engine.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::json;
use tandem_components::conformance::secrets::FIXTURE;
use tandem_components::secrets::{Secret, SecretStore};
use tandem_components::state::RequestMetadata;
use tandem_components::{Metadata, Result};
use tandem_testkit::openbao::{OpenBao, ROOT_TOKEN};
use tandem_vault::VaultSecretStore;

/// The store under test, keeping the shared server alive as long as it is used.
struct Held {
    store: VaultSecretStore,
    _server: Arc<OpenBao>,
}

#[async_trait]
impl SecretStore for Held {
    async fn get(&self, name: &str, metadata: &RequestMetadata) -> Result<Secret> {
        self.store.get(name, metadata).await
    }

    async fn bulk_get(&self, metadata: &RequestMetadata) -> Result<BTreeMap<String, Secret>> {
        self.store.bulk_get(metadata).await
    }

    fn features(&self) -> &'static [&'static str] {
        self.store.features()
    }
}

async fn held(server: Arc<OpenBao>, meta: Metadata) -> Option<Arc<dyn SecretStore>> {
    let store = VaultSecretStore::build(&meta).await.expect("build");
    Some(Arc::new(Held {
        store,
        _server: server,
    }))
}

fn meta(server: &OpenBao) -> Metadata {
    Metadata::new("vault", "conformance")
        .with("vaultAddr", server.addr())
        .with("vaultToken", ROOT_TOKEN)
}

mod kv2 {
    use super::*;

    async fn build() -> Option<Arc<dyn SecretStore>> {
        let server = OpenBao::shared().await?;
        for (name, value) in FIXTURE {
            server
                .kv2_put("secret", &format!("dapr/{name}"), json!({ *name: value }))
                .await;
        }
        let meta = meta(&server);
        held(server, meta).await
    }

    tandem_components::secret_store_conformance!(build());
}

mod kv1 {
    use super::*;

    async fn build() -> Option<Arc<dyn SecretStore>> {
        let server = OpenBao::shared().await?;
        server.mount_kv("kv1", 1).await;
        for (name, value) in FIXTURE {
            server
                .kv1_put("kv1", &format!("dapr/{name}"), json!({ *name: value }))
                .await;
        }
        let meta = meta(&server)
            .with("enginePath", "kv1")
            .with("vaultKVVersion", "v1");
        held(server, meta).await
    }

    tandem_components::secret_store_conformance!(build());
}
