//! One running subscription: the read loop, the reclaim loop and a task per message.
//!
//! - The **read loop** waits for a free handler slot, then reads up to as many entries as
//!   there are free slots (`XREADGROUP GROUP <group> <consumer> COUNT n BLOCK <readTimeout>
//!   STREAMS <topic> >`) on a connection of its own, and starts a task per entry.
//! - The **reclaim loop** (when redelivery is on) claims entries pending for
//!   `processingTimeout` every `redeliverInterval`, skipping the ones this subscription is
//!   handling, and starts a task per claimed entry.
//! - A **message task** takes a slot, runs the handler, acknowledges on Ack, and meanwhile
//!   renews its claim every half `processingTimeout`.
//!
//! Stopping (the watch channel turns `true`, or its sender is dropped) ends both loops at
//! once: a blocked read is abandoned with its connection. Tasks still waiting for a slot give
//! up; tasks running a handler finish. The subscription task ends after all of them, then
//! removes its consumer from the group if it holds no pending entry.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::{ErrorKind, RedisResult, Value};
use tandem_components::pubsub::{Delivery, Message, MessageHandler};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;

use super::Shared;
use super::entries::{self, Entry};
use crate::client::{Conn, Idempotence};
use crate::metadata::DEFAULT_READ_TIMEOUT;

/// First pause after a failed read; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest pause between read attempts while Redis fails.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Bound on removing the consumer from its group after the subscription stopped.
const RETIRE_TIMEOUT: Duration = Duration::from_secs(2);

/// What a subscription is made of.
pub(super) struct Spec {
    pub(super) shared: Arc<Shared>,
    pub(super) topic: String,
    pub(super) group: String,
    pub(super) consumer: String,
    pub(super) handler: Arc<dyn MessageHandler>,
    /// Handler slots (messages handled at once).
    pub(super) slots: usize,
    pub(super) stop: watch::Receiver<bool>,
}

/// A running subscription, shared by its loops and message tasks.
struct Sub {
    shared: Arc<Shared>,
    topic: String,
    group: String,
    consumer: String,
    handler: Arc<dyn MessageHandler>,
    slots: Arc<Semaphore>,
    /// Ids of the entries this subscription has read or claimed and not yet finished with,
    /// which its reclaim loop must leave alone.
    in_flight: Mutex<HashSet<String>>,
    stop: watch::Receiver<bool>,
    /// `XREADGROUP`'s `BLOCK`.
    block: Duration,
}

/// Starts the subscription's task.
pub(super) fn start(spec: Spec) -> JoinHandle<()> {
    let block = spec
        .shared
        .settings
        .connection
        .read_timeout
        .unwrap_or(DEFAULT_READ_TIMEOUT);
    let sub = Arc::new(Sub {
        shared: spec.shared,
        topic: spec.topic,
        group: spec.group,
        consumer: spec.consumer,
        handler: spec.handler,
        slots: Arc::new(Semaphore::new(spec.slots)),
        in_flight: Mutex::new(HashSet::new()),
        stop: spec.stop,
        block,
    });
    tracing::debug!(component = %sub.shared.name, topic = %sub.topic, group = %sub.group, consumer = %sub.consumer, "pubsub.redis: subscribed");
    tokio::spawn(run(sub))
}

async fn run(sub: Arc<Sub>) {
    // Every message task holds a clone of `alive`; `recv` answers `None` once all are gone.
    let (alive, mut all_done) = mpsc::channel::<()>(1);
    tokio::join!(read_loop(&sub, &alive), reclaim_loop(&sub, &alive));
    drop(alive);
    let _ = all_done.recv().await;
    // Tidying up is optional: never let it hold up `close` for long.
    let _ = tokio::time::timeout(RETIRE_TIMEOUT, sub.retire()).await;
}

/// Resolves once the subscription is told to stop (or its `Subscription` is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Runs `fut` unless the subscription stops first (`None` then).
async fn unless_stopped<T>(
    stop: &mut watch::Receiver<bool>,
    fut: impl Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        biased;
        () = stopped(stop) => None,
        out = fut => Some(out),
    }
}

