//! `secretstores.kubernetes`: the Secrets of a namespace, read through the Kubernetes API.
//!
//! A secret is a Kubernetes Secret: `get` returns all of its keys, values as text (bytes that
//! are not UTF-8 are replaced, as Go's string conversion keeps them as they are but JSON cannot).
//! The namespace is the request metadata `namespace`, else the component metadata
//! `defaultNamespace`, else the sidecar's namespace (`NAMESPACE`, else the service-account
//! namespace file). Metadata `kubeconfigPath` names a kubeconfig to use instead of the in-cluster
//! service account or `KUBECONFIG`.

use std::collections::BTreeMap;
use std::path::Path;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Secret as K8sSecret;
use kube::Client;
use kube::api::{Api, ListParams};
use tandem_components::Metadata;
use tandem_components::error::{Error, Result};
use tandem_components::secrets::{Secret, SecretStore};
use tandem_components::state::RequestMetadata;

/// The kubernetes secret store.
pub struct KubernetesSecretStore {
    client: Client,
    namespace: String,
}

impl KubernetesSecretStore {
    /// Connects as the component's metadata says.
    pub async fn build(meta: Metadata) -> Result<Self> {
        let kubeconfig = meta
            .get("kubeconfigPath")
            .map(str::trim)
            .filter(|p| !p.is_empty());
        let client = crate::client::connect(kubeconfig.map(Path::new))
            .await
            .map_err(|e| Error::Backend(e.into()))?;
        let namespace = meta
            .get("defaultNamespace")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .unwrap_or_else(|| crate::client::namespace(meta.namespace.as_deref()));
        Ok(Self::new(client, namespace))
    }

    /// A store over `client`, reading `namespace` by default.
    pub fn new(client: Client, namespace: String) -> Self {
        Self { client, namespace }
    }

    fn api(&self, metadata: &RequestMetadata) -> Api<K8sSecret> {
        let ns = metadata
            .get("namespace")
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .unwrap_or(&self.namespace);
        Api::namespaced(self.client.clone(), ns)
    }
}

fn as_text(secret: &K8sSecret) -> Secret {
    secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned()))
        .collect()
}

#[async_trait]
impl SecretStore for KubernetesSecretStore {
    async fn get(&self, name: &str, metadata: &RequestMetadata) -> Result<Secret> {
        if name.is_empty() {
            return Err(Error::InvalidRequest("secret name is empty".into()));
        }
        match crate::client::get_opt(&self.api(metadata), name).await {
            Ok(Some(s)) => Ok(as_text(&s)),
            Ok(None) => Err(Error::NotFound(format!("secret {name} not found"))),
            Err(e) => Err(Error::Backend(e.into())),
        }
    }

    async fn bulk_get(&self, metadata: &RequestMetadata) -> Result<BTreeMap<String, Secret>> {
        let list = self
            .api(metadata)
            .list(&ListParams::default())
            .await
            .map_err(|e| Error::Backend(e.into()))?;
        Ok(list
            .items
            .iter()
            .filter_map(|s| Some((s.metadata.name.clone()?, as_text(s))))
            .collect())
    }
}
