//! The component's one MQTT connection: the `rumqttc` event loop on a task of its own, what
//! it correlates (publishes with their acknowledgements, subscriptions with theirs), and the
//! routing of incoming messages to the subscriptions of this sidecar.
//!
//! rumqttc does not say which PUBACK answers which publish; it does report, in order, each
//! publish it writes (`Outgoing::Publish(pkid)`) and each acknowledgement it reads. Requests
//! leave its channel in the order they were sent, so the component keeps the publishers
//! waiting for a packet id in a queue in that same order ([`Corr`]), filled under one lock
//! together with the channel. A broken connection moves rumqttc's unsent and unacknowledged
//! requests into its pending list; a new connection without the old session drops that list,
//! and then every waiting publisher is told that its message may be lost.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnAck, Event, EventLoop, Incoming, MqttOptions, Outgoing, Publish, QoS,
    SubscribeFilter, SubscribeReasonCode,
};
use tandem_components::pubsub::Message;
use tandem_components::{Error, Result};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};

use crate::metadata::MqttMetadata;

/// How long a publish or a subscription waits for the broker (Dapr's `defaultWait`).
pub(crate) const BROKER_WAIT: Duration = Duration::from_secs(20);
/// Messages that arrive for no subscription of this sidecar wait (unacknowledged) for one
/// that matches, up to this many; beyond it they are left to the broker's next redelivery.
const MAX_PARKED: usize = 10_000;
/// Capacity of rumqttc's request channel.
const REQUESTS: usize = 4096;
/// Pauses between connection attempts.
const MIN_RECONNECT: Duration = Duration::from_millis(100);
const MAX_RECONNECT: Duration = Duration::from_secs(10);

type Waiter = oneshot::Sender<Result<()>>;

/// Publishers and subscribers waiting for the broker.
#[derive(Default)]
struct Corr {
    /// Publishes sent to rumqttc and not yet written (in channel order).
    queued_pubs: VecDeque<Option<Waiter>>,
    /// Written publishes waiting for their acknowledgement, by packet id.
    inflight_pubs: HashMap<u16, Option<Waiter>>,
    /// A publish rumqttc holds back because its packet id is still in use.
    collided: Option<(u16, Option<Waiter>)>,
    /// Subscriptions sent and not yet written.
    queued_subs: VecDeque<Option<Waiter>>,
    /// Written subscriptions waiting for their SUBACK.
    inflight_subs: HashMap<u16, Option<Waiter>>,
    /// The connection broke: what is queued may be dropped if the next one has no session.
    limbo: bool,
}

fn finish(w: Option<Waiter>, r: Result<()>) {
    if let Some(w) = w {
        let _ = w.send(r);
    }
}

impl Corr {
    fn fail_publishes(&mut self, why: &str) {
        let err = || Err(Error::backend(why.to_owned()));
        for w in self.queued_pubs.drain(..) {
            finish(w, err());
        }
        for (_, w) in self.inflight_pubs.drain() {
            finish(w, err());
        }
        if let Some((_, w)) = self.collided.take() {
            finish(w, err());
        }
    }

    /// Subscriptions are made again on every connection, so those cut off count as made.
    fn settle_subscriptions(&mut self) {
        for w in self.queued_subs.drain(..) {
            finish(w, Ok(()));
        }
        for (_, w) in self.inflight_subs.drain() {
            finish(w, Ok(()));
        }
    }
}

/// A copy of an incoming message for one consumer group.
pub(crate) struct Copy {
    pub(crate) msg: Message,
    pub(crate) tracker: Arc<Tracker>,
    /// Deliveries so far.
    pub(crate) attempts: u32,
}

/// Acknowledges an incoming message once every group that got a copy has acknowledged it.
pub(crate) struct Tracker {
    publish: Publish,
    remaining: AtomicUsize,
    generation: u64,
    link: Weak<Link>,
}

impl Tracker {
    /// One group is done with its copy.
    pub(crate) async fn done(&self) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        let Some(link) = self.link.upgrade() else {
            return;
        };
        // A packet id of an earlier connection may now name another message.
        if link.generation.load(Ordering::Acquire) != self.generation {
            return;
        }
        if let Err(e) = link.client.ack(&self.publish).await {
            tracing::debug!(error = %e, "could not acknowledge a message; the broker redelivers it after a reconnection");
        }
    }
}

