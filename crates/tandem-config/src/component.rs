//! `Component` (`dapr.io/v1alpha1`): a building-block implementation and its metadata (§6.2).

use std::time::Duration;

use serde::Deserialize;
use serde_norway::Value;

use crate::de::{self, from_value};
use crate::error::FieldError;
use crate::{LoadContext, Source};

/// A component manifest: which implementation (`spec.type`) to build and with which metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Component {
    /// `metadata.name`: the name used in API paths (`/v1.0/state/<name>`).
    pub name: String,
    /// `metadata.namespace`, when set.
    pub namespace: Option<String>,
    /// `spec.type`, e.g. `state.redis`.
    pub type_name: String,
    /// `spec.version`, e.g. `v1`; empty when absent (the runtime picks the default).
    pub version: String,
    /// `spec.ignoreErrors`: an init failure is logged and the sidecar keeps running.
    pub ignore_errors: bool,
    /// `spec.initTimeout`.
    pub init_timeout: Option<Duration>,
    /// `spec.metadata`, in file order, with templates substituted in literal values.
    pub metadata: Vec<MetadataItem>,
    /// Top-level `auth.secretStore`: where `secretKeyRef`s are resolved.
    pub secret_store: Option<String>,
    /// `scopes`: app-ids allowed to load it (empty = all).
    pub scopes: Vec<String>,
    /// Where the manifest was read.
    pub source: Source,
}

impl Component {
    /// The building block: the part of `type_name` before the first dot (`state`, `pubsub`, …).
    pub fn building_block(&self) -> &str {
        self.type_name
            .split_once('.')
            .map_or(self.type_name.as_str(), |(block, _)| block)
    }

    /// The metadata item `name` (case-insensitive, as Dapr's metadata decoding).
    pub fn metadata_item(&self, name: &str) -> Option<&MetadataItem> {
        self.metadata
            .iter()
            .find(|item| item.name.eq_ignore_ascii_case(name))
    }
}

/// One `spec.metadata` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataItem {
    /// The key, e.g. `redisHost`.
    pub name: String,
    /// Where the value comes from.
    pub value: MetadataValue,
}

/// The source of a metadata value; secrets and environment variables are resolved by the runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataValue {
    /// A literal (`value:`), converted to text: numbers as written, booleans as `true`/`false`,
    /// mappings and sequences as JSON.
    Value(String),
    /// `secretKeyRef: {name, key}`, resolved from the component's `auth.secretStore`.
    SecretKeyRef {
        /// The secret's name.
        name: String,
        /// The key inside the secret; equals `name` when omitted.
        key: String,
    },
    /// `envRef: VAR`: the value of an environment variable of the sidecar.
    EnvRef(String),
}

impl MetadataValue {
    /// The literal value, if this is one.
    pub fn as_literal(&self) -> Option<&str> {
        match self {
            Self::Value(v) => Some(v),
            _ => None,
        }
    }
}

/// `{name, value | secretKeyRef | envRef}` as written (Dapr's `NameValuePair`).
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RawNameValue {
    #[serde(default)]
    name: String,
    #[serde(default, deserialize_with = "de::scalar_string")]
    value: String,
    #[serde(default)]
    secret_key_ref: Option<RawSecretKeyRef>,
    #[serde(default)]
    env_ref: Option<String>,
}

/// `secretKeyRef: {name, key}` as written.
#[derive(Deserialize, Default)]
pub(crate) struct RawSecretKeyRef {
    #[serde(default)]
    name: String,
    #[serde(default)]
    key: String,
}

impl RawSecretKeyRef {
    /// The reference, or `None` when it names no secret (Dapr then ignores it).
    pub(crate) fn into_value(self) -> Option<MetadataValue> {
        if self.name.is_empty() {
            return None;
        }
        let key = if self.key.is_empty() {
            self.name.clone()
        } else {
            self.key
        };
        Some(MetadataValue::SecretKeyRef {
            name: self.name,
            key,
        })
    }
}

impl RawNameValue {
    /// Dapr's precedence: a secret reference with a name, else a non-empty `envRef`, else the value.
    pub(crate) fn into_item(self) -> MetadataItem {
        let value = match (
            self.secret_key_ref.and_then(RawSecretKeyRef::into_value),
            self.env_ref,
        ) {
            (Some(secret), _) => secret,
            (None, Some(var)) if !var.is_empty() => MetadataValue::EnvRef(var),
            _ => MetadataValue::Value(self.value),
        };
        MetadataItem {
            name: self.name,
            value,
        }
    }
}

/// `auth: {secretStore}`.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RawAuth {
    #[serde(default)]
    pub(crate) secret_store: Option<String>,
}

#[derive(Deserialize)]
struct RawComponent {
    #[serde(default)]
    spec: RawSpec,
    #[serde(default)]
    auth: RawAuth,
    #[serde(default)]
    scopes: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawSpec {
    #[serde(default, rename = "type")]
    type_name: Option<String>,
    #[serde(default, deserialize_with = "de::scalar_string")]
    version: String,
    #[serde(default, deserialize_with = "de::flex_bool")]
    ignore_errors: bool,
    #[serde(default, deserialize_with = "de::opt_duration_secs")]
    init_timeout: Option<Duration>,
    #[serde(default)]
    metadata: Vec<RawNameValue>,
}

/// Decodes a Component document whose header was already checked.
pub(crate) fn parse(
    value: Value,
    name: String,
    namespace: Option<String>,
    source: Source,
) -> Result<Component, FieldError> {
    let raw: RawComponent = from_value(value)?;
    let type_name = raw
        .spec
        .type_name
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| FieldError::required("spec.type"))?;
    Ok(Component {
        name,
        namespace,
        type_name,
        version: raw.spec.version,
        ignore_errors: raw.spec.ignore_errors,
        init_timeout: raw.spec.init_timeout,
        metadata: raw
            .spec
            .metadata
            .into_iter()
            .map(RawNameValue::into_item)
            .collect(),
        secret_store: raw.auth.secret_store.filter(|s| !s.is_empty()),
        scopes: raw.scopes,
        source,
    })
}

/// Substitutes `{uuid}`, `{podName}`, `{namespace}` and `{appID}` in literal metadata values.
pub(crate) fn apply_templates(
    component: &mut Component,
    ctx: &LoadContext,
) -> Result<(), FieldError> {
    for (index, item) in component.metadata.iter_mut().enumerate() {
        let MetadataValue::Value(value) = &mut item.value else {
            continue;
        };
        if !value.contains('{') {
            continue;
        }
        let mut text = std::mem::take(value);
        while let Some(at) = text.find("{uuid}") {
            let id = uuid::Uuid::new_v4().to_string();
            text.replace_range(at..at + "{uuid}".len(), &id);
        }
        if text.contains("{podName}") {
            let Some(pod) = ctx.pod_name.as_deref().filter(|p| !p.is_empty()) else {
                return Err(FieldError::new(
                    format!("spec.metadata[{index}].value"),
                    format!(
                        "metadata item \"{}\" uses {{podName}} but the pod name is not known (POD_NAME is not set)",
                        item.name
                    ),
                ));
            };
            text = text.replace("{podName}", pod);
        }
        if text.contains("{namespace}") {
            let scoped = match ctx.namespace.as_deref().filter(|n| !n.is_empty()) {
                Some(ns) => format!("{ns}.{}", ctx.app_id),
                None => ctx.app_id.clone(),
            };
            text = text.replace("{namespace}", &scoped);
        }
        text = text.replace("{appID}", &ctx.app_id);
        *value = text;
    }
    Ok(())
}
