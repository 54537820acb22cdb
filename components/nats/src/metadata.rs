//! The settings of `pubsub.jetstream`, decoded from a component's `spec.metadata`.
//!
//! Field names, defaults and value syntax are Dapr's (components-contrib
//! `pubsub/jetstream/metadata.go`), so an existing Dapr component YAML works unchanged.
//! Decoding does no I/O; errors name the field but never quote its value (values may be
//! tokens or keys).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use tandem_components::metadata::parse_duration;
use tandem_components::{Error, Metadata, Result};

/// Dapr's default connection name (`name`).
pub const DEFAULT_NAME: &str = "dapr.io - pubsub.jetstream";

/// Which messages of the stream a new consumer starts with (`deliverPolicy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeliverPolicy {
    /// `all` (the default): every message the stream still holds.
    #[default]
    All,
    /// `last`: the last message of the stream, then what comes after it.
    Last,
    /// `new`: only messages published after the consumer was created.
    New,
    /// `sequence`: from the stream sequence `startSequence` on.
    Sequence(u64),
    /// `time`: from the Unix time `startTime` (seconds) on.
    Time(i64),
}

/// How the server expects acknowledgements (`ackPolicy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AckPolicy {
    /// `explicit` (the default): each message is acknowledged on its own.
    #[default]
    Explicit,
    /// `all`: acknowledging a message acknowledges every earlier one too. With parallel
    /// delivery that can acknowledge messages still being handled: use with `concurrency:
    /// single`.
    All,
    /// `none`: the server forgets a message once sent (at most once; Retry is not possible).
    None,
}

impl AckPolicy {
    /// Whether messages are acknowledged at all.
    pub fn acks(self) -> bool {
        self != Self::None
    }
}

/// How messages of one subscription are handed to the app (`concurrencyMode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConcurrencyMode {
    /// `single` (Dapr's default for JetStream): one message at a time, in stream order.
    #[default]
    Single,
    /// `parallel`: up to the subscription's in-flight bound at once.
    Parallel,
}

/// How the connection authenticates (Dapr's order of precedence).
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    /// No credentials beyond what `natsURL` carries (`nats://user:password@host`).
    None,
    /// `jwt` + `seedKey`: decentralised JWT authentication, the nonce signed with the seed.
    Jwt {
        /// The user JWT.
        jwt: String,
        /// The user's NKey seed (`SU…`).
        seed: String,
    },
    /// `nkey`: an NKey seed (`SU…`) alone (NKey authentication without a JWT).
    NKey(String),
    /// `token`: token authentication.
    Token(String),
}

impl fmt::Debug for Auth {
    /// Never prints a credential.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::None => "None",
            Self::Jwt { .. } => "Jwt",
            Self::NKey(_) => "NKey",
            Self::Token(_) => "Token",
        })
    }
}

