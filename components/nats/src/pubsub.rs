//! `pubsub.jetstream`: topics are NATS subjects stored by JetStream streams; each consumer
//! group reads a topic through a durable pull consumer.
//!
//! # Layout
//!
//! - **Streams** are the operator's: the component never creates one. A topic is published
//!   to the subject of the same name, and is subscribed through the stream `streamName`, or
//!   the stream whose subjects capture the topic.
//! - **Consumers.** Each subscription uses the durable pull consumer `<group>-<topic>`
//!   (characters NATS does not allow in names become `_`, plus a short hash of the original
//!   when anything was replaced), where the group is `durableName` or else the subscription's
//!   consumer group (`consumerID`, by default the app-id). The consumer filters the topic's
//!   subject and carries the component's consumer settings (`deliverPolicy`, `ackWait`,
//!   `maxDeliver`, `backOff`, …). It is created when missing; an existing one is reused as it
//!   is. The sidecars of one group pull from the same consumer, so they compete for its
//!   messages; every group has its own consumer, so each gets every message.
//!
//! # Delivery
//!
//! - **Publish** waits for the stream's acknowledgement. When the payload is a CloudEvent
//!   with a string `id`, that id is sent as `Nats-Msg-Id`, as in Dapr, so the stream drops
//!   a second publish of the same event within its duplicate window.
//! - **At least once.** A subscription pulls only as many messages as it has free handler
//!   slots (its in-flight bound, one with `concurrencyMode: single`). A message is
//!   acknowledged after the handler answered [`Delivery::Ack`]; [`Delivery::Retry`] (or a
//!   handler that panics) is a negative acknowledgement, delayed by `ackWait` when that is
//!   set (as in Dapr), so the server delivers it again. While a handler runs, the component
//!   tells the server every half `ackWait` that the message is in progress: only a message
//!   whose sidecar died or lost its connection is redelivered when `ackWait` runs out. With
//!   `ackPolicy: none` nothing is acknowledged: at most once.
//! - Delivered messages carry the metadata `Topic` (the subject), as in Dapr.
//! - **Pulling.** Each pull request asks for as many messages as there are free handler
//!   slots and stays open on the server for twice `heartbeat` (10 s by default); the next is
//!   sent once it is fulfilled or has expired, so the component always knows exactly what it
//!   asked for, also while a backlog drains.
//! - **Connection loss.** `async-nats` reconnects by itself; the pull request in flight is
//!   given up with the old connection, and pulling resumes on the new one at once (the
//!   consumer is looked up again, and created again if the server lost it). Publishing fails
//!   at once while the connection is down.
//! - **Stopping** a subscription stops pulling, hands back (negatively acknowledges) what
//!   was pulled and not yet handled, and waits for the messages being handled.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::future::{Future, poll_fn};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_nats::jetstream::consumer::pull::Batch;
use async_nats::jetstream::consumer::{self as js_consumer, PullConsumer, pull};
use async_nats::jetstream::context::{GetStreamByNameErrorKind, PublishAckFuture};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, AckKind};
use async_nats::{ConnectOptions, Event};
use async_trait::async_trait;
use bytes::Bytes;
use futures_core::Stream;
use tandem_components::pubsub::{
    Delivery, Message, MessageHandler, PubSub, PubSubFeature, PublishRequest, SubscribeRequest,
    Subscription,
};
use tandem_components::{Error, Metadata, Result};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot, watch};

use crate::metadata::{AckPolicy, Auth, ConcurrencyMode, DeliverPolicy, JetStreamMetadata};

/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `subscribe` waits for its consumer before letting it attach in the background.
const ATTACH_WAIT: Duration = Duration::from_secs(10);
/// The largest number of messages one pull request asks for.
const MAX_BATCH: usize = 256;
/// The longest a pull request stays open on the server.
const PULL_EXPIRES: Duration = Duration::from_secs(30);
/// The shortest a pull request stays open on the server.
const MIN_PULL_EXPIRES: Duration = Duration::from_secs(1);
/// `heartbeat` when it is not set: pull requests stay open twice as long.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);
/// Pauses between attempts to create a consumer that failed.
const MIN_PAUSE: Duration = Duration::from_millis(100);
const MAX_PAUSE: Duration = Duration::from_secs(10);

