//! The settings of `state.redis`, decoded from a component's `spec.metadata`.
//!
//! Field names, defaults and value syntax are Dapr's (components-contrib
//! `common/component/redis/settings.go` and `state/redis/metadata.yaml`), so an existing Dapr
//! component YAML works unchanged. Decoding does no I/O: a bad field is reported before any
//! connection is attempted, and errors name the field but never quote its value (values may be
//! passwords or keys).
//!
//! Durations use Dapr's Redis syntax: a bare integer is a number of **milliseconds** (`"5000"`),
//! anything else a Go duration (`"5s"`, `"1m30s"`, `"250ms"`); a negative value (`"-1"`)
//! disables the setting where Dapr allows that.

use std::fmt;
use std::time::Duration;

use tandem_components::metadata::parse_duration;
use tandem_components::{Error, Metadata, Result};

/// Redis' default port, used for hosts given without one.
pub const DEFAULT_PORT: u16 = 6379;
/// Dapr's default for `redisMaxRetries`.
pub const DEFAULT_MAX_RETRIES: u32 = 3;
/// Dapr's default for `redisMinRetryInterval` (the state store's legacy default).
pub const DEFAULT_MIN_RETRY_INTERVAL: Duration = Duration::from_secs(2);
/// Dapr's default for `redisMaxRetryInterval` in the state store.
pub const DEFAULT_MAX_RETRY_INTERVAL: Duration = Duration::from_secs(2);
/// Dapr's default for `dialTimeout`.
pub const DEFAULT_DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// Dapr's default for `readTimeout`.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(3);

/// The longest TTL accepted, in seconds: Redis stores expiries as milliseconds since the epoch,
/// so a larger one would be refused by the server inside the write script.
pub const MAX_TTL_SECONDS: i64 = i64::MAX / 1000 / 4;

/// How the component reaches Redis (`redisType`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RedisType {
    /// `node` (the default): one Redis server (or a proxy in front of several).
    #[default]
    Node,
    /// `cluster`: a Redis Cluster; `redisHost` lists one or more of its nodes.
    Cluster,
}

/// A `host:port` pair from `redisHost` (and `redisPort`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPort {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

