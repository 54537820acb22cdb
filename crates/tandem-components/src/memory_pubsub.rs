//! `pubsub.in-memory`: a process-local message bus with consumer groups, redelivery and TTL.
//!
//! Shape: topic → consumer group → one queue. Publishing appends the message to the queue of
//! every group currently subscribed to the topic, so every group sees every message published
//! after it joined (fan-out). The subscriptions of one group all take from that one queue, so
//! each message is handled by one of them (competing consumers).
//!
//! Each subscription runs one task that takes a message only when it has a free slot (a
//! semaphore of `max_in_flight` permits) and hands it to the handler on a task of its own, so a
//! slow message never holds back the next. [`Delivery::Retry`] puts the message into the
//! group's delayed heap for a backoff of 100 ms doubling per attempt up to 5 s; a handler that
//! panics, or whose task is cancelled, counts as a retry too.
//!
//! Waiting is event-driven: an idle subscription sleeps on the group's [`Notify`] (rung by
//! publishes and retries) and, when retries are pending, on a timer set to the earliest one's
//! due time. There is no polling loop, so an idle bus costs nothing.
//!
//! Leaving a group: a closed or dropped subscription finishes its in-flight messages first
//! (a retry goes back to the group's queue), then leaves. Messages waiting in the queue stay
//! for the remaining members. When the last member leaves, the group is dissolved and the
//! messages still queued for it are discarded: the bus keeps nothing for groups that nobody
//! subscribes to (like Dapr's in-memory pub/sub, it is not a persistent broker), which also
//! bounds its memory to what live subscribers have not consumed yet.
//!
//! `ttlInSeconds` is honoured natively ([`PubSubFeature::MessageTtl`]): a message whose time is
//! up is discarded when it reaches the head of a queue instead of being delivered.
//!
//! Locks are plain `std` locks held for queue operations only, never across an `.await`.

use std::cmp::{Ordering as CmpOrdering, Reverse};
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;

use crate::error::Result;
use crate::metadata::Metadata;
use crate::pubsub::{
    Delivery, Message, MessageHandler, PubSub, PubSubFeature, PublishRequest, SubscribeRequest,
    Subscription,
};
use crate::state::ttl_from_metadata;

/// Backoff before the first redelivery of a message answered with [`Delivery::Retry`].
pub const FIRST_RETRY_DELAY: Duration = Duration::from_millis(100);
/// The backoff doubles per attempt up to this.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);
/// Upper bound on `max_in_flight`, so that a huge value cannot overflow the semaphore.
const MAX_IN_FLIGHT_LIMIT: usize = 1 << 16;

/// The `pubsub.in-memory` component: a process-local bus. See the module documentation for
/// the delivery semantics.
#[derive(Default)]
pub struct InMemoryPubSub {
    bus: Arc<Bus>,
}

impl std::fmt::Debug for InMemoryPubSub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryPubSub").finish_non_exhaustive()
    }
}

impl InMemoryPubSub {
    /// Builds the bus. It takes no metadata.
    pub async fn build(_metadata: &Metadata) -> Result<Self> {
        Ok(Self::default())
    }
}

