//! SQLite components for Tandem: `state.sqlite`, the embedded durable default state store.
//!
//! - [`metadata`]: [`SqliteMetadata`], the typed settings decoded from a component's
//!   `spec.metadata` (Dapr's field names and defaults); its doc comments are the component's
//!   documentation.
//! - [`state`]: [`SqliteStateStore`], the `state.sqlite` (alias `state.sqlite3`) component:
//!   ETags, TTL and transactions on a database file, Dapr's table layout, blocking SQLite calls
//!   kept off the async workers.
//!
//! The crate depends on `tandem-components` only; the binary's registry maps the component
//! type to [`SqliteStateStore::build`].

pub mod metadata;
pub mod state;

pub use metadata::SqliteMetadata;
pub use state::SqliteStateStore;
