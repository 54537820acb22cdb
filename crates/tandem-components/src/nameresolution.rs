//! The name-resolution contract (`nameresolution.*` components): how a sidecar announces itself
//! and finds the sidecars of other app-ids for service invocation.
//!
//! A resolver is built from the Configuration's `spec.nameResolution` (see the runtime), then:
//!
//! 1. [`NameResolver::register`] once the sidecar's internal listener is bound: from then on
//!    other sidecars can find this instance. Keeping the registration alive (heartbeats, TTL
//!    renewals, re-announcements) is the implementation's business.
//! 2. [`NameResolver::resolve`] for each app-id to call: every live instance's `host:port`.
//!    Choosing one (round-robin), caching and failing over are the runtime's business, so that
//!    every resolver gets them for free and none of them sits on the hot path.
//! 3. [`NameResolver::unregister`] on graceful shutdown, so callers stop picking this instance
//!    at once rather than after its registration expires.
//!
//! [`MemoryNameResolver`] is the in-process reference implementation (tests, single-process
//! embedding).

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;

use crate::error::Result;

/// This sidecar instance, as announced to other sidecars.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    /// The app-id (`--app-id`).
    pub app_id: String,
    /// The namespace (`NAMESPACE`, `default` when unset).
    pub namespace: String,
    /// Where other sidecars reach this one's internal listener: `host:port`
    /// (IPv6 hosts in brackets).
    pub address: String,
}

/// What to look up: an app-id within a namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResolveRequest<'a> {
    /// The app-id to find.
    pub app_id: &'a str,
    /// Its namespace (`default` when the caller named none and has none).
    pub namespace: &'a str,
}

/// A name-resolution component.
#[async_trait]
pub trait NameResolver: Send + Sync + 'static {
    /// Announces `instance` and keeps the announcement alive until [`Self::unregister`] or
    /// until the resolver is dropped. Registering again replaces the previous registration.
    async fn register(&self, instance: &Instance) -> Result<()>;

    /// The `host:port` of every live instance of the app, in a stable order (so that a
    /// round-robin over successive answers stays fair). An app-id without live instances is an
    /// empty list, not an error; errors mean the lookup itself failed.
    async fn resolve(&self, request: ResolveRequest<'_>) -> Result<Vec<String>>;

    /// Withdraws this instance's registration (graceful shutdown). Without a registration it
    /// does nothing.
    async fn unregister(&self) -> Result<()>;
}

/// An in-memory resolver: instances registered through one value are visible to lookups on the
/// same value only. For tests and single-process use.
#[derive(Debug, Default)]
pub struct MemoryNameResolver {
    // Only touched by register / resolve / unregister, which the runtime caches in front of.
    entries: Mutex<BTreeMap<(String, String), Vec<String>>>,
    registered: Mutex<Option<Instance>>,
}

impl MemoryNameResolver {
    /// An empty resolver.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an instance of another app (as if its sidecar had registered).
    pub fn add(&self, app_id: &str, namespace: &str, address: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let list = entries
            .entry((app_id.to_owned(), namespace.to_owned()))
            .or_default();
        if !list.iter().any(|a| a == address) {
            list.push(address.to_owned());
            list.sort();
        }
    }

    /// Removes an instance (as if it had expired).
    pub fn remove(&self, app_id: &str, namespace: &str, address: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(list) = entries.get_mut(&(app_id.to_owned(), namespace.to_owned())) {
            list.retain(|a| a != address);
        }
    }
}

#[async_trait]
impl NameResolver for MemoryNameResolver {
    async fn register(&self, instance: &Instance) -> Result<()> {
        self.unregister().await?;
        self.add(&instance.app_id, &instance.namespace, &instance.address);
        *self.registered.lock().unwrap_or_else(|p| p.into_inner()) = Some(instance.clone());
        Ok(())
    }

    async fn resolve(&self, request: ResolveRequest<'_>) -> Result<Vec<String>> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        Ok(entries
            .get(&(request.app_id.to_owned(), request.namespace.to_owned()))
            .cloned()
            .unwrap_or_default())
    }

    async fn unregister(&self) -> Result<()> {
        let previous = self
            .registered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(i) = previous {
            self.remove(&i.app_id, &i.namespace, &i.address);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_resolver_registers_resolves_and_unregisters() {
        let r = MemoryNameResolver::new();
        let me = Instance {
            app_id: "a".into(),
            namespace: "default".into(),
            address: "127.0.0.1:2".into(),
        };
        r.register(&me).await.unwrap();
        r.add("a", "default", "127.0.0.1:1");
        let req = ResolveRequest {
            app_id: "a",
            namespace: "default",
        };
        assert_eq!(
            r.resolve(req).await.unwrap(),
            ["127.0.0.1:1", "127.0.0.1:2"]
        );
        let other_ns = ResolveRequest {
            app_id: "a",
            namespace: "prod",
        };
        assert!(r.resolve(other_ns).await.unwrap().is_empty());
        r.unregister().await.unwrap();
        assert_eq!(r.resolve(req).await.unwrap(), ["127.0.0.1:1"]);
        r.unregister().await.unwrap();
    }
}
