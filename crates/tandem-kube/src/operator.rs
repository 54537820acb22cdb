//! `tandem operator`: one `<app-id>-dapr` Service per Dapr-enabled workload.
//!
//! For every Deployment and StatefulSet whose pod template carries `dapr.io/enabled: "true"`
//! the operator keeps a headless Service named `<app-id>-dapr` (app-id: the `dapr.io/app-id`
//! annotation, else the workload's name) in the workload's namespace, as daprd's operator does:
//! `clusterIP: None`, the workload's `matchLabels` as selector, label `dapr.io/enabled: "true"`,
//! annotations `dapr.io/app-id` and the `prometheus.io/*` scrape set, ports `dapr-http`
//! 80→3500, `dapr-grpc` 50001, `dapr-internal` 50002 and `dapr-metrics` 9090 (or
//! `dapr.io/metrics-port`), and an owner reference to the workload, so that Kubernetes deletes
//! the Service with it. A Service that drifted from this is patched back; when the annotation
//! goes away (or the workload is deleted) the Service is deleted.
//!
//! `dapr-internal` is declared with `appProtocol: http`, not daprd's `grpc`: Tandem's
//! sidecar-to-sidecar protocol is HTTP.

use std::collections::BTreeMap;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{PodTemplateSpec, Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

/// The annotation that enables Dapr on a pod template.
pub const ENABLED: &str = "dapr.io/enabled";
/// The app-id annotation.
pub const APP_ID: &str = "dapr.io/app-id";
/// The metrics port annotation.
pub const METRICS_PORT: &str = "dapr.io/metrics-port";

/// A workload the operator handles: what it needs from a Deployment or a StatefulSet.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    /// `Deployment` or `StatefulSet`.
    pub kind: &'static str,
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// UID (for the owner reference).
    pub uid: String,
    /// The pod template's annotations.
    pub annotations: BTreeMap<String, String>,
    /// The selector's `matchLabels`.
    pub match_labels: BTreeMap<String, String>,
}

impl Workload {
    fn from_parts(
        kind: &'static str,
        meta: &ObjectMeta,
        template: Option<&PodTemplateSpec>,
        selector: Option<&LabelSelector>,
    ) -> Self {
        Self {
            kind,
            name: meta.name.clone().unwrap_or_default(),
            namespace: meta.namespace.clone().unwrap_or_else(|| "default".into()),
            uid: meta.uid.clone().unwrap_or_default(),
            annotations: template
                .and_then(|t| t.metadata.as_ref())
                .and_then(|m| m.annotations.clone())
                .unwrap_or_default(),
            match_labels: selector
                .and_then(|s| s.match_labels.clone())
                .unwrap_or_default(),
        }
    }

    /// From a Deployment.
    pub fn deployment(d: &Deployment) -> Self {
        let spec = d.spec.as_ref();
        Self::from_parts(
            "Deployment",
            &d.metadata,
            spec.map(|s| &s.template),
            spec.map(|s| &s.selector),
        )
    }

    /// From a StatefulSet.
    pub fn stateful_set(s: &StatefulSet) -> Self {
        let spec = s.spec.as_ref();
        Self::from_parts(
            "StatefulSet",
            &s.metadata,
            spec.map(|s| &s.template),
            spec.map(|s| &s.selector),
        )
    }

    /// Whether the pod template enables Dapr (`dapr.io/enabled`, "true" in any case).
    pub fn enabled(&self) -> bool {
        self.annotations
            .get(ENABLED)
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
    }

    /// The app-id: `dapr.io/app-id`, else the workload's name.
    pub fn app_id(&self) -> String {
        self.annotations
            .get(APP_ID)
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .unwrap_or(&self.name)
            .to_owned()
    }

    /// The Service's name.
    pub fn service_name(&self) -> String {
        format!("{}-dapr", self.app_id())
    }

