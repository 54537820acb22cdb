//! RabbitMQ components for Tandem: `pubsub.rabbitmq`, on Dapr's exchange and queue layout so
//! that daprd and Tandem sidecars can share one broker, and `bindings.rabbitmq`, on one queue.
//!
//! - [`metadata`]: [`RabbitMetadata`] and [`RabbitBindingMetadata`], the typed settings
//!   decoded from a component's `spec.metadata` (Dapr's field names and defaults); their doc
//!   comments are the components' documentation.
//! - [`pubsub`]: [`RabbitPubSub`], the `pubsub.rabbitmq` component: an exchange per topic, a
//!   queue per consumer group, publisher confirms, acknowledgement after the handler's verdict,
//!   requeue on Retry.
//! - [`binding`]: [`RabbitBinding`], the `bindings.rabbitmq` component (input and output):
//!   `create` publishes to the queue with publisher confirms, the input acknowledges each
//!   message after the app accepted it and returns refused ones to the queue.
//! - `link` (private): the one AMQP connection per component (lapin), opened in the
//!   background, re-opened with backoff when it breaks.
//!
//! # What works
//!
//! | Setting | Status |
//! |---|---|
//! | `connectionString` (`amqp://`, `amqps://`; deprecated alias `host`), or `protocol` + `hostname` + `username` + `password` | implemented (no `port` field, as in Dapr: put it in `hostname` or the URI); IPv6 literal hosts are not supported |
//! | `consumerID`, `durable`, `deletedWhenUnused`, `exchangeKind`, `maxLen`, `maxLenBytes`, `enableDeadLetter` | implemented, declaring what daprd declares (`durable` defaults to `true` as daprd's code does) |
//! | `autoAck`, `prefetchCount`, `concurrencyMode` (alias `concurrency`), `deliveryMode`, `ttlInSeconds` | implemented |
//! | `reconnectWaitSeconds` (alias `reconnectWait`), `heartBeat`, `clientName` | implemented; reconnection backs off from `reconnectWaitSeconds` up to 30 s |
//! | `publishMessagePropertiesToMetadata` | implemented |
//! | `caCert`, `clientCert`, `clientKey` | implemented for `amqps` (rustls with ring; `caCert` is trusted in addition to the system roots); tested through a TLS terminator that requires a client certificate. With `amqp` they have no effect and a warning says so |
//! | `saslExternal` | implemented for `amqps` (SASL EXTERNAL instead of username/password; requires `caCert`, `clientCert`, `clientKey`, as in Dapr); not tested here: it needs a broker with TLS and the `rabbitmq_auth_mechanism_ssl` plugin |
//! | `publisherConfirm` | accepted, no effect: publishing always waits for the broker's confirm |
//! | `requeueInFailure` | accepted, no effect: a RETRY always requeues (the runtime owns retries and dead-letter topics) |
//! | subscription `queueName`, `routingKey` (comma-separated), `maxPriority`, `queueType` (`classic`, `quorum`), `singleActiveConsumer`, `maxLen`, `maxLenBytes` | implemented |
//! | publish `routingKey`, `ttlInSeconds`, `priority`, `contentType`, `messageID`, `correlationID`, `type` | implemented |
//! | `bindings.rabbitmq`: `host` (alias `connectionString`), `queueName`, `durable`, `deleteWhenUnused`, `exclusive`, `ttlInSeconds`, `maxPriority`, `prefetchCount`, `contentType`, `deliveryMode`, `reconnectWaitInSeconds`, `caCert`/`clientCert`/`clientKey`, `externalSasl`; `create` with `ttlInSeconds`, `priority`, `contentType`, `messageID`, `correlationID`, `type`, metadata as headers | implemented; TLS as for `pubsub.rabbitmq` (not tested with the binding) |
//!
//! Building never waits for the broker: a component built while RabbitMQ is down fails
//! publishes with [`tandem_components::Error::Backend`] and attaches its subscriptions when
//! the broker answers. Errors never contain metadata values.
//!
//! lapin runs each connection's socket I/O on a thread of its own; messages reach the tokio
//! workers through channels. The crate depends on `tandem-components` only; the binary's
//! registry maps `pubsub.rabbitmq` to [`RabbitPubSub::build`] and `bindings.rabbitmq` to
//! [`RabbitBinding::build`].

pub mod binding;
mod consumer;
mod link;
mod message;
pub mod metadata;
pub mod pubsub;

pub use binding::RabbitBinding;
pub use metadata::{RabbitBindingMetadata, RabbitMetadata};
pub use pubsub::RabbitPubSub;