/// The typed settings of a `pubsub.jetstream` component.
///
/// Every field's doc comment is the user-facing documentation of the metadata field it is
/// decoded from. Keys are case-insensitive; empty values count as unset.
#[derive(Clone, Debug)]
pub struct JetStreamMetadata {
    /// `natsURL` (required): the server, `nats://host:4222` (`tls://` for TLS; several URLs
    /// separated by commas; credentials may be given as `nats://user:password@host`).
    pub nats_url: String,
    /// `jwt` + `seedKey` (optional, both or neither), `token` (optional), `nkey` (optional, a
    /// Tandem addition: an NKey seed without a JWT). When several are given, `jwt` wins, then
    /// the TLS client certificate (as in Dapr, which then ignores `token`), then `nkey`, then
    /// `token`. Only `token` and URL credentials are tested here.
    pub auth: Auth,
    /// `tls_client_cert` + `tls_client_key` (optional, both or neither): paths of a PEM client
    /// certificate and its key for mutual TLS, as in Dapr. Not tested here (the local server
    /// runs without TLS).
    pub tls_client: Option<(PathBuf, PathBuf)>,
    /// `name` (default `dapr.io - pubsub.jetstream`): the connection name the server shows.
    pub name: String,
    /// `streamName` (optional): the stream consumers are created on. Without it the stream is
    /// looked up by the topic (the stream whose subjects capture it). Streams are never
    /// created by the component: create them beforehand (`nats stream add`), as with Dapr.
    pub stream_name: Option<String>,
    /// `durableName` (optional): the consumer group's name in place of `consumerID`. The
    /// durable consumer of topic `T` is `<durableName>-<T>` (Dapr uses `durableName` alone,
    /// which fails as soon as an app subscribes to two topics of one stream).
    pub durable_name: Option<String>,
    /// `queueGroupName` (optional): accepted, **no effect**: the sidecars of one consumer group
    /// always share its durable pull consumer, so they compete for its messages (Dapr needs
    /// `durableName` and `queueGroupName` for that).
    pub queue_group_name: Option<String>,
    /// `deliverPolicy` (default `all`): `all`, `last`, `new`, `sequence` (with
    /// `startSequence`) or `time` (with `startTime`). Without `deliverPolicy`, `startSequence`
    /// alone means `sequence` and `startTime` alone means `time`. It applies when a group's
    /// consumer is created; an existing consumer keeps its policy.
    pub deliver_policy: DeliverPolicy,
    /// `deliverAll` (legacy, before Dapr 1.10): accepted; `true` is the default policy `all`.
    pub deliver_all: bool,
    /// `flowControl` (default `false`): accepted, **no effect**: flow control belongs to push
    /// consumers; Tandem pulls only as many messages as the app can take.
    pub flow_control: bool,
    /// `ackWait` (optional, server default `30s`): how long the server waits for the
    /// acknowledgement of a delivered message before delivering it again. While the app is
    /// still handling a message the component tells the server it is in progress, so only a
    /// sidecar that died or lost its connection lets the time run out. A Retry is a negative
    /// acknowledgement delayed by `ackWait` when it is set (as in Dapr), immediate otherwise.
    pub ack_wait: Option<Duration>,
    /// `maxDeliver` (optional, default unlimited): how many times the server delivers one
    /// message; after that it gives up on it (the message is dropped).
    pub max_deliver: Option<i64>,
    /// `backOff` (optional): delays between redeliveries after an `ackWait` ran out, such as
    /// `"500ms, 2s, 10s"`; `maxDeliver` must then be larger than the list.
    pub back_off: Vec<Duration>,
    /// `maxAckPending` (optional, server default 1000): how many messages of one consumer group
    /// may be delivered and not yet acknowledged, across its sidecars.
    pub max_ack_pending: Option<i64>,
    /// `replicas` (optional): replicas of each consumer (clustered servers).
    pub replicas: Option<usize>,
    /// `memoryStorage` (default `false`): keep consumer state in memory instead of on disk.
    pub memory_storage: bool,
    /// `rateLimit` (optional): accepted, **no effect** (a push-consumer setting).
    pub rate_limit: Option<u64>,
    /// `heartbeat` (optional, default `5s`): paces the component's pull requests, which stay
    /// open on the server for twice this long (between 1 s and 30 s) and are then sent again;
    /// a request left unanswered 5 s beyond that counts as lost and pulling starts over.
    pub heartbeat: Option<Duration>,
    /// `ackPolicy` (default `explicit`): `explicit`, `all` or `none` (any other value means
    /// `explicit`, as in Dapr).
    pub ack_policy: AckPolicy,
    /// `domain` (optional): the JetStream domain (leaf nodes).
    pub domain: Option<String>,
    /// `apiPrefix` (optional): the JetStream API prefix (cross-account setups); ignored when
    /// `domain` is set.
    pub api_prefix: Option<String>,
    /// `concurrencyMode` (alias `concurrency`; default `single`, as in Dapr): `parallel` hands
    /// up to the subscription's in-flight bound of messages to the app at once.
    pub concurrency: ConcurrencyMode,
}