/// The `pubsub.jetstream` component. See the module documentation for its semantics.
///
/// Built with [`JetStreamPubSub::build`], which never waits for the server. Subscriptions
/// keep the connection open after the component itself is dropped, until they stop.
pub struct JetStreamPubSub {
    shared: Arc<Shared>,
}

/// What the component and its subscriptions share.
struct Shared {
    settings: JetStreamMetadata,
    component: String,
    app_id: String,
    js: jetstream::Context,
    /// Whether the client is connected, from the client's events.
    connected: watch::Receiver<bool>,
}

impl fmt::Debug for JetStreamPubSub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JetStreamPubSub")
            .field("component", &self.shared.component)
            .field("settings", &self.shared.settings)
            .finish_non_exhaustive()
    }
}

impl JetStreamPubSub {
    /// Decodes the metadata (see [`JetStreamMetadata`]) and starts connecting in the
    /// background. A server that is down does not fail the build.
    pub async fn build(metadata: &Metadata) -> Result<Self> {
        let settings = JetStreamMetadata::from_metadata(metadata)?;
        let (state_tx, connected) = watch::channel(false);
        let component = metadata.name.clone();
        let events_component = component.clone();
        let mut opts = ConnectOptions::new()
            .name(&settings.name)
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(CONNECT_TIMEOUT)
            .event_callback(move |event| {
                let state_tx = state_tx.clone();
                let component = events_component.clone();
                async move {
                    match event {
                        Event::Connected => {
                            tracing::debug!(component = %component, "connected to nats");
                            state_tx.send_replace(true);
                        }
                        Event::Disconnected | Event::Closed => {
                            tracing::warn!(component = %component, "nats connection lost; reconnecting");
                            state_tx.send_replace(false);
                        }
                        other => {
                            tracing::debug!(component = %component, event = %other, "nats event")
                        }
                    }
                }
            });
        opts = match &settings.auth {
            Auth::None => opts,
            Auth::Token(token) => opts.token(token.clone()),
            Auth::NKey(seed) => opts.nkey(seed.clone()),
            Auth::Jwt { jwt, seed } => {
                // The decorated credentials format: async-nats signs the server's nonce with
                // the seed.
                let creds = format!(
                    "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n-----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
                );
                opts.credentials(&creds).map_err(|_| {
                    Error::invalid_metadata("seedKey", "expected a user JWT and an NKey seed")
                })?
            }
        };
        if let Some((cert, key)) = &settings.tls_client {
            opts = opts
                .add_client_certificate(cert.clone(), key.clone())
                .require_tls(true);
        }
        let client = opts
            .connect(settings.nats_url.as_str())
            .await
            .map_err(|_| Error::invalid_metadata("natsURL", "expected nats:// or tls:// URLs"))?;
        let js = match (&settings.domain, &settings.api_prefix) {
            (Some(domain), _) => jetstream::with_domain(client.clone(), domain),
            (None, Some(prefix)) => jetstream::with_prefix(client.clone(), prefix),
            (None, None) => jetstream::new(client.clone()),
        };
        Ok(Self {
            shared: Arc::new(Shared {
                settings,
                component,
                app_id: metadata.app_id.clone(),
                js,
                connected,
            }),
        })
    }

    /// The decoded settings.
    pub fn settings(&self) -> &JetStreamMetadata {
        &self.shared.settings
    }

