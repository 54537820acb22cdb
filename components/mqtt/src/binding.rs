//! `bindings.mqtt3`: an output binding publishing to `topic` and an input binding
//! subscribed to it, as Dapr's binding does: QoS 1, one connection per direction.
//!
//! - **Output.** The one operation `create` publishes the request's data to the request's
//!   `topic` metadata, else to the component's `topic` (which must then have no wildcards),
//!   retained per `retain` (a request's `retain` metadata wins), and returns once the broker
//!   acknowledged it (PUBACK). The connection (client id `<consumerID>-producer`) is opened
//!   on the first `create`, which waits for the outcome of the first connection attempt (at
//!   most 10 s); calls fail at once while it is down.
//! - **Input.** Reading opens the connection `<consumerID>-consumer` and subscribes to
//!   `topic` (wildcards `+` and `#` allowed). Each message goes to the app with the metadata
//!   `topic`: the topic it was published to. It is acknowledged (PUBACK) only after the app
//!   accepted it. An event the app refused is handed to it again up to `backOffMaxRetries`
//!   times (`-1`: until it takes it), after a pause of 0.5 s doubling up to 30 s; if it is
//!   still refused it stays unacknowledged, and with `cleanSession: false` (the default) the
//!   broker sends it again when the input next connects. Up to [`INPUT_IN_FLIGHT`] events
//!   are with the app at once.
//! - **Stopping** the input waits for the events with the app, then disconnects without
//!   unsubscribing, so that a kept session keeps collecting messages for the next reader.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tandem_components::bindings::{
    BindingEvent, EventHandler, InputBinding, InvokeRequest, InvokeResponse, OutputBinding,
};
use tandem_components::metadata::parse_bool;
use tandem_components::pubsub::Subscription;
use tandem_components::{Error, Metadata, Result};
use tokio::sync::{OnceCell, OwnedSemaphorePermit, Semaphore, watch};

use crate::link::{Closer, Copy, Group, Link, stopped, strip_share};
use crate::metadata::MqttBindingMetadata;
use crate::pubsub::{mqtt_options, valid_filter};

/// The most events of one input binding with the app at once.
pub const INPUT_IN_FLIGHT: usize = 16;
/// How long the first `create` and `read` wait for their first connection attempt (Dapr's
/// `defaultWait`).
const CONNECT_WAIT: Duration = Duration::from_secs(10);
/// The first pause before a refused event is handed over again; it doubles up to
/// [`MAX_RETRY_PAUSE`].
const FIRST_RETRY_PAUSE: Duration = Duration::from_millis(500);
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(30);

/// The `bindings.mqtt3` component (input and output). See the module documentation.
///
/// Built with [`MqttBinding::build`], which opens no connection.
pub struct MqttBinding {
    settings: Arc<MqttBindingMetadata>,
    component: String,
    producer: OnceCell<Closer>,
}

impl fmt::Debug for MqttBinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MqttBinding")
            .field("component", &self.component)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl MqttBinding {
    /// Decodes the metadata (see [`MqttBindingMetadata`]); connections are opened on first
    /// use.
    pub async fn build(metadata: &Metadata) -> Result<Self> {
        let settings = MqttBindingMetadata::from_metadata(metadata)?;
        // Reject bad TLS material now rather than on first use.
        mqtt_options(&settings.connection, &settings.connection.client_id)?;
        Ok(Self {
            settings: Arc::new(settings),
            component: metadata.name.clone(),
            producer: OnceCell::new(),
        })
    }

    /// The decoded settings.
    pub fn settings(&self) -> &MqttBindingMetadata {
        &self.settings
    }

    /// The producer connection, opened (and waited for, once) on first use.
    async fn producer(&self) -> Result<&Arc<Link>> {
        let closer = self
            .producer
            .get_or_try_init(|| async {
                let conn = &self.settings.connection;
                let options = mqtt_options(conn, &format!("{}-producer", conn.client_id))?;
                let closer = Link::start(options, conn, self.component.clone());
                closer.link.wait_first_attempt(CONNECT_WAIT).await;
                Ok::<_, Error>(closer)
            })
            .await?;
        Ok(&closer.link)
    }
}

/// A request metadata value by key, case-insensitive; empty counts as unset.
fn lookup<'a>(md: &'a HashMap<String, String>, key: &str) -> Option<&'a str> {
    md.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