impl JetStreamMetadata {
    /// Decodes and validates the component's metadata.
    pub fn from_metadata(md: &Metadata) -> Result<Self> {
        let nats_url = md.required("natsURL")?.trim().to_owned();
        let jwt = owned(md, "jwt");
        let seed = owned(md, "seedKey");
        let auth = match (jwt, seed) {
            (Some(jwt), Some(seed)) => Auth::Jwt { jwt, seed },
            (Some(_), None) => return Err(Error::invalid_metadata("seedKey", "missing seed key")),
            (None, Some(_)) => return Err(Error::invalid_metadata("jwt", "missing jwt")),
            (None, None) => match (owned(md, "nkey"), owned(md, "token")) {
                (Some(seed), _) => Auth::NKey(seed),
                (None, Some(token)) => Auth::Token(token),
                (None, None) => Auth::None,
            },
        };
        let tls_client = match (owned(md, "tls_client_cert"), owned(md, "tls_client_key")) {
            (Some(cert), Some(key)) => Some((PathBuf::from(cert), PathBuf::from(key))),
            (Some(_), None) => {
                return Err(Error::invalid_metadata(
                    "tls_client_key",
                    "missing tls client key",
                ));
            }
            (None, Some(_)) => {
                return Err(Error::invalid_metadata(
                    "tls_client_cert",
                    "missing tls client cert",
                ));
            }
            (None, None) => None,
        };
        // Dapr: with JWT credentials the client certificate is not used; with a client
        // certificate the token is not used.
        let auth = match auth {
            Auth::Token(_) if tls_client.is_some() => Auth::None,
            other => other,
        };
        let tls_client = if matches!(auth, Auth::Jwt { .. }) {
            None
        } else {
            tls_client
        };

        let start_sequence = match md.u64_or("startSequence", 0)? {
            0 => None,
            n => Some(n),
        };
        let start_time = match md.get("startTime") {
            None => None,
            Some(v) => Some(
                v.trim()
                    .parse::<i64>()
                    .ok()
                    .filter(|t| *t >= 0)
                    .ok_or_else(|| {
                        Error::invalid_metadata("startTime", "expected a Unix time in seconds")
                    })?,
            ),
        };
        let deliver_policy = match md.get("deliverPolicy").map(str::trim) {
            None => match (start_sequence, start_time) {
                (Some(seq), _) => DeliverPolicy::Sequence(seq),
                (None, Some(t)) => DeliverPolicy::Time(t),
                (None, None) => DeliverPolicy::All,
            },
            Some("all") => DeliverPolicy::All,
            Some("last") => DeliverPolicy::Last,
            Some("new") => DeliverPolicy::New,
            Some("sequence") => DeliverPolicy::Sequence(start_sequence.ok_or_else(|| {
                Error::invalid_metadata(
                    "startSequence",
                    "deliverPolicy sequence needs a startSequence above 0",
                )
            })?),
            Some("time") => DeliverPolicy::Time(start_time.ok_or_else(|| {
                Error::invalid_metadata("startTime", "deliverPolicy time needs a startTime")
            })?),
            Some(_) => {
                return Err(Error::invalid_metadata(
                    "deliverPolicy",
                    "expected one of: all, last, new, sequence, time",
                ));
            }
        };
        if md.get("deliverPolicy").is_some() {
            // The server refuses a start sequence or time with any other policy.
            if start_sequence.is_some() && !matches!(deliver_policy, DeliverPolicy::Sequence(_)) {
                return Err(Error::invalid_metadata(
                    "startSequence",
                    "only applies with deliverPolicy sequence",
                ));
            }
            if start_time.is_some() && !matches!(deliver_policy, DeliverPolicy::Time(_)) {
                return Err(Error::invalid_metadata(
                    "startTime",
                    "only applies with deliverPolicy time",
                ));
            }
        }
        let ack_policy = match md.get("ackPolicy").map(str::trim) {
            Some("all") => AckPolicy::All,
            Some("none") => AckPolicy::None,
            _ => AckPolicy::Explicit,
        };
        let concurrency_field = if md.get("concurrencyMode").is_some() {
            "concurrencyMode"
        } else {
            "concurrency"
        };
        let concurrency = match md.get(concurrency_field).map(str::trim) {
            None | Some("single") => ConcurrencyMode::Single,
            Some("parallel") => ConcurrencyMode::Parallel,
            Some(_) => {
                return Err(Error::invalid_metadata(
                    concurrency_field,
                    "expected single or parallel",
                ));
            }
        };
        let back_off = match md.get("backOff") {
            None => Vec::new(),
            Some(v) => parse_back_off(v)
                .map_err(|why| Error::invalid_metadata("backOff", why.to_owned()))?,
        };
        let max_deliver = positive(md, "maxDeliver")?;
        if !back_off.is_empty() && max_deliver.is_some_and(|m| m <= back_off.len() as i64) {
            return Err(Error::invalid_metadata(
                "maxDeliver",
                "must be larger than the number of backOff delays",
            ));
        }
        let settings = Self {
            nats_url,
            auth,
            tls_client,
            name: owned(md, "name").unwrap_or_else(|| DEFAULT_NAME.to_owned()),
            stream_name: owned(md, "streamName"),
            durable_name: owned(md, "durableName"),
            queue_group_name: owned(md, "queueGroupName"),
            deliver_policy,
            deliver_all: md.bool_or("deliverAll", false)?,
            flow_control: md.bool_or("flowControl", false)?,
            ack_wait: optional_duration(md, "ackWait")?,
            max_deliver,
            back_off,
            max_ack_pending: positive(md, "maxAckPending")?,
            replicas: positive(md, "replicas")?.map(|n| n as usize),
            memory_storage: md.bool_or("memoryStorage", false)?,
            rate_limit: match md.u64_or("rateLimit", 0)? {
                0 => None,
                n => Some(n),
            },
            heartbeat: optional_duration(md, "heartbeat")?,
            ack_policy,
            domain: owned(md, "domain"),
            api_prefix: owned(md, "apiPrefix"),
            concurrency,
        };
        settings.warn_about_ignored(&md.name);
        Ok(settings)
    }

