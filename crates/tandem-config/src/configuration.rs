//! `Configuration` (`dapr.io/v1alpha1`), passed with `--config` (§6.5).
//!
//! Every field is optional; absent fields keep daprd's defaults ([`Configuration::default`]).
//! Unknown fields are ignored, as daprd does. Several files are applied on top of each other in
//! order, field by field (daprd decodes each file into the same struct).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use serde_norway::Value;

use crate::component::{MetadataItem, MetadataValue, RawNameValue};
use crate::de::{self, from_value, get_field};
use crate::error::{ConfigError, FieldError};
use crate::expand::expand_env;
use crate::loader::split_documents;

/// Feature flags that are on unless a configuration turns them off (Dapr 1.18).
pub const DEFAULT_FEATURES: [&str; 2] = ["HotReload", "WorkflowsRemoteActivityReminder"];

/// The sampling rate used when `tracing.samplingRate` is empty or not a number.
pub const DEFAULT_SAMPLING_RATE: f64 = 0.0001;

/// The sidecar's configuration (`--config`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Configuration {
    /// `metadata.name` ("" without a file).
    pub name: String,
    /// `spec.tracing`.
    pub tracing: TracingSpec,
    /// `spec.metric`, with `spec.metrics` applied on top (daprd's alias).
    pub metric: MetricSpec,
    /// `spec.mtls`.
    pub mtls: MtlsSpec,
    /// `spec.secrets`.
    pub secrets: SecretsSpec,
    /// `spec.accessControl`.
    pub access_control: AccessControlSpec,
    /// `spec.api`.
    pub api: ApiSpec,
    /// `spec.features`, in file order.
    pub features: Vec<FeatureSpec>,
    /// `spec.nameResolution`, when set.
    pub name_resolution: Option<NameResolutionSpec>,
    /// `spec.components`.
    pub components: ComponentsSpec,
    /// `spec.logging`.
    pub logging: LoggingSpec,
    /// `spec.httpPipeline`: middleware for inbound API calls.
    pub http_pipeline: PipelineSpec,
    /// `spec.appHttpPipeline`: middleware for sidecar → app calls.
    pub app_http_pipeline: PipelineSpec,
    /// `spec.wasm`.
    pub wasm: WasmSpec,
    /// `spec.workflow`.
    pub workflow: WorkflowSpec,
}

impl Configuration {
    /// Whether feature `name` is on: the last `features` entry naming it decides, else
    /// [`DEFAULT_FEATURES`].
    pub fn feature_enabled(&self, name: &str) -> bool {
        self.features
            .iter()
            .rev()
            .find(|f| f.name == name)
            .map_or(DEFAULT_FEATURES.contains(&name), |f| f.enabled)
    }

    /// The secret scope of `store`, if one is configured.
    pub fn secret_scope(&self, store: &str) -> Option<&SecretScope> {
        self.secrets.scopes.iter().find(|s| s.store_name == store)
    }

    /// Whether `secret` of `store` may be read (no scope for the store ⇒ allowed).
    pub fn secret_allowed(&self, store: &str, secret: &str) -> bool {
        self.secret_scope(store).is_none_or(|s| s.allows(secret))
    }
}

/// `spec.tracing`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TracingSpec {
    /// `samplingRate` as written ("" when absent); see [`TracingSpec::effective_sampling_rate`].
    #[serde(default, deserialize_with = "de::scalar_string")]
    pub sampling_rate: String,
    /// `stdout`: also log spans.
    #[serde(default, deserialize_with = "de::flex_bool")]
    pub stdout: bool,
    /// `zipkin`, when set.
    #[serde(default)]
    pub zipkin: Option<ZipkinSpec>,
    /// `otel`.
    #[serde(default)]
    pub otel: OtelSpec,
}

impl TracingSpec {
    /// The sampling probability: `samplingRate` parsed and clamped to 0..=1, or
    /// [`DEFAULT_SAMPLING_RATE`] when empty or not a number.
    pub fn effective_sampling_rate(&self) -> f64 {
        match self.sampling_rate.trim().parse::<f64>() {
            Ok(rate) if rate.is_finite() => rate.clamp(0.0, 1.0),
            _ => DEFAULT_SAMPLING_RATE,
        }
    }
}

/// `tracing.zipkin`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ZipkinSpec {
    /// `endpointAddress`, e.g. `http://localhost:9411/api/v2/spans`.
    #[serde(default)]
    pub endpoint_address: String,
}

