//! The settings of `pubsub.kafka` and `bindings.kafka`, decoded from a component's
//! `spec.metadata`.
//!
//! Field names, defaults and value syntax are Dapr's (components-contrib
//! `common/component/kafka/metadata.go`), so an existing Dapr component YAML works unchanged.
//! Decoding does no I/O; errors name the field but never quote its value (values may be
//! passwords or keys). [`KafkaMetadata::client_config`] turns the settings into librdkafka
//! properties.

use std::fmt;
use std::time::Duration;

use rdkafka::ClientConfig;
use regex::Regex;
use tandem_components::metadata::parse_duration;
use tandem_components::{Error, Metadata, Result};

/// Dapr's default for `clientID`.
pub const DEFAULT_CLIENT_ID: &str = "sarama";
/// Dapr's default for `consumeRetryInterval`.
pub const DEFAULT_CONSUME_RETRY_INTERVAL: Duration = Duration::from_millis(100);
/// Dapr's default for `heartbeatInterval`.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(3);
/// Dapr's default for `sessionTimeout`.
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(10);
/// Dapr's default for `dialTimeout`, `readTimeout` and `writeTimeout`.
pub const DEFAULT_NET_TIMEOUT: Duration = Duration::from_secs(30);
/// Dapr's default for `clientConnectionTopicMetadataRefreshInterval`.
pub const DEFAULT_METADATA_REFRESH: Duration = Duration::from_secs(8 * 60);
/// Dapr's default for `channelBufferSize`.
pub const DEFAULT_CHANNEL_BUFFER_SIZE: usize = 256;
/// Dapr's default for `consumerFetchDefault`.
pub const DEFAULT_FETCH_DEFAULT: u32 = 1024 * 1024;
/// Dapr's default for `producerRetryMax`.
pub const DEFAULT_PRODUCER_RETRY_MAX: u32 = 5;
/// The largest message the producer sends when `maxMessageBytes` is not set: well above
/// Kafka's 1 MiB default, so that the broker's own limit is the one that applies.
pub const DEFAULT_MAX_MESSAGE_BYTES: u32 = 4 * 1024 * 1024;

/// Which component the metadata configures: the defaults of `consumeRetryEnabled` differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `pubsub.kafka`: `consumeRetryEnabled` defaults to `true`.
    PubSub,
    /// `bindings.kafka`: `consumeRetryEnabled` defaults to `false`.
    Binding,
}

/// Where a consumer group with no committed offset starts (`initialOffset`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum InitialOffset {
    /// `newest` (the default): only what is published after the group first joins.
    #[default]
    Newest,
    /// `oldest`: everything the topic still holds.
    Oldest,
}

/// What a subscription keeps in order (`deliveryOrder`, a Tandem setting).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeliveryOrder {
    /// `partition` (the default, daprd's behaviour): one message at a time per partition, in
    /// offset order; partitions are handled in parallel, up to the subscription's in-flight
    /// bound.
    #[default]
    Partition,
    /// `key`: messages with the same key are handled one at a time in offset order;
    /// messages with different keys, and messages without a key, in parallel up to the
    /// in-flight bound.
    Key,
}

/// The SASL mechanism of `authType: password` (`saslMechanism`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SaslMechanism {
    /// `PLAINTEXT` (Dapr's name; also `PLAIN`), the default: SASL/PLAIN.
    #[default]
    Plain,
    /// `SHA-256` (also `SCRAM-SHA-256`).
    ScramSha256,
    /// `SHA-512` (also `SCRAM-SHA-512`).
    ScramSha512,
}

impl SaslMechanism {
    /// The librdkafka name of the mechanism.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// How the client authenticates (`authType`).
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    /// `none`: no authentication, and no TLS (as daprd: `none` turns TLS off).
    None,
    /// `password`: SASL with `saslUsername` / `saslPassword`.
    Password {
        /// `saslUsername`.
        username: String,
        /// `saslPassword`.
        password: String,
        /// `saslMechanism`.
        mechanism: SaslMechanism,
    },
    /// `mtls`: TLS with the client certificate `clientCert` / `clientKey`.
    Mtls,
    /// `certificate`: TLS trusting `caCert`, with no client authentication.
    Certificate,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::Password { mechanism, .. } => write!(f, "Password({mechanism:?})"),
            Self::Mtls => f.write_str("Mtls"),
            Self::Certificate => f.write_str("Certificate"),
        }
    }
}

/// Producer compression (`compression`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Compression {
    /// `none` (the default).
    #[default]
    None,
    /// `gzip`.
    Gzip,
    /// `snappy`.
    Snappy,
    /// `lz4`.
    Lz4,
    /// `zstd`.
    Zstd,
}

impl Compression {
    /// The librdkafka name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Gzip => "gzip",
            Self::Snappy => "snappy",
            Self::Lz4 => "lz4",
            Self::Zstd => "zstd",
        }
    }
}

