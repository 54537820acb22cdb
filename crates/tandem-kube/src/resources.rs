//! The `dapr.io` resources of one namespace, read from the Kubernetes API.
//!
//! Each object is decoded by the same parser, with the same checks, as a resource file
//! (`tandem_config::parse_resources`, one object at a time), so `scopes`, templates and
//! validation behave as with `--resources-path`. An object that fails to decode is logged and
//! left out; the others load.
//!
//! Subscriptions are read in both served versions. With Dapr's CRD the API server converts
//! between them (through Dapr's conversion webhook), so both lists hold the same objects; without
//! a conversion webhook each object is only complete in the version it was written in. For each
//! name Tandem takes the v2alpha1 view when it has `spec.routes`, else the v1alpha1 view when it
//! has `spec.route`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use futures_util::StreamExt;
use kube::Client;
use kube::api::{Api, DynamicObject, ListParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tandem_config::{Configuration, LoadContext, Resources};
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// One `dapr.io` resource type the sidecar reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    /// API version within `dapr.io`.
    pub version: &'static str,
    /// Kind.
    pub kind: &'static str,
    /// Plural resource name (the URL segment).
    pub plural: &'static str,
}

impl Kind {
    fn api_resource(&self) -> ApiResource {
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("dapr.io", self.version, self.kind),
            self.plural,
        )
    }
}

/// The resource types loaded as resources (the Configuration is read by name, separately).
pub const KINDS: [Kind; 5] = [
    Kind {
        version: "v1alpha1",
        kind: "Component",
        plural: "components",
    },
    Kind {
        version: "v2alpha1",
        kind: "Subscription",
        plural: "subscriptions",
    },
    Kind {
        version: "v1alpha1",
        kind: "Subscription",
        plural: "subscriptions",
    },
    Kind {
        version: "v1alpha1",
        kind: "Resiliency",
        plural: "resiliencies",
    },
    Kind {
        version: "v1alpha1",
        kind: "HTTPEndpoint",
        plural: "httpendpoints",
    },
];

const SUBSCRIPTION_V2: usize = 1;
const SUBSCRIPTION_V1: usize = 2;

/// The objects of every kind in [`KINDS`], by kind index and name: what the namespace holds
/// at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    objects: BTreeMap<(usize, String), serde_json::Value>,
    // Kinds the API did not serve when listed (CRD not installed): not watched.
    unserved: Vec<usize>,
}

impl Snapshot {
    /// Number of objects held (all kinds).
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// Whether no object is held.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    fn replace_kind(&mut self, kind: usize, objects: Vec<DynamicObject>) {
        self.objects.retain(|(k, _), _| *k != kind);
        for o in objects {
            self.apply(kind, o);
        }
    }

    fn apply(&mut self, kind: usize, object: DynamicObject) {
        let Some(name) = object.metadata.name.clone() else {
            return;
        };
        let Ok(mut value) = serde_json::to_value(&object) else {
            return;
        };
        // Bookkeeping fields change on every write and say nothing about the resource.
        if let Some(meta) = value.get_mut("metadata").and_then(|m| m.as_object_mut()) {
            for f in [
                "managedFields",
                "resourceVersion",
                "generation",
                "creationTimestamp",
                "uid",
            ] {
                meta.remove(f);
            }
        }
        if let Some(map) = value.as_object_mut() {
            map.remove("status");
        }
        self.objects.insert((kind, name), value);
    }

    fn delete(&mut self, kind: usize, name: &str) -> bool {
        self.objects.remove(&(kind, name.to_owned())).is_some()
    }

    /// The resources that apply to `ctx` (namespace, `scopes`), decoded as resource files are.
    /// Objects that fail to decode are logged and left out.
    pub fn resources(&self, ctx: &LoadContext) -> Resources {
        let mut out = Resources::default();
        for ((kind, name), value) in &self.objects {
            if *kind == SUBSCRIPTION_V1 {
                continue;
            }
            let value = if *kind == SUBSCRIPTION_V2 {
                match self.subscription(name) {
                    Some(v) => v,
                    None => continue,
                }
            } else {
                value
            };
            let k = KINDS[*kind];
            let file = PathBuf::from(format!("kubernetes:{}.{}/{name}", k.plural, k.version));
            let text = value.to_string();
            match tandem_config::parse_resources(&text, &file, ctx) {
                Ok(r) => {
                    out.components.extend(r.components);
                    out.subscriptions.extend(r.subscriptions);
                    out.resiliencies.extend(r.resiliencies);
                    out.http_endpoints.extend(r.http_endpoints);
                    out.skipped.extend(r.skipped);
                }
                Err(e) => warn!(error = %e, "resource left out: it cannot be decoded"),
            }
        }
        // Subscriptions that exist only as v1alpha1.
        for (kind, name) in self.objects.keys() {
            if *kind != SUBSCRIPTION_V1
                || self.objects.contains_key(&(SUBSCRIPTION_V2, name.clone()))
            {
                continue;
            }
            if let Some(value) = self.subscription(name) {
                let file = PathBuf::from(format!("kubernetes:subscriptions.v1alpha1/{name}"));
                match tandem_config::parse_resources(&value.to_string(), &file, ctx) {
                    Ok(r) => {
                        out.subscriptions.extend(r.subscriptions);
                        out.skipped.extend(r.skipped);
                    }
                    Err(e) => warn!(error = %e, "resource left out: it cannot be decoded"),
                }
            }
        }
        out
    }

    /// The view of subscription `name` to load (see the module documentation).
    fn subscription(&self, name: &str) -> Option<&serde_json::Value> {
        let v2 = self.objects.get(&(SUBSCRIPTION_V2, name.to_owned()));
        let v1 = self.objects.get(&(SUBSCRIPTION_V1, name.to_owned()));
        let has = |v: Option<&serde_json::Value>, field: &str| {
            v.and_then(|v| v.get("spec"))
                .and_then(|s| s.get(field))
                .is_some()
        };
        if has(v2, "routes") {
            v2
        } else if has(v1, "route") {
            v1
        } else {
            v2.or(v1)
        }
    }
}