/// The messages of one consumer group on one topic filter, shared by its subscriptions.
pub(crate) struct Group {
    tx: mpsc::UnboundedSender<Copy>,
    pub(crate) rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<Copy>>,
    members: AtomicUsize,
}

impl Group {
    /// Puts a copy back for another delivery.
    pub(crate) fn requeue(&self, copy: Copy) {
        let _ = self.tx.send(copy);
    }

    /// Takes the group's copies while a permit is free, handing each to `dispatch` with its
    /// permit, until `stop` is set, the permits are closed or the group has no sender left.
    pub(crate) async fn take(
        &self,
        permits: &Arc<Semaphore>,
        stop: &mut watch::Receiver<bool>,
        mut dispatch: impl FnMut(Copy, OwnedSemaphorePermit),
    ) {
        loop {
            let permit = tokio::select! {
                biased;
                _ = stopped(stop) => break,
                permit = permits.clone().acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let copy = tokio::select! {
                biased;
                _ = stopped(stop) => break,
                copy = async { self.rx.lock().await.recv().await } => copy,
            };
            let Some(copy) = copy else { break };
            dispatch(copy, permit);
        }
    }
}

/// Resolves once a subscription or input is asked to stop (or its `Subscription` is gone).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// One topic filter subscribed on the broker and the groups reading it here.
struct Route {
    filter: String,
    /// The filter without a `$share/<name>/` prefix, matched against topics.
    pattern: String,
    groups: Vec<(String, Arc<Group>)>,
}

#[derive(Default)]
struct Routes {
    routes: Vec<Route>,
    parked: VecDeque<Publish>,
}

/// The connection, shared by the component and its subscriptions.
pub(crate) struct Link {
    pub(crate) client: AsyncClient,
    pub(crate) qos: QoS,
    component: String,
    /// Held while a request that is correlated is handed to rumqttc.
    send_lock: tokio::sync::Mutex<()>,
    /// QoS 2 publishes go one at a time: with several in flight at once, rumqttc 0.25 and
    /// Mosquitto lost messages in the conformance suite's volume case.
    qos2_lock: tokio::sync::Mutex<()>,
    corr: Mutex<Corr>,
    routes: Mutex<Routes>,
    connected: watch::Sender<bool>,
    /// Whether a connection attempt has ended (in a connection or a failure).
    attempted: watch::Sender<bool>,
    /// Counts connections.
    generation: AtomicU64,
}

/// Stops the connection task when the component and all its subscriptions are gone.
pub(crate) struct Closer {
    pub(crate) link: Arc<Link>,
    close: watch::Sender<bool>,
}

impl Drop for Closer {
    fn drop(&mut self) {
        let _ = self.close.send(true);
    }
}

fn qos(level: u8) -> QoS {
    match level {
        0 => QoS::AtMostOnce,
        2 => QoS::ExactlyOnce,
        _ => QoS::AtLeastOnce,
    }
}

impl Link {
    /// Starts connecting in the background.
    pub(crate) fn start(
        options: MqttOptions,
        settings: &MqttMetadata,
        component: String,
    ) -> Closer {
        let (client, mut eventloop) = AsyncClient::new(options, REQUESTS);
        eventloop.network_options.set_connection_timeout(5);
        let link = Arc::new(Link {
            client,
            qos: qos(settings.qos),
            component,
            send_lock: tokio::sync::Mutex::new(()),
            qos2_lock: tokio::sync::Mutex::new(()),
            corr: Mutex::new(Corr::default()),
            routes: Mutex::new(Routes::default()),
            connected: watch::channel(false).0,
            attempted: watch::channel(false).0,
            generation: AtomicU64::new(0),
        });
        let (close, closed) = watch::channel(false);
        tokio::spawn(run(eventloop, link.clone(), closed));
        Closer { link, close }
    }

    fn corr(&self) -> std::sync::MutexGuard<'_, Corr> {
        self.corr.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn routes(&self) -> std::sync::MutexGuard<'_, Routes> {
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the connection is up.
    pub(crate) fn connected(&self) -> bool {
        *self.connected.borrow()
    }