/// How many replicas acknowledge a publish (`producerRequiredAcks`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RequiredAcks {
    /// `all` (the default): every in-sync replica.
    #[default]
    All,
    /// `local`: the partition leader.
    Local,
    /// `none`: nobody; a publish succeeds once sent, and may be lost.
    None,
}

/// How a group's partitions are spread over its members (`consumerGroupRebalanceStrategy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RebalanceStrategy {
    /// `range` (the default).
    #[default]
    Range,
    /// `roundrobin`.
    RoundRobin,
    /// `sticky`: librdkafka's `cooperative-sticky`, which also moves only the partitions
    /// that change owner instead of revoking every partition at each rebalance.
    Sticky,
}

impl RebalanceStrategy {
    /// The librdkafka `partition.assignment.strategy`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Range => "range",
            Self::RoundRobin => "roundrobin",
            Self::Sticky => "cooperative-sticky",
        }
    }
}

/// The typed settings of a `pubsub.kafka` or `bindings.kafka` component.
///
/// Every field's doc comment is the user-facing documentation of the metadata field it is
/// decoded from. Keys are case-insensitive; empty values count as unset.
#[derive(Clone)]
pub struct KafkaMetadata {
    /// `brokers` (required): comma-separated `host:port` bootstrap addresses.
    pub brokers: Vec<String>,
    /// `consumerGroup` (optional): the consumer group of every subscription. For
    /// `pubsub.kafka` it overrides the group the runtime passes (the subscription's or
    /// component's `consumerID`, else the app-id), as in Dapr; for `bindings.kafka` it is the
    /// input's group (default: `consumerID`, else the app-id).
    pub consumer_group: Option<String>,
    /// `consumerID` (optional): the group of `bindings.kafka` inputs when `consumerGroup` is
    /// not set (the runtime passes it to `pubsub.kafka` by itself).
    pub consumer_id: Option<String>,
    /// `clientID` (default `sarama`, Dapr's): the client id sent with every request, for the
    /// broker's logs and quotas.
    pub client_id: String,
    /// `authType` (required): `none`, `password` (SASL with `saslUsername`, `saslPassword`,
    /// `saslMechanism` = `PLAINTEXT` | `SHA-256` | `SHA-512`), `mtls` (TLS client
    /// certificate `clientCert` + `clientKey`) or `certificate` (TLS trusting `caCert`).
    /// `oidc`, `oidc_private_key_jwt` and `awsiam` are refused: this build has no OAuth or
    /// AWS support. The deprecated `authRequired` is read as daprd reads it.
    pub auth: Auth,
    /// Whether connections use TLS: on unless `disableTls: true` or `authType: none`
    /// (daprd's rule). `skipVerify: true` accepts any broker certificate.
    pub tls: bool,
    /// `caCert` (optional, PEM): trusted in addition to the system roots.
    pub ca_cert: Option<String>,
    /// `clientCert` (optional, PEM): the client certificate for `mtls`; needs `clientKey`.
    pub client_cert: Option<String>,
    /// `clientKey` (optional, PEM): the private key of `clientCert`.
    pub client_key: Option<String>,
    /// `skipVerify` (default `false`): do not verify the broker's certificate or host name.
    pub skip_verify: bool,
    /// `initialOffset` (default `newest`): where a consumer group with no committed offset
    /// starts, `newest` or `oldest`.
    pub initial_offset: InitialOffset,
    /// `maxMessageBytes` (optional): the largest message the producer sends. Unset, Tandem
    /// allows 4 MiB and leaves the limit to the broker (daprd's client stops at 1,000,000
    /// bytes).
    pub max_message_bytes: u32,
    /// `consumeRetryEnabled` (default `true` for `pubsub.kafka`, `false` for
    /// `bindings.kafka`, as in Dapr): deliver a message the app failed again, after
    /// `consumeRetryInterval`. With `false` a failed message is logged and skipped (its
    /// offset is committed with the next ones): at-most-once for failures, but a poison
    /// message cannot hold back its partition.
    pub consume_retry_enabled: bool,
    /// `consumeRetryInterval` (default `100ms`; a bare number is milliseconds, as in Dapr):
    /// the pause before a failed message is delivered again. It doubles with every further
    /// failure of the same message, up to 5 s.
    pub consume_retry_interval: Duration,
    /// `heartbeatInterval` (default `3s`): how often group members tell the coordinator that
    /// they are alive.
    pub heartbeat_interval: Duration,
    /// `sessionTimeout` (default `10s`): a member silent this long is dropped from its group
    /// and its partitions go to others. Some brokers (tansu) also wait about half of it
    /// before the first members of a new group get their partitions.
    pub session_timeout: Duration,
    /// `version` (default `2.0.0.0`): accepted and checked, no effect: librdkafka asks the
    /// broker which protocol versions it speaks.
    pub version: Option<String>,
    /// `channelBufferSize` (default `256`): how many received messages of one partition may
    /// wait in the sidecar; the partition is paused beyond it.
    pub channel_buffer_size: usize,
    /// `consumerFetchMin` (default `1`): the least number of bytes a fetch waits for.
    pub consumer_fetch_min: u32,
    /// `consumerFetchDefault` (default `1048576`): bytes fetched per partition and request.
    pub consumer_fetch_default: u32,
    /// `consumerGroupRebalanceStrategy` (default `range`): `range`, `roundrobin` or `sticky`.
    pub rebalance_strategy: RebalanceStrategy,
    /// `compression` (default `none`): `none`, `gzip`, `snappy`, `lz4` or `zstd`.
    pub compression: Compression,
    /// `producerRequiredAcks` (default `all`): `all`, `local` or `none`.
    pub required_acks: RequiredAcks,
    /// `producerRetryMax` (default `5`): how often a failed produce request is retried.
    pub producer_retry_max: u32,
    /// `escapeHeaders` (default `false`): URL-escape the key and header values delivered as
    /// metadata, so that any bytes fit in HTTP headers.
    pub escape_headers: bool,
    /// `excludeHeaderMetaRegex` (optional): metadata keys matching it are not published as
    /// headers, and headers matching it are not delivered as metadata.
    pub exclude_header_meta: Option<Regex>,
    /// `dialTimeout` (default `30s`): how long opening a broker connection may take.
    pub dial_timeout: Duration,
    /// `readTimeout` (default `30s`): how long a broker request may take.
    pub read_timeout: Duration,
    /// `writeTimeout` (default `30s`): how long a publish may wait for the broker's
    /// acknowledgement, retries included; then it fails.
    pub write_timeout: Duration,
    /// `metadataTimeout` (default `0`, meaning 10 s here): how long a metadata request (the
    /// topic check at subscribe) may take.
    pub metadata_timeout: Duration,
    /// `clientConnectionTopicMetadataRefreshInterval` (default `8m`): how often topic
    /// metadata is refreshed.
    pub metadata_refresh_interval: Duration,
    /// `clientConnectionKeepAliveInterval` (default `0`, keep forever): idle connections are
    /// closed after this long.
    pub keep_alive: Duration,
    /// `deliveryOrder` (Tandem; default `partition`): `partition` keeps each partition in
    /// order (one message at a time per partition, as daprd); `key` only keeps messages of
    /// the same key in order and hands the rest to the app in parallel.
    pub delivery_order: DeliveryOrder,
    /// `publishTopic` (`bindings.kafka`): the topic the output binding's `create` writes to.
    pub publish_topic: Option<String>,
    /// `topics` (`bindings.kafka`, comma-separated): the topics the input binding reads.
    pub topics: Vec<String>,
}

