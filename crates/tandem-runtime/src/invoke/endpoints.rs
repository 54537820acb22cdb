//! `HTTPEndpoint` resources: invoking `/v1.0/invoke/<name>/method/<path>` calls
//! `<baseUrl>/<path>` with the resource's headers.
//!
//! Header values are resolved once at start-up exactly like component metadata (`value`,
//! `envRef`, `secretKeyRef` through `auth.secretStore`). An endpoint whose headers cannot be
//! resolved does not stop the sidecar: calls to it fail with the reason.

use std::collections::HashMap;

use http::{HeaderName, HeaderValue};
use tandem_config::{Component, HttpEndpoint};

use crate::components::{self, Components, LoadContext};

/// A usable (or explicably unusable) HTTPEndpoint.
#[derive(Debug)]
pub(crate) struct Endpoint {
    /// `baseUrl` without its trailing `/`.
    pub(crate) base: String,
    /// Headers added to every request (replacing the caller's of the same name).
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
    /// Why calls to it fail, when they do.
    pub(crate) problem: Option<String>,
}

/// Resolves every endpoint's headers.
pub(crate) async fn load(
    defs: &[HttpEndpoint],
    ctx: &LoadContext<'_>,
    loaded: &Components,
) -> HashMap<String, Endpoint> {
    let mut out = HashMap::new();
    for def in defs {
        let endpoint = build(def, ctx, loaded).await;
        if let Some(problem) = &endpoint.problem {
            tracing::error!(endpoint = %def.name, file = %def.source, %problem, "HTTPEndpoint is not usable");
        }
        out.insert(def.name.clone(), endpoint);
    }
    out
}

async fn build(def: &HttpEndpoint, ctx: &LoadContext<'_>, loaded: &Components) -> Endpoint {
    let mut endpoint = Endpoint {
        base: def.base_url.trim().trim_end_matches('/').to_owned(),
        headers: Vec::new(),
        problem: None,
    };
    if def.client_tls.is_some() {
        endpoint.problem = Some("spec.clientTLS is not supported yet".into());
        return endpoint;
    }
    // The headers resolve exactly like a component's metadata.
    let as_component = Component {
        name: def.name.clone(),
        namespace: def.namespace.clone(),
        type_name: "HTTPEndpoint".into(),
        version: String::new(),
        ignore_errors: false,
        init_timeout: None,
        metadata: def.headers.clone(),
        secret_store: def.secret_store.clone(),
        scopes: def.scopes.clone(),
        source: def.source.clone(),
    };
    let resolved = match components::resolve_metadata(&as_component, ctx, loaded, None).await {
        Ok(m) => m,
        Err(e) => {
            endpoint.problem = Some(e.reason);
            return endpoint;
        }
    };
    for (name, value) in resolved.iter() {
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            (Ok(n), Ok(v)) => endpoint.headers.push((n, v)),
            _ => {
                endpoint.problem = Some(format!(
                    "spec.headers: '{name}' is not a valid header name and value"
                ));
                return endpoint;
            }
        }
    }
    endpoint
}