    /// The Service this workload should have.
    pub fn desired_service(&self) -> Service {
        let metrics_port = self
            .annotations
            .get(METRICS_PORT)
            .and_then(|p| p.trim().parse::<i32>().ok())
            .unwrap_or(9090);
        let port = |name: &str, port: i32, target: i32, proto: &str| ServicePort {
            name: Some(name.into()),
            port,
            target_port: Some(IntOrString::Int(target)),
            protocol: Some("TCP".into()),
            app_protocol: Some(proto.into()),
            ..ServicePort::default()
        };
        Service {
            metadata: ObjectMeta {
                name: Some(self.service_name()),
                namespace: Some(self.namespace.clone()),
                labels: Some(BTreeMap::from([(ENABLED.into(), "true".into())])),
                annotations: Some(BTreeMap::from([
                    (APP_ID.into(), self.app_id()),
                    ("prometheus.io/probe".into(), "true".into()),
                    ("prometheus.io/scrape".into(), "true".into()),
                    ("prometheus.io/port".into(), metrics_port.to_string()),
                    ("prometheus.io/path".into(), "/".into()),
                ])),
                owner_references: Some(vec![OwnerReference {
                    api_version: "apps/v1".into(),
                    kind: self.kind.into(),
                    name: self.name.clone(),
                    uid: self.uid.clone(),
                    controller: Some(true),
                    block_owner_deletion: Some(true),
                }]),
                ..ObjectMeta::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: Some("None".into()),
                selector: Some(self.match_labels.clone()),
                ports: Some(vec![
                    port("dapr-http", 80, 3500, "http"),
                    port("dapr-grpc", 50001, 50001, "grpc"),
                    port("dapr-internal", 50002, 50002, "http"),
                    port("dapr-metrics", metrics_port, metrics_port, "http"),
                ]),
                ..ServiceSpec::default()
            }),
            status: None,
        }
    }

    fn owns(&self, service: &Service) -> bool {
        service
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.kind == self.kind && o.name == self.name)
    }
}

/// What a Service must match to count as up to date: labels and annotations the operator
/// sets (others are left alone), selector, ports, cluster IP and owner.
fn drift(desired: &Service, actual: &Service) -> bool {
    let subset = |want: &Option<BTreeMap<String, String>>,
                  have: &Option<BTreeMap<String, String>>| {
        want.iter()
            .flatten()
            .all(|(k, v)| have.as_ref().and_then(|h| h.get(k)) == Some(v))
    };
    let (d, a) = (desired.spec.as_ref(), actual.spec.as_ref());
    !subset(&desired.metadata.labels, &actual.metadata.labels)
        || !subset(&desired.metadata.annotations, &actual.metadata.annotations)
        || d.and_then(|s| s.selector.as_ref()) != a.and_then(|s| s.selector.as_ref())
        || d.and_then(|s| s.ports.as_ref()) != a.and_then(|s| s.ports.as_ref())
        || d.and_then(|s| s.cluster_ip.as_ref()) != a.and_then(|s| s.cluster_ip.as_ref())
        || desired.metadata.owner_references != actual.metadata.owner_references
}

/// Brings the Service of `workload` in line: creates, patches or deletes it.
pub async fn reconcile(client: &Client, workload: &Workload) -> Result<(), kube::Error> {
    let api: Api<Service> = Api::namespaced(client.clone(), &workload.namespace);
    let name = workload.service_name();
    let existing = crate::client::get_opt(&api, &name).await?;
    if !workload.enabled() {
        if let Some(s) = existing
            && workload.owns(&s)
        {
            delete(&api, &name).await?;
            info!(service = %name, namespace = %workload.namespace, "Dapr disabled on the workload: service deleted");
        }
        return Ok(());
    }
    let desired = workload.desired_service();
    match existing {
        None => {
            api.create(&PostParams::default(), &desired).await?;
            info!(service = %name, namespace = %workload.namespace, workload = %workload.name, "service created");
        }
        Some(actual) if drift(&desired, &actual) => {
            // A merge patch replaces lists (ports, owners) but merges maps: selector keys
            // that are no longer wanted are removed explicitly.
            let mut selector = serde_json::Map::new();
            for k in actual
                .spec
                .as_ref()
                .and_then(|s| s.selector.as_ref())
                .into_iter()
                .flatten()
                .map(|(k, _)| k)
            {
                selector.insert(k.clone(), serde_json::Value::Null);
            }
            for (k, v) in &workload.match_labels {
                selector.insert(k.clone(), json!(v));
            }
            let spec = desired.spec.as_ref();
            let patch = json!({
                "metadata": {
                    "labels": desired.metadata.labels,
                    "annotations": desired.metadata.annotations,
                    "ownerReferences": desired.metadata.owner_references,
                },
                "spec": {
                    "clusterIP": spec.and_then(|s| s.cluster_ip.clone()),
                    "selector": selector,
                    "ports": spec.and_then(|s| s.ports.clone()),
                },
            });
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            info!(service = %name, namespace = %workload.namespace, "service drifted: patched");
        }
        Some(_) => {}
    }
    Ok(())
}