/// The typed settings of a `state.redis` component.
///
/// Every field's doc comment is the user-facing documentation of the metadata field it is
/// decoded from. Keys are case-insensitive; empty values count as unset.
///
/// What is implemented: a single node (`redisType: node`) with `redisUsername` /
/// `redisPassword` (ACL or legacy `AUTH`), `redisDB`, TLS (`enableTLS`,
/// `insecureSkipTLSVerify`, `clientCert` + `clientKey`), Redis Sentinel (`failover: true`)
/// and Redis Cluster (`redisType: cluster`). Microsoft Entra ID (`useEntraID`) is rejected
/// with [`Error::InvalidMetadata`] naming the field. Connection-pool knobs are accepted and
/// have no effect: the store multiplexes every request over one connection per Redis node.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisMetadata {
    /// `redisHost` (required): the server as `host:port` (`localhost:6379`, `[::1]:6379`); a
    /// host without a port gets `redisPort`, else 6379. With `redisType: cluster` a
    /// comma-separated list of cluster nodes (`10.0.0.1:6379,10.0.0.2:6379`), any reachable
    /// one is enough to discover the others. With `failover: true` the sentinels, one or a
    /// comma-separated list (`s1:26379,s2:26379`). Otherwise a list is rejected.
    pub hosts: Vec<HostPort>,
    /// `redisType` (default `node`): `node` for one server, `cluster` for Redis Cluster.
    pub redis_type: RedisType,
    /// `redisUsername` (optional): the ACL user (Redis 6+). Without it, `redisPassword` is sent
    /// with the legacy single-argument `AUTH`. With Sentinel, the user on the master (the
    /// sentinels have their own, `sentinelUsername`).
    pub username: Option<String>,
    /// `redisPassword` (optional): the password, usually a `secretKeyRef`. With Sentinel, the
    /// master's password (the sentinels have their own, `sentinelPassword`).
    pub password: Option<String>,
    /// `redisDB` (default `0`): the database selected after connecting. Redis Cluster only has
    /// database 0, so any other value is rejected with `redisType: cluster`.
    pub db: i64,
    /// `enableTLS` (default `false`): connect with TLS (rustls, system root certificates).
    /// With Sentinel, to the sentinels and to the master alike (as Dapr does), and so do
    /// `insecureSkipTLSVerify` and the client certificate.
    pub enable_tls: bool,
    /// `insecureSkipTLSVerify` (default `false`): with `enableTLS`, accept any server
    /// certificate. For tests only: it allows man-in-the-middle attacks.
    pub insecure_skip_tls_verify: bool,
    /// `clientCert` (optional): a PEM client certificate (chain) for mutual TLS; needs
    /// `clientKey`. Used only with `enableTLS: true` (ignored otherwise, as in Dapr).
    pub client_cert: Option<String>,
    /// `clientKey` (optional): the PEM private key of `clientCert`.
    pub client_key: Option<String>,
    /// `failover` (default `false`): Redis Sentinel mode. `redisHost` lists the sentinels,
    /// which are asked for the address of the master named `sentinelMasterName`; every
    /// command goes to that master. When the connection to it breaks (or the server answers
    /// `READONLY` after being demoted), the sentinels are asked again, so the component
    /// follows a failover. Cannot be combined with `redisType: cluster`.
    pub failover: bool,
    /// `sentinelMasterName`: the master's name in Sentinel; required when `failover` is `true`.
    pub sentinel_master_name: Option<String>,
    /// `sentinelUsername` (optional): the ACL user for the sentinels (Sentinel mode only).
    pub sentinel_username: Option<String>,
    /// `sentinelPassword` (optional): the sentinels' password (Sentinel mode only).
    pub sentinel_password: Option<String>,
    /// `redisMaxRetries` (default `3`; `-1` disables; legacy alias `maxRetries`): how many
    /// times a read (`get`, bulk get, `ping`) is retried when its connection broke (for
    /// example after a Redis restart). Every operation is also retried once, at once, when the
    /// connection it found had failed to open (nothing was sent). Writes are never re-sent
    /// after a broken connection, since they may have been applied: the runtime's resiliency
    /// policy decides.
    pub max_retries: u32,
    /// `redisMinRetryInterval` (default `2s`; `-1` disables backoff; legacy `maxRetryBackoff`
    /// in nanoseconds): the pause before the second and later retries (the first retry is
    /// immediate, since it waits for the reconnection anyway), doubling each time.
    pub min_retry_interval: Option<Duration>,
    /// `redisMaxRetryInterval` (default `2s`; `-1` disables backoff): the longest pause
    /// between retries.
    pub max_retry_interval: Option<Duration>,
    /// `dialTimeout` (default `5s`; `0` means the default): how long opening a connection
    /// (TCP, TLS, `AUTH`, `SELECT`) may take. A call made while Redis is unreachable fails
    /// within this time.
    pub dial_timeout: Duration,
    /// `readTimeout` (default `3s`; `0` means the default, `-1` no timeout): how long a command
    /// may wait for its reply before it fails. `None` when disabled.
    pub read_timeout: Option<Duration>,
    /// `writeTimeout` (default: `readTimeout`): accepted for compatibility. Commands are
    /// written and answered on one multiplexed connection, so `readTimeout` bounds the whole
    /// exchange; this setting has no separate effect.
    pub write_timeout: Option<Duration>,
    /// `poolSize`: accepted, no effect (one multiplexed connection per node, no pool).
    pub pool_size: Option<u64>,
    /// `poolTimeout`: accepted, no effect (no pool to wait for).
    pub pool_timeout: Option<Duration>,
    /// `minIdleConns`: accepted, no effect (no pool).
    pub min_idle_conns: Option<u64>,
    /// `idleTimeout`: accepted, no effect (the connection is kept and re-opened when broken).
    pub idle_timeout: Option<Duration>,
    /// `maxConnAge`: accepted, no effect (connections are not retired by age).
    pub max_conn_age: Option<Duration>,
    /// `idleCheckFrequency`: accepted, no effect (no idle reaper).
    pub idle_check_frequency: Option<Duration>,
    /// `ttlInSeconds` (optional): the default time-to-live of every write that has no
    /// `ttlInSeconds` request metadata of its own. A positive value expires the key after that
    /// many seconds, `0` or a negative one removes any expiry (`PERSIST`). Unset: a write
    /// without a TTL leaves the key's current expiry as it is (Redis and Dapr behaviour).
    pub default_ttl: Option<i64>,
    /// `queryIndexes`: accepted and ignored. Dapr uses it to create RediSearch indexes for the
    /// query API; this store does not offer the query API (`QUERY_API`).
    pub query_indexes: Option<String>,
    /// `actorStateStore` (default `false`): read by the runtime (this store can back actors:
    /// it has ETags and transactions).
    pub actor_state_store: bool,
    /// `keyPrefix`: read by the runtime (`appid` by default: keys are stored as
    /// `<appid>||<key>`, as Dapr does).
    pub key_prefix: Option<String>,
}

