//! Loading components from their definitions, and the set of loaded components.
//!
//! Order matters: secret stores are built first (deferring any whose own `secretKeyRef`s point
//! at a store not built yet), then every other component, concurrently, each under its
//! `initTimeout`. A failure is fatal unless the component sets `ignoreErrors`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tandem_components::Metadata;
use tandem_components::bindings::{Binding, InputBinding, OutputBinding};
use tandem_components::pubsub::PubSub;
use tandem_components::secrets::SecretStore;
use tandem_components::state::{self, RequestMetadata, StateStore};
use tandem_config::{Component, MetadataValue};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::registry::{Block, Registry};
use crate::resiliency::{ComponentKind, ComponentPolicies, Policy, Resiliency};

/// Dapr's default component `initTimeout`.
pub const DEFAULT_INIT_TIMEOUT: Duration = Duration::from_secs(5);

/// A component that failed to load, named with where it was defined.
#[derive(Debug, thiserror::Error)]
#[error("component {name} ({type_name}) defined in {file} document {document}: {reason}")]
pub struct ComponentError {
    /// Component name.
    pub name: String,
    /// Component type.
    pub type_name: String,
    /// The file that defined it.
    pub file: String,
    /// The document's 1-based index in that file.
    pub document: usize,
    /// What went wrong (never a metadata value).
    pub reason: String,
}

impl ComponentError {
    fn new(c: &Component, reason: impl Into<String>) -> Self {
        Self {
            name: c.name.clone(),
            type_name: c.type_name.clone(),
            file: c.source.file.display().to_string(),
            document: c.source.document,
            reason: reason.into(),
        }
    }
}

/// What `GET /v1.0/metadata` says about a loaded component.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ComponentInfo {
    /// `metadata.name`.
    pub name: String,
    /// `spec.type`.
    pub type_name: String,
    /// `spec.version` (`v1` when unset).
    pub version: String,
    /// Capability strings.
    pub capabilities: Vec<&'static str>,
}

/// How a state store's keys are prefixed (component metadata `keyPrefix`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyPrefix {
    /// Keys are stored as given.
    None,
    /// Keys are stored as `<prefix>||<key>`.
    Prefix(String),
}

pub(crate) struct StateEntry {
    pub(crate) store: Arc<dyn StateStore>,
    pub(crate) prefix: KeyPrefix,
    pub(crate) policies: ComponentPolicies,
}

pub(crate) struct SecretEntry {
    pub(crate) store: Arc<dyn SecretStore>,
    pub(crate) policies: ComponentPolicies,
}

/// A loaded pub/sub component and the runtime-level settings read from its metadata.
pub struct PubSubEntry {
    /// The component.
    pub component: Arc<dyn PubSub>,
    /// `consumerID`, defaulting to the app-id: the consumer group of this app's subscriptions.
    pub consumer_group: String,
    /// Its resiliency policies.
    pub policies: ComponentPolicies,
}

/// A loaded binding: the directions it serves (after `direction`) and its input route.
pub struct BindingEntry {
    /// The input side, when the component reads events and `direction` allows it.
    pub input: Option<Arc<dyn InputBinding>>,
    /// The output side, when the component performs operations and `direction` allows it.
    pub output: Option<Arc<dyn OutputBinding>>,
    /// Where input events are delivered: metadata `route`, or `/<name>`.
    pub route: String,
    /// Its resiliency policies.
    pub policies: ComponentPolicies,
}

impl StateEntry {
    pub(crate) fn outbound(&self) -> Option<&Policy> {
        self.policies.outbound.as_deref()
    }
}

impl SecretEntry {
    pub(crate) fn outbound(&self) -> Option<&Policy> {
        self.policies.outbound.as_deref()
    }
}

/// A component produced by a factory.
enum Built {
    State(Arc<dyn StateStore>),
    PubSub(Arc<dyn PubSub>),
    Binding(Binding),
}

/// Every loaded component, by name, per building block: one immutable set. The runtime holds
/// the current set in [`LiveComponents`], which swaps in a new set when definitions change.
#[derive(Clone, Default)]
pub struct Components {
    pub(crate) state: HashMap<String, Arc<StateEntry>>,
    pub(crate) secrets: HashMap<String, Arc<SecretEntry>>,
    pub(crate) pubsub: HashMap<String, Arc<PubSubEntry>>,
    pub(crate) bindings: HashMap<String, Arc<BindingEntry>>,
    pub(crate) infos: Vec<ComponentInfo>,
    /// The definitions the loaded components were built from (for reloads).
    pub(crate) defs: HashMap<String, Component>,
}

