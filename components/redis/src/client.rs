//! Connections to Redis: opened lazily, multiplexed, re-opened by themselves.
//!
//! - Node mode: one [`ConnectionManager`], created at build time *without* connecting
//!   (`new_lazy_with_config`). Every request is pipelined over its single multiplexed connection;
//!   handing it to a request is an `Arc` clone, with no lock. When the connection breaks, the
//!   manager opens a new one in the background; requests wait for that attempt (bounded by
//!   `dialTimeout`) instead of each dialling their own.
//! - Sentinel mode (`failover: true`): one [`MultiplexedConnection`] to the master the
//!   sentinels name, kept in an [`ArcSwapOption`] (lock-free to read). It is opened on first
//!   use, and dropped when a call finds it broken (an I/O error or timeout, a failed login, or
//!   `READONLY` / `MASTERDOWN` from a master that was demoted): the next call asks the sentinels
//!   again, so the store follows a failover. One lookup runs at a time; calls that waited for
//!   it share its outcome instead of queueing lookups of their own.
//! - Cluster mode: a [`ClusterConnection`] (one multiplexed connection per node, slot map
//!   refreshed on `MOVED`), created on first use behind a [`OnceCell`]: while the cluster is
//!   unreachable each call tries again, once it succeeds the cell is set for good and reading
//!   it is lock-free.
//!
//! A failed login is the one failure the manager does not retry by itself; then the client
//! swaps in a fresh (lazy) manager, so a password or ACL fixed on the server is picked up by
//! the next call without a restart.
//!
//! Either way, building the component never waits for Redis, and a call made while Redis is
//! down fails within `dialTimeout` (a refused connection fails at once).
//!
//! Retries ([`Client::run`]): a call that found a connection which had failed to open (or, with
//! Sentinel, a master that answered `READONLY`) is retried once at once (nothing was applied;
//! the retry waits for the fresh attempt the failure triggered, so the first call after Redis
//! comes back succeeds). Reads are also retried up to
//! `redisMaxRetries` times when their connection broke mid-flight, with backoff between
//! `redisMinRetryInterval` and `redisMaxRetryInterval`. Writes are not re-sent after a broken
//! connection: they may have been applied.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    AsyncConnectionConfig, ClientTlsConfig, Cmd, ConnectionAddr, ConnectionInfo, ErrorKind,
    IntoConnectionInfo, Pipeline, RedisConnectionInfo, RedisError, RedisFuture, RedisResult,
    ServerErrorKind, TlsCertificates, TlsMode, Value,
};
use tandem_components::{Error, Result};
use tokio::sync::{Mutex, OnceCell};

use crate::metadata::{RedisMetadata, RedisType};

/// Whether an operation may be sent again after its connection broke mid-flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Idempotence {
    /// A read: safe to repeat.
    Read,
    /// A write: repeated only when it certainly was not sent.
    Write,
}

/// The connection(s) of one component.
pub(crate) struct Client {
    target: Target,
    dial_timeout: Duration,
    max_retries: u32,
    min_retry_interval: Option<Duration>,
    max_retry_interval: Option<Duration>,
}

enum Target {
    Node(Box<NodeTarget>),
    Sentinel(Box<SentinelTarget>),
    Cluster(Box<ClusterTarget>),
}

/// The node client and its connection manager.
struct NodeTarget {
    client: redis::Client,
    config: ConnectionManagerConfig,
    /// Replaced only after a failed login, which the manager never retries by itself (it
    /// reconnects on I/O errors only); read lock-free by every call.
    manager: ArcSwap<ConnectionManager>,
}

impl NodeTarget {
    fn manager(
        client: &redis::Client,
        config: &ConnectionManagerConfig,
    ) -> Result<ConnectionManager> {
        ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
            .map_err(|e| Error::backend(Failure::new("configuring the client", e)))
    }
}