impl fmt::Debug for RedisMetadata {
    /// Secrets (passwords, the client key) are never printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = |v: &Option<String>| if v.is_some() { "<set>" } else { "<unset>" };
        f.debug_struct("RedisMetadata")
            .field("hosts", &self.hosts)
            .field("redis_type", &self.redis_type)
            .field("username", &self.username)
            .field("password", &set(&self.password))
            .field("db", &self.db)
            .field("enable_tls", &self.enable_tls)
            .field("insecure_skip_tls_verify", &self.insecure_skip_tls_verify)
            .field("client_cert", &set(&self.client_cert))
            .field("client_key", &set(&self.client_key))
            .field("failover", &self.failover)
            .field("sentinel_master_name", &self.sentinel_master_name)
            .field("sentinel_username", &self.sentinel_username)
            .field("sentinel_password", &set(&self.sentinel_password))
            .field("max_retries", &self.max_retries)
            .field("dial_timeout", &self.dial_timeout)
            .field("read_timeout", &self.read_timeout)
            .field("default_ttl", &self.default_ttl)
            .finish_non_exhaustive()
    }
}

impl RedisMetadata {
    /// Decodes and validates the settings. Errors are [`Error::InvalidMetadata`] naming the
    /// field, never its value.
    pub fn from_metadata(md: &Metadata) -> Result<Self> {
        let redis_type = match md.get("redisType").map(|t| t.trim().to_ascii_lowercase()) {
            None => RedisType::Node,
            Some(t) if t == "node" => RedisType::Node,
            Some(t) if t == "cluster" => RedisType::Cluster,
            Some(_) => {
                return Err(Error::invalid_metadata(
                    "redisType",
                    "expected node or cluster",
                ));
            }
        };
        let port = match md.get("redisPort") {
            None => None,
            Some(raw) => Some(
                raw.trim()
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| {
                        Error::invalid_metadata("redisPort", "expected a port number (1-65535)")
                    })?,
            ),
        };
        let hosts = parse_hosts(md.required("redisHost")?, port)?;
        let failover = md.bool_or("failover", false)?;
        if hosts.len() > 1 && redis_type == RedisType::Node && !failover {
            return Err(Error::invalid_metadata(
                "redisHost",
                "a list of hosts needs redisType: cluster",
            ));
        }

        let db = md.i64_or("redisDB", 0)?;
        if db < 0 {
            return Err(Error::invalid_metadata(
                "redisDB",
                "expected a database number (0 or greater)",
            ));
        }
        if db != 0 && redis_type == RedisType::Cluster {
            return Err(Error::invalid_metadata(
                "redisDB",
                "Redis Cluster has only database 0",
            ));
        }

        let enable_tls = md.bool_or("enableTLS", false)?;
        let insecure_skip_tls_verify = md.bool_or("insecureSkipTLSVerify", false)?;
        let client_cert = owned(md, "clientCert");
        let client_key = owned(md, "clientKey");
        if enable_tls {
            match (&client_cert, &client_key) {
                (Some(_), None) => {
                    return Err(Error::invalid_metadata(
                        "clientKey",
                        "required when clientCert is set",
                    ));
                }
                (None, Some(_)) => {
                    return Err(Error::invalid_metadata(
                        "clientCert",
                        "required when clientKey is set",
                    ));
                }
                (Some(cert), Some(key)) => {
                    // The PEM texts themselves, as in Dapr (not file paths).
                    for (field, pem) in [("clientCert", cert), ("clientKey", key)] {
                        if !pem.contains("-----BEGIN ") {
                            return Err(Error::invalid_metadata(
                                field,
                                "expected PEM text (-----BEGIN ...)",
                            ));
                        }
                    }
                }
                (None, None) => {}
            }
        }