    /// Sends one message; the returned future resolves with the stream's acknowledgement.
    async fn send(&self, req: PublishRequest) -> Result<PublishAckFuture> {
        check_subject(&req.topic)?;
        if !*self.shared.connected.borrow() {
            return Err(unreachable());
        }
        let mut msg = PublishMessage::build();
        if let Some(id) = cloud_event_id(&req.data) {
            msg = msg.message_id(id);
        }
        self.shared
            .js
            .send_publish(req.topic, msg.payload(req.data))
            .await
            .map_err(|e| Error::backend(format!("jetstream publish failed: {e}")))
    }
}

fn unreachable() -> Error {
    Error::backend("nats is unreachable: not connected")
}

async fn confirmed(ack: PublishAckFuture) -> Result<()> {
    ack.await
        .map(|_| ())
        .map_err(|e| Error::backend(format!("jetstream did not acknowledge the message: {e}")))
}

#[async_trait]
impl PubSub for JetStreamPubSub {
    fn features(&self) -> &'static [PubSubFeature] {
        &[]
    }

    async fn publish(&self, req: PublishRequest) -> Result<()> {
        confirmed(self.send(req).await?).await
    }

    /// Pipelined: every message is sent, then every acknowledgement awaited.
    async fn bulk_publish(&self, reqs: Vec<PublishRequest>) -> Vec<Result<()>> {
        let mut sent = Vec::with_capacity(reqs.len());
        for req in reqs {
            sent.push(self.send(req).await);
        }
        let mut results = Vec::with_capacity(sent.len());
        for s in sent {
            results.push(match s {
                Ok(ack) => confirmed(ack).await,
                Err(e) => Err(e),
            });
        }
        results
    }

    async fn subscribe(
        &self,
        req: SubscribeRequest,
        handler: Arc<dyn MessageHandler>,
    ) -> Result<Subscription> {
        let plan = Arc::new(Plan::new(&self.shared, &req)?);
        let (stop_tx, stop_rx) = Subscription::channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        let worker = Worker {
            shared: self.shared.clone(),
            permits: Arc::new(Semaphore::new(plan.in_flight)),
            plan: plan.clone(),
            handler,
            stop: stop_rx,
        };
        let task = tokio::spawn(worker.run(ready_tx));
        match tokio::time::timeout(CONNECT_TIMEOUT + ATTACH_WAIT, ready_rx).await {
            Ok(Ok(Ready::Refused(e))) => {
                let _ = task.await;
                return Err(e);
            }
            Ok(_) => {}
            Err(_) => {
                tracing::warn!(component = %self.shared.component, consumer = %plan.consumer, "subscription not attached yet; it keeps trying in the background")
            }
        }
        Ok(Subscription::new(stop_tx, task))
    }
}

/// Rejects topics that are not valid NATS subjects to publish to.
fn check_subject(topic: &str) -> Result<()> {
    let valid = !topic.is_empty()
        && !topic.contains(char::is_whitespace)
        && topic
            .split('.')
            .all(|t| !t.is_empty() && t != "*" && t != ">");
    if valid {
        Ok(())
    } else {
        Err(Error::InvalidRequest(
            "a jetstream topic must be a NATS subject: dot-separated tokens, no spaces or wildcards"
                .into(),
        ))
    }
}

/// The `id` of a CloudEvent payload, if the payload is one (a JSON object with a string id).
fn cloud_event_id(data: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Envelope<'a> {
        #[serde(borrow)]
        id: Option<Cow<'a, str>>,
    }
    let first = data.iter().find(|b| !b.is_ascii_whitespace())?;
    if *first != b'{' {
        return None;
    }
    let envelope: Envelope<'_> = serde_json::from_slice(data).ok()?;
    envelope.id.filter(|id| !id.is_empty()).map(Cow::into_owned)
}

/// The durable consumer's name for `group` and `topic`: characters NATS does not allow in
/// names become `_`, and a hash of the original keeps distinct topics apart.
pub fn consumer_name(group: &str, topic: &str) -> String {
    let original = format!("{group}-{topic}");
    let mut changed = false;
    let mut name: String = original
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                changed = true;
                '_'
            }
        })
        .collect();
    if changed {
        // FNV-1a: stable across builds and platforms.
        let hash = original.bytes().fold(0x811c_9dc5u32, |h, b| {
            (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
        });
        name.push_str(&format!("-{hash:08x}"));
    }
    name
}