/// The sentinels, and the connection to the master they named last.
struct SentinelTarget {
    /// Asks the sentinels (a lookup needs `&mut`); the lock also makes lookups single-flight.
    lookup: Mutex<Lookup>,
    /// The current master connection; `None` before the first lookup and after a failure.
    master: ArcSwapOption<Master>,
    /// Dial and reply timeouts of master connections.
    config: AsyncConnectionConfig,
    /// The client certificate for the master, re-applied to the address the sentinels name.
    certs: Option<TlsCertificates>,
    /// Bound on one lookup: asking the sentinels, checking the master's role, connecting.
    lookup_timeout: Duration,
    /// Counts finished lookups, so that a call that waited for the lock can tell whether a
    /// lookup ran meanwhile.
    finished: AtomicU64,
}

/// The lookup state, behind the lock.
struct Lookup {
    sentinel: SentinelClient,
    /// Why the last lookup failed (`None` after a success).
    last_failure: Option<String>,
}

/// One connection to the master, numbered so that a stale failure cannot drop a newer one.
struct Master {
    conn: MultiplexedConnection,
    generation: u64,
}

/// Source of [`Master::generation`] numbers.
static GENERATIONS: AtomicU64 = AtomicU64::new(1);

impl SentinelTarget {
    /// The master connection, after a lookup when there is none.
    async fn master(&self) -> RedisResult<(MultiplexedConnection, u64)> {
        if let Some(m) = self.master.load_full() {
            return Ok((m.conn.clone(), m.generation));
        }
        let seen = self.finished.load(Ordering::Acquire);
        let mut lookup = self.lookup.lock().await;
        if let Some(m) = self.master.load_full() {
            return Ok((m.conn.clone(), m.generation));
        }
        // Another call's lookup failed while this one waited: share its outcome rather than
        // queueing one more lookup behind it (each may take `lookup_timeout`).
        if let Some(why) = &lookup.last_failure
            && seen != self.finished.load(Ordering::Acquire)
        {
            return Err(lookup_failure(why.clone()));
        }
        let opened = self.open(&mut lookup.sentinel, &self.config).await;
        self.finished.fetch_add(1, Ordering::Release);
        match opened {
            Ok(conn) => {
                lookup.last_failure = None;
                let generation = GENERATIONS.fetch_add(1, Ordering::Relaxed);
                self.master.store(Some(Arc::new(Master {
                    conn: conn.clone(),
                    generation,
                })));
                Ok((conn, generation))
            }
            Err(err) => {
                lookup.last_failure = Some(err.to_string());
                Err(err)
            }
        }
    }

    /// Asks the sentinels for the master and connects to it with `config`.
    async fn open(
        &self,
        sentinel: &mut SentinelClient,
        config: &AsyncConnectionConfig,
    ) -> RedisResult<MultiplexedConnection> {
        let open = async {
            let named = sentinel.async_get_client().await?;
            let client = match &self.certs {
                // The lookup fills in TLS without the client certificate when verification is
                // off; put it back on the address it found.
                Some(certs) => redis::Client::build_with_tls(
                    named.get_connection_info().clone(),
                    certs.clone(),
                )?,
                None => named,
            };
            client
                .get_multiplexed_async_connection_with_config(config)
                .await
        };
        match tokio::time::timeout(self.lookup_timeout, open).await {
            Ok(opened) => opened,
            Err(_) => Err(timed_out(
                "timed out looking up the master through the sentinels",
            )),
        }
    }

    /// Drops the master connection `generation` (if it is still the current one), so that the
    /// next call looks the master up again.
    fn forget(&self, generation: u64) {
        self.master.rcu(|current| match current {
            Some(m) if m.generation == generation => None,
            other => other.clone(),
        });
    }
}

/// Whether `err` means that the master connection must be replaced: it broke or hangs, the
/// login failed, or the server is no longer (or not yet) a usable master.
fn master_gone(err: &RedisError) -> bool {
    err.is_io_error()
        || err.is_unrecoverable_error()
        || matches!(
            err.kind(),
            ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown)
        )
}