    /// Waits up to `timeout` for the outcome of the first connection attempt; whether the
    /// connection is up.
    pub(crate) async fn wait_first_attempt(&self, timeout: Duration) -> bool {
        let mut rx = self.attempted.subscribe();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|a| *a)).await;
        self.connected()
    }

    /// Publishes and waits for the broker's acknowledgement (at once for QoS 0).
    pub(crate) async fn publish(
        &self,
        topic: String,
        payload: Vec<u8>,
        retain: bool,
    ) -> Result<()> {
        let _one = match self.qos {
            QoS::ExactlyOnce => Some(self.qos2_lock.lock().await),
            _ => None,
        };
        let (tx, rx) = oneshot::channel();
        {
            let _g = self.send_lock.lock().await;
            if !self.connected() {
                return Err(unreachable());
            }
            self.corr().queued_pubs.push_back(Some(tx));
            if let Err(e) = self.client.try_publish(topic, self.qos, retain, payload) {
                self.corr().queued_pubs.pop_back();
                return Err(Error::backend(format!("mqtt publish not sent: {e}")));
            }
        }
        match tokio::time::timeout(BROKER_WAIT, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(Error::backend("the mqtt connection closed")),
            Err(_) => Err(Error::backend(
                "the mqtt broker did not acknowledge the message in time",
            )),
        }
    }

    /// Subscribes `filter` on the broker and waits for the SUBACK; while disconnected it
    /// returns at once (the next connection subscribes every filter).
    pub(crate) async fn subscribe_filter(&self, filter: &str) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        {
            let _g = self.send_lock.lock().await;
            if !self.connected() {
                return Ok(());
            }
            self.corr().queued_subs.push_back(Some(tx));
            if let Err(e) = self.client.try_subscribe(filter, self.qos) {
                self.corr().queued_subs.pop_back();
                return Err(Error::InvalidRequest(format!(
                    "mqtt could not subscribe to the topic: {e}"
                )));
            }
        }
        match tokio::time::timeout(BROKER_WAIT, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(Error::backend("the mqtt connection closed")),
            Err(_) => Err(Error::backend("timeout waiting for the mqtt subscription")),
        }
    }

    /// Unsubscribes `filter` (fire and forget).
    pub(crate) fn unsubscribe_filter(&self, filter: &str) {
        if let Err(e) = self.client.try_unsubscribe(filter) {
            tracing::debug!(component = %self.component, error = %e, "mqtt unsubscribe not sent");
        }
    }

    /// Joins (or creates) the group `group` on `filter`. Returns the group and whether the
    /// filter is new here (and needs subscribing on the broker).
    pub(crate) fn join(self: &Arc<Self>, filter: &str, group: &str) -> (Arc<Group>, bool) {
        let mut routes = self.routes();
        let pos = routes.routes.iter().position(|r| r.filter == filter);
        let new_filter = pos.is_none();
        let idx = pos.unwrap_or_else(|| {
            routes.routes.push(Route {
                filter: filter.to_owned(),
                pattern: strip_share(filter).to_owned(),
                groups: Vec::new(),
            });
            routes.routes.len() - 1
        });
        let route = &mut routes.routes[idx];
        let found = route
            .groups
            .iter()
            .find(|(g, _)| g == group)
            .map(|(_, g)| g.clone());
        let g = found.unwrap_or_else(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let g = Arc::new(Group {
                tx,
                rx: tokio::sync::Mutex::new(rx),
                members: AtomicUsize::new(0),
            });
            route.groups.push((group.to_owned(), g.clone()));
            g
        });
        g.members.fetch_add(1, Ordering::AcqRel);
        // Messages that came before anyone here wanted them.
        let pattern = route.pattern.clone();
        let parked: Vec<Publish> = {
            let mut keep = VecDeque::new();
            let mut take = Vec::new();
            for p in routes.parked.drain(..) {
                if topic_matches(&pattern, &p.topic) {
                    take.push(p);
                } else {
                    keep.push_back(p);
                }
            }
            routes.parked = keep;
            take
        };
        for p in parked {
            self.route(&mut routes, p);
        }
        (g, new_filter)
    }

    /// Leaves the group; returns whether the filter has no group left here.
    pub(crate) fn leave(&self, filter: &str, group: &Arc<Group>) -> bool {
        if group.members.fetch_sub(1, Ordering::AcqRel) != 1 {
            return false;
        }
        let mut routes = self.routes();
        let Some(idx) = routes.routes.iter().position(|r| r.filter == filter) else {
            return false;
        };
        routes.routes[idx]
            .groups
            .retain(|(_, g)| !Arc::ptr_eq(g, group));
        if routes.routes[idx].groups.is_empty() {
            routes.routes.remove(idx);
            return true;
        }
        false
    }

    /// Hands a copy of an incoming message to every group here whose filter matches it.
    fn dispatch(self: &Arc<Self>, publish: Publish) {
        let mut routes = self.routes();
        self.route(&mut routes, publish);
    }

    fn route(self: &Arc<Self>, routes: &mut Routes, publish: Publish) {
        let mut targets: Vec<Arc<Group>> = Vec::new();
        for r in &routes.routes {
            if topic_matches(&r.pattern, &publish.topic) {
                for (_, g) in &r.groups {
                    if !targets.iter().any(|t| Arc::ptr_eq(t, g)) {
                        targets.push(g.clone());
                    }
                }
            }
        }
        if targets.is_empty() {
            // Not acknowledged: it waits for a subscription here, or for the broker.
            if routes.parked.len() < MAX_PARKED {
                routes.parked.push_back(publish);
            }
            return;
        }
        let msg = Message {
            topic: publish.topic.clone(),
            data: publish.payload.clone(),
            content_type: None,
            metadata: HashMap::from([("retained".to_owned(), publish.retain.to_string())]),
        };
        let tracker = Arc::new(Tracker {
            remaining: AtomicUsize::new(targets.len()),
            generation: self.generation.load(Ordering::Acquire),
            link: Arc::downgrade(self),
            publish,
        });
        for g in targets {
            g.requeue(Copy {
                msg: msg.clone(),
                tracker: tracker.clone(),
                attempts: 0,
            });
        }
    }

    async fn on_event(self: &Arc<Self>, event: Event) {
        match event {
            Event::Incoming(Incoming::Publish(p)) => self.dispatch(p),
            Event::Incoming(Incoming::ConnAck(ack)) => self.on_connected(ack).await,
            Event::Incoming(Incoming::PubAck(a)) => {
                let w = self.corr().inflight_pubs.remove(&a.pkid);
                finish(w.flatten(), Ok(()));
            }
            // QoS 2: the broker owns the message from its PUBREC on; the packet id may be
            // used again before the PUBCOMP arrives.
            Event::Incoming(Incoming::PubRec(r)) => {
                let w = self.corr().inflight_pubs.remove(&r.pkid);
                finish(w.flatten(), Ok(()));
            }
            Event::Incoming(Incoming::SubAck(s)) => {
                let w = self.corr().inflight_subs.remove(&s.pkid).flatten();
                let refused = s
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, SubscribeReasonCode::Failure));
                if refused {
                    tracing::error!(component = %self.component, "the mqtt broker refused a subscription");
                }
                finish(
                    w,
                    if refused {
                        Err(Error::backend("the mqtt broker refused the subscription"))
                    } else {
                        Ok(())
                    },
                );
            }
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                let mut corr = self.corr();
                if pkid == 0 {
                    let w = corr.queued_pubs.pop_front().flatten();
                    finish(w, Ok(()));
                } else if corr.collided.as_ref().is_some_and(|(id, _)| *id == pkid)
                    && !corr.inflight_pubs.contains_key(&pkid)
                {
                    let (_, w) = corr.collided.take().unwrap_or((pkid, None));
                    corr.inflight_pubs.insert(pkid, w);
                } else if corr.inflight_pubs.contains_key(&pkid) {
                    // A retransmission after a reconnection.
                } else {
                    let w = corr.queued_pubs.pop_front().flatten();
                    corr.inflight_pubs.insert(pkid, w);
                }
            }
            Event::Outgoing(Outgoing::AwaitAck(pkid)) => {
                let mut corr = self.corr();
                let w = corr.queued_pubs.pop_front().flatten();
                corr.collided = Some((pkid, w));
            }
            Event::Outgoing(Outgoing::Subscribe(pkid)) => {
                let mut corr = self.corr();
                let w = corr.queued_subs.pop_front().flatten();
                corr.inflight_subs.insert(pkid, w);
            }
            _ => {}
        }
    }

    async fn on_connected(&self, ack: ConnAck) {
        let _g = self.send_lock.lock().await;
        {
            let mut corr = self.corr();
            if corr.limbo && !ack.session_present {
                // rumqttc dropped what it had not sent or not seen acknowledged.
                corr.fail_publishes(
                    "the mqtt connection broke before the broker acknowledged the message",
                );
                corr.settle_subscriptions();
            }
            corr.limbo = false;
        }
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        // Every filter again (as daprd does): a new session has none.
        let filters: Vec<SubscribeFilter> = self
            .routes()
            .routes
            .iter()
            .map(|r| SubscribeFilter::new(r.filter.clone(), self.qos))
            .collect();
        if !filters.is_empty() {
            self.corr().queued_subs.push_back(None);
            if let Err(e) = self.client.try_subscribe_many(filters) {
                self.corr().queued_subs.pop_back();
                tracing::error!(component = %self.component, error = %e, "could not subscribe again after connecting");
            }
        }
        if generation > 1 {
            tracing::info!(component = %self.component, session_present = ack.session_present, "connected to the mqtt broker again");
        } else {
            tracing::debug!(component = %self.component, "connected to the mqtt broker");
        }
        self.connected.send_replace(true);
        self.attempted.send_replace(true);
    }

    async fn on_disconnected(&self, eventloop: &mut EventLoop) {
        let _g = self.send_lock.lock().await;
        // Everything handed to rumqttc so far is now in its pending list.
        eventloop.clean();
        self.connected.send_replace(false);
        let mut corr = self.corr();
        corr.limbo = true;
        // SUBACKs of the old connection never come; the next connection subscribes again.
        for (_, w) in corr.inflight_subs.drain() {
            finish(w, Ok(()));
        }
    }
}

