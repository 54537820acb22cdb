//! The settings of `pubsub.rabbitmq`, decoded from a component's `spec.metadata`.
//!
//! Field names, defaults and value syntax are Dapr's (components-contrib
//! `pubsub/rabbitmq/metadata.go`), so an existing Dapr component YAML works unchanged and a
//! Tandem sidecar declares exchanges and queues exactly as daprd does: both can share one
//! broker. Decoding does no I/O; errors name the field but never quote its value (values may
//! be passwords or keys).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::uri::{AMQPScheme, AMQPUri, SASLMechanism};
use tandem_components::metadata::parse_duration;
use tandem_components::{Error, Metadata, Result};

use crate::link::LinkSettings;

/// Dapr's default for `reconnectWaitSeconds`.
pub const DEFAULT_RECONNECT_WAIT: Duration = Duration::from_secs(3);
/// Dapr's default for `heartBeat`.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(10);
/// How long opening a connection (TCP, TLS, AMQP handshake) may take, unless the
/// `connectionString` sets `connection_timeout` (milliseconds).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The kind of the exchange declared for each topic (`exchangeKind`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ExchangeKind {
    /// `fanout` (the default): every bound queue gets every message; routing keys are ignored.
    #[default]
    Fanout,
    /// `topic`: queues bound with patterns (`orders.*`, `#`) on the message's routing key.
    Topic,
    /// `direct`: queues bound with the exact routing key.
    Direct,
    /// `headers`: routing on message headers (Tandem publishes none, as Dapr).
    Headers,
}

impl ExchangeKind {
    /// The AMQP name of the kind.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fanout => "fanout",
            Self::Topic => "topic",
            Self::Direct => "direct",
            Self::Headers => "headers",
        }
    }

    pub(crate) fn lapin(self) -> lapin::ExchangeKind {
        match self {
            Self::Fanout => lapin::ExchangeKind::Fanout,
            Self::Topic => lapin::ExchangeKind::Topic,
            Self::Direct => lapin::ExchangeKind::Direct,
            Self::Headers => lapin::ExchangeKind::Headers,
        }
    }
}

/// How messages of one subscription are handed to the app (`concurrencyMode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConcurrencyMode {
    /// `parallel` (the default): up to the subscription's in-flight bound at once.
    #[default]
    Parallel,
    /// `single`: one message at a time, in queue order.
    Single,
}

