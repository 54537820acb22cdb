//! The app channel: how the sidecar calls its application, over HTTP or gRPC.
//!
//! One pooled client per app: keep-alive connections reused, through Tandem's own HTTP/1.1
//! client ([`http1`]) for `--app-protocol http`, and hyper's for the others (HTTP/2 with prior
//! knowledge for `h2c` and `grpc`, one multiplexed connection; TLS without certificate
//! verification for `https` and `grpcs`, as daprd does for an app on the same host). The
//! `APP_API_TOKEN` header on every call but health probes, the `--app-max-concurrency` bound,
//! waiting for the app port to open (with backoff, not a busy loop), and app health checks
//! that pause deliveries while the app is unhealthy.
//!
//! HTTP apps are called with plain requests ([`AppChannel::send`]); gRPC apps through the
//! `AppCallback` services ([`grpc`]), with the same semantics.

pub mod grpc;
mod http1;
mod tls;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, Uri};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::lifecycle::Shutdown;

/// The body type sent to the app (and to other sidecars): any boxed stream of bytes.
pub type AppBody = UnsyncBoxBody<Bytes, tandem_components::BoxError>;

/// Wraps bytes as an [`AppBody`].
pub fn full_body(bytes: impl Into<Bytes>) -> AppBody {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An empty [`AppBody`].
pub fn empty_body() -> AppBody {
    full_body(Bytes::new())
}

/// Settings of the app channel (daprd's `--app-*` flags).
#[derive(Clone, Debug)]
pub struct AppChannelOptions {
    /// `--app-port`.
    pub port: u16,
    /// `--app-channel-address`.
    pub address: String,
    /// `--app-protocol`: `http`, `https`, `h2c`, `grpc` or `grpcs`.
    pub protocol: String,
    /// `APP_API_TOKEN`, sent as `dapr-api-token`.
    pub token: Option<String>,
    /// `--app-max-concurrency` when positive.
    pub max_concurrency: Option<usize>,
    /// Health checking, when `--enable-app-health-check`.
    pub health: Option<HealthCheck>,
    /// The largest message exchanged with a gRPC app (`--max-body-size`).
    pub max_message_size: usize,
}

/// The application's protocol (`--app-protocol`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppProtocol {
    /// HTTP/1.1 (and HTTP/2 when the app offers it over TLS).
    Http,
    /// HTTP over TLS.
    Https,
    /// HTTP/2 with prior knowledge, no TLS.
    H2c,
    /// gRPC (`AppCallback`) over HTTP/2 without TLS.
    Grpc,
    /// gRPC over TLS.
    Grpcs,
}

impl AppProtocol {
    /// Parses daprd's `--app-protocol` values.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "http" => Self::Http,
            "https" => Self::Https,
            "h2c" => Self::H2c,
            "grpc" => Self::Grpc,
            "grpcs" => Self::Grpcs,
            _ => return None,
        })
    }

    /// Whether the app is called through the `AppCallback` gRPC services.
    pub fn is_grpc(self) -> bool {
        matches!(self, Self::Grpc | Self::Grpcs)
    }

    fn tls(self) -> bool {
        matches!(self, Self::Https | Self::Grpcs)
    }

    fn http2_only(self) -> bool {
        matches!(self, Self::H2c | Self::Grpc | Self::Grpcs)
    }
}

/// App health-check settings.
#[derive(Clone, Debug)]
pub struct HealthCheck {
    /// `--app-health-check-path`.
    pub path: String,
    /// `--app-health-probe-interval`.
    pub interval: Duration,
    /// `--app-health-probe-timeout`.
    pub timeout: Duration,
    /// `--app-health-threshold`.
    pub threshold: u32,
}

/// Why a call to the app failed before it answered.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The app is marked unhealthy by the health checks.
    #[error("app is not in a healthy state")]
    Unhealthy,
    /// The request could not be built or sent, or the connection failed.
    #[error("error invoking app channel: {0}")]
    Transport(String),
}

pub(crate) type Connector = HttpsConnector<HttpConnector>;

/// The sidecar's channel to its app.
pub struct AppChannel {
    client: Client<Connector, AppBody>,
    /// The client for plain HTTP apps.
    http1: Option<Arc<http1::Pool>>,
    protocol: AppProtocol,
    base: String,
    token: Option<HeaderValue>,
    limit: Option<Arc<Semaphore>>,
    options: AppChannelOptions,
    healthy: watch::Sender<bool>,
    metrics: std::sync::OnceLock<Arc<crate::metrics::Metrics>>,
}

/// A response from the app, holding its concurrency permit until dropped.
pub struct AppResponse {
    /// The response.
    pub response: Response<AnswerBody>,
    _permit: Option<OwnedSemaphorePermit>,
}

