//! `state.in-memory` against the state store conformance suite.

use std::sync::Arc;

use tandem_components::memory::InMemoryStateStore;
use tandem_components::state::StateStore;

async fn build() -> Option<Arc<dyn StateStore>> {
    let meta = tandem_components::Metadata::new("memory", "conformance");
    Some(Arc::new(
        InMemoryStateStore::build(&meta).await.expect("build"),
    ))
}

tandem_components::state_store_conformance!(build());
