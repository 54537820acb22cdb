//! Name resolution on the hot path: a short-lived cache of each app's live instances in front
//! of the [`NameResolver`], round-robin between them, and failed instances set aside at once.
//!
//! The cache is a map swapped as a whole (`ArcSwap`) holding one entry per app-id; each entry
//! holds its instance list behind another `ArcSwap` and an atomic round-robin counter. A call
//! therefore takes no lock: two atomic loads and one `fetch_add`. When an entry is older than
//! [`CACHE_TTL`] one caller refreshes it from the resolver while the others keep using the
//! previous list. An instance whose connection was refused is dropped from the list at once
//! and kept out of refreshed lists for [`SUSPECT_FOR`], so a killed sidecar stops receiving
//! calls immediately instead of after its registration expires.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use tandem_components::nameresolution::{NameResolver, ResolveRequest};
use tokio::time::Instant;

/// How long a lookup is reused.
pub const CACHE_TTL: Duration = Duration::from_secs(1);
/// How long an instance that refused a connection is left out.
pub const SUSPECT_FOR: Duration = Duration::from_secs(5);

/// A map looked up on every call: foldhash, not SipHash. Its keys are the app ids this app
/// calls, a set it chooses itself.
type Map<V> = HashMap<String, V, foldhash::fast::RandomState>;

/// Cached name resolution.
pub(crate) struct Directory {
    resolver: Arc<dyn NameResolver>,
    /// namespace → app-id → entry. Grows by copy-on-write when a new app-id is first called.
    apps: ArcSwap<Map<Map<Arc<Entry>>>>,
}

struct Entry {
    instances: ArcSwap<Instances>,
    next: AtomicUsize,
    refreshing: tokio::sync::Mutex<()>,
    /// Written only when a connection fails or a refresh happens.
    suspects: Mutex<Vec<(Arc<str>, Instant)>>,
}

struct Instances {
    addresses: Vec<Arc<str>>,
    /// `None` until the first lookup.
    fetched: Option<Instant>,
}

/// One pick: the address and how many instances there were to choose from.
pub(crate) struct Pick {
    pub(crate) address: Arc<str>,
    pub(crate) choices: usize,
}

impl Directory {
    pub(crate) fn new(resolver: Arc<dyn NameResolver>) -> Self {
        Self {
            resolver,
            apps: ArcSwap::from_pointee(Map::default()),
        }
    }

    pub(crate) fn resolver(&self) -> &Arc<dyn NameResolver> {
        &self.resolver
    }

    fn entry(&self, app_id: &str, namespace: &str) -> Arc<Entry> {
        if let Some(e) = self.apps.load().get(namespace).and_then(|m| m.get(app_id)) {
            return e.clone();
        }
        let fresh = Arc::new(Entry {
            instances: ArcSwap::from_pointee(Instances {
                addresses: Vec::new(),
                fetched: None,
            }),
            next: AtomicUsize::new(0),
            refreshing: tokio::sync::Mutex::new(()),
            suspects: Mutex::new(Vec::new()),
        });
        let mut chosen = fresh.clone();
        self.apps.rcu(|apps| {
            let mut apps = Map::clone(apps);
            let by_id = apps.entry(namespace.to_owned()).or_default();
            chosen = by_id
                .entry(app_id.to_owned())
                .or_insert_with(|| fresh.clone())
                .clone();
            apps
        });
        chosen
    }

    /// An instance of the app, round-robin; `None` when it has no live instance.
    pub(crate) async fn pick(
        &self,
        app_id: &str,
        namespace: &str,
    ) -> tandem_components::Result<Option<Pick>> {
        let entry = self.entry(app_id, namespace);
        let current = entry.instances.load_full();
        let fresh = current.fetched.is_some_and(|t| t.elapsed() < CACHE_TTL);
        let instances = if fresh {
            current
        } else {
            match entry.refreshing.try_lock() {
                Ok(_guard) => self.refresh(&entry, app_id, namespace, current).await?,
                // Someone else is refreshing: keep using what we have, if anything.
                Err(_) if !current.addresses.is_empty() => current,
                Err(_) => {
                    let _guard = entry.refreshing.lock().await;
                    let now = entry.instances.load_full();
                    if now.fetched.is_some_and(|t| t.elapsed() < CACHE_TTL) {
                        now
                    } else {
                        self.refresh(&entry, app_id, namespace, now).await?
                    }
                }
            }
        };
        let n = instances.addresses.len();
        if n == 0 {
            return Ok(None);
        }
        let i = entry.next.fetch_add(1, Ordering::Relaxed) % n;
        Ok(Some(Pick {
            address: instances.addresses[i].clone(),
            choices: n,
        }))
    }

