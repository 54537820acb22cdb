//! Connecting to the Kubernetes API and finding the sidecar's namespace.

use std::path::Path;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// Where a pod's service account namespace is mounted.
pub const NAMESPACE_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// Connects with the kubeconfig at `kubeconfig` when given, else as [`Config::infer`] does:
/// `KUBECONFIG` (or `~/.kube/config`) when present, else the pod's service account.
pub async fn connect(kubeconfig: Option<&Path>) -> Result<Client, String> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .map_err(|e| format!("cannot read kubeconfig {}: {e}", path.display()))?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|e| format!("invalid kubeconfig {}: {e}", path.display()))?
        }
        None => Config::infer().await.map_err(|e| {
            format!(
                "no Kubernetes API configuration (in-cluster service account or KUBECONFIG): {e}"
            )
        })?,
    };
    Client::try_from(config).map_err(|e| format!("cannot build the Kubernetes client: {e}"))
}

/// The namespace: `NAMESPACE` when set and not empty, else the service-account namespace
/// file, else `default`.
pub fn namespace(env_namespace: Option<&str>) -> String {
    if let Some(ns) = env_namespace.map(str::trim).filter(|s| !s.is_empty()) {
        return ns.to_owned();
    }
    std::fs::read_to_string(NAMESPACE_FILE)
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".to_owned())
}

/// `GET` of one object, `None` when the API answers 404. (kube's `get_opt` also requires the
/// reason `NotFound`, which not every API server implementation sends.)
pub async fn get_opt<K>(api: &kube::Api<K>, name: &str) -> Result<Option<K>, kube::Error>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.get(name).await {
        Ok(o) => Ok(Some(o)),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(None),
        Err(e) => Err(e),
    }
}
