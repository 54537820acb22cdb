//! Service invocation: [`InvokeService`], the one place its logic lives.
//!
//! A call names a target and a method; the service decides where it goes:
//!
//! 1. an `HTTPEndpoint` resource of that name ⇒ `<baseUrl>/<method>` with its headers;
//! 2. a full `http://` URL ⇒ `<url>/<method>` (`https://` is refused with a clear error until
//!    TLS is built in);
//! 3. this sidecar's own app-id (optionally `appid.namespace`) ⇒ the app channel;
//! 4. any other app-id ⇒ one of its sidecars, found through name resolution
//!    ([`tandem_components::nameresolution`]) and called over its internal listener.
//!
//! Headers travel minus hop-by-hop ones ([`headers`]); status, headers and body come back as
//! the target sent them. Bodies are never buffered: request and response frames are passed
//! on as they arrive, so large uploads and Server-Sent Events stream through.
//!
//! # The internal protocol (sidecar to sidecar)
//!
//! Tandem sidecars talk HTTP/2 (cleartext, prior knowledge) to each other: every call to one
//! sidecar shares one connection ([`tandem_http2::client`]), so calls in flight together
//! share each read and each write on both sides. With mTLS enabled ([`crate::security`])
//! the connection is TLS with client certificates, HTTP/2 agreed in the handshake (ALPN
//! `h2`), the client accepting only the called app's SPIFFE identity; a sidecar that does not
//! agree to HTTP/2 (an older Tandem) is called over pooled HTTP/1.1 over TLS instead, and so
//! are the rest of its app's calls. Proxied gRPC calls go over hyper's pooled HTTP/2 client
//! (over TLS under mTLS). A call to app `b` from app `a` is sent to one of `b`'s sidecars as
//!
//! ```text
//! <VERB> /<method>?<query>
//! dapr-callee-app-id: b              (required: the sidecar refuses other app-ids with 404)
//! dapr-caller-app-id: a
//! dapr-caller-namespace: <a's namespace>
//! x-forwarded-for / x-forwarded-host / forwarded: appended, as daprd does
//! tandem-caller-trust-domain: <td>   (only when a's trust domain is not `public`)
//! <the caller's other headers, hop-by-hop ones removed>
//!
//! <the body, streamed>
//! ```
//!
//! The receiving sidecar ([`InvokeService::handle_internal`]) applies access control with the
//! caller's identity (under mTLS the certificate's, the identity headers being overwritten
//! with it), then forwards the request to its app unchanged but for
//! `tandem-caller-trust-domain`; the app's answer goes back verbatim. Errors raised by the
//! receiving sidecar itself (access denied, app unhealthy, …) are already in the form the
//! caller's client expects (`ERR_DIRECT_INVOKE`, `failed to invoke, id: …`) and travel back as
//! they are. This is not daprd's gRPC `ServiceInvocation` protocol: Tandem sidecars do not
//! interoperate with Go daprd sidecars on the internal port.
//!
//! A sidecar that goes silent without closing the connection (its machine gone, a partition)
//! is noticed by the connection's PING check ([`tandem_http2::client::PING_EVERY`]): the calls
//! in flight to it fail with a time-out, within 30 s, instead of waiting until TCP gives up.
//! Proxied gRPC calls go over hyper's HTTP/2 client with the same check (hyper's keep-alive
//! PINGs while streams are open). Calls over HTTP/1.1 over TLS (to a sidecar that does not
//! speak HTTP/2) have no PING: there only a resiliency timeout bounds a call to a silent one.
//!
//! A call that never left (the connection to the sidecar was refused because it was killed,
//! or closed before the call was written) is retried at once on another instance with its
//! body untouched; a refusing instance is set aside for
//! [`SUSPECT_FOR`]; lookups are cached for [`CACHE_TTL`] and spread round-robin.
//!
//! # Resiliency
//!
//! A `Resiliency` policy for the target (`targets.apps.<target>` as the caller names it, or
//! the `DefaultApp…` policies) runs each call under its timeout (until the response starts),
//! its circuit breaker (one per target method) and its retries. An answer with a status
//! outside 200–399 (or a gRPC app's non-OK status) is a failure, retried when `matching`
//! allows; when the retries are spent the last answer goes back as it is. To be replayed, the
//! request body is read into memory first; a body of unknown length (chunked) is streamed
//! and never retried, as in daprd.

mod acl;
mod body;
mod directory;
mod endpoints;
pub mod headers;
pub mod resolution;
mod target;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, Uri};
use http_body_util::BodyExt;
use hyper::body::Body;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tandem_components::nameresolution::{Instance, NameResolver};
use tandem_http2::client::SendError;

pub use acl::{AccessControl, Caller, DecidedBy, Decision};
pub use body::InvokeBody;
pub use directory::{CACHE_TTL, SUSPECT_FOR};
pub use target::{Method, Target};