/// `tracing.otel`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OtelSpec {
    /// `endpointAddress` ("" = no OTLP exporter).
    #[serde(default)]
    pub endpoint_address: String,
    /// `protocol`: `grpc` or `http` ("" when absent).
    #[serde(default)]
    pub protocol: String,
    /// `isSecure` (default true).
    #[serde(default = "yes", deserialize_with = "de::flex_bool")]
    pub is_secure: bool,
    /// `headers`: written as `"k=v,k2=v2"`, as a list of `"k=v"`, or as a list of
    /// `{name, value | secretKeyRef}`.
    #[serde(default, deserialize_with = "otel_headers")]
    pub headers: Vec<MetadataItem>,
    /// `timeout`: Go duration, or a bare integer of milliseconds.
    #[serde(default, deserialize_with = "de::opt_duration_millis")]
    pub timeout: Option<Duration>,
}

impl Default for OtelSpec {
    fn default() -> Self {
        Self {
            endpoint_address: String::new(),
            protocol: String::new(),
            is_secure: true,
            headers: Vec::new(),
            timeout: None,
        }
    }
}

fn yes() -> bool {
    true
}

fn otel_headers<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<MetadataItem>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Entry {
        Pair(String),
        Item(RawNameValue),
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Headers {
        Text(String),
        List(Vec<Entry>),
    }
    fn pairs<E: serde::de::Error>(text: &str, out: &mut Vec<MetadataItem>) -> Result<(), E> {
        for pair in text.split(',').filter(|p| !p.trim().is_empty()) {
            let (name, value) = pair
                .split_once('=')
                .ok_or_else(|| E::custom("expected headers as name=value pairs"))?;
            out.push(MetadataItem {
                name: name.trim().to_owned(),
                value: MetadataValue::Value(value.trim().to_owned()),
            });
        }
        Ok(())
    }
    let mut out = Vec::new();
    match Headers::deserialize(d)? {
        Headers::Text(text) => pairs(&text, &mut out)?,
        Headers::List(entries) => {
            for entry in entries {
                match entry {
                    Entry::Pair(text) => pairs(&text, &mut out)?,
                    Entry::Item(item) => out.push(item.into_item()),
                }
            }
        }
    }
    Ok(out)
}

/// `spec.metric` (alias `spec.metrics`).
#[derive(Debug, Clone, PartialEq)]
pub struct MetricSpec {
    /// `enabled` (default true).
    pub enabled: bool,
    /// `recordErrorCodes`: count `dapr_error_code_total` (default false).
    pub record_error_codes: bool,
    /// `latencyDistributionBuckets` in milliseconds; empty = daprd's default buckets.
    pub latency_distribution_buckets: Vec<f64>,
    /// `http`.
    pub http: MetricHttpSpec,
    /// `rules`: label rewriting.
    pub rules: Vec<MetricRule>,
}

impl Default for MetricSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            record_error_codes: false,
            latency_distribution_buckets: Vec::new(),
            http: MetricHttpSpec::default(),
            rules: Vec::new(),
        }
    }
}

/// `metric.http`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricHttpSpec {
    /// `increasedCardinality` (default true in Dapr 1.18).
    #[serde(default = "yes", deserialize_with = "de::flex_bool")]
    pub increased_cardinality: bool,
    /// `pathMatching`: path templates that keep cardinality low.
    #[serde(default)]
    pub path_matching: Vec<String>,
    /// `excludeVerbs` (default false).
    #[serde(default, deserialize_with = "de::flex_bool")]
    pub exclude_verbs: bool,
}

impl Default for MetricHttpSpec {
    fn default() -> Self {
        Self {
            increased_cardinality: true,
            path_matching: Vec::new(),
            exclude_verbs: false,
        }
    }
}

/// `metric.rules[]`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct MetricRule {
    /// The metric name.
    #[serde(default)]
    pub name: String,
    /// Label rules.
    #[serde(default)]
    pub labels: Vec<MetricLabel>,
}

/// `metric.rules[].labels[]`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct MetricLabel {
    /// The label name.
    #[serde(default)]
    pub name: String,
    /// Replacement value → regular expression.
    #[serde(default)]
    pub regex: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawMetric {
    #[serde(default, deserialize_with = "de::opt_flex_bool")]
    enabled: Option<bool>,
    #[serde(default, deserialize_with = "de::opt_flex_bool")]
    record_error_codes: Option<bool>,
    #[serde(default)]
    latency_distribution_buckets: Option<Vec<f64>>,
    #[serde(default)]
    http: Option<MetricHttpSpec>,
    #[serde(default)]
    rules: Vec<MetricRule>,
}