        let sentinel_master_name = owned(md, "sentinelMasterName");
        if failover {
            if sentinel_master_name.is_none() {
                return Err(Error::invalid_metadata(
                    "sentinelMasterName",
                    "required when failover is true",
                ));
            }
            if redis_type == RedisType::Cluster {
                return Err(Error::invalid_metadata(
                    "failover",
                    "cannot be combined with redisType: cluster",
                ));
            }
        }
        for auth in ["useEntraID", "useAzureAD"] {
            if md.bool_or(auth, false)? {
                return Err(Error::invalid_metadata(
                    auth,
                    "Microsoft Entra ID authentication is not supported in this build; use \
                     redisUsername and redisPassword",
                ));
            }
        }

        let max_retries = match md.get("redisMaxRetries").or_else(|| md.get("maxRetries")) {
            None => DEFAULT_MAX_RETRIES,
            Some(raw) => {
                let field = if md.get("redisMaxRetries").is_some() {
                    "redisMaxRetries"
                } else {
                    "maxRetries"
                };
                let n: i64 = raw.trim().parse().map_err(|_| {
                    Error::invalid_metadata(field, "expected an integer (-1 disables retries)")
                })?;
                u32::try_from(n.max(0)).unwrap_or(u32::MAX)
            }
        };
        let min_retry_interval = match redis_duration(md, "redisMinRetryInterval")? {
            Some(d) => d,
            None => match md.get("maxRetryBackoff") {
                // Dapr's legacy field: an integer number of nanoseconds.
                Some(raw) => {
                    let nanos: i64 = raw.trim().parse().map_err(|_| {
                        Error::invalid_metadata(
                            "maxRetryBackoff",
                            "expected an integer number of nanoseconds",
                        )
                    })?;
                    u64::try_from(nanos).ok().map(Duration::from_nanos)
                }
                None => Some(DEFAULT_MIN_RETRY_INTERVAL),
            },
        };
        let max_retry_interval = redis_duration(md, "redisMaxRetryInterval")?
            .unwrap_or(Some(DEFAULT_MAX_RETRY_INTERVAL));
        let dial_timeout = match redis_duration(md, "dialTimeout")? {
            Some(Some(d)) if !d.is_zero() => d,
            _ => DEFAULT_DIAL_TIMEOUT,
        };
        let read_timeout = match redis_duration(md, "readTimeout")? {
            None => Some(DEFAULT_READ_TIMEOUT),
            Some(Some(d)) if d.is_zero() => Some(DEFAULT_READ_TIMEOUT),
            Some(d) => d,
        };
        let write_timeout = redis_duration(md, "writeTimeout")?.unwrap_or(read_timeout);

        let default_ttl = match md.get("ttlInSeconds") {
            None => None,
            Some(raw) => Some(
                raw.trim()
                    .parse::<i64>()
                    .ok()
                    .filter(|secs| *secs <= MAX_TTL_SECONDS)
                    .ok_or_else(|| {
                        Error::invalid_metadata(
                            "ttlInSeconds",
                            "expected an integer number of seconds (at most about 73 million years)",
                        )
                    })?,
            ),
        };