use crate::app_channel::{AppBody, AppChannel, AppError, AppResponse, full_body};
use crate::components::{Components, LoadContext};
use crate::error::{ApiError, ErrorCode};
use crate::resiliency::{AppPolicy, PolicyError, Resiliency, StatusCode, Verdict};
use crate::security::{PeerIdentity, Security};
use crate::trace::{SpanKind, Tracer};
use body::Replayable;
use directory::Directory;
use endpoints::Endpoint;
use headers::{
    CALLEE_APP_ID, CALLER_APP_ID, CALLER_NAMESPACE, CALLER_TRUST_DOMAIN, Forwarded, GRPC_PROXY,
};

/// The answer of an invocation: the target's status and headers, its body streamed.
pub type InvokeResponse = Response<InvokeBody>;

/// How many instances a call tries when connections are refused.
const MAX_ATTEMPTS: usize = 3;

/// The sidecar-level settings of service invocation.
#[derive(Clone, Default)]
pub struct InvokeOptions {
    /// The name resolver (built by the binary from `spec.nameResolution`); `None` disables
    /// calls to other app-ids.
    pub resolver: Option<Arc<dyn NameResolver>>,
    /// Why there is no resolver, for the error of such calls.
    pub resolver_problem: Option<String>,
    /// This machine's address for `X-Forwarded-For` / `Forwarded` (`DAPR_HOST_IP` or detected).
    pub host_address: Option<String>,
    /// This machine's host name for `X-Forwarded-Host` / `Forwarded`.
    pub host_name: Option<String>,
    /// mTLS between sidecars, when enabled.
    pub security: Option<Arc<Security>>,
}

impl fmt::Debug for InvokeOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InvokeOptions")
            .field("resolver", &self.resolver.is_some())
            .field("resolver_problem", &self.resolver_problem)
            .field("host_address", &self.host_address)
            .field("host_name", &self.host_name)
            .field("mtls", &self.security.is_some())
            .finish()
    }
}

/// One call, as the API front ends extracted it.
pub struct InvokeRequest {
    /// The target: app-id, `appid.namespace`, HTTPEndpoint name or `http://` URL.
    pub target: String,
    /// The method as it appeared in the request path, still escaped, without leading `/`.
    pub method: String,
    /// The raw query string, if any.
    pub query: Option<String>,
    /// The HTTP verb.
    pub verb: http::Method,
    /// The caller's headers.
    pub headers: HeaderMap,
    /// The body, streamed.
    pub body: AppBody,
    /// A raw gRPC call (gRPC proxying): forwarded frame for frame, trailers included, to a
    /// gRPC app; `method` is `package.Service/Method`.
    pub grpc_proxy: bool,
}

/// Service invocation for one sidecar.
pub struct InvokeService {
    app_id: String,
    namespace: String,
    app_id_value: HeaderValue,
    namespace_value: HeaderValue,
    trust_domain_value: Option<HeaderValue>,
    app_channel: Option<Arc<AppChannel>>,
    endpoints: HashMap<String, Endpoint>,
    directory: Option<Directory>,
    resolver_problem: String,
    acl: AccessControl,
    forwarded: Forwarded,
    /// Plain HTTP calls to other sidecars: one multiplexed HTTP/2 connection per sidecar.
    sidecars: tandem_http2::client::Client<AppBody>,
    /// Proxied gRPC calls to other sidecars.
    sidecars_h2: Client<HttpConnector, Replayable>,
    external: Client<HttpConnector, AppBody>,
    security: Option<Arc<Security>>,
    /// Per called app (`<namespace>/<app-id>`): pooled mTLS clients that accept only that
    /// app's identity.
    mtls_clients: RwLock<HashMap<String, Arc<MtlsClients>>>,
    registered: AtomicBool,
    resiliency: Arc<Resiliency>,
    metrics: Arc<crate::metrics::Metrics>,
    tracer: Tracer,
}

impl fmt::Debug for InvokeService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InvokeService")
            .field("app_id", &self.app_id)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

fn connector() -> HttpConnector {
    let mut c = HttpConnector::new();
    c.set_nodelay(true);
    c.set_connect_timeout(Some(Duration::from_secs(5)));
    c.set_keepalive(Some(Duration::from_secs(60)));
    c
}

fn client<B>() -> Client<HttpConnector, B>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
{
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .build(connector())
}

/// hyper's HTTP/2 client to other sidecars (proxied gRPC), with the same liveness check as
/// the plain calls' multiplexed connection: while streams are open and nothing has been read
/// for [`tandem_http2::client::PING_EVERY`], a PING goes out, and a connection whose PING is
/// not answered within as long again fails its calls instead of holding them until TCP gives
/// up (which, with a peer whose kernel still acknowledges, is never).
fn h2_to_sidecars() -> hyper_util::client::legacy::Builder {
    let every = tandem_http2::client::PING_EVERY;
    let mut b = Client::builder(TokioExecutor::new());
    b.pool_idle_timeout(Duration::from_secs(90))
        .http2_only(true)
        .timer(TokioTimer::new())
        .http2_keep_alive_interval(every)
        .http2_keep_alive_timeout(every)
        .http2_keep_alive_while_idle(false);
    b
}

