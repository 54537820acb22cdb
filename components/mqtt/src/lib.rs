//! MQTT components for Tandem: `pubsub.mqtt3` (alias `pubsub.mqtt`), MQTT 3.1.1 through
//! `rumqttc`, with Dapr's metadata and its one-connection-per-component layout.
//!
//! - [`metadata`]: [`MqttMetadata`], the typed settings decoded from a component's
//!   `spec.metadata` (Dapr's field names and defaults); its doc comments are the component's
//!   documentation.
//! - [`pubsub`]: [`MqttPubSub`], the component: QoS, retained messages, persistent sessions,
//!   wildcard and shared subscriptions, acknowledgement after the handler's verdict and
//!   in-process redelivery on Retry.
//! - `link` (private): the connection task, the correlation of publishes and subscriptions
//!   with the broker's acknowledgements, and the routing of incoming messages to the
//!   subscriptions of this sidecar.
//!
//! # What works
//!
//! | Setting | Status |
//! |---|---|
//! | `url` (`tcp://`, `mqtt://`; `ssl://`, `mqtts://`, `tcps://`, `tls://`; user and password in the URL) | implemented; TCP tested |
//! | `consumerID` (the client id; default the app-id) | implemented, as in Dapr (no `-sub`/`-pub` suffix: one connection) |
//! | `qos` (0, 1, 2; default 1), `retain` (and per-publish `retain`), `cleanSession` (default `false`) | implemented and tested |
//! | `caCert`, `clientCert`, `clientKey` | implemented (rustls with ring; without `caCert` the system roots); not tested here (the local broker has no TLS listener) |
//! | wildcards `+`, `#` (`SUBSCRIBE_WILDCARDS`), shared subscriptions `$share/<group>/<topic>` | implemented and tested |
//! | subscription `unsubscribeOnClose` | implemented |
//!
//! Building never waits for the broker: a component built while it is down fails publishes
//! with [`tandem_components::Error::Backend`] and subscribes its filters when the broker
//! answers. Errors never contain metadata values. The crate depends on `tandem-components`
//! only; the binary's registry maps `pubsub.mqtt3` to [`MqttPubSub::build`].

mod link;
pub mod metadata;
pub mod pubsub;

pub use metadata::MqttMetadata;
pub use pubsub::MqttPubSub;
