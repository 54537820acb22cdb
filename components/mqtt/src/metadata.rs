//! The settings of `pubsub.mqtt3`, decoded from a component's `spec.metadata`.
//!
//! Field names, defaults and value syntax are Dapr's (components-contrib
//! `pubsub/mqtt3/metadata.go`), so an existing Dapr component YAML works unchanged. Decoding
//! does no I/O; errors name the field but never quote its value (values may be passwords or
//! keys).

use std::fmt;

use tandem_components::{Error, Metadata, Result};

/// Dapr's default QoS.
pub const DEFAULT_QOS: u8 = 1;

/// The typed settings of a `pubsub.mqtt3` component.
///
/// Every field's doc comment is the user-facing documentation of the metadata field it is
/// decoded from. Keys are case-insensitive; empty values count as unset.
#[derive(Clone)]
pub struct MqttMetadata {
    /// `url` (required): the broker, `tcp://[user[:password]@]host[:port]` (also `mqtt://`),
    /// or with TLS `ssl://…` (also `mqtts://`, `tcps://`, `tls://`). The port defaults to
    /// 1883, or 8883 with TLS.
    pub host: String,
    /// The broker's port (from `url`).
    pub port: u16,
    /// Whether the connection uses TLS (the scheme of `url`).
    pub tls: bool,
    /// The user name in `url`, if any.
    pub username: Option<String>,
    /// The password in `url`, if any.
    pub password: Option<String>,
    /// `consumerID` (default: the app-id, as Dapr's runtime sets it): the MQTT client id of
    /// the component's one connection. The broker keeps one session per client id and
    /// disconnects the older connection when another connects with the same id, so give each
    /// sidecar its own (for example `{uuid}` or `{podName}`) when several run at once.
    pub client_id: String,
    /// `qos` (default `1`): the QoS of publishes and subscriptions: `0` (at most once), `1`
    /// (at least once), `2` (exactly once between client and broker).
    pub qos: u8,
    /// `retain` (default `false`): publish messages as retained; a publish's own `retain`
    /// metadata wins.
    pub retain: bool,
    /// `cleanSession` (default `false`): start each connection with a fresh session. With
    /// `false` the broker keeps the subscriptions and queues the QoS ≥ 1 messages of a
    /// sidecar that is away, and redelivers what it had not acknowledged.
    pub clean_session: bool,
    /// `caCert` (optional, PEM): the certificate authority that signed the broker's
    /// certificate; without it the system roots are trusted.
    pub ca_cert: Option<String>,
    /// `clientCert` (optional, PEM): the client certificate for mutual TLS; needs `clientKey`.
    pub client_cert: Option<String>,
    /// `clientKey` (optional, PEM): the private key of `clientCert`.
    pub client_key: Option<String>,
}

impl fmt::Debug for MqttMetadata {
    /// Secrets (the password, the client key) are never printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MqttMetadata")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("username", &self.username)
            .field("client_id", &self.client_id)
            .field("qos", &self.qos)
            .field("retain", &self.retain)
            .field("clean_session", &self.clean_session)
            .field("client_cert", &self.client_cert.is_some())
            .finish_non_exhaustive()
    }
}

impl MqttMetadata {
    /// Decodes and validates the component's metadata.
    pub fn from_metadata(md: &Metadata) -> Result<Self> {
        let url = md.required("url")?.trim();
        let bad_url = || {
            Error::invalid_metadata(
                "url",
                "expected tcp://host[:port] or ssl://host[:port] (also mqtt://, mqtts://, tcps://, tls://)",
            )
        };
        let (scheme, rest) = url.split_once("://").ok_or_else(bad_url)?;
        let tls = match scheme.to_ascii_lowercase().as_str() {
            "tcp" | "mqtt" => false,
            "ssl" | "mqtts" | "tcps" | "tls" => true,
            _ => return Err(bad_url()),
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(u) => match u.split_once(':') {
                Some((user, pass)) => (Some(decode(user)), Some(decode(pass))),
                None => (Some(decode(u)), None),
            },
        };
        let default_port = if tls { 8883 } else { 1883 };
        let (host, port) = match hostport.rsplit_once(':') {
            // An IPv6 literal without a port ends with ']'.
            Some((h, p)) if !p.contains(']') => (h, p.parse::<u16>().map_err(|_| bad_url())?),
            _ => (hostport, default_port),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad_url());
        }