/// A master lookup that another call made and that failed.
fn lookup_failure(why: String) -> RedisError {
    RedisError::from((
        ErrorKind::Io,
        "master lookup through the sentinels failed",
        why,
    ))
}

fn timed_out(what: &'static str) -> RedisError {
    RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, what))
}

/// The cluster client and its connection, once opened.
struct ClusterTarget {
    client: ClusterClient,
    conn: OnceCell<ClusterConnection>,
    /// Bound on creating the cluster connection (discovering the slots included).
    open_timeout: Duration,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match &self.target {
            Target::Node(_) => "node",
            Target::Sentinel(_) => "sentinel",
            Target::Cluster(_) => "cluster",
        };
        f.debug_struct("Client")
            .field("mode", &mode)
            .field("max_retries", &self.max_retries)
            .finish_non_exhaustive()
    }
}

/// A connection handed to one operation: a cheap clone of the shared multiplexed one.
#[derive(Clone)]
pub(crate) enum Conn {
    /// Node mode.
    Node(ConnectionManager),
    /// Sentinel mode (the master), or a dedicated connection.
    Plain(MultiplexedConnection),
    /// Cluster mode.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Node(c) => c.req_packed_command(cmd),
            Conn::Plain(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Node(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Plain(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Node(c) => c.get_db(),
            Conn::Plain(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

impl Client {
    /// Prepares the connection(s) without opening any. Fails only on settings the Redis client
    /// rejects (for example a malformed client certificate).
    pub(crate) fn new(md: &RedisMetadata) -> Result<Self> {
        if md.enable_tls {
            // rustls needs a process-wide crypto provider; install ring unless the process
            // already chose one (then this is a no-op).
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let certs = client_certs(md);
        let target = match md.redis_type {
            RedisType::Node if md.failover => Target::Sentinel(Box::new(sentinel_target(md)?)),
            RedisType::Node => {
                let info = connection_info(md, &md.hosts[0])?;
                let client = match certs {
                    Some(certs) => redis::Client::build_with_tls(info, certs),
                    None => redis::Client::open(info),
                }
                .map_err(|e| tls_error(md, e))?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(md.dial_timeout))
                    .set_response_timeout(md.read_timeout)
                    // One attempt per reconnection: the next call triggers the next attempt,
                    // so no call waits through a series of backoffs while Redis is down.
                    .set_number_of_retries(0);
                let manager = NodeTarget::manager(&client, &config)?;
                Target::Node(Box::new(NodeTarget {
                    client,
                    config,
                    manager: ArcSwap::from_pointee(manager),
                }))
            }
            RedisType::Cluster => {
                let nodes = md
                    .hosts
                    .iter()
                    .map(|h| connection_info(md, h))
                    .collect::<Result<Vec<_>>>()?;
                let mut builder = ClusterClient::builder(nodes)
                    .connection_timeout(md.dial_timeout)
                    .retries(md.max_retries);
                if let Some(read) = md.read_timeout {
                    builder = builder.response_timeout(read);
                }
                if let Some(certs) = certs {
                    builder = builder.certs(certs);
                }
                let client = builder.build().map_err(|e| tls_error(md, e))?;
                Target::Cluster(Box::new(ClusterTarget {
                    client,
                    conn: OnceCell::new(),
                    open_timeout: md.dial_timeout + md.read_timeout.unwrap_or(md.dial_timeout),
                }))
            }
        };
        Ok(Self {
            target,
            dial_timeout: md.dial_timeout,
            max_retries: md.max_retries,
            min_retry_interval: md.min_retry_interval,
            max_retry_interval: md.max_retry_interval,
        })
    }

    /// Whether keys are spread over a cluster (so that one script or pipeline may only touch
    /// keys of one slot).
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self.target, Target::Cluster(_))
    }

    /// The connection to use now, and (in Sentinel mode) the generation of the master
    /// connection it is (`0` otherwise).
    async fn conn(&self) -> RedisResult<(Conn, u64)> {
        match &self.target {
            Target::Node(node) => Ok((
                Conn::Node(ConnectionManager::clone(&node.manager.load())),
                0,
            )),
            Target::Sentinel(sentinel) => sentinel
                .master()
                .await
                .map(|(conn, generation)| (Conn::Plain(conn), generation)),
            Target::Cluster(cluster) => {
                let ClusterTarget {
                    client,
                    conn,
                    open_timeout,
                } = &**cluster;
                let open = async {
                    match tokio::time::timeout(*open_timeout, client.get_async_connection()).await {
                        Ok(opened) => opened,
                        Err(_) => Err(timed_out("timed out connecting to the cluster")),
                    }
                };
                conn.get_or_try_init(|| open)
                    .await
                    .cloned()
                    .map(|c| (Conn::Cluster(c), 0))
            }
        }
    }

    /// Opens a connection of its own, shared with no other call, for blocking commands
    /// (`XREADGROUP ... BLOCK`) that would hold up every call pipelined behind them on the
    /// shared connection. Replies may take up to `response_timeout`. The caller drops it when
    /// it fails and opens another.
    pub(crate) async fn dedicated(&self, response_timeout: Duration) -> RedisResult<Conn> {
        match &self.target {
            Target::Node(node) => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(self.dial_timeout))
                    .set_response_timeout(Some(response_timeout));
                node.client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map(Conn::Plain)
            }
            Target::Sentinel(sentinel) => {
                let config = sentinel
                    .config
                    .clone()
                    .set_response_timeout(Some(response_timeout));
                let mut lookup = sentinel.lookup.lock().await;
                sentinel
                    .open(&mut lookup.sentinel, &config)
                    .await
                    .map(Conn::Plain)
            }
            Target::Cluster(cluster) => {
                let config = ClusterConfig::new()
                    .set_connection_timeout(self.dial_timeout)
                    .set_response_timeout(response_timeout);
                let open = cluster.client.get_async_connection_with_config(config);
                match tokio::time::timeout(cluster.open_timeout, open).await {
                    Ok(opened) => opened.map(Conn::Cluster),
                    Err(_) => Err(timed_out("timed out connecting to the cluster")),
                }
            }
        }
    }

    /// Runs `op` on a connection, with the retries described in the module docs. `what` names
    /// the operation in errors.
    pub(crate) async fn run<T, F, Fut>(
        &self,
        what: &'static str,
        idempotence: Idempotence,
        op: F,
    ) -> Result<T>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let mut refusal_retried = false;
        let mut retries = 0u32;
        loop {
            let (outcome, generation) = match self.conn().await {
                Ok((conn, generation)) => (op(conn).await, generation),
                Err(e) => (Err(e), 0),
            };
            let err = match outcome {
                Ok(value) => return Ok(value),
                Err(err) => err,
            };
            if let Target::Sentinel(sentinel) = &self.target
                && generation != 0
                && master_gone(&err)
            {
                sentinel.forget(generation);
            }
            // A demoted master refused the command: nothing was applied, and the connection
            // was just dropped, so the retry goes to the master the sentinels name now.
            let refused = err.is_connection_refusal()
                || (generation != 0 && err.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly));
            if err.kind() == ErrorKind::AuthenticationFailed {
                self.after_failed_login();
            } else if refused {
                if !refusal_retried {
                    refusal_retried = true;
                    continue;
                }
            } else if idempotence == Idempotence::Read
                && err.is_connection_dropped()
                && retries < self.max_retries
            {
                if let Some(pause) = self.backoff(retries) {
                    tokio::time::sleep(pause).await;
                }
                retries += 1;
                continue;
            }
            return Err(Error::backend(Failure::new(what, err)));
        }
    }

    /// A failed login (wrong password, or an ACL user not created yet) is not retried by the
    /// connection manager; start a fresh one so that the next call logs in again.
    fn after_failed_login(&self) {
        if let Target::Node(node) = &self.target
            && let Ok(fresh) = NodeTarget::manager(&node.client, &node.config)
        {
            node.manager.store(std::sync::Arc::new(fresh));
        }
    }

    /// The pause before retry number `n` (0-based): none for the first, then doubling from
    /// the minimum, capped at the maximum.
    fn backoff(&self, n: u32) -> Option<Duration> {
        if n == 0 {
            return None;
        }
        let min = self.min_retry_interval?;
        let pause = min.saturating_mul(1u32 << (n - 1).min(16));
        Some(match self.max_retry_interval {
            Some(max) if max >= min => pause.min(max),
            _ => pause,
        })
    }
}

