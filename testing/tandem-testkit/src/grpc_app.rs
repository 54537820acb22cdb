//! A scriptable gRPC app for `--app-protocol grpc` / `grpcs` tests.
//!
//! It implements `AppCallback` (invocations are echoed back as JSON; topic events recorded and
//! answered as scripted; subscriptions as given; input-binding events recorded and answered
//! as scripted), `AppCallbackAlpha` (bulk events) and
//! `AppCallbackHealthCheck` (answers as toggled). It also serves a raw streaming method,
//! `/tandem.test.Echo/Stream`, that sends every request frame straight back as it arrives and
//! ends with `grpc-status: 0`, for gRPC-proxying tests of bidirectional streams (see
//! [`ChannelBody`] for the client side). With [`GrpcApp::start_tls`] it serves over TLS with a
//! fresh self-signed certificate.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dapr::dapr::proto::common::v1 as common;
use dapr::dapr::proto::runtime::v1 as rt;
use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame};
use rt::app_callback_alpha_server::{AppCallbackAlpha, AppCallbackAlphaServer};
use rt::app_callback_health_check_server::{AppCallbackHealthCheck, AppCallbackHealthCheckServer};
use rt::app_callback_server::{AppCallback, AppCallbackServer};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tonic::metadata::MetadataMap;
use tonic::service::Routes;
use tonic::{Code, Request, Response, Status};

/// How the app answers topic events delivered to one path.
#[derive(Clone, Debug)]
pub enum EventAnswer {
    /// `SUCCESS`.
    Success,
    /// `RETRY` for the first `n` deliveries of each event id, then `SUCCESS`.
    RetryTimes(usize),
    /// `DROP`.
    Drop,
    /// A gRPC error with this code.
    Error(Code),
}

/// One `OnInvoke` call the app received.
#[derive(Clone, Debug)]
pub struct Invocation {
    /// The request.
    pub request: common::InvokeRequest,
    /// Its metadata (lower-case keys, ASCII values).
    pub metadata: HashMap<String, String>,
}

/// One `OnTopicEvent` call the app received.
#[derive(Clone, Debug)]
pub struct Event {
    /// The request.
    pub request: rt::TopicEventRequest,
    /// Its metadata.
    pub metadata: HashMap<String, String>,
}

#[derive(Default)]
struct Inner {
    subscriptions: Vec<rt::TopicSubscription>,
    answers: HashMap<String, EventAnswer>,
    invocations: Vec<Invocation>,
    events: Vec<Event>,
    bulk: Vec<rt::TopicEventBulkRequest>,
    attempts: HashMap<String, usize>,
    input_bindings: Vec<String>,
    binding_events: Vec<rt::BindingEventRequest>,
    binding_answer: rt::BindingEventResponse,
}

/// A running gRPC app.
#[derive(Clone)]
pub struct GrpcApp {
    inner: Arc<Mutex<Inner>>,
    healthy: Arc<AtomicBool>,
    health_checks: Arc<AtomicUsize>,
    /// The port it listens on (127.0.0.1).
    pub port: u16,
}

fn metadata(md: &MetadataMap) -> HashMap<String, String> {
    md.clone()
        .into_headers()
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect()
}

impl GrpcApp {
    /// Starts a plain-text gRPC app on a free port listing `subscriptions`.
    pub async fn start(subscriptions: Vec<rt::TopicSubscription>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let app = Self::new(&listener, subscriptions);
        let routes = app.routes();
        tokio::spawn(async move {
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            let _ = tonic::transport::Server::builder()
                .add_routes(routes)
                .serve_with_incoming(incoming)
                .await;
        });
        app
    }

