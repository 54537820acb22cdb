//! The group consumer behind `pubsub.kafka` subscriptions and `bindings.kafka` inputs.
//!
//! # Shape
//!
//! - A **poll thread** (one OS thread per subscription) owns the librdkafka consumer's event
//!   loop: it receives records into a per-partition queue and runs the rebalance callbacks,
//!   which may block (waiting for the handlers of revoked partitions, committing) without
//!   holding up a tokio worker. librdkafka's heartbeats run on its own threads meanwhile.
//! - A **dispatcher** task hands queued records to the [`Sink`], each on a task of its own, up
//!   to the subscription's in-flight bound, in the order [`DeliveryOrder`] asks for: one
//!   record at a time per partition, or per key. It reads the verdicts and moves the
//!   partition's commit position.
//! - The two meet in [`Shared`]: a mutex-guarded tracker (short critical sections, never held
//!   across an `await`), a condition variable that wakes the poll thread, and a `Notify` that
//!   wakes the dispatcher.
//!
//! # Offsets: at least once
//!
//! A partition's commit position is the lowest offset not yet answered `true` (or, with none
//! outstanding, one past the last record received). It is stored after each verdict and
//! committed by librdkafka every second, when partitions are revoked (after their handlers
//! finished, up to [`REVOKE_WAIT`]) and when the subscription stops. A record answered
//! `false` is delivered again after `consumeRetryInterval` (doubling, up to
//! [`MAX_RETRY_PAUSE`]) and holds the commit position back meanwhile; with
//! `consumeRetryEnabled: false` it is skipped instead, as daprd does. A record whose handler
//! panics counts as `false`.
//!
//! # Where a new group starts
//!
//! When partitions are assigned, those without a committed offset get an explicit start,
//! resolved from the watermarks (`initialOffset`: the high one for `newest`, the low one for
//! `oldest`) and committed at once. So a subscription sees everything published after its
//! first assignment, even when another member joins and the partition moves before anything
//! was committed. `subscribe` returns once that first assignment is done.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use tandem_components::pubsub::Subscription;
use tandem_components::{Error, Result};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::client::{LogContext, Producer, Record, unknown_topic};
use crate::metadata::{DeliveryOrder, InitialOffset, KafkaMetadata};

/// The longest pause before a failed record is delivered again.
pub(crate) const MAX_RETRY_PAUSE: Duration = Duration::from_secs(5);
/// How long a revocation waits for the handlers of the revoked partitions.
pub(crate) const REVOKE_WAIT: Duration = Duration::from_secs(30);
/// How long the poll thread blocks in librdkafka when nothing happens (stopping wakes it
/// sooner).
const POLL_TICK: Duration = Duration::from_secs(1);
/// The longest pause between attempts to reach the brokers before subscribing.
const MAX_ATTACH_PAUSE: Duration = Duration::from_secs(10);

/// Receives the records of one subscription.
#[async_trait]
pub(crate) trait Sink: Send + Sync + 'static {
    /// Delivers one record; `true` when it was handled and its offset may be committed.
    async fn deliver(&self, record: &Record) -> bool;
}

/// What to consume.
pub(crate) struct Spec {
    /// The topics (one for a pub/sub subscription, `topics` for a binding).
    pub(crate) topics: Vec<String>,
    /// The consumer group.
    pub(crate) group: String,
    /// The most records handed to the sink at once.
    pub(crate) max_in_flight: usize,
}

/// A partition: (index in the subscription's topics, partition number).
type Tp = (usize, i32);

/// What the first assignment (or its absence) tells `subscribe`.
enum Ready {
    Assigned,
    Deferred,
    Failed(String),
}

/// A record waiting for (another) delivery.
struct Pending {
    record: Arc<Record>,
    failures: u32,
    not_before: Option<Instant>,
}

/// The state of one assigned partition.
#[derive(Default)]
struct Part {
    epoch: u64,
    revoking: bool,
    queue: VecDeque<Pending>,
    /// Offsets received and not yet settled (queued, in flight or waiting to be retried).
    outstanding: BTreeSet<i64>,
    in_flight: usize,
    /// Keys of the records in flight (with `deliveryOrder: key`).
    busy_keys: HashSet<Bytes>,
    /// One past the highest offset received; `-1` when unknown.
    next_offset: i64,
    /// The offset last stored for commit; `-1` when none.
    stored: i64,
    paused: bool,
}

impl Part {
    fn commit_position(&self) -> i64 {
        self.outstanding
            .first()
            .copied()
            .unwrap_or(self.next_offset)
    }
}