/// The components in use, replaced as a whole when definitions change (hot reload). Readers
/// take the current set without locking; a request keeps the component it started with.
pub struct LiveComponents {
    current: ArcSwap<Components>,
    generation: watch::Sender<u64>,
    reload: tokio::sync::Mutex<()>,
}

impl LiveComponents {
    /// Starts with `set`.
    pub fn new(set: Arc<Components>) -> Self {
        Self {
            current: ArcSwap::new(set),
            generation: watch::Sender::new(0),
            reload: tokio::sync::Mutex::new(()),
        }
    }

    /// The current set, for a short look (no reference count taken on the fast path).
    pub fn load(&self) -> arc_swap::Guard<Arc<Components>> {
        self.current.load()
    }

    /// The current set, to keep.
    pub fn snapshot(&self) -> Arc<Components> {
        self.current.load_full()
    }

    /// Changes whenever a new set is swapped in.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Applies a new complete list of definitions: see [`reload`].
    pub async fn reload(
        &self,
        defs: &[Component],
        registry: &Registry,
        ctx: &LoadContext<'_>,
    ) -> ReloadReport {
        reload(self, defs, registry, ctx).await
    }

    fn swap(&self, set: Components) {
        self.current.store(Arc::new(set));
        self.generation.send_modify(|g| *g += 1);
    }
}

/// What a reload changed.
#[derive(Debug, Default)]
pub struct ReloadReport {
    /// Components loaded for the first time.
    pub added: Vec<String>,
    /// Components rebuilt from a changed definition.
    pub updated: Vec<String>,
    /// Components removed.
    pub removed: Vec<String>,
    /// Components whose new definition failed to load (the previous one, if any, stays).
    pub failed: Vec<ComponentError>,
}

impl ReloadReport {
    /// Whether nothing changed and nothing failed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.updated.is_empty()
            && self.removed.is_empty()
            && self.failed.is_empty()
    }
}

/// Whether two definitions describe the same component (where they were read aside).
fn same_definition(a: &Component, b: &Component) -> bool {
    a.name == b.name
        && a.namespace == b.namespace
        && a.type_name == b.type_name
        && a.version == b.version
        && a.ignore_errors == b.ignore_errors
        && a.init_timeout == b.init_timeout
        && a.metadata == b.metadata
        && a.secret_store == b.secret_store
        && a.scopes == b.scopes
}

/// Applies a new complete list of definitions to `live`: unchanged components are kept as
/// they are (connections and circuit breakers included), changed ones are rebuilt, new ones
/// built, missing ones dropped (closed once the last request using them ends). A definition
/// that fails to load is reported and leaves its previous version in place.
pub async fn reload(
    live: &LiveComponents,
    defs: &[Component],
    registry: &Registry,
    ctx: &LoadContext<'_>,
) -> ReloadReport {
    let _guard = live.reload.lock().await;
    let current = live.snapshot();
    let mut report = ReloadReport::default();
    let mut to_build: Vec<Component> = Vec::new();
    for d in defs {
        match current.defs.get(&d.name) {
            Some(old) if same_definition(old, d) => {}
            Some(_) => {
                report.updated.push(d.name.clone());
                to_build.push(d.clone());
            }
            None => {
                report.added.push(d.name.clone());
                to_build.push(d.clone());
            }
        }
    }
    for name in current.defs.keys() {
        if !defs.iter().any(|d| &d.name == name) {
            report.removed.push(name.clone());
        }
    }
    if report.is_empty() {
        return report;
    }
    // A changed secret store changes what other components' secretKeyRefs resolve to:
    // rebuild those too.
    let changed_stores: Vec<String> = to_build
        .iter()
        .filter(|c| Registry::block_of(&c.type_name) == Some(Block::SecretStore))
        .map(|c| c.name.clone())
        .chain(report.removed.iter().cloned())
        .collect();
    for d in defs {
        if has_secret_refs(d)
            && d.secret_store
                .as_deref()
                .is_some_and(|s| changed_stores.iter().any(|c| c == s))
            && !to_build.iter().any(|b| b.name == d.name)
        {
            report.updated.push(d.name.clone());
            to_build.push(d.clone());
        }
    }
    let mut base = current.without(
        report
            .removed
            .iter()
            .chain(report.updated.iter())
            .map(String::as_str),
    );
    // Failures must not stop the sidecar: load each definition as if `ignoreErrors` were set
    // and keep the previous version of any that fails.
    let lenient: Vec<Component> = to_build
        .iter()
        .cloned()
        .map(|mut c| {
            c.ignore_errors = true;
            c
        })
        .collect();
    let mut loaded =
        match load_into(Components::default(), &lenient, registry, ctx, Some(&base)).await {
            Ok(l) => l,
            Err(e) => {
                // Not reachable with ignoreErrors set everywhere; keep everything as it was.
                report.failed.push(e);
                return report;
            }
        };
    for err in loaded.ignored.drain(..) {
        let name = err.name.clone();
        report.added.retain(|n| *n != name);
        report.updated.retain(|n| *n != name);
        if let Some(old) = current.defs.get(&name) {
            base.keep_from(&current, old);
        }
        report.failed.push(err);
    }
    for (name, mut def) in loaded.components.defs.drain() {
        def.ignore_errors = to_build
            .iter()
            .find(|c| c.name == name)
            .is_some_and(|c| c.ignore_errors);
        base.defs.insert(name, def);
    }
    base.merge(loaded.components);
    live.swap(base);
    report
}