/// The typed settings of a `pubsub.rabbitmq` component.
///
/// Every field's doc comment is the user-facing documentation of the metadata field it is
/// decoded from. Keys are case-insensitive; empty values count as unset.
#[derive(Clone)]
pub struct RabbitMetadata {
    /// `connectionString` (deprecated alias `host`): the broker as an AMQP URI,
    /// `amqp://user:password@host:5672/vhost` or `amqps://…` for TLS. Query parameters
    /// `heartbeat`, `connection_timeout` (ms), `frame_max`, `channel_max` and `auth_mechanism`
    /// are understood. Without it the URI is built from `protocol`, `hostname`, `username`
    /// and `password`. Host names only: IPv6 literals (`[::1]`) are not supported.
    pub uri: AMQPUri,
    /// `protocol` (`amqp` or `amqps`): used with `hostname`; with `connectionString` it must
    /// match the URI's scheme.
    pub protocol: Option<String>,
    /// `hostname` (default `localhost`): the broker host, optionally with `:port`, when no
    /// `connectionString` is given.
    pub hostname: Option<String>,
    /// `username` (default `guest`): with `hostname`.
    pub username: Option<String>,
    /// `password` (default `guest`): with `hostname`; usually a `secretKeyRef`.
    pub password: Option<String>,
    /// `consumerID` (default: the app-id): names the queue of each subscription,
    /// `<consumerID>-<topic>`. The runtime passes it with every subscription (a subscription's
    /// own `consumerID` metadata wins), so every sidecar of one app shares one queue per topic
    /// (competing consumers) and each app gets every message (fan-out).
    pub consumer_id: Option<String>,
    /// `durable` (default `true`, as daprd's code; Dapr's documentation says `false`): declare
    /// topic exchanges and subscription queues durable, so they survive a broker restart.
    /// Matching daprd matters when both share a broker: RabbitMQ refuses to redeclare a queue
    /// with other flags.
    pub durable: bool,
    /// `deletedWhenUnused` (default `true`): declare exchanges and queues auto-delete. A queue
    /// then disappears with its last consumer, and with it the messages published meanwhile;
    /// set `false` to keep a group's messages while none of its members runs.
    pub deleted_when_unused: bool,
    /// `autoAck` (default `false`): let the broker consider a message handled as soon as it
    /// is sent. Delivery becomes at-most-once: a message the app answers with RETRY, or that
    /// is in flight when the sidecar dies, is lost.
    pub auto_ack: bool,
    /// `requeueInFailure` (default `false`): accepted, **no effect**. Dapr drops (or
    /// dead-letters) a message the app failed unless this is `true`; Tandem's runtime retries
    /// first, sends it to the subscription's `deadLetterTopic` when one is set, and otherwise
    /// wants it delivered again later, so a RETRY always requeues the message.
    pub requeue_in_failure: bool,
    /// `deliveryMode` (default `0`): AMQP delivery mode of published messages; `2` makes them
    /// persistent (written to disk in durable queues), `0`/`1` transient.
    pub delivery_mode: u8,
    /// `prefetchCount` (default `0`): how many unacknowledged messages the broker may push to
    /// one subscription. `0` means the subscription's in-flight bound (the app's concurrency),
    /// which keeps competing consumers fair and per-message TTLs exact. A larger value buffers
    /// messages in the sidecar: those may then be delivered after their TTL ran out.
    pub prefetch_count: u16,
    /// `reconnectWaitSeconds` (alias `reconnectWait`, default `3s`): the pause before
    /// reconnecting after the connection broke or a connection attempt failed. It doubles
    /// after each failed attempt, up to 30 s (or this value, if larger).
    pub reconnect_wait: Duration,
    /// `enableDeadLetter` (default `false`): give each subscription queue a dead-letter
    /// exchange `dlx-<queue>` (durable, fanout) bound to a durable, lazy queue `dlq-<queue>`.
    /// The broker moves there what expires (TTL) or overflows `maxLen` / `maxLenBytes`. A
    /// message the app keeps failing is not dead-lettered by the broker (it is requeued, see
    /// `requeueInFailure`); set the subscription's `deadLetterTopic` for that.
    pub enable_dead_letter: bool,
    /// `maxLen` (optional): `x-max-length` of subscription queues (and of their dead-letter
    /// queue): the oldest messages are dropped (or dead-lettered) beyond it.
    pub max_len: Option<i64>,
    /// `maxLenBytes` (optional): `x-max-length-bytes`, the same limit in bytes.
    pub max_len_bytes: Option<i64>,
    /// `exchangeKind` (default `fanout`): `fanout`, `topic`, `direct` or `headers`.
    pub exchange_kind: ExchangeKind,
    /// `publisherConfirm` (default `false`): accepted, **no effect**: Tandem always publishes
    /// with publisher confirms, so a publish succeeds only once the broker has taken the
    /// message (as durably as the queues and `deliveryMode` make it). Confirms are pipelined,
    /// so concurrent publishes do not wait for each other.
    pub publisher_confirm: bool,
    /// `saslExternal` (default `false`): authenticate with SASL EXTERNAL (the TLS client
    /// certificate's identity) instead of username/password. Requires `caCert`, `clientCert`
    /// and `clientKey`; used with `amqps` only, as in Dapr.
    pub sasl_external: bool,
    /// `concurrencyMode` (alias `concurrency`, default `parallel`): `single` hands one message
    /// at a time to the app.
    pub concurrency: ConcurrencyMode,
    /// `ttlInSeconds` (alias `ttl`, optional): the default expiration of published messages
    /// that carry no `ttlInSeconds` of their own (as daprd: a per-message expiration, not a
    /// queue argument). A number of seconds or a duration (`90s`).
    pub default_ttl: Option<Duration>,
    /// `clientName` (optional): the connection name shown by RabbitMQ's management tools.
    pub client_name: Option<String>,
    /// `heartBeat` (default `10s`): the AMQP heartbeat interval; a dead broker or network is
    /// noticed after about two intervals. `0` disables heartbeats.
    pub heartbeat: Duration,
    /// `publishMessagePropertiesToMetadata` (default `false`): deliver AMQP properties to the
    /// app as metadata: `metadata.messageid`, `metadata.correlationid`, `metadata.type`,
    /// `metadata.contenttype` and every header as `metadata.<name>`.
    pub publish_properties_to_metadata: bool,
    /// `caCert` (optional, PEM): a certificate authority trusted in addition to the system
    /// roots, for `amqps`. Has no effect with `amqp` (a warning is logged).
    pub ca_cert: Option<String>,
    /// `clientCert` (optional, PEM): the client certificate for mutual TLS; needs `clientKey`.
    pub client_cert: Option<String>,
    /// `clientKey` (optional, PEM): the private key of `clientCert`.
    pub client_key: Option<String>,
    /// How long one connection attempt may take (see [`DEFAULT_CONNECT_TIMEOUT`]).
    pub connect_timeout: Duration,
}

impl fmt::Debug for RabbitMetadata {
    /// Secrets (passwords, the client key, the URI's credentials) are never printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = |v: &Option<String>| if v.is_some() { "<set>" } else { "<unset>" };
        f.debug_struct("RabbitMetadata")
            .field("host", &self.uri.authority.host)
            .field("port", &self.uri.authority.port)
            .field("vhost", &self.uri.vhost)
            .field("tls", &self.tls())
            .field("consumer_id", &self.consumer_id)
            .field("durable", &self.durable)
            .field("deleted_when_unused", &self.deleted_when_unused)
            .field("auto_ack", &self.auto_ack)
            .field("enable_dead_letter", &self.enable_dead_letter)
            .field("delivery_mode", &self.delivery_mode)
            .field("prefetch_count", &self.prefetch_count)
            .field("reconnect_wait", &self.reconnect_wait)
            .field("exchange_kind", &self.exchange_kind)
            .field("concurrency", &self.concurrency)
            .field("default_ttl", &self.default_ttl)
            .field("heartbeat", &self.heartbeat)
            .field("client_cert", &set(&self.client_cert))
            .field("client_key", &set(&self.client_key))
            .finish_non_exhaustive()
    }
}

