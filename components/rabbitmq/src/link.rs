//! The component's one AMQP connection: opened in the background when the component is built,
//! watched, and opened again with backoff when it breaks.
//!
//! Everyone reads the connection's state from one `watch` channel ([`LinkState`]): publishers
//! take the live connection or fail at once while it is down, subscriptions wait for the next
//! live connection and declare their queue again. The task that owns the connection sleeps
//! until something happens (a connection-level event from lapin, a report from a publisher
//! or subscription that saw the connection fail, or the component going away); nothing polls.

use std::collections::HashSet;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_core::Stream;
use lapin::options::ConfirmSelectOptions;
use lapin::tcp::OwnedTLSConfig;
use lapin::uri::AMQPUri;
use lapin::{Channel, Connection, ConnectionProperties, Event};
use tandem_components::{Error, Result};
use tokio::sync::{Notify, watch};

/// The longest pause between connection attempts (unless `reconnectWaitSeconds` is longer).
const MAX_RECONNECT_WAIT: Duration = Duration::from_secs(30);
/// The shortest pause between connection attempts, whatever `reconnectWaitSeconds` says.
const MIN_RECONNECT_WAIT: Duration = Duration::from_millis(100);
/// How long closing the connection may take when the component goes away.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// What opening and re-opening the connection needs, taken from a component's settings.
#[derive(Clone)]
pub(crate) struct LinkSettings {
    /// The broker.
    pub(crate) uri: AMQPUri,
    /// Extra trusted CA and client identity (used with `amqps`).
    pub(crate) tls: OwnedTLSConfig,
    /// The connection name shown by RabbitMQ's management tools.
    pub(crate) client_name: Option<String>,
    /// How long one connection attempt may take.
    pub(crate) connect_timeout: Duration,
    /// The pause before reconnecting; it doubles after each failed attempt.
    pub(crate) reconnect_wait: Duration,
}

/// Where the connection stands.
#[derive(Clone)]
pub(crate) enum LinkState {
    /// The first attempt is under way: callers wait for its outcome.
    Connecting,
    /// Connected.
    Up(Arc<Live>),
    /// Not connected; the next attempt comes after a pause. The text says why (never a
    /// metadata value).
    Down(Arc<str>),
    /// The component went away.
    Closed,
}

/// A live connection and the channel publishes go through.
pub(crate) struct Live {
    pub(crate) conn: Connection,
    /// Counts connections, so that a subscription can wait for a newer one.
    pub(crate) generation: u64,
    publisher: ArcSwap<Publisher>,
    /// Serialises re-opening the publisher channel.
    reopen: tokio::sync::Mutex<()>,
    /// Set once this connection is gone (broken, or closed with the component).
    gone: watch::Sender<bool>,
}

/// Fails broker operations of one connection once that connection is gone.
///
/// lapin can leave an operation pending for ever when it is started just as its connection
/// breaks: the request reaches the connection's queue after the I/O loop stopped reading it,
/// and nothing resolves it. A publish, a declaration or an acknowledgement would then hang,
/// and so would closing a subscription that waits for its acknowledgements. Every broker
/// round trip therefore runs [`Lost::guard`]ed: it ends with the connection at the latest.
#[derive(Clone)]
pub(crate) struct Lost(watch::Receiver<bool>);

impl Lost {
    /// Runs `op`, or fails it once the connection is gone, whichever comes first.
    pub(crate) async fn guard<T>(
        &self,
        op: impl Future<Output = lapin::Result<T>>,
    ) -> lapin::Result<T> {
        let mut gone = self.0.clone();
        tokio::select! {
            biased;
            done = op => done,
            // A dropped sender means the connection is gone too.
            _ = gone.wait_for(|gone| *gone) => Err(connection_lost()),
        }
    }

    /// Resolves once the connection is gone.
    pub(crate) async fn wait(&self) {
        let _ = self.0.clone().wait_for(|gone| *gone).await;
    }
}

fn connection_lost() -> lapin::Error {
    std::io::Error::new(
        std::io::ErrorKind::ConnectionAborted,
        "the connection to rabbitmq was lost",
    )
    .into()
}

/// The publishing channel (in confirm mode) and the exchanges declared on it.
pub(crate) struct Publisher {
    pub(crate) channel: Channel,
    declared: RwLock<HashSet<String>>,
}

impl Publisher {
    async fn open(conn: &Connection) -> lapin::Result<Self> {
        let channel = conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self {
            channel,
            declared: RwLock::new(HashSet::new()),
        })
    }

    /// Whether `exchange` was declared on this channel.
    pub(crate) fn declared(&self, exchange: &str) -> bool {
        self.declared
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(exchange)
    }

    /// Records that `exchange` exists.
    pub(crate) fn mark_declared(&self, exchange: &str) {
        self.declared
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(exchange.to_owned());
    }

    /// Forgets that `name` was declared (it was deleted meanwhile).
    pub(crate) fn forget_declared(&self, name: &str) {
        self.declared
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
    }
}

impl Live {
    /// Whether the connection is still open.
    pub(crate) fn connected(&self) -> bool {
        self.conn.status().connected()
    }