/// What one subscription reads and how much it takes at once.
#[derive(Debug)]
struct Plan {
    topic: String,
    consumer: String,
    in_flight: usize,
}

impl Plan {
    fn new(shared: &Shared, req: &SubscribeRequest) -> Result<Self> {
        if req.topic.is_empty() || req.topic.contains(char::is_whitespace) {
            return Err(Error::InvalidRequest(
                "a jetstream topic must be a NATS subject without spaces".into(),
            ));
        }
        let group = shared
            .settings
            .durable_name
            .as_deref()
            .or(Some(req.consumer_group.trim()).filter(|g| !g.is_empty()))
            .unwrap_or(shared.app_id.as_str());
        if group.is_empty() {
            return Err(Error::InvalidRequest(
                "a consumer group (consumerID or durableName) is required".into(),
            ));
        }
        let in_flight = match shared.settings.concurrency {
            ConcurrencyMode::Single => 1,
            ConcurrencyMode::Parallel => req.max_in_flight.max(1),
        };
        Ok(Self {
            topic: req.topic.clone(),
            consumer: consumer_name(group, &req.topic),
            in_flight,
        })
    }

    /// The consumer's configuration, from the component's settings.
    fn config(&self, s: &JetStreamMetadata) -> Result<pull::Config> {
        let deliver_policy = match s.deliver_policy {
            DeliverPolicy::All => js_consumer::DeliverPolicy::All,
            DeliverPolicy::Last => js_consumer::DeliverPolicy::Last,
            DeliverPolicy::New => js_consumer::DeliverPolicy::New,
            DeliverPolicy::Sequence(start_sequence) => {
                js_consumer::DeliverPolicy::ByStartSequence { start_sequence }
            }
            DeliverPolicy::Time(secs) => js_consumer::DeliverPolicy::ByStartTime {
                start_time: time::OffsetDateTime::from_unix_timestamp(secs)
                    .map_err(|_| Error::invalid_metadata("startTime", "out of range"))?,
            },
        };
        Ok(pull::Config {
            durable_name: Some(self.consumer.clone()),
            filter_subject: self.topic.clone(),
            deliver_policy,
            ack_policy: match s.ack_policy {
                AckPolicy::Explicit => js_consumer::AckPolicy::Explicit,
                AckPolicy::All => js_consumer::AckPolicy::All,
                AckPolicy::None => js_consumer::AckPolicy::None,
            },
            ack_wait: s.ack_wait.unwrap_or_default(),
            max_deliver: s.max_deliver.unwrap_or_default(),
            backoff: s.back_off.clone(),
            max_ack_pending: s.max_ack_pending.unwrap_or_default(),
            num_replicas: s.replicas.unwrap_or_default(),
            memory_storage: s.memory_storage,
            ..Default::default()
        })
    }
}

/// The first outcome of a subscription, reported to `subscribe`.
enum Ready {
    /// Pulling.
    Attached,
    /// The server is unreachable: the subscription attaches when it answers.
    Deferred,
    /// The server refused (no stream for the topic, a consumer setting it rejects).
    Refused(Error),
}

/// Why creating the consumer failed.
enum AttachError {
    /// The server answered no: a configuration problem.
    Refused(String),
    /// The server did not answer.
    Transient(String),
}

/// How pulling from one consumer ended.
enum Ended {
    Stopped,
    /// The connection dropped or came back.
    Reconnected,
    Lost(String),
}

/// The task behind one [`Subscription`].
struct Worker {
    shared: Arc<Shared>,
    plan: Arc<Plan>,
    handler: Arc<dyn MessageHandler>,
    /// One permit per message being handled.
    permits: Arc<Semaphore>,
    stop: watch::Receiver<bool>,
}

