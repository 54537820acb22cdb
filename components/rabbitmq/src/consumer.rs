//! The reading side shared by `bindings.rabbitmq` (its input) and `pubsub.rabbitmq` (each
//! subscription): a task that, on every connection, opens a channel, declares what it reads
//! and hands each message on with at most `in_flight` of them at once; it starts over after
//! the channel or connection broke, and ever more slowly while the broker refuses the queue.

use std::future::{Future, poll_fn};
use std::sync::Arc;
use std::time::Duration;

use futures_core::Stream;
use lapin::message::Delivery;
use lapin::options::BasicCancelOptions;
use lapin::{Channel, Consumer};
use tandem_components::pubsub::Subscription;
use tandem_components::{Error, Result};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot, watch};

use crate::link::{Link, LinkState, Live, Lost};

/// Extra time starting waits, beyond one connection attempt, for the consumer to start.
const ATTACH_WAIT: Duration = Duration::from_secs(10);
/// The shortest pause before declaring a queue again, whatever the reconnect wait says.
const MIN_PAUSE: Duration = Duration::from_millis(100);
/// The longest pause between attempts to declare a queue the broker refused.
const MAX_REFUSED_PAUSE: Duration = Duration::from_secs(60);
/// How long cancelling a consumer or closing a channel may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// The log messages of one kind of reader.
pub(crate) struct Words {
    /// The broker is down when reading starts.
    pub deferred: &'static str,
    /// The broker refused the declarations.
    pub refused: &'static str,
    /// The consumer ended on a connection that still works.
    pub again: &'static str,
    /// Consuming started.
    pub consuming: &'static str,
    /// Consuming started again after it had started once (`None`: not logged).
    pub attached_again: Option<&'static str>,
    /// Starting took longer than it waits.
    pub not_yet: &'static str,
}

/// What a reader declares and does with each message.
pub(crate) trait Source: Send + Sync + 'static {
    /// Declares the queue (and whatever else it needs) on `channel`, sets the prefetch and
    /// starts the consumer.
    fn attach(&self, channel: &Channel) -> impl Future<Output = lapin::Result<Consumer>> + Send;
    /// Hands one message on (in a task of its own), holding `permit` until it is settled;
    /// settling is [`Lost::guard`]ed by `lost`.
    fn dispatch(&self, delivery: Delivery, permit: OwnedSemaphorePermit, lost: Lost);
}

/// How one reader is set up.
pub(crate) struct Reader<S> {
    pub link: Arc<Link>,
    pub component: Arc<str>,
    /// The queue read, for messages.
    pub queue: Arc<str>,
    pub words: &'static Words,
    /// The pause before declaring again (doubled while the broker refuses).
    pub reconnect_wait: Duration,
    /// How many messages may be with [`Source::dispatch`] at once.
    pub in_flight: usize,
    pub source: S,
}

/// The first outcome of a reader.
enum Ready {
    /// Consuming.
    Attached,
    /// The broker is down: the reader attaches when it comes back.
    Deferred,
    /// The broker refused the queue (for example other flags than an existing queue's).
    Refused(Error),
}

/// How one consumer (one channel) ended.
enum Ended {
    /// The reader was stopped; everything in flight is settled.
    Stopped,
    /// The channel or connection broke.
    Lost(String),
    /// The broker refused the declarations.
    Refused(lapin::Error),
}

impl<S: Source> Reader<S> {
    /// Starts reading in the background and returns once consuming started, the broker is
    /// found down, or a connection attempt and a while more have passed; fails if the broker
    /// refused the declarations the first time.
    pub(crate) async fn start(self, connect_timeout: Duration) -> Result<Subscription> {
        let (stop_tx, stop_rx) = Subscription::channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        let component = self.component.clone();
        let queue = self.queue.clone();
        let words = self.words;
        let task = tokio::spawn(
            Running {
                permits: Arc::new(Semaphore::new(self.in_flight)),
                reader: self,
                stop: stop_rx,
            }
            .run(ready_tx),
        );
        match tokio::time::timeout(connect_timeout + ATTACH_WAIT, ready_rx).await {
            Ok(Ok(Ready::Attached)) | Ok(Ok(Ready::Deferred)) | Ok(Err(_)) => {}
            Ok(Ok(Ready::Refused(e))) => {
                let _ = task.await;
                return Err(e);
            }
            Err(_) => {
                tracing::warn!(component = %component, queue = %queue, "{}", words.not_yet)
            }
        }
        Ok(Subscription::new(stop_tx, task))
    }
}

/// The task behind one [`Subscription`].
struct Running<S> {
    reader: Reader<S>,
    /// One permit per message being handled; all of them back means nothing is in flight.
    permits: Arc<Semaphore>,
    stop: watch::Receiver<bool>,
}