async fn read_loop(sub: &Arc<Sub>, alive: &mpsc::Sender<()>) {
    let mut stop = sub.stop.clone();
    let mut conn: Option<Conn> = None;
    let mut backoff = FIRST_BACKOFF;
    // Set after re-creating a missing group, so that a group that keeps vanishing is read
    // again with backoff rather than in a tight loop.
    let mut recreated = false;
    loop {
        // Wait for a free slot, without holding it: the reclaim loop may need it too.
        match unless_stopped(&mut stop, sub.slots.acquire()).await {
            Some(Ok(permit)) => drop(permit),
            _ => return,
        }
        let count = sub
            .slots
            .available_permits()
            .clamp(1, sub.shared.settings.queue_depth);
        let outcome = match conn.as_mut() {
            Some(c) => unless_stopped(&mut stop, sub.read(c, count)).await,
            None => {
                // Replies to a blocked read may take `block`, plus the usual reply time.
                let patience = sub.block
                    + sub
                        .shared
                        .settings
                        .connection
                        .read_timeout
                        .unwrap_or(DEFAULT_READ_TIMEOUT);
                match unless_stopped(&mut stop, sub.shared.client.dedicated(patience)).await {
                    None => return,
                    Some(Ok(mut c)) => {
                        let read = unless_stopped(&mut stop, sub.read(&mut c, count)).await;
                        conn = Some(c);
                        read
                    }
                    Some(Err(e)) => Some(Err(e)),
                }
            }
        };
        let Some(outcome) = outcome else { return };
        match outcome {
            Ok(found) => {
                backoff = FIRST_BACKOFF;
                recreated = false;
                for entry in found {
                    sub.dispatch(entry, alive);
                }
                continue;
            }
            Err(e) if e.code() == Some("NOGROUP") => {
                tracing::info!(component = %sub.shared.name, topic = %sub.topic, group = %sub.group, "pubsub.redis: the consumer group does not exist (Redis was unreachable when subscribing, or the group was deleted, or Redis lost its data); creating it");
                let created = sub.shared.ensure_group(&sub.topic, &sub.group).await;
                match created {
                    Ok(()) if !recreated => {
                        recreated = true;
                        continue;
                    }
                    Ok(()) => {}
                    Err(e) => {
                        tracing::warn!(component = %sub.shared.name, topic = %sub.topic, error = %e, retry_in = ?backoff, "pubsub.redis: creating the consumer group failed");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(component = %sub.shared.name, topic = %sub.topic, error = %e, retry_in = ?backoff, "pubsub.redis: reading the stream failed");
                if !is_server_reply(&e) {
                    conn = None;
                }
            }
        }
        if unless_stopped(&mut stop, tokio::time::sleep(backoff))
            .await
            .is_none()
        {
            return;
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Whether `err` is an answer of the server (the connection itself is fine).
fn is_server_reply(err: &redis::RedisError) -> bool {
    matches!(err.kind(), ErrorKind::Server(_)) && !err.is_unrecoverable_error()
}

async fn reclaim_loop(sub: &Arc<Sub>, alive: &mpsc::Sender<()>) {
    let settings = &sub.shared.settings;
    if !settings.redelivers() {
        return;
    }
    let mut stop = sub.stop.clone();
    loop {
        if let Some(Err(e)) = unless_stopped(&mut stop, sub.reclaim(alive)).await {
            tracing::warn!(component = %sub.shared.name, topic = %sub.topic, error = %e, "pubsub.redis: reclaiming pending messages failed");
        }
        if unless_stopped(&mut stop, tokio::time::sleep(settings.redeliver_interval))
            .await
            .is_none()
        {
            return;
        }
    }
}

impl Sub {
    /// One `XREADGROUP` of up to `count` new entries.
    async fn read(&self, conn: &mut Conn, count: usize) -> RedisResult<Vec<Entry>> {
        let reply: Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&self.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(u64::try_from(self.block.as_millis()).unwrap_or(u64::MAX))
            .arg("STREAMS")
            .arg(&self.topic)
            .arg(">")
            .query_async(conn)
            .await?;
        Ok(entries::read_reply(reply, &self.topic))
    }

    /// Claims the group's entries pending for `processingTimeout` or longer (at most as many
    /// as there are free slots), page by page, and starts their delivery.
    async fn reclaim(self: &Arc<Self>, alive: &mpsc::Sender<()>) -> tandem_components::Result<()> {
        let settings = &self.shared.settings;
        let min_idle = settings.processing_timeout;
        let page_size = settings.queue_depth;
        let mut start = "-".to_owned();
        loop {
            let room = self.slots.available_permits().min(page_size);
            if room == 0 {
                return Ok(());
            }
            let mut xpending = redis::cmd("XPENDING");
            xpending
                .arg(&self.topic)
                .arg(&self.group)
                .arg(&start)
                .arg("+")
                .arg(page_size);
            let xpending = &xpending;
            let page = self
                .shared
                .client
                .run(
                    "listing pending messages",
                    Idempotence::Read,
                    |mut c| async move { xpending.query_async::<Value>(&mut c).await },
                )
                .await
                .map(entries::pending_reply)?;
            let Some(last) = page.last() else {
                return Ok(());
            };
            start = entries::next_id(&last.id);
            let candidates: Vec<&entries::Pending> = {
                let mine = self
                    .in_flight
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                page.iter()
                    .filter(|p| p.idle >= min_idle && !mine.contains(&p.id))
                    .take(room)
                    .collect()
            };
            if !candidates.is_empty() {
                let mut xclaim = redis::cmd("XCLAIM");
                xclaim
                    .arg(&self.topic)
                    .arg(&self.group)
                    .arg(&self.consumer)
                    .arg(millis(min_idle));
                for p in &candidates {
                    xclaim.arg(&p.id);
                    tracing::debug!(component = %self.shared.name, topic = %self.topic, id = %p.id, from = %p.consumer, "pubsub.redis: claiming a pending message");
                }
                let xclaim = &xclaim;
                let claimed = self
                    .shared
                    .client
                    .run(
                        "claiming pending messages",
                        Idempotence::Read,
                        |mut c| async move { xclaim.query_async::<Value>(&mut c).await },
                    )
                    .await
                    .map(|reply| entries::entry_list(reply, &self.topic))?;
                for entry in claimed {
                    self.dispatch(entry, alive);
                }
            }
            if page.len() < page_size || candidates.len() >= room {
                return Ok(());
            }
        }
    }

    /// Starts the delivery of one entry on a task of its own.
    fn dispatch(self: &Arc<Self>, entry: Entry, alive: &mpsc::Sender<()>) {
        let Some(message) = entry.message else {
            // Deleted (trimmed) after it was delivered: nothing to hand over; acknowledge it
            // so that it leaves the pending list.
            let sub = Arc::clone(self);
            let alive = alive.clone();
            tokio::spawn(async move {
                sub.ack(&entry.id).await;
                drop(alive);
            });
            return;
        };
        let held = Held::new(Arc::clone(self), entry.id);
        let alive = alive.clone();
        tokio::spawn(async move {
            held.sub.deliver(&held.id, message).await;
            // `held` leaves the in-flight set when dropped, even if the handler panicked.
            drop(held);
            drop(alive);
        });
    }

    /// Waits for a slot, runs the handler (renewing the claim meanwhile) and acknowledges on
    /// Ack. Gives up, leaving the entry pending, if the subscription stops before a slot is
    /// free.
    async fn deliver(&self, id: &str, message: Message) {
        let mut stop = self.stop.clone();
        let work = async {
            let _slot = unless_stopped(&mut stop, self.slots.acquire())
                .await?
                .ok()?;
            Some(self.handler.handle(message).await)
        };
        let verdict = if self.shared.settings.redelivers() {
            let period = self.shared.settings.processing_timeout / 2;
            let renew = async {
                loop {
                    tokio::time::sleep(period).await;
                    self.renew(id).await;
                }
            };
            tokio::select! {
                verdict = work => verdict,
                _ = renew => None,
            }
        } else {
            work.await
        };
        if verdict == Some(Delivery::Ack) {
            self.ack(id).await;
        }
    }

    /// `XACK`. On failure the entry stays pending and is delivered again later.
    async fn ack(&self, id: &str) {
        let mut cmd = redis::cmd("XACK");
        cmd.arg(&self.topic).arg(&self.group).arg(id);
        let cmd = &cmd;
        let acked = self
            .shared
            .client
            .run("acknowledgement", Idempotence::Read, |mut c| async move {
                cmd.query_async::<Value>(&mut c).await.map(drop)
            })
            .await;
        if let Err(e) = acked {
            tracing::warn!(component = %self.shared.name, topic = %self.topic, id, error = %e, "pubsub.redis: the acknowledgement failed; the message will be delivered again");
        }
    }

    /// Resets the entry's idle time, so that no other subscription claims it while its
    /// handler is still running.
    async fn renew(&self, id: &str) {
        let mut cmd = redis::cmd("XCLAIM");
        cmd.arg(&self.topic)
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(0)
            .arg(id)
            .arg("JUSTID");
        let cmd = &cmd;
        let renewed = self
            .shared
            .client
            .run("claim renewal", Idempotence::Read, |mut c| async move {
                cmd.query_async::<Value>(&mut c).await.map(drop)
            })
            .await;
        if let Err(e) = renewed {
            tracing::debug!(component = %self.shared.name, topic = %self.topic, id, error = %e, "pubsub.redis: renewing a claim failed");
        }
    }

    /// After the subscription stopped: removes its consumer from the group when it holds no
    /// pending entry (with entries pending it stays, and other subscriptions claim them).
    async fn retire(&self) {
        let mut pending = redis::cmd("XPENDING");
        pending
            .arg(&self.topic)
            .arg(&self.group)
            .arg("-")
            .arg("+")
            .arg(1)
            .arg(&self.consumer);
        let mut delete = redis::cmd("XGROUP");
        delete
            .arg("DELCONSUMER")
            .arg(&self.topic)
            .arg(&self.group)
            .arg(&self.consumer);
        let (pending, delete) = (&pending, &delete);
        let retired = self
            .shared
            .client
            .run("consumer removal", Idempotence::Read, |mut c| async move {
                let held = entries::pending_reply(pending.query_async::<Value>(&mut c).await?);
                if held.is_empty() {
                    delete.query_async::<Value>(&mut c).await?;
                }
                Ok(())
            })
            .await;
        if let Err(e) = retired {
            tracing::debug!(component = %self.shared.name, topic = %self.topic, consumer = %self.consumer, error = %e, "pubsub.redis: could not remove the consumer from its group");
        }
    }
}

/// An entry in this subscription's in-flight set, for as long as this value lives.
struct Held {
    sub: Arc<Sub>,
    id: String,
}

impl Held {
    fn new(sub: Arc<Sub>, id: String) -> Self {
        sub.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.clone());
        Self { sub, id }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.sub
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