impl Components {
    /// What the metadata API lists.
    pub fn infos(&self) -> &[ComponentInfo] {
        &self.infos
    }

    /// This set without the components `names`.
    fn without<'a>(&self, names: impl Iterator<Item = &'a str>) -> Self {
        let mut out = self.clone();
        for name in names {
            out.state.remove(name);
            out.secrets.remove(name);
            out.pubsub.remove(name);
            out.bindings.remove(name);
            out.defs.remove(name);
            out.infos.retain(|i| i.name != name);
        }
        out
    }

    /// Puts `def`'s component of `from` back into this set.
    fn keep_from(&mut self, from: &Self, def: &Component) {
        let name = &def.name;
        if let Some(e) = from.state.get(name) {
            self.state.insert(name.clone(), e.clone());
        }
        if let Some(e) = from.secrets.get(name) {
            self.secrets.insert(name.clone(), e.clone());
        }
        if let Some(e) = from.pubsub.get(name) {
            self.pubsub.insert(name.clone(), e.clone());
        }
        if let Some(e) = from.bindings.get(name) {
            self.bindings.insert(name.clone(), e.clone());
        }
        if let Some(i) = from.infos.iter().find(|i| &i.name == name) {
            self.infos.push(i.clone());
        }
        self.defs.insert(name.clone(), def.clone());
    }

    /// Adds every component of `other` (its definitions are taken separately).
    fn merge(&mut self, other: Self) {
        self.state.extend(other.state);
        self.secrets.extend(other.secrets);
        self.pubsub.extend(other.pubsub);
        self.bindings.extend(other.bindings);
        self.infos.extend(other.infos);
    }

    /// The secret store `name`, here or in `fallback` (the set a reload builds upon).
    fn secret_store<'a>(
        &'a self,
        name: &str,
        fallback: Option<&'a Components>,
    ) -> Option<&'a Arc<SecretEntry>> {
        self.secrets
            .get(name)
            .or_else(|| fallback.and_then(|f| f.secrets.get(name)))
    }

    /// Adds a state store built outside the loader (tests, embedded use).
    pub fn insert_state(
        &mut self,
        name: &str,
        type_name: &str,
        store: Arc<dyn StateStore>,
        prefix: KeyPrefix,
    ) {
        self.infos.push(ComponentInfo {
            name: name.to_owned(),
            type_name: type_name.to_owned(),
            version: "v1".into(),
            capabilities: state::capabilities(&*store),
        });
        self.state.insert(
            name.to_owned(),
            Arc::new(StateEntry {
                store,
                prefix,
                policies: ComponentPolicies::default(),
            }),
        );
    }

    /// The loaded pub/sub components.
    pub fn pubsubs(&self) -> &HashMap<String, Arc<PubSubEntry>> {
        &self.pubsub
    }

    /// The loaded bindings.
    pub fn bindings(&self) -> &HashMap<String, Arc<BindingEntry>> {
        &self.bindings
    }

    /// Adds a secret store built outside the loader.
    pub fn insert_secret_store(
        &mut self,
        name: &str,
        type_name: &str,
        store: Arc<dyn SecretStore>,
    ) {
        self.infos.push(ComponentInfo {
            name: name.to_owned(),
            type_name: type_name.to_owned(),
            version: "v1".into(),
            capabilities: store.features().to_vec(),
        });
        self.secrets.insert(
            name.to_owned(),
            Arc::new(SecretEntry {
                store,
                policies: ComponentPolicies::default(),
            }),
        );
    }
}

