//! The metadata building block: what `GET /v1.0/metadata` reports, and `extended` attributes.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::components::{ComponentInfo, LiveComponents};

/// A declarative or programmatic subscription, as the metadata API lists it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubscriptionInfo {
    /// Pub/sub component name.
    pub pubsub_name: String,
    /// Topic.
    pub topic: String,
    /// Subscription metadata.
    pub metadata: BTreeMap<String, String>,
    /// Routing rules `(match, path)`; the default route has an empty match.
    pub rules: Vec<(String, String)>,
    /// Dead-letter topic.
    pub dead_letter_topic: String,
    /// `DECLARATIVE`, `PROGRAMMATIC` or `STREAMING`.
    pub kind: &'static str,
}

/// App health-check settings, when enabled.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppHealthInfo {
    /// HTTP probe path (HTTP protocols only).
    pub path: Option<String>,
    /// Probe interval, Go duration text.
    pub interval: String,
    /// Probe timeout, Go duration text.
    pub timeout: String,
    /// Failures before unhealthy.
    pub threshold: u32,
}

/// How the sidecar reaches the app.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppConnectionInfo {
    /// `--app-port`, if any.
    pub port: Option<u16>,
    /// `--app-protocol`.
    pub protocol: String,
    /// `--app-channel-address`.
    pub channel_address: String,
    /// `--app-max-concurrency` when positive.
    pub max_concurrency: Option<u32>,
    /// Health-check settings when enabled.
    pub health: Option<AppHealthInfo>,
}

/// Everything `GET /v1.0/metadata` reports, at one instant.
#[derive(Clone, Debug, Default)]
pub struct MetadataSnapshot {
    /// The app-id.
    pub id: String,
    /// The runtime version.
    pub runtime_version: String,
    /// Enabled feature flags.
    pub enabled_features: Vec<String>,
    /// Loaded components.
    pub components: Vec<ComponentInfo>,
    /// `extended` attributes (set with `PUT /v1.0/metadata/{key}`).
    pub extended: BTreeMap<String, String>,
    /// Subscriptions.
    pub subscriptions: Vec<SubscriptionInfo>,
    /// HTTPEndpoint resource names.
    pub http_endpoints: Vec<String>,
    /// App connection properties.
    pub app_connection: AppConnectionInfo,
}

/// The metadata service.
pub struct MetadataService {
    base: MetadataSnapshot,
    components: Arc<LiveComponents>,
    // Written only by `PUT /v1.0/metadata/{key}`, read only by `GET /v1.0/metadata`: never on
    // a data-path request, so a plain lock is the right tool.
    extended: RwLock<BTreeMap<String, String>>,
    // Replaced once the app's subscriptions are known.
    subscriptions: RwLock<Option<Vec<SubscriptionInfo>>>,
    // Streaming subscriptions, listed while their stream is open, by registration number.
    streaming: RwLock<Vec<(u64, SubscriptionInfo)>>,
    next_streaming: AtomicU64,
}

impl MetadataService {
    pub(crate) fn new(base: MetadataSnapshot, components: Arc<LiveComponents>) -> Self {
        let extended = RwLock::new(base.extended.clone());
        Self {
            base,
            components,
            extended,
            subscriptions: RwLock::new(None),
            streaming: RwLock::new(Vec::new()),
            next_streaming: AtomicU64::new(0),
        }
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> MetadataSnapshot {
        let mut snap = self.base.clone();
        snap.components = self.components.load().infos().to_vec();
        if let Some(subs) = &*self.subscriptions.read().unwrap_or_else(|p| p.into_inner()) {
            snap.subscriptions = subs.clone();
        }
        snap.subscriptions.extend(
            self.streaming
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|(_, info)| info.clone()),
        );
        snap.extended = self
            .extended
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        snap
    }

    /// Replaces the listed subscriptions (declarative and programmatic, once the app answered).
    pub fn set_subscriptions(&self, subs: Vec<SubscriptionInfo>) {
        *self
            .subscriptions
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(subs);
    }

    /// Lists a streaming subscription until [`MetadataService::remove_streaming`]; returns
    /// its registration number.
    pub fn add_streaming(&self, info: SubscriptionInfo) -> u64 {
        let id = self.next_streaming.fetch_add(1, Ordering::Relaxed);
        self.streaming
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push((id, info));
        id
    }

    /// Stops listing the streaming subscription registered as `id`.
    pub fn remove_streaming(&self, id: u64) {
        self.streaming
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(n, _)| *n != id);
    }

    /// Sets an `extended` attribute.
    pub fn set_extended(&self, key: &str, value: String) {
        self.extended
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.to_owned(), value);
    }
}