impl<S: Source> Running<S> {
    async fn run(mut self, ready: oneshot::Sender<Ready>) {
        let r = &self.reader;
        let (component, queue, words) = (r.component.clone(), r.queue.clone(), r.words);
        let mut ready = Some(ready);
        let mut after = 0u64;
        let mut attached_once = false;
        let mut refusals = 0u32;
        let mut states = self.reader.link.states();
        loop {
            // Wait for a connection newer than `after`; say once if the broker is down.
            let live = loop {
                let state = states.borrow_and_update().clone();
                match state {
                    LinkState::Up(live) if live.generation > after => break Some(live),
                    LinkState::Closed => break None,
                    LinkState::Down(_) => {
                        if let Some(r) = ready.take() {
                            tracing::warn!(component = %component, queue = %queue, "{}", words.deferred);
                            let _ = r.send(Ready::Deferred);
                        }
                    }
                    _ => {}
                }
                tokio::select! {
                    _ = stopped(&mut self.stop) => break None,
                    changed = states.changed() => if changed.is_err() { break None },
                }
            };
            let Some(live) = live else { break };
            match self.consume(&live, &mut ready, &mut attached_once).await {
                Ended::Stopped => break,
                Ended::Refused(e) => {
                    tracing::error!(component = %component, queue = %queue, error = %e, "{}", words.refused);
                    if let Some(r) = ready.take() {
                        let _ = r.send(Ready::Refused(Error::backend(format!(
                            "rabbitmq refused queue {queue}: {e}"
                        ))));
                        break;
                    }
                    after = live.generation - 1;
                    refusals += 1;
                }
                Ended::Lost(reason) => {
                    refusals = 0;
                    if live.connected() {
                        tracing::warn!(component = %component, queue = %queue, reason = %reason, "{}", words.again);
                        // The same connection, after a pause.
                        after = live.generation - 1;
                    } else {
                        tracing::debug!(component = %component, queue = %queue, reason = %reason, "rabbitmq connection lost; waiting for the next one");
                        self.reader.link.report_broken();
                        after = live.generation;
                        continue;
                    }
                }
            }
            // A refused declaration is a configuration problem: try again ever more slowly.
            let wait = self.reader.reconnect_wait;
            let pause = wait
                .saturating_mul(1 << refusals.min(5))
                .min(MAX_REFUSED_PAUSE.max(wait))
                .max(MIN_PAUSE);
            tokio::select! {
                _ = stopped(&mut self.stop) => break,
                _ = tokio::time::sleep(pause) => {}
            }
        }
        // Messages of consumers that broke earlier may still be handled.
        let _ = self
            .permits
            .acquire_many(self.reader.in_flight as u32)
            .await;
    }

    /// Declares on a fresh channel and hands messages on until the reader stops or the
    /// channel breaks.
    async fn consume(
        &mut self,
        live: &Live,
        ready: &mut Option<oneshot::Sender<Ready>>,
        attached_once: &mut bool,
    ) -> Ended {
        let r = &self.reader;
        let lost = live.lost();
        let channel = match lost.guard(live.conn.create_channel()).await {
            Ok(c) => c,
            Err(e) => return Ended::Lost(e.to_string()),
        };
        let mut consumer = match lost.guard(r.source.attach(&channel)).await {
            Ok(consumer) => consumer,
            Err(e) if e.is_amqp_soft_error() && live.connected() => return Ended::Refused(e),
            Err(e) => return Ended::Lost(e.to_string()),
        };
        if let Some(ready) = ready.take() {
            let _ = ready.send(Ready::Attached);
        } else if *attached_once && let Some(again) = r.words.attached_again {
            tracing::info!(component = %r.component, queue = %r.queue, "{again}");
        }
        *attached_once = true;
        tracing::debug!(component = %r.component, queue = %r.queue, "{}", r.words.consuming);

        let ended = loop {
            let permit = tokio::select! {
                biased;
                _ = stopped(&mut self.stop) => break None,
                permit = self.permits.clone().acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => break None,
                },
            };
            let next = tokio::select! {
                biased;
                _ = stopped(&mut self.stop) => break None,
                next = poll_fn(|cx| Pin::new(&mut consumer).poll_next(cx)) => next,
                () = lost.wait() => break Some("the connection was lost".to_owned()),
            };
            match next {
                Some(Ok(delivery)) => self.reader.source.dispatch(delivery, permit, lost.clone()),
                Some(Err(e)) => break Some(e.to_string()),
                None => break Some("the broker cancelled the consumer".to_owned()),
            }
        };
        if let Some(reason) = ended {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, channel.close(200, "OK".into())).await;
            return Ended::Lost(reason);
        }
        // Stopping: no new messages, settle those being handled, then give back the rest.
        let _ = tokio::time::timeout(
            CLOSE_TIMEOUT,
            channel.basic_cancel(consumer.tag(), BasicCancelOptions::default()),
        )
        .await;
        let _ = self
            .permits
            .acquire_many(self.reader.in_flight as u32)
            .await;
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, channel.close(200, "OK".into())).await;
        Ended::Stopped
    }
}

/// Resolves once the reader is asked to stop (or its [`Subscription`] is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