#[derive(Default)]
struct Tracker {
    parts: HashMap<Tp, Part>,
    next_epoch: u64,
    in_flight: usize,
    draining: bool,
}

/// What the poll thread and the dispatcher share.
struct Shared {
    settings: Arc<KafkaMetadata>,
    component: Arc<str>,
    topics: Vec<Arc<str>>,
    group: String,
    tracker: Mutex<Tracker>,
    /// Wakes the poll thread: handlers finished, or stopping.
    changed: Condvar,
    /// Wakes the dispatcher: records arrived.
    wake: Notify,
    stopping: AtomicBool,
    ready: Mutex<Option<oneshot::Sender<Ready>>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Tracker> {
        self.tracker.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn topic_index(&self, topic: &str) -> Option<usize> {
        self.topics.iter().position(|t| &**t == topic)
    }

    fn signal_ready(&self, ready: Ready) {
        if let Some(tx) = self.ready.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = tx.send(ready);
        }
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Sleeps on the poll thread for `pause`, or until stopping.
    fn pause(&self, pause: Duration) {
        let t = self.lock();
        if !self.stopping() {
            let _ = self.changed.wait_timeout(t, pause);
        }
    }

    fn single(&self, tp: Tp, offset: Offset) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::with_capacity(1);
        let _ = tpl.add_partition_offset(&self.topics[tp.0], tp.1, offset);
        tpl
    }

    /// Resolves explicit start offsets and registers the newly assigned partitions.
    fn on_assign(&self, consumer: &BaseConsumer<ConsumerCtx>, tpl: &mut TopicPartitionList) {
        let assigned: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect();
        let timeout = self.settings.metadata_timeout;
        let mut starts: Vec<(String, i32, i64)> = Vec::new();
        match consumer.committed_offsets(tpl.clone(), timeout) {
            Ok(committed) => {
                let mut first_commit = TopicPartitionList::new();
                for (topic, p) in &assigned {
                    let known =
                        committed
                            .find_partition(topic, *p)
                            .and_then(|e| match e.offset() {
                                Offset::Offset(o) if o >= 0 => Some(o),
                                _ => None,
                            });
                    let start = match known {
                        Some(o) => Some(o),
                        None => match consumer.fetch_watermarks(topic, *p, timeout) {
                            Ok((low, high)) => {
                                let o = match self.settings.initial_offset {
                                    InitialOffset::Newest => high,
                                    InitialOffset::Oldest => low,
                                };
                                let _ =
                                    first_commit.add_partition_offset(topic, *p, Offset::Offset(o));
                                Some(o)
                            }
                            Err(e) => {
                                consumer
                                    .context()
                                    .log
                                    .warn(&format!("cannot read the offsets of {topic}/{p}: {e}"));
                                None
                            }
                        },
                    };
                    if let Some(o) = start {
                        starts.push((topic.clone(), *p, o));
                    }
                }
                if first_commit.count() > 0
                    && let Err(e) = consumer.commit(&first_commit, CommitMode::Sync)
                {
                    tracing::debug!(component = %self.component, error = %e, "could not commit the start offsets of a new group");
                }
            }
            Err(e) => consumer.context().log.warn(&format!(
                "cannot read the committed offsets of group {}: {e}; librdkafka picks the start",
                self.group
            )),
        }
        for (topic, p, o) in &starts {
            let _ = tpl.set_partition_offset(topic, *p, Offset::Offset(*o));
        }
        let mut t = self.lock();
        for (topic, p) in &assigned {
            let Some(ti) = self.topic_index(topic) else {
                continue;
            };
            let start = starts
                .iter()
                .find(|(st, sp, _)| st == topic && sp == p)
                .map_or(-1, |s| s.2);
            t.next_epoch += 1;
            let epoch = t.next_epoch;
            t.parts.insert(
                (ti, *p),
                Part {
                    epoch,
                    next_offset: start,
                    stored: start,
                    ..Default::default()
                },
            );
        }
        tracing::debug!(component = %self.component, group = %self.group, partitions = assigned.len(), "partitions assigned");
    }