/// Every definition's name and kind, for resolving resiliency policies before loading.
pub fn resiliency_targets(defs: &[Component]) -> Vec<(&str, ComponentKind)> {
    defs.iter()
        .filter_map(|c| {
            let kind = match Registry::block_of(&c.type_name)? {
                Block::State => ComponentKind::Statestore,
                Block::SecretStore => ComponentKind::Secretstore,
                Block::PubSub => ComponentKind::Pubsub,
                Block::Binding => ComponentKind::Binding,
            };
            Some((c.name.as_str(), kind))
        })
        .collect()
}

/// What the loader needs besides the definitions.
pub struct LoadContext<'a> {
    /// The sidecar's app-id.
    pub app_id: &'a str,
    /// `NAMESPACE`, when set.
    pub namespace: Option<&'a str>,
    /// The sidecar's environment (for `envRef`).
    pub env: &'a HashMap<String, String>,
    /// The resiliency policies, attached to each component as it is loaded.
    pub resiliency: &'a Resiliency,
}

/// Outcome of loading: the components, and non-fatal failures (`ignoreErrors`).
pub struct Loaded {
    /// The loaded set.
    pub components: Components,
    /// Components skipped because of `ignoreErrors: true`.
    pub ignored: Vec<ComponentError>,
}

/// Builds every component in `defs`.
pub async fn load(
    defs: &[Component],
    registry: &Registry,
    ctx: &LoadContext<'_>,
) -> Result<Loaded, ComponentError> {
    load_into(Components::default(), defs, registry, ctx, None).await
}

