//! The built-in app (`tandem-bench app`): an HTTP echo for invocation and a counting
//! subscriber for pub/sub, run as a child process of the benchmark so that it is a separate
//! process for the sidecar exactly as a real app is.
//!
//! - any path not listed below: `200` with the request body echoed back;
//! - `GET /dapr/subscribe`: the JSON given with `--subscribe`;
//! - `POST /events`: waits while the gate is closed, sleeps `--delay-ms`, counts, answers
//!   `{"status":"SUCCESS"}`;
//! - `GET /stats`: `{"count": n}`; `POST /reset` sets the count to 0;
//! - `POST /gate/close`, `POST /gate/open`.
//!
//! With `--relay-to N` it is a plain TCP relay instead: every connection it accepts is joined
//! to a new connection to port `N` and bytes are copied both ways, unread. Two of them in a row
//! are the cheapest proxy pair there can be, the floor for the invocation's two sidecars.
//!
//! It prints `port <n>` on stdout once listening. One thread (a current-thread runtime):
//! the app should cost as little CPU as possible on a 2-core machine.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

struct State {
    subscribe: Bytes,
    delay: Duration,
    count: AtomicU64,
    gate: watch::Sender<bool>,
}

/// Runs the app until killed. `args`: `--port N`, `--delay-ms N`, `--subscribe JSON`,
/// `--relay-to N`.
pub fn main(args: &[String]) -> Result<(), String> {
    let mut port = 0u16;
    let mut relay_to = None;
    let mut delay_ms = 0u64;
    let mut subscribe = "[]".to_owned();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut val = || it.next().cloned().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--port" => port = val()?.parse().map_err(|_| "--port takes a number")?,
            "--delay-ms" => delay_ms = val()?.parse().map_err(|_| "--delay-ms takes a number")?,
            "--subscribe" => subscribe = val()?,
            "--relay-to" => {
                relay_to = Some(val()?.parse().map_err(|_| "--relay-to takes a port")?);
            }
            other => return Err(format!("app: unknown flag {other}")),
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    match relay_to {
        Some(to) => rt.block_on(relay(port, to)),
        None => rt.block_on(serve(port, delay_ms, subscribe)),
    }
}

async fn listen(port: u16) -> Result<TcpListener, String> {
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|e| format!("app: cannot listen on {port}: {e}"))?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    println!("port {port}");
    Ok(listener)
}

/// Joins every accepted connection to a new one to `to`, copying bytes both ways.
async fn relay(port: u16, to: u16) -> Result<(), String> {
    let listener = listen(port).await?;
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", to)).await else {
                return;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
        });
    }
}

async fn serve(port: u16, delay_ms: u64, subscribe: String) -> Result<(), String> {
    let listener = listen(port).await?;
    let state = Arc::new(State {
        subscribe: Bytes::from(subscribe),
        delay: Duration::from_millis(delay_ms),
        count: AtomicU64::new(0),
        gate: watch::channel(true).0,
    });
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(state.clone(), req));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let path = req.uri().path().to_owned();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let json = |b: Bytes| {
        Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(b))
            .expect("response")
    };
    Ok(match path.as_str() {
        "/dapr/subscribe" => json(state.subscribe.clone()),
        "/events" => {
            let mut gate = state.gate.subscribe();
            let _ = gate.wait_for(|open| *open).await;
            if !state.delay.is_zero() {
                tokio::time::sleep(state.delay).await;
            }
            state.count.fetch_add(1, Ordering::Relaxed);
            json(Bytes::from_static(br#"{"status":"SUCCESS"}"#))
        }
        "/stats" => json(Bytes::from(format!(
            r#"{{"count":{}}}"#,
            state.count.load(Ordering::Relaxed)
        ))),
        "/reset" => {
            state.count.store(0, Ordering::Relaxed);
            json(Bytes::new())
        }
        "/gate/open" => {
            state.gate.send_replace(true);
            json(Bytes::new())
        }
        "/gate/close" => {
            state.gate.send_replace(false);
            json(Bytes::new())
        }
        _ => Response::new(Full::new(body)),
    })
}
