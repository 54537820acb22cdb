//! The plain-TCP HTTP server under the HTTP API, the internal API and the metrics endpoint:
//! HTTP/1.1 and h2c on one port, `TCP_NODELAY` on every accepted socket, and a graceful
//! drain. hyper still serves the internal API over TLS.
//!
//! The service is called directly for each request: no router-level layers or boxed
//! middleware sit between the server and it, so what a request costs is what the service does.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tower::Service;

use super::h1::RequestBody;
use crate::http2::RecvBody;

/// Serves `service` on `listener` until `shutdown` resolves; then stops accepting, lets every
/// open connection finish the requests it has in flight (HTTP/1.1 connections close after
/// their current answer, HTTP/2 ones get a GOAWAY) and returns once they are all closed.
///
/// HTTP/1.1 is served by Tandem's own server ([`super::h1`]); a client that opens with the
/// HTTP/2 preface (h2c with prior knowledge) by Tandem's HTTP/2 server.
pub async fn serve<S>(
    listener: TcpListener,
    service: S,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    S: Service<http::Request<RequestBody>, Response = Response<Body>, Error = Infallible>
        + Service<http::Request<RecvBody>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + Unpin
        + 'static,
    <S as Service<http::Request<RequestBody>>>::Future: Send + 'static,
    <S as Service<http::Request<RecvBody>>>::Future: Send + Unpin + 'static,
{
    accept_loop(
        listener,
        shutdown,
        "HTTP server",
        move |tcp, _, mut stopped| {
            let service = service.clone();
            async move {
                // HTTP/1.1 requests never begin with `PRI`; the HTTP/2 preface does. A client
                // that sends nothing is let go after the time a request head may take.
                let mut first = [0u8; 3];
                let peeked = tokio::select! {
                    peeked = tokio::time::timeout(super::h1::HEAD_TIMEOUT, tcp.peek(&mut first)) => match peeked {
                        Ok(peeked) => peeked,
                        Err(_) => return,
                    },
                    _ = stopped.wait_for(|stop| *stop) => return,
                };
                match peeked {
                    Ok(3) if first == *b"PRI" => {
                        let stop = async move {
                            let _ = stopped.wait_for(|stop| *stop).await;
                        };
                        crate::http2::serve_connection(tcp, service, stop).await;
                    }
                    Ok(n) if n > 0 => super::h1::serve_connection(tcp, service, stopped).await,
                    _ => {}
                }
            }
        },
    )
    .await
}

/// Serves one connection with hyper (HTTP/1.1, or HTTP/2 for a client that opens with its
/// preface) until it closes; when `stopped` changes first, lets it finish the requests it
/// has in flight, then returns.
pub(crate) async fn serve_connection<I, S, B>(io: I, service: S, mut stopped: watch::Receiver<bool>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<http::Request<Incoming>, Response = http::Response<B>>
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let builder = Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stopped.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Accepts connections on `listener` until `shutdown` resolves, each with `TCP_NODELAY` and
/// served on a task of its own by `connection` (given the socket, the peer's address and a
/// receiver that changes when the server stops); then stops accepting, tells every
/// connection to stop, and returns once they have all ended (dropped their receiver).
pub(crate) async fn accept_loop<F, Fut>(
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    what: &'static str,
    mut connection: F,
) -> std::io::Result<()>
where
    F: FnMut(TcpStream, SocketAddr, watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (stop, stopped) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (tcp, addr) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "{what}: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Answers are written in one go; Nagle would hold an HTTP/2 frame until the
        // client's delayed ACK (tens of milliseconds), so every socket sends at once.
        super::no_delay(&tcp);
        let conn = connection(tcp, addr, stopped.clone());
        tokio::spawn(conn);
    }
    drop(listener);
    let _ = stop.send(true);
    drop(stopped);
    // Every connection holds a receiver; they are all gone once drained.
    stop.closed().await;
    Ok(())
}

/// Errors that concern one incoming connection only (the peer gave up before `accept`).
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}