    /// Stops the revoked partitions, waits for their handlers, commits their positions.
    fn on_revoke(&self, consumer: &BaseConsumer<ConsumerCtx>, revoked: &[Tp], lost: bool) {
        let mut t = self.lock();
        for tp in revoked {
            if let Some(part) = t.parts.get_mut(tp) {
                part.revoking = true;
                for p in part.queue.drain(..) {
                    part.outstanding.remove(&p.record.offset);
                }
            }
        }
        let until = std::time::Instant::now() + REVOKE_WAIT;
        while revoked
            .iter()
            .any(|tp| t.parts.get(tp).is_some_and(|p| p.in_flight > 0))
        {
            let now = std::time::Instant::now();
            if now >= until {
                tracing::warn!(component = %self.component, group = %self.group, "handlers still running after {REVOKE_WAIT:?}; giving up their partitions anyway (they will be delivered again)");
                break;
            }
            t = self
                .changed
                .wait_timeout(t, until - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        let mut commit = TopicPartitionList::new();
        let mut resume = TopicPartitionList::new();
        for tp in revoked {
            if let Some(part) = t.parts.remove(tp) {
                if part.stored >= 0 {
                    let _ = commit.add_partition_offset(
                        &self.topics[tp.0],
                        tp.1,
                        Offset::Offset(part.stored),
                    );
                }
                if part.paused {
                    resume.add_partition(&self.topics[tp.0], tp.1);
                }
            }
        }
        drop(t);
        if resume.count() > 0 {
            let _ = consumer.resume(&resume);
        }
        if !lost
            && commit.count() > 0
            && let Err(e) = consumer.commit(&commit, CommitMode::Sync)
        {
            tracing::debug!(component = %self.component, error = %e, "commit at revocation failed; the next owner may see some messages again");
        }
        tracing::debug!(component = %self.component, group = %self.group, partitions = revoked.len(), lost, "partitions revoked");
    }

    /// Takes a record from the poll thread.
    fn receive(&self, consumer: &BaseConsumer<ConsumerCtx>, record: Record) {
        let Some(ti) = self.topic_index(&record.topic) else {
            return;
        };
        let tp = (ti, record.partition);
        let mut t = self.lock();
        let Some(part) = t.parts.get_mut(&tp) else {
            return;
        };
        if part.revoking || (part.next_offset >= 0 && record.offset < part.next_offset) {
            return;
        }
        part.next_offset = record.offset + 1;
        part.outstanding.insert(record.offset);
        part.queue.push_back(Pending {
            record: Arc::new(record),
            failures: 0,
            not_before: None,
        });
        if part.queue.len() >= self.settings.channel_buffer_size && !part.paused {
            part.paused = true;
            let _ = consumer.pause(&self.single(tp, Offset::Invalid));
        }
        drop(t);
        self.wake.notify_one();
    }
}

/// The consumer's context: logs, and the rebalance callbacks on the poll thread.
pub(crate) struct ConsumerCtx {
    log: LogContext,
    shared: Arc<Shared>,
}

impl ClientContext for ConsumerCtx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        self.log.log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.log.error(error, reason);
    }
}

impl ConsumerContext for ConsumerCtx {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let shared = &self.shared;
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                shared.on_assign(consumer, tpl);
                let assigned = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if let Err(e) = assigned {
                    self.log
                        .warn(&format!("cannot take the assigned partitions: {e}"));
                }
                shared.signal_ready(Ready::Assigned);
            }
            other => {
                let revoked: Vec<Tp> =
                    if other == RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS {
                        tpl.elements()
                            .iter()
                            .filter_map(|e| Some((shared.topic_index(e.topic())?, e.partition())))
                            .collect()
                    } else {
                        self.log.warn(&format!("rebalance failed: {other:?}"));
                        shared.lock().parts.keys().copied().collect()
                    };
                shared.on_revoke(consumer, &revoked, consumer.assignment_lost());
                let unassigned = if cooperative
                    && other == RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS
                {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = unassigned {
                    tracing::debug!(component = %shared.component, error = %e, "unassign failed");
                }
            }
        }
    }
}

