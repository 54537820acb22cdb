//! The Tandem sidecar as a library.
//!
//! A [`Runtime`] is built from typed resources ([`tandem_config`]) and a component
//! [`registry::Registry`]; front ends (`tandem-api`) call its services. Each building block has
//! one service holding all of its logic:
//!
//! - [`state::StateService`]: state get / save / delete / bulk / transactions, key prefixing.
//! - [`secrets::SecretsService`]: secrets with the Configuration's secret scopes.
//! - [`metadata::MetadataService`]: `GET`/`PUT` metadata.
//! - [`lifecycle`]: readiness (health endpoints) and the shutdown signal.
//!
//! [`error`] holds the one error table; [`components`] loads component definitions.

pub mod app_channel;
pub mod components;
pub mod error;
pub mod lifecycle;
pub mod metadata;
pub mod registry;
pub mod secrets;
pub mod state;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

pub use error::{ApiError, ErrorCode};

use components::{ComponentError, Components, LoadContext};
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
}

/// The sidecar: every building-block service, readiness and shutdown.
pub struct Runtime {
    /// The app-id.
    pub app_id: String,
    /// State.
    pub state: StateService,
    /// Secrets.
    pub secrets: SecretsService,
    /// Metadata.
    pub metadata: MetadataService,
    /// Health.
    pub readiness: Readiness,
    /// Shutdown signal.
    pub shutdown: Shutdown,
    /// The channel to the app, when `--app-port` is set.
    pub app_channel: Option<Arc<app_channel::AppChannel>>,
    /// Every loaded component.
    pub components: Arc<Components>,
}

/// Why the runtime could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// A component failed to load.
    #[error(transparent)]
    Component(#[from] ComponentError),
}

impl Runtime {
    /// Loads every component and builds the services.
    pub async fn build(
        options: RuntimeOptions,
        resources: &tandem_config::Resources,
        configuration: &tandem_config::Configuration,
        registry: &Registry,
    ) -> Result<Arc<Self>, StartupError> {
        let ctx = LoadContext {
            app_id: &options.app_id,
            namespace: options.namespace.as_deref(),
            env: &options.env,
        };
        let loaded = components::load(&resources.components, registry, &ctx).await?;
        let components = Arc::new(loaded.components);
        let base = MetadataSnapshot {
            id: options.app_id.clone(),
            runtime_version: RUNTIME_VERSION.to_owned(),
            enabled_features: configuration
                .features
                .iter()
                .filter(|f| f.enabled)
                .map(|f| f.name.clone())
                .collect(),
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
        let mut runtime = Self::from_parts(options.app_id, components, secret_scopes(configuration), base);
        runtime.app_channel = options.app_channel.map(app_channel::AppChannel::new);
        Ok(Arc::new(runtime))
    }

    /// Builds a runtime around already-built components (tests and embedding).
    pub fn from_parts(
        app_id: String,
        components: Arc<Components>,
        scopes: HashMap<String, SecretScope>,
        base: MetadataSnapshot,
    ) -> Self {
        Self {
            state: StateService::new(components.clone(), app_id.clone()),
            secrets: SecretsService::new(components.clone(), scopes),
            metadata: MetadataService::new(base, components.clone()),
            readiness: Readiness::default(),
            shutdown: Shutdown::default(),
            app_channel: None,
            components,
            app_id,
        }
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

fn secret_scopes(configuration: &tandem_config::Configuration) -> HashMap<String, SecretScope> {
    configuration
        .secrets
        .scopes
        .iter()
        .map(|s| (s.store_name.clone(), s.clone()))
        .collect()
}
