//! `pubsub.in-memory` against the pub/sub conformance suite.

use std::sync::Arc;

use tandem_components::memory_pubsub::InMemoryPubSub;
use tandem_components::pubsub::PubSub;

async fn build() -> Option<Arc<dyn PubSub>> {
    let meta = tandem_components::Metadata::new("pubsub", "conformance");
    Some(Arc::new(InMemoryPubSub::build(&meta).await.expect("build")))
}

tandem_components::pubsub_conformance!(build());
