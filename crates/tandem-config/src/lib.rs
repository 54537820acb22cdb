//! Typed Dapr resources and their loading from folders. Pure: reads files, nothing else — no
//! network, no process environment (callers pass what they need).
//!
//! Map of the crate:
//! - [`load_resources`] / [`parse_resources`] (`loader.rs`): `--resources-path` folders →
//!   [`Resources`]. Picks `.yaml`/`.yml` files, splits documents, keeps known `apiVersion`/`kind`
//!   pairs, filters by namespace and `scopes`, rejects duplicate names, checks resiliency policy
//!   references and substitutes metadata templates (`{uuid}`, `{podName}`, `{namespace}`,
//!   `{appID}`).
//! - `component.rs`: [`Component`], [`MetadataItem`], [`MetadataValue`].
//! - `subscription.rs`: [`Subscription`] — `v1alpha1` and `v2alpha1` normalised into one shape.
//! - `resiliency.rs`: [`Resiliency`] — policies, targets, [`StatusCodes`].
//! - `http_endpoint.rs`: [`HttpEndpoint`].
//! - `configuration.rs`: [`Configuration`] and [`load_configuration`] (`--config`, with
//!   `$VAR` expansion from `expand.rs`).
//! - `de.rs`: the lenient decoding daprd users rely on (case-insensitive field names, any scalar
//!   as text, Go durations).
//! - `error.rs`: [`ConfigError`], which names file, document, resource and field, and never a
//!   metadata value.

mod component;
mod configuration;
mod de;
mod error;
mod expand;
mod http_endpoint;
mod loader;
mod resiliency;
mod subscription;

use std::fmt;
use std::path::{Path, PathBuf};

pub use component::{Component, MetadataItem, MetadataValue};
pub use configuration::{
    AccessAction, AccessControlSpec, ApiLoggingSpec, ApiRule, ApiSpec, AppOperation, AppPolicy,
    ComponentsSpec, Configuration, DEFAULT_FEATURES, DEFAULT_SAMPLING_RATE, FeatureSpec,
    HandlerSpec, LoggingSpec, MetricHttpSpec, MetricLabel, MetricRule, MetricSpec, MtlsSpec,
    NameResolutionSpec, OtelSpec, PipelineSpec, SecretScope, SecretsSpec, SelectorField,
    SelectorSpec, StateRetentionPolicy, TokenValidatorSpec, TracingSpec, WasmSpec, WorkflowSpec,
    ZipkinSpec, load_configuration, parse_configuration,
};
pub use error::ConfigError;
pub use expand::expand_env;
pub use http_endpoint::{ClientTls, HttpEndpoint, TlsRenegotiation};
pub use resiliency::{
    ActorCircuitBreakerScope, ActorTarget, AppTarget, BUILT_IN_RETRY_POLICIES, BackoffPolicy,
    CircuitBreakerPolicy, ComponentTarget, Policies, PolicyNames, Resiliency, RetryMatching,
    RetryPolicy, StatusCodes, Targets,
};
pub use subscription::{BulkSubscribe, RouteRule, Subscription};

/// Who is loading: used for scopes, namespace filtering and template substitution.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadContext {
    /// The app-id (`--app-id`): matched against `scopes`, substituted for `{appID}`.
    pub app_id: String,
    /// The namespace (`NAMESPACE`), when set: manifests of other namespaces are skipped.
    pub namespace: Option<String>,
    /// The pod name (`POD_NAME`), substituted for `{podName}`.
    pub pod_name: Option<String>,
}

impl LoadContext {
    /// A context for `app_id` with no namespace and no pod name.
    pub fn new(app_id: impl Into<String>) -> Self {
        Self {
            app_id: app_id.into(),
            namespace: None,
            pod_name: None,
        }
    }
}

/// Everything a resources folder holds for this app, in load order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    /// `Component` manifests.
    pub components: Vec<Component>,
    /// `Subscription` manifests (v1alpha1 and v2alpha1).
    pub subscriptions: Vec<Subscription>,
    /// `Resiliency` manifests.
    pub resiliencies: Vec<Resiliency>,
    /// `HTTPEndpoint` manifests.
    pub http_endpoints: Vec<HttpEndpoint>,
    /// Documents skipped (unknown apiVersion/kind, other namespace, scoped out), with why — the caller logs them.
    pub skipped: Vec<String>,
}

impl Resources {
    /// The component named `name`.
    pub fn component(&self, name: &str) -> Option<&Component> {
        self.components.iter().find(|c| c.name == name)
    }
}

/// Where a resource was read: the file and the 1-based document within it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Source {
    /// The file.
    pub file: PathBuf,
    /// The document, counted from 1.
    pub document: usize,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: document {}", self.file.display(), self.document)
    }
}

/// Loads every `.yaml`/`.yml` file directly in each folder of `paths` (not recursive, sorted by
/// file name), keeping what applies to `ctx`. A path that is missing or not a folder is an error.
pub fn load_resources(paths: &[PathBuf], ctx: &LoadContext) -> Result<Resources, ConfigError> {
    loader::load(paths, ctx)
}

/// Parses one YAML text (several documents) as if read from `file` (for tests and in-memory use).
pub fn parse_resources(
    text: &str,
    file: &Path,
    ctx: &LoadContext,
) -> Result<Resources, ConfigError> {
    let mut collector = loader::Collector::new(ctx);
    collector.add_text(text, file)?;
    collector.finish()
}

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;