impl RawMetric {
    /// Applies the fields this spec sets on top of `spec` (daprd's `sortMetricsSpec`).
    fn apply(self, spec: &mut MetricSpec) {
        if let Some(enabled) = self.enabled {
            spec.enabled = enabled;
        }
        if let Some(record) = self.record_error_codes {
            spec.record_error_codes = record;
        }
        if let Some(buckets) = self.latency_distribution_buckets {
            spec.latency_distribution_buckets = buckets;
        }
        if let Some(http) = self.http {
            spec.http = http;
        }
        if !self.rules.is_empty() {
            spec.rules = self.rules;
        }
    }
}

/// `spec.mtls`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MtlsSpec {
    /// `enabled`.
    #[serde(default, deserialize_with = "de::flex_bool")]
    pub enabled: bool,
    /// `workloadCertTTL`.
    #[serde(
        default,
        rename = "workloadCertTTL",
        deserialize_with = "de::opt_duration_secs"
    )]
    pub workload_cert_ttl: Option<Duration>,
    /// `allowedClockSkew`.
    #[serde(default, deserialize_with = "de::opt_duration_secs")]
    pub allowed_clock_skew: Option<Duration>,
    /// `sentryAddress`.
    #[serde(default)]
    pub sentry_address: Option<String>,
    /// `controlPlaneTrustDomain`.
    #[serde(default)]
    pub control_plane_trust_domain: Option<String>,
    /// `tokenValidators`.
    #[serde(default)]
    pub token_validators: Vec<TokenValidatorSpec>,
}

/// `mtls.tokenValidators[]`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct TokenValidatorSpec {
    /// The validator's name.
    #[serde(default)]
    pub name: String,
    /// Its options, free-form.
    #[serde(default)]
    pub options: serde_json::Value,
}

/// `allow` or `deny`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccessAction {
    /// `allow` (case-insensitive).
    #[default]
    Allow,
    /// `deny` (case-insensitive).
    Deny,
}

impl<'de> Deserialize<'de> for AccessAction {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        match text.trim().to_ascii_lowercase().as_str() {
            "allow" => Ok(Self::Allow),
            "deny" => Ok(Self::Deny),
            _ => Err(serde::de::Error::custom(format!(
                "invalid action '{text}': expected allow or deny"
            ))),
        }
    }
}

fn opt_action<'de, D: Deserializer<'de>>(d: D) -> Result<Option<AccessAction>, D::Error> {
    let text = String::deserialize(d)?;
    if text.trim().is_empty() {
        return Ok(None);
    }
    AccessAction::deserialize(serde::de::value::StringDeserializer::<D::Error>::new(text)).map(Some)
}

fn action_or_allow<'de, D: Deserializer<'de>>(d: D) -> Result<AccessAction, D::Error> {
    Ok(opt_action(d)?.unwrap_or_default())
}

/// `spec.secrets`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct SecretsSpec {
    /// `scopes`: one per secret store, store names unique.
    #[serde(default)]
    pub scopes: Vec<SecretScope>,
}

/// `secrets.scopes[]`: which secrets of one store the app may read.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretScope {
    /// `storeName`.
    #[serde(default)]
    pub store_name: String,
    /// `defaultAccess` (default allow).
    #[serde(default, deserialize_with = "action_or_allow")]
    pub default_access: AccessAction,
    /// `allowedSecrets`: when non-empty, only these may be read.
    #[serde(default)]
    pub allowed_secrets: Vec<String>,
    /// `deniedSecrets`: never readable.
    #[serde(default)]
    pub denied_secrets: Vec<String>,
}

impl SecretScope {
    /// Whether `secret` may be read: denied wins; then a non-empty allow list admits only its
    /// entries; otherwise `defaultAccess` decides.
    pub fn allows(&self, secret: &str) -> bool {
        if self.denied_secrets.iter().any(|s| s == secret) {
            return false;
        }
        if !self.allowed_secrets.is_empty() {
            return self.allowed_secrets.iter().any(|s| s == secret);
        }
        self.default_access == AccessAction::Allow
    }
}

