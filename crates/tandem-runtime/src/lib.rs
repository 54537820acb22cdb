//! The Tandem sidecar as a library.
//!
//! A [`Runtime`] is built from typed resources ([`tandem_config`]) and a component
//! [`registry::Registry`]; front ends (`tandem-api`) call its services. Each building block has
//! one service holding all of its logic:
//!
//! - [`state::StateService`]: state get / save / delete / bulk / transactions, key prefixing.
//! - [`secrets::SecretsService`]: secrets with the Configuration's secret scopes.
//! - [`metadata::MetadataService`]: `GET`/`PUT` metadata.
//! - [`bindings::BindingsService`]: output bindings; [`bindings::InputBindingManager`] delivers
//!   input bindings to the app.
//! - [`invoke::InvokeService`]: service invocation (local app, other sidecars through name
//!   resolution and the internal listener, HTTPEndpoints, URLs) and access control.
//! - [`security`]: mTLS between sidecars (SPIFFE workload certificates, the local CA).
//! - [`lifecycle`]: readiness (health endpoints) and the shutdown signal.
//!
//! [`error`] holds the one error table; [`components`] loads component definitions;
//! [`resiliency`] applies the `Resiliency` policies (timeouts, retries, circuit breakers) to
//! service invocation and to every component call.

pub mod app_channel;
pub mod bindings;
pub mod components;
pub mod error;
pub mod invoke;
pub mod lifecycle;
pub mod metadata;
pub mod metrics;
pub mod pubsub;
pub mod registry;
pub mod resiliency;
pub mod secrets;
pub mod security;
pub mod state;
pub mod trace;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

pub use error::{ApiError, ErrorCode};

use components::{ComponentError, Components, LiveComponents, LoadContext, ReloadReport};
use lifecycle::{Readiness, Shutdown};
use metadata::{AppConnectionInfo, MetadataService, MetadataSnapshot, SubscriptionInfo};
use registry::Registry;
use secrets::{SecretScope, SecretsService};
use state::StateService;

/// The version reported by the metadata API.
pub const RUNTIME_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Who the sidecar is and how it reaches its app.
#[derive(Clone, Debug, Default)]
pub struct RuntimeOptions {
    /// `--app-id`.
    pub app_id: String,
    /// `NAMESPACE`.
    pub namespace: Option<String>,
    /// App connection properties (for the metadata API).
    pub app_connection: AppConnectionInfo,
    /// The process environment, read once at start-up (for `envRef`).
    pub env: HashMap<String, String>,
    /// The app channel, when `--app-port` is set.
    pub app_channel: Option<app_channel::AppChannelOptions>,
    /// Service invocation: name resolution and this machine's identity.
    pub invoke: invoke::InvokeOptions,
    /// Where the services record their metrics (none: nothing is recorded).
    pub metrics: Option<Arc<metrics::Metrics>>,
}

/// The sidecar: every building-block service, readiness and shutdown.
pub struct Runtime {
    /// The app-id.
    pub app_id: String,
    /// State.
    pub state: Arc<StateService>,
    /// Output bindings.
    pub bindings: Arc<bindings::BindingsService>,
    /// Secrets.
    pub secrets: SecretsService,
    /// Metadata.
    pub metadata: Arc<MetadataService>,
    /// Pub/sub (publishing).
    pub pubsub: pubsub::PubSubService,
    /// Declarative subscriptions, started with the app channel.
    /// (Replaced whole by [`Runtime::reload_subscriptions`]; the running set follows.)
    pub declarative_subscriptions:
        tokio::sync::watch::Sender<Vec<pubsub::subscriptions::SubscriptionSpec>>,
    /// Messages handed to the app at once per subscription.
    pub max_in_flight: usize,
    /// Health.
    pub readiness: Readiness,
    /// Shutdown signal.
    pub shutdown: Shutdown,
    /// The channel to the app, when `--app-port` is set.
    pub app_channel: Option<Arc<app_channel::AppChannel>>,
    /// Service invocation.
    pub invoke: invoke::InvokeService,
    /// Every loaded component (swapped whole when definitions change).
    pub components: Arc<LiveComponents>,
    /// How components were loaded, to load changed definitions the same way.
    reload_context: Option<ReloadContext>,
    /// The resiliency policies, resolved per target.
    pub resiliency: Arc<resiliency::Resiliency>,
    /// The services' metrics.
    pub metrics: Arc<metrics::Metrics>,
    /// Distributed tracing (off unless built from a Configuration that enables it).
    pub tracer: trace::Tracer,
}

