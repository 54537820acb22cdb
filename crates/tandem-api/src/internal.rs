//! The internal listener (`--dapr-internal-grpc-port`): where other Tandem sidecars deliver
//! service invocations for this sidecar's app.
//!
//! The protocol is HTTP/2 with prior knowledge (served by Tandem's own HTTP/2 server; HTTP/1.1
//! is accepted too), or, with mTLS enabled ([`tandem_runtime::security`]), HTTP/2 over TLS
//! when the handshake settles on `h2` (HTTP/1.1 over TLS otherwise), described in
//! [`tandem_runtime::invoke`]; the handler hands each request to
//! [`tandem_runtime::invoke::InvokeService::handle_internal`] and streams the app's answer
//! back. Errors are rendered by [`crate::http::error`], like every other API error, or as
//! gRPC statuses when the call is a proxied gRPC call. Daprd's
//! gRPC `ServiceInvocation` service is not served here: Go daprd sidecars cannot call a
//! Tandem sidecar, nor the other way round.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tandem_components::BoxError;
use tandem_runtime::Runtime;
use tandem_runtime::app_channel::AppBody;
use tandem_runtime::security::{PeerIdentity, SpiffeId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tower::Service;

use crate::http::error::HttpError;

/// The internal API as an axum router: every path and verb is an invocation.
pub fn router(runtime: Arc<Runtime>) -> Router {
    Router::new().fallback(handle).with_state(runtime)
}

async fn handle(State(runtime): State<Arc<Runtime>>, req: Request) -> Response {
    let req = req.map(|b| b.map_err(BoxError::from).boxed_unsync());
    answer(&runtime, req).await
}

/// Hands a call to the invocation service. A refusal of this sidecar's own (access denied,
/// app unhealthy, …) is answered in the call's protocol: a gRPC status for a proxied gRPC
/// call, daprd's JSON error otherwise.
async fn answer(runtime: &Runtime, req: http::Request<AppBody>) -> Response {
    let grpc = req
        .headers()
        .contains_key(tandem_runtime::invoke::headers::GRPC_PROXY);
    match runtime.invoke.handle_internal(req).await {
        Ok(resp) => resp.map(Body::new),
        Err(e) if grpc => crate::grpc::error::to_status(e).into_http::<Body>(),
        Err(e) => HttpError(e).into_response(),
    }
}

/// Serves the internal API on `listener` until `shutdown` resolves, then drains. With mTLS
/// enabled every connection must present a certificate from the trust anchors; the verified
/// identity travels with each of its requests.
pub async fn serve(
    listener: TcpListener,
    runtime: Arc<Runtime>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Some(security) = runtime.invoke.security() {
        let acceptor = TlsAcceptor::from(security.server_config());
        return serve_mtls(listener, runtime, acceptor, shutdown).await;
    }
    let router = router(runtime.clone());
    crate::http::server::accept_loop(
        listener,
        shutdown,
        "internal listener",
        move |tcp, _, mut stopped| {
            let (runtime, router) = (runtime.clone(), router.clone());
            async move {
                // Other sidecars open with the HTTP/2 preface; anything else is HTTP/1.1.
                let mut first = [0u8; 3];
                let peeked = tokio::time::timeout(HANDSHAKE_TIMEOUT, tcp.peek(&mut first)).await;
                if matches!(peeked, Ok(Ok(3))) && first == *b"PRI" {
                    let stop = async move {
                        let _ = stopped.wait_for(|stop| *stop).await;
                    };
                    let internal = Internal {
                        runtime,
                        peer: None,
                    };
                    return crate::http2::serve_connection(tcp, internal, stop).await;
                }
                crate::http::h1::serve_connection(tcp, router, stopped).await;
            }
        },
    )
    .await
}

/// The internal API for the HTTP/2 server; under mTLS with the caller's verified identity,
/// which each of the connection's requests carries.
#[derive(Clone)]
struct Internal {
    runtime: Arc<Runtime>,
    peer: Option<PeerIdentity>,
}

type Answer = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl Service<http::Request<crate::http2::RecvBody>> for Internal {
    type Response = Response;
    type Error = Infallible;
    type Future = Answer;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<crate::http2::RecvBody>) -> Answer {
        let runtime = self.runtime.clone();
        let peer = self.peer.clone();
        crate::boxed(|| async move {
            let mut req = req.map(|b| b.map_err(BoxError::from).boxed_unsync());
            if let Some(peer) = peer {
                req.extensions_mut().insert(peer);
            }
            Ok(answer(&runtime, req).await)
        })
    }
}