    /// What ends this connection's operations once it is gone.
    pub(crate) fn lost(&self) -> Lost {
        Lost(self.gone.subscribe())
    }

    /// Runs one broker operation on this connection (see [`Lost`]).
    pub(crate) async fn guard<T>(
        &self,
        op: impl Future<Output = lapin::Result<T>>,
    ) -> lapin::Result<T> {
        self.lost().guard(op).await
    }

    /// The current publisher.
    pub(crate) fn publisher(&self) -> Arc<Publisher> {
        self.publisher.load_full()
    }

    /// Replaces `failed` (whose channel the broker closed, for example after publishing to an
    /// exchange that was auto-deleted meanwhile) with a fresh channel, unless another caller
    /// already did.
    pub(crate) async fn reopen_publisher(&self, failed: &Arc<Publisher>) -> Result<Arc<Publisher>> {
        let _guard = self.reopen.lock().await;
        let current = self.publisher.load_full();
        if !Arc::ptr_eq(&current, failed) {
            return Ok(current);
        }
        let fresh = Arc::new(
            self.guard(Publisher::open(&self.conn))
                .await
                .map_err(Error::backend)?,
        );
        self.publisher.store(fresh.clone());
        Ok(fresh)
    }
}

/// Owner of the connection task; dropping the last handle closes the connection.
pub(crate) struct Link {
    shared: Arc<Shared>,
    close: watch::Sender<bool>,
}

struct Shared {
    state: watch::Sender<LinkState>,
    /// Rung by whoever sees the connection fail before lapin reports it.
    broken: Notify,
}

impl Link {
    /// Starts connecting in the background (on the current tokio runtime).
    pub(crate) fn start(settings: Arc<LinkSettings>, component: String) -> Arc<Self> {
        let (state, _) = watch::channel(LinkState::Connecting);
        let shared = Arc::new(Shared {
            state,
            broken: Notify::new(),
        });
        let (close, closed) = watch::channel(false);
        tokio::spawn(run(shared.clone(), settings, component, closed));
        Arc::new(Self { shared, close })
    }

    /// The live connection for a call: waits (up to `timeout`) only while the very first
    /// attempt is under way; fails at once while the connection is down.
    pub(crate) async fn live(&self, timeout: Duration) -> Result<Arc<Live>> {
        if let LinkState::Up(live) = &*self.shared.state.borrow() {
            return Ok(live.clone());
        }
        let mut rx = self.shared.state.subscribe();
        let wait = rx.wait_for(|s| !matches!(s, LinkState::Connecting));
        let state = match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(state)) => state.clone(),
            Ok(Err(_)) => LinkState::Closed,
            Err(_) => {
                return Err(unreachable_error(
                    "the connection attempt is taking too long",
                ));
            }
        };
        match state {
            LinkState::Up(live) => Ok(live),
            LinkState::Down(reason) => Err(unreachable_error(&reason)),
            LinkState::Closed => Err(Error::backend("the component is closed")),
            LinkState::Connecting => Err(unreachable_error("not connected yet")),
        }
    }

    /// A receiver of state changes.
    pub(crate) fn states(&self) -> watch::Receiver<LinkState> {
        self.shared.state.subscribe()
    }

    /// Tells the connection task that an operation saw the connection fail.
    pub(crate) fn report_broken(&self) {
        self.shared.broken.notify_one();
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let _ = self.close.send(true);
    }
}

fn unreachable_error(reason: &str) -> Error {
    Error::backend(format!("rabbitmq is unreachable: {reason}"))
}

/// Opens the connection and its publisher channel.
async fn connect(settings: &LinkSettings) -> lapin::Result<(Connection, Publisher)> {
    let mut props = ConnectionProperties::default();
    if let Some(name) = &settings.client_name {
        props = props.with_connection_name(name.clone().into());
    }
    let runtime = lapin::runtime::default_runtime()?;
    let conn = Connection::connect_uri_with_config(
        settings.uri.clone(),
        props,
        settings.tls.clone(),
        runtime,
    )
    .await?;
    match Publisher::open(&conn).await {
        Ok(publisher) => Ok((conn, publisher)),
        Err(e) => {
            let _ = conn.close(200, "OK".into()).await;
            Err(e)
        }
    }
}