impl RabbitMetadata {
    /// Decodes and validates the component's metadata.
    pub fn from_metadata(md: &Metadata) -> Result<Self> {
        let protocol = owned(md, "protocol");
        if let Some(p) = &protocol
            && p != "amqp"
            && p != "amqps"
        {
            return Err(Error::invalid_metadata(
                "protocol",
                "expected amqp or amqps",
            ));
        }
        let hostname = owned(md, "hostname");
        let username = owned(md, "username");
        let password = owned(md, "password");
        let (field, connection_string) = match md.get("connectionString") {
            Some(c) => ("connectionString", Some(c.trim().to_owned())),
            None => ("host", owned(md, "host")),
        };
        if field == "host" && connection_string.is_some() {
            tracing::warn!(
                component = %md.name,
                "the 'host' metadata field is deprecated; use 'connectionString'"
            );
        }
        let mut uri = match &connection_string {
            Some(c) => AMQPUri::from_str(c).map_err(|_| {
                Error::invalid_metadata(field, "expected an amqp:// or amqps:// URI")
            })?,
            None => build_uri(
                protocol.as_deref().unwrap_or("amqp"),
                hostname.as_deref().unwrap_or("localhost"),
                username.as_deref(),
                password.as_deref(),
            )?,
        };
        if connection_string.is_some()
            && let Some(p) = &protocol
            && p != scheme_name(&uri.scheme)
        {
            return Err(Error::invalid_metadata(
                "protocol",
                "does not match the scheme of connectionString",
            ));
        }

        let delivery_mode = md.u64_or("deliveryMode", 0)?;
        if delivery_mode > 2 {
            return Err(Error::invalid_metadata(
                "deliveryMode",
                "expected 0, 1 or 2 (2 = persistent)",
            ));
        }
        let prefetch_count = u16::try_from(md.u64_or("prefetchCount", 0)?)
            .map_err(|_| Error::invalid_metadata("prefetchCount", "at most 65535"))?;
        let exchange_kind = match md.get("exchangeKind").map(str::trim) {
            None | Some("fanout") => ExchangeKind::Fanout,
            Some("topic") => ExchangeKind::Topic,
            Some("direct") => ExchangeKind::Direct,
            Some("headers") => ExchangeKind::Headers,
            Some(_) => {
                return Err(Error::invalid_metadata(
                    "exchangeKind",
                    "expected fanout, topic, direct or headers",
                ));
            }
        };
        let concurrency_field = if md.get("concurrencyMode").is_some() {
            "concurrencyMode"
        } else {
            "concurrency"
        };
        let concurrency = match md.get(concurrency_field).map(str::trim) {
            None | Some("parallel") => ConcurrencyMode::Parallel,
            Some("single") => ConcurrencyMode::Single,
            Some(_) => {
                return Err(Error::invalid_metadata(
                    concurrency_field,
                    "expected parallel or single",
                ));
            }
        };
        let reconnect_field = if md.get("reconnectWaitSeconds").is_some() {
            "reconnectWaitSeconds"
        } else {
            "reconnectWait"
        };
        let reconnect_wait = md.duration_or(reconnect_field, DEFAULT_RECONNECT_WAIT)?;
        let heartbeat = md.duration_or("heartBeat", DEFAULT_HEARTBEAT)?;
        if heartbeat.as_secs() > u64::from(u16::MAX) {
            return Err(Error::invalid_metadata("heartBeat", "at most 65535s"));
        }
        // An explicit heartBeat wins over the URI's `heartbeat` parameter.
        if md.get("heartBeat").is_some() || uri.query.heartbeat.is_none() {
            uri.query.heartbeat = Some(heartbeat.as_secs() as u16);
        }
        let default_ttl = ttl(md)?;

        let Security {
            ca_cert,
            client_cert,
            client_key,
            sasl_external,
        } = Security::from_metadata(md, "saslExternal", &mut uri)?;
        let connect_timeout = connect_timeout(&uri);

        let settings = Self {
            uri,
            protocol,
            hostname,
            username,
            password,
            consumer_id: owned(md, "consumerID"),
            durable: md.bool_or("durable", true)?,
            deleted_when_unused: md.bool_or("deletedWhenUnused", true)?,
            auto_ack: md.bool_or("autoAck", false)?,
            requeue_in_failure: md.bool_or("requeueInFailure", false)?,
            enable_dead_letter: md.bool_or("enableDeadLetter", false)?,
            delivery_mode: delivery_mode as u8,
            prefetch_count,
            reconnect_wait,
            max_len: positive(md, "maxLen")?,
            max_len_bytes: positive(md, "maxLenBytes")?,
            exchange_kind,
            publisher_confirm: md.bool_or("publisherConfirm", false)?,
            sasl_external,
            concurrency,
            default_ttl,
            client_name: owned(md, "clientName"),
            heartbeat,
            publish_properties_to_metadata: md
                .bool_or("publishMessagePropertiesToMetadata", false)?,
            ca_cert,
            client_cert,
            client_key,
            connect_timeout,
        };
        settings.warn_about_ignored(&md.name);
        Ok(settings)
    }