/// How to reach one node (or sentinel): TCP, or TLS with `enableTLS`.
fn address(md: &RedisMetadata, hp: &crate::metadata::HostPort) -> ConnectionAddr {
    if md.enable_tls {
        ConnectionAddr::TcpTls {
            host: hp.host.clone(),
            port: hp.port,
            insecure: md.insecure_skip_tls_verify,
            tls_params: None,
        }
    } else {
        ConnectionAddr::Tcp(hp.host.clone(), hp.port)
    }
}

/// The sentinels (`redisHost`, with `sentinelUsername` / `sentinelPassword`) and how to log
/// in to the master they name (`redisUsername`, `redisPassword`, `redisDB`). `enableTLS`
/// applies to both, as in Dapr (go-redis uses one TLS configuration for sentinels and
/// master). No I/O.
fn sentinel_target(md: &RedisMetadata) -> Result<SentinelTarget> {
    let configuring = |e| Error::backend(Failure::new("configuring the sentinel client", e));
    let master_name = md.sentinel_master_name.as_deref().unwrap_or_default();
    let sentinels = md.hosts.iter().map(|h| address(md, h));
    let mut builder =
        SentinelClientBuilder::new(sentinels, master_name, SentinelServerType::Master)
            .map_err(configuring)?
            .set_client_to_redis_db(md.db);
    if let Some(user) = &md.username {
        builder = builder.set_client_to_redis_username(user);
    }
    if let Some(password) = &md.password {
        builder = builder.set_client_to_redis_password(password);
    }
    if let Some(user) = &md.sentinel_username {
        builder = builder.set_client_to_sentinel_username(user);
    }
    if let Some(password) = &md.sentinel_password {
        builder = builder.set_client_to_sentinel_password(password);
    }
    let certs = client_certs(md);
    if md.enable_tls {
        builder = builder.set_client_to_redis_tls_mode(if md.insecure_skip_tls_verify {
            TlsMode::Insecure
        } else {
            TlsMode::Secure
        });
        if let Some(certs) = &certs {
            builder = builder
                .set_client_to_redis_certificates(certs.clone())
                .set_client_to_sentinel_certificates(certs.clone());
        }
    }
    let sentinel = builder.build().map_err(|e| tls_error(md, e))?;
    Ok(SentinelTarget {
        lookup: Mutex::new(Lookup {
            sentinel,
            last_failure: None,
        }),
        master: ArcSwapOption::empty(),
        config: AsyncConnectionConfig::new()
            .set_connection_timeout(Some(md.dial_timeout))
            .set_response_timeout(md.read_timeout),
        certs,
        lookup_timeout: md.dial_timeout + md.read_timeout.unwrap_or(md.dial_timeout),
        finished: AtomicU64::new(0),
    })
}

