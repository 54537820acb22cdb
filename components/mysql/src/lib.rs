//! MySQL / MariaDB components for Tandem: `state.mysql` and `bindings.mysql`.
//!
//! - [`metadata`]: [`MySqlMetadata`], the typed settings decoded from a component's
//!   `spec.metadata` (Dapr's field names and defaults); its doc comments are the component's
//!   documentation.
//! - [`dsn`]: [`Dsn`], the `connectionString` parser: Go MySQL driver DSNs as Dapr users write
//!   them (`user:pass@tcp(host:3306)/?params`) and `mysql://` URLs.
//! - [`state`]: [`MySqlStateStore`], the `state.mysql` component: ETags, TTL and transactions
//!   on Dapr's table layout, over a pooled async client that connects lazily, so the sidecar
//!   starts while the database is down and recovers when it returns.
//! - [`binding`]: [`MySqlBinding`], the `bindings.mysql` output binding (`exec`, `query` with
//!   rows as JSON objects, `close`) and its settings [`binding::MySqlBindingMetadata`] (`url`,
//!   `pemPath`, pool sizes and lifetimes).
//! - `cells` (private): parameters and result values between JSON and MySQL, as Dapr's binding
//!   writes them.
//! - `conn` (private): the connection options both components build from a DSN.
//!
//! The crate depends on `tandem-components` only; the binary's registry maps `state.mysql` to
//! [`MySqlStateStore::build`] and `bindings.mysql` to [`MySqlBinding::build`].

pub mod binding;
mod cells;
mod conn;
pub mod dsn;
pub mod metadata;
pub mod state;

pub use binding::MySqlBinding;
pub use dsn::Dsn;
pub use metadata::MySqlMetadata;
pub use state::MySqlStateStore;