/// Starts consuming `spec.topics` in `spec.group` and returns once the group gave this
/// member its first partitions (or the brokers are unreachable, or the wait ran out).
pub(crate) async fn start(
    settings: Arc<KafkaMetadata>,
    component: Arc<str>,
    producer: Arc<Producer>,
    spec: Spec,
    sink: Arc<dyn Sink>,
) -> Result<Subscription> {
    if spec.group.trim().is_empty() {
        return Err(Error::InvalidRequest(
            "kafka: a consumer group is required (consumerGroup or consumerID)".into(),
        ));
    }
    if spec.topics.is_empty() {
        return Err(Error::InvalidRequest("kafka: no topic to consume".into()));
    }
    let shared = Arc::new(Shared {
        settings: settings.clone(),
        component: component.clone(),
        topics: spec.topics.iter().map(|t| Arc::from(t.as_str())).collect(),
        group: spec.group.clone(),
        tracker: Mutex::new(Tracker::default()),
        changed: Condvar::new(),
        wake: Notify::new(),
        stopping: AtomicBool::new(false),
        ready: Mutex::new(None),
    });
    let ctx = ConsumerCtx {
        log: LogContext::new(component.clone()),
        shared: shared.clone(),
    };
    let consumer: BaseConsumer<ConsumerCtx> = settings
        .consumer_config(&spec.group)
        .create_with_context(ctx)
        .map_err(|e| Error::backend(format!("cannot create the kafka consumer: {e}")))?;
    let consumer = Arc::new(consumer);
    let (ready_tx, ready_rx) = oneshot::channel();
    *shared.ready.lock().unwrap_or_else(|p| p.into_inner()) = Some(ready_tx);
    let (exit_tx, exit_rx) = oneshot::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    {
        let consumer = consumer.clone();
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("kafka-consumer".into())
            .spawn(move || {
                poll_loop(&consumer, &shared, &producer, &release_rx);
                // The dispatcher lets go of its reference first, so that closing (which
                // leaves the group, after a final revocation) happens here, not on a tokio
                // worker.
                let _ = release_rx.recv_timeout(REVOKE_WAIT);
                drop(consumer);
                let _ = exit_tx.send(());
            })
            .map_err(|e| Error::backend(format!("cannot start the kafka consumer thread: {e}")))?;
    }
    let (stop_tx, stop_rx) = Subscription::channel();
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let dispatcher = Dispatcher {
        shared: shared.clone(),
        consumer: Some(consumer),
        sink,
        done_tx,
        done_rx,
        stop: stop_rx,
        release: Some(release_tx),
        exit: Some(exit_rx),
        max_in_flight: spec.max_in_flight.max(1),
        order: settings.delivery_order,
        retry: settings.consume_retry_enabled,
        retry_interval: settings.consume_retry_interval,
        cursor: 0,
    };
    let task = tokio::spawn(dispatcher.run());
    let wait =
        (settings.session_timeout * 2).max(Duration::from_secs(10)) + settings.metadata_timeout;
    let topics = spec.topics.join(",");
    match tokio::time::timeout(wait, ready_rx).await {
        Ok(Ok(Ready::Assigned)) => {}
        Ok(Ok(Ready::Deferred)) => {
            tracing::warn!(component = %component, topics = %topics, "kafka brokers unreachable; the subscription attaches when they answer")
        }
        Ok(Ok(Ready::Failed(why))) => {
            let _ = stop_tx.send(true);
            let _ = task.await;
            return Err(Error::backend(why));
        }
        Ok(Err(_)) | Err(_) => {
            tracing::warn!(component = %component, topics = %topics, group = %spec.group, "no partitions assigned yet; the subscription keeps joining in the background")
        }
    }
    Ok(Subscription::new(stop_tx, task))
}

/// The poll thread: makes sure the topics exist, subscribes, and polls until stopped.
fn poll_loop(
    consumer: &BaseConsumer<ConsumerCtx>,
    shared: &Shared,
    producer: &Producer,
    release: &std::sync::mpsc::Receiver<()>,
) {
    let dispatcher_gone = || {
        matches!(
            release.try_recv(),
            Err(std::sync::mpsc::TryRecvError::Disconnected)
        )
    };
    let log = &consumer.context().log;
    let mut pause = Duration::from_millis(200);
    'touch: loop {
        for topic in &shared.topics {
            if shared.stopping() || dispatcher_gone() {
                return;
            }
            if let Err(e) = producer.touch_topic(topic, shared.settings.metadata_timeout) {
                shared.signal_ready(Ready::Deferred);
                log.warn(&format!("cannot reach the brokers: {e}"));
                shared.pause(pause);
                pause = (pause * 2).min(MAX_ATTACH_PAUSE);
                continue 'touch;
            }
        }
        break;
    }
    let topics: Vec<&str> = shared.topics.iter().map(|t| &**t).collect();
    if let Err(e) = consumer.subscribe(&topics) {
        shared.signal_ready(Ready::Failed(format!("kafka: cannot subscribe: {e}")));
        return;
    }
    while !shared.stopping() && !dispatcher_gone() {
        match consumer.poll(POLL_TICK) {
            Some(Ok(m)) => {
                let Some(ti) = shared.topic_index(m.topic()) else {
                    continue;
                };
                let record = Record::from_message(shared.topics[ti].clone(), &m);
                drop(m);
                shared.receive(consumer, record);
            }
            Some(Err(e)) if unknown_topic(&e) => {
                tracing::debug!(component = %shared.component, error = %e, "subscribed topic not there yet")
            }
            Some(Err(e)) => log.warn(&format!("consumer: {e}")),
            None => {}
        }
    }
    if consumer.assignment().is_ok_and(|a| a.count() > 0)
        && let Err(e) = consumer.commit_consumer_state(CommitMode::Sync)
    {
        tracing::debug!(component = %shared.component, error = %e, "final commit failed");
    }
}