/// How to reach and log in to one node. No I/O.
fn connection_info(md: &RedisMetadata, hp: &crate::metadata::HostPort) -> Result<ConnectionInfo> {
    let addr = address(md, hp);
    let mut settings = RedisConnectionInfo::default().set_db(md.db);
    if let Some(user) = &md.username {
        settings = settings.set_username(user);
    }
    if let Some(password) = &md.password {
        settings = settings.set_password(password);
    }
    // Commands from many requests share one connection: Nagle's algorithm would hold each
    // small write back until the previous one is acknowledged (Go's client, and so Dapr's,
    // turns it off too).
    let tcp = redis::io::tcp::TcpSettings::default().set_nodelay(true);
    addr.into_connection_info()
        .map(|info| info.set_redis_settings(settings).set_tcp_settings(tcp))
        .map_err(|e| Error::backend(Failure::new("configuring the client", e)))
}

/// The mutual-TLS client certificate, when TLS and both PEM fields are set.
fn client_certs(md: &RedisMetadata) -> Option<TlsCertificates> {
    match (md.enable_tls, &md.client_cert, &md.client_key) {
        (true, Some(cert), Some(key)) => Some(TlsCertificates {
            client_tls: Some(ClientTlsConfig {
                client_cert: cert.as_bytes().to_vec(),
                client_key: key.as_bytes().to_vec(),
            }),
            root_cert: None,
        }),
        _ => None,
    }
}