/// Builds every component in `defs` into `out`; secret stores of `existing` (the set a
/// reload builds upon) serve `secretKeyRef`s too.
async fn load_into(
    mut out: Components,
    defs: &[Component],
    registry: &Registry,
    ctx: &LoadContext<'_>,
    existing: Option<&Components>,
) -> Result<Loaded, ComponentError> {
    let mut ignored = Vec::new();
    let mut fail = |c: &Component, err: ComponentError| -> Result<(), ComponentError> {
        if c.ignore_errors {
            tracing::warn!(component = %c.name, error = %err, "component failed to load; ignoreErrors is set, continuing");
            ignored.push(err);
            Ok(())
        } else {
            Err(err)
        }
    };

    let (secret_defs, other_defs): (Vec<&Component>, Vec<&Component>) = defs
        .iter()
        .partition(|c| Registry::block_of(&c.type_name) == Some(Block::SecretStore));

    // Secret stores, in rounds: a store referencing a store not built yet waits for it.
    let mut pending = secret_defs;
    loop {
        let mut progress = false;
        let mut waiting = Vec::new();
        for c in pending {
            let refs_ready = !has_secret_refs(c)
                || c.secret_store
                    .as_deref()
                    .is_some_and(|s| out.secret_store(s, existing).is_some());
            let refs_possible = c
                .secret_store
                .as_deref()
                .is_some_and(|s| defs.iter().any(|d| d.name == s));
            if !refs_ready && refs_possible {
                waiting.push(c);
                continue;
            }
            progress = true;
            match build_secret_store(c, registry, ctx, &out, existing).await {
                Ok(store) => out.insert_secret_store_from(c, store, ctx),
                Err(e) => fail(c, e)?,
            }
        }
        if waiting.is_empty() {
            break;
        }
        if !progress {
            for c in waiting {
                let err = ComponentError::new(
                    c,
                    "its secret store depends on a secret store that cannot be loaded (a cycle?)",
                );
                fail(c, err)?;
            }
            break;
        }
        pending = waiting;
    }

    // Everything else, concurrently.
    let mut tasks = JoinSet::new();
    for (idx, c) in other_defs.iter().enumerate() {
        let prepared = prepare(c, registry, ctx, &out, existing).await;
        match prepared {
            Ok(fut) => {
                let timeout = c.init_timeout.unwrap_or(DEFAULT_INIT_TIMEOUT);
                tasks.spawn(async move { (idx, tokio::time::timeout(timeout, fut).await) });
            }
            Err(e) => fail(c, e)?,
        }
    }
    let mut built: Vec<(usize, Built)> = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (idx, res) = match joined {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "component build task failed");
                continue;
            }
        };
        let c = other_defs[idx];
        match res {
            Ok(Ok(store)) => built.push((idx, store)),
            Ok(Err(e)) => fail(c, ComponentError::new(c, format!("init failed: {e}")))?,
            Err(_) => fail(
                c,
                ComponentError::new(
                    c,
                    format!(
                        "init timed out after {:?} (spec.initTimeout)",
                        c.init_timeout.unwrap_or(DEFAULT_INIT_TIMEOUT)
                    ),
                ),
            )?,
        }
    }
    built.sort_by_key(|(idx, _)| *idx);
    for (idx, mut component) in built {
        let c = other_defs[idx];
        let meta = resolve_plain(c, ctx);
        if let Built::Binding(b) = &mut component
            && let Err(reason) = apply_direction(b, &meta)
        {
            fail(c, ComponentError::new(c, reason))?;
            continue;
        }
        let capabilities = match &component {
            Built::State(store) => state::capabilities(&**store),
            Built::PubSub(p) => p.features().iter().map(|f| f.as_str()).collect(),
            Built::Binding(b) => {
                let mut caps = Vec::new();
                if b.input.is_some() {
                    caps.push("INPUT_BINDING");
                }
                if b.output.is_some() {
                    caps.push("OUTPUT_BINDING");
                }
                caps
            }
        };
        out.infos.push(ComponentInfo {
            name: c.name.clone(),
            type_name: c.type_name.clone(),
            version: version_of(c),
            capabilities,
        });
        // A backend that is down does not stop the sidecar: components connect lazily and
        // reconnect by themselves; say so once, without waiting for it.
        let probe = match &component {
            Built::State(store) => {
                let store = store.clone();
                Some(tokio::spawn(async move { store.ping().await }))
            }
            Built::PubSub(_) | Built::Binding(_) => None,
        };
        if let Some(probe) = probe {
            let name = c.name.clone();
            let timeout = c.init_timeout.unwrap_or(DEFAULT_INIT_TIMEOUT);
            tokio::spawn(async move {
                match tokio::time::timeout(timeout, probe).await {
                    Ok(Ok(Ok(()))) => {}
                    Ok(Ok(Err(e))) => {
                        tracing::error!(component = %name, error = %e, "backend unreachable; calls fail until it answers")
                    }
                    Ok(Err(_)) => {}
                    Err(_) => {
                        tracing::error!(component = %name, "backend did not answer within initTimeout; calls fail until it answers")
                    }
                }
            });
        }
        out.defs.insert(c.name.clone(), c.clone());
        match component {
            Built::State(store) => {
                let prefix = key_prefix(&meta, c, ctx);
                let policies = ctx
                    .resiliency
                    .component_policies(&c.name, ComponentKind::Statestore);
                out.state.insert(
                    c.name.clone(),
                    Arc::new(StateEntry {
                        store,
                        prefix,
                        policies,
                    }),
                );
            }
            Built::PubSub(component) => {
                let consumer_group = meta.get("consumerID").unwrap_or(ctx.app_id).to_owned();
                let policies = ctx
                    .resiliency
                    .component_policies(&c.name, ComponentKind::Pubsub);
                out.pubsub.insert(
                    c.name.clone(),
                    Arc::new(PubSubEntry {
                        component,
                        consumer_group,
                        policies,
                    }),
                );
            }
            Built::Binding(b) => {
                let route = meta
                    .get("route")
                    .filter(|r| !r.trim().is_empty())
                    .map_or_else(|| format!("/{}", c.name), str::to_owned);
                let route = if route.starts_with('/') {
                    route
                } else {
                    format!("/{route}")
                };
                let policies = ctx
                    .resiliency
                    .component_policies(&c.name, ComponentKind::Binding);
                out.bindings.insert(
                    c.name.clone(),
                    Arc::new(BindingEntry {
                        input: b.input,
                        output: b.output,
                        route,
                        policies,
                    }),
                );
            }
        }
    }
    Ok(Loaded {
        components: out,
        ignored,
    })
}