/// The body of an app's answer, streamed as it arrives.
#[derive(Debug)]
pub struct AnswerBody(Answer);

#[derive(Debug)]
enum Answer {
    Http1(http1::Body),
    Hyper(Incoming),
}

impl hyper::body::Body for AnswerBody {
    type Data = Bytes;
    type Error = tandem_components::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        match &mut self.0 {
            Answer::Http1(b) => Pin::new(b).poll_frame(cx),
            Answer::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Answer::Http1(b) => b.is_end_stream(),
            Answer::Hyper(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match &self.0 {
            Answer::Http1(b) => b.size_hint(),
            Answer::Hyper(b) => b.size_hint(),
        }
    }
}

impl AppChannel {
    /// A channel to `<scheme>://<address>:<port>`. Health is "unknown → unhealthy" until the
    /// port opens (and, with health checks, until the first successful probe).
    pub fn new(options: AppChannelOptions) -> Arc<Self> {
        let protocol = AppProtocol::parse(&options.protocol).unwrap_or_else(|| {
            tracing::warn!(protocol = %options.protocol, "unknown app protocol; using http");
            AppProtocol::Http
        });
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_secs(5)));
        http.enforce_http(false);
        let connector = tls::connector(http, protocol.http2_only());
        let mut builder = Client::builder(TokioExecutor::new());
        builder.pool_idle_timeout(Duration::from_secs(90));
        if protocol.http2_only() {
            builder.http2_only(true);
        }
        let client = builder.build(connector);
        let host = if options.address.contains(':') {
            format!("[{}]", options.address)
        } else {
            options.address.clone()
        };
        let scheme = if protocol.tls() { "https" } else { "http" };
        let http1 = (protocol == AppProtocol::Http)
            .then(|| Arc::new(http1::Pool::new(&options.address, options.port)));
        Arc::new(Self {
            client,
            http1,
            protocol,
            base: format!("{scheme}://{host}:{}", options.port),
            token: options
                .token
                .as_deref()
                .filter(|t| !t.is_empty())
                .and_then(|t| HeaderValue::from_str(t).ok()),
            limit: options
                .max_concurrency
                .filter(|n| *n > 0)
                .map(|n| Arc::new(Semaphore::new(n))),
            options,
            healthy: watch::Sender::new(false),
            metrics: std::sync::OnceLock::new(),
        })
    }

    /// Records calls to the app in `metrics` (`dapr_http_client_*`, `dapr_grpc_io_client_*`).
    pub fn set_metrics(&self, metrics: Arc<crate::metrics::Metrics>) {
        let _ = self.metrics.set(metrics);
    }

    /// The metrics calls to the app are recorded in, when enabled.
    pub(crate) fn metrics(&self) -> Option<&crate::metrics::Metrics> {
        self.metrics.get().map(|m| &**m).filter(|m| m.enabled())
    }

    /// The app's protocol.
    pub fn protocol(&self) -> AppProtocol {
        self.protocol
    }

    /// Whether the app is a gRPC app (`AppCallback`).
    pub fn is_grpc(&self) -> bool {
        self.protocol.is_grpc()
    }

    /// The app's base URL, e.g. `http://127.0.0.1:3000`.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// The channel's settings.
    pub fn options(&self) -> &AppChannelOptions {
        &self.options
    }

    /// Whether the app currently counts as healthy.
    pub fn is_healthy(&self) -> bool {
        *self.healthy.borrow()
    }

    /// Watches health changes (deliveries pause while `false`).
    pub fn health(&self) -> watch::Receiver<bool> {
        self.healthy.subscribe()
    }

    /// Resolves once the app is healthy.
    pub async fn wait_healthy(&self) {
        let mut rx = self.healthy.subscribe();
        let _ = rx.wait_for(|h| *h).await;
    }

    /// Waits for the app port to accept connections (backing off from 50 ms to 1 s between
    /// attempts), then marks the app healthy or starts the health checks. Returns early when
    /// the sidecar shuts down.
    pub async fn start(self: &Arc<Self>, shutdown: &Shutdown) {
        let addr = (self.options.address.clone(), self.options.port);
        let mut delay = Duration::from_millis(50);
        let stop = shutdown.wait();
        tokio::pin!(stop);
        loop {
            let attempt = tokio::time::timeout(
                Duration::from_millis(500),
                tokio::net::TcpStream::connect(addr.clone()),
            );
            if let Ok(Ok(_)) = attempt.await {
                break;
            }
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(1));
        }
        tracing::info!(address = %self.base, "application is listening");
        match self.options.health.clone() {
            None => {
                self.healthy.send_replace(true);
            }
            Some(check) => {
                let me = self.clone();
                let stop = shutdown.wait();
                tokio::spawn(async move { me.probe_loop(check, stop).await });
            }
        }
    }

    async fn probe_loop(
        self: Arc<Self>,
        check: HealthCheck,
        stop: impl std::future::Future<Output = crate::lifecycle::StopKind>,
    ) {
        tokio::pin!(stop);
        let mut failures = 0u32;
        let mut ticker = tokio::time::interval(check.interval.max(Duration::from_millis(10)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = ticker.tick() => {}
            }
            let ok = self.probe(&check).await;
            if ok {
                failures = 0;
                if !self.is_healthy() {
                    tracing::info!("application is healthy");
                    self.healthy.send_replace(true);
                }
            } else {
                failures += 1;
                if failures >= check.threshold.max(1) && self.is_healthy() {
                    tracing::warn!(failures, "application is unhealthy");
                    self.healthy.send_replace(false);
                }
            }
        }
    }

    /// One probe, recorded in `dapr_http_healthprobes_*` / `dapr_grpc_io_healthprobes_*`.
    async fn probe(&self, check: &HealthCheck) -> bool {
        let start = std::time::Instant::now();
        if self.is_grpc() {
            let code = grpc::health_check(self, check.timeout).await;
            if let Some(m) = self.metrics() {
                m.grpc_health_probe(code as i32, start);
            }
            return code == tonic::Code::Ok;
        }
        let req = Request::new(empty_body());
        let status = match tokio::time::timeout(check.timeout, self.request(req, &check.path)).await
        {
            Ok(Ok(resp)) => resp.status(),
            _ => http::StatusCode::INTERNAL_SERVER_ERROR,
        };
        if let Some(m) = self.metrics() {
            m.http_health_probe(status.as_str(), start);
        }
        status.is_success()
    }

    /// Sends a request to an HTTP app through the client for its protocol.
    async fn request(
        &self,
        mut req: Request<AppBody>,
        path_and_query: &str,
    ) -> Result<Response<AnswerBody>, String> {
        if let Some(pool) = &self.http1 {
            let resp = pool.send(req, path_and_query).await?;
            return Ok(resp.map(|b| AnswerBody(Answer::Http1(b))));
        }
        *req.uri_mut() = format!("{}{}", self.base, path_and_query)
            .parse::<Uri>()
            .map_err(|e| format!("invalid path: {e}"))?;
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| crate::error::error_chain(&e))?;
        Ok(resp.map(|b| AnswerBody(Answer::Hyper(b))))
    }

    /// Refuses calls while health checks say the app is down, then takes a concurrency slot.
    pub(crate) async fn admit(&self) -> Result<Option<OwnedSemaphorePermit>, AppError> {
        if self.options.health.is_some() && !self.is_healthy() {
            return Err(AppError::Unhealthy);
        }
        match &self.limit {
            Some(sem) => sem
                .clone()
                .acquire_owned()
                .await
                .map(Some)
                .map_err(|_| AppError::Transport("app channel closed".into())),
            None => Ok(None),
        }
    }

    /// The API token sent to the app, if any.
    pub(crate) fn token(&self) -> Option<&HeaderValue> {
        self.token.as_ref()
    }

    /// The pooled client (HTTP/2 for gRPC apps).
    pub(crate) fn client(&self) -> &Client<Connector, AppBody> {
        &self.client
    }

    /// Sends a request to an HTTP app. `path_and_query` starts with `/`. The API token is
    /// added. (gRPC apps are called through [`grpc`].)
    pub async fn send(
        &self,
        mut req: Request<AppBody>,
        path_and_query: &str,
    ) -> Result<AppResponse, AppError> {
        let permit = self.admit().await?;
        if let Some(token) = &self.token {
            req.headers_mut().insert("dapr-api-token", token.clone());
        }
        let measure = self.metrics().map(|m| {
            let sent = hyper::body::Body::size_hint(req.body())
                .exact()
                .unwrap_or(0);
            (m, req.method().clone(), sent, std::time::Instant::now())
        });
        let result = self.request(req, path_and_query).await;
        if let Some((m, method, sent, start)) = measure {
            let (status, received) = match &result {
                Ok(r) => (
                    Some(r.status()),
                    r.headers()
                        .get(http::header::CONTENT_LENGTH)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0),
                ),
                Err(_) => (None, 0),
            };
            m.http_client(
                method.as_str(),
                path_and_query,
                status.as_ref().map_or("", http::StatusCode::as_str),
                sent,
                received,
                start,
            );
        }
        let response = result.map_err(AppError::Transport)?;
        Ok(AppResponse {
            response,
            _permit: permit,
        })
    }
}
