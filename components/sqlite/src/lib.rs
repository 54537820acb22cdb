//! SQLite components for Tandem: `state.sqlite`, the embedded durable default state store.
//!
//! - [`metadata`]: [`SqliteMetadata`], the typed settings decoded from a component's
//!   `spec.metadata` (Dapr's field names and defaults); its doc comments are the component's
//!   documentation.
//! - [`state`]: [`SqliteStateStore`], the `state.sqlite` (alias `state.sqlite3`) component:
//!   ETags, TTL and transactions on a database file, Dapr's table layout, blocking SQLite calls
//!   kept off the async workers.
//! - [`nameresolution`]: [`SqliteNameResolver`], `nameresolution.sqlite`: a shared database file
//!   as the registry of running sidecars (heartbeats, expiry, deregistration on shutdown).
//! - [`pubsub`]: [`SqlitePubSub`], `pubsub.sqlite`: durable pub/sub on a database file shared by
//!   every sidecar process of the machine (consumer groups, leases, redelivery, TTL), woken
//!   across processes by Unix datagram sockets rather than by polling. Its settings are
//!   [`SqlitePubSubMetadata`].
//!
//! The crate depends on `tandem-components` only; the binary's registry maps the component
//! type to [`SqliteStateStore::build`].

pub mod metadata;
pub mod nameresolution;
pub mod pubsub;
pub mod state;

pub use metadata::SqliteMetadata;
pub use nameresolution::SqliteNameResolver;
pub use pubsub::{SqlitePubSub, SqlitePubSubMetadata};
pub use state::SqliteStateStore;