impl Worker {
    async fn run(mut self, ready: oneshot::Sender<Ready>) {
        let mut ready = Some(ready);
        let mut failures = 0u32;
        let mut connected = self.shared.connected.clone();
        loop {
            // Wait for the connection; say once that the server is down.
            if !*connected.borrow_and_update() {
                if let Some(r) = ready.take() {
                    tracing::warn!(component = %self.shared.component, consumer = %self.plan.consumer, "nats is unreachable; the subscription attaches when it answers");
                    let _ = r.send(Ready::Deferred);
                }
                tokio::select! {
                    _ = stopped(&mut self.stop) => break,
                    changed = connected.wait_for(|c| *c) => if changed.is_err() { break },
                }
            }
            let failure = match self.attach().await {
                Ok(consumer) => {
                    failures = 0;
                    if let Some(r) = ready.take() {
                        let _ = r.send(Ready::Attached);
                    }
                    match self.consume(&consumer).await {
                        Ended::Stopped => break,
                        Ended::Reconnected => {
                            tracing::debug!(component = %self.shared.component, consumer = %self.plan.consumer, "the nats connection changed; pulling again");
                            continue;
                        }
                        Ended::Lost(reason) => {
                            tracing::warn!(component = %self.shared.component, consumer = %self.plan.consumer, reason = %reason, "jetstream pull ended; pulling again");
                            // A refusal the server repeats at once must not spin.
                            tokio::select! {
                                _ = stopped(&mut self.stop) => break,
                                _ = tokio::time::sleep(MIN_PAUSE) => continue,
                            }
                        }
                    }
                }
                Err(AttachError::Refused(why)) => {
                    tracing::error!(component = %self.shared.component, consumer = %self.plan.consumer, error = %why, "jetstream refused the subscription");
                    if let Some(r) = ready.take() {
                        let _ = r.send(Ready::Refused(Error::backend(why)));
                        return;
                    }
                    why
                }
                Err(AttachError::Transient(why)) => {
                    if let Some(r) = ready.take() {
                        tracing::warn!(component = %self.shared.component, consumer = %self.plan.consumer, error = %why, "jetstream did not answer; the subscription keeps trying");
                        let _ = r.send(Ready::Deferred);
                    }
                    why
                }
            };
            failures += 1;
            let pause = MIN_PAUSE
                .saturating_mul(1 << failures.min(7))
                .min(MAX_PAUSE);
            tracing::debug!(component = %self.shared.component, consumer = %self.plan.consumer, error = %failure, retry_in = ?pause, "creating the consumer failed");
            tokio::select! {
                _ = stopped(&mut self.stop) => break,
                _ = tokio::time::sleep(pause) => {}
            }
        }
        // Handlers of earlier pulls may still run.
        let _ = self.permits.acquire_many(self.plan.in_flight as u32).await;
    }

    /// Finds the stream and creates (or finds) the group's durable consumer.
    async fn attach(&self) -> std::result::Result<PullConsumer, AttachError> {
        let js = &self.shared.js;
        let topic = &self.plan.topic;
        let stream = match &self.shared.settings.stream_name {
            Some(name) => name.clone(),
            None => js
                .stream_by_subject(topic.as_str())
                .await
                .map_err(|e| match e.kind() {
                    GetStreamByNameErrorKind::NotFound => AttachError::Refused(format!(
                        "no jetstream stream captures the subject {topic}; create one (or set streamName)"
                    )),
                    GetStreamByNameErrorKind::Request => AttachError::Transient(e.to_string()),
                    _ => AttachError::Refused(e.to_string()),
                })?,
        };
        let config = self
            .plan
            .config(&self.shared.settings)
            .map_err(|e| AttachError::Refused(e.to_string()))?;
        match js.create_consumer_on_stream(config, stream.as_str()).await {
            Ok(consumer) => Ok(consumer),
            Err(e) => match e.kind() {
                async_nats::jetstream::stream::ConsumerErrorKind::JetStream(_) => {
                    // An existing consumer with other settings: use it as it is.
                    match js
                        .get_consumer_from_stream::<pull::Config, _, _>(
                            self.plan.consumer.as_str(),
                            stream.as_str(),
                        )
                        .await
                    {
                        Ok(consumer) if consumer.cached_info().config.filter_subject == *topic => {
                            tracing::info!(component = %self.shared.component, consumer = %self.plan.consumer, error = %e, "using the existing consumer with its own settings");
                            Ok(consumer)
                        }
                        _ => Err(AttachError::Refused(format!(
                            "jetstream refused consumer {} on stream {stream}: {e}",
                            self.plan.consumer
                        ))),
                    }
                }
                _ => Err(AttachError::Transient(e.to_string())),
            },
        }
    }