/// What [`InvokeService::new`] is built from.
pub(crate) struct Parts<'a> {
    pub(crate) app_id: &'a str,
    pub(crate) namespace: Option<&'a str>,
    pub(crate) app_channel: Option<Arc<AppChannel>>,
    pub(crate) endpoints: HashMap<String, Endpoint>,
    pub(crate) access_control: Option<&'a tandem_config::AccessControlSpec>,
    pub(crate) options: InvokeOptions,
    pub(crate) resiliency: Arc<Resiliency>,
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
    pub(crate) tracer: Tracer,
}

/// Resolves the `HTTPEndpoint` resources (their headers may reference secrets).
pub(crate) async fn load_endpoints(
    defs: &[tandem_config::HttpEndpoint],
    ctx: &LoadContext<'_>,
    loaded: &Components,
) -> HashMap<String, endpoints::Endpoint> {
    endpoints::load(defs, ctx, loaded).await
}

fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

impl InvokeService {
    /// A service for `app_id` without app channel, endpoints, resolver or access control
    /// (what [`crate::Runtime::from_parts`] starts with).
    pub fn minimal(app_id: &str) -> Self {
        Self::new(Parts {
            app_id,
            namespace: None,
            app_channel: None,
            endpoints: HashMap::new(),
            access_control: None,
            options: InvokeOptions::default(),
            resiliency: Arc::new(Resiliency::none()),
            metrics: Arc::new(crate::metrics::Metrics::disabled()),
            tracer: Tracer::off(),
        })
    }

    pub(crate) fn new(parts: Parts<'_>) -> Self {
        let namespace = parts
            .namespace
            .filter(|n| !n.is_empty())
            .unwrap_or("default")
            .to_owned();
        let trust_domain = parts
            .access_control
            .map(|a| a.trust_domain.as_str())
            .filter(|t| !t.is_empty() && *t != "public");
        let options = parts.options;
        Self {
            app_id_value: header_value(parts.app_id),
            namespace_value: header_value(&namespace),
            trust_domain_value: trust_domain.map(header_value),
            app_id: parts.app_id.to_owned(),
            namespace,
            app_channel: parts.app_channel,
            endpoints: parts.endpoints,
            directory: options.resolver.map(Directory::new),
            resolver_problem: options
                .resolver_problem
                .unwrap_or_else(|| "name resolution is not configured".to_owned()),
            acl: parts
                .access_control
                .map(AccessControl::new)
                .unwrap_or_default(),
            forwarded: Forwarded::new(
                options.host_address.as_deref(),
                options.host_name.as_deref(),
            ),
            sidecars: tandem_http2::client::Client::default(),
            sidecars_h2: h2_to_sidecars().build(connector()),
            external: client(),
            security: options.security,
            mtls_clients: RwLock::new(HashMap::new()),
            registered: AtomicBool::new(false),
            resiliency: parts.resiliency,
            metrics: parts.metrics,
            tracer: parts.tracer,
        }
    }

    /// mTLS between sidecars, when enabled.
    pub fn security(&self) -> Option<&Arc<Security>> {
        self.security.as_ref()
    }