    /// Whether the connection uses TLS (`amqps`).
    pub fn tls(&self) -> bool {
        self.uri.scheme == AMQPScheme::AMQPS
    }

    /// The TLS settings of the connection: extra trusted CA and client identity.
    pub(crate) fn tls_config(&self) -> OwnedTLSConfig {
        tls_config(&self.ca_cert, &self.client_cert, &self.client_key)
    }

    /// What the connection needs.
    pub(crate) fn link_settings(&self) -> LinkSettings {
        LinkSettings {
            uri: self.uri.clone(),
            tls: if self.tls() {
                self.tls_config()
            } else {
                OwnedTLSConfig::default()
            },
            client_name: self.client_name.clone(),
            connect_timeout: self.connect_timeout,
            reconnect_wait: self.reconnect_wait,
        }
    }

    /// Says once, at start-up, which settings given here have no effect.
    fn warn_about_ignored(&self, component: &str) {
        let tls_fields = self.ca_cert.is_some()
            || self.client_cert.is_some()
            || self.client_key.is_some()
            || self.sasl_external;
        if tls_fields && !self.tls() {
            tracing::warn!(
                component,
                "caCert, clientCert, clientKey and saslExternal apply to amqps connections only; they have no effect with amqp"
            );
        }
        if self.tls() && self.client_cert.is_some() != self.client_key.is_some() {
            tracing::warn!(
                component,
                "clientCert and clientKey work as a pair; with only one of them no client certificate is sent"
            );
        }
        if self.requeue_in_failure {
            tracing::debug!(
                component,
                "requeueInFailure has no effect: a message the app asks to retry is always requeued"
            );
        }
    }
}

/// Dapr's default for the binding's `reconnectWaitInSeconds`.
pub const DEFAULT_BINDING_RECONNECT_WAIT: Duration = Duration::from_secs(5);

/// The typed settings of a `bindings.rabbitmq` component (components-contrib
/// `bindings/rabbitmq`): one queue, published to through the default exchange and read from.
///
/// Every field's doc comment is the user-facing documentation of the metadata field it is
/// decoded from. Keys are case-insensitive; empty values count as unset.
#[derive(Clone)]
pub struct RabbitBindingMetadata {
    /// `host` (required; alias `connectionString`): the broker as an AMQP URI,
    /// `amqp://user:password@host:5672/vhost`, or `amqps://…` for TLS. Query parameters
    /// `heartbeat` (default 10 s), `connection_timeout` (ms), `frame_max`, `channel_max` and
    /// `auth_mechanism` are understood.
    pub uri: AMQPUri,
    /// `queueName` (required): the queue `create` publishes to and the input reads. It is
    /// declared (created if missing) with the flags and arguments below before first use;
    /// RabbitMQ refuses to declare an existing queue with other flags or arguments, and the
    /// error says so.
    pub queue_name: String,
    /// `durable` (default `false`): declare the queue durable, so that it survives a broker
    /// restart (its persistent messages too).
    pub durable: bool,
    /// `deleteWhenUnused` (default `false`): declare the queue auto-delete: it disappears
    /// with its last consumer.
    pub delete_when_unused: bool,
    /// `exclusive` (default `false`): declare the queue exclusive to this sidecar's
    /// connection; it is deleted when the connection closes and no other connection can use
    /// it.
    pub exclusive: bool,
    /// `prefetchCount` (default `0`): how many unacknowledged messages the broker hands the
    /// input binding at once, and so how many events are with the app at once. `0` or `1`
    /// delivers one event at a time, in queue order, as daprd does; a larger value delivers up
    /// to that many concurrently (order is then not kept).
    pub prefetch_count: u16,
    /// `maxPriority` (optional, 1 to 255; larger values count as 255): make the queue a
    /// priority queue (`x-max-priority`); `create` then honours the request's `priority`.
    pub max_priority: Option<u8>,
    /// `ttlInSeconds` (alias `ttl`, optional): the queue's message TTL (`x-message-ttl`): a
    /// message not consumed within it is discarded. A number of seconds or a duration
    /// (`90s`). A `create` request's own `ttlInSeconds` sets a per-message expiration.
    pub queue_ttl: Option<Duration>,
    /// `contentType` (default `text/plain`): the AMQP content type of published messages; a
    /// request's `contentType` metadata wins.
    pub content_type: String,
    /// `deliveryMode` (default `2`): `2` publishes persistent messages (written to disk in
    /// durable queues), as daprd's binding always does; `1` transient ones.
    pub delivery_mode: u8,
    /// `reconnectWaitInSeconds` (aliases `reconnectWaitSeconds`, `reconnectWait`; default
    /// `5s`): the pause before reconnecting after the connection broke or an attempt failed.
    /// It doubles after each failed attempt, up to 30 s (or this value, if larger). A number
    /// of seconds or a duration.
    pub reconnect_wait: Duration,
    /// `caCert` (optional, PEM): a certificate authority trusted in addition to the system
    /// roots, for `amqps`. Has no effect with `amqp` (a warning is logged).
    pub ca_cert: Option<String>,
    /// `clientCert` (optional, PEM): the client certificate for mutual TLS; needs `clientKey`.
    pub client_cert: Option<String>,
    /// `clientKey` (optional, PEM): the private key of `clientCert`.
    pub client_key: Option<String>,
    /// `externalSasl` (alias `saslExternal`, default `false`): authenticate with SASL
    /// EXTERNAL (the TLS client certificate's identity) instead of username/password. Requires
    /// `caCert`, `clientCert` and `clientKey`; used with `amqps` only.
    pub sasl_external: bool,
    /// How long one connection attempt may take (see [`DEFAULT_CONNECT_TIMEOUT`]).
    pub connect_timeout: Duration,
}