impl Components {
    fn insert_secret_store_from(
        &mut self,
        c: &Component,
        store: Arc<dyn SecretStore>,
        ctx: &LoadContext<'_>,
    ) {
        self.infos.push(ComponentInfo {
            name: c.name.clone(),
            type_name: c.type_name.clone(),
            version: version_of(c),
            capabilities: store.features().to_vec(),
        });
        let policies = ctx
            .resiliency
            .component_policies(&c.name, ComponentKind::Secretstore);
        self.secrets
            .insert(c.name.clone(), Arc::new(SecretEntry { store, policies }));
        self.defs.insert(c.name.clone(), c.clone());
    }
}

fn version_of(c: &Component) -> String {
    if c.version.is_empty() {
        "v1".into()
    } else {
        c.version.clone()
    }
}

fn has_secret_refs(c: &Component) -> bool {
    c.metadata
        .iter()
        .any(|m| matches!(m.value, MetadataValue::SecretKeyRef { .. }))
}

async fn build_secret_store(
    c: &Component,
    registry: &Registry,
    ctx: &LoadContext<'_>,
    loaded: &Components,
    existing: Option<&Components>,
) -> Result<Arc<dyn SecretStore>, ComponentError> {
    let factory = registry
        .secret_factory(&c.type_name, &c.version)
        .ok_or_else(|| unknown_type(c))?
        .clone();
    let meta = resolve_metadata(c, ctx, loaded, existing).await?;
    let timeout = c.init_timeout.unwrap_or(DEFAULT_INIT_TIMEOUT);
    match tokio::time::timeout(timeout, factory(meta)).await {
        Ok(Ok(store)) => Ok(store),
        Ok(Err(e)) => Err(ComponentError::new(c, format!("init failed: {e}"))),
        Err(_) => Err(ComponentError::new(
            c,
            format!("init timed out after {timeout:?} (spec.initTimeout)"),
        )),
    }
}

async fn prepare(
    c: &Component,
    registry: &Registry,
    ctx: &LoadContext<'_>,
    loaded: &Components,
    existing: Option<&Components>,
) -> Result<crate::registry::BuildFuture<Built>, ComponentError> {
    match Registry::block_of(&c.type_name) {
        Some(Block::State) => {
            let factory = registry
                .state_factory(&c.type_name, &c.version)
                .ok_or_else(|| unknown_type(c))?
                .clone();
            let meta = resolve_metadata(c, ctx, loaded, existing).await?;
            let fut = factory(meta);
            Ok(Box::pin(async move { fut.await.map(Built::State) }))
        }
        Some(Block::PubSub) => {
            let factory = registry
                .pubsub_factory(&c.type_name, &c.version)
                .ok_or_else(|| unknown_type(c))?
                .clone();
            let meta = resolve_metadata(c, ctx, loaded, existing).await?;
            let fut = factory(meta);
            Ok(Box::pin(async move { fut.await.map(Built::PubSub) }))
        }
        Some(Block::Binding) => {
            let factory = registry
                .binding_factory(&c.type_name, &c.version)
                .ok_or_else(|| unknown_type(c))?
                .clone();
            let meta = resolve_metadata(c, ctx, loaded, existing).await?;
            let fut = factory(meta);
            Ok(Box::pin(async move { fut.await.map(Built::Binding) }))
        }
        _ => Err(unknown_type(c)),
    }
}

