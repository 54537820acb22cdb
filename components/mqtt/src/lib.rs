//! MQTT components for Tandem: `pubsub.mqtt3` (alias `pubsub.mqtt`) and `bindings.mqtt3`
//! (alias `bindings.mqtt`), MQTT 3.1.1 through `rumqttc`, with Dapr's metadata and
//! connection layout.
//!
//! - [`metadata`]: [`MqttMetadata`] and [`MqttBindingMetadata`], the typed settings decoded
//!   from a component's `spec.metadata` (Dapr's field names and defaults); their doc comments
//!   are the components' documentation.
//! - [`pubsub`]: [`MqttPubSub`], the component: QoS, retained messages, persistent sessions,
//!   wildcard and shared subscriptions, acknowledgement after the handler's verdict and
//!   in-process redelivery on Retry.
//! - [`binding`]: [`MqttBinding`], the `bindings.mqtt3` component (input and output):
//!   `create` publishes to `topic` (or the request's), the input subscribes to `topic` and
//!   acknowledges each message after the app accepted it.
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
//! | `bindings.mqtt3`: `topic` (wildcards for the input), `backOffMaxRetries`, request metadata `topic` and `retain`; `qos` ignored (QoS 1), as in Dapr | implemented and tested over TCP |
//!
//! Building never waits for the broker: a component built while it is down fails publishes
//! with [`tandem_components::Error::Backend`] and subscribes its filters when the broker
//! answers. Errors never contain metadata values. The crate depends on `tandem-components`
//! only; the binary's registry maps `pubsub.mqtt3` to [`MqttPubSub::build`] and
//! `bindings.mqtt3` to [`MqttBinding::build`].

pub mod binding;
mod link;
pub mod metadata;
pub mod pubsub;

pub use binding::MqttBinding;
pub use metadata::{MqttBindingMetadata, MqttMetadata};
pub use pubsub::MqttPubSub;