/// A client-construction failure: with a client certificate it is the PEM that is wrong, and
/// the redis crate's message may quote it, so only the field is named.
fn tls_error(md: &RedisMetadata, err: RedisError) -> Error {
    if md.client_cert.is_some() && md.enable_tls {
        Error::invalid_metadata(
            "clientCert",
            "clientCert and clientKey must be a PEM certificate (chain) and its PEM private key",
        )
    } else {
        Error::backend(Failure::new("configuring the client", err))
    }
}

/// A Redis error with the operation it interrupted. Its text never holds metadata values.
#[derive(Debug)]
pub(crate) struct Failure {
    what: &'static str,
    source: RedisError,
}

impl Failure {
    pub(crate) fn new(what: &'static str, source: RedisError) -> Self {
        Self { what, source }
    }

    /// The Redis error.
    pub(crate) fn redis(&self) -> &RedisError {
        &self.source
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "redis {} failed: {}", self.what, self.source)
    }
}

impl std::error::Error for Failure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_components::Metadata;

    fn client(extra: &[(&str, &str)]) -> Client {
        let mut m = Metadata::new("s", "a").with("redisHost", "127.0.0.1:1");
        for (k, v) in extra {
            m.insert(*k, *v);
        }
        Client::new(&RedisMetadata::from_metadata(&m).unwrap()).unwrap()
    }

    #[tokio::test]
    async fn backoff_doubles_from_the_minimum_up_to_the_maximum() {
        let c = client(&[
            ("redisMinRetryInterval", "100ms"),
            ("redisMaxRetryInterval", "350ms"),
        ]);
        let pauses: Vec<_> = (0..5).map(|n| c.backoff(n)).collect();
        let ms = Duration::from_millis;
        assert_eq!(
            pauses,
            [
                None,
                Some(ms(100)),
                Some(ms(200)),
                Some(ms(350)),
                Some(ms(350))
            ]
        );
        let none = client(&[("redisMinRetryInterval", "-1")]);
        assert_eq!(none.backoff(3), None);
    }

    #[tokio::test]
    async fn a_bad_client_certificate_names_the_field() {
        let m = Metadata::new("s", "a")
            .with("redisHost", "127.0.0.1:1")
            .with("enableTLS", "true")
            .with(
                "clientCert",
                "-----BEGIN CERTIFICATE-----\nnot base64 secret\n",
            )
            .with(
                "clientKey",
                "-----BEGIN PRIVATE KEY-----\nnot base64 secret\n",
            );
        let err = Client::new(&RedisMetadata::from_metadata(&m).unwrap()).unwrap_err();
        assert!(!err.to_string().contains("secret"), "{err}");
        assert!(
            matches!(&err, Error::InvalidMetadata { field, .. } if field == "clientCert"),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn nothing_listening_fails_fast_as_a_backend_error() {
        let c = client(&[]);
        let started = std::time::Instant::now();
        let res: Result<String> = c
            .run("ping", Idempotence::Read, |mut conn| async move {
                redis::cmd("PING").query_async(&mut conn).await
            })
            .await;
        assert!(matches!(res, Err(Error::Backend(_))), "{res:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
        let text = res.unwrap_err().to_string();
        assert!(text.starts_with("redis ping failed"), "{text}");
    }
}