/// A handler's verdict, back at the dispatcher.
struct Done {
    tp: Tp,
    epoch: u64,
    pending: Pending,
    ok: bool,
}

/// Sends the verdict when the handler task ends, also when it panicked (then as a failure).
struct DoneGuard {
    tx: mpsc::UnboundedSender<Done>,
    done: Option<Done>,
}

impl DoneGuard {
    fn record(&self) -> Arc<Record> {
        self.done
            .as_ref()
            .map(|d| d.pending.record.clone())
            .expect("the record is there until the verdict is sent")
    }

    fn finish(mut self, ok: bool) {
        if let Some(mut d) = self.done.take() {
            d.ok = ok;
            let _ = self.tx.send(d);
        }
    }
}

impl Drop for DoneGuard {
    fn drop(&mut self) {
        if let Some(d) = self.done.take() {
            let _ = self.tx.send(d);
        }
    }
}

/// Hands queued records to the sink and settles their offsets.
struct Dispatcher {
    shared: Arc<Shared>,
    consumer: Option<Arc<BaseConsumer<ConsumerCtx>>>,
    sink: Arc<dyn Sink>,
    done_tx: mpsc::UnboundedSender<Done>,
    done_rx: mpsc::UnboundedReceiver<Done>,
    stop: watch::Receiver<bool>,
    /// Dropped after `consumer`: the poll thread then closes the consumer (also when this
    /// task is dropped without draining, for example at runtime shutdown).
    release: Option<std::sync::mpsc::Sender<()>>,
    exit: Option<oneshot::Receiver<()>>,
    max_in_flight: usize,
    order: DeliveryOrder,
    retry: bool,
    retry_interval: Duration,
    cursor: usize,
}

impl Dispatcher {
    async fn run(mut self) {
        let shared = self.shared.clone();
        loop {
            let next = self.dispatch_ready();
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let done = tokio::select! {
                _ = self.stop.wait_for(|s| *s) => break,
                Some(done) = self.done_rx.recv() => Some(done),
                _ = shared.wake.notified() => None,
                _ = sleep => None,
            };
            if let Some(done) = done {
                self.finish(done);
            }
        }
        self.drain().await;
    }

    /// Stops handing out records, waits for the handlers, then stops the poll thread and
    /// waits until the consumer has left its group.
    async fn drain(mut self) {
        self.shared.lock().draining = true;
        while self.shared.lock().in_flight > 0 {
            match self.done_rx.recv().await {
                Some(done) => self.finish(done),
                None => break,
            }
        }
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.changed.notify_all();
        if let Some(consumer) = self.consumer.take() {
            // Leaving the subscription queues a revocation, which wakes the poll thread.
            consumer.unsubscribe();
        }
        self.release.take();
        if let Some(exit) = self.exit.take() {
            let _ = exit.await;
        }
    }

