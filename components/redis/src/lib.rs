//! Redis components for Tandem: `state.redis`, `pubsub.redis` and `bindings.redis`,
//! compatible with Dapr's storage layout so that Go daprd and Tandem sidecars can share one
//! Redis.
//!
//! - [`metadata`]: [`RedisMetadata`], the typed settings decoded from a component's
//!   `spec.metadata` (Dapr's field names, defaults and duration syntax); its doc comments are
//!   the component's documentation.
//! - [`state`]: [`RedisStateStore`], the `state.redis` component: each key a hash with `data`
//!   and an integer `version` (the ETag), conditional writes, deletes and transactions in one
//!   Lua script ([`state::WRITE_SCRIPT`]), TTLs, pipelined bulk reads.
//! - [`pubsub`]: [`RedisPubSub`], the `pubsub.redis` component on Redis Streams (`XADD`,
//!   consumer groups, `XREADGROUP` on a dedicated connection, `XACK` on Ack, `XPENDING` /
//!   `XCLAIM` redelivery), with its settings [`RedisPubSubMetadata`]: the connection fields
//!   below plus `processingTimeout`, `redeliverInterval`, `queueDepth`, `concurrency`,
//!   `maxLenApprox`, `streamTTL`, `consumerID`.
//! - [`binding`]: [`RedisBinding`], the `bindings.redis` output binding (`create`, `get`,
//!   `delete`, `increment` on plain string keys), on the same connection settings.
//! - `client` (private): the connection — one multiplexed, self-reconnecting connection
//!   (`redis::aio::ConnectionManager`) opened lazily, one to the master the sentinels name, or
//!   a cluster connection — and the retry rules.
//! - `reads` (private): on a plain-TCP single node, state reads go out on a lean multiplexed
//!   connection of their own (commands encoded straight into its write buffer, replies read
//!   straight into items); anything unusual falls back to the shared connection.
//!
//! # What works
//!
//! The connection settings, shared by all three components (`ttlInSeconds`, `queryIndexes`,
//! `actorStateStore` and `keyPrefix` are the state store's only; the pub/sub fields are
//! documented on [`RedisPubSubMetadata`]):
//!
//! | Setting | Status |
//! |---|---|
//! | `redisType: node` (default), `redisHost`, `redisPort` | implemented |
//! | `redisUsername` / `redisPassword` (ACL or legacy `AUTH`), `redisDB` | implemented |
//! | `enableTLS`, `insecureSkipTLSVerify`, `clientCert` + `clientKey` (mutual TLS) | implemented with rustls (ring), system root certificates |
//! | `redisType: cluster` (comma-separated `redisHost`) | implemented with the `redis` crate's async cluster client; database 0 only; a transaction's keys must share a hash slot (use a `{hash tag}`) |
//! | `failover: true` + `sentinelMasterName` (Redis Sentinel), `sentinelUsername` / `sentinelPassword` | implemented: `redisHost` lists the sentinels; the master they name is looked up again whenever its connection breaks (failover) |
//! | `useEntraID` / `useAzureAD` | **rejected** at start-up: not supported in this build |
//! | `redisMaxRetries`, `redisMinRetryInterval`, `redisMaxRetryInterval` (and legacy `maxRetries`, `maxRetryBackoff`) | retries of reads on broken connections (see [`RedisMetadata::max_retries`]) |
//! | `dialTimeout`, `readTimeout` | connection and reply timeouts (`readTimeout` is also the `BLOCK` of a subscription's `XREADGROUP`) |
//! | `writeTimeout`, `poolSize`, `poolTimeout`, `minIdleConns`, `idleTimeout`, `maxConnAge`, `idleCheckFrequency` | accepted and validated, no effect (no pool: multiplexed connections) |
//! | `ttlInSeconds` | default TTL of every write |
//! | `queryIndexes` | accepted, ignored: no query API (Dapr's needs RediSearch) |
//! | `actorStateStore`, `keyPrefix` | read by the runtime |
//!
//! Building never waits for Redis: a store built while Redis is down answers calls with
//! [`tandem_components::Error::Backend`] within `dialTimeout` and recovers by itself when Redis
//! comes back (after a failed login too: a password or ACL user fixed on the server is picked
//! up by the next call). Errors never contain metadata values.
//!
//! The crate depends on `tandem-components` only; the binary's registry maps `state.redis` to
//! [`RedisStateStore::build`], `pubsub.redis` to [`RedisPubSub::build`] and `bindings.redis` to
//! [`RedisBinding::build`].

pub mod binding;
mod client;
pub mod metadata;
pub mod pubsub;
mod reads;
pub mod state;

pub use binding::RedisBinding;
pub use metadata::RedisMetadata;
pub use pubsub::{RedisPubSub, RedisPubSubMetadata};
pub use state::RedisStateStore;