impl fmt::Debug for KafkaMetadata {
    /// Secrets (the SASL password, the client key) are never printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaMetadata")
            .field("brokers", &self.brokers)
            .field("consumer_group", &self.consumer_group)
            .field("client_id", &self.client_id)
            .field("auth", &self.auth)
            .field("tls", &self.tls)
            .field("client_cert", &self.client_cert.is_some())
            .field("client_key", &self.client_key.is_some())
            .field("initial_offset", &self.initial_offset)
            .field("consume_retry_enabled", &self.consume_retry_enabled)
            .field("session_timeout", &self.session_timeout)
            .field("delivery_order", &self.delivery_order)
            .field("publish_topic", &self.publish_topic)
            .field("topics", &self.topics)
            .finish_non_exhaustive()
    }
}

impl KafkaMetadata {
    /// Decodes and validates the component's metadata.
    pub fn from_metadata(md: &Metadata, role: Role) -> Result<Self> {
        let brokers: Vec<String> = csv(md.required("brokers")?);
        if brokers.is_empty() {
            return Err(Error::invalid_metadata("brokers", "the field is required"));
        }
        if brokers.iter().any(|b| b.contains(['/', '@', ' '])) {
            return Err(Error::invalid_metadata(
                "brokers",
                "expected comma-separated host:port addresses",
            ));
        }
        let auth_type = auth_type(md)?;
        let pem = |field: &str| -> Result<Option<String>> {
            match owned(md, field) {
                Some(v) if !v.contains("-----BEGIN") => Err(Error::invalid_metadata(
                    field,
                    "expected a PEM block (-----BEGIN ...)",
                )),
                v => Ok(v),
            }
        };
        let ca_cert = pem("caCert")?;
        let client_cert = pem("clientCert")?;
        let client_key = pem("clientKey")?;
        let disable_tls = md.bool_or("disableTls", false)?;
        let auth = match auth_type.as_str() {
            "none" => Auth::None,
            "password" => Auth::Password {
                username: md.get("saslUsername").map(str::to_owned).ok_or_else(|| {
                    Error::invalid_metadata(
                        "saslUsername",
                        "the field is required with authType password",
                    )
                })?,
                password: md.get("saslPassword").map(str::to_owned).ok_or_else(|| {
                    Error::invalid_metadata(
                        "saslPassword",
                        "the field is required with authType password",
                    )
                })?,
                mechanism: sasl_mechanism(md)?,
            },
            "mtls" => {
                if disable_tls {
                    return Err(Error::invalid_metadata(
                        "disableTls",
                        "authType mtls needs TLS",
                    ));
                }
                if client_cert.is_some() != client_key.is_some() {
                    return Err(Error::invalid_metadata(
                        if client_cert.is_some() {
                            "clientKey"
                        } else {
                            "clientCert"
                        },
                        "clientCert and clientKey go together",
                    ));
                }
                Auth::Mtls
            }
            "certificate" => {
                if ca_cert.is_none() {
                    return Err(Error::invalid_metadata(
                        "caCert",
                        "the field is required with authType certificate",
                    ));
                }
                Auth::Certificate
            }
            "oidc" | "oidc_private_key_jwt" | "awsiam" => {
                return Err(Error::invalid_metadata(
                    "authType",
                    "oidc, oidc_private_key_jwt and awsiam are not supported by Tandem; use none, password, mtls or certificate",
                ));
            }
            _ => {
                return Err(Error::invalid_metadata(
                    "authType",
                    "expected none, password, mtls or certificate",
                ));
            }
        };
        let tls = !disable_tls && auth != Auth::None;

        let initial_offset = match md
            .get("initialOffset")
            .map(|v| v.trim().to_ascii_lowercase())
        {
            None => InitialOffset::Newest,
            Some(v) if v == "newest" => InitialOffset::Newest,
            Some(v) if v == "oldest" => InitialOffset::Oldest,
            Some(_) => {
                return Err(Error::invalid_metadata(
                    "initialOffset",
                    "expected newest or oldest",
                ));
            }
        };
        let max_message_bytes = match md.i64_or("maxMessageBytes", 0)? {
            n if n <= 0 => DEFAULT_MAX_MESSAGE_BYTES,
            n => u32::try_from(n)
                .ok()
                .filter(|n| *n >= 1000)
                .ok_or_else(|| {
                    Error::invalid_metadata("maxMessageBytes", "expected 1000 to 1000000000")
                })?
                .min(1_000_000_000),
        };
        let consume_retry_interval = match md.get("consumeRetryInterval").map(str::trim) {
            None => DEFAULT_CONSUME_RETRY_INTERVAL,
            // A bare number is milliseconds (Dapr's special case for this field).
            Some(v) if v.chars().all(|c| c.is_ascii_digit()) => Duration::from_millis(
                v.parse()
                    .map_err(|_| Error::invalid_metadata("consumeRetryInterval", "too large"))?,
            ),
            Some(v) => parse_duration(v).map_err(|_| {
                Error::invalid_metadata(
                    "consumeRetryInterval",
                    "expected a duration such as 100ms or a number of milliseconds",
                )
            })?,
        };
        let heartbeat_interval = md.duration_or("heartbeatInterval", DEFAULT_HEARTBEAT_INTERVAL)?;
        let session_timeout = md.duration_or("sessionTimeout", DEFAULT_SESSION_TIMEOUT)?;
        if session_timeout < Duration::from_millis(1) {
            return Err(Error::invalid_metadata(
                "sessionTimeout",
                "must be at least 1ms",
            ));
        }
        if heartbeat_interval.is_zero() || heartbeat_interval >= session_timeout {
            return Err(Error::invalid_metadata(
                "heartbeatInterval",
                "must be above 0 and below sessionTimeout",
            ));
        }
        let version = owned(md, "version");
        if let Some(v) = &version {
            let parts: Vec<&str> = v.split('.').collect();
            if !(3..=4).contains(&parts.len())
                || parts
                    .iter()
                    .any(|p| p.is_empty() || !p.chars().all(|c| c.is_ascii_digit()))
            {
                return Err(Error::invalid_metadata(
                    "version",
                    "expected a Kafka version such as 2.0.0 or 0.10.2.0",
                ));
            }
        }
        let channel_buffer_size = match md.i64_or("channelBufferSize", 0)? {
            n if n <= 0 => DEFAULT_CHANNEL_BUFFER_SIZE,
            n => usize::try_from(n).unwrap_or(DEFAULT_CHANNEL_BUFFER_SIZE),
        };
        let consumer_fetch_min = positive_u32(md, "consumerFetchMin", 1)?;
        let consumer_fetch_default =
            positive_u32(md, "consumerFetchDefault", DEFAULT_FETCH_DEFAULT)?;
        let rebalance_strategy = match md
            .get("consumerGroupRebalanceStrategy")
            .map(|v| v.trim().to_ascii_lowercase())
            .as_deref()
        {
            None | Some("range") => RebalanceStrategy::Range,
            Some("roundrobin") => RebalanceStrategy::RoundRobin,
            Some("sticky") => RebalanceStrategy::Sticky,
            Some(_) => {
                return Err(Error::invalid_metadata(
                    "consumerGroupRebalanceStrategy",
                    "expected range, roundrobin or sticky",
                ));
            }
        };
        let compression = match md
            .get("compression")
            .map(|v| v.trim().to_ascii_lowercase())
            .as_deref()
        {
            None | Some("none") => Compression::None,
            Some("gzip") => Compression::Gzip,
            Some("snappy") => Compression::Snappy,
            Some("lz4") => Compression::Lz4,
            Some("zstd") => Compression::Zstd,
            Some(_) => {
                return Err(Error::invalid_metadata(
                    "compression",
                    "expected none, gzip, snappy, lz4 or zstd",
                ));
            }
        };
        let required_acks = match md
            .get("producerRequiredAcks")
            .map(|v| v.trim().to_ascii_lowercase())
            .as_deref()
        {
            None | Some("all") => RequiredAcks::All,
            Some("local") => RequiredAcks::Local,
            Some("none") => RequiredAcks::None,
            Some(_) => {
                return Err(Error::invalid_metadata(
                    "producerRequiredAcks",
                    "expected all, local or none",
                ));
            }
        };
        let producer_retry_max =
            u32::try_from(md.i64_or("producerRetryMax", i64::from(DEFAULT_PRODUCER_RETRY_MAX))?)
                .map_err(|_| Error::invalid_metadata("producerRetryMax", "must not be negative"))?;
        let exclude_header_meta = match md.get("excludeHeaderMetaRegex") {
            None => None,
            Some(v) => Some(Regex::new(v).map_err(|_| {
                Error::invalid_metadata("excludeHeaderMetaRegex", "not a valid regular expression")
            })?),
        };
        let timeout = |field: &str, default: Duration| -> Result<Duration> {
            let d = md.duration_or(field, default)?;
            Ok(if d.is_zero() { default } else { d })
        };
        let delivery_order = match md
            .get("deliveryOrder")
            .map(|v| v.trim().to_ascii_lowercase())
            .as_deref()
        {
            None | Some("partition") => DeliveryOrder::Partition,
            Some("key") => DeliveryOrder::Key,
            Some(_) => {
                return Err(Error::invalid_metadata(
                    "deliveryOrder",
                    "expected partition or key",
                ));
            }
        };
        if md.get("schemaRegistryURL").is_some() {
            return Err(Error::invalid_metadata(
                "schemaRegistryURL",
                "schema registries (Avro) are not supported by Tandem",
            ));
        }
        let settings = Self {
            brokers,
            consumer_group: owned(md, "consumerGroup"),
            consumer_id: owned(md, "consumerID"),
            client_id: owned(md, "clientID").unwrap_or_else(|| DEFAULT_CLIENT_ID.to_owned()),
            auth,
            tls,
            ca_cert,
            client_cert,
            client_key,
            skip_verify: md.bool_or("skipVerify", false)?,
            initial_offset,
            max_message_bytes,
            consume_retry_enabled: md.bool_or("consumeRetryEnabled", role == Role::PubSub)?,
            consume_retry_interval,
            heartbeat_interval,
            session_timeout,
            version,
            channel_buffer_size,
            consumer_fetch_min,
            consumer_fetch_default,
            rebalance_strategy,
            compression,
            required_acks,
            producer_retry_max,
            escape_headers: md.bool_or("escapeHeaders", false)?,
            exclude_header_meta,
            dial_timeout: timeout("dialTimeout", DEFAULT_NET_TIMEOUT)?,
            read_timeout: timeout("readTimeout", DEFAULT_NET_TIMEOUT)?,
            write_timeout: timeout("writeTimeout", DEFAULT_NET_TIMEOUT)?,
            metadata_timeout: timeout("metadataTimeout", Duration::from_secs(10))?,
            metadata_refresh_interval: timeout(
                "clientConnectionTopicMetadataRefreshInterval",
                DEFAULT_METADATA_REFRESH,
            )?,
            keep_alive: md.duration_or("clientConnectionKeepAliveInterval", Duration::ZERO)?,
            delivery_order,
            publish_topic: owned(md, "publishTopic"),
            topics: md.get("topics").map(csv).unwrap_or_default(),
        };
        settings.warn_about_ignored(&md.name);
        Ok(settings)
    }

