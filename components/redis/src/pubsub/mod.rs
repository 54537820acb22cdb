//! `pubsub.redis`: publish/subscribe on Redis Streams, in Dapr's layout, so that Go daprd and
//! Tandem sidecars can publish to and consume from the same streams.
//!
//! # Semantics
//!
//! - **Topics are streams.** A publish is one `XADD <topic> * data <payload>` (plus
//!   `metadata`, the request metadata as a JSON object, and `contentType`, which Dapr's
//!   reader ignores), with `MAXLEN ~` (`maxLenApprox`) or `MINID ~` (`streamTTL`) trimming
//!   when configured. It returns once Redis has the entry. A publish is not re-sent after a
//!   broken connection (it may have been applied): the caller's resiliency policy decides.
//! - **Consumer groups.** A subscription joins the stream's consumer group named by the
//!   subscribe request (`consumerID`, by default the app-id), creating it when missing
//!   (`XGROUP CREATE <topic> <group> 0 MKSTREAM`, as Dapr: a new group starts with the entries
//!   already in the stream). Every group receives every message; the subscriptions of one
//!   group share them (competing consumers). Each subscription is a consumer of its own,
//!   named `<group>-<unique suffix>`.
//! - **Delivery.** Each subscription reads with `XREADGROUP ... BLOCK` on a dedicated
//!   connection (a blocking read must not hold up the publishes and acknowledgements
//!   multiplexed on the shared one), at most as many entries as it has free handler slots
//!   (`concurrency`, bounded by the runtime's in-flight limit, and by `queueDepth` per read),
//!   and hands each to the handler on a task of its own.
//! - **Verdicts.** Ack is `XACK`. Retry leaves the entry pending; it is delivered again once
//!   it has been pending for `processingTimeout` (see below). An entry whose `XACK` failed is
//!   delivered again the same way: at least once.
//! - **Redelivery.** Every `redeliverInterval`, each subscription pages through the group's
//!   pending entries (`XPENDING`) and claims (`XCLAIM`) those idle for `processingTimeout` or
//!   longer, whichever consumer held them: messages answered Retry, and those of subscribers
//!   that died, lost their connection or were closed mid-read. While a handler runs, its
//!   subscription renews the claim (`XCLAIM ... JUSTID`) every half `processingTimeout`, so a
//!   slow handler does not get its message taken over (Dapr instead cancels handlers after
//!   `processingTimeout`). `0` for either setting disables redelivery: a message answered
//!   Retry then stays pending until redelivery is turned on again.
//! - **Connection loss.** The read loop drops its connection on any error and opens a new
//!   one with backoff (100 ms doubling to 5 s, reset by a successful read): it never spins.
//!   A group deleted meanwhile (`NOGROUP`, for example after Redis lost its data) is created
//!   again. Publishes and acknowledgements use the crate's shared, self-reconnecting
//!   connection (see [`crate::RedisStateStore`] for its retry rules).
//! - **Closing** a subscription (or dropping it) stops reading and claiming at once; the
//!   messages being handled finish and are acknowledged (`close` waits for them); entries
//!   read but not yet handed to the handler stay pending for redelivery. A consumer left with
//!   nothing pending is then removed from the group (`XGROUP DELCONSUMER`).
//! - **Not provided:** per-message `ttlInSeconds` is not honoured by the broker (as in Dapr's
//!   component; the runtime's CloudEvent `expiration` still applies), and there is no native
//!   bulk publish or bulk subscribe. Ordering holds per subscription only with one message in
//!   flight, retries aside.
//!
//! Settings: [`RedisPubSubMetadata`] (the connection fields are `state.redis`'s, Sentinel and
//! Cluster included; in Cluster mode each topic lives on the node of its key's slot).

mod entries;
pub mod metadata;
mod subscription;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use redis::{Cmd, Value};
use tandem_components::pubsub::{
    MessageHandler, PubSub, PubSubFeature, PublishRequest, SubscribeRequest, Subscription,
};
use tandem_components::{Error, Metadata, Result};

pub use self::metadata::RedisPubSubMetadata;
use crate::client::{Client, Failure, Idempotence};

/// The `pubsub.redis` component. See the [module docs](self) for its semantics.
///
/// Built with [`RedisPubSub::build`]; building never waits for Redis. Subscriptions keep the
/// connection settings alive after the component itself is dropped, until they stop.
pub struct RedisPubSub {
    shared: Arc<Shared>,
}

/// What the component and its subscriptions share.
pub(crate) struct Shared {
    /// The component's name, for log lines.
    name: String,
    client: Client,
    settings: RedisPubSubMetadata,
}

impl fmt::Debug for RedisPubSub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisPubSub")
            .field("name", &self.shared.name)
            .field("client", &self.shared.client)
            .field("settings", &self.shared.settings)
            .finish()
    }
}