        let qos = md.u64_or("qos", u64::from(DEFAULT_QOS))?;
        if qos > 2 {
            return Err(Error::invalid_metadata("qos", "expected 0, 1 or 2"));
        }
        let pem = |field: &str| -> Result<Option<String>> {
            match md.get(field).map(str::trim) {
                Some(v) if !v.contains("-----BEGIN") => Err(Error::invalid_metadata(
                    field,
                    "expected a PEM block (-----BEGIN ...)",
                )),
                v => Ok(v.map(str::to_owned)),
            }
        };
        let ca_cert = pem("caCert")?;
        let client_cert = pem("clientCert")?;
        let client_key = pem("clientKey")?;
        if client_cert.is_some() != client_key.is_some() {
            return Err(Error::invalid_metadata(
                if client_cert.is_some() {
                    "clientKey"
                } else {
                    "clientCert"
                },
                "clientCert and clientKey must be given together",
            ));
        }
        let client_id = md
            .get("consumerID")
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| md.app_id.clone());
        if client_id.is_empty() {
            return Err(Error::invalid_metadata("consumerID", "missing consumerID"));
        }
        let settings = Self {
            host: host.to_owned(),
            port,
            tls,
            username,
            password,
            client_id,
            qos: qos as u8,
            retain: md.bool_or("retain", false)?,
            clean_session: md.bool_or("cleanSession", false)?,
            ca_cert,
            client_cert,
            client_key,
        };
        if !tls && (settings.ca_cert.is_some() || settings.client_cert.is_some()) {
            tracing::warn!(
                component = %md.name,
                "caCert, clientCert and clientKey apply to ssl:// connections only; they have no effect with tcp://"
            );
        }
        Ok(settings)
    }
}

/// The typed settings of a `bindings.mqtt3` component (components-contrib `bindings/mqtt3`).
///
/// Every field's doc comment is the user-facing documentation of the metadata field it is
/// decoded from. Keys are case-insensitive; empty values count as unset.
#[derive(Clone, Debug)]
pub struct MqttBindingMetadata {
    /// The connection settings, decoded as for `pubsub.mqtt3` (`url`, `consumerID`,
    /// `retain`, `cleanSession`, `caCert`, `clientCert`, `clientKey`; see [`MqttMetadata`]),
    /// except `qos`: as in Dapr, the binding always uses QoS 1, and a `qos` field is ignored
    /// with a warning. The binding opens two connections, with the client ids
    /// `<consumerID>-producer` (for `create`, opened on first use) and `<consumerID>-consumer`
    /// (while the input reads).
    pub connection: MqttMetadata,
    /// `topic` (required): the topic `create` publishes to (a request's `topic` metadata
    /// wins) and the topic filter the input subscribes to; wildcards (`+`, `#`) are allowed
    /// for the input.
    pub topic: String,
    /// `backOffMaxRetries` (default `0`): how many times an event the app refused is handed
    /// to it again, after a pause of 0.5 s doubling up to 30 s; `-1` retries until the app
    /// takes it. An event still refused after that stays unacknowledged: with
    /// `cleanSession: false` the broker sends it again when the input reconnects. The broker
    /// sends a client only so many unacknowledged messages at once (Mosquitto:
    /// `max_inflight_messages`, default 20), so many such events stall the input until then.
    pub back_off_max_retries: i64,
}

impl MqttBindingMetadata {
    /// Decodes and validates the component's metadata.
    pub fn from_metadata(md: &Metadata) -> Result<Self> {
        let mut conn = Metadata::new(md.name.clone(), md.app_id.clone());
        conn.namespace = md.namespace.clone();
        for (k, v) in md.iter() {
            if k.eq_ignore_ascii_case("qos") {
                if !v.trim().is_empty() {
                    tracing::warn!(
                        component = %md.name,
                        "the binding's 'qos' metadata field is deprecated and ignored; the binding uses QoS 1"
                    );
                }
                continue;
            }
            conn.insert(k, v);
        }
        let mut connection = MqttMetadata::from_metadata(&conn)?;
        connection.qos = 1;
        let topic = md.required("topic")?.trim().to_owned();
        let back_off_max_retries = md.i64_or("backOffMaxRetries", 0)?;
        if back_off_max_retries < -1 {
            return Err(Error::invalid_metadata(
                "backOffMaxRetries",
                "expected -1 (no limit), 0 or a positive number",
            ));
        }
        Ok(Self {
            connection,
            topic,
            back_off_max_retries,
        })
    }
}

