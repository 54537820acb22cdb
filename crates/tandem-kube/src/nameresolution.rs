//! Name resolution in Kubernetes: every app has a headless Service `<app-id>-dapr` (kept by
//! `tandem operator`), so an app-id resolves to
//! `<app-id>-dapr.<namespace>.svc.<cluster domain>:<port>` without any lookup.
//!
//! Settings (`spec.nameResolution.configuration` of the Configuration): `clusterDomain`
//! (default `cluster.local`) and `template`, where `{{.ID}}`, `{{.Namespace}}` and `{{.Port}}`
//! are replaced (the subset of daprd's Go template Tandem understands). The port is the
//! sidecars' internal port, 50002 unless the Configuration's `port` says otherwise.

use async_trait::async_trait;
use tandem_components::Metadata;
use tandem_components::error::{Error, Result};
use tandem_components::nameresolution::{Instance, NameResolver, ResolveRequest};

/// The internal port sidecars listen on in Kubernetes (`--dapr-internal-grpc-port`).
pub const DEFAULT_INTERNAL_PORT: u16 = 50002;

/// The kubernetes name resolver.
#[derive(Debug, Clone)]
pub struct KubernetesNameResolver {
    cluster_domain: String,
    template: Option<String>,
    port: u16,
}

impl KubernetesNameResolver {
    /// From the Configuration's settings.
    pub fn build(meta: &Metadata) -> Result<Self> {
        let cluster_domain = meta
            .get("clusterDomain")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .unwrap_or("cluster.local")
            .to_owned();
        let template = meta
            .get("template")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        let port = match meta.get("port").map(str::trim).filter(|s| !s.is_empty()) {
            None => DEFAULT_INTERNAL_PORT,
            Some(p) => p.parse().map_err(|_| Error::InvalidMetadata {
                field: "port".into(),
                reason: "not a port number".into(),
            })?,
        };
        Ok(Self {
            cluster_domain,
            template,
            port,
        })
    }

    /// The address of `app_id` in `namespace`.
    pub fn address(&self, app_id: &str, namespace: &str) -> String {
        match &self.template {
            Some(t) => t
                .replace("{{.ID}}", app_id)
                .replace("{{.Namespace}}", namespace)
                .replace("{{.Port}}", &self.port.to_string()),
            None => format!(
                "{app_id}-dapr.{namespace}.svc.{}:{}",
                self.cluster_domain, self.port
            ),
        }
    }
}

#[async_trait]
impl NameResolver for KubernetesNameResolver {
    /// The Service is the registration: nothing to announce.
    async fn register(&self, _instance: &Instance) -> Result<()> {
        Ok(())
    }

    async fn resolve(&self, request: ResolveRequest<'_>) -> Result<Vec<String>> {
        Ok(vec![self.address(request.app_id, request.namespace)])
    }

    async fn unregister(&self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let r = KubernetesNameResolver::build(&Metadata::new("nr", "a")).unwrap();
        assert_eq!(
            r.address("orders", "shop"),
            "orders-dapr.shop.svc.cluster.local:50002"
        );
        let mut m = Metadata::new("nr", "a");
        m.insert("clusterDomain", "corp.example");
        m.insert("port", "6000");
        let r = KubernetesNameResolver::build(&m).unwrap();
        assert_eq!(r.address("x", "ns"), "x-dapr.ns.svc.corp.example:6000");
        let mut m = Metadata::new("nr", "a");
        m.insert("template", "{{.ID}}.{{.Namespace}}.internal:{{.Port}}");
        let r = KubernetesNameResolver::build(&m).unwrap();
        assert_eq!(r.address("x", "ns"), "x.ns.internal:50002");
    }
}