impl RedisPubSub {
    /// Decodes and validates the metadata (see [`RedisPubSubMetadata`]) and prepares the
    /// connection without opening it: building succeeds while Redis is down; publishes then
    /// fail with [`Error::Backend`] and subscriptions retry until it answers.
    pub async fn build(metadata: &Metadata) -> Result<Self> {
        let settings = RedisPubSubMetadata::from_metadata(metadata)?;
        if settings.max_len_approx.is_some() && settings.stream_ttl.is_some() {
            tracing::warn!(component = %metadata.name, "pubsub.redis: maxLenApprox and streamTTL are both set; only maxLenApprox trims the streams");
        }
        let client = Client::new(&settings.connection)?;
        tracing::debug!(component = %metadata.name, mode = ?settings.connection.redis_type, sentinel = settings.connection.failover, "pubsub.redis ready");
        Ok(Self {
            shared: Arc::new(Shared {
                name: metadata.name.clone(),
                client,
                settings,
            }),
        })
    }

    /// The `XADD` of one message.
    fn xadd(&self, req: &PublishRequest) -> Cmd {
        let settings = &self.shared.settings;
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&req.topic);
        if let Some(max) = settings.max_len_approx {
            cmd.arg("MAXLEN").arg("~").arg(max);
        } else if let Some(ttl) = settings.stream_ttl {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            let oldest = now.saturating_sub(ttl).as_millis();
            cmd.arg("MINID").arg("~").arg(format!("{oldest}-1"));
        }
        cmd.arg("*");
        for (field, value) in entries::fields(req) {
            cmd.arg(field).arg(value.as_ref());
        }
        cmd
    }
}

#[async_trait]
impl PubSub for RedisPubSub {
    fn features(&self) -> &'static [PubSubFeature] {
        &[]
    }

    async fn publish(&self, req: PublishRequest) -> Result<()> {
        check_topic(&req.topic)?;
        let cmd = &self.xadd(&req);
        self.shared
            .client
            .run("publish", Idempotence::Write, |mut conn| async move {
                cmd.query_async::<Value>(&mut conn).await.map(drop)
            })
            .await
    }

    async fn subscribe(
        &self,
        req: SubscribeRequest,
        handler: Arc<dyn MessageHandler>,
    ) -> Result<Subscription> {
        check_topic(&req.topic)?;
        let group = match req.consumer_group.trim() {
            "" => self.shared.settings.consumer_id.clone(),
            g => g.to_owned(),
        };
        // Create the group now, so that what is published once `subscribe` returns reaches
        // it. With Redis unreachable the subscription starts anyway and its read loop creates
        // the group when Redis answers.
        if let Err(e) = self.shared.ensure_group(&req.topic, &group).await {
            match e {
                Error::Backend(ref source) if !is_refused_by_server(source.as_ref()) => {
                    tracing::warn!(component = %self.shared.name, topic = %req.topic, error = %e, "pubsub.redis: cannot create the consumer group yet; the subscription will retry");
                }
                other => return Err(other),
            }
        }
        let slots = req
            .max_in_flight
            .clamp(1, self.shared.settings.concurrency.max(1));
        let consumer = consumer_name(&group);
        let (stop, stopped) = Subscription::channel();
        let task = subscription::start(subscription::Spec {
            shared: Arc::clone(&self.shared),
            topic: req.topic,
            group,
            consumer,
            handler,
            slots,
            stop: stopped,
        });
        Ok(Subscription::new(stop, task))
    }
}

impl Shared {
    /// Creates the consumer group (and the stream) unless it exists.
    async fn ensure_group(&self, topic: &str, group: &str) -> Result<()> {
        let mut cmd = redis::cmd("XGROUP");
        cmd.arg("CREATE")
            .arg(topic)
            .arg(group)
            .arg("0")
            .arg("MKSTREAM");
        let cmd = &cmd;
        self.client
            .run(
                "consumer group creation",
                Idempotence::Read,
                |mut conn| async move {
                    match cmd.query_async::<Value>(&mut conn).await {
                        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
                        other => other.map(drop),
                    }
                },
            )
            .await
    }
}

/// Whether a failure is the server's answer (for example `WRONGTYPE`: the topic's key holds
/// something other than a stream), as opposed to Redis being unreachable.
fn is_refused_by_server(err: &(dyn std::error::Error + Send + Sync + 'static)) -> bool {
    err.downcast_ref::<Failure>()
        .is_some_and(|f| f.redis().code().is_some())
}

fn check_topic(topic: &str) -> Result<()> {
    if topic.is_empty() {
        return Err(Error::InvalidRequest("the topic must not be empty".into()));
    }
    Ok(())
}

/// A consumer name no other subscription uses: the group, the process, the time and a count.
fn consumer_name(group: &str) -> String {
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_nanos();
    format!(
        "{group}-{}-{:x}-{}",
        std::process::id(),
        nanos & 0xffff_ffff_ffff,
        COUNT.fetch_add(1, Ordering::Relaxed)
    )
}
