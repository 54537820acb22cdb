//! `pubsub.sqlite`: Tandem's embedded durable pub/sub, shared by every process on the machine
//! that opens the same database file.
//!
//! It is the default pub/sub of local mode: no broker to run, and yet several sidecars (one per
//! app) publish to and subscribe from the same topics, with consumer groups, at-least-once
//! delivery and redelivery after crashes.
//!
//! # Semantics
//!
//! - **Durable publish.** `publish` returns after the message is committed (WAL with
//!   `synchronous=NORMAL`, as `state.sqlite`): it survives `kill -9` of every process; only an
//!   OS crash or power loss can lose the last commits.
//! - **Consumer groups.** A group is recorded when it first subscribes to a topic, and from then
//!   on receives every message published to the topic, whether or not a member is running
//!   (messages wait in the database). Groups are never forgotten: a group nobody subscribes to
//!   any more keeps accumulating messages, as a durable queue does.
//! - **Competing consumers.** All subscriptions of a group, in any process, take messages from
//!   the group's share: a message is *leased* by one subscription at a time, for
//!   `processingTimeout`. The holder renews the lease while its handler runs, so only a dead
//!   holder loses it; the message is then delivered again once the lease has run out.
//! - **Verdicts.** Ack deletes the group's delivery (the message goes with the last group);
//!   Retry makes it visible again after a backoff (`redeliverInterval`, doubling per attempt,
//!   capped by `maxRedeliverInterval`). A handler that panics leaves its lease to run out.
//! - **Closing** a subscription (or dropping it) stops leasing at once; the messages being
//!   handled finish and their verdicts are recorded (`close` waits for that). Everything else
//!   stays in the database for the other members of the group, or until it subscribes again.
//! - **At least once.** A message is delivered again only when its lease runs out without a
//!   verdict (the holder died, or could not renew or record the verdict in time), so duplicates
//!   are possible but rare; with every message acknowledged there are none.
//! - **Order.** Messages are leased oldest first (by row id, i.e. commit order), so a single
//!   subscriber with `max_in_flight = 1` sees a topic in publish order, retries aside.
//! - **TTL** (`ttlInSeconds`, feature `MESSAGE_TTL`): an expired message is never delivered; it
//!   is deleted when a subscriber of the group reaches it.
//! - **Bulk publish** (feature `BULK_PUBSUB`): one transaction for the batch.
//!
//! # How it works
//!
//! Tables (created when missing, next to whatever else lives in the file):
//!
//! - `pubsub_messages(id AUTOINCREMENT, topic, data, content_type, metadata, published_at,
//!   expires_at, remaining)`: each message once;
//! - `pubsub_groups(topic, consumer_group, created_at)`: the groups, recorded at their first
//!   subscription;
//! - `pubsub_deliveries(topic, consumer_group, message_id, visible_at, attempts)`: one row per
//!   group and message, inserted by the publish transaction for every group of the topic.
//!   `visible_at` (unix ms) is `0` when fresh, the lease's end while leased, the backoff's end
//!   after a Retry; `attempts` counts leases and is the lease's token.
//!
//! Each subscription runs one task that holds up to `max_in_flight` slots; with free slots it
//! leases that many visible rows (oldest first) in one `BEGIN IMMEDIATE` transaction, so two
//! processes never lease one row twice, and hands each message to the handler on a task of its
//! own, so a slow message never holds back the others.
//!
//! Nothing polls. A subscription that finds nothing to lease sleeps until either
//! - a *wake-up* for its topic arrives. Every publish and every retry, from any process, rings
//!   the topic's in-process `Notify` and sends a datagram naming the topic to each Unix datagram
//!   socket in `<database>.bells/`, one bound by every subscribing process, whose reader task
//!   turns it into a `Notify` ring. Sockets left by dead processes refuse datagrams and are
//!   removed by the sender; or
//! - the one known deadline passes: the earliest `visible_at` of the group's rows (a retry's
//!   backoff end, or the end of a lease that might belong to a dead process).
//!
//! Every publish wakes the idle subscribers, which then see each new row either visible (and
//! lease it) or already leased (and learn its lease's end), so a lease held by a process that
//! dies is always someone's deadline.
//!
//! # Threads
//!
//! SQLite calls block, so every database operation runs on tokio's blocking pool; the async
//! workers only wait. Nearly every operation writes, and SQLite admits one writer at a time,
//! so a component has one connection and queues its operations: the thread that owns the
//! connection runs everything queued in one transaction, each operation in a savepoint of its
//! own (group commit, see `writer`). Alone, an operation commits at once; under load, one
//! commit serves many publishes, leases and acks.