/// Keeps the directions the component's `direction` metadata names (all it implements when
/// unset); naming a direction the component does not implement is an error.
fn apply_direction(b: &mut Binding, meta: &Metadata) -> Result<(), String> {
    let Some(direction) = meta.get("direction").filter(|d| !d.trim().is_empty()) else {
        return Ok(());
    };
    let (mut input, mut output) = (false, false);
    for d in direction.split(',').map(|d| d.trim().to_ascii_lowercase()) {
        match d.as_str() {
            "input" => input = true,
            "output" => output = true,
            "" => {}
            other => {
                return Err(format!(
                    "invalid direction '{other}': expected input, output or both"
                ));
            }
        }
    }
    if input && b.input.is_none() {
        return Err("direction 'input' is set but this binding has no input side".into());
    }
    if output && b.output.is_none() {
        return Err("direction 'output' is set but this binding has no output side".into());
    }
    if !input {
        b.input = None;
    }
    if !output {
        b.output = None;
    }
    Ok(())
}

fn unknown_type(c: &Component) -> ComponentError {
    ComponentError::new(
        c,
        format!(
            "unknown component type {}/{}: this build of Tandem does not provide it",
            c.type_name,
            version_of(c)
        ),
    )
}

fn base_metadata(c: &Component, ctx: &LoadContext<'_>) -> Metadata {
    let mut meta = Metadata::new(c.name.clone(), ctx.app_id);
    meta.namespace = ctx.namespace.map(str::to_owned);
    meta
}

/// Metadata with plain values only (secret references left out): for runtime-level keys.
fn resolve_plain(c: &Component, ctx: &LoadContext<'_>) -> Metadata {
    let mut meta = base_metadata(c, ctx);
    for item in &c.metadata {
        if let MetadataValue::Value(v) = &item.value {
            meta.insert(item.name.clone(), v.clone());
        }
    }
    meta
}

/// Resolves a definition's metadata: literal values, `envRef`s and `secretKeyRef`s (from the
/// definition's `auth.secretStore`, among the stores already `loaded`). Also used for the
/// headers of `HTTPEndpoint` resources.
pub(crate) async fn resolve_metadata(
    c: &Component,
    ctx: &LoadContext<'_>,
    loaded: &Components,
    existing: Option<&Components>,
) -> Result<Metadata, ComponentError> {
    let mut meta = base_metadata(c, ctx);
    for item in &c.metadata {
        let value = match &item.value {
            MetadataValue::Value(v) => v.clone(),
            MetadataValue::EnvRef(var) => env_ref(var, ctx.env).map_err(|reason| {
                ComponentError::new(c, format!("metadata field '{}': {reason}", item.name))
            })?,
            MetadataValue::SecretKeyRef { name, key } => {
                let store_name = c.secret_store.as_deref().ok_or_else(|| {
                    ComponentError::new(
                        c,
                        format!(
                            "metadata field '{}' has a secretKeyRef but the component sets no auth.secretStore",
                            item.name
                        ),
                    )
                })?;
                let store = loaded.secret_store(store_name, existing).ok_or_else(|| {
                    ComponentError::new(
                        c,
                        format!(
                            "metadata field '{}': secret store '{store_name}' is not loaded",
                            item.name
                        ),
                    )
                })?;
                let mut req_meta = RequestMetadata::new();
                if let Some(ns) = ctx.namespace {
                    req_meta.insert("namespace".into(), ns.to_owned());
                }
                let secret = store.store.get(name, &req_meta).await.map_err(|e| {
                    ComponentError::new(
                        c,
                        format!(
                            "metadata field '{}': cannot read secret '{name}' from secret store '{store_name}': {e}",
                            item.name
                        ),
                    )
                })?;
                secret.get(key).cloned().ok_or_else(|| {
                    ComponentError::new(
                        c,
                        format!(
                            "metadata field '{}': secret '{name}' in secret store '{store_name}' has no key '{key}'",
                            item.name
                        ),
                    )
                })?
            }
        };
        meta.insert(item.name.clone(), value);
    }
    Ok(meta)
}

fn env_ref(var: &str, env: &HashMap<String, String>) -> Result<String, String> {
    if var == "APP_API_TOKEN" || var.starts_with("DAPR_") || var.contains(' ') {
        return Err(format!("envRef to '{var}' is not allowed"));
    }
    if let Some(allow) = env.get("DAPR_ENV_KEYS")
        && !allow.split([',', ' ']).any(|k| k.trim() == var)
    {
        return Err(format!("envRef '{var}' is not listed in DAPR_ENV_KEYS"));
    }
    Ok(env.get(var).cloned().unwrap_or_default())
}