    /// Says once, at start-up, which settings given here have no effect.
    fn warn_about_ignored(&self, component: &str) {
        if self.flow_control || self.rate_limit.is_some() {
            tracing::warn!(
                component,
                "flowControl and rateLimit apply to push consumers; Tandem's JetStream consumers pull, so they have no effect"
            );
        }
        if self.queue_group_name.is_some() {
            tracing::debug!(
                component,
                "queueGroupName has no effect: the sidecars of one consumer group always share its consumer"
            );
        }
        if self.ack_policy == AckPolicy::All && self.concurrency == ConcurrencyMode::Parallel {
            tracing::warn!(
                component,
                "ackPolicy all with parallel delivery can acknowledge messages that are still being handled"
            );
        }
    }
}

/// Parses `backOff`: durations separated by commas, optionally in brackets (`[1s, 2s]`).
pub fn parse_back_off(text: &str) -> std::result::Result<Vec<Duration>, &'static str> {
    let text = text.trim();
    let text = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    text.split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(|part| {
            parse_duration(part)
                .map_err(|_| "expected durations separated by commas, such as 500ms, 2s, 10s")
        })
        .collect()
}

fn owned(md: &Metadata, field: &str) -> Option<String> {
    md.get(field).map(|v| v.trim().to_owned())
}

fn optional_duration(md: &Metadata, field: &str) -> Result<Option<Duration>> {
    Ok(match md.get(field) {
        None => None,
        Some(_) => Some(md.duration_or(field, Duration::ZERO)?).filter(|d| !d.is_zero()),
    })
}

