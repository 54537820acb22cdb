//! The component registry: `type` + `version` → constructor.
//!
//! The runtime never names a backend. The binary fills a [`Registry`] with one line per
//! compiled-in component (see `crates/tandem/src/registry.rs`).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tandem_components::bindings::Binding;
use tandem_components::pubsub::PubSub;
use tandem_components::secrets::SecretStore;
use tandem_components::state::StateStore;
use tandem_components::{Metadata, Result};

/// A boxed component constructor future.
pub type BuildFuture<T> = Pin<Box<dyn Future<Output = Result<T>> + Send>>;
type Factory<T> = Arc<dyn Fn(Metadata) -> BuildFuture<T> + Send + Sync>;

/// Which building block a component type belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Block {
    /// `state.*`
    State,
    /// `secretstores.*`
    SecretStore,
    /// `pubsub.*`
    PubSub,
    /// `bindings.*`
    Binding,
}

/// Constructors of every compiled-in component, by type and version.
#[derive(Default, Clone)]
pub struct Registry {
    state: HashMap<String, Factory<Arc<dyn StateStore>>>,
    secrets: HashMap<String, Factory<Arc<dyn SecretStore>>>,
    pubsub: HashMap<String, Factory<Arc<dyn PubSub>>>,
    bindings: HashMap<String, Factory<Binding>>,
}

fn key(type_name: &str, version: &str) -> String {
    let version = if version.is_empty() { "v1" } else { version };
    format!(
        "{}/{}",
        type_name.to_ascii_lowercase(),
        version.to_ascii_lowercase()
    )
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a state store under each of `type_names` (aliases) and `version`.
    pub fn state<F, Fut, S>(&mut self, type_names: &[&str], version: &str, build: F) -> &mut Self
    where
        F: Fn(Metadata) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<S>> + Send + 'static,
        S: StateStore,
    {
        let build = Arc::new(build);
        let factory: Factory<Arc<dyn StateStore>> = Arc::new(move |meta| {
            let fut = build(meta);
            Box::pin(async move { Ok(Arc::new(fut.await?) as Arc<dyn StateStore>) })
        });
        for name in type_names {
            self.state.insert(key(name, version), factory.clone());
        }
        self
    }

    /// Registers a secret store under each of `type_names` and `version`.
    pub fn secret_store<F, Fut, S>(
        &mut self,
        type_names: &[&str],
        version: &str,
        build: F,
    ) -> &mut Self
    where
        F: Fn(Metadata) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<S>> + Send + 'static,
        S: SecretStore,
    {
        let build = Arc::new(build);
        let factory: Factory<Arc<dyn SecretStore>> = Arc::new(move |meta| {
            let fut = build(meta);
            Box::pin(async move { Ok(Arc::new(fut.await?) as Arc<dyn SecretStore>) })
        });
        for name in type_names {
            self.secrets.insert(key(name, version), factory.clone());
        }
        self
    }

    /// Registers a pub/sub component under each of `type_names` and `version`.
    pub fn pubsub<F, Fut, S>(&mut self, type_names: &[&str], version: &str, build: F) -> &mut Self
    where
        F: Fn(Metadata) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<S>> + Send + 'static,
        S: PubSub,
    {
        let build = Arc::new(build);
        let factory: Factory<Arc<dyn PubSub>> = Arc::new(move |meta| {
            let fut = build(meta);
            Box::pin(async move { Ok(Arc::new(fut.await?) as Arc<dyn PubSub>) })
        });
        for name in type_names {
            self.pubsub.insert(key(name, version), factory.clone());
        }
        self
    }

    /// Registers a binding component (input, output or both) under each of `type_names` and
    /// `version`.
    pub fn binding<F, Fut>(&mut self, type_names: &[&str], version: &str, build: F) -> &mut Self
    where
        F: Fn(Metadata) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Binding>> + Send + 'static,
    {
        let build = Arc::new(build);
        let factory: Factory<Binding> = Arc::new(move |meta| Box::pin(build(meta)));
        for name in type_names {
            self.bindings.insert(key(name, version), factory.clone());
        }
        self
    }

    /// The building block of a component type, from its prefix.
    pub fn block_of(type_name: &str) -> Option<Block> {
        let lower = type_name.to_ascii_lowercase();
        if lower.starts_with("state.") {
            Some(Block::State)
        } else if lower.starts_with("secretstores.") {
            Some(Block::SecretStore)
        } else if lower.starts_with("pubsub.") {
            Some(Block::PubSub)
        } else if lower.starts_with("bindings.") {
            Some(Block::Binding)
        } else {
            None
        }
    }

    pub(crate) fn state_factory(
        &self,
        type_name: &str,
        version: &str,
    ) -> Option<&Factory<Arc<dyn StateStore>>> {
        self.state.get(&key(type_name, version))
    }

    pub(crate) fn secret_factory(
        &self,
        type_name: &str,
        version: &str,
    ) -> Option<&Factory<Arc<dyn SecretStore>>> {
        self.secrets.get(&key(type_name, version))
    }

    pub(crate) fn pubsub_factory(
        &self,
        type_name: &str,
        version: &str,
    ) -> Option<&Factory<Arc<dyn PubSub>>> {
        self.pubsub.get(&key(type_name, version))
    }

    pub(crate) fn binding_factory(
        &self,
        type_name: &str,
        version: &str,
    ) -> Option<&Factory<Binding>> {
        self.bindings.get(&key(type_name, version))
    }

    /// Every registered `type/version`, sorted (for `--help` style listings and tests).
    pub fn list(&self) -> Vec<String> {
        let mut all: Vec<String> = self
            .state
            .keys()
            .chain(self.secrets.keys())
            .chain(self.pubsub.keys())
            .chain(self.bindings.keys())
            .cloned()
            .collect();
        all.sort();
        all
    }
}