    /// The mTLS clients for calls to `id` in `namespace`, created on first use.
    fn mtls_clients(&self, security: &Security, namespace: &str, id: &str) -> Arc<MtlsClients> {
        let key = format!("{namespace}/{id}");
        if let Some(c) = self
            .mtls_clients
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return c.clone();
        }
        let tcp = || {
            let mut c = connector();
            c.enforce_http(false);
            c
        };
        let build = |h2: bool| {
            let https = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(security.client_config(namespace, id))
                .https_only();
            let https = if h2 {
                https.enable_http2().wrap_connector(tcp())
            } else {
                https.enable_http1().wrap_connector(tcp())
            };
            if h2 {
                h2_to_sidecars().build(https)
            } else {
                Client::builder(TokioExecutor::new())
                    .pool_idle_timeout(Duration::from_secs(90))
                    .build(https)
            }
        };
        let clients = Arc::new(MtlsClients {
            mux: tandem_http2::client::Client::default().tls(security.client_config(namespace, id)),
            h1_only: AtomicBool::new(false),
            h1: build(false),
            h2: build(true),
        });
        self.mtls_clients
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_insert(clients)
            .clone()
    }

    /// This sidecar's namespace (`NAMESPACE`, `default` when unset).
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Announces this sidecar's internal listener (`host:port`) to name resolution.
    pub async fn register(&self, address: &str) -> Result<(), String> {
        let Some(d) = &self.directory else {
            return Err(self.resolver_problem.clone());
        };
        let instance = Instance {
            app_id: self.app_id.clone(),
            namespace: self.namespace.clone(),
            address: address.to_owned(),
        };
        d.resolver()
            .register(&instance)
            .await
            .map_err(|e| e.to_string())?;
        self.registered.store(true, Ordering::Release);
        Ok(())
    }

    /// Withdraws the registration (graceful shutdown), if there is one.
    pub async fn unregister(&self) {
        let was = self.registered.swap(false, Ordering::AcqRel);
        if let (true, Some(d)) = (was, &self.directory)
            && let Err(e) = d.resolver().unregister().await
        {
            tracing::warn!(error = %e, "name resolution: unregistering failed");
        }
    }

    /// Invokes `req.method` on `req.target` (the HTTP API's `InvokeService`).
    pub async fn invoke(&self, req: InvokeRequest) -> Result<InvokeResponse, ApiError> {
        let InvokeRequest {
            target,
            method,
            query,
            verb,
            mut headers,
            body,
            grpc_proxy,
        } = req;
        let fail = |err: &dyn fmt::Display| failed(&target, err);
        let method =
            Method::parse_owned(method).map_err(|e| fail(&format_args!("invalid method: {e}")))?;
        let policy = if self.resiliency.is_empty() {
            None
        } else {
            self.resiliency.app(&target)
        };
        // Only a policy needs the name (to pick a method's breaker): no copy otherwise.
        let method_name = match &policy {
            Some(_) => method.name().to_owned(),
            None => String::new(),
        };
        let mut path = method.path;
        if let Some(q) = query.as_deref().filter(|q| !q.is_empty()) {
            path.push('?');
            path.push_str(q);
        }
        headers::strip_request(&mut headers);

        if grpc_proxy && (self.endpoints.contains_key(&target) || target.contains("://")) {
            return Err(fail(
                &"gRPC proxying targets app ids only, not HTTP endpoints or URLs",
            ));
        }
        let call = Call {
            verb,
            path,
            headers,
            body,
            grpc: grpc_proxy,
        };
        match policy {
            None => self.dispatch(&target, call).await,
            Some(policy) => {
                self.dispatch_with_policy(&target, &method_name, call, &policy)
                    .await
            }
        }
    }

    /// Runs the call under the target's resiliency policy.
    async fn dispatch_with_policy(
        &self,
        target: &str,
        method: &str,
        call: Call,
        policy: &AppPolicy,
    ) -> Result<InvokeResponse, ApiError> {
        let breaker = policy.breaker_for(method);
        let policy = policy.policy();
        // Only a body of known length is kept for replay (daprd streams the others once).
        let replayable = policy.has_retries() && call.body.size_hint().exact().is_some();
        let mut once = None;
        let mut replay = None;
        if replayable {
            let bytes = call
                .body
                .collect()
                .await
                .map_err(|e| failed(target, &format_args!("reading the request body: {e}")))?
                .to_bytes();
            replay = Some((call.verb, call.path, call.headers, bytes, call.grpc));
        } else {
            once = Some(call);
        }
        let next = || match (&replay, once.take()) {
            (Some((verb, path, headers, bytes, grpc)), _) => Some(Call {
                verb: verb.clone(),
                path: path.clone(),
                headers: headers.clone(),
                body: full_body(bytes.clone()),
                grpc: *grpc,
            }),
            (None, call) => call,
        };
        let mut next = next;
        let outcome = policy
            .run_with(
                breaker.as_deref(),
                replayable,
                || {
                    let call = next();
                    async move {
                        match call {
                            Some(call) => self.dispatch(target, call).await,
                            None => Err(failed(target, &"the request body was already sent")),
                        }
                    }
                },
                classify,
            )
            .await;
        outcome.unwrap_or_else(|e| {
            let code = match e {
                PolicyError::Timeout(_) => ErrorCode::DirectInvokeTimeout,
                PolicyError::CircuitOpen | PolicyError::TooManyRequests => {
                    ErrorCode::DirectInvokeCircuitOpen
                }
            };
            Err(ApiError::new(
                code,
                format!("failed to invoke, id: {target}, err: {e}"),
            ))
        })
    }

    /// Sends the call to an HTTPEndpoint, a URL, this app or another app's sidecar.
    async fn dispatch(&self, target: &str, call: Call) -> Result<InvokeResponse, ApiError> {
        let fail = |err: &dyn fmt::Display| failed(target, err);
        if let Some(endpoint) = self.endpoints.get(target) {
            if let Some(problem) = &endpoint.problem {
                return Err(fail(&format_args!(
                    "HTTPEndpoint {target} is not usable: {problem}"
                )));
            }
            return self
                .call_external(&endpoint.base, &endpoint.headers, call)
                .await
                .map_err(|e| fail(&e));
        }
        match Target::parse(target).map_err(|e| fail(&e))? {
            Target::Url(base) => self
                .call_external(base.trim_end_matches('/'), &[], call)
                .await
                .map_err(|e| fail(&e)),
            Target::App { id, namespace } => {
                let namespace = namespace.unwrap_or(&self.namespace);
                if id == self.app_id && namespace == self.namespace {
                    self.call_app(call, &self.app_id_value)
                        .await
                        .map_err(|e| fail(&e))
                } else {
                    self.call_sidecar(id, namespace, call)
                        .await
                        .map_err(|e| fail(&e))
                }
            }
        }
    }

    /// Serves a call from another sidecar (the internal listener): checks that it is meant for
    /// this app, applies access control, and forwards it to the app.
    pub async fn handle_internal(&self, req: Request<AppBody>) -> Result<InvokeResponse, ApiError> {
        if !self.metrics.enabled() {
            return self.serve_internal(req).await;
        }
        let caller = match req.extensions().get::<PeerIdentity>() {
            Some(peer) => peer.0.app_id.clone(),
            None => req
                .headers()
                .get(&CALLER_APP_ID)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned(),
        };
        self.metrics.invocation_received(&caller);
        let res = self.serve_internal(req).await;
        let status = match &res {
            Ok(r) => r.status(),
            Err(e) => http::StatusCode::from_u16(e.code.http_status())
                .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR),
        };
        self.metrics.invocation_responded(&caller, status.as_str());
        res
    }

    async fn serve_internal(&self, req: Request<AppBody>) -> Result<InvokeResponse, ApiError> {
        let (parts, body) = req.into_parts();
        let mut headers = parts.headers;
        let callee = headers
            .get(&CALLEE_APP_ID)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if callee.is_empty() {
            return Err(ApiError::new(
                ErrorCode::DirectInvokeWrongApp,
                "failed to invoke, id: , err: the request names no target app id (dapr-callee-app-id)",
            ));
        }
        if callee != self.app_id {
            return Err(ApiError::new(
                ErrorCode::DirectInvokeWrongApp,
                format!(
                    "failed to invoke, id: {callee}, err: this sidecar serves app id {}, not {callee}",
                    self.app_id
                ),
            ));
        }
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let grpc = headers.remove(&GRPC_PROXY).is_some();
        // With mTLS the caller is who its certificate says, whatever the headers claim.
        let peer = parts.extensions.get::<PeerIdentity>().map(|p| p.0.clone());
        if self.security.is_some() && peer.is_none() {
            return Err(ApiError::new(
                ErrorCode::DirectInvoke,
                format!(
                    "failed to invoke, id: {}, err: mTLS is required and the caller's identity did not verify",
                    self.app_id
                ),
            ));
        }
        if let Some(peer) = &peer {
            headers.insert(CALLER_APP_ID, header_value(&peer.app_id));
            headers.insert(CALLER_NAMESPACE, header_value(&peer.namespace));
        }
        if !self.acl.allows_all() {
            let get = |name: &http::HeaderName| {
                headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .filter(|v| !v.is_empty())
            };
            let caller = match &peer {
                Some(p) => Caller {
                    app_id: &p.app_id,
                    namespace: &p.namespace,
                    trust_domain: &p.trust_domain,
                },
                None => Caller {
                    app_id: get(&CALLER_APP_ID).unwrap_or_default(),
                    namespace: get(&CALLER_NAMESPACE).unwrap_or("default"),
                    trust_domain: get(&CALLER_TRUST_DOMAIN).unwrap_or("public"),
                },
            };
            let method = Method::parse(parts.uri.path().trim_start_matches('/'))
                .map_err(|e| failed(&self.app_id, &format_args!("invalid method: {e}")))?;
            // gRPC calls carry no HTTP verb (daprd checks them with `NONE`).
            let verb = if grpc { "NONE" } else { parts.method.as_str() };
            let decision = self.acl.decide(Some(caller), method.name(), verb);
            self.metrics.access_control(decision, &caller);
            if !decision.allowed {
                return Err(ApiError::new(
                    ErrorCode::DirectInvokeForbidden,
                    format!(
                        "failed to invoke, id: {}, err: access control policy has denied access to id: {} operation: {} verb: {verb}",
                        self.app_id,
                        caller.spiffe_id(),
                        method.name()
                    ),
                ));
            }
        }
        headers.remove(&CALLER_TRUST_DOMAIN);
        headers::strip_request(&mut headers);
        // The server span of this hop: the app sees it as its parent.
        let mut span = self
            .tracer
            .start_from_headers(&mut headers, SpanKind::Server, || {
                let method = parts.uri.path().trim_start_matches('/');
                format!("CallLocal/{}/{method}", self.app_id).into()
            });
        if let Some(span) = span.as_mut().filter(|s| s.recording()) {
            span.set_attribute("dapr.protocol", if grpc { "grpc" } else { "http" });
            span.set_attribute("rpc.service", "ServiceInvocation");
            span.set_attribute(
                "dapr.invoke_method",
                parts.uri.path().trim_start_matches('/'),
            );
        }
        let call = Call {
            verb: parts.method,
            path,
            headers,
            body,
            grpc,
        };
        let channel = self
            .app_channel
            .as_ref()
            .ok_or_else(|| failed(&self.app_id, &"app channel is not initialized"))?;
        let grpc = call.grpc;
        let (request, path) = call.into_request_parts();
        let sent = send_to_app(channel, request, &path, grpc).await;
        if let Some(mut span) = span {
            match &sent {
                Ok(r) if r.status().as_u16() >= 400 => {
                    span.set_error(format!("Code({})", r.status().as_u16()));
                }
                Ok(r) => {
                    if let Some(st) = r.extensions().get::<AppGrpcStatus>() {
                        span.set_error(format!("grpc status {}", st.code));
                    }
                }
                Err(e) => span.set_error(e.to_string()),
            }
            span.end();
        }
        let mut resp = sent.map_err(|e| failed(&self.app_id, &e))?;
        // The gRPC app's own status crosses the internal hop as headers.
        if let Some(st) = resp.extensions_mut().remove::<AppGrpcStatus>() {
            st.to_headers(resp.headers_mut());
        }
        Ok(resp)
    }

    async fn call_app(
        &self,
        mut call: Call,
        callee: &HeaderValue,
    ) -> Result<InvokeResponse, String> {
        let channel = self
            .app_channel
            .as_ref()
            .ok_or("cannot invoke local endpoint: app channel not initialized")?;
        self.stamp_identity(&mut call.headers, callee.clone());
        let grpc = call.grpc;
        let (request, path) = call.into_request_parts();
        send_to_app(channel, request, &path, grpc)
            .await
            .map_err(|e| e.to_string())
    }

    fn stamp_identity(&self, headers: &mut HeaderMap, callee: HeaderValue) {
        headers.insert(CALLER_APP_ID, self.app_id_value.clone());
        headers.insert(CALLER_NAMESPACE, self.namespace_value.clone());
        headers.insert(CALLEE_APP_ID, callee);
    }

    async fn call_sidecar(
        &self,
        id: &str,
        namespace: &str,
        mut call: Call,
    ) -> Result<InvokeResponse, String> {
        let directory = self.directory.as_ref().ok_or(&self.resolver_problem)?;
        let callee = HeaderValue::from_str(id).map_err(|_| format!("invalid app id {id}"))?;
        // Room for the identity, forwarding and trace headers at once, not one growth each.
        call.headers.reserve(8);
        self.stamp_identity(&mut call.headers, callee);
        if let Some(td) = &self.trust_domain_value {
            call.headers.insert(CALLER_TRUST_DOMAIN, td.clone());
        }
        self.forwarded.append_to(&mut call.headers);

        let Call {
            verb,
            path,
            mut headers,
            mut body,
            grpc,
        } = call;
        if grpc {
            headers.insert(GRPC_PROXY, HeaderValue::from_static("1"));
            headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
        }
        let start = std::time::Instant::now();
        self.metrics.invocation_sent(id, false);
        let mtls = self
            .security
            .as_ref()
            .map(|s| self.mtls_clients(s, namespace, id));
        let scheme = if mtls.is_some() { "https" } else { "http" };
        // The multiplexed HTTP/2 client names the peer by its address (`:authority`): the
        // path is all its request needs, and its bytes are shared by every attempt.
        let origin_form = mtls.is_none() && !grpc;
        let mut path = bytes::Bytes::from(path);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let pick = directory
                .pick(id, namespace)
                .await
                .map_err(|e| format!("name resolution failed: {e}"))?
                .ok_or("no host found with the given ID")?;
            // Keep what a retry needs only when there is somewhere else to go.
            let retry = pick.choices > 1 && attempt < MAX_ATTEMPTS;
            let uri = if origin_form {
                // A last attempt takes the path's bytes: no shared copy is made of them.
                Uri::from_maybe_shared(if retry {
                    path.clone()
                } else {
                    std::mem::take(&mut path)
                })
            } else {
                let mut text = bytes::BytesMut::with_capacity(
                    scheme.len() + 3 + pick.address.len() + path.len(),
                );
                for piece in [scheme.as_bytes(), b"://", pick.address.as_bytes(), &path] {
                    text.extend_from_slice(piece);
                }
                Uri::from_maybe_shared(text.freeze())
            }
            .map_err(|e| format!("invalid address {}: {e}", pick.address))?;
            let spare = retry.then(|| headers.clone());
            let mut request = Request::new(body);
            *request.method_mut() = verb.clone();
            *request.uri_mut() = uri;
            *request.headers_mut() = headers;
            let error = match self
                .attempt(mtls.as_deref(), grpc, &pick.address, request)
                .await
            {
                Attempt::Answered(resp) => {
                    self.metrics
                        .invocation_answered(id, resp.status().as_str(), start);
                    return Ok(resp);
                }
                Attempt::NotSent {
                    body: unread,
                    refused,
                    error,
                } => {
                    if refused && pick.choices > 1 {
                        directory.failed(id, namespace, &pick.address);
                    }
                    match (unread, spare) {
                        (Some(unread), Some(h)) => {
                            tracing::debug!(app_id = id, address = %pick.address, error = %error, "call not sent; trying another instance");
                            body = unread;
                            headers = h;
                            continue;
                        }
                        _ => error,
                    }
                }
                Attempt::Failed(error) => error,
            };
            return Err(error);
        }
    }

    /// Sends one call to the sidecar at `address`: plain calls over the multiplexed HTTP/2
    /// client (over TLS under mTLS), proxied gRPC calls (and plain calls to sidecars that
    /// speak only HTTP/1.1 over TLS) over hyper.
    async fn attempt(
        &self,
        mtls: Option<&MtlsClients>,
        grpc: bool,
        address: &str,
        mut request: Request<AppBody>,
    ) -> Attempt {
        let mux = match mtls {
            _ if grpc => None,
            None => Some(&self.sidecars),
            Some(c) if c.h1_only.load(Ordering::Relaxed) => None,
            Some(c) => Some(&c.mux),
        };
        if let Some(mux) = mux {
            match mux.send(address, request).await {
                Ok(resp) => return Attempt::Answered(passthrough(resp.map(InvokeBody::h2))),
                Err(SendError::NotSent {
                    error,
                    request: back,
                }) if error.kind() == tandem_http2::client::NO_HTTP2
                    && let Some(c) = mtls =>
                {
                    tracing::info!(
                        address,
                        "the sidecar speaks HTTP/1.1 over TLS only: calls to its app go that way from now on"
                    );
                    c.h1_only.store(true, Ordering::Relaxed);
                    request = *back;
                }
                Err(SendError::NotSent { error, request }) => {
                    return Attempt::NotSent {
                        body: Some(request.into_body()),
                        refused: error.kind() == std::io::ErrorKind::ConnectionRefused,
                        error: self.sidecar_error(address, &error),
                    };
                }
                Err(SendError::Failed(e)) => {
                    return Attempt::Failed(self.sidecar_error(address, &e));
                }
            }
        }
        let (parts, body) = request.into_parts();
        let (replayable, mut back) = Replayable::new(body);
        let request = Request::from_parts(parts, replayable);
        let sent = match mtls {
            Some(c) if grpc => c.h2.request(request).await,
            Some(c) => c.h1.request(request).await,
            None => self.sidecars_h2.request(request).await,
        };
        match sent {
            Ok(resp) => Attempt::Answered(passthrough(resp.map(InvokeBody::incoming))),
            Err(e) if e.is_connect() => Attempt::NotSent {
                body: back.try_recv().ok(),
                refused: true,
                error: self.sidecar_error(address, &e),
            },
            Err(e) => Attempt::Failed(self.sidecar_error(address, &e)),
        }
    }

    async fn call_external(
        &self,
        base: &str,
        extra: &[(http::HeaderName, HeaderValue)],
        mut call: Call,
    ) -> Result<InvokeResponse, String> {
        if base.starts_with("https://") {
            return Err(
                "https:// targets are not supported yet: this build of Tandem has no TLS client; use http://"
                    .into(),
            );
        }
        for (name, value) in extra {
            call.headers.insert(name.clone(), value.clone());
        }
        let uri: Uri = format!("{base}{}", call.path)
            .parse()
            .map_err(|e| format!("invalid URL {base}{}: {e}", call.path))?;
        let mut request = Request::new(call.body);
        *request.method_mut() = call.verb;
        *request.uri_mut() = uri;
        *request.headers_mut() = call.headers;
        self.external
            .request(request)
            .await
            .map(|resp| passthrough(resp.map(InvokeBody::incoming)))
            .map_err(|e| crate::error::error_chain(&e))
    }
}