mod bells;
pub mod metadata;
mod store;
mod writer;

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use tandem_components::pubsub::{
    Delivery, MessageHandler, PubSub, PubSubFeature, PublishRequest, SubscribeRequest, Subscription,
};
use tandem_components::{BoxError, Error, Metadata, Result};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;

use self::bells::Bells;
pub use self::metadata::SqlitePubSubMetadata;
use self::store::{Leased, NewMessage, after_ms, now_ms};
use self::writer::Writer;

/// Most messages leased in one transaction.
const LEASE_BATCH: usize = 32;
/// Upper bound on `max_in_flight`, so that a huge value cannot overflow the semaphore.
const MAX_IN_FLIGHT_LIMIT: usize = 1 << 16;
/// Prepared statements kept on the connection (the component uses about a dozen).
const STATEMENT_CACHE: usize = 32;

/// The `pubsub.sqlite` component. See the module documentation for its semantics.
///
/// Built with [`SqlitePubSub::build`]. Subscriptions keep the database open after the component
/// itself is dropped, until they stop.
pub struct SqlitePubSub {
    inner: Arc<Inner>,
}

impl fmt::Debug for SqlitePubSub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlitePubSub")
            .field(
                "processing_timeout",
                &self.inner.settings.processing_timeout,
            )
            .finish_non_exhaustive()
    }
}

impl SqlitePubSub {
    /// Decodes the metadata (see [`SqlitePubSubMetadata`]), opens the database, creates the
    /// tables when missing and the wake-up folder next to the file. Everything happens within
    /// `timeout`.
    pub async fn build(metadata: &Metadata) -> Result<Self> {
        let settings = SqlitePubSubMetadata::from_metadata(metadata)?;
        let timeout = settings.timeout;
        let opening = {
            let settings = settings.clone();
            tokio::task::spawn_blocking(move || open(&settings))
        };
        let (conn, bells) = match tokio::time::timeout(timeout, opening).await {
            Ok(joined) => joined.map_err(Error::backend)??,
            Err(_) => return Err(timed_out("open", timeout)),
        };
        tracing::debug!(component = %metadata.name, "pubsub.sqlite ready");
        Ok(Self {
            inner: Arc::new(Inner {
                settings,
                writer: Arc::new(Writer::new(conn)),
                bells: Arc::new(bells),
            }),
        })
    }
}