    /// Starts the app over TLS (HTTP/2 by ALPN) with a self-signed certificate for
    /// `localhost` / `127.0.0.1`.
    pub async fn start_tls(subscriptions: Vec<rt::TopicSubscription>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let app = Self::new(&listener, subscriptions);
        let router = app.routes().into_axum_router();
        let cert = rcgen::generate_simple_self_signed(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
        ])
        .expect("self-signed certificate");
        let key = rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der())
            .expect("key");
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .expect("server config");
        config.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let router = router.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper_util::service::TowerToHyperService::new(router);
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .http2_only()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
                });
            }
        });
        app
    }

    fn new(listener: &TcpListener, subscriptions: Vec<rt::TopicSubscription>) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                subscriptions,
                ..Default::default()
            })),
            healthy: Arc::new(AtomicBool::new(true)),
            health_checks: Arc::new(AtomicUsize::new(0)),
            port: listener.local_addr().expect("addr").port(),
        }
    }

    fn routes(&self) -> Routes {
        let routes = Routes::new(AppCallbackServer::new(self.clone()))
            .add_service(AppCallbackAlphaServer::new(self.clone()))
            .add_service(AppCallbackHealthCheckServer::new(self.clone()));
        Routes::from(
            routes
                .into_axum_router()
                .route("/tandem.test.Echo/Stream", axum::routing::post(echo_stream)),
        )
    }

    /// Scripts the answer for events delivered with `path` (default: success).
    pub fn answer(&self, path: &str, answer: EventAnswer) {
        self.inner
            .lock()
            .unwrap()
            .answers
            .insert(path.to_owned(), answer);
    }

    /// The input bindings `ListInputBindings` names.
    pub fn set_input_bindings(&self, names: &[&str]) {
        self.inner.lock().unwrap().input_bindings = names.iter().map(|n| (*n).to_owned()).collect();
    }

    /// The answer to every `OnBindingEvent` (default: empty).
    pub fn answer_bindings(&self, answer: rt::BindingEventResponse) {
        self.inner.lock().unwrap().binding_answer = answer;
    }

    /// The input-binding events so far.
    pub fn binding_events(&self) -> Vec<rt::BindingEventRequest> {
        self.inner.lock().unwrap().binding_events.clone()
    }

    /// Toggles the health-check answer.
    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::SeqCst);
    }

    /// How many health checks arrived.
    pub fn health_checks(&self) -> usize {
        self.health_checks.load(Ordering::SeqCst)
    }

    /// The invocations so far.
    pub fn invocations(&self) -> Vec<Invocation> {
        self.inner.lock().unwrap().invocations.clone()
    }

    /// The topic events so far.
    pub fn events(&self) -> Vec<Event> {
        self.inner.lock().unwrap().events.clone()
    }

    /// The bulk deliveries so far.
    pub fn bulk(&self) -> Vec<rt::TopicEventBulkRequest> {
        self.inner.lock().unwrap().bulk.clone()
    }

    /// Waits until `pred(events)` holds, or panics after `within`.
    pub async fn wait_for_events(
        &self,
        within: Duration,
        what: &str,
        pred: impl Fn(&[Event]) -> bool,
    ) -> Vec<Event> {
        let deadline = Instant::now() + within;
        loop {
            let got = self.events();
            if pred(&got) {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; got {} events: {:#?}",
                got.len(),
                got.iter()
                    .map(|e| (&e.request.path, &e.request.id))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn verdict(&self, path: &str, id: &str) -> Result<i32, Status> {
        use rt::topic_event_response::TopicEventResponseStatus as S;
        let mut inner = self.inner.lock().unwrap();
        let answer = inner
            .answers
            .get(path)
            .cloned()
            .unwrap_or(EventAnswer::Success);
        let seen = inner.attempts.entry(id.to_owned()).or_default();
        *seen += 1;
        match answer {
            EventAnswer::Success => Ok(S::Success as i32),
            EventAnswer::RetryTimes(n) if *seen <= n => Ok(S::Retry as i32),
            EventAnswer::RetryTimes(_) => Ok(S::Success as i32),
            EventAnswer::Drop => Ok(S::Drop as i32),
            EventAnswer::Error(code) => Err(Status::new(code, "scripted failure")),
        }
    }
}

#[tonic::async_trait]
impl AppCallback for GrpcApp {
    async fn on_invoke(
        &self,
        request: Request<common::InvokeRequest>,
    ) -> Result<Response<common::InvokeResponse>, Status> {
        let (md, _, req) = request.into_parts();
        let metadata = metadata(&md);
        self.inner.lock().unwrap().invocations.push(Invocation {
            request: req.clone(),
            metadata: metadata.clone(),
        });
        match req.method.as_str() {
            "fail-not-found" => return Err(Status::not_found("no such order")),
            "fail-permission" => return Err(Status::permission_denied("not yours")),
            _ => {}
        }
        let ext = req.http_extension.unwrap_or_default();
        let data = req.data.map(|d| d.value).unwrap_or_default();
        let echo = serde_json::json!({
            "method": req.method,
            "verb": ext.verb,
            "query": ext.querystring,
            "contentType": req.content_type,
            "data": String::from_utf8_lossy(&data),
            "metadata": metadata,
        });
        let mut resp = Response::new(common::InvokeResponse {
            data: Some(prost_types::Any {
                type_url: String::new(),
                value: serde_json::to_vec(&echo).unwrap_or_default(),
            }),
            content_type: "application/json".to_owned(),
        });
        resp.metadata_mut()
            .insert("x-grpc-app", "yes".parse().expect("ascii"));
        Ok(resp)
    }

    async fn list_topic_subscriptions(
        &self,
        _request: Request<()>,
    ) -> Result<Response<rt::ListTopicSubscriptionsResponse>, Status> {
        Ok(Response::new(rt::ListTopicSubscriptionsResponse {
            subscriptions: self.inner.lock().unwrap().subscriptions.clone(),
        }))
    }

    async fn on_topic_event(
        &self,
        request: Request<rt::TopicEventRequest>,
    ) -> Result<Response<rt::TopicEventResponse>, Status> {
        let (md, _, req) = request.into_parts();
        let (path, id) = (req.path.clone(), req.id.clone());
        self.inner.lock().unwrap().events.push(Event {
            request: req,
            metadata: metadata(&md),
        });
        let status = self.verdict(&path, &id)?;
        Ok(Response::new(rt::TopicEventResponse { status }))
    }

    async fn list_input_bindings(
        &self,
        _request: Request<()>,
    ) -> Result<Response<rt::ListInputBindingsResponse>, Status> {
        Ok(Response::new(rt::ListInputBindingsResponse {
            bindings: self.inner.lock().unwrap().input_bindings.clone(),
        }))
    }

    async fn on_binding_event(
        &self,
        request: Request<rt::BindingEventRequest>,
    ) -> Result<Response<rt::BindingEventResponse>, Status> {
        let mut inner = self.inner.lock().unwrap();
        inner.binding_events.push(request.into_inner());
        Ok(Response::new(inner.binding_answer.clone()))
    }

    async fn on_bulk_topic_event(
        &self,
        _request: Request<rt::TopicEventBulkRequest>,
    ) -> Result<Response<rt::TopicEventBulkResponse>, Status> {
        // Like an app built before the stable RPC: the sidecar falls back to the Alpha one.
        Err(Status::unimplemented("use OnBulkTopicEventAlpha1"))
    }

    async fn on_job_event(
        &self,
        _request: Request<rt::JobEventRequest>,
    ) -> Result<Response<rt::JobEventResponse>, Status> {
        Err(Status::unimplemented("no jobs"))
    }
}

#[tonic::async_trait]
impl AppCallbackAlpha for GrpcApp {
    async fn on_bulk_topic_event_alpha1(
        &self,
        request: Request<rt::TopicEventBulkRequest>,
    ) -> Result<Response<rt::TopicEventBulkResponse>, Status> {
        let req = request.into_inner();
        let mut statuses = Vec::new();
        for e in &req.entries {
            statuses.push(rt::TopicEventBulkResponseEntry {
                entry_id: e.entry_id.clone(),
                status: self.verdict(&req.path, &e.entry_id)?,
            });
        }
        self.inner.lock().unwrap().bulk.push(req);
        Ok(Response::new(rt::TopicEventBulkResponse { statuses }))
    }

    async fn on_job_event_alpha1(
        &self,
        _request: Request<rt::JobEventRequest>,
    ) -> Result<Response<rt::JobEventResponse>, Status> {
        Err(Status::unimplemented("no jobs"))
    }
}

#[tonic::async_trait]
impl AppCallbackHealthCheck for GrpcApp {
    async fn health_check(
        &self,
        _request: Request<()>,
    ) -> Result<Response<rt::HealthCheckResponse>, Status> {
        self.health_checks.fetch_add(1, Ordering::SeqCst);
        if self.healthy.load(Ordering::SeqCst) {
            Ok(Response::new(rt::HealthCheckResponse {}))
        } else {
            Err(Status::unavailable("unhealthy"))
        }
    }
}

async fn echo_stream(req: axum::extract::Request) -> axum::response::Response {
    let mut resp = axum::response::Response::new(axum::body::Body::new(Echo {
        inner: req.into_body(),
        done: false,
    }));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    resp
}

/// Echoes the request body's data frames, then trailers with `grpc-status: 0`.
struct Echo {
    inner: axum::body::Body,
    done: bool,
}

impl Body for Echo {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => {
                    self.done = true;
                    let mut trailers = HeaderMap::new();
                    trailers.insert("grpc-status", HeaderValue::from_static("0"));
                    trailers.insert("x-echo-trailer", HeaderValue::from_static("done"));
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
            }
        }
    }
}

/// A request body fed through a channel, one frame per message: for streaming clients.
pub struct ChannelBody {
    rx: mpsc::UnboundedReceiver<Bytes>,
}

impl ChannelBody {
    /// A body and the sender that feeds it (dropping the sender ends the body).
    pub fn new() -> (mpsc::UnboundedSender<Bytes>, Self) {
        let (tx, rx) = mpsc::unbounded_channel();
        (tx, Self { rx })
    }
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.rx.poll_recv(cx).map(|m| m.map(|b| Ok(Frame::data(b))))
    }
}

/// A gRPC length-prefixed message frame (uncompressed).
pub fn grpc_frame(payload: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(5 + payload.len());
    out.push(0);
    out.extend_from_slice(&u32::try_from(payload.len()).expect("small").to_be_bytes());
    out.extend_from_slice(payload);
    Bytes::from(out)
}