fn key_prefix(meta: &Metadata, c: &Component, ctx: &LoadContext<'_>) -> KeyPrefix {
    match meta.get("keyPrefix").map(str::to_owned) {
        None => KeyPrefix::Prefix(ctx.app_id.to_owned()),
        Some(p) => match p.to_ascii_lowercase().as_str() {
            "appid" => KeyPrefix::Prefix(ctx.app_id.to_owned()),
            "name" => KeyPrefix::Prefix(c.name.clone()),
            "none" => KeyPrefix::None,
            "namespace" => match ctx.namespace {
                Some(ns) => KeyPrefix::Prefix(format!("{ns}.{}", ctx.app_id)),
                None => KeyPrefix::Prefix(ctx.app_id.to_owned()),
            },
            _ => KeyPrefix::Prefix(p),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defs(yaml: &str) -> Vec<Component> {
        tandem_config::parse_resources(
            yaml,
            std::path::Path::new("test.yaml"),
            &tandem_config::LoadContext::new("app"),
        )
        .unwrap()
        .components
    }

    fn doc(name: &str, type_name: &str, extra: &str) -> String {
        format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: {name}\nspec:\n  type: {type_name}\n  version: v1\n  metadata:\n  - name: x\n    value: \"{extra}\"\n---\n"
        )
    }

    #[tokio::test]
    async fn reload_adds_rebuilds_and_drops_components() {
        let mut registry = Registry::new();
        registry.state(&["state.in-memory"], "v1", |m| async move {
            tandem_components::memory::InMemoryStateStore::build(&m).await
        });
        let env = HashMap::new();
        let resiliency = Resiliency::none();
        let ctx = LoadContext {
            app_id: "app",
            namespace: None,
            env: &env,
            resiliency: &resiliency,
        };
        let first = defs(&(doc("a", "state.in-memory", "1") + &doc("b", "state.in-memory", "1")));
        let loaded = load(&first, &registry, &ctx).await.unwrap();
        let live = LiveComponents::new(Arc::new(loaded.components));
        let a_before = live.load().state["a"].store.clone();
        let b_before = live.load().state["b"].store.clone();

        // The same definitions, read from another place: nothing to do.
        let report = live.reload(&first, &registry, &ctx).await;
        assert!(report.is_empty(), "{report:?}");

        let second = defs(
            &(doc("a", "state.in-memory", "2")
                + &doc("c", "state.in-memory", "1")
                + &doc("d", "state.nope", "1")),
        );
        let report = live.reload(&second, &registry, &ctx).await;
        assert_eq!(report.added, ["c"]);
        assert_eq!(report.updated, ["a"]);
        assert_eq!(report.removed, ["b"]);
        assert_eq!(report.failed.len(), 1);
        assert_eq!(report.failed[0].name, "d");
        let now = live.load();
        let mut names: Vec<&str> = now.state.keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["a", "c"]);
        let mut infos: Vec<&str> = now.infos().iter().map(|i| i.name.as_str()).collect();
        infos.sort_unstable();
        assert_eq!(infos, ["a", "c"]);
        assert!(
            !Arc::ptr_eq(&now.state["a"].store, &a_before),
            "a is rebuilt"
        );
        // A call that still holds the dropped store can finish on it.
        drop(b_before);

        // A definition that fails to build keeps the version that runs.
        let third = defs(&(doc("a", "state.nope", "3") + &doc("c", "state.in-memory", "1")));
        let a_running = live.load().state["a"].store.clone();
        let report = live.reload(&third, &registry, &ctx).await;
        assert_eq!(report.failed.len(), 1);
        assert!(report.updated.is_empty() && report.added.is_empty());
        assert!(Arc::ptr_eq(&live.load().state["a"].store, &a_running));
    }

    #[test]
    fn env_refs_follow_daprs_rules() {
        let mut env = HashMap::new();
        env.insert("MY_HOST".to_owned(), "h".to_owned());
        assert_eq!(env_ref("MY_HOST", &env).unwrap(), "h");
        assert_eq!(env_ref("UNSET", &env).unwrap(), "");
        assert!(env_ref("DAPR_API_TOKEN", &env).is_err());
        assert!(env_ref("APP_API_TOKEN", &env).is_err());
        env.insert("DAPR_ENV_KEYS".to_owned(), "OTHER".to_owned());
        assert!(env_ref("MY_HOST", &env).is_err());
    }
}