/// `spec.accessControl`: the service-invocation ACL.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "RawAccessControlSpec")]
pub struct AccessControlSpec {
    /// `defaultAction` (default allow).
    pub default_action: AccessAction,
    /// `trustDomain` (default `public`).
    pub trust_domain: String,
    /// `policies`: per calling app.
    pub policies: Vec<AppPolicy>,
    /// Whether the section says anything: a `defaultAction`, a `trustDomain` or a policy.
    /// Without any, daprd has no list at all and does not count its (allowed) calls.
    pub specified: bool,
}

impl Default for AccessControlSpec {
    fn default() -> Self {
        Self {
            default_action: AccessAction::Allow,
            trust_domain: public(),
            policies: Vec::new(),
            specified: false,
        }
    }
}

/// `spec.accessControl` as written.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawAccessControlSpec {
    #[serde(default, deserialize_with = "opt_action")]
    default_action: Option<AccessAction>,
    #[serde(default)]
    trust_domain: Option<String>,
    #[serde(default)]
    policies: Vec<AppPolicy>,
}

impl From<RawAccessControlSpec> for AccessControlSpec {
    fn from(raw: RawAccessControlSpec) -> Self {
        let trust_domain = raw.trust_domain.filter(|t| !t.trim().is_empty());
        Self {
            specified: raw.default_action.is_some()
                || trust_domain.is_some()
                || !raw.policies.is_empty(),
            default_action: raw.default_action.unwrap_or_default(),
            trust_domain: trust_domain.unwrap_or_else(public),
            policies: raw.policies,
        }
    }
}

fn public() -> String {
    "public".to_owned()
}

/// `accessControl.policies[]`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppPolicy {
    /// `appId` of the caller.
    #[serde(default)]
    pub app_id: String,
    /// `defaultAction`; `None` inherits the global one.
    #[serde(default, deserialize_with = "opt_action")]
    pub default_action: Option<AccessAction>,
    /// `trustDomain`; `None` means `public`.
    #[serde(default)]
    pub trust_domain: Option<String>,
    /// `namespace` of the caller.
    #[serde(default)]
    pub namespace: Option<String>,
    /// `operations`.
    #[serde(default)]
    pub operations: Vec<AppOperation>,
}

/// `accessControl.policies[].operations[]`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppOperation {
    /// `name`: the method path pattern (`/op1/*`).
    #[serde(default)]
    pub name: String,
    /// `httpVerb`: verbs, or `*`.
    #[serde(default)]
    pub http_verb: Vec<String>,
    /// `action`; `None` falls back to the policy's default.
    #[serde(default, deserialize_with = "opt_action")]
    pub action: Option<AccessAction>,
}

/// `spec.api`: which Dapr APIs are exposed.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct ApiSpec {
    /// `allowed` (empty = all).
    #[serde(default)]
    pub allowed: Vec<ApiRule>,
    /// `denied` (wins over `allowed`).
    #[serde(default)]
    pub denied: Vec<ApiRule>,
}

/// `api.allowed[]` / `api.denied[]`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct ApiRule {
    /// The API group (`state`, `invoke`, …).
    #[serde(default)]
    pub name: String,
    /// The version (`v1.0`, `v1alpha1`, …).
    #[serde(default, deserialize_with = "de::scalar_string")]
    pub version: String,
    /// `http` or `grpc`, as written.
    #[serde(default)]
    pub protocol: String,
}

/// `spec.features[]`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct FeatureSpec {
    /// The feature name, e.g. `ActorStateTTL`.
    #[serde(default)]
    pub name: String,
    /// Whether it is on.
    #[serde(default, deserialize_with = "de::flex_bool")]
    pub enabled: bool,
}

/// `spec.nameResolution`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct NameResolutionSpec {
    /// `component`: `mdns`, `kubernetes`, `consul`, `sqlite`, …
    #[serde(default)]
    pub component: String,
    /// `version`.
    #[serde(default, deserialize_with = "de::scalar_string")]
    pub version: String,
    /// `configuration`: free-form, passed to the resolver.
    #[serde(default)]
    pub configuration: serde_json::Value,
}

/// `spec.components`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct ComponentsSpec {
    /// `deny`: component types (`bindings.smtp`) or type/version (`secretstores.local.env/v1`)
    /// that may not be loaded.
    #[serde(default)]
    pub deny: Vec<String>,
}

/// `spec.logging`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoggingSpec {
    /// `apiLogging`.
    #[serde(default)]
    pub api_logging: ApiLoggingSpec,
}