/// The connection task.
async fn run(
    shared: Arc<Shared>,
    settings: Arc<LinkSettings>,
    component: String,
    mut closed: watch::Receiver<bool>,
) {
    let mut generation = 0u64;
    let mut failures = 0u32;
    loop {
        let attempt = tokio::time::timeout(settings.connect_timeout, connect(&settings));
        let outcome = tokio::select! {
            _ = closed.wait_for(|c| *c) => break,
            outcome = attempt => outcome,
        };
        let failure: String = match outcome {
            Ok(Ok((conn, publisher))) => {
                generation += 1;
                if generation > 1 || failures > 0 {
                    tracing::info!(component = %component, "connected to rabbitmq");
                } else {
                    tracing::debug!(component = %component, "connected to rabbitmq");
                }
                failures = 0;
                let mut events = Box::pin(conn.events_listener());
                let live = Arc::new(Live {
                    conn,
                    generation,
                    publisher: ArcSwap::from_pointee(publisher),
                    reopen: tokio::sync::Mutex::new(()),
                    gone: watch::Sender::new(false),
                });
                shared.state.send_replace(LinkState::Up(live.clone()));
                let ended = watch_connection(&shared, &live, &mut events, &mut closed).await;
                live.gone.send_replace(true);
                match ended {
                    Some(reason) => {
                        tracing::warn!(component = %component, reason = %reason, wait = ?settings.reconnect_wait, "rabbitmq connection lost; reconnecting");
                        shared
                            .state
                            .send_replace(LinkState::Down(reason.clone().into()));
                        // Wait the configured pause before the first new attempt.
                        let pause = settings.reconnect_wait.max(MIN_RECONNECT_WAIT);
                        tokio::select! {
                            _ = closed.wait_for(|c| *c) => break,
                            _ = tokio::time::sleep(pause) => {}
                        }
                        continue;
                    }
                    None => {
                        let _ =
                            tokio::time::timeout(CLOSE_TIMEOUT, live.conn.close(200, "OK".into()))
                                .await;
                        break;
                    }
                }
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!(
                "no connection within {:?} (connection_timeout)",
                settings.connect_timeout
            ),
        };
        failures += 1;
        let pause = backoff(settings.reconnect_wait, failures);
        if failures == 1 {
            tracing::error!(component = %component, error = %failure, retry_in = ?pause, "cannot connect to rabbitmq; publishing fails and subscriptions wait until it answers");
        } else {
            tracing::debug!(component = %component, error = %failure, retry_in = ?pause, "still cannot connect to rabbitmq");
        }
        shared.state.send_replace(LinkState::Down(failure.into()));
        tokio::select! {
            _ = closed.wait_for(|c| *c) => break,
            _ = tokio::time::sleep(pause) => {}
        }
    }
    shared.state.send_replace(LinkState::Closed);
}

/// Waits until the connection breaks (`Some(reason)`) or the component closes (`None`).
async fn watch_connection(
    shared: &Shared,
    live: &Live,
    events: &mut Pin<Box<impl Stream<Item = Event>>>,
    closed: &mut watch::Receiver<bool>,
) -> Option<String> {
    loop {
        // An event sent before the listener existed is lost: look at the status too.
        if !live.connected() {
            return Some("the connection is closed".into());
        }
        tokio::select! {
            _ = closed.wait_for(|c| *c) => return None,
            event = poll_fn(|cx| events.as_mut().poll_next(cx)) => match event {
                // Channel errors arrive here too; only a closed connection counts.
                Some(Event::Error(e)) if !live.connected() => return Some(e.to_string()),
                Some(_) => {}
                None => return Some("the connection ended".into()),
            },
            _ = shared.broken.notified() => {}
        }
    }
}

/// The pause after `failures` failed attempts in a row: `base`, doubling, capped.
fn backoff(base: Duration, failures: u32) -> Duration {
    let base = base.max(MIN_RECONNECT_WAIT);
    let cap = base.max(MAX_RECONNECT_WAIT);
    let factor = 1u32 << failures.saturating_sub(1).min(16);
    base.saturating_mul(factor).min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_guarded_operation_ends_with_its_connection() {
        let (gone, rx) = watch::channel(false);
        let lost = Lost(rx);
        let op = lost.guard(std::future::pending::<lapin::Result<()>>());
        tokio::pin!(op);
        let short = Duration::from_millis(50);
        assert!(
            tokio::time::timeout(short, &mut op).await.is_err(),
            "pending while the connection lives"
        );
        gone.send_replace(true);
        let err = tokio::time::timeout(Duration::from_secs(5), op)
            .await
            .expect("ends once the connection is gone")
            .unwrap_err();
        assert!(
            err.to_string().contains("connection to rabbitmq was lost"),
            "{err}"
        );
        // What finished first keeps its outcome.
        assert_eq!(lost.guard(async { Ok(7) }).await.unwrap(), 7);

        // A connection dropped without a word counts as gone.
        let (gone, rx) = watch::channel(false);
        let lost = Lost(rx);
        drop(gone);
        let ended = tokio::time::timeout(
            short,
            lost.guard(std::future::pending::<lapin::Result<()>>()),
        );
        assert!(ended.await.expect("ends at once").is_err());
        tokio::time::timeout(short, lost.wait())
            .await
            .expect("wait ends too");
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let s = Duration::from_secs;
        assert_eq!(backoff(s(3), 1), s(3));
        assert_eq!(backoff(s(3), 2), s(6));
        assert_eq!(backoff(s(3), 4), s(24));
        assert_eq!(backoff(s(3), 5), s(30));
        assert_eq!(backoff(s(3), 500), s(30));
        assert_eq!(backoff(s(60), 3), s(60), "a long reconnectWait is the cap");
        let ms = Duration::from_millis;
        assert_eq!(backoff(Duration::ZERO, 1), ms(100), "never a busy loop");
        assert_eq!(backoff(Duration::ZERO, 3), ms(400));
    }
}