    /// The consumer group of a binding's input: `consumerGroup`, else `consumerID`, else
    /// the app-id.
    pub fn binding_group(&self, app_id: &str) -> String {
        self.consumer_group
            .clone()
            .or_else(|| self.consumer_id.clone())
            .unwrap_or_else(|| app_id.to_owned())
    }

    /// The librdkafka properties shared by producers and consumers: brokers, client id,
    /// security, timeouts.
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self.brokers.join(","))
            .set("client.id", &self.client_id)
            .set(
                "socket.connection.setup.timeout.ms",
                millis(self.dial_timeout),
            )
            .set(
                "socket.timeout.ms",
                millis(self.read_timeout.max(self.write_timeout)),
            )
            .set(
                "topic.metadata.refresh.interval.ms",
                millis(self.metadata_refresh_interval),
            )
            .set("connections.max.idle.ms", millis(self.keep_alive))
            // Connection refusals are reported through the error callback (throttled);
            // librdkafka's own log line for each closed connection is noise.
            .set("log.connection.close", "false");
        let sasl = matches!(self.auth, Auth::Password { .. });
        let protocol = match (sasl, self.tls) {
            (false, false) => "plaintext",
            (false, true) => "ssl",
            (true, false) => "sasl_plaintext",
            (true, true) => "sasl_ssl",
        };
        c.set("security.protocol", protocol);
        if let Auth::Password {
            username,
            password,
            mechanism,
        } = &self.auth
        {
            c.set("sasl.mechanism", mechanism.as_str())
                .set("sasl.username", username)
                .set("sasl.password", password);
        }
        if self.tls {
            match &self.ca_cert {
                Some(ca) => c.set("ssl.ca.pem", ca),
                None => c.set("ssl.ca.location", "probe"),
            };
            if let (Some(cert), Some(key)) = (&self.client_cert, &self.client_key) {
                c.set("ssl.certificate.pem", cert).set("ssl.key.pem", key);
            }
            if self.skip_verify {
                c.set("enable.ssl.certificate.verification", "false")
                    .set("ssl.endpoint.identification.algorithm", "none");
            }
        }
        c
    }

    /// The producer's properties.
    pub fn producer_config(&self) -> ClientConfig {
        let mut c = self.client_config();
        let acks = match self.required_acks {
            RequiredAcks::All => "all",
            RequiredAcks::Local => "1",
            RequiredAcks::None => "0",
        };
        c.set("acks", acks)
            .set(
                "message.send.max.retries",
                self.producer_retry_max.to_string(),
            )
            .set("message.timeout.ms", millis(self.write_timeout))
            .set("message.max.bytes", self.max_message_bytes.to_string())
            .set("compression.codec", self.compression.as_str())
            // Publish at once: a caller waits for each message (daprd's client does not
            // linger either); concurrent publishes still share requests.
            .set("linger.ms", "0")
            // Every message without a key goes through the partitioner (round robin).
            .set("sticky.partitioning.linger.ms", "0");
        c
    }

    /// The properties of a group consumer in `group`.
    pub fn consumer_config(&self, group: &str) -> ClientConfig {
        let mut c = self.client_config();
        let reset = match self.initial_offset {
            InitialOffset::Newest => "latest",
            InitialOffset::Oldest => "earliest",
        };
        // Offsets are stored only after the handler's verdict, and committed in the
        // background, at every revocation and when the subscription stops.
        c.set("group.id", group)
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set("auto.commit.interval.ms", "1000")
            .set("auto.offset.reset", reset)
            .set("session.timeout.ms", millis(self.session_timeout))
            .set("heartbeat.interval.ms", millis(self.heartbeat_interval))
            .set(
                "partition.assignment.strategy",
                self.rebalance_strategy.as_str(),
            )
            .set("allow.auto.create.topics", "true")
            .set("fetch.min.bytes", self.consumer_fetch_min.to_string())
            .set(
                "max.partition.fetch.bytes",
                self.consumer_fetch_default.to_string(),
            )
            .set("fetch.wait.max.ms", "100")
            .set("queued.max.messages.kbytes", "16384");
        c
    }

    /// Says once, at start-up, which settings given here have no effect.
    fn warn_about_ignored(&self, component: &str) {
        let tls_material =
            self.ca_cert.is_some() || self.client_cert.is_some() || self.client_key.is_some();
        if tls_material && !self.tls {
            tracing::warn!(
                component,
                "caCert, clientCert and clientKey have no effect without TLS (authType none or disableTls: true)"
            );
        }
        if self.client_cert.is_some() && self.auth != Auth::Mtls {
            tracing::warn!(
                component,
                "clientCert and clientKey are sent with authType mtls only"
            );
        }
        if self.skip_verify {
            tracing::warn!(
                component,
                "skipVerify: the brokers' certificates are not verified"
            );
        }
        if self.required_acks == RequiredAcks::None {
            tracing::warn!(
                component,
                "producerRequiredAcks: none: publishing does not wait for the broker, messages may be lost"
            );
        }
    }
}

