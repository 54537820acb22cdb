//! The HTTP API as one service: what every request goes through before and after the router.
//!
//! Metrics, API logs, tracing and the API token are per-request work around every route. As
//! router layers each would box the routes again and allocate per request (a clone of the
//! inner service, a boxed future, response extensions to carry the matched route out); here
//! they are plain code in one [`Service`] in front of the router, with one small future.
//! What the sidecar records (metrics, logs) comes in through [`Observer`].

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::future::RouteFuture;
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode, Uri, header};
use tandem_runtime::trace::Tracer;
use tower::Service;

use super::{ApiState, trace};

/// What the sidecar records about each request (metrics, API logs).
pub trait Observer: Send + Sync + 'static {
    /// What is kept of a request until its answer.
    type Call: Send + Unpin + 'static;

    /// Whether [`Observer::begin`] needs the route template the request matches (one lookup
    /// per request).
    fn wants_template(&self) -> bool;

    /// Called before anything else sees the request. `template` is the route it matches
    /// (`/v1.0/state/{store}/{key}`), when asked for and when there is one.
    fn begin(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        template: Option<&'static str>,
    ) -> Self::Call;

    /// Called with the answer (before its body is written).
    fn end(&self, call: Self::Call, resp: &Response);
}

/// Observes nothing.
impl Observer for () {
    type Call = ();

    fn wants_template(&self) -> bool {
        false
    }

    fn begin(&self, _: &Method, _: &Uri, _: &HeaderMap, _: Option<&'static str>) {}

    fn end(&self, (): (), _: &Response) {}
}

/// The route templates of the API, to label requests without the router's help.
#[derive(Default)]
pub struct Templates(matchit::Router<&'static str>);

impl Templates {
    pub(super) fn add(&mut self, template: &'static str) {
        // The router has accepted the same template, so it is a valid, unique pattern.
        let _ = self.0.insert(template, template);
    }

    /// The template `path` matches.
    pub fn find(&self, path: &str) -> Option<&'static str> {
        self.0.at(path).ok().map(|m| *m.value)
    }
}

/// The hot routes served without the router, when `spec.api` lets them be registered: a
/// key's `GET` and service invocation by path. Each is matched with a few string
/// comparisons, and its handler is called directly: no route table walk, no path
/// parameters, no extractors.
pub(crate) struct Direct {
    pub(crate) state_get: bool,
    pub(crate) invoke: bool,
    pub(crate) state: ApiState,
}

/// A route served directly.
#[derive(Clone, Copy)]
enum Hot {
    StateGet,
    Invoke,
}

impl Hot {
    fn template(self) -> &'static str {
        match self {
            Hot::StateGet => "/v1.0/state/{store}/{key}",
            Hot::Invoke => "/v1.0/invoke/{*rest}",
        }
    }
}

impl Direct {
    /// The direct route of a request, when it has one and the router would have chosen the
    /// same handler (anything unusual, such as empty segments, is left to the router).
    fn route(&self, method: &Method, path: &str) -> Option<Hot> {
        if self.state_get
            && *method == Method::GET
            && let Some(rest) = path.strip_prefix("/v1.0/state/")
            && let Some((store, key)) = rest.split_once('/')
            && !store.is_empty()
            && !key.is_empty()
            && !key.contains('/')
            && key != "bulk"
            && key != "transaction"
        {
            return Some(Hot::StateGet);
        }
        if self.invoke
            && let Some(rest) = path.strip_prefix("/v1.0/invoke/")
            && !rest.is_empty()
        {
            return Some(Hot::Invoke);
        }
        None
    }
}

struct Shared<O> {
    direct: Direct,
    tracer: Tracer,
    token: Option<Arc<str>>,
    templates: Templates,
    observer: Option<O>,
}

/// The HTTP API's router with tracing, the API token and an [`Observer`] in front.
pub struct ApiService<O> {
    router: Router,
    shared: Arc<Shared<O>>,
}