#[async_trait]
impl PubSub for SqlitePubSub {
    fn features(&self) -> &'static [PubSubFeature] {
        &[PubSubFeature::MessageTtl, PubSubFeature::BulkPublish]
    }

    async fn publish(&self, req: PublishRequest) -> Result<()> {
        let msg = NewMessage::new(req)?;
        let topic = msg.topic().to_owned();
        self.inner
            .write_and_ring("publish", vec![topic], move |conn| {
                store::publish(conn, &msg, now_ms())
            })
            .await
    }

    /// Every valid message in one transaction (all or none); a message with bad metadata
    /// fails alone.
    async fn bulk_publish(&self, reqs: Vec<PublishRequest>) -> Vec<Result<()>> {
        let mut results: Vec<Result<()>> = Vec::with_capacity(reqs.len());
        let mut valid = Vec::with_capacity(reqs.len());
        for (i, req) in reqs.into_iter().enumerate() {
            match NewMessage::new(req) {
                Ok(msg) => {
                    valid.push((i, msg));
                    results.push(Ok(()));
                }
                Err(err) => results.push(Err(err)),
            }
        }
        if valid.is_empty() {
            return results;
        }
        let topics: Vec<String> = valid
            .iter()
            .map(|(_, m)| m.topic())
            .collect::<HashSet<_>>()
            .into_iter()
            .map(str::to_owned)
            .collect();
        let indexes: Vec<usize> = valid.iter().map(|(i, _)| *i).collect();
        let written = self
            .inner
            .write_and_ring("bulk publish", topics, move |conn| {
                let now = now_ms();
                valid
                    .iter()
                    .try_for_each(|(_, msg)| store::publish(conn, msg, now))
            })
            .await;
        if let Err(err) = written {
            let text = err.to_string();
            for i in indexes {
                results[i] = Err(Error::backend(text.clone()));
            }
        }
        results
    }

    async fn subscribe(
        &self,
        req: SubscribeRequest,
        handler: Arc<dyn MessageHandler>,
    ) -> Result<Subscription> {
        // The bell first: once the group is recorded, publishes from any process must reach us.
        self.inner
            .bells
            .listen()
            .context("binding the wake-up socket")?;
        let topic: Arc<str> = Arc::from(req.topic);
        let group: Arc<str> = Arc::from(req.consumer_group);
        {
            let (topic, group) = (Arc::clone(&topic), Arc::clone(&group));
            self.inner
                .write("subscribe", move |conn| {
                    store::register_group(conn, &topic, &group)
                })
                .await?;
        }
        let member = Member {
            inner: Arc::clone(&self.inner),
            topic,
            group,
            handler,
            max_in_flight: req.max_in_flight.clamp(1, MAX_IN_FLIGHT_LIMIT),
        };
        let (stop, stopped) = Subscription::channel();
        let task = tokio::spawn(member.run(stopped));
        Ok(Subscription::new(stop, task))
    }
}

/// What the component and its subscriptions share.
struct Inner {
    settings: SqlitePubSubMetadata,
    writer: Arc<Writer>,
    bells: Arc<Bells>,
}

impl Inner {
    /// Runs `work` in the writer's next transaction (see [`writer`]), within `timeout`. On
    /// timeout the work still runs (SQLite cannot be abandoned mid-statement) and its outcome
    /// is unknown to the caller, as with any database client.
    async fn write<T, F>(self: &Arc<Self>, op: &'static str, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        self.write_and_ring(op, Vec::new(), work).await
    }

    /// Like [`Inner::write`], and once committed rings `topics` in every process.
    async fn write_and_ring<T, F>(
        self: &Arc<Self>,
        op: &'static str,
        topics: Vec<String>,
        work: F,
    ) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let timeout = self.settings.timeout;
        let run = self.writer.run(&self.bells, topics, work);
        match tokio::time::timeout(timeout, run).await {
            Ok(result) => result,
            Err(_) => Err(timed_out(op, timeout)),
        }
    }

    /// Sets a leased delivery's `visible_at` if the lease is still ours; rings when asked.
    async fn set_visible(
        self: &Arc<Self>,
        op: &'static str,
        sub: (&Arc<str>, &Arc<str>),
        leased: (i64, i64),
        visible_at: i64,
        ring: bool,
    ) -> Result<bool> {
        let (topic, group) = (Arc::clone(sub.0), Arc::clone(sub.1));
        let (id, attempt) = leased;
        let topics = if ring {
            vec![topic.to_string()]
        } else {
            Vec::new()
        };
        self.write_and_ring(op, topics, move |conn| {
            store::set_visible(conn, &topic, &group, id, attempt, visible_at)
        })
        .await
    }
}