async fn delete(api: &Api<Service>, name: &str) -> Result<(), kube::Error> {
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Runs the operator until `shutdown` resolves: watches Deployments and StatefulSets in
/// `namespace` (all namespaces when `None`) and reconciles each change.
pub async fn run(
    client: Client,
    namespace: Option<String>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let deployments =
        watch_kind::<Deployment>(client.clone(), namespace.clone(), Workload::deployment);
    let stateful_sets =
        watch_kind::<StatefulSet>(client.clone(), namespace.clone(), Workload::stateful_set);
    let services = watch_services(client, namespace);
    tokio::select! {
        () = deployments => {}
        () = stateful_sets => {}
        () = services => {}
        () = shutdown => {}
    }
}

/// Watches the Services the operator made (label `dapr.io/enabled`): a change or deletion
/// reconciles the owning workload again, so drift is repaired at once.
async fn watch_services(client: Client, namespace: Option<String>) {
    let api: Api<Service> = match &namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let config = watcher::Config::default().labels(&format!("{ENABLED}=true"));
    let mut stream = watcher::watcher(api, config).default_backoff().boxed();
    while let Some(event) = stream.next().await {
        let service = match event {
            Ok(Event::Apply(s) | Event::Delete(s)) => s,
            Ok(Event::Init | Event::InitApply(_) | Event::InitDone) => continue,
            Err(e) => {
                warn!(error = %e, "watch failed; retrying");
                continue;
            }
        };
        let labelled = service
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(ENABLED))
            .is_some_and(|v| v == "true");
        if !labelled {
            continue;
        }
        let ns = service.namespace().unwrap_or_else(|| "default".into());
        for owner in service.metadata.owner_references.iter().flatten() {
            let workload = match owner.kind.as_str() {
                "Deployment" => crate::client::get_opt(
                    &Api::<Deployment>::namespaced(client.clone(), &ns),
                    &owner.name,
                )
                .await
                .map(|d| d.as_ref().map(Workload::deployment)),
                "StatefulSet" => crate::client::get_opt(
                    &Api::<StatefulSet>::namespaced(client.clone(), &ns),
                    &owner.name,
                )
                .await
                .map(|s| s.as_ref().map(Workload::stateful_set)),
                _ => continue,
            };
            match workload {
                Ok(Some(w)) => {
                    if let Err(e) = reconcile(&client, &w).await {
                        warn!(workload = %w.name, namespace = %ns, error = %e, "cannot reconcile the app's service");
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    warn!(workload = %owner.name, namespace = %ns, error = %e, "cannot read the workload")
                }
            }
        }
    }
}

async fn watch_kind<K>(client: Client, namespace: Option<String>, workload: fn(&K) -> Workload)
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + 'static,
{
    let api: Api<K> = match &namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let mut stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    while let Some(event) = stream.next().await {
        let (object, deleted) = match event {
            Ok(Event::Apply(o) | Event::InitApply(o)) => (o, false),
            Ok(Event::Delete(o)) => (o, true),
            Ok(Event::Init | Event::InitDone) => continue,
            Err(e) => {
                warn!(error = %e, "watch failed; retrying");
                continue;
            }
        };
        let mut w = workload(&object);
        if deleted {
            // Kubernetes removes the Service through its owner reference; deleting it here
            // as well makes that immediate and covers Services whose owner reference was lost.
            w.annotations.remove(ENABLED);
        }
        if let Err(e) = reconcile(&client, &w).await {
            warn!(workload = %object.name_any(), namespace = %w.namespace, error = %e, "cannot reconcile the app's service");
        }
    }
}