impl fmt::Debug for RabbitBindingMetadata {
    /// Secrets (the URI's credentials, the client key) are never printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = |v: &Option<String>| if v.is_some() { "<set>" } else { "<unset>" };
        f.debug_struct("RabbitBindingMetadata")
            .field("host", &self.uri.authority.host)
            .field("port", &self.uri.authority.port)
            .field("vhost", &self.uri.vhost)
            .field("tls", &self.tls())
            .field("queue_name", &self.queue_name)
            .field("durable", &self.durable)
            .field("delete_when_unused", &self.delete_when_unused)
            .field("exclusive", &self.exclusive)
            .field("prefetch_count", &self.prefetch_count)
            .field("max_priority", &self.max_priority)
            .field("queue_ttl", &self.queue_ttl)
            .field("content_type", &self.content_type)
            .field("delivery_mode", &self.delivery_mode)
            .field("reconnect_wait", &self.reconnect_wait)
            .field("client_cert", &set(&self.client_cert))
            .field("client_key", &set(&self.client_key))
            .field("sasl_external", &self.sasl_external)
            .finish_non_exhaustive()
    }
}

impl RabbitBindingMetadata {
    /// Decodes and validates the component's metadata.
    pub fn from_metadata(md: &Metadata) -> Result<Self> {
        let field = if md.get("host").is_some() {
            "host"
        } else {
            "connectionString"
        };
        let text = md
            .get(field)
            .ok_or_else(|| Error::invalid_metadata("host", "the field is required"))?;
        let mut uri = AMQPUri::from_str(text.trim())
            .map_err(|_| Error::invalid_metadata(field, "expected an amqp:// or amqps:// URI"))?;
        if uri.query.heartbeat.is_none() {
            uri.query.heartbeat = Some(DEFAULT_HEARTBEAT.as_secs() as u16);
        }
        let queue_name = md.required("queueName")?.trim().to_owned();
        if queue_name.len() > 255 {
            return Err(Error::invalid_metadata(
                "queueName",
                "must be at most 255 bytes long",
            ));
        }
        let prefetch_count = u16::try_from(md.u64_or("prefetchCount", 0)?)
            .map_err(|_| Error::invalid_metadata("prefetchCount", "at most 65535"))?;
        let max_priority = match md.get("maxPriority") {
            None => None,
            Some(_) => Some(md.u64_or("maxPriority", 0)?.min(255) as u8),
        };
        let queue_ttl = ttl(md)?;
        let delivery_mode = match md.u64_or("deliveryMode", 2)? {
            2 => 2,
            0 | 1 => 1,
            _ => {
                return Err(Error::invalid_metadata(
                    "deliveryMode",
                    "expected 1 (transient) or 2 (persistent)",
                ));
            }
        };
        let reconnect_field = ["reconnectWaitInSeconds", "reconnectWaitSeconds"]
            .into_iter()
            .find(|f| md.get(f).is_some())
            .unwrap_or("reconnectWait");
        let reconnect_wait = md.duration_or(reconnect_field, DEFAULT_BINDING_RECONNECT_WAIT)?;
        let sasl_field = if md.get("externalSasl").is_some() {
            "externalSasl"
        } else {
            "saslExternal"
        };
        let Security {
            ca_cert,
            client_cert,
            client_key,
            sasl_external,
        } = Security::from_metadata(md, sasl_field, &mut uri)?;
        let connect_timeout = connect_timeout(&uri);
        let settings = Self {
            uri,
            queue_name,
            durable: md.bool_or("durable", false)?,
            delete_when_unused: md.bool_or("deleteWhenUnused", false)?,
            exclusive: md.bool_or("exclusive", false)?,
            prefetch_count,
            max_priority,
            queue_ttl,
            content_type: md.string_or("contentType", "text/plain").trim().to_owned(),
            delivery_mode,
            reconnect_wait,
            ca_cert,
            client_cert,
            client_key,
            sasl_external,
            connect_timeout,
        };
        let tls_fields =
            settings.ca_cert.is_some() || settings.client_cert.is_some() || settings.sasl_external;
        if tls_fields && !settings.tls() {
            tracing::warn!(
                component = %md.name,
                "caCert, clientCert, clientKey and externalSasl apply to amqps connections only; they have no effect with amqp"
            );
        }
        Ok(settings)
    }

    /// Whether the connection uses TLS (`amqps`).
    pub fn tls(&self) -> bool {
        self.uri.scheme == AMQPScheme::AMQPS
    }