    /// Pulls and hands messages to the handler until the subscription stops, the connection
    /// changes, or pulling fails.
    ///
    /// Each pull request asks for exactly as many messages as there are free handler slots,
    /// and reserves those slots until its messages arrive or it ends (fulfilled, or expired on
    /// the server after twice `heartbeat`); only then is the next one sent. Counting per
    /// request keeps the client's idea of what is outstanding exact: a long-lived pull stream
    /// that tops itself up can lose count when messages arrive before it has noted its own
    /// request (as when a backlog waits), and then it stops asking. A request the server never
    /// answers (lost with the connection) is given up when the connection drops, or 5 s after
    /// it expired.
    async fn consume(&mut self, consumer: &PullConsumer) -> Ended {
        let info = consumer.cached_info();
        let ack_policy = self.shared.settings.ack_policy;
        // The consumer's effective ack wait (the server's default when not set).
        let ack_wait = info.config.ack_wait;
        let expires = self
            .shared
            .settings
            .heartbeat
            .unwrap_or(DEFAULT_HEARTBEAT)
            .saturating_mul(2)
            .clamp(MIN_PULL_EXPIRES, PULL_EXPIRES);
        let most = self.plan.in_flight.min(MAX_BATCH);
        let mut connection = self.shared.connected.clone();
        connection.borrow_and_update();
        loop {
            // At least one free slot, then every other free one.
            let first = tokio::select! {
                biased;
                _ = stopped(&mut self.stop) => return Ended::Stopped,
                permit = self.permits.clone().acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => return Ended::Stopped,
                },
            };
            let mut slots = vec![first];
            while slots.len() < most {
                match self.permits.clone().try_acquire_owned() {
                    Ok(p) => slots.push(p),
                    Err(_) => break,
                }
            }
            let mut batch = match consumer
                .batch()
                .max_messages(slots.len())
                .expires(expires)
                .messages()
                .await
            {
                Ok(b) => b,
                Err(e) => return Ended::Lost(e.to_string()),
            };
            loop {
                let next = tokio::select! {
                    biased;
                    _ = stopped(&mut self.stop) => {
                        self.hand_back(&mut batch).await;
                        return Ended::Stopped;
                    }
                    // The connection dropped or came back: this request may be gone with the
                    // old connection.
                    _ = connection.changed() => return Ended::Reconnected,
                    next = poll_fn(|cx| Pin::new(&mut batch).poll_next(cx)) => next,
                };
                match next {
                    Some(Ok(msg)) => {
                        let Some(permit) = slots.pop() else {
                            // More than asked for: leave it to the server's redelivery.
                            break;
                        };
                        tokio::spawn(handle(
                            msg,
                            self.handler.clone(),
                            ack_policy,
                            ack_wait,
                            self.shared.settings.ack_wait,
                            permit,
                        ));
                    }
                    Some(Err(e)) => return Ended::Lost(e.to_string()),
                    // Fulfilled or expired: ask again with the slots free by then.
                    None => break,
                }
            }
        }
    }

    /// Hands back (negatively acknowledges) what a pull brought and was not handed out, so
    /// that other members get it now rather than after `ackWait`.
    async fn hand_back(&self, batch: &mut Batch) {
        if !self.shared.settings.ack_policy.acks() {
            return;
        }
        for _ in 0..MAX_BATCH {
            let next = tokio::time::timeout(
                Duration::ZERO,
                poll_fn(|cx| Pin::new(&mut *batch).poll_next(cx)),
            )
            .await;
            match next {
                Ok(Some(Ok(msg))) => {
                    let _ = msg.ack_with(AckKind::Nak(None)).await;
                }
                _ => break,
            }
        }
    }
}