        Ok(Self {
            hosts,
            redis_type,
            username: owned(md, "redisUsername"),
            password: owned(md, "redisPassword"),
            db,
            enable_tls,
            insecure_skip_tls_verify,
            client_cert,
            client_key,
            failover,
            sentinel_master_name,
            sentinel_username: owned(md, "sentinelUsername"),
            sentinel_password: owned(md, "sentinelPassword"),
            max_retries,
            min_retry_interval,
            max_retry_interval,
            dial_timeout,
            read_timeout,
            write_timeout,
            pool_size: count(md, "poolSize")?,
            pool_timeout: redis_duration(md, "poolTimeout")?.flatten(),
            min_idle_conns: count(md, "minIdleConns")?,
            idle_timeout: redis_duration(md, "idleTimeout")?.flatten(),
            max_conn_age: redis_duration(md, "maxConnAge")?.flatten(),
            idle_check_frequency: redis_duration(md, "idleCheckFrequency")?.flatten(),
            default_ttl,
            query_indexes: owned(md, "queryIndexes"),
            actor_state_store: md.bool_or("actorStateStore", false)?,
            key_prefix: owned(md, "keyPrefix"),
        })
    }
}

/// A present, non-empty field as an owned string.
fn owned(md: &Metadata, field: &str) -> Option<String> {
    md.get(field).map(str::to_owned)
}

/// A non-negative integer field (the pool knobs).
fn count(md: &Metadata, field: &str) -> Result<Option<u64>> {
    md.get(field)
        .map(|raw| {
            raw.trim()
                .parse()
                .map_err(|_| Error::invalid_metadata(field, "expected a non-negative integer"))
        })
        .transpose()
}

/// A duration in Dapr's Redis syntax: `None` when unset, `Some(None)` when negative
/// (disabled), `Some(Some(d))` otherwise. A bare integer is milliseconds.
pub(crate) fn redis_duration(md: &Metadata, field: &str) -> Result<Option<Option<Duration>>> {
    let Some(raw) = md.get(field) else {
        return Ok(None);
    };
    let raw = raw.trim();
    if let Ok(millis) = raw.parse::<i64>() {
        return Ok(Some(u64::try_from(millis).ok().map(Duration::from_millis)));
    }
    let (negative, magnitude) = match raw.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, raw),
    };
    let d = parse_duration(magnitude).map_err(|_| {
        Error::invalid_metadata(
            field,
            "expected a duration such as 5s, 250ms or 1m30s, or an integer number of milliseconds",
        )
    })?;
    Ok(Some((!negative).then_some(d)))
}

/// Splits `redisHost` into `host:port` pairs, filling in `redisPort` (else 6379).
fn parse_hosts(raw: &str, port: Option<u16>) -> Result<Vec<HostPort>> {
    const FIELD: &str = "redisHost";
    let mut hosts = Vec::new();
    for part in raw.split(',') {
        let part = part.trim();
        if part.is_empty() {
            return Err(Error::invalid_metadata(FIELD, "contains an empty host"));
        }
        let (host, given_port) = split_host_port(part)
            .ok_or_else(|| Error::invalid_metadata(FIELD, "expected host:port"))?;
        let port = match (given_port, port) {
            (Some(a), Some(b)) if a != b => {
                return Err(Error::invalid_metadata(
                    "redisPort",
                    "differs from the port given in redisHost; remove one of them",
                ));
            }
            (Some(p), _) | (None, Some(p)) => p,
            (None, None) => DEFAULT_PORT,
        };
        let host = host.trim();
        if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c == '/') {
            return Err(Error::invalid_metadata(FIELD, "expected host:port"));
        }
        hosts.push(HostPort {
            host: host.to_owned(),
            port,
        });
    }
    Ok(hosts)
}