fn unreachable() -> Error {
    Error::backend("the mqtt broker is unreachable: not connected")
}

/// The connection task.
async fn run(mut eventloop: EventLoop, link: Arc<Link>, mut closed: watch::Receiver<bool>) {
    let mut failures = 0u32;
    loop {
        let event = tokio::select! {
            _ = closed.wait_for(|c| *c) => break,
            event = eventloop.poll() => event,
        };
        match event {
            Ok(event) => {
                if matches!(event, Event::Incoming(Incoming::ConnAck(_))) {
                    failures = 0;
                }
                link.on_event(event).await;
            }
            Err(e) => {
                let was_connected = link.connected();
                link.on_disconnected(&mut eventloop).await;
                link.attempted.send_replace(true);
                failures += 1;
                let pause = MIN_RECONNECT
                    .saturating_mul(1 << failures.min(7))
                    .min(MAX_RECONNECT);
                if was_connected {
                    tracing::warn!(component = %link.component, error = %e, "mqtt connection lost; reconnecting");
                } else if failures == 1 {
                    tracing::error!(component = %link.component, error = %e, retry_in = ?pause, "cannot connect to the mqtt broker; publishing fails and subscriptions wait until it answers");
                } else {
                    tracing::debug!(component = %link.component, error = %e, retry_in = ?pause, "still cannot connect to the mqtt broker");
                }
                tokio::select! {
                    _ = closed.wait_for(|c| *c) => break,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
    // Say goodbye, so that the broker does not wait for the keep-alive to run out.
    if link.connected() && link.client.try_disconnect().is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while let Ok(event) = eventloop.poll().await {
                if matches!(event, Event::Outgoing(Outgoing::Disconnect)) {
                    break;
                }
            }
        })
        .await;
    }
    link.connected.send_replace(false);
    link.corr().fail_publishes("the component is closed");
}

/// The topic filter without a shared-subscription prefix (`$share/<group>/`).
pub(crate) fn strip_share(filter: &str) -> &str {
    filter
        .strip_prefix("$share/")
        .and_then(|rest| rest.split_once('/'))
        .map(|(_, f)| f)
        .unwrap_or(filter)
}

/// MQTT topic matching: `+` is one level, `#` (last) the rest, including the parent level;
/// topics starting with `$` are not matched by a leading wildcard.
pub(crate) fn topic_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(topic_matches("a/b", "a/b"));
        assert!(!topic_matches("a/b", "a/c"));
        assert!(topic_matches("a/+", "a/b"));
        assert!(!topic_matches("a/+", "a/b/c"));
        assert!(topic_matches("a/+/c", "a/b/c"));
        assert!(topic_matches("a/#", "a/b/c"));
        assert!(topic_matches("a/#", "a"), "# includes the parent level");
        assert!(topic_matches("#", "x/y"));
        assert!(!topic_matches("#", "$SYS/x"));
        assert!(!topic_matches("+/x", "$SYS/x"));
        assert!(topic_matches("+", "plain"));
        assert!(!topic_matches("a/b/c", "a/b"));
    }

    #[test]
    fn shared_subscriptions() {
        assert_eq!(strip_share("$share/g1/orders/+"), "orders/+");
        assert_eq!(strip_share("orders"), "orders");
        assert_eq!(strip_share("$share/g1"), "$share/g1");
    }
}