/// Why the runtime could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// A component failed to load.
    #[error(transparent)]
    Component(#[from] ComponentError),
    /// A Resiliency resource cannot be applied.
    #[error(transparent)]
    Resiliency(#[from] resiliency::ResiliencyError),
}

impl Runtime {
    /// Loads every component and builds the services.
    pub async fn build(
        options: RuntimeOptions,
        resources: &tandem_config::Resources,
        configuration: &tandem_config::Configuration,
        registry: &Registry,
    ) -> Result<Arc<Self>, StartupError> {
        let resiliency = Arc::new(resiliency::Resiliency::new(
            &resources.resiliencies,
            &options.app_id,
            &components::resiliency_targets(&resources.components),
        )?);
        let ctx = LoadContext {
            app_id: &options.app_id,
            namespace: options.namespace.as_deref(),
            env: &options.env,
            resiliency: &resiliency,
        };
        let loaded = components::load(&resources.components, registry, &ctx).await?;
        let metrics = options
            .metrics
            .clone()
            .unwrap_or_else(|| Arc::new(metrics::Metrics::disabled()));
        for c in &resources.components {
            match loaded.ignored.iter().find(|e| e.name == c.name) {
                Some(_) => metrics.component_init_failed(&c.type_name, "init", &c.name),
                None => metrics.component_initialized(&c.type_name),
            }
        }
        let components = Arc::new(loaded.components);
        let endpoints = invoke::load_endpoints(&resources.http_endpoints, &ctx, &components).await;
        let base = MetadataSnapshot {
            id: options.app_id.clone(),
            runtime_version: RUNTIME_VERSION.to_owned(),
            enabled_features: enabled_features(configuration),
            components: Vec::new(),
            extended: BTreeMap::from([(
                "daprRuntimeVersion".to_owned(),
                RUNTIME_VERSION.to_owned(),
            )]),
            subscriptions: resources
                .subscriptions
                .iter()
                .map(subscription_info)
                .collect(),
            http_endpoints: resources
                .http_endpoints
                .iter()
                .map(|e| e.name.clone())
                .collect(),
            app_connection: options.app_connection.clone(),
        };
        let mut runtime = Self::assemble(
            options.app_id,
            components,
            secret_scopes(configuration),
            base,
            resiliency.clone(),
            metrics,
        );
        runtime.reload_context = Some(ReloadContext {
            namespace: options.namespace.clone(),
            env: options.env.clone(),
            registry: registry.clone(),
        });
        runtime.declarative_subscriptions.send_replace(
            resources
                .subscriptions
                .iter()
                .map(pubsub::subscriptions::SubscriptionSpec::from_resource)
                .collect(),
        );
        if let Some(n) = options.app_channel.as_ref().and_then(|c| c.max_concurrency) {
            runtime.max_in_flight = n;
        }
        runtime.app_channel = options.app_channel.map(app_channel::AppChannel::new);
        if let Some(ch) = &runtime.app_channel {
            ch.set_metrics(runtime.metrics.clone());
        }
        let tracer = trace::Tracer::start(trace::Settings::resolve(
            &configuration.tracing,
            &options.env,
            &runtime.app_id,
        ));
        runtime.tracer = tracer.clone();
        runtime.pubsub.tracer = tracer.clone();
        runtime.invoke = invoke::InvokeService::new(invoke::Parts {
            app_id: &runtime.app_id,
            namespace: options.namespace.as_deref(),
            app_channel: runtime.app_channel.clone(),
            endpoints,
            access_control: Some(&configuration.access_control),
            options: options.invoke,
            resiliency,
            metrics: runtime.metrics.clone(),
            tracer,
        });
        Ok(Arc::new(runtime))
    }

    /// Builds a runtime around already-built components (tests and embedding).
    pub fn from_parts(
        app_id: String,
        components: Arc<Components>,
        scopes: HashMap<String, SecretScope>,
        base: MetadataSnapshot,
    ) -> Self {
        Self::assemble(
            app_id,
            components,
            scopes,
            base,
            Arc::new(resiliency::Resiliency::none()),
            Arc::new(metrics::Metrics::disabled()),
        )
    }

    fn assemble(
        app_id: String,
        components: Arc<Components>,
        scopes: HashMap<String, SecretScope>,
        base: MetadataSnapshot,
        resiliency: Arc<resiliency::Resiliency>,
        metrics: Arc<metrics::Metrics>,
    ) -> Self {
        let components = Arc::new(LiveComponents::new(components));
        Self {
            state: Arc::new(StateService::new(
                components.clone(),
                app_id.clone(),
                metrics.clone(),
            )),
            bindings: Arc::new(bindings::BindingsService::new(
                components.clone(),
                metrics.clone(),
            )),
            secrets: SecretsService::new(components.clone(), scopes, metrics.clone()),
            metadata: Arc::new(MetadataService::new(base, components.clone())),
            pubsub: pubsub::PubSubService::new(components.clone(), app_id.clone(), metrics.clone()),
            declarative_subscriptions: tokio::sync::watch::Sender::new(Vec::new()),
            max_in_flight: pubsub::subscriptions::DEFAULT_MAX_IN_FLIGHT,
            readiness: Readiness::default(),
            shutdown: Shutdown::default(),
            app_channel: None,
            invoke: invoke::InvokeService::minimal(&app_id),
            components,
            reload_context: None,
            resiliency,
            metrics,
            tracer: trace::Tracer::off(),
            app_id,
        }
    }
}

/// What loading a changed definition needs, kept from start-up.
struct ReloadContext {
    namespace: Option<String>,
    env: HashMap<String, String>,
    registry: Registry,
}

impl Runtime {
    /// Applies a new complete list of component definitions (hot reload): unchanged
    /// components stay as they are, changed ones are rebuilt, new ones loaded, missing ones
    /// removed; subscriptions and input bindings on changed pub/subs and bindings restart on
    /// the new component. A definition that fails to load is reported, never fatal.
    pub async fn reload_components(&self, defs: &[tandem_config::Component]) -> ReloadReport {
        let Some(rc) = &self.reload_context else {
            return ReloadReport::default();
        };
        let ctx = LoadContext {
            app_id: &self.app_id,
            namespace: rc.namespace.as_deref(),
            env: &rc.env,
            resiliency: &self.resiliency,
        };
        self.components.reload(defs, &rc.registry, &ctx).await
    }

    /// Applies a new complete list of declarative Subscription resources (hot reload):
    /// subscriptions that did not change keep running, removed ones stop, new and changed ones
    /// start. Returns whether anything changed.
    pub fn reload_subscriptions(&self, subscriptions: &[tandem_config::Subscription]) -> bool {
        let specs: Vec<pubsub::subscriptions::SubscriptionSpec> = subscriptions
            .iter()
            .map(pubsub::subscriptions::SubscriptionSpec::from_resource)
            .collect();
        self.declarative_subscriptions.send_if_modified(|current| {
            if *current == specs {
                false
            } else {
                *current = specs;
                true
            }
        })
    }

    /// Starts talking to the app (when `--app-port` is set): waits for its port, runs health
    /// checks, and keeps its subscriptions and input bindings running while it is healthy.
    /// Returns at once; the work runs in a background task that ends after the shutdown
    /// signal, once every in-flight delivery has been answered and acknowledged (await the
    /// returned handle to drain).
    pub fn start_app_channel(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        let channel = self.app_channel.clone()?;
        let rt = self.clone();
        Some(tokio::spawn(async move {
            channel.start(&rt.shutdown).await;
            let inputs = bindings::InputBindingManager {
                components: rt.components.clone(),
                channel: channel.clone(),
                state: rt.state.clone(),
                bindings: rt.bindings.clone(),
                tracer: rt.tracer.clone(),
            };
            let manager = pubsub::subscriptions::SubscriptionManager {
                components: rt.components.clone(),
                channel,
                declarative: rt.declarative_subscriptions.subscribe(),
                max_in_flight: rt.max_in_flight,
                metrics: rt.metrics.clone(),
                tracer: rt.tracer.clone(),
            };
            tokio::join!(
                inputs.run(&rt.shutdown),
                manager.run(rt.metadata.clone(), &rt.shutdown)
            );
        }))
    }
}

fn subscription_info(s: &tandem_config::Subscription) -> SubscriptionInfo {
    let mut rules: Vec<(String, String)> = s
        .rules
        .iter()
        .map(|r| (r.match_expr.clone(), r.path.clone()))
        .collect();
    if let Some(default) = &s.default_route {
        rules.push((String::new(), default.clone()));
    }
    SubscriptionInfo {
        pubsub_name: s.pubsub_name.clone(),
        topic: s.topic.clone(),
        metadata: s.metadata.clone(),
        rules,
        dead_letter_topic: s.dead_letter_topic.clone().unwrap_or_default(),
        kind: "DECLARATIVE",
    }
}

/// The features on: those the Configuration enables, then the ones on by default that it
/// does not turn off (daprd lists both).
fn enabled_features(configuration: &tandem_config::Configuration) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for f in configuration.features.iter().filter(|f| f.enabled) {
        if !out.contains(&f.name) && configuration.feature_enabled(&f.name) {
            out.push(f.name.clone());
        }
    }
    for name in tandem_config::DEFAULT_FEATURES {
        if configuration.feature_enabled(name) && !out.iter().any(|n| n == name) {
            out.push(name.to_owned());
        }
    }
    out
}

fn secret_scopes(configuration: &tandem_config::Configuration) -> HashMap<String, SecretScope> {
    configuration
        .secrets
        .scopes
        .iter()
        .map(|s| (s.store_name.clone(), s.clone()))
        .collect()
}