/// How long a peer may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

async fn serve_mtls(
    listener: TcpListener,
    runtime: Arc<Runtime>,
    acceptor: TlsAcceptor,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = router(runtime.clone());
    crate::http::server::accept_loop(
        listener,
        shutdown,
        "internal listener",
        move |tcp, addr, stopped| {
            let served = Served {
                runtime: runtime.clone(),
                router: router.clone(),
            };
            connection(tcp, addr, acceptor.clone(), served, stopped)
        },
    )
    .await
}

/// What an mTLS connection is served with: Tandem's HTTP/2 server when the handshake settled
/// on `h2` (other sidecars), the router over hyper's HTTP/1.1 otherwise.
struct Served {
    runtime: Arc<Runtime>,
    router: Router,
}

async fn connection(
    tcp: TcpStream,
    addr: SocketAddr,
    acceptor: TlsAcceptor,
    served: Served,
    mut stopped: watch::Receiver<bool>,
) {
    // A TLS connection opens with a handshake record (0x16); anything else is a plaintext
    // caller, told in its own protocol why it is refused.
    let mut first = [0u8; 3];
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tcp.peek(&mut first)).await {
        Ok(Ok(n)) if n > 0 && first[0] != 0x16 => {
            tracing::warn!(peer = %addr, "internal listener: refused a plaintext caller, mTLS is required");
            if n == 3 && first == *b"PRI" {
                let stop = async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                };
                return crate::http2::serve_connection(tcp, RefusePlaintext, stop).await;
            }
            return refuse_plaintext(tcp).await;
        }
        Ok(Ok(n)) if n > 0 => {}
        _ => return,
    }
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::warn!(peer = %addr, error = %e, "internal listener: mTLS handshake failed, the caller's identity did not verify");
            return;
        }
        Err(_) => return,
    };
    let peer = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| SpiffeId::from_certificate(c));
    let Some(peer) = peer else {
        tracing::warn!(peer = %addr, "internal listener: the caller's certificate carries no SPIFFE id");
        return;
    };
    let peer = PeerIdentity(Arc::new(peer));
    if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
        let internal = Internal {
            runtime: served.runtime,
            peer: Some(peer),
        };
        let stop = async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        };
        return crate::http2::serve_connection(tls, internal, stop).await;
    }
    let router = served.router;
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(peer.clone());
        let mut router = router.clone();
        async move { router.call(req).await }
    });
    crate::http::server::serve_connection(tls, service, stopped).await;
}

/// The error body a plaintext caller gets from a sidecar that requires mTLS.
fn plaintext_refusal(callee: &str) -> String {
    serde_json::json!({
        "errorCode": "ERR_DIRECT_INVOKE",
        "message": format!(
            "failed to invoke, id: {callee}, err: the target sidecar requires mTLS: the caller presented no certificate, its identity did not verify"
        ),
    })
    .to_string()
}

/// Answers every call of a plaintext HTTP/2 caller with `ERR_DIRECT_INVOKE`.
#[derive(Clone)]
struct RefusePlaintext;

impl Service<http::Request<crate::http2::RecvBody>> for RefusePlaintext {
    type Response = Response;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<crate::http2::RecvBody>) -> Self::Future {
        let callee = req
            .headers()
            .get("dapr-callee-app-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let mut resp = Response::new(Body::from(plaintext_refusal(callee)));
        *resp.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        std::future::ready(Ok(resp))
    }
}

/// Answers a plaintext HTTP/1.1 request with `ERR_DIRECT_INVOKE` and closes.
async fn refuse_plaintext(mut tcp: TcpStream) {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 4096];
    let read_head = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        true
    };
    if !matches!(
        tokio::time::timeout(HANDSHAKE_TIMEOUT, read_head).await,
        Ok(true)
    ) || head.starts_with(b"PRI ")
    {
        return;
    }
    let callee = std::str::from_utf8(&head)
        .ok()
        .and_then(|h| {
            h.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case("dapr-callee-app-id")
                    .then(|| v.trim().to_owned())
            })
        })
        .unwrap_or_default();
    let body = plaintext_refusal(&callee);
    let answer = format!(
        "HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tcp.write_all(answer.as_bytes()).await;
    let _ = tcp.shutdown().await;
    // Let the caller finish sending so the answer is not lost to a reset.
    let drain = async { while matches!(tcp.read(&mut buf).await, Ok(n) if n > 0) {} };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}
