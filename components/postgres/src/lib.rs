//! PostgreSQL components for Tandem: `state.postgresql` (alias `state.postgres`) in Dapr's two
//! table layouts, and the `bindings.postgresql` output binding (alias `bindings.postgres`).
//!
//! - [`metadata`]: [`PostgresMetadata`], the typed settings decoded from a component's
//!   `spec.metadata` (Dapr's field names and defaults); its doc comments are the component's
//!   documentation.
//! - [`state`]: [`PostgresStateStore`], `version: v1` (the default): JSONB values, `xmin`
//!   ETags, TTL, transactions and the query API.
//! - [`state_v2`]: [`PostgresStateStoreV2`], `version: v2`: BYTEA values, UUID ETags, TTL and
//!   transactions.
//! - [`query`]: how the query API is translated into SQL over JSONB (bound parameters only) and
//!   the semantics of its filters, sorting and paging.
//! - [`binding`]: [`PostgresBinding`], `bindings.postgresql`: the app's SQL with `exec`,
//!   `query` (rows as JSON arrays) and `close`, on the state store's connection settings.
//! - `cells` (private): parameters sent as text, result cells written as Dapr's JSON.
//! - `db` (private): the lazily connecting pool, prepared-statement caching, time limits and
//!   the background cleanup shared by both layouts.
//! - `migrations` (private): Dapr's table creation and migrations, serialised with Dapr's own
//!   lock row, so Tandem and daprd can share a database.
//! - `conninfo` (private): libpq/pgx connection strings (keyword/value and URL forms).
//!
//! Building a store does no I/O: it succeeds while the database is down, calls then fail
//! promptly with a backend error, and the store recovers by itself when the database returns.
//! The crate depends on `tandem-components` only; the binary's registry maps the component
//! type and version to [`PostgresStateStore::build`] or [`PostgresStateStoreV2::build`], and
//! `bindings.postgresql` to [`PostgresBinding::build`].

pub mod binding;
mod cells;
mod conninfo;
mod db;
pub mod metadata;
mod migrations;
pub mod query;
pub mod state;
pub mod state_v2;

pub use binding::PostgresBinding;
pub use metadata::PostgresMetadata;
pub use state::PostgresStateStore;
pub use state_v2::PostgresStateStoreV2;