/// `logging.apiLogging`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiLoggingSpec {
    /// `enabled` (default false; `--enable-api-logging` overrides).
    #[serde(default, deserialize_with = "de::flex_bool")]
    pub enabled: bool,
    /// `obfuscateURLs`: log route templates instead of paths.
    #[serde(default, rename = "obfuscateURLs", deserialize_with = "de::flex_bool")]
    pub obfuscate_urls: bool,
    /// `omitHealthChecks`.
    #[serde(default, deserialize_with = "de::flex_bool")]
    pub omit_health_checks: bool,
}

/// `spec.httpPipeline` / `spec.appHttpPipeline`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct PipelineSpec {
    /// `handlers`, applied in order.
    #[serde(default)]
    pub handlers: Vec<HandlerSpec>,
}

/// One middleware handler: a `middleware.http.*` component by name.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct HandlerSpec {
    /// The component name.
    #[serde(default)]
    pub name: String,
    /// The component type, e.g. `middleware.http.oauth2`.
    #[serde(default, rename = "type")]
    pub type_name: String,
    /// The component version.
    #[serde(default, deserialize_with = "de::scalar_string")]
    pub version: String,
    /// `selector`: request fields that must match for the handler to run.
    #[serde(default)]
    pub selector: SelectorSpec,
}

/// `handlers[].selector`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct SelectorSpec {
    /// `fields`.
    #[serde(default)]
    pub fields: Vec<SelectorField>,
}

/// `selector.fields[]`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct SelectorField {
    /// The request field.
    #[serde(default)]
    pub field: String,
    /// The required value.
    #[serde(default, deserialize_with = "de::scalar_string")]
    pub value: String,
}

/// `spec.wasm`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WasmSpec {
    /// `strictSandbox`.
    #[serde(default, deserialize_with = "de::flex_bool")]
    pub strict_sandbox: bool,
}

/// `spec.workflow`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowSpec {
    /// `maxConcurrentWorkflowInvocations` (`None` = unbounded).
    #[serde(default, deserialize_with = "de::opt_int")]
    pub max_concurrent_workflow_invocations: Option<u32>,
    /// `maxConcurrentActivityInvocations` (`None` = unbounded).
    #[serde(default, deserialize_with = "de::opt_int")]
    pub max_concurrent_activity_invocations: Option<u32>,
    /// `stateRetentionPolicy`.
    #[serde(default)]
    pub state_retention_policy: StateRetentionPolicy,
}

/// `workflow.stateRetentionPolicy`: how long finished workflow state is kept.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateRetentionPolicy {
    /// `anyTerminal`.
    #[serde(default, deserialize_with = "de::opt_duration_secs")]
    pub any_terminal: Option<Duration>,
    /// `completed`.
    #[serde(default, deserialize_with = "de::opt_duration_secs")]
    pub completed: Option<Duration>,
    /// `failed`.
    #[serde(default, deserialize_with = "de::opt_duration_secs")]
    pub failed: Option<Duration>,
    /// `terminated`.
    #[serde(default, deserialize_with = "de::opt_duration_secs")]
    pub terminated: Option<Duration>,
}

#[derive(Deserialize, Default)]
struct RawDocument {
    #[serde(default)]
    metadata: RawMeta,
    #[serde(default)]
    spec: RawSpec,
}

