//! Connections to Redis: opened lazily, multiplexed, re-opened by themselves.
//!
//! - Node mode: one [`ConnectionManager`], created at build time *without* connecting
//!   (`new_lazy_with_config`). Every request is pipelined over its single multiplexed connection;
//!   handing it to a request is an `Arc` clone, with no lock. When the connection breaks, the
//!   manager opens a new one in the background; requests wait for that attempt (bounded by
//!   `dialTimeout`) instead of each dialling their own.
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
//! Retries ([`Client::run`]): a call that found a connection which had failed to open is
//! retried once at once (nothing was sent; the retry waits for the fresh attempt the failure
//! triggered, so the first call after Redis comes back succeeds). Reads are also retried up to
//! `redisMaxRetries` times when their connection broke mid-flight, with backoff between
//! `redisMinRetryInterval` and `redisMaxRetryInterval`. Writes are not re-sent after a broken
//! connection: they may have been applied.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use arc_swap::ArcSwap;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{
    ClientTlsConfig, Cmd, ConnectionAddr, ConnectionInfo, ErrorKind, IntoConnectionInfo, Pipeline,
    RedisConnectionInfo, RedisError, RedisFuture, RedisResult, TlsCertificates, Value,
};
use tandem_components::{Error, Result};
use tokio::sync::OnceCell;

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
    max_retries: u32,
    min_retry_interval: Option<Duration>,
    max_retry_interval: Option<Duration>,
}

enum Target {
    Node(Box<NodeTarget>),
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
    /// Cluster mode.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Node(c) => c.req_packed_command(cmd),
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
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Node(c) => c.get_db(),
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

    /// The connection to use now.
    async fn conn(&self) -> RedisResult<Conn> {
        match &self.target {
            Target::Node(node) => Ok(Conn::Node(ConnectionManager::clone(&node.manager.load()))),
            Target::Cluster(cluster) => {
                let ClusterTarget {
                    client,
                    conn,
                    open_timeout,
                } = &**cluster;
                let open = async {
                    match tokio::time::timeout(*open_timeout, client.get_async_connection()).await {
                        Ok(opened) => opened,
                        Err(_) => Err(RedisError::from(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "timed out connecting to the cluster",
                        ))),
                    }
                };
                conn.get_or_try_init(|| open)
                    .await
                    .cloned()
                    .map(Conn::Cluster)
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
            let outcome = match self.conn().await {
                Ok(conn) => op(conn).await,
                Err(e) => Err(e),
            };
            let err = match outcome {
                Ok(value) => return Ok(value),
                Err(err) => err,
            };
            if err.kind() == ErrorKind::AuthenticationFailed {
                self.after_failed_login();
            } else if err.is_connection_refusal() {
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

/// How to reach and log in to one node. No I/O.
fn connection_info(md: &RedisMetadata, hp: &crate::metadata::HostPort) -> Result<ConnectionInfo> {
    let addr = if md.enable_tls {
        ConnectionAddr::TcpTls {
            host: hp.host.clone(),
            port: hp.port,
            insecure: md.insecure_skip_tls_verify,
            tls_params: None,
        }
    } else {
        ConnectionAddr::Tcp(hp.host.clone(), hp.port)
    };
    let mut settings = RedisConnectionInfo::default().set_db(md.db);
    if let Some(user) = &md.username {
        settings = settings.set_username(user);
    }
    if let Some(password) = &md.password {
        settings = settings.set_password(password);
    }
    addr.into_connection_info()
        .map(|info| info.set_redis_settings(settings))
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
