//! `pubsub.mqtt3`: one MQTT 3.1.1 connection per component, client id `consumerID`, as in
//! Dapr.
//!
//! # Consumer groups
//!
//! MQTT 3 has no consumer groups: the broker sends every connection one copy of each message
//! that matches its subscriptions. Inside one sidecar the component gives that copy to each
//! consumer group subscribed to a matching filter, and the subscriptions of one group take
//! turns (competing consumers). Across sidecars each connection gets every message, so the
//! instances of one app all receive it, as with daprd; for competing consumers across
//! sidecars subscribe to a shared subscription, `$share/<group>/<topic>` (the broker must
//! support them; Mosquitto ≥ 1.6, EMQX, HiveMQ do), and give each sidecar its own
//! `consumerID` (two connections with one client id take turns disconnecting each other).
//!
//! # Delivery
//!
//! - **Publish** waits for the broker's PUBACK (QoS 1) or PUBREC (QoS 2), at most 20 s;
//!   publish metadata `retain` overrides the component's `retain`. QoS 2 publishes of one
//!   component go one at a time (several at once lost messages with rumqttc 0.25).
//! - **At least once.** Messages arrive with QoS `qos` and are acknowledged to the broker
//!   (PUBACK) only when every group of this sidecar that got a copy answered
//!   [`Delivery::Ack`]. MQTT 3 brokers redeliver only when a client reconnects, so a
//!   [`Delivery::Retry`] (or a handler that panics) is redelivered by the component itself:
//!   the copy goes back to its group after 0.5 s, doubling up to 30 s, until the app takes
//!   it. A sidecar that stops or dies before that never acknowledged the message, so with
//!   `cleanSession: false` (the default) the broker sends it again when the client id
//!   reconnects. Messages that arrive before any subscription here matches them (a kept
//!   session delivers right after connecting) wait, unacknowledged, for one that does.
//! - Delivered messages carry the metadata `retained` (`true`/`false`), as in Dapr, and the
//!   concrete topic when the subscription used wildcards (`+`, `#`).
//! - Overlapping filters of one sidecar (`a/+` and `a/#`) may deliver a message twice: the
//!   broker sends one copy per filter.
//! - **Stopping** a subscription waits for the messages being handled. The broker
//!   subscription is kept (so a kept session keeps collecting messages) unless
//!   `cleanSession` is `true` or the subscription's metadata says `unsubscribeOnClose: true`,
//!   as in Dapr.
//! - **Connection loss.** The connection is re-made with backoff; every filter is subscribed
//!   again on each connection. Publishing fails at once while it is down.

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use rumqttc::{MqttOptions, TlsConfiguration, Transport};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tandem_components::metadata::parse_bool;
use tandem_components::pubsub::{
    Delivery, MessageHandler, PubSub, PubSubFeature, PublishRequest, SubscribeRequest, Subscription,
};
use tandem_components::state::RequestMetadata;
use tandem_components::{Error, Metadata, Result};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::link::{Closer, Copy, Group, Link, strip_share};
use crate::metadata::MqttMetadata;

/// The first in-process redelivery after a Retry; it doubles up to [`MAX_REDELIVERY`].
const FIRST_REDELIVERY: Duration = Duration::from_millis(500);
const MAX_REDELIVERY: Duration = Duration::from_secs(30);
/// The largest MQTT packet (the protocol's limit).
const MAX_PACKET: usize = 268_435_455;

/// The `pubsub.mqtt3` component. See the module documentation for its semantics.
///
/// Built with [`MqttPubSub::build`], which never waits for the broker. Subscriptions keep
/// the connection open after the component itself is dropped, until they stop.
pub struct MqttPubSub {
    settings: Arc<MqttMetadata>,
    closer: Arc<Closer>,
    component: String,
}

impl fmt::Debug for MqttPubSub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MqttPubSub")
            .field("component", &self.component)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl MqttPubSub {
    /// Decodes the metadata (see [`MqttMetadata`]) and starts connecting in the background.
    /// A broker that is down does not fail the build.
    pub async fn build(metadata: &Metadata) -> Result<Self> {
        let settings = MqttMetadata::from_metadata(metadata)?;
        let options = mqtt_options(&settings, &settings.client_id)?;
        let closer = Link::start(options, &settings, metadata.name.clone());
        Ok(Self {
            settings: Arc::new(settings),
            closer: Arc::new(closer),
            component: metadata.name.clone(),
        })
    }

    /// The decoded settings.
    pub fn settings(&self) -> &MqttMetadata {
        &self.settings
    }

    fn link(&self) -> &Arc<Link> {
        &self.closer.link
    }
}

/// The connection options of a component's connection with the client id `client_id`:
/// manual acknowledgements, the session per `cleanSession`, credentials and TLS from `url`
/// and the certificate fields.
pub(crate) fn mqtt_options(settings: &MqttMetadata, client_id: &str) -> Result<MqttOptions> {
    let mut options = MqttOptions::new(client_id, &settings.host, settings.port);
    options
        .set_clean_session(settings.clean_session)
        .set_manual_acks(true)
        .set_keep_alive(Duration::from_secs(10))
        .set_max_packet_size(MAX_PACKET, MAX_PACKET);
    if let Some(user) = &settings.username {
        options.set_credentials(user, settings.password.as_deref().unwrap_or_default());
    }
    if settings.tls {
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(tls_config(settings)?),
        )));
    }
    Ok(options)
}