/// Resolves once the subscription is asked to stop (or its [`Subscription`] is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Hands one message to the handler and settles it with the server.
async fn handle(
    msg: jetstream::Message,
    handler: Arc<dyn MessageHandler>,
    ack_policy: AckPolicy,
    ack_wait: Duration,
    nak_delay: Option<Duration>,
    _permit: OwnedSemaphorePermit,
) {
    let subject = msg.subject.to_string();
    let message = Message {
        topic: subject.clone(),
        data: Bytes::clone(&msg.payload),
        content_type: None,
        metadata: HashMap::from([("Topic".to_owned(), subject)]),
    };
    let mut work = CatchUnwind(handler.handle(message));
    let verdict = if ack_policy.acks() && !ack_wait.is_zero() {
        // Keep the message ours while the app works on it.
        let every = (ack_wait / 2).max(Duration::from_millis(50));
        let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                verdict = &mut work => break verdict,
                _ = progress.tick() => {
                    let _ = msg.ack_with(AckKind::Progress).await;
                }
            }
        }
    } else {
        work.await
    }
    .unwrap_or(Delivery::Retry);
    if !ack_policy.acks() {
        return;
    }
    let settled = match verdict {
        Delivery::Ack => msg.ack().await,
        Delivery::Retry => msg.ack_with(AckKind::Nak(nak_delay)).await,
    };
    if let Err(e) = settled {
        tracing::debug!(error = %e, "could not settle a message; the server delivers it again after ackWait");
    }
}

/// Runs a handler's future, turning a panic into `None` (the message is then retried).
struct CatchUnwind<'a>(Pin<Box<dyn Future<Output = Delivery> + Send + 'a>>);

impl Future for CatchUnwind<'_> {
    type Output = Option<Delivery>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let fut = self.0.as_mut();
        match std::panic::catch_unwind(AssertUnwindSafe(|| fut.poll(cx))) {
            Ok(Poll::Ready(v)) => Poll::Ready(Some(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => Poll::Ready(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_names_are_valid_and_distinct() {
        assert_eq!(consumer_name("app", "orders"), "app-orders");
        let dotted = consumer_name("app", "orders.created");
        assert!(dotted.starts_with("app-orders_created-"), "{dotted}");
        assert_ne!(dotted, consumer_name("app", "orders_created"));
        assert_ne!(dotted, consumer_name("app", "orders>created"));
        assert!(!consumer_name("my app", "a.*.>").contains(['.', '*', '>', ' ']));
    }

    #[test]
    fn cloud_event_ids() {
        assert_eq!(
            cloud_event_id(br#" {"specversion":"1.0","id":"abc","data":{"id":5}}"#).as_deref(),
            Some("abc")
        );
        assert_eq!(cloud_event_id(br#"{"id":5}"#), None);
        assert_eq!(cloud_event_id(br#"{"id":""}"#), None);
        assert_eq!(cloud_event_id(b"plain text"), None);
        assert_eq!(cloud_event_id(b"{not json"), None);
    }

    #[test]
    fn subjects() {
        assert!(check_subject("orders").is_ok());
        assert!(check_subject("orders.eu.created").is_ok());
        for bad in ["", "a b", "a.*", ">", "a..b", "a."] {
            assert!(check_subject(bad).is_err(), "{bad:?}");
        }
    }
}