/// Opens the connection, sets the journal mode, creates the schema and the wake-up folder.
fn open(settings: &SqlitePubSubMetadata) -> Result<(Connection, Bells)> {
    let mut conn = Connection::open_with_flags(&settings.connection_string, OpenFlags::default())
        .context("opening the database")?;
    conn.busy_timeout(settings.busy_timeout)
        .context("opening the database")?;
    let (journal, synchronous) = if settings.disable_wal {
        ("DELETE", "FULL")
    } else {
        // NORMAL is durable against process crashes in WAL mode (see the module doc).
        ("WAL", "NORMAL")
    };
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", journal, |row| row.get(0))
        .context("setting the journal mode")?;
    if !mode.eq_ignore_ascii_case(journal) {
        tracing::warn!(wanted = journal, actual = %mode, "pubsub.sqlite: journal mode not applied");
    }
    conn.pragma_update(None, "synchronous", synchronous)
        .context("opening the database")?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .context("creating the tables")?;
        tx.execute_batch(store::SCHEMA)
            .context("creating the tables")?;
        tx.commit().context("creating the tables")?;
    }
    let path = match conn.path() {
        Some(path) if !path.is_empty() => std::path::PathBuf::from(path),
        _ => {
            return Err(Error::invalid_metadata(
                "connectionString",
                "must name a database file",
            ));
        }
    };
    let path = std::fs::canonicalize(&path).unwrap_or(path);
    let bells = Bells::open(&path).context("creating the wake-up folder next to the database")?;
    Ok((conn, bells))
}

/// One subscription's task and what it needs.
struct Member {
    inner: Arc<Inner>,
    topic: Arc<str>,
    group: Arc<str>,
    handler: Arc<dyn MessageHandler>,
    max_in_flight: usize,
}