/// What one attempt at calling a sidecar came to.
enum Attempt {
    /// The sidecar answered.
    Answered(InvokeResponse),
    /// The call never left; its body is back when it could be taken back, and `refused` says
    /// whether the sidecar refused the connection.
    NotSent {
        body: Option<AppBody>,
        refused: bool,
        error: String,
    },
    /// The call failed after it left.
    Failed(String),
}

/// A call on its way to a target.
struct Call {
    verb: http::Method,
    /// `/<method>?<query>`.
    path: String,
    headers: HeaderMap,
    body: AppBody,
    /// A raw gRPC call (gRPC proxying).
    grpc: bool,
}

impl Call {
    /// A fresh request (HTTP/1.1 whatever the caller spoke; the app channel sets the URI).
    fn into_request_parts(self) -> (Request<AppBody>, String) {
        let mut request = Request::new(self.body);
        *request.method_mut() = self.verb;
        *request.headers_mut() = self.headers;
        (request, self.path)
    }
}

/// How an invocation attempt counts for retries and circuit breakers (daprd: any status
/// outside 200–399 is a failure; so is a gRPC app's non-OK status).
fn classify(result: &Result<InvokeResponse, ApiError>) -> Verdict {
    let Ok(resp) = result else {
        return Verdict::Failure(None);
    };
    if let Some(st) = resp.extensions().get::<AppGrpcStatus>()
        && st.code != 0
    {
        return Verdict::Failure(u16::try_from(st.code).ok().map(StatusCode::Grpc));
    }
    let status = resp.status().as_u16();
    if (200..=399).contains(&status) {
        Verdict::Success
    } else {
        Verdict::Failure(Some(StatusCode::Http(status)))
    }
}