/// Reads `authType`, upgrading the deprecated `authRequired` as daprd does.
fn auth_type(md: &Metadata) -> Result<String> {
    if let Some(t) = md.get("authType") {
        return Ok(t.trim().to_ascii_lowercase());
    }
    match md.get("authRequired") {
        Some(v) => match tandem_components::metadata::parse_bool(v) {
            Some(true) if md.get("saslPassword").is_some() => Ok("password".into()),
            Some(true) => Ok("mtls".into()),
            Some(false) => Ok("none".into()),
            None => Err(Error::invalid_metadata(
                "authRequired",
                "expected a boolean such as true or false",
            )),
        },
        None => Err(Error::invalid_metadata(
            "authType",
            "the field is required: none, password, mtls or certificate",
        )),
    }
}

fn sasl_mechanism(md: &Metadata) -> Result<SaslMechanism> {
    match md
        .get("saslMechanism")
        .map(|v| v.trim().to_ascii_uppercase())
        .as_deref()
    {
        None | Some("PLAINTEXT") | Some("PLAIN") => Ok(SaslMechanism::Plain),
        Some("SHA-256") | Some("SCRAM-SHA-256") => Ok(SaslMechanism::ScramSha256),
        Some("SHA-512") | Some("SCRAM-SHA-512") => Ok(SaslMechanism::ScramSha512),
        Some(_) => Err(Error::invalid_metadata(
            "saslMechanism",
            "expected PLAINTEXT, SHA-256 or SHA-512",
        )),
    }
}