impl Member {
    async fn run(self, mut stop: watch::Receiver<bool>) {
        let permits = Arc::new(Semaphore::new(self.max_in_flight));
        let notify = self.inner.bells.wakers().topic(&self.topic);
        let mut failures = 0u32;
        'run: loop {
            let first = tokio::select! {
                biased;
                _ = stop.wait_for(|stopped| *stopped) => break,
                permit = Arc::clone(&permits).acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            let mut slots = vec![first];
            while slots.len() < LEASE_BATCH {
                match Arc::clone(&permits).try_acquire_owned() {
                    Ok(permit) => slots.push(permit),
                    Err(_) => break,
                }
            }
            loop {
                let notified = notify.notified();
                tokio::pin!(notified);
                // Registered before looking, so a wake-up during the lease is not lost.
                notified.as_mut().enable();
                let wake_at = match self.lease(slots.len()).await {
                    Ok(batch) if !batch.leased.is_empty() => {
                        failures = 0;
                        if *stop.borrow() {
                            // Stopped while leasing: hand the messages back at once.
                            self.release(batch.leased).await;
                            break 'run;
                        }
                        for leased in batch.leased {
                            let Some(slot) = slots.pop() else { break };
                            tokio::spawn(self.deliver(leased, slot));
                        }
                        continue 'run;
                    }
                    Ok(batch) => {
                        failures = 0;
                        batch.next_visible.map(instant_of)
                    }
                    Err(err) => {
                        failures = failures.saturating_add(1);
                        let backoff = Duration::from_millis(250)
                            .saturating_mul(1 << failures.min(7))
                            .min(Duration::from_secs(30));
                        tracing::warn!(error = %err, retry_in = ?backoff, "pubsub.sqlite: leasing messages failed");
                        Some(Instant::now() + backoff)
                    }
                };
                let deadline = async {
                    match wake_at {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    biased;
                    _ = stop.wait_for(|stopped| *stopped) => break 'run,
                    () = &mut notified => {}
                    () = deadline => {}
                }
            }
        }
        // Every permit back means every in-flight handler has answered.
        let all = u32::try_from(self.max_in_flight).unwrap_or(u32::MAX);
        let _ = permits.acquire_many(all).await;
    }

    async fn lease(&self, max: usize) -> Result<store::LeaseBatch> {
        let (topic, group) = (Arc::clone(&self.topic), Arc::clone(&self.group));
        let lease_for = self.inner.settings.processing_timeout;
        self.inner
            .write("lease", move |conn| {
                store::lease(conn, &topic, &group, max, lease_for)
            })
            .await
    }

    /// Makes leased messages visible again right away.
    async fn release(&self, leased: Vec<Leased>) {
        for (i, l) in leased.iter().enumerate() {
            let last = i + 1 == leased.len();
            let sub = (&self.topic, &self.group);
            if let Err(err) = self
                .inner
                .set_visible("release", sub, (l.id, l.attempt), 0, last)
                .await
            {
                tracing::warn!(error = %err, "pubsub.sqlite: releasing a message failed; it is redelivered after processingTimeout");
            }
        }
    }

    /// Hands one message to the handler, renews its lease while the handler runs longer than
    /// a third of `processingTimeout`, then applies the verdict.
    fn deliver(
        &self,
        leased: Leased,
        slot: OwnedSemaphorePermit,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let inner = Arc::clone(&self.inner);
        let handler = Arc::clone(&self.handler);
        let (topic, group) = (Arc::clone(&self.topic), Arc::clone(&self.group));
        async move {
            let Leased {
                id,
                attempt,
                message,
            } = leased;
            let renew_every = inner.settings.processing_timeout / 3;
            let handling = handler.handle(message);
            tokio::pin!(handling);
            let verdict = tokio::select! {
                verdict = &mut handling => verdict,
                () = tokio::time::sleep(renew_every) => {
                    let renewer = tokio::spawn(renew(
                        Arc::clone(&inner),
                        (Arc::clone(&topic), Arc::clone(&group)),
                        (id, attempt),
                    ));
                    let verdict = handling.await;
                    renewer.abort();
                    verdict
                }
            };
            let sub = (&topic, &group);
            let outcome = match verdict {
                Delivery::Ack => {
                    let (topic, group) = (Arc::clone(&topic), Arc::clone(&group));
                    inner
                        .write("ack", move |conn| store::ack(conn, &topic, &group, id))
                        .await
                }
                Delivery::Retry => {
                    let attempts = u32::try_from(attempt).unwrap_or(u32::MAX);
                    let at = after_ms(now_ms(), inner.settings.retry_delay(attempts));
                    // Rung so that every member, in every process, learns the new due time.
                    inner
                        .set_visible("retry", sub, (id, attempt), at, true)
                        .await
                        .map(drop)
                }
            };
            if let Err(err) = outcome {
                tracing::warn!(error = %err, ?verdict, "pubsub.sqlite: recording a verdict failed; the message is redelivered after processingTimeout");
            }
            drop(slot);
        }
    }
}

/// Extends a lease every third of `processingTimeout` until aborted or the lease is lost.
async fn renew(inner: Arc<Inner>, sub: (Arc<str>, Arc<str>), leased: (i64, i64)) {
    let every = inner.settings.processing_timeout / 3;
    loop {
        let until = after_ms(now_ms(), inner.settings.processing_timeout);
        match inner
            .set_visible("renew", (&sub.0, &sub.1), leased, until, false)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!("pubsub.sqlite: lease lost while the handler runs");
                return;
            }
            Err(err) => {
                tracing::warn!(error = %err, "pubsub.sqlite: renewing a lease failed");
            }
        }
        tokio::time::sleep(every).await;
    }
}

/// The tokio instant of a unix-milliseconds time (a millisecond late, never early).
fn instant_of(unix_ms: i64) -> Instant {
    let wait = u64::try_from(unix_ms.saturating_sub(now_ms())).unwrap_or(0);
    Instant::now() + Duration::from_millis(wait.saturating_add(1))
}

fn timed_out(op: &'static str, after: Duration) -> Error {
    Error::backend(format!("pubsub.sqlite: {op} timed out after {after:?}"))
}

/// Adds what was being done to a backend error, keeping it as the source.
trait Context<T> {
    fn context(self, what: &'static str) -> Result<T>;
}

impl<T, E: Into<BoxError>> Context<T> for std::result::Result<T, E> {
    fn context(self, what: &'static str) -> Result<T> {
        self.map_err(|err| {
            Error::backend(ContextError {
                what,
                source: err.into(),
            })
        })
    }
}

#[derive(Debug)]
struct ContextError {
    what: &'static str,
    source: BoxError,
}

impl fmt::Display for ContextError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pubsub.sqlite: {}: {}", self.what, self.source)
    }
}

impl std::error::Error for ContextError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}