fn failed(target: &str, err: &dyn fmt::Display) -> ApiError {
    ApiError::new(
        ErrorCode::DirectInvoke,
        format!("failed to invoke, id: {target}, err: {err}"),
    )
}

/// The gRPC status a gRPC app answered `OnInvoke` with, when it was not OK: attached to the
/// HTTP-shaped response as an extension, so the gRPC API's `InvokeService` can return it
/// unchanged (between sidecars it travels as two internal headers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppGrpcStatus {
    /// The gRPC code.
    pub code: i32,
    /// The status message.
    pub message: String,
}

const GRPC_STATUS_HEADER: HeaderName = HeaderName::from_static("tandem-app-grpc-status");
const GRPC_MESSAGE_HEADER: HeaderName = HeaderName::from_static("tandem-app-grpc-message");

impl AppGrpcStatus {
    fn to_headers(&self, headers: &mut HeaderMap) {
        headers.insert(GRPC_STATUS_HEADER, HeaderValue::from(self.code));
        let message = percent_encoding::utf8_percent_encode(
            &self.message,
            percent_encoding::NON_ALPHANUMERIC,
        )
        .to_string();
        if let Ok(v) = HeaderValue::from_str(&message) {
            headers.insert(GRPC_MESSAGE_HEADER, v);
        }
    }

