//! The component contract of Tandem.
//!
//! Everything a backend crate (`components/*`) needs and nothing more:
//!
//! - [`error`]: the closed set of semantic errors a component may return. Components never pick
//!   status codes; the runtime maps these kinds onto Dapr's error table.
//! - [`metadata`]: a component's `spec.metadata`, read case-insensitively with Dapr's string forms
//!   (`"20s"`, `"true"`, `"1"`).
//! - [`state`]: the [`state::StateStore`] trait, its request and response types, and optional
//!   abilities exposed as sub-trait accessors ([`state::StateStore::transactional`]).
//! - [`secrets`]: the [`secrets::SecretStore`] trait.
//! - [`pubsub`]: the [`pubsub::PubSub`] trait; components move bytes, the runtime handles
//!   CloudEvents and the app.
//! - [`bindings`]: the [`bindings::OutputBinding`] and [`bindings::InputBinding`] traits.
//! - [`sql`]: what the SQL output bindings share (Dapr's `sql`/`params` requests, response
//!   metadata, JSON written as Go writes it).
//! - [`nameresolution`]: the [`nameresolution::NameResolver`] trait (register / resolve /
//!   unregister) used by service invocation, with an in-memory reference implementation.
//! - [`query`]: the state query API document, the [`query::Querier`] ability and an in-process
//!   evaluator.
//! - [`memory`]: `state.in-memory`, the reference state store every other store is compared with.
//! - [`memory_pubsub`]: `pubsub.in-memory`, the process-local reference bus (consumer groups,
//!   redelivery with backoff, TTL).
//! - [`conformance`]: the generic suites every implementation runs.

pub mod bindings;
pub mod error;
pub mod memory;
pub mod memory_pubsub;
pub mod metadata;
pub mod nameresolution;
pub mod pubsub;
pub mod query;
pub mod secrets;
pub mod sql;
pub mod state;

pub mod conformance;

pub use error::{BoxError, Error, Result};
pub use metadata::Metadata;