impl<O> Clone for ApiService<O> {
    fn clone(&self) -> Self {
        Self {
            router: self.router.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<O: Observer> ApiService<O> {
    pub(super) fn new(
        router: Router,
        templates: Templates,
        direct: Direct,
        tracer: Tracer,
        token: Option<Arc<str>>,
        observer: Option<O>,
    ) -> Self {
        let tracer = if tracer.enabled() {
            tracer
        } else {
            Tracer::default()
        };
        Self {
            router,
            shared: Arc::new(Shared {
                direct,
                tracer,
                token,
                templates,
                observer,
            }),
        }
    }
}

impl<O, B> Service<http::Request<B>> for ApiService<O>
where
    O: Observer,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = ApiFuture<O>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> ApiFuture<O> {
        let shared = &self.shared;
        let (mut parts, body) = req.into_parts();
        let hot = shared.direct.route(&parts.method, parts.uri.path());
        let observed = shared.observer.as_ref().map(|o| {
            let template = if !o.wants_template() {
                None
            } else if let Some(hot) = hot {
                Some(hot.template())
            } else {
                shared.templates.find(parts.uri.path())
            };
            o.begin(&parts.method, &parts.uri, &parts.headers, template)
        });
        let traced = match trace::begin(
            &shared.tracer,
            &parts.method,
            &parts.uri,
            &mut parts.headers,
        ) {
            Ok(t) => t,
            Err(refused) => return ApiFuture::answered(refused.answer(), observed, shared),
        };
        if let Some(token) = &shared.token {
            let ok = parts
                .headers
                .get("dapr-api-token")
                .is_some_and(|v| v.as_bytes() == token.as_bytes());
            if !ok && !exempt(&parts.method, &parts.uri) {
                let mut answer = invalid_token();
                if let Some(t) = traced {
                    t.end(&mut answer);
                }
                return ApiFuture::answered(answer, observed, shared);
            }
            parts.headers.remove("dapr-api-token");
        }
        let routed = match hot {
            Some(Hot::StateGet) => {
                let api = shared.direct.state.clone();
                Routed::Direct(crate::boxed(|| async move {
                    super::state::get(State(api), parts.uri)
                        .await
                        .into_response()
                }))
            }
            Some(Hot::Invoke) => {
                let api = shared.direct.state.clone();
                let req = http::Request::from_parts(parts, Body::new(body));
                Routed::Direct(crate::boxed(|| super::invoke::handle(State(api), req)))
            }
            None => {
                let req = http::Request::from_parts(parts, Body::new(body));
                Routed::Router(self.router.call(req))
            }
        };
        ApiFuture {
            routed: Some(routed),
            answer: None,
            traced,
            observed,
            shared: observed_by(shared),
        }
    }
}

/// The shared part, kept by a future only when an observer needs it at the end.
fn observed_by<O>(shared: &Arc<Shared<O>>) -> Option<Arc<Shared<O>>> {
    shared.observer.is_some().then(|| shared.clone())
}

/// The answer of one request through [`ApiService`].
pub struct ApiFuture<O: Observer> {
    routed: Option<Routed>,
    answer: Option<Response>,
    traced: Option<trace::Call>,
    observed: Option<O::Call>,
    shared: Option<Arc<Shared<O>>>,
}

/// A request on its way: through the router, or to a handler called directly.
// The router's future stays inline: the whole future lives in the connection's task, and
// boxing it would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
enum Routed {
    Router(RouteFuture<Infallible>),
    Direct(Pin<Box<dyn Future<Output = Response> + Send>>),
}

impl Future for Routed {
    type Output = Response;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Response> {
        match self.get_mut() {
            Routed::Router(routed) => Pin::new(routed).poll(cx).map(|answer| match answer {
                Ok(answer) => answer,
                Err(never) => match never {},
            }),
            Routed::Direct(direct) => direct.as_mut().poll(cx),
        }
    }
}

impl<O: Observer> ApiFuture<O> {
    fn answered(answer: Response, observed: Option<O::Call>, shared: &Arc<Shared<O>>) -> Self {
        Self {
            routed: None,
            answer: Some(answer),
            traced: None,
            observed,
            shared: observed_by(shared),
        }
    }
}

impl<O: Observer> Future for ApiFuture<O> {
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Every field is `Unpin`: the router's future is a boxed one.
        let this = self.get_mut();
        let mut resp = match (&mut this.routed, this.answer.take()) {
            (_, Some(answer)) => answer,
            (Some(routed), None) => match Pin::new(routed).poll(cx) {
                Poll::Ready(resp) => resp,
                Poll::Pending => return Poll::Pending,
            },
            (None, None) => panic!("ApiFuture polled after completion"),
        };
        this.routed = None;
        if let Some(t) = this.traced.take() {
            t.end(&mut resp);
        }
        if let (Some(shared), Some(call)) = (this.shared.take(), this.observed.take())
            && let Some(o) = &shared.observer
        {
            o.end(call, &resp);
        }
        Poll::Ready(Ok(resp))
    }
}

/// The two health GETs need no API token.
fn exempt(method: &Method, uri: &Uri) -> bool {
    method == Method::GET
        && matches!(
            uri.path().trim_matches('/'),
            "v1.0/healthz" | "v1.0/healthz/outbound"
        )
}

fn invalid_token() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        "invalid api token\n",
    )
        .into_response()
}
