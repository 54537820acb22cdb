//! Turning mTLS on: `--enable-mtls` or Configuration `spec.mtls.enabled`, with the issuer from
//! `DAPR_TRUST_ANCHORS` + `DAPR_CERT_CHAIN` + `DAPR_CERT_KEY`, else the local CA under the
//! Tandem home folder (see [`tandem_runtime::security`]). In Kubernetes mode the PEM variables
//! are required.

use std::collections::HashMap;
use std::sync::Arc;

use tandem_runtime::security::{CertSource, DEFAULT_WORKLOAD_TTL, MtlsOptions, Security, SpiffeId};

const PEM_VARS: [&str; 3] = ["DAPR_TRUST_ANCHORS", "DAPR_CERT_CHAIN", "DAPR_CERT_KEY"];

/// This sidecar's mTLS set-up, or `None` when mTLS is off.
pub(crate) fn security(
    enabled_by_flag: bool,
    kubernetes: bool,
    configuration: &tandem_config::Configuration,
    app_id: &str,
    namespace: Option<&str>,
    env: &HashMap<String, String>,
    metrics: Option<&Arc<tandem_runtime::metrics::Metrics>>,
) -> Result<Option<Arc<Security>>, String> {
    if !(enabled_by_flag || configuration.mtls.enabled) {
        return Ok(None);
    }
    let set: Vec<&str> = PEM_VARS
        .iter()
        .copied()
        .filter(|k| env.get(*k).is_some_and(|v| !v.trim().is_empty()))
        .collect();
    let source = match set.len() {
        // A local CA per pod would trust no other pod.
        0 if kubernetes => {
            return Err(format!(
                "mTLS in Kubernetes mode needs {} (certificates from Sentry are not supported)",
                PEM_VARS.join(", ")
            ));
        }
        0 => CertSource::LocalCa(crate::run::tandem_home()),
        3 => CertSource::Pem {
            trust_anchors: env["DAPR_TRUST_ANCHORS"].clone(),
            cert_chain: env["DAPR_CERT_CHAIN"].clone(),
            cert_key: env["DAPR_CERT_KEY"].clone(),
        },
        _ => {
            return Err(format!(
                "mTLS: {} must be set together (only {} set)",
                PEM_VARS.join(", "),
                set.join(", ")
            ));
        }
    };
    let identity = SpiffeId {
        trust_domain: configuration.access_control.trust_domain.clone(),
        namespace: namespace.unwrap_or("default").to_owned(),
        app_id: app_id.to_owned(),
    };
    let local = matches!(source, CertSource::LocalCa(_));
    let security = Security::new(MtlsOptions {
        source,
        identity,
        workload_ttl: configuration
            .mtls
            .workload_cert_ttl
            .filter(|d| !d.is_zero())
            .unwrap_or(DEFAULT_WORKLOAD_TTL),
        metrics: metrics.cloned(),
    })
    .map_err(|e| format!("mTLS: {e}"))?;
    if let Some(m) = metrics {
        m.mtls_initialised();
    }
    tracing::info!(
        identity = %security.identity(),
        issuer = if local { "local CA" } else { "DAPR_CERT_CHAIN" },
        "mTLS between sidecars is enabled"
    );
    Ok(Some(security))
}