/// The TLS client configuration: `caCert` (else the system roots) and the client identity.
fn tls_config(s: &MqttMetadata) -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    match &s.ca_cert {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let cert = cert.map_err(|_| Error::invalid_metadata("caCert", "invalid PEM"))?;
                roots
                    .add(cert)
                    .map_err(|_| Error::invalid_metadata("caCert", "invalid certificate"))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(Error::backend)?
        .with_root_certificates(roots);
    Ok(match (&s.client_cert, &s.client_key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|_| Error::invalid_metadata("clientCert", "invalid PEM"))?;
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes())
                .map_err(|_| Error::invalid_metadata("clientKey", "invalid PEM private key"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|_| Error::invalid_metadata("clientKey", "does not match clientCert"))?
        }
        _ => builder.with_no_client_auth(),
    })
}

/// A request metadata value by key, case-insensitive; empty counts as unset.
fn lookup<'a>(md: &'a RequestMetadata, key: &str) -> Option<&'a str> {
    md.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

#[async_trait]
impl PubSub for MqttPubSub {
    fn features(&self) -> &'static [PubSubFeature] {
        &[PubSubFeature::SubscribeWildcards]
    }

    async fn publish(&self, req: PublishRequest) -> Result<()> {
        if req.topic.is_empty() || req.topic.contains(['+', '#']) {
            return Err(Error::InvalidRequest(
                "an mqtt topic to publish to must be non-empty and without wildcards".into(),
            ));
        }
        let retain = match lookup(&req.metadata, "retain") {
            None => self.settings.retain,
            Some(v) => parse_bool(v).ok_or_else(|| {
                Error::InvalidRequest("retain: expected a boolean such as true or false".into())
            })?,
        };
        self.link()
            .publish(req.topic, Vec::from(req.data), retain)
            .await
    }

    async fn subscribe(
        &self,
        req: SubscribeRequest,
        handler: Arc<dyn MessageHandler>,
    ) -> Result<Subscription> {
        let filter = req.topic.trim().to_owned();
        if !valid_filter(strip_share(&filter)) {
            return Err(Error::InvalidRequest(
                "invalid mqtt topic filter: + and # must be whole levels, # only last".into(),
            ));
        }
        let unsubscribe_on_close = self.settings.clean_session
            || lookup(&req.metadata, "unsubscribeOnClose")
                .and_then(parse_bool)
                .unwrap_or(false);
        let group_name = req.consumer_group.trim().to_owned();
        let link = self.link().clone();
        let (group, new_filter) = link.join(&filter, &group_name);
        if new_filter && let Err(e) = link.subscribe_filter(&filter).await {
            if link.leave(&filter, &group) {
                link.unsubscribe_filter(&filter);
            }
            return Err(e);
        }
        if !link.connected() {
            tracing::warn!(component = %self.component, topic = %filter, "the mqtt broker is unreachable; the subscription starts when it answers");
        }
        let in_flight = req.max_in_flight.max(1);
        let (stop_tx, stop_rx) = Subscription::channel();
        let member = Member {
            closer: self.closer.clone(),
            filter,
            group,
            handler,
            permits: Arc::new(Semaphore::new(in_flight)),
            in_flight,
            unsubscribe_on_close,
            stop: stop_rx,
        };
        Ok(Subscription::new(stop_tx, tokio::spawn(member.run())))
    }
}

/// Whether `filter` is a valid MQTT topic filter.
pub(crate) fn valid_filter(filter: &str) -> bool {
    if filter.is_empty() {
        return false;
    }
    let levels: Vec<&str> = filter.split('/').collect();
    levels.iter().enumerate().all(|(i, level)| match *level {
        "#" => i == levels.len() - 1,
        "+" => true,
        l => !l.contains(['+', '#']),
    })
}

/// One subscription: a member of its group, taking the group's copies while it has free
/// handler slots.
struct Member {
    closer: Arc<Closer>,
    filter: String,
    group: Arc<Group>,
    handler: Arc<dyn MessageHandler>,
    permits: Arc<Semaphore>,
    in_flight: usize,
    unsubscribe_on_close: bool,
    stop: watch::Receiver<bool>,
}

impl Member {
    async fn run(mut self) {
        self.group
            .take(&self.permits, &mut self.stop, |copy, permit| {
                tokio::spawn(handle(
                    copy,
                    self.handler.clone(),
                    Arc::downgrade(&self.group),
                    permit,
                ));
            })
            .await;
        let link = &self.closer.link;
        if link.leave(&self.filter, &self.group) && self.unsubscribe_on_close {
            link.unsubscribe_filter(&self.filter);
        }
        let _ = self.permits.acquire_many(self.in_flight as u32).await;
    }
}

/// Hands one copy to the handler; on Retry puts it back in its group later.
async fn handle(
    mut copy: Copy,
    handler: Arc<dyn MessageHandler>,
    group: std::sync::Weak<Group>,
    permit: OwnedSemaphorePermit,
) {
    copy.attempts += 1;
    let verdict = CatchUnwind(handler.handle(copy.msg.clone()))
        .await
        .unwrap_or(Delivery::Retry);
    drop(permit);
    match verdict {
        Delivery::Ack => copy.tracker.done().await,
        Delivery::Retry => {
            let delay = FIRST_REDELIVERY
                .saturating_mul(1 << (copy.attempts - 1).min(6))
                .min(MAX_REDELIVERY);
            tokio::time::sleep(delay).await;
            // A group that lost its last subscription meanwhile leaves the message
            // unacknowledged: the broker redelivers it after a reconnection.
            if let Some(group) = group.upgrade() {
                group.requeue(copy);
            }
        }
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
    fn filters() {
        for ok in ["a", "a/b", "a/+", "+/b/#", "#", "a/+/c"] {
            assert!(valid_filter(ok), "{ok}");
        }
        for bad in ["", "a/#/b", "a+", "a/b#", "#/a"] {
            assert!(!valid_filter(bad), "{bad}");
        }
    }
}