    fn from_headers(headers: &mut HeaderMap) -> Option<Self> {
        let code = headers.remove(GRPC_STATUS_HEADER)?;
        let message = headers.remove(GRPC_MESSAGE_HEADER);
        Some(Self {
            code: code.to_str().ok()?.parse().ok()?,
            message: message
                .and_then(|m| {
                    percent_encoding::percent_decode(m.as_bytes())
                        .decode_utf8()
                        .ok()
                        .map(|m| m.into_owned())
                })
                .unwrap_or_default(),
        })
    }
}

/// A response from another sidecar or an external endpoint, hop-by-hop headers removed.
fn passthrough(mut resp: InvokeResponse) -> InvokeResponse {
    headers::strip_hop_by_hop(resp.headers_mut());
    if let Some(st) = AppGrpcStatus::from_headers(resp.headers_mut()) {
        resp.extensions_mut().insert(st);
    }
    resp
}

/// Calls the local app: a plain request to an HTTP app, `OnInvoke` for a gRPC app, and a
/// proxied gRPC call as it came.
async fn send_to_app(
    channel: &AppChannel,
    mut request: Request<AppBody>,
    path: &str,
    grpc_proxy: bool,
) -> Result<InvokeResponse, AppError> {
    if grpc_proxy {
        if !channel.is_grpc() {
            return Err(AppError::Transport(format!(
                "gRPC proxying needs a gRPC app, but this app's protocol is {}",
                channel.options().protocol
            )));
        }
        request
            .headers_mut()
            .insert(http::header::TE, HeaderValue::from_static("trailers"));
        return channel.send(request, path).await.map(app_response);
    }
    if !channel.is_grpc() {
        return channel.send(request, path).await.map(app_response);
    }
    let answer = crate::app_channel::grpc::invoke(channel, request, path).await?;
    let mut out = Response::new(InvokeBody::full(answer.body));
    *out.status_mut() = answer.status;
    *out.headers_mut() = answer.headers;
    if let Some((code, message)) = answer.grpc_status {
        out.extensions_mut().insert(AppGrpcStatus { code, message });
    }
    Ok(out)
}