/// Reads the `dapr.io` resources of one namespace and follows their changes.
#[derive(Clone)]
pub struct ResourceSource {
    client: Client,
    namespace: String,
}

impl ResourceSource {
    /// A source for `namespace`.
    pub fn new(client: Client, namespace: impl Into<String>) -> Self {
        Self {
            client,
            namespace: namespace.into(),
        }
    }

    fn api(&self, kind: &Kind) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), &self.namespace, &kind.api_resource())
    }

    /// Lists every kind once. A kind the API does not serve (its CRD is not installed) counts
    /// as empty; any other error is returned.
    pub async fn list(&self) -> Result<Snapshot, String> {
        let mut snapshot = Snapshot::default();
        for (i, kind) in KINDS.iter().enumerate() {
            match self.api(kind).list(&ListParams::default()).await {
                Ok(list) => snapshot.replace_kind(i, list.items),
                Err(kube::Error::Api(e)) if e.code == 404 => {
                    snapshot.unserved.push(i);
                    info!(resource = %format!("{}.{}.dapr.io", kind.plural, kind.version), "not served by the Kubernetes API (CRD not installed?): none loaded");
                }
                Err(e) => {
                    return Err(format!(
                        "cannot list {}.{}.dapr.io in namespace {}: {e}",
                        kind.plural, kind.version, self.namespace
                    ));
                }
            }
        }
        Ok(snapshot)
    }

    /// The Configuration `name`, decoded as a `--config` file is; `None` when it does not
    /// exist.
    pub async fn configuration(&self, name: &str) -> Result<Option<Configuration>, String> {
        let kind = Kind {
            version: "v1alpha1",
            kind: "Configuration",
            plural: "configurations",
        };
        let object = crate::client::get_opt(&self.api(&kind), name)
            .await
            .map_err(|e| {
                format!(
                    "cannot read Configuration {name} in namespace {}: {e}",
                    self.namespace
                )
            })?;
        let Some(object) = object else {
            return Ok(None);
        };
        let text = serde_json::to_string(&object).map_err(|e| e.to_string())?;
        let file = PathBuf::from(format!("kubernetes:configurations.v1alpha1/{name}"));
        tandem_config::parse_configuration(&text, &file)
            .map(Some)
            .map_err(|e| e.to_string())
    }

    /// Watches every kind the API served when `initial` was listed, and publishes each changed
    /// snapshot on the returned channel until the receiver is dropped. Watch errors are logged
    /// and retried with back-off. (A CRD installed later is read at the next start.)
    pub fn watch(&self, initial: Snapshot) -> watch::Receiver<Snapshot> {
        let unserved = initial.unserved.clone();
        let (tx, rx) = watch::channel(initial);
        let tx = Arc::new(tx);
        for (i, kind) in KINDS.iter().enumerate() {
            if unserved.contains(&i) {
                continue;
            }
            let api = self.api(kind);
            let tx = tx.clone();
            let kind = *kind;
            tokio::spawn(async move {
                let mut stream = watcher::watcher(api, watcher::Config::default())
                    .default_backoff()
                    .boxed();
                let mut buffer: Option<Vec<DynamicObject>> = None;
                loop {
                    let event = tokio::select! {
                        e = stream.next() => e,
                        () = tx.closed() => break,
                    };
                    let Some(event) = event else { break };
                    match event {
                        Ok(Event::Init) => buffer = Some(Vec::new()),
                        Ok(Event::InitApply(o)) => buffer.get_or_insert_with(Vec::new).push(o),
                        Ok(Event::InitDone) => {
                            let objects = buffer.take().unwrap_or_default();
                            tx.send_if_modified(|s| {
                                let before = s.clone();
                                s.replace_kind(i, objects);
                                *s != before
                            });
                        }
                        Ok(Event::Apply(o)) => {
                            tx.send_if_modified(|s| {
                                let before = s.objects.clone();
                                s.apply(i, o);
                                s.objects != before
                            });
                        }
                        Ok(Event::Delete(o)) => {
                            let name = o.metadata.name.unwrap_or_default();
                            tx.send_if_modified(|s| s.delete(i, &name));
                        }
                        Err(e) => {
                            debug!(resource = %format!("{}.{}.dapr.io", kind.plural, kind.version), error = %e, "watch failed; retrying");
                        }
                    }
                }
            });
        }
        rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(v: serde_json::Value) -> DynamicObject {
        serde_json::from_value(v).unwrap()
    }

    fn sub_v1(name: &str, api_version: &str, route: &str) -> DynamicObject {
        object(json!({
            "apiVersion": api_version, "kind": "Subscription",
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"pubsubname": "ps", "topic": name, "route": route},
        }))
    }

    fn sub_v2(name: &str, path: &str) -> DynamicObject {
        object(json!({
            "apiVersion": "dapr.io/v2alpha1", "kind": "Subscription",
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"pubsubname": "ps", "topic": name, "routes": {"default": path}},
        }))
    }

    #[test]
    fn subscriptions_are_read_in_the_version_they_are_complete_in() {
        let mut s = Snapshot::default();
        // Converted by a webhook: the same subscription in both versions.
        s.apply(SUBSCRIPTION_V2, sub_v2("converted", "/v2"));
        s.apply(
            SUBSCRIPTION_V1,
            sub_v1("converted", "dapr.io/v1alpha1", "/v2"),
        );
        // Written as v1alpha1 under `conversion: None`: the v2alpha1 view has only `route`.
        s.apply(
            SUBSCRIPTION_V2,
            sub_v1("unconverted", "dapr.io/v2alpha1", "/v1"),
        );
        s.apply(
            SUBSCRIPTION_V1,
            sub_v1("unconverted", "dapr.io/v1alpha1", "/v1"),
        );
        // Only listed as v1alpha1.
        s.apply(SUBSCRIPTION_V1, sub_v1("old", "dapr.io/v1alpha1", "/old"));
        let r = s.resources(&LoadContext::new("app"));
        let mut got: Vec<(String, Option<String>)> = r
            .subscriptions
            .iter()
            .map(|s| (s.name.clone(), s.default_route.clone()))
            .collect();
        got.sort();
        assert_eq!(
            got,
            [
                ("converted".to_owned(), Some("/v2".to_owned())),
                ("old".to_owned(), Some("/old".to_owned())),
                ("unconverted".to_owned(), Some("/v1".to_owned())),
            ]
        );
    }

    #[test]
    fn scopes_apply_and_broken_objects_are_left_out() {
        let mut s = Snapshot::default();
        let component = |name: &str, extra: serde_json::Value| {
            let mut c = json!({
                "apiVersion": "dapr.io/v1alpha1", "kind": "Component",
                "metadata": {"name": name, "namespace": "ns", "resourceVersion": "7", "managedFields": []},
                "spec": {"type": "state.in-memory", "version": "v1"},
            });
            for (k, v) in extra.as_object().unwrap() {
                c[k] = v.clone();
            }
            object(c)
        };
        s.apply(0, component("mine", json!({"scopes": ["app"]})));
        s.apply(0, component("theirs", json!({"scopes": ["other"]})));
        s.apply(0, component("broken", json!({"spec": {"version": "v1"}})));
        s.apply(0, component("plain", json!({})));
        let r = s.resources(&LoadContext::new("app"));
        let names: Vec<&str> = r.components.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["mine", "plain"]);
        assert_eq!(r.skipped.len(), 1, "{:?}", r.skipped);

        // Bookkeeping fields do not count as a change.
        let mut again = s.clone();
        let mut c = component("plain", json!({}));
        c.metadata.resource_version = Some("8".into());
        again.apply(0, c);
        assert_eq!(again, s);
    }
}