#[async_trait]
impl OutputBinding for MqttBinding {
    fn operations(&self) -> &'static [&'static str] {
        &["create"]
    }

    async fn invoke(&self, req: InvokeRequest) -> Result<InvokeResponse> {
        let topic = lookup(&req.metadata, "topic").unwrap_or(&self.settings.topic);
        if topic.contains(['+', '#']) {
            return Err(Error::InvalidRequest(
                "mqtt binding: cannot publish to a topic with wildcards; set the request's topic metadata".into(),
            ));
        }
        let retain = match lookup(&req.metadata, "retain") {
            None => self.settings.connection.retain,
            Some(v) => parse_bool(v).ok_or_else(|| {
                Error::InvalidRequest("retain: expected a boolean such as true or false".into())
            })?,
        };
        let topic = topic.to_owned();
        self.producer()
            .await?
            .publish(topic, Vec::from(req.data), retain)
            .await?;
        Ok(InvokeResponse::default())
    }
}

#[async_trait]
impl InputBinding for MqttBinding {
    async fn read(&self, handler: Arc<dyn EventHandler>) -> Result<Subscription> {
        let filter = self.settings.topic.clone();
        if !valid_filter(strip_share(&filter)) {
            return Err(Error::InvalidMetadata {
                field: "topic".into(),
                reason: "invalid mqtt topic filter: + and # must be whole levels, # only last"
                    .into(),
            });
        }
        let conn = &self.settings.connection;
        let options = mqtt_options(conn, &format!("{}-consumer", conn.client_id))?;
        let closer = Link::start(options, conn, self.component.clone());
        let link = closer.link.clone();
        // Subscribe once connected, so that the broker gets one SUBSCRIBE (a second one would
        // send retained messages again).
        if !link.wait_first_attempt(CONNECT_WAIT).await {
            tracing::warn!(component = %self.component, topic = %filter, "the mqtt broker is unreachable; the input binding starts reading when it answers");
        }
        let (group, _) = link.join(&filter, "");
        if let Err(e) = link.subscribe_filter(&filter).await {
            link.leave(&filter, &group);
            return Err(e);
        }
        let (stop_tx, stop_rx) = Subscription::channel();
        let reader = Reader {
            closer,
            filter,
            group,
            handler,
            max_retries: self.settings.back_off_max_retries,
            component: self.component.clone(),
            permits: Arc::new(Semaphore::new(INPUT_IN_FLIGHT)),
            stop: stop_rx,
        };
        Ok(Subscription::new(stop_tx, tokio::spawn(reader.run())))
    }
}

/// The task behind the input's [`Subscription`]; it owns the consumer connection.
struct Reader {
    closer: Closer,
    filter: String,
    group: Arc<Group>,
    handler: Arc<dyn EventHandler>,
    max_retries: i64,
    component: String,
    /// One permit per event with the app; all of them back means nothing is in flight.
    permits: Arc<Semaphore>,
    stop: watch::Receiver<bool>,
}

impl Reader {
    async fn run(mut self) {
        // Each event watches for the stop too, to give up its retries.
        let events_stop = self.stop.clone();
        self.group
            .take(&self.permits, &mut self.stop, |copy, permit| {
                tokio::spawn(deliver(
                    copy,
                    self.handler.clone(),
                    self.max_retries,
                    self.component.clone(),
                    events_stop.clone(),
                    permit,
                ));
            })
            .await;
        let _ = self.permits.acquire_many(INPUT_IN_FLIGHT as u32).await;
        // Not unsubscribed: a kept session goes on collecting messages for the next reader.
        self.closer.link.leave(&self.filter, &self.group);
        // Dropping the closer disconnects.
    }
}

/// Hands one message to the app, again after a pause while it refuses (up to `max_retries`
/// times, `-1` without limit), and acknowledges it once taken.
async fn deliver(
    copy: Copy,
    handler: Arc<dyn EventHandler>,
    max_retries: i64,
    component: String,
    mut stop: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    let event = BindingEvent {
        data: copy.msg.data.clone(),
        metadata: HashMap::from([("topic".to_owned(), copy.msg.topic.clone())]),
    };
    let mut retries = 0i64;
    loop {
        let why = match handler.handle(event.clone()).await {
            Ok(_) => {
                copy.tracker.done().await;
                return;
            }
            Err(why) => why,
        };
        if max_retries >= 0 && retries >= max_retries {
            tracing::warn!(component = %component, topic = %copy.msg.topic, error = %why, "the app did not accept an mqtt event; it stays unacknowledged until the binding reconnects");
            return;
        }
        let pause = FIRST_RETRY_PAUSE
            .saturating_mul(1 << retries.min(6))
            .min(MAX_RETRY_PAUSE);
        retries += 1;
        tracing::debug!(component = %component, topic = %copy.msg.topic, error = %why, retry_in = ?pause, "the app did not accept an mqtt event; handing it over again");
        tokio::select! {
            _ = stopped(&mut stop) => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}