/// Percent-decodes a URL's user name or password.
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_md(pairs: &[(&str, &str)]) -> Result<MqttMetadata> {
        let mut md = Metadata::new("mqtt", "app");
        for (k, v) in pairs {
            md.insert(*k, *v);
        }
        MqttMetadata::from_metadata(&md)
    }

    fn field_of(err: Error) -> String {
        match err {
            Error::InvalidMetadata { field, .. } => field,
            other => panic!("expected InvalidMetadata, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_daprs() {
        let m = decode_md(&[("url", "tcp://localhost")]).unwrap();
        assert_eq!((m.host.as_str(), m.port, m.tls), ("localhost", 1883, false));
        assert_eq!(m.qos, 1);
        assert!(!m.retain);
        assert!(!m.clean_session);
        assert_eq!(m.client_id, "app", "the app-id when consumerID is not set");
        assert_eq!(field_of(decode_md(&[]).unwrap_err()), "url");
    }

    #[test]
    fn urls() {
        let m = decode_md(&[("url", "mqtts://us%40r:p%3Ass@broker.example")]).unwrap();
        assert!(m.tls);
        assert_eq!(m.port, 8883);
        assert_eq!(m.username.as_deref(), Some("us@r"));
        assert_eq!(m.password.as_deref(), Some("p:ss"));
        let m = decode_md(&[("url", "ssl://h:9000"), ("consumerID", "c1")]).unwrap();
        assert_eq!((m.host.as_str(), m.port, m.tls), ("h", 9000, true));
        assert_eq!(m.client_id, "c1");
        let m = decode_md(&[("url", "mqtt://[::1]:1884")]).unwrap();
        assert_eq!((m.host.as_str(), m.port), ("::1", 1884));
        for bad in ["http://h", "h:1883", "tcp://", "tcp://h:port"] {
            assert_eq!(field_of(decode_md(&[("url", bad)]).unwrap_err()), "url");
        }
        assert!(!format!("{m:?}").contains("p:ss"));
    }

    #[test]
    fn validation_names_the_field() {
        for (field, value) in [
            ("qos", "3"),
            ("retain", "maybe"),
            ("cleanSession", "x"),
            ("caCert", "nope"),
        ] {
            assert_eq!(
                field_of(decode_md(&[("url", "tcp://h"), (field, value)]).unwrap_err()),
                field
            );
        }
        let pem = "-----BEGIN CERTIFICATE-----\nAA\n-----END CERTIFICATE-----";
        assert_eq!(
            field_of(decode_md(&[("url", "ssl://h"), ("clientCert", pem)]).unwrap_err()),
            "clientKey"
        );
    }

    fn decode_binding(pairs: &[(&str, &str)]) -> Result<MqttBindingMetadata> {
        let mut md = Metadata::new("mqtt", "app");
        for (k, v) in pairs {
            md.insert(*k, *v);
        }
        MqttBindingMetadata::from_metadata(&md)
    }

    #[test]
    fn binding_fields() {
        let m = decode_binding(&[("url", "tcp://u:pw@h:1884"), ("topic", "a/+")]).unwrap();
        assert_eq!(m.topic, "a/+");
        assert_eq!(m.back_off_max_retries, 0);
        assert_eq!((m.connection.host.as_str(), m.connection.port), ("h", 1884));
        assert_eq!(m.connection.client_id, "app");
        assert_eq!(m.connection.qos, 1);
        assert!(!m.connection.retain && !m.connection.clean_session);
        let m = decode_binding(&[
            ("url", "ssl://h"),
            ("topic", "t"),
            ("qos", "7"),
            ("consumerID", "c"),
            ("retain", "true"),
            ("cleanSession", "true"),
            ("backOffMaxRetries", "-1"),
        ])
        .unwrap();
        assert_eq!(m.connection.qos, 1, "qos is ignored, as in Dapr");
        assert_eq!(m.connection.client_id, "c");
        assert!(m.connection.retain && m.connection.clean_session && m.connection.tls);
        assert_eq!(m.back_off_max_retries, -1);
        assert!(!format!("{m:?}").contains("pw"));
        for (pairs, field) in [
            (&[("topic", "t")][..], "url"),
            (&[("url", "tcp://h")][..], "topic"),
            (
                &[
                    ("url", "tcp://h"),
                    ("topic", "t"),
                    ("backOffMaxRetries", "-2"),
                ][..],
                "backOffMaxRetries",
            ),
            (
                &[
                    ("url", "tcp://h"),
                    ("topic", "t"),
                    ("backOffMaxRetries", "x"),
                ][..],
                "backOffMaxRetries",
            ),
            (
                &[("url", "tcp://h"), ("topic", "t"), ("retain", "x")][..],
                "retain",
            ),
        ] {
            assert_eq!(field_of(decode_binding(pairs).unwrap_err()), field);
        }
    }
}