    async fn refresh(
        &self,
        entry: &Entry,
        app_id: &str,
        namespace: &str,
        previous: Arc<Instances>,
    ) -> tandem_components::Result<Arc<Instances>> {
        let request = ResolveRequest { app_id, namespace };
        let now = Instant::now();
        let addresses = match self.resolver.resolve(request).await {
            Ok(list) => list,
            Err(e) if !previous.addresses.is_empty() => {
                // Keep calling the instances we know rather than failing every call.
                tracing::warn!(app_id, error = %e, "name resolution failed; using the previous answer");
                let kept = Arc::new(Instances {
                    addresses: previous.addresses.clone(),
                    fetched: Some(now),
                });
                entry.instances.store(kept.clone());
                return Ok(kept);
            }
            Err(e) => return Err(e),
        };
        let suspects = {
            let mut s = entry
                .suspects
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            s.retain(|(_, until)| *until > now);
            s.iter().map(|(a, _)| a.clone()).collect::<Vec<_>>()
        };
        let all: Vec<Arc<str>> = addresses.into_iter().map(Arc::from).collect();
        let healthy: Vec<Arc<str>> = all
            .iter()
            .filter(|a| !suspects.contains(a))
            .cloned()
            .collect();
        let instances = Arc::new(Instances {
            addresses: if healthy.is_empty() { all } else { healthy },
            fetched: Some(now),
        });
        entry.instances.store(instances.clone());
        Ok(instances)
    }

    /// Sets `address` aside after a refused connection.
    pub(crate) fn failed(&self, app_id: &str, namespace: &str, address: &Arc<str>) {
        let entry = self.entry(app_id, namespace);
        entry
            .suspects
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((address.clone(), Instant::now() + SUSPECT_FOR));
        entry.instances.rcu(|i| {
            let rest: Vec<Arc<str>> = i
                .addresses
                .iter()
                .filter(|a| ***a != **address)
                .cloned()
                .collect();
            Instances {
                // A sole instance stays: calls to it fail either way, and succeed again as
                // soon as it is back.
                addresses: if rest.is_empty() {
                    i.addresses.clone()
                } else {
                    rest
                },
                fetched: i.fetched,
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use tandem_components::nameresolution::MemoryNameResolver;

    use super::*;

    async fn picks(d: &Directory, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        for _ in 0..n {
            match d.pick("b", "default").await.unwrap() {
                Some(p) => out.push(p.address.to_string()),
                None => out.push("-".into()),
            }
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn round_robin_cache_and_failed_instances() {
        let r = Arc::new(MemoryNameResolver::new());
        r.add("b", "default", "h:1");
        r.add("b", "default", "h:2");
        let d = Directory::new(r.clone());
        assert_eq!(picks(&d, 4).await, ["h:1", "h:2", "h:1", "h:2"]);

        // Changes in the resolver show up once the cached answer is older than the TTL.
        r.add("b", "default", "h:3");
        assert_eq!(picks(&d, 2).await, ["h:1", "h:2"]);
        tokio::time::advance(CACHE_TTL).await;
        let mut seen = picks(&d, 3).await;
        seen.sort();
        assert_eq!(seen, ["h:1", "h:2", "h:3"]);

        // A refused connection takes the instance out at once, and out of refreshed lists
        // until SUSPECT_FOR has passed.
        d.failed("b", "default", &Arc::from("h:2"));
        let seen = picks(&d, 4).await;
        assert!(!seen.contains(&"h:2".to_owned()), "{seen:?}");
        tokio::time::advance(CACHE_TTL).await;
        let seen = picks(&d, 4).await;
        assert!(!seen.contains(&"h:2".to_owned()), "{seen:?}");
        tokio::time::advance(SUSPECT_FOR).await;
        let seen = picks(&d, 3).await;
        assert!(seen.contains(&"h:2".to_owned()), "{seen:?}");

        // Unknown apps have no instance.
        assert!(d.pick("nope", "default").await.unwrap().is_none());
        assert!(d.pick("b", "prod").await.unwrap().is_none());
    }
}