    /// What the connection needs.
    pub(crate) fn link_settings(&self) -> LinkSettings {
        LinkSettings {
            uri: self.uri.clone(),
            tls: if self.tls() {
                tls_config(&self.ca_cert, &self.client_cert, &self.client_key)
            } else {
                OwnedTLSConfig::default()
            },
            client_name: None,
            connect_timeout: self.connect_timeout,
            reconnect_wait: self.reconnect_wait,
        }
    }
}

/// The TLS files and SASL EXTERNAL, decoded alike for both components.
struct Security {
    ca_cert: Option<String>,
    client_cert: Option<String>,
    client_key: Option<String>,
    sasl_external: bool,
}

impl Security {
    /// Decodes `caCert`, `clientCert`, `clientKey` and the SASL EXTERNAL switch named
    /// `sasl_field`, which needs all three and sets the mechanism of an `amqps` `uri`.
    fn from_metadata(md: &Metadata, sasl_field: &str, uri: &mut AMQPUri) -> Result<Self> {
        let ca_cert = pem(md, "caCert")?;
        let client_cert = pem(md, "clientCert")?;
        let client_key = pem(md, "clientKey")?;
        let sasl_external = md.bool_or(sasl_field, false)?;
        if sasl_external && (ca_cert.is_none() || client_cert.is_none() || client_key.is_none()) {
            return Err(Error::invalid_metadata(
                sasl_field,
                "can only be true when caCert, clientCert and clientKey are all set",
            ));
        }
        if sasl_external && uri.scheme == AMQPScheme::AMQPS {
            uri.query.auth_mechanism = Some(SASLMechanism::External);
        }
        Ok(Self {
            ca_cert,
            client_cert,
            client_key,
            sasl_external,
        })
    }
}

/// How long one connection attempt may take: the URI's `connection_timeout` (ms), else
/// [`DEFAULT_CONNECT_TIMEOUT`].
fn connect_timeout(uri: &AMQPUri) -> Duration {
    uri.query
        .connection_timeout
        .map(Duration::from_millis)
        .unwrap_or(DEFAULT_CONNECT_TIMEOUT)
}

/// `ttlInSeconds` (alias `ttl`): a number of seconds or a duration.
fn ttl(md: &Metadata) -> Result<Option<Duration>> {
    let field = if md.get("ttlInSeconds").is_some() {
        "ttlInSeconds"
    } else {
        "ttl"
    };
    match md.get(field) {
        None => Ok(None),
        Some(v) => Ok(Some(
            parse_ttl(v).map_err(|why| Error::invalid_metadata(field, why))?,
        )),
    }
}

/// Extra trusted CA and client identity, for `amqps` connections.
fn tls_config(
    ca_cert: &Option<String>,
    client_cert: &Option<String>,
    client_key: &Option<String>,
) -> OwnedTLSConfig {
    let identity = match (client_cert, client_key) {
        (Some(cert), Some(key)) => Some(OwnedIdentity::PKCS8 {
            pem: cert.clone().into_bytes(),
            key: key.clone().into_bytes(),
        }),
        _ => None,
    };
    OwnedTLSConfig {
        identity,
        cert_chain: ca_cert.clone(),
    }
}

/// A PEM field (`caCert`, `clientCert`, `clientKey`), checked for a PEM block.
fn pem(md: &Metadata, field: &str) -> Result<Option<String>> {
    match owned(md, field) {
        Some(v) if !v.contains("-----BEGIN") => Err(Error::invalid_metadata(
            field,
            "expected a PEM block (-----BEGIN ...)",
        )),
        v => Ok(v),
    }
}

/// Parses a TTL as Dapr does: a duration (`90s`, `1m`) or a number of seconds (`90`).
pub fn parse_ttl(text: &str) -> std::result::Result<Duration, &'static str> {
    let text = text.trim();
    if text.starts_with('-') {
        return Err("must not be negative");
    }
    parse_duration(text).map_err(|_| "expected a number of seconds or a duration such as 90s")
}

fn scheme_name(scheme: &AMQPScheme) -> &'static str {
    match scheme {
        AMQPScheme::AMQP => "amqp",
        AMQPScheme::AMQPS => "amqps",
    }
}

/// The URI daprd builds from the discrete fields.
fn build_uri(
    protocol: &str,
    hostname: &str,
    username: Option<&str>,
    password: Option<&str>,
) -> Result<AMQPUri> {
    use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
    let enc = |s: &str| utf8_percent_encode(s, NON_ALPHANUMERIC).to_string();
    let userinfo = match (username, password) {
        (Some(u), Some(p)) => format!("{}:{}@", enc(u), enc(p)),
        (Some(u), None) => format!("{}@", enc(u)),
        _ => String::new(),
    };
    if hostname.contains(['/', '@', '?', '#']) {
        return Err(Error::invalid_metadata(
            "hostname",
            "expected a host name, optionally with :port",
        ));
    }
    AMQPUri::from_str(&format!("{protocol}://{userinfo}{hostname}")).map_err(|_| {
        Error::invalid_metadata("hostname", "expected a host name, optionally with :port")
    })
}

fn owned(md: &Metadata, field: &str) -> Option<String> {
    md.get(field).map(|v| v.trim().to_owned())
}