/// Retry delay after `attempts` failed deliveries (1-based).
fn retry_delay(attempts: u32) -> Duration {
    let factor = 1u32 << attempts.saturating_sub(1).min(16);
    FIRST_RETRY_DELAY
        .saturating_mul(factor)
        .min(MAX_RETRY_DELAY)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every mutation below is a single push/pop; a panic elsewhere cannot leave a queue
    // half-updated, so a poisoned lock is still usable.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// topic → consumer group name → group.
#[derive(Default)]
struct Bus {
    topics: RwLock<HashMap<String, HashMap<String, Arc<Group>>>>,
}

impl Bus {
    /// Joins (creating when needed) a group of a topic.
    fn join(&self, topic: &str, name: &str) -> Arc<Group> {
        let mut topics = self.topics.write().unwrap_or_else(PoisonError::into_inner);
        let group = topics
            .entry(topic.to_owned())
            .or_default()
            .entry(name.to_owned())
            .or_insert_with(|| Arc::new(Group::default()));
        lock(&group.queue).members += 1;
        Arc::clone(group)
    }

    /// Leaves a group; the last member out dissolves it and drops its queue.
    fn leave(&self, topic: &str, name: &str, group: &Arc<Group>) {
        let mut topics = self.topics.write().unwrap_or_else(PoisonError::into_inner);
        let mut queue = lock(&group.queue);
        queue.members = queue.members.saturating_sub(1);
        if queue.members > 0 {
            // The in-flight messages we put back may be for the others now.
            drop(queue);
            group.notify.notify_waiters();
            return;
        }
        queue.ready.clear();
        queue.delayed.clear();
        drop(queue);
        if let Some(groups) = topics.get_mut(topic) {
            if groups.get(name).is_some_and(|g| Arc::ptr_eq(g, group)) {
                groups.remove(name);
            }
            if groups.is_empty() {
                topics.remove(topic);
            }
        }
    }

    fn publish(&self, topic: &str, stored: &Arc<Stored>) {
        // The read lock is held while appending, so a group cannot be dissolved half-way.
        let topics = self.topics.read().unwrap_or_else(PoisonError::into_inner);
        let Some(groups) = topics.get(topic) else {
            return;
        };
        for group in groups.values() {
            lock(&group.queue).ready.push_back(Pending {
                stored: Arc::clone(stored),
                attempts: 0,
            });
            group.notify.notify_waiters();
        }
    }
}

/// A published message, shared by the queues of all groups.
struct Stored {
    message: Message,
    expires: Option<Instant>,
}

/// A message in one group's queue.
struct Pending {
    stored: Arc<Stored>,
    /// Failed deliveries so far.
    attempts: u32,
}

impl Pending {
    fn expired(&self, now: Instant) -> bool {
        self.stored.expires.is_some_and(|at| at <= now)
    }
}

/// A message waiting for its retry backoff; ordered by due time, then by arrival.
struct Delayed {
    due: Instant,
    seq: u64,
    pending: Pending,
}

impl PartialEq for Delayed {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Delayed {}
impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl Ord for Delayed {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

#[derive(Default)]
struct Queue {
    ready: VecDeque<Pending>,
    delayed: BinaryHeap<Reverse<Delayed>>,
    members: usize,
    seq: u64,
}

impl Queue {
    /// The next live message: due retries join the back of the ready queue first, expired
    /// messages are discarded on the way. Otherwise, when the next retry is due.
    fn take(&mut self, now: Instant) -> std::result::Result<Pending, Option<Instant>> {
        while self.delayed.peek().is_some_and(|d| d.0.due <= now) {
            if let Some(Reverse(d)) = self.delayed.pop() {
                self.ready.push_back(d.pending);
            }
        }
        while let Some(pending) = self.ready.pop_front() {
            if !pending.expired(now) {
                return Ok(pending);
            }
        }
        Err(self.delayed.peek().map(|d| d.0.due))
    }
}

/// One consumer group of one topic.
#[derive(Default)]
struct Group {
    queue: Mutex<Queue>,
    /// Rung when a message becomes available (publish, retry, a member leaving).
    notify: Notify,
}

impl Group {
    /// Waits for the next message. Cancel-safe: a message is only removed from the queue in
    /// the same poll that returns it.
    async fn next(&self) -> Pending {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Registered before looking, so a publish between the look and the wait wakes us.
            notified.as_mut().enable();
            let due = match lock(&self.queue).take(Instant::now()) {
                Ok(pending) => return pending,
                Err(due) => due,
            };
            match due {
                Some(at) => {
                    tokio::select! {
                        () = &mut notified => {}
                        () = tokio::time::sleep_until(at) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Puts a message back at the head of the queue (taken by a subscription that stopped).
    fn put_back(&self, pending: Pending) {
        lock(&self.queue).ready.push_front(pending);
        self.notify.notify_waiters();
    }

    /// Schedules a redelivery after the backoff.
    fn retry(&self, mut pending: Pending) {
        pending.attempts = pending.attempts.saturating_add(1);
        let due = Instant::now() + retry_delay(pending.attempts);
        {
            let mut queue = lock(&self.queue);
            queue.seq += 1;
            let seq = queue.seq;
            queue.delayed.push(Reverse(Delayed { due, seq, pending }));
        }
        // Waiting members may be sleeping until a later due time.
        self.notify.notify_waiters();
    }
}

/// A message being handled. If the handling task ends without a verdict (the handler panicked
/// or the task was cancelled), the message is retried.
struct InFlight {
    group: Arc<Group>,
    pending: Option<Pending>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(pending) = self.pending.take() {
            self.group.retry(pending);
        }
    }
}

async fn deliver(
    group: Arc<Group>,
    handler: Arc<dyn MessageHandler>,
    pending: Pending,
    permit: OwnedSemaphorePermit,
) {
    let message = pending.stored.message.clone();
    let mut in_flight = InFlight {
        group,
        pending: Some(pending),
    };
    let verdict = handler.handle(message).await;
    if let Some(pending) = in_flight.pending.take() {
        match verdict {
            Delivery::Ack => {}
            Delivery::Retry => in_flight.group.retry(pending),
        }
    }
    drop(permit);
}

/// Everything a subscription's task needs.
struct Member {
    bus: Arc<Bus>,
    topic: String,
    name: String,
    group: Arc<Group>,
    handler: Arc<dyn MessageHandler>,
    max_in_flight: usize,
}

impl Member {
    async fn run(self, mut stop: watch::Receiver<bool>) {
        let permits = Arc::new(Semaphore::new(self.max_in_flight));
        loop {
            let permit = tokio::select! {
                biased;
                _ = stop.wait_for(|stopped| *stopped) => break,
                permit = Arc::clone(&permits).acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            let pending = tokio::select! {
                biased;
                _ = stop.wait_for(|stopped| *stopped) => break,
                pending = self.group.next() => pending,
            };
            // A stop that raced with taking the message: a publish after `drop(subscription)`
            // must not reach this handler.
            if *stop.borrow() {
                self.group.put_back(pending);
                break;
            }
            tokio::spawn(deliver(
                Arc::clone(&self.group),
                Arc::clone(&self.handler),
                pending,
                permit,
            ));
        }
        // Every permit back means every in-flight handler has answered.
        let all = u32::try_from(self.max_in_flight).unwrap_or(u32::MAX);
        let _ = permits.acquire_many(all).await;
        self.bus.leave(&self.topic, &self.name, &self.group);
    }
}

#[async_trait]
impl PubSub for InMemoryPubSub {
    fn features(&self) -> &'static [PubSubFeature] {
        &[PubSubFeature::MessageTtl]
    }

    async fn publish(&self, req: PublishRequest) -> Result<()> {
        let expires = ttl_from_metadata(&req.metadata)?.map(|ttl| Instant::now() + ttl);
        let stored = Arc::new(Stored {
            message: Message {
                topic: req.topic,
                data: req.data,
                content_type: req.content_type,
                metadata: req.metadata,
            },
            expires,
        });
        self.bus.publish(&stored.message.topic, &stored);
        Ok(())
    }

    async fn subscribe(
        &self,
        req: SubscribeRequest,
        handler: Arc<dyn MessageHandler>,
    ) -> Result<Subscription> {
        let group = self.bus.join(&req.topic, &req.consumer_group);
        let member = Member {
            bus: Arc::clone(&self.bus),
            topic: req.topic,
            name: req.consumer_group,
            group,
            handler,
            max_in_flight: req.max_in_flight.clamp(1, MAX_IN_FLIGHT_LIMIT),
        };
        let (stop, stopped) = Subscription::channel();
        let task = tokio::spawn(member.run(stopped));
        Ok(Subscription::new(stop, task))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use tokio::sync::mpsc;

    use super::*;

    struct Collect {
        tx: mpsc::UnboundedSender<Message>,
        verdict: Delivery,
    }

    #[async_trait]
    impl MessageHandler for Collect {
        async fn handle(&self, msg: Message) -> Delivery {
            let _ = self.tx.send(msg);
            self.verdict
        }
    }

    fn collect(verdict: Delivery) -> (Arc<dyn MessageHandler>, mpsc::UnboundedReceiver<Message>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Arc::new(Collect { tx, verdict }), rx)
    }

    fn sub(topic: &str, group: &str, max_in_flight: usize) -> SubscribeRequest {
        SubscribeRequest {
            topic: topic.into(),
            consumer_group: group.into(),
            max_in_flight,
            ..Default::default()
        }
    }

    fn msg(topic: &str, data: &str) -> PublishRequest {
        PublishRequest {
            topic: topic.into(),
            data: Bytes::copy_from_slice(data.as_bytes()),
            ..Default::default()
        }
    }

    async fn recv(rx: &mut mpsc::UnboundedReceiver<Message>) -> Message {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("a message in time")
            .expect("handler alive")
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        assert_eq!(retry_delay(1), Duration::from_millis(100));
        assert_eq!(retry_delay(2), Duration::from_millis(200));
        assert_eq!(retry_delay(4), Duration::from_millis(800));
        assert_eq!(retry_delay(7), Duration::from_secs(5));
        assert_eq!(retry_delay(u32::MAX), Duration::from_secs(5));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fifo_with_one_in_flight() {
        let bus = InMemoryPubSub::default();
        let (handler, mut rx) = collect(Delivery::Ack);
        let s = bus.subscribe(sub("t", "g", 1), handler).await.unwrap();
        for i in 0..200 {
            bus.publish(msg("t", &i.to_string())).await.unwrap();
        }
        for i in 0..200 {
            assert_eq!(recv(&mut rx).await.data, i.to_string().as_bytes());
        }
        s.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn remaining_member_takes_over_the_queue_and_last_member_dissolves_the_group() {
        let bus = InMemoryPubSub::default();
        // A member that is closed while a message waits behind a stuck one.
        let gate = Arc::new(Semaphore::new(0));
        let seen = Arc::new(AtomicUsize::new(0));
        struct Stuck {
            gate: Arc<Semaphore>,
            seen: Arc<AtomicUsize>,
        }
        #[async_trait]
        impl MessageHandler for Stuck {
            async fn handle(&self, _msg: Message) -> Delivery {
                self.seen.fetch_add(1, Ordering::SeqCst);
                let _ = self.gate.acquire().await;
                Delivery::Retry
            }
        }
        let first = bus
            .subscribe(
                sub("t", "g", 1),
                Arc::new(Stuck {
                    gate: Arc::clone(&gate),
                    seen: Arc::clone(&seen),
                }),
            )
            .await
            .unwrap();
        bus.publish(msg("t", "a")).await.unwrap();
        bus.publish(msg("t", "b")).await.unwrap();
        while seen.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        let (handler, mut rx) = collect(Delivery::Ack);
        let second = bus.subscribe(sub("t", "g", 4), handler).await.unwrap();
        // "b" was queued: the new member gets it at once.
        assert_eq!(recv(&mut rx).await.data, "b");
        // Closing the first member waits for "a", whose Retry goes back to the group.
        gate.add_permits(1);
        first.close().await;
        assert_eq!(recv(&mut rx).await.data, "a");
        second.close().await;
        assert!(
            bus.bus.topics.read().unwrap().is_empty(),
            "the last member out dissolves the group"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn panicking_handler_counts_as_retry() {
        struct PanicOnce(AtomicUsize, mpsc::UnboundedSender<Message>);
        #[async_trait]
        impl MessageHandler for PanicOnce {
            async fn handle(&self, msg: Message) -> Delivery {
                if self.0.fetch_add(1, Ordering::SeqCst) == 0 {
                    panic!("handler bug (expected by the test)");
                }
                let _ = self.1.send(msg);
                Delivery::Ack
            }
        }
        let bus = InMemoryPubSub::default();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let s = bus
            .subscribe(
                sub("t", "g", 1),
                Arc::new(PanicOnce(AtomicUsize::new(0), tx)),
            )
            .await
            .unwrap();
        bus.publish(msg("t", "x")).await.unwrap();
        assert_eq!(recv(&mut rx).await.data, "x");
        s.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn invalid_ttl_is_rejected() {
        let bus = InMemoryPubSub::default();
        let mut req = msg("t", "x");
        req.metadata.insert("ttlInSeconds".into(), "soon".into());
        assert!(bus.publish(req).await.is_err());
    }
}