/// A positive integer; `0` or a negative value means unset (as in Dapr, where 0 is "not set").
fn positive(md: &Metadata, field: &str) -> Result<Option<i64>> {
    let v = md.i64_or(field, 0)?;
    Ok((v > 0).then_some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(pairs: &[(&str, &str)]) -> Result<JetStreamMetadata> {
        let mut md = Metadata::new("js", "app").with("natsURL", "nats://localhost:4222");
        for (k, v) in pairs {
            md.insert(*k, *v);
        }
        JetStreamMetadata::from_metadata(&md)
    }

    fn field_of(err: Error) -> String {
        match err {
            Error::InvalidMetadata { field, .. } => field,
            other => panic!("expected InvalidMetadata, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_daprs() {
        let m = decode(&[]).unwrap();
        assert_eq!(m.name, DEFAULT_NAME);
        assert_eq!(m.deliver_policy, DeliverPolicy::All);
        assert_eq!(m.ack_policy, AckPolicy::Explicit);
        assert_eq!(m.concurrency, ConcurrencyMode::Single);
        assert_eq!(m.auth, Auth::None);
        assert!(m.tls_client.is_none());
        assert_eq!(m.ack_wait, None);
        assert!(m.back_off.is_empty());
        let err = JetStreamMetadata::from_metadata(&Metadata::new("js", "app")).unwrap_err();
        assert_eq!(field_of(err), "natsURL");
    }

    #[test]
    fn daprs_example_decodes() {
        // The fields of components-contrib's metadata test.
        let m = decode(&[
            ("name", "myName"),
            ("durableName", "myDurable"),
            ("queueGroupName", "myQueue"),
            ("startTime", "1629328511"),
            ("flowControl", "true"),
            ("ackWait", "2s"),
            ("maxDeliver", "10"),
            ("backOff", "500ms, 2s, 10s"),
            ("maxAckPending", "5000"),
            ("replicas", "3"),
            ("memoryStorage", "true"),
            ("rateLimit", "20000"),
            ("heartbeat", "1s"),
            ("token", "myToken"),
            ("deliverPolicy", "time"),
            ("ackPolicy", "all"),
            ("apiPrefix", "HUB"),
            ("concurrencyMode", "parallel"),
        ])
        .unwrap();
        assert_eq!(m.name, "myName");
        assert_eq!(m.durable_name.as_deref(), Some("myDurable"));
        assert_eq!(m.deliver_policy, DeliverPolicy::Time(1_629_328_511));
        assert!(m.flow_control);
        assert_eq!(m.ack_wait, Some(Duration::from_secs(2)));
        assert_eq!(m.max_deliver, Some(10));
        assert_eq!(
            m.back_off,
            [
                Duration::from_millis(500),
                Duration::from_secs(2),
                Duration::from_secs(10)
            ]
        );
        assert_eq!(m.max_ack_pending, Some(5000));
        assert_eq!(m.replicas, Some(3));
        assert!(m.memory_storage);
        assert_eq!(m.rate_limit, Some(20000));
        assert_eq!(m.heartbeat, Some(Duration::from_secs(1)));
        assert_eq!(m.auth, Auth::Token("myToken".into()));
        assert_eq!(m.ack_policy, AckPolicy::All);
        assert_eq!(m.api_prefix.as_deref(), Some("HUB"));
        assert_eq!(m.concurrency, ConcurrencyMode::Parallel);
    }

    #[test]
    fn deliver_policies() {
        let p = |pairs: &[(&str, &str)]| decode(pairs).unwrap().deliver_policy;
        assert_eq!(p(&[("deliverPolicy", "last")]), DeliverPolicy::Last);
        assert_eq!(p(&[("deliverPolicy", "new")]), DeliverPolicy::New);
        assert_eq!(
            p(&[("deliverPolicy", "sequence"), ("startSequence", "5")]),
            DeliverPolicy::Sequence(5)
        );
        assert_eq!(p(&[("startSequence", "7")]), DeliverPolicy::Sequence(7));
        assert_eq!(p(&[("startTime", "100")]), DeliverPolicy::Time(100));
        assert_eq!(p(&[("deliverAll", "true")]), DeliverPolicy::All);
        for (pairs, field) in [
            (&[("deliverPolicy", "sometimes")][..], "deliverPolicy"),
            (&[("deliverPolicy", "sequence")][..], "startSequence"),
            (&[("deliverPolicy", "time")][..], "startTime"),
            (
                &[("deliverPolicy", "all"), ("startSequence", "3")][..],
                "startSequence",
            ),
            (&[("startTime", "yesterday")][..], "startTime"),
        ] {
            assert_eq!(field_of(decode(pairs).unwrap_err()), field, "{pairs:?}");
        }
    }

    #[test]
    fn credentials_follow_daprs_precedence() {
        let m = decode(&[("jwt", "J"), ("seedKey", "S"), ("token", "T")]).unwrap();
        assert_eq!(
            m.auth,
            Auth::Jwt {
                jwt: "J".into(),
                seed: "S".into()
            }
        );
        assert_eq!(field_of(decode(&[("jwt", "J")]).unwrap_err()), "seedKey");
        assert_eq!(field_of(decode(&[("seedKey", "S")]).unwrap_err()), "jwt");
        let m = decode(&[
            ("tls_client_cert", "/c.pem"),
            ("tls_client_key", "/k.pem"),
            ("token", "T"),
        ])
        .unwrap();
        assert_eq!(
            m.auth,
            Auth::None,
            "a client certificate wins over the token"
        );
        assert!(m.tls_client.is_some());
        assert_eq!(
            field_of(decode(&[("tls_client_cert", "/c.pem")]).unwrap_err()),
            "tls_client_key"
        );
        let m = decode(&[("nkey", "SUAB"), ("token", "T")]).unwrap();
        assert_eq!(m.auth, Auth::NKey("SUAB".into()));
        assert!(!format!("{m:?}").contains("SUAB"), "no secrets in Debug");
    }

    #[test]
    fn back_off_and_validation() {
        assert_eq!(
            parse_back_off("[1s, 2s]").unwrap(),
            [Duration::from_secs(1), Duration::from_secs(2)]
        );
        assert!(parse_back_off("soon").is_err());
        assert_eq!(
            field_of(decode(&[("backOff", "1s,2s"), ("maxDeliver", "2")]).unwrap_err()),
            "maxDeliver"
        );
        for (field, value) in [
            ("ackWait", "soon"),
            ("concurrencyMode", "burst"),
            ("memoryStorage", "perhaps"),
            ("maxAckPending", "many"),
        ] {
            assert_eq!(field_of(decode(&[(field, value)]).unwrap_err()), field);
        }
        assert_eq!(
            decode(&[("ackPolicy", "odd")]).unwrap().ack_policy,
            AckPolicy::Explicit
        );
    }
}