/// A positive integer limit; `0` or a negative value means unset (as in Dapr).
fn positive(md: &Metadata, field: &str) -> Result<Option<i64>> {
    let v = md.i64_or(field, 0)?;
    Ok((v > 0).then_some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(pairs: &[(&str, &str)]) -> Metadata {
        let mut m = Metadata::new("rabbit", "app");
        for (k, v) in pairs {
            m.insert(*k, *v);
        }
        m
    }

    fn decode(pairs: &[(&str, &str)]) -> Result<RabbitMetadata> {
        RabbitMetadata::from_metadata(&md(pairs))
    }

    fn field_of(err: Error) -> String {
        match err {
            Error::InvalidMetadata { field, .. } => field,
            other => panic!("expected InvalidMetadata, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_daprds() {
        let m = decode(&[]).unwrap();
        assert_eq!(m.uri.authority.host, "localhost");
        assert_eq!(m.uri.authority.port, 5672);
        assert_eq!(m.uri.authority.userinfo.username, "guest");
        assert_eq!(m.uri.vhost, "/");
        assert!(m.durable);
        assert!(m.deleted_when_unused);
        assert!(!m.auto_ack);
        assert_eq!(m.delivery_mode, 0);
        assert_eq!(m.prefetch_count, 0);
        assert_eq!(m.reconnect_wait, DEFAULT_RECONNECT_WAIT);
        assert_eq!(m.exchange_kind, ExchangeKind::Fanout);
        assert_eq!(m.concurrency, ConcurrencyMode::Parallel);
        assert_eq!(m.heartbeat, DEFAULT_HEARTBEAT);
        assert_eq!(m.uri.query.heartbeat, Some(10));
        assert_eq!(m.default_ttl, None);
        assert_eq!(m.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert!(!m.tls());
    }

    #[test]
    fn connection_string_and_its_deprecated_alias() {
        let m = decode(&[(
            "connectionString",
            "amqp://user:p%40ss@broker.example:5673/prod?heartbeat=30",
        )])
        .unwrap();
        assert_eq!(m.uri.authority.host, "broker.example");
        assert_eq!(m.uri.authority.port, 5673);
        assert_eq!(m.uri.authority.userinfo.username, "user");
        assert_eq!(m.uri.authority.userinfo.password, "p@ss");
        assert_eq!(m.uri.vhost, "prod");
        assert_eq!(m.uri.query.heartbeat, Some(30), "the URI's heartbeat stays");

        let m = decode(&[("host", "amqps://broker.example")]).unwrap();
        assert!(m.tls());
        assert_eq!(m.uri.authority.port, 5671);

        let m = decode(&[("connectionString", "amqp://h"), ("heartBeat", "5s")]).unwrap();
        assert_eq!(m.uri.query.heartbeat, Some(5), "explicit heartBeat wins");

        assert_eq!(
            field_of(decode(&[("connectionString", "http://x")]).unwrap_err()),
            "connectionString"
        );
        assert_eq!(
            field_of(
                decode(&[("connectionString", "amqp://x"), ("protocol", "amqps")]).unwrap_err()
            ),
            "protocol"
        );
    }

    #[test]
    fn discrete_fields_build_the_uri() {
        let m = decode(&[
            ("protocol", "amqps"),
            ("hostname", "mq.internal:5999"),
            ("username", "svc"),
            ("password", "s3cr:t/x"),
        ])
        .unwrap();
        assert!(m.tls());
        assert_eq!(m.uri.authority.host, "mq.internal");
        assert_eq!(m.uri.authority.port, 5999);
        assert_eq!(m.uri.authority.userinfo.username, "svc");
        assert_eq!(m.uri.authority.userinfo.password, "s3cr:t/x");
        assert_eq!(
            field_of(decode(&[("protocol", "http")]).unwrap_err()),
            "protocol"
        );
        assert_eq!(
            field_of(decode(&[("hostname", "a/b")]).unwrap_err()),
            "hostname"
        );
    }

    #[test]
    fn validation_names_the_field() {
        for (field, value) in [
            ("deliveryMode", "3"),
            ("prefetchCount", "70000"),
            ("exchangeKind", "x-delayed"),
            ("concurrencyMode", "burst"),
            ("durable", "perhaps"),
            ("reconnectWaitSeconds", "soon"),
            ("ttlInSeconds", "-1"),
            ("caCert", "not pem"),
            ("maxLen", "many"),
        ] {
            assert_eq!(field_of(decode(&[(field, value)]).unwrap_err()), field);
        }
        assert_eq!(
            field_of(decode(&[("saslExternal", "true")]).unwrap_err()),
            "saslExternal"
        );
    }

    #[test]
    fn aliases_and_values() {
        let m = decode(&[
            ("concurrency", "single"),
            ("reconnectWait", "250ms"),
            ("ttl", "90"),
            ("maxLen", "0"),
            ("maxLenBytes", "1048576"),
            ("exchangeKind", "topic"),
            ("deliveryMode", "2"),
            ("prefetchCount", "10"),
        ])
        .unwrap();
        assert_eq!(m.concurrency, ConcurrencyMode::Single);
        assert_eq!(m.reconnect_wait, Duration::from_millis(250));
        assert_eq!(m.default_ttl, Some(Duration::from_secs(90)));
        assert_eq!(m.max_len, None, "0 means unset");
        assert_eq!(m.max_len_bytes, Some(1_048_576));
        assert_eq!(m.exchange_kind, ExchangeKind::Topic);
        assert_eq!(m.delivery_mode, 2);
        assert_eq!(m.prefetch_count, 10);
        assert_eq!(parse_ttl("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_ttl("soon").is_err());
    }

    #[test]
    fn sasl_external_with_tls_material() {
        let pem = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let m = decode(&[
            ("connectionString", "amqps://mq"),
            ("saslExternal", "true"),
            ("caCert", pem),
            ("clientCert", pem),
            ("clientKey", pem),
        ])
        .unwrap();
        assert_eq!(m.uri.query.auth_mechanism, Some(SASLMechanism::External));
        let tls = m.tls_config();
        assert!(tls.identity.is_some());
        assert!(tls.cert_chain.is_some());
    }

    #[test]
    fn debug_hides_secrets() {
        let m = decode(&[("connectionString", "amqp://u:topsecret@h")]).unwrap();
        assert!(!format!("{m:?}").contains("topsecret"));
    }

    fn decode_binding(pairs: &[(&str, &str)]) -> Result<RabbitBindingMetadata> {
        RabbitBindingMetadata::from_metadata(&md(pairs))
    }

    #[test]
    fn binding_defaults_are_daprs() {
        let m = decode_binding(&[("host", "amqp://u:p@mq:5673/v"), ("queueName", "jobs")]).unwrap();
        assert_eq!(m.uri.authority.host, "mq");
        assert_eq!(m.uri.authority.port, 5673);
        assert_eq!(m.uri.vhost, "v");
        assert_eq!(m.uri.query.heartbeat, Some(10));
        assert_eq!(m.queue_name, "jobs");
        assert!(!m.durable && !m.delete_when_unused && !m.exclusive);
        assert_eq!(m.prefetch_count, 0);
        assert_eq!(m.max_priority, None);
        assert_eq!(m.queue_ttl, None);
        assert_eq!(m.content_type, "text/plain");
        assert_eq!(m.delivery_mode, 2);
        assert_eq!(m.reconnect_wait, DEFAULT_BINDING_RECONNECT_WAIT);
        assert!(!m.sasl_external && !m.tls());
        assert!(!format!("{m:?}").contains(":p@"));
    }

    #[test]
    fn binding_fields_and_aliases() {
        let m = decode_binding(&[
            ("connectionString", "amqps://mq?heartbeat=30"),
            ("queueName", "jobs"),
            ("durable", "true"),
            ("deleteWhenUnused", "true"),
            ("exclusive", "true"),
            ("prefetchCount", "8"),
            ("maxPriority", "1000"),
            ("ttl", "1m"),
            ("contentType", "application/json"),
            ("deliveryMode", "1"),
            ("reconnectWaitInSeconds", "2"),
        ])
        .unwrap();
        assert!(m.tls());
        assert_eq!(m.uri.query.heartbeat, Some(30));
        assert!(m.durable && m.delete_when_unused && m.exclusive);
        assert_eq!(m.prefetch_count, 8);
        assert_eq!(m.max_priority, Some(255));
        assert_eq!(m.queue_ttl, Some(Duration::from_secs(60)));
        assert_eq!(m.content_type, "application/json");
        assert_eq!(m.delivery_mode, 1);
        assert_eq!(m.reconnect_wait, Duration::from_secs(2));
        let m = decode_binding(&[
            ("host", "amqp://mq"),
            ("queueName", "q"),
            ("reconnectWait", "250ms"),
            ("ttlInSeconds", "90"),
        ])
        .unwrap();
        assert_eq!(m.reconnect_wait, Duration::from_millis(250));
        assert_eq!(m.queue_ttl, Some(Duration::from_secs(90)));
        let pem = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let m = decode_binding(&[
            ("host", "amqps://mq"),
            ("queueName", "q"),
            ("externalSasl", "true"),
            ("caCert", pem),
            ("clientCert", pem),
            ("clientKey", pem),
        ])
        .unwrap();
        assert_eq!(m.uri.query.auth_mechanism, Some(SASLMechanism::External));
        assert!(m.link_settings().tls.identity.is_some());
    }

    #[test]
    fn binding_validation_names_the_field() {
        assert_eq!(
            field_of(decode_binding(&[("queueName", "q")]).unwrap_err()),
            "host"
        );
        assert_eq!(
            field_of(decode_binding(&[("host", "amqp://mq")]).unwrap_err()),
            "queueName"
        );
        assert_eq!(
            field_of(decode_binding(&[("host", "http://mq"), ("queueName", "q")]).unwrap_err()),
            "host"
        );
        for (field, value) in [
            ("durable", "perhaps"),
            ("exclusive", "x"),
            ("prefetchCount", "-1"),
            ("maxPriority", "high"),
            ("ttlInSeconds", "-5"),
            ("deliveryMode", "3"),
            ("reconnectWaitInSeconds", "soon"),
            ("caCert", "not pem"),
            ("externalSasl", "true"),
        ] {
            let err = decode_binding(&[("host", "amqp://mq"), ("queueName", "q"), (field, value)])
                .unwrap_err();
            assert_eq!(field_of(err), field);
        }
    }
}