/// `host:port`, `[v6]:port`, `host`, `[v6]` or a bare IPv6 address. `None` when malformed.
fn split_host_port(text: &str) -> Option<(&str, Option<u16>)> {
    let port = |p: &str| p.parse::<u16>().ok().filter(|p| *p != 0);
    if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after {
            "" => Some((host, None)),
            _ => Some((host, Some(port(after.strip_prefix(':')?)?))),
        };
    }
    match text.matches(':').count() {
        0 => Some((text, None)),
        1 => {
            let (host, p) = text.split_once(':')?;
            Some((host, Some(port(p)?)))
        }
        // An IPv6 address without brackets cannot carry a port.
        _ => Some((text, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Metadata {
        Metadata::new("statestore", "app").with("redisHost", "localhost:6379")
    }

    fn decode(md: &Metadata) -> Result<RedisMetadata> {
        RedisMetadata::from_metadata(md)
    }

    fn field_of(err: Error) -> String {
        match err {
            Error::InvalidMetadata { field, .. } => field,
            other => panic!("expected InvalidMetadata, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_daprs() {
        let md = decode(&meta()).expect("valid");
        assert_eq!(
            md.hosts,
            vec![HostPort {
                host: "localhost".into(),
                port: 6379
            }]
        );
        assert_eq!(md.redis_type, RedisType::Node);
        assert_eq!(md.db, 0);
        assert!(!md.enable_tls && !md.insecure_skip_tls_verify && !md.failover);
        assert_eq!(md.max_retries, 3);
        assert_eq!(md.min_retry_interval, Some(Duration::from_secs(2)));
        assert_eq!(md.max_retry_interval, Some(Duration::from_secs(2)));
        assert_eq!(md.dial_timeout, Duration::from_secs(5));
        assert_eq!(md.read_timeout, Some(Duration::from_secs(3)));
        assert_eq!(md.write_timeout, Some(Duration::from_secs(3)));
        assert_eq!(md.default_ttl, None);
        assert_eq!(md.username, None);
        assert_eq!(md.password, None);
    }

    #[test]
    fn every_field_is_read_case_insensitively() {
        let m = Metadata::new("s", "app")
            .with("REDISHOST", "redis.internal")
            .with("redisport", "6380")
            .with("RedisUsername", "svc")
            .with("redisPASSWORD", "pw")
            .with("redisdb", "4")
            .with("enabletls", "true")
            .with("InsecureSkipTlsVerify", "1")
            .with("clientcert", "-----BEGIN CERTIFICATE-----")
            .with("clientkey", "-----BEGIN PRIVATE KEY-----")
            .with("redismaxretries", "-1")
            .with("redisMinRetryInterval", "100")
            .with("redisMaxRetryInterval", "1s")
            .with("dialtimeout", "250ms")
            .with("readTimeout", "-1")
            .with("writeTimeout", "2s")
            .with("poolSize", "20")
            .with("poolTimeout", "4s")
            .with("minIdleConns", "2")
            .with("idleTimeout", "5m")
            .with("maxConnAge", "30m")
            .with("idleCheckFrequency", "-1")
            .with("ttlinseconds", "60")
            .with("queryIndexes", "[]")
            .with("actorStateStore", "true")
            .with("keyPrefix", "none");
        let md = decode(&m).expect("valid");
        assert_eq!(
            md.hosts,
            vec![HostPort {
                host: "redis.internal".into(),
                port: 6380
            }]
        );
        assert_eq!(md.username.as_deref(), Some("svc"));
        assert_eq!(md.password.as_deref(), Some("pw"));
        assert_eq!(md.db, 4);
        assert!(md.enable_tls && md.insecure_skip_tls_verify);
        assert!(md.client_cert.is_some() && md.client_key.is_some());
        assert_eq!(md.max_retries, 0);
        assert_eq!(md.min_retry_interval, Some(Duration::from_millis(100)));
        assert_eq!(md.max_retry_interval, Some(Duration::from_secs(1)));
        assert_eq!(md.dial_timeout, Duration::from_millis(250));
        assert_eq!(md.read_timeout, None);
        assert_eq!(md.write_timeout, Some(Duration::from_secs(2)));
        assert_eq!(md.pool_size, Some(20));
        assert_eq!(md.pool_timeout, Some(Duration::from_secs(4)));
        assert_eq!(md.min_idle_conns, Some(2));
        assert_eq!(md.idle_timeout, Some(Duration::from_secs(300)));
        assert_eq!(md.max_conn_age, Some(Duration::from_secs(1800)));
        assert_eq!(md.idle_check_frequency, None);
        assert_eq!(md.default_ttl, Some(60));
        assert!(md.actor_state_store);
        assert_eq!(md.key_prefix.as_deref(), Some("none"));
    }

    #[test]
    fn hosts_and_ports() {
        let hosts = |host: &str, port: Option<&str>| {
            let mut m = Metadata::new("s", "a").with("redisHost", host);
            if let Some(p) = port {
                m.insert("redisPort", p);
            }
            decode(&m).map(|md| {
                md.hosts
                    .into_iter()
                    .map(|h| format!("{}/{}", h.host, h.port))
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(hosts("redis", None).unwrap(), ["redis/6379"]);
        assert_eq!(hosts("redis", Some("7000")).unwrap(), ["redis/7000"]);
        assert_eq!(hosts("redis:7000", Some("7000")).unwrap(), ["redis/7000"]);
        assert_eq!(hosts("[::1]:6380", None).unwrap(), ["::1/6380"]);
        assert_eq!(hosts("[::1]", None).unwrap(), ["::1/6379"]);
        assert_eq!(hosts("::1", None).unwrap(), ["::1/6379"]);
        assert_eq!(
            field_of(hosts("redis:7000", Some("7001")).unwrap_err()),
            "redisPort"
        );
        for bad in ["redis:notaport", "redis:0", "[::1]x", "a b:1", ":6379"] {
            assert_eq!(
                field_of(hosts(bad, None).unwrap_err()),
                "redisHost",
                "{bad}"
            );
        }
        assert_eq!(
            field_of(hosts("redis", Some("x")).unwrap_err()),
            "redisPort"
        );
        // A list is for clusters only.
        assert_eq!(
            field_of(hosts("a:1,b:2", None).unwrap_err()),
            "redisHost",
            "node with a list"
        );
        let cluster = Metadata::new("s", "a")
            .with("redisHost", "a:7000, b:7001,c")
            .with("redisType", "Cluster");
        let md = decode(&cluster).expect("cluster list");
        assert_eq!(md.redis_type, RedisType::Cluster);
        assert_eq!(md.hosts.len(), 3);
        assert_eq!(md.hosts[2].port, 6379);
        let missing = Metadata::new("s", "a");
        assert_eq!(field_of(decode(&missing).unwrap_err()), "redisHost");
    }

    #[test]
    fn bad_values_name_the_field_without_echoing_it() {
        let cases = [
            ("redisType", "sentinel-ish"),
            ("redisDB", "one"),
            ("redisDB", "-2"),
            ("enableTLS", "sure"),
            ("insecureSkipTLSVerify", "perhaps"),
            ("failover", "maybe"),
            ("redisMaxRetries", "many"),
            ("redisMinRetryInterval", "soonish"),
            ("redisMaxRetryInterval", "5 parsecs"),
            ("dialTimeout", "quick"),
            ("readTimeout", "slow"),
            ("writeTimeout", "x1"),
            ("poolSize", "-3"),
            ("poolTimeout", "never"),
            ("minIdleConns", "few"),
            ("idleTimeout", "idly"),
            ("maxConnAge", "old"),
            ("idleCheckFrequency", "often"),
            ("ttlInSeconds", "forever"),
            ("actorStateStore", "yes-please"),
            ("maxRetryBackoff", "2s"),
        ];
        for (field, value) in cases {
            let err = decode(&meta().with(field, value)).unwrap_err();
            assert!(!err.to_string().contains(value), "{err}");
            assert_eq!(field_of(err), field, "{field}={value}");
        }
        let err = decode(&Metadata::new("s", "a").with("redisHost", "h:hunter2")).unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn durations_follow_daprs_redis_syntax() {
        let d = |v: &str| decode(&meta().with("dialTimeout", v)).unwrap().dial_timeout;
        assert_eq!(
            d("1500"),
            Duration::from_millis(1500),
            "integers are milliseconds"
        );
        assert_eq!(d("2s"), Duration::from_secs(2));
        assert_eq!(d("0"), DEFAULT_DIAL_TIMEOUT, "zero means the default");
        assert_eq!(d("-1"), DEFAULT_DIAL_TIMEOUT, "dial cannot be disabled");
        let r = |v: &str| decode(&meta().with("readTimeout", v)).unwrap().read_timeout;
        assert_eq!(r("-1"), None);
        assert_eq!(r("-1s"), None);
        assert_eq!(r("0"), Some(DEFAULT_READ_TIMEOUT));
        assert_eq!(r("750ms"), Some(Duration::from_millis(750)));
        let min = |m: Metadata| decode(&m).unwrap().min_retry_interval;
        assert_eq!(min(meta().with("redisMinRetryInterval", "-1")), None);
        assert_eq!(
            min(meta().with("maxRetryBackoff", "3000000000")),
            Some(Duration::from_secs(3)),
            "legacy nanoseconds"
        );
        assert_eq!(
            min(meta()
                .with("maxRetryBackoff", "3000000000")
                .with("redisMinRetryInterval", "8ms")),
            Some(Duration::from_millis(8)),
            "the new field wins"
        );
        let retries = |m: Metadata| decode(&m).unwrap().max_retries;
        assert_eq!(retries(meta().with("maxRetries", "5")), 5, "legacy alias");
        assert_eq!(
            retries(meta().with("maxRetries", "5").with("redisMaxRetries", "1")),
            1
        );
    }

    #[test]
    fn tls_settings() {
        let tls = meta().with("enableTLS", "true");
        let pem = |kind: &str| format!("-----BEGIN {kind}-----\nAAAA\n-----END {kind}-----\n");
        let md = decode(
            &tls.clone()
                .with("clientCert", pem("CERTIFICATE"))
                .with("clientKey", pem("PRIVATE KEY")),
        )
        .unwrap();
        assert!(md.enable_tls);
        let err = decode(
            &tls.clone()
                .with("clientCert", pem("CERTIFICATE"))
                .with("clientKey", "/etc/ssl/key-secret.pem"),
        )
        .unwrap_err();
        assert!(!err.to_string().contains("key-secret"), "{err}");
        assert_eq!(field_of(err), "clientKey");
        assert_eq!(
            field_of(decode(&tls.clone().with("clientCert", "C")).unwrap_err()),
            "clientKey"
        );
        assert_eq!(
            field_of(decode(&tls.with("clientKey", "K")).unwrap_err()),
            "clientCert"
        );
        // Without TLS a lone certificate is ignored, as in Dapr.
        assert!(decode(&meta().with("clientCert", "C")).is_ok());
    }

    #[test]
    fn cluster_settings() {
        let cluster = meta().with("redisType", "cluster");
        assert!(decode(&cluster).is_ok());
        assert_eq!(
            field_of(decode(&cluster.clone().with("redisDB", "2")).unwrap_err()),
            "redisDB"
        );
        assert!(decode(&cluster.with("redisDB", "0")).is_ok());
    }

    #[test]
    fn sentinel_settings() {
        let failover = meta().with("failover", "true");
        assert_eq!(
            field_of(decode(&failover).unwrap_err()),
            "sentinelMasterName"
        );
        let named = failover
            .with("sentinelMasterName", "mymaster")
            .with("redisHost", "s1:26379,s2")
            .with("sentinelUsername", "watcher")
            .with("sentinelPassword", "sentinel-secret");
        let md = decode(&named).expect("valid sentinel settings");
        assert!(md.failover);
        assert_eq!(md.sentinel_master_name.as_deref(), Some("mymaster"));
        assert_eq!(md.sentinel_username.as_deref(), Some("watcher"));
        assert_eq!(md.sentinel_password.as_deref(), Some("sentinel-secret"));
        assert_eq!(md.hosts.len(), 2, "a list of sentinels");
        assert!(!format!("{md:?}").contains("sentinel-secret"));
        let both = named.with("redisType", "cluster");
        assert_eq!(field_of(decode(&both).unwrap_err()), "failover");
    }

    #[test]
    fn entra_id_is_rejected() {
        let err = decode(&meta().with("useEntraID", "true")).unwrap_err();
        assert_eq!(field_of(err), "useEntraID");
        assert!(decode(&meta().with("useEntraID", "false")).is_ok());
    }

    #[test]
    fn debug_output_hides_secrets() {
        let md = decode(
            &meta()
                .with("redisPassword", "pw-secret")
                .with("enableTLS", "true")
                .with("clientCert", "-----BEGIN CERTIFICATE----- cert-body")
                .with("clientKey", "-----BEGIN PRIVATE KEY----- key-secret"),
        )
        .unwrap();
        let text = format!("{md:?}");
        assert!(
            !text.contains("pw-secret") && !text.contains("key-secret"),
            "{text}"
        );
        assert!(text.contains("<set>"));
    }
}