/// A response from the app; its concurrency permit lives as long as the body.
fn app_response(mut resp: AppResponse) -> InvokeResponse {
    let status = resp.response.status();
    let mut headers = std::mem::take(resp.response.headers_mut());
    headers::strip_hop_by_hop(&mut headers);
    let mut out = Response::new(InvokeBody::app(resp));
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    out
}

impl InvokeService {
    fn sidecar_error(&self, address: &str, e: &dyn std::error::Error) -> String {
        let chain = crate::error::error_chain(e);
        if self.security.is_some() && tls_failure(&chain) {
            return format!(
                "calling the sidecar at {address}: mTLS failed, the identity did not verify: {chain}"
            );
        }
        format!("calling the sidecar at {address}: {chain}")
    }
}

/// Whether a failed call failed in the TLS handshake (an unverified certificate on either
/// side, or a peer that does not speak TLS) rather than on the network.
fn tls_failure(chain: &str) -> bool {
    [
        "certificate",
        "alert",
        "SPIFFE",
        "corrupt message",
        "InvalidContentType",
        "tls handshake",
        "close_notify",
    ]
    .iter()
    .any(|w| chain.contains(w))
}

/// The clients for one called app under mTLS.
struct MtlsClients {
    /// Plain calls: one multiplexed HTTP/2 connection over TLS per sidecar.
    mux: tandem_http2::client::Client<AppBody>,
    /// Set once a sidecar of the app did not agree to HTTP/2 (an older Tandem): its plain
    /// calls go over `h1` from then on.
    h1_only: AtomicBool,
    /// Plain calls over pooled HTTP/1.1 connections.
    h1: Client<hyper_rustls::HttpsConnector<HttpConnector>, Replayable>,
    h2: Client<hyper_rustls::HttpsConnector<HttpConnector>, Replayable>,
}
