//! `state.sqlite` against the state store conformance suite, each case on a fresh database file.

use std::sync::Arc;

use async_trait::async_trait;
use tandem_components::Result;
use tandem_components::state::{
    BulkGetItem, DeleteRequest, GetRequest, RequestMetadata, SetRequest, StateFeature, StateItem,
    StateStore, Transactional,
};
use tandem_sqlite::SqliteStateStore;
use tempfile::TempDir;

/// The store plus its temporary folder, removed when the case drops the store.
struct OnTempFile {
    store: SqliteStateStore,
    _dir: Option<TempDir>,
}

/// A fresh database file, with extra metadata such as `disableWAL`.
async fn build_with(extra: &[(&str, &str)]) -> Option<Arc<dyn StateStore>> {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("conformance.db");
    let mut meta = tandem_components::Metadata::new("sqlite", "conformance")
        .with("connectionString", path.to_str().expect("utf-8 path"));
    for (key, value) in extra {
        meta.insert(*key, *value);
    }
    let store = SqliteStateStore::build(&meta).await.expect("build");
    Some(Arc::new(OnTempFile {
        store,
        _dir: Some(dir),
    }))
}

async fn build() -> Option<Arc<dyn StateStore>> {
    build_with(&[]).await
}

tandem_components::state_store_conformance!(build());

/// The same suite with the rollback journal (`disableWAL`), where readers and the writer lock
/// each other out and rely on `busyTimeout`.
mod rollback_journal {
    use super::*;

    async fn build() -> Option<Arc<dyn StateStore>> {
        build_with(&[("disableWAL", "true")]).await
    }

    tandem_components::state_store_conformance!(build());
}

/// The same suite on `:memory:` (a single connection).
mod in_memory {
    use super::*;

    async fn build() -> Option<Arc<dyn StateStore>> {
        let meta = tandem_components::Metadata::new("sqlite", "conformance")
            .with("connectionString", ":memory:");
        let store = SqliteStateStore::build(&meta).await.expect("build");
        Some(Arc::new(OnTempFile { store, _dir: None }))
    }

    tandem_components::state_store_conformance!(build());
}

// Plain delegation, so that the store's own bulk operations are the ones under test.
#[async_trait]
impl StateStore for OnTempFile {
    fn features(&self) -> &'static [StateFeature] {
        self.store.features()
    }

    async fn get(&self, req: GetRequest<'_>) -> Result<Option<StateItem>> {
        self.store.get(req).await
    }

    async fn set(&self, req: SetRequest) -> Result<()> {
        self.store.set(req).await
    }

    async fn delete(&self, req: DeleteRequest) -> Result<()> {
        self.store.delete(req).await
    }

    async fn bulk_get(
        &self,
        keys: &[String],
        metadata: &RequestMetadata,
    ) -> Result<Vec<BulkGetItem>> {
        self.store.bulk_get(keys, metadata).await
    }

    async fn bulk_set(&self, reqs: Vec<SetRequest>) -> Result<()> {
        self.store.bulk_set(reqs).await
    }

    async fn bulk_delete(&self, reqs: Vec<DeleteRequest>) -> Result<()> {
        self.store.bulk_delete(reqs).await
    }

    fn transactional(&self) -> Option<&dyn Transactional> {
        self.store.transactional()
    }

    async fn ping(&self) -> Result<()> {
        self.store.ping().await
    }
}