    /// Starts every record that may go now; returns when the next delayed one may.
    fn dispatch_ready(&mut self) -> Option<Instant> {
        let shared = self.shared.clone();
        let mut t = shared.lock();
        if t.draining {
            return None;
        }
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        let mut keys: Vec<Tp> = t.parts.keys().copied().collect();
        keys.sort_unstable();
        if !keys.is_empty() {
            let n = self.cursor % keys.len();
            keys.rotate_left(n);
            self.cursor = self.cursor.wrapping_add(1);
        }
        let mut start: Vec<(Tp, u64, Pending)> = Vec::new();
        for tp in keys {
            let room = self.max_in_flight.saturating_sub(t.in_flight + start.len());
            if room == 0 {
                break;
            }
            let Some(part) = t.parts.get_mut(&tp) else {
                continue;
            };
            if part.revoking {
                continue;
            }
            match self.order {
                DeliveryOrder::Partition => {
                    if part.in_flight == 0
                        && let Some(head) = part.queue.front()
                    {
                        match head.not_before {
                            Some(at) if at > now => next = min_instant(next, at),
                            _ => {
                                if let Some(p) = part.queue.pop_front() {
                                    part.in_flight += 1;
                                    start.push((tp, part.epoch, p));
                                }
                            }
                        }
                    }
                }
                DeliveryOrder::Key => {
                    let mut blocked: HashSet<Bytes> = HashSet::new();
                    let mut taken = Vec::new();
                    for (i, p) in part.queue.iter().enumerate() {
                        if taken.len() >= room {
                            break;
                        }
                        let key = p.record.key.clone();
                        let free = key
                            .as_ref()
                            .is_none_or(|k| !part.busy_keys.contains(k) && !blocked.contains(k));
                        let due = match p.not_before {
                            Some(at) if at > now => {
                                next = min_instant(next, at);
                                false
                            }
                            _ => true,
                        };
                        if free && due {
                            taken.push(i);
                        }
                        if let Some(k) = key {
                            // Later records of this key wait for this one.
                            blocked.insert(k);
                        }
                    }
                    let mut picked = Vec::with_capacity(taken.len());
                    for i in taken.into_iter().rev() {
                        picked.extend(part.queue.remove(i));
                    }
                    for p in picked.into_iter().rev() {
                        if let Some(k) = &p.record.key {
                            part.busy_keys.insert(k.clone());
                        }
                        part.in_flight += 1;
                        start.push((tp, part.epoch, p));
                    }
                }
            }
            if part.paused && part.queue.len() <= self.shared.settings.channel_buffer_size / 2 {
                part.paused = false;
                if let Some(c) = &self.consumer {
                    let _ = c.resume(&shared.single(tp, Offset::Invalid));
                }
            }
        }
        t.in_flight += start.len();
        drop(t);
        for (tp, epoch, pending) in start {
            let guard = DoneGuard {
                tx: self.done_tx.clone(),
                done: Some(Done {
                    tp,
                    epoch,
                    pending,
                    ok: false,
                }),
            };
            let sink = self.sink.clone();
            tokio::spawn(async move {
                let record = guard.record();
                let ok = sink.deliver(&record).await;
                guard.finish(ok);
            });
        }
        next
    }

    /// Settles one verdict.
    fn finish(&mut self, done: Done) {
        let shared = self.shared.clone();
        let mut t = shared.lock();
        t.in_flight = t.in_flight.saturating_sub(1);
        let draining = t.draining;
        let Some(part) = t.parts.get_mut(&done.tp).filter(|p| p.epoch == done.epoch) else {
            drop(t);
            shared.changed.notify_all();
            return;
        };
        part.in_flight = part.in_flight.saturating_sub(1);
        let record = done.pending.record.clone();
        if let Some(k) = &record.key {
            part.busy_keys.remove(k);
        }
        let settle = if done.ok {
            true
        } else if !self.retry {
            tracing::warn!(component = %shared.component, topic = %record.topic, partition = record.partition, offset = record.offset, "message failed and consumeRetryEnabled is false: skipped");
            true
        } else {
            false
        };
        if settle {
            part.outstanding.remove(&record.offset);
            let position = part.commit_position();
            if position > part.stored {
                part.stored = position;
                if let Some(c) = &self.consumer
                    && let Err(e) =
                        c.store_offsets(&shared.single(done.tp, Offset::Offset(position)))
                {
                    tracing::debug!(component = %shared.component, error = %e, "could not store an offset");
                }
            }
        } else if !part.revoking && !draining {
            // Delivered again later; the commit position stays before it meanwhile.
            let failures = done.pending.failures + 1;
            let pause = self
                .retry_interval
                .saturating_mul(1 << (failures - 1).min(16))
                .min(MAX_RETRY_PAUSE);
            tracing::debug!(component = %shared.component, topic = %record.topic, partition = record.partition, offset = record.offset, failures, "message failed; delivering it again in {pause:?}");
            let pending = Pending {
                record,
                failures,
                not_before: Some(Instant::now() + pause),
            };
            let at = part
                .queue
                .iter()
                .position(|p| p.record.offset > pending.record.offset)
                .unwrap_or(part.queue.len());
            part.queue.insert(at, pending);
        }
        drop(t);
        shared.changed.notify_all();
    }
}

fn min_instant(a: Option<Instant>, b: Instant) -> Option<Instant> {
    Some(a.map_or(b, |a| a.min(b)))
}