fn owned(md: &Metadata, field: &str) -> Option<String> {
    md.get(field).map(|v| v.trim().to_owned())
}

fn csv(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn positive_u32(md: &Metadata, field: &str, default: u32) -> Result<u32> {
    match md.i64_or(field, 0)? {
        n if n <= 0 => Ok(default),
        n => u32::try_from(n).map_err(|_| Error::invalid_metadata(field, "too large")),
    }
}

fn millis(d: Duration) -> String {
    d.as_millis().min(i32::MAX as u128).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(pairs: &[(&str, &str)]) -> Metadata {
        let mut m = Metadata::new("kafka", "app");
        for (k, v) in pairs {
            m.insert(*k, *v);
        }
        m
    }

    fn decode(pairs: &[(&str, &str)]) -> Result<KafkaMetadata> {
        let mut all = vec![("brokers", "localhost:9092"), ("authType", "none")];
        all.extend_from_slice(pairs);
        KafkaMetadata::from_metadata(&md(&all), Role::PubSub)
    }

    fn field_of(err: Error) -> String {
        match err {
            Error::InvalidMetadata { field, .. } => field,
            other => panic!("expected InvalidMetadata, got {other:?}"),
        }
    }

    fn conf(c: &ClientConfig, key: &str) -> Option<String> {
        c.get(key).map(str::to_owned)
    }

    #[test]
    fn defaults_are_daprds() {
        let m = decode(&[]).unwrap();
        assert_eq!(m.brokers, ["localhost:9092"]);
        assert_eq!(m.client_id, "sarama");
        assert_eq!(m.auth, Auth::None);
        assert!(!m.tls);
        assert_eq!(m.initial_offset, InitialOffset::Newest);
        assert!(m.consume_retry_enabled);
        assert_eq!(m.consume_retry_interval, Duration::from_millis(100));
        assert_eq!(m.heartbeat_interval, Duration::from_secs(3));
        assert_eq!(m.session_timeout, Duration::from_secs(10));
        assert_eq!(m.channel_buffer_size, 256);
        assert_eq!(m.rebalance_strategy, RebalanceStrategy::Range);
        assert_eq!(m.required_acks, RequiredAcks::All);
        assert_eq!(m.producer_retry_max, 5);
        assert_eq!(m.delivery_order, DeliveryOrder::Partition);
        let binding = KafkaMetadata::from_metadata(
            &md(&[("brokers", "a:1,b:2"), ("authType", "none")]),
            Role::Binding,
        )
        .unwrap();
        assert!(!binding.consume_retry_enabled, "bindings default to false");
        assert_eq!(binding.brokers, ["a:1", "b:2"]);
        assert_eq!(binding.binding_group("app"), "app");
    }

    #[test]
    fn required_fields() {
        let err = KafkaMetadata::from_metadata(&md(&[("authType", "none")]), Role::PubSub);
        assert_eq!(field_of(err.unwrap_err()), "brokers");
        let err = KafkaMetadata::from_metadata(&md(&[("brokers", "h:1")]), Role::PubSub);
        assert_eq!(field_of(err.unwrap_err()), "authType");
    }

    #[test]
    fn auth_types() {
        let m = decode(&[
            ("authType", "password"),
            ("saslUsername", "u"),
            ("saslPassword", "p"),
            ("saslMechanism", "SHA-512"),
        ])
        .unwrap();
        assert!(m.tls, "password implies TLS unless disableTls");
        let c = m.client_config();
        assert_eq!(conf(&c, "security.protocol").unwrap(), "sasl_ssl");
        assert_eq!(conf(&c, "sasl.mechanism").unwrap(), "SCRAM-SHA-512");
        assert_eq!(conf(&c, "ssl.ca.location").unwrap(), "probe");

        let m = decode(&[
            ("authType", "password"),
            ("saslUsername", "u"),
            ("saslPassword", "p"),
            ("disableTls", "true"),
        ])
        .unwrap();
        let c = m.client_config();
        assert_eq!(conf(&c, "security.protocol").unwrap(), "sasl_plaintext");
        assert_eq!(conf(&c, "sasl.mechanism").unwrap(), "PLAIN");

        let pem = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let m = decode(&[
            ("authType", "mtls"),
            ("caCert", pem),
            ("clientCert", pem),
            ("clientKey", pem),
            ("skipVerify", "true"),
        ])
        .unwrap();
        let c = m.client_config();
        assert_eq!(conf(&c, "security.protocol").unwrap(), "ssl");
        assert!(conf(&c, "ssl.ca.pem").is_some());
        assert!(conf(&c, "ssl.key.pem").is_some());
        assert_eq!(
            conf(&c, "enable.ssl.certificate.verification").unwrap(),
            "false"
        );

        assert_eq!(
            field_of(decode(&[("authType", "password"), ("saslUsername", "u")]).unwrap_err()),
            "saslPassword"
        );
        assert_eq!(
            field_of(decode(&[("authType", "mtls"), ("clientCert", pem)]).unwrap_err()),
            "clientKey"
        );
        assert_eq!(
            field_of(decode(&[("authType", "mtls"), ("disableTls", "true")]).unwrap_err()),
            "disableTls"
        );
        assert_eq!(
            field_of(decode(&[("authType", "certificate")]).unwrap_err()),
            "caCert"
        );
        for refused in ["oidc", "oidc_private_key_jwt", "awsiam", "kerberos"] {
            assert_eq!(
                field_of(decode(&[("authType", refused)]).unwrap_err()),
                "authType"
            );
        }
    }

    #[test]
    fn deprecated_auth_required() {
        let m = KafkaMetadata::from_metadata(
            &md(&[
                ("brokers", "h:1"),
                ("authRequired", "true"),
                ("saslUsername", "u"),
                ("saslPassword", "p"),
            ]),
            Role::PubSub,
        )
        .unwrap();
        assert!(matches!(m.auth, Auth::Password { .. }));
        let m = KafkaMetadata::from_metadata(
            &md(&[("brokers", "h:1"), ("authRequired", "false")]),
            Role::PubSub,
        )
        .unwrap();
        assert_eq!(m.auth, Auth::None);
    }

    #[test]
    fn values_and_aliases() {
        let m = decode(&[
            ("initialOffset", "Oldest"),
            ("consumeRetryInterval", "250"),
            ("heartbeatInterval", "500ms"),
            ("sessionTimeout", "2s"),
            ("consumerGroupRebalanceStrategy", "sticky"),
            ("compression", "zstd"),
            ("producerRequiredAcks", "local"),
            ("maxMessageBytes", "2048"),
            ("deliveryOrder", "key"),
            ("version", "0.10.2.0"),
            ("excludeHeaderMetaRegex", "^rawPayload|valueSchemaType$"),
            ("consumerGroup", "g1"),
        ])
        .unwrap();
        assert_eq!(m.initial_offset, InitialOffset::Oldest);
        assert_eq!(m.consume_retry_interval, Duration::from_millis(250));
        assert_eq!(m.session_timeout, Duration::from_secs(2));
        assert_eq!(m.rebalance_strategy, RebalanceStrategy::Sticky);
        assert_eq!(m.max_message_bytes, 2048);
        assert_eq!(m.delivery_order, DeliveryOrder::Key);
        assert!(
            m.exclude_header_meta
                .as_ref()
                .unwrap()
                .is_match("rawPayload")
        );
        assert_eq!(m.binding_group("app"), "g1");
        let p = m.producer_config();
        assert_eq!(conf(&p, "acks").unwrap(), "1");
        assert_eq!(conf(&p, "compression.codec").unwrap(), "zstd");
        let c = m.consumer_config("g1");
        assert_eq!(conf(&c, "group.id").unwrap(), "g1");
        assert_eq!(conf(&c, "session.timeout.ms").unwrap(), "2000");
        assert_eq!(conf(&c, "heartbeat.interval.ms").unwrap(), "500");
        assert_eq!(
            conf(&c, "partition.assignment.strategy").unwrap(),
            "cooperative-sticky"
        );
        assert_eq!(conf(&c, "auto.offset.reset").unwrap(), "earliest");
        assert_eq!(
            decode(&[("consumeRetryInterval", "1s")])
                .unwrap()
                .consume_retry_interval,
            Duration::from_secs(1)
        );
    }

    #[test]
    fn validation_names_the_field() {
        for (field, value) in [
            ("initialOffset", "latest"),
            ("consumeRetryInterval", "soon"),
            ("sessionTimeout", "forever"),
            ("consumerGroupRebalanceStrategy", "random"),
            ("compression", "brotli"),
            ("producerRequiredAcks", "most"),
            ("producerRetryMax", "-1"),
            ("version", "two"),
            ("excludeHeaderMetaRegex", "("),
            ("deliveryOrder", "none"),
            ("caCert", "not pem"),
            ("saslMechanism", "GSSAPI"),
            ("schemaRegistryURL", "http://registry"),
            ("maxMessageBytes", "10"),
        ] {
            let mut pairs = vec![(field, value)];
            if field == "saslMechanism" {
                pairs.extend([
                    ("authType", "password"),
                    ("saslUsername", "u"),
                    ("saslPassword", "p"),
                ]);
            }
            assert_eq!(field_of(decode(&pairs).unwrap_err()), field, "{field}");
        }
        assert_eq!(
            field_of(decode(&[("heartbeatInterval", "20s")]).unwrap_err()),
            "heartbeatInterval"
        );
    }

    #[test]
    fn debug_hides_secrets() {
        let m = decode(&[
            ("authType", "password"),
            ("saslUsername", "u"),
            ("saslPassword", "topsecret"),
        ])
        .unwrap();
        assert!(!format!("{m:?}").contains("topsecret"));
    }
}