#[derive(Deserialize, Default)]
struct RawMeta {
    #[serde(default)]
    name: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawSpec {
    #[serde(default)]
    tracing: TracingSpec,
    #[serde(default)]
    metric: RawMetric,
    #[serde(default)]
    metrics: RawMetric,
    #[serde(default)]
    mtls: MtlsSpec,
    #[serde(default)]
    secrets: SecretsSpec,
    #[serde(default)]
    access_control: AccessControlSpec,
    #[serde(default)]
    api: ApiSpec,
    #[serde(default)]
    features: Vec<FeatureSpec>,
    #[serde(default)]
    name_resolution: Option<NameResolutionSpec>,
    #[serde(default)]
    components: ComponentsSpec,
    #[serde(default)]
    logging: LoggingSpec,
    #[serde(default)]
    http_pipeline: PipelineSpec,
    #[serde(default)]
    app_http_pipeline: PipelineSpec,
    #[serde(default)]
    wasm: WasmSpec,
    #[serde(default)]
    workflow: WorkflowSpec,
}

/// Decodes one Configuration document (already merged) and validates it.
fn decode(value: Value) -> Result<Configuration, FieldError> {
    let raw: RawDocument = from_value(value)?;
    let spec = raw.spec;
    let mut stores = BTreeSet::new();
    for (i, scope) in spec.secrets.scopes.iter().enumerate() {
        if !stores.insert(scope.store_name.as_str()) {
            return Err(FieldError::new(
                format!("spec.secrets.scopes[{i}].storeName"),
                format!(
                    "store \"{}\" is repeated in the secret scopes",
                    scope.store_name
                ),
            ));
        }
    }
    let mut metric = MetricSpec::default();
    spec.metric.apply(&mut metric);
    spec.metrics.apply(&mut metric);
    Ok(Configuration {
        name: raw.metadata.name,
        tracing: spec.tracing,
        metric,
        mtls: spec.mtls,
        secrets: spec.secrets,
        access_control: spec.access_control,
        api: spec.api,
        features: spec.features,
        name_resolution: spec.name_resolution,
        components: spec.components,
        logging: spec.logging,
        http_pipeline: spec.http_pipeline,
        app_http_pipeline: spec.app_http_pipeline,
        wasm: spec.wasm,
        workflow: spec.workflow,
    })
}

/// Applies `over` on top of `base`: mappings merge key by key, anything else replaces.
fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Mapping(base), Value::Mapping(over)) => {
            for (key, value) in over {
                if value.is_null() {
                    continue;
                }
                match base.get_mut(&key) {
                    Some(slot) => merge(slot, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, over) => *base = over,
    }
}

/// The first non-empty document of one configuration text, checked to be a Configuration.
fn configuration_document(text: &str, file: &Path) -> Result<Option<(usize, Value)>, ConfigError> {
    let Some((index, value)) = split_documents(text, file)?.into_iter().next() else {
        return Ok(None);
    };
    let name = match &value {
        Value::Mapping(map) => get_field(map, "metadata")
            .and_then(Value::as_mapping)
            .and_then(|m| get_field(m, "name"))
            .and_then(Value::as_str)
            .map(str::to_owned),
        _ => None,
    };
    let kind = match &value {
        Value::Mapping(map) => get_field(map, "kind").and_then(Value::as_str),
        _ => None,
    };
    if !matches!(value, Value::Mapping(_)) {
        return Err(ConfigError::document(
            file,
            index,
            None,
            None,
            None,
            "expected a Configuration mapping",
        ));
    }
    if let Some(kind) = kind
        && kind != "Configuration"
    {
        return Err(ConfigError::document(
            file,
            index,
            Some(kind),
            name.as_deref(),
            Some("kind".to_owned()),
            format!("expected kind Configuration, found {kind}"),
        ));
    }
    // Decode on its own first so that an error names this file, not the merged result.
    decode(value.clone()).map_err(|e| {
        ConfigError::document(
            file,
            index,
            Some("Configuration"),
            name.as_deref(),
            e.field,
            e.message,
        )
    })?;
    Ok(Some((index, value)))
}

/// Parses one configuration text as if read from `file` (no `$VAR` expansion).
pub fn parse_configuration(text: &str, file: &Path) -> Result<Configuration, ConfigError> {
    match configuration_document(text, file)? {
        Some((index, value)) => decode(value).map_err(|e| {
            ConfigError::document(file, index, Some("Configuration"), None, e.field, e.message)
        }),
        None => Ok(Configuration::default()),
    }
}

/// Loads `--config` files in order, each applied on top of the previous ones field by field,
/// after `$VAR`/`${VAR}` expansion with `env` (unknown variables expand to ""). No files ⇒
/// [`Configuration::default`].
pub fn load_configuration(
    paths: &[PathBuf],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Configuration, ConfigError> {
    let mut merged: Option<(PathBuf, usize, Value)> = None;
    for path in paths {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::file(path, format!("cannot read the configuration file: {e}"))
        })?;
        let text = expand_env(&text, env);
        let Some((index, value)) = configuration_document(&text, path)? else {
            continue;
        };
        merged = Some(match merged {
            None => (path.clone(), index, value),
            Some((_, _, mut base)) => {
                merge(&mut base, value);
                (path.clone(), index, base)
            }
        });
    }
    match merged {
        None => Ok(Configuration::default()),
        Some((path, index, value)) => decode(value).map_err(|e| {
            ConfigError::document(
                &path,
                index,
                Some("Configuration"),
                None,
                e.field,
                e.message,
            )
        }),
    }
}
