//! NATS components for Tandem: `pubsub.jetstream`, on durable JetStream pull consumers.
//!
//! - [`metadata`]: [`JetStreamMetadata`], the typed settings decoded from a component's
//!   `spec.metadata` (Dapr's field names and defaults); its doc comments are the component's
//!   documentation.
//! - [`pubsub`]: [`JetStreamPubSub`], the `pubsub.jetstream` component: publishing with the
//!   stream's acknowledgement, one durable pull consumer per consumer group and topic,
//!   acknowledgement after the handler's verdict, negative acknowledgement on Retry.
//!
//! # What works
//!
//! | Setting | Status |
//! |---|---|
//! | `natsURL`, `name`, `streamName`, `domain`, `apiPrefix` | implemented |
//! | `token`, credentials in `natsURL` | implemented and tested |
//! | `jwt` + `seedKey`, `nkey` (a Tandem addition), `tls_client_cert` + `tls_client_key` (file paths) | implemented, not tested here (the local server runs without accounts or TLS) |
//! | `durableName`, consumer groups (`consumerID`) | implemented: one durable pull consumer `<group>-<topic>` per group, shared by the group's sidecars |
//! | `deliverPolicy`, `startSequence`, `startTime`, `deliverAll` (legacy) | implemented |
//! | `ackWait`, `maxDeliver`, `backOff`, `maxAckPending`, `replicas`, `memoryStorage`, `ackPolicy` | implemented (consumer settings) |
//! | `heartbeat` | implemented as the pace of pull requests (each stays open twice as long) |
//! | `concurrencyMode` (alias `concurrency`) | implemented; `single` is the default, as in Dapr |
//! | `queueGroupName`, `flowControl`, `rateLimit` | accepted, no effect (push-consumer settings; see [`JetStreamMetadata`]) |
//!
//! Building never waits for the server: the connection is made (and re-made) in the
//! background by `async-nats`; while it is down publishing fails at once and subscriptions
//! wait. Streams are not created by the component (as with Dapr): publishing to a subject no
//! stream captures fails. Errors never contain metadata values.
//!
//! The crate depends on `tandem-components` only; the binary's registry maps
//! `pubsub.jetstream` to [`JetStreamPubSub::build`].

pub mod metadata;
pub mod pubsub;

pub use metadata::JetStreamMetadata;
pub use pubsub::JetStreamPubSub;
