//! Connection strings the way Dapr users write them, turned into a `tokio_postgres::Config`.
//!
//! Dapr hands connection strings to pgx, which reads libpq's keyword/value form
//! (`host=db user=dapr password='s e c' database=state`) and its URL form
//! (`postgres://user:pass@host:5432/db?sslmode=disable`), accepts `database` as well as
//! `dbname`, ignores its own pool settings (`pool_max_conns`, …) and sends any keyword it does
//! not know as a run-time parameter (`search_path=app` becomes `SET search_path = app` for the
//! session). The discrete metadata fields (`host`, `port`, `user`, …) override the matching
//! keyword of the string. This module reproduces that on top of tokio-postgres, whose own parser
//! knows fewer keywords and rejects the rest.
//!
//! Nothing here ever puts a value into an error message: connection strings carry passwords.

use std::str::FromStr;
use std::time::Duration;

use percent_encoding::percent_decode_str;
use tandem_components::{Error, Result};

/// The metadata field errors of the connection string are reported under.
const FIELD: &str = "connectionString";

/// Keywords tokio-postgres understands, passed through as they are.
const NATIVE: &[&str] = &[
    "user",
    "password",
    "dbname",
    "options",
    "application_name",
    "sslmode",
    "sslnegotiation",
    "host",
    "hostaddr",
    "port",
    "connect_timeout",
    "tcp_user_timeout",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_retries",
    "target_session_attrs",
    "channel_binding",
    "load_balance_hosts",
];

/// Client-side settings of libpq or pgx that mean nothing to the server: dropped (TLS files are
/// only meaningful with TLS, which this build does not speak; see `sslmode`).
const CLIENT_ONLY: &[&str] = &[
    "sslrootcert",
    "sslcert",
    "sslkey",
    "sslpassword",
    "sslsni",
    "sslcrl",
    "sslcrldir",
    "service",
    "servicefile",
    "passfile",
    "krbsrvname",
    "krbspn",
    "gssencmode",
    "gsslib",
    "requirepeer",
    "fallback_application_name",
    "statement_cache_capacity",
    "description_cache_capacity",
    "default_query_exec_mode",
    "min_read_buffer_size",
    "prefer_simple_protocol",
];

/// An ordered list of libpq keywords and values; later entries win.
#[derive(Clone, Default, PartialEq, Eq)]
pub(crate) struct ConnParams {
    pairs: Vec<(String, String)>,
}

impl std::fmt::Debug for ConnParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keywords only: values may be passwords.
        f.debug_list()
            .entries(self.pairs.iter().map(|(k, _)| k))
            .finish()
    }
}

impl ConnParams {
    /// Parses either form. An empty string gives no parameters.
    pub(crate) fn parse(text: &str) -> Result<Self> {
        let text = text.trim();
        let mut params = if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            parse_url(text)?
        } else {
            parse_key_values(text)?
        };
        params.normalise();
        Ok(params)
    }

    /// The value of `key`, if set.
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Sets `key`, replacing any earlier value.
    pub(crate) fn set(&mut self, key: &str, value: &str) {
        self.pairs.retain(|(k, _)| k != key);
        self.pairs.push((key.to_owned(), value.to_owned()));
    }

    /// Removes `key`, returning its value.
    pub(crate) fn take(&mut self, key: &str) -> Option<String> {
        let value = self.get(key).map(str::to_owned);
        self.pairs.retain(|(k, _)| k != key);
        value
    }

    /// `database` is pgx's spelling of `dbname`.
    fn normalise(&mut self) {
        for (k, _) in &mut self.pairs {
            *k = k.to_ascii_lowercase();
            if k == "database" {
                "dbname".clone_into(k);
            }
        }
    }

    /// Builds the driver configuration. `default_user` is used when no `user` is given (libpq
    /// would use the operating-system user name); `connect_timeout` applies unless the string
    /// sets its own.
    pub(crate) fn into_config(
        mut self,
        default_user: &str,
        connect_timeout: Duration,
    ) -> Result<tokio_postgres::Config> {
        match self.take("sslmode").as_deref() {
            None | Some("disable") | Some("allow") => self.set("sslmode", "disable"),
            Some("prefer") => self.set("sslmode", "prefer"),
            Some("require" | "verify-ca" | "verify-full") => {
                return Err(Error::invalid_metadata(
                    FIELD,
                    "sslmode require, verify-ca and verify-full need TLS, which this build of \
                     Tandem does not support; use sslmode=disable or prefer",
                ));
            }
            Some(_) => {
                return Err(Error::invalid_metadata(
                    FIELD,
                    "sslmode must be one of disable, allow, prefer, require, verify-ca, verify-full",
                ));
            }
        }
        if self.get("host").is_none() && self.get("hostaddr").is_none() {
            self.set("host", "localhost");
        }
        if self.get("user").is_none() {
            self.set("user", default_user);
        }
        if self.get("connect_timeout").is_none() {
            let secs = connect_timeout.as_secs().max(1);
            self.set("connect_timeout", &secs.to_string());
        }
        // Pool settings and other client-only keywords are dropped; unknown keywords become
        // run-time parameters, as pgx does.
        let mut runtime = Vec::new();
        let mut native = Vec::new();
        for (key, value) in std::mem::take(&mut self.pairs) {
            if NATIVE.contains(&key.as_str()) {
                native.push((key, value));
            } else if key.starts_with("pool_") || CLIENT_ONLY.contains(&key.as_str()) {
                continue;
            } else if valid_keyword(&key) {
                runtime.push(format!("-c {key}={}", escape_option(&value)));
            } else {
                return Err(Error::invalid_metadata(
                    FIELD,
                    "a keyword may contain only letters, digits, underscores and dots",
                ));
            }
        }
        if !runtime.is_empty() {
            let mut options = native
                .iter()
                .rev()
                .find(|(k, _)| k == "options")
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            native.retain(|(k, _)| k != "options");
            for opt in runtime {
                if !options.is_empty() {
                    options.push(' ');
                }
                options.push_str(&opt);
            }
            native.push(("options".into(), options));
        }
        let text = native
            .iter()
            .map(|(k, v)| format!("{k}={}", quote(v)))
            .collect::<Vec<_>>()
            .join(" ");
        // tokio-postgres' messages name the keyword at fault, never its value.
        tokio_postgres::Config::from_str(&text)
            .map_err(|e| Error::invalid_metadata(FIELD, format!("invalid connection string: {e}")))
    }
}

/// libpq quoting: single quotes, with `\` and `'` escaped by a backslash.
fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        if c == '\\' || c == '\'' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// A value inside the server's `options` string: spaces and backslashes are escaped.
fn escape_option(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if c == '\\' || c.is_whitespace() {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn valid_keyword(key: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

fn bad(reason: &str) -> Error {
    Error::invalid_metadata(FIELD, reason)
}

/// libpq's keyword/value syntax: `key = value` pairs separated by whitespace; a value is either
/// bare (ends at whitespace) or single-quoted; a backslash escapes the next character in both.
fn parse_key_values(text: &str) -> Result<ConnParams> {
    let mut pairs = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(bad(
                "expected key=value pairs separated by spaces, or a postgres:// URL",
            ));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    None => return Err(bad("unterminated quoted value")),
                    Some('\'') => break,
                    Some('\\') => match chars.next() {
                        Some(c) => value.push(c),
                        None => return Err(bad("unterminated quoted value")),
                    },
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    if let Some(escaped) = chars.next() {
                        value.push(escaped);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        if key.is_empty() {
            return Err(bad("a key=value pair has an empty key"));
        }
        pairs.push((key, value));
    }
    Ok(ConnParams { pairs })
}

fn decode(part: &str) -> Result<String> {
    percent_decode_str(part)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| bad("the URL contains percent-encoded bytes that are not UTF-8"))
}

/// `postgres[ql]://[user[:password]@][host[:port][,host[:port]…]][/dbname][?key=value&…]`.
fn parse_url(text: &str) -> Result<ConnParams> {
    let rest = text
        .strip_prefix("postgresql://")
        .or_else(|| text.strip_prefix("postgres://"))
        .unwrap_or(text);
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let mut pairs = Vec::new();
    let hosts = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => {
            let (user, password) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            if !user.is_empty() {
                pairs.push(("user".to_owned(), decode(user)?));
            }
            if let Some(p) = password {
                pairs.push(("password".to_owned(), decode(p)?));
            }
            hosts
        }
        None => authority,
    };
    if !hosts.is_empty() {
        let mut host_list = Vec::new();
        let mut port_list = Vec::new();
        for spec in hosts.split(',') {
            let (host, port) = if let Some(v6) = spec.strip_prefix('[') {
                let (addr, after) = v6
                    .split_once(']')
                    .ok_or_else(|| bad("an IPv6 host in the URL lacks its closing bracket"))?;
                (addr, after.strip_prefix(':'))
            } else {
                match spec.rsplit_once(':') {
                    Some((h, p)) => (h, Some(p)),
                    None => (spec, None),
                }
            };
            host_list.push(decode(host)?);
            port_list.push(port.map(decode).transpose()?.unwrap_or_default());
        }
        if host_list.iter().any(|h| !h.is_empty()) {
            pairs.push(("host".to_owned(), host_list.join(",")));
        }
        if port_list.iter().any(|p| !p.is_empty()) {
            let ports: Vec<String> = port_list
                .into_iter()
                .map(|p| if p.is_empty() { "5432".to_owned() } else { p })
                .collect();
            pairs.push(("port".to_owned(), ports.join(",")));
        }
    }
    if let Some(db) = path.filter(|p| !p.is_empty()) {
        pairs.push(("dbname".to_owned(), decode(db)?));
    }
    for param in query.unwrap_or_default().split('&') {
        if param.is_empty() {
            continue;
        }
        let (k, v) = param.split_once('=').unwrap_or((param, ""));
        // `+` means a space in query strings.
        let k = decode(&k.replace('+', " "))?;
        let v = decode(&v.replace('+', " "))?;
        pairs.push((k, v));
    }
    Ok(ConnParams { pairs })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> tokio_postgres::Config {
        ConnParams::parse(text)
            .unwrap()
            .into_config("osuser", Duration::from_secs(5))
            .unwrap()
    }

    fn host_names(c: &tokio_postgres::Config) -> Vec<String> {
        c.get_hosts()
            .iter()
            .map(|h| match h {
                tokio_postgres::config::Host::Tcp(s) => s.clone(),
                #[cfg(unix)]
                tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
            })
            .collect()
    }

    #[test]
    fn key_values_with_quotes_and_pgx_names() {
        let c = config(
            r"host=db.local port=6543 user=dapr password='p a\'ss' database=state connect_timeout=10",
        );
        assert_eq!(host_names(&c), vec!["db.local"]);
        assert_eq!(c.get_ports(), &[6543]);
        assert_eq!(c.get_user(), Some("dapr"));
        assert_eq!(c.get_password(), Some(&b"p a'ss"[..]));
        assert_eq!(c.get_dbname(), Some("state"));
        assert_eq!(c.get_connect_timeout(), Some(&Duration::from_secs(10)));
    }

    #[test]
    fn spaces_around_equals_and_defaults() {
        let c = config("dbname = test");
        assert_eq!(host_names(&c), vec!["localhost"]);
        assert_eq!(c.get_user(), Some("osuser"));
        assert_eq!(c.get_connect_timeout(), Some(&Duration::from_secs(5)));
        assert_eq!(c.get_ssl_mode(), tokio_postgres::config::SslMode::Disable);
    }

    #[test]
    fn urls() {
        let c = config(
            "postgres://us%40er:p%3Ass@h1:5433,[::1]:5434/my%20db?sslmode=prefer&application_name=tandem",
        );
        assert_eq!(c.get_user(), Some("us@er"));
        assert_eq!(c.get_password(), Some(&b"p:ss"[..]));
        assert_eq!(host_names(&c), vec!["h1", "::1"]);
        assert_eq!(c.get_ports(), &[5433, 5434]);
        assert_eq!(c.get_dbname(), Some("my db"));
        assert_eq!(c.get_application_name(), Some("tandem"));
        assert_eq!(c.get_ssl_mode(), tokio_postgres::config::SslMode::Prefer);
        let c = config("postgresql://localhost");
        assert_eq!(host_names(&c), vec!["localhost"]);
        assert!(c.get_dbname().is_none());
    }

    #[test]
    fn pool_keys_dropped_unknown_keys_become_runtime_parameters() {
        let c = config("host=h pool_max_conns=10 sslrootcert=/x search_path='my schema'");
        assert_eq!(c.get_options(), Some(r"-c search_path=my\ schema"));
        let c = config("host=h options='-c a=b' statement_timeout=5s");
        assert_eq!(c.get_options(), Some("-c a=b -c statement_timeout=5s"));
    }

    #[test]
    fn errors_never_echo_values() {
        for (text, secret) in [
            ("host=h password='hunter2", "hunter2"),
            ("host=h hunter2", "hunter2"),
            ("host=h port=hunter2", "hunter2"),
            ("host=h sslmode=require password=hunter2", "hunter2"),
            ("host=h sslmode=hunter2", "hunter2"),
            ("postgres://u:p@[::1/hunter2", "hunter2"),
        ] {
            let err = ConnParams::parse(text)
                .and_then(|p| p.into_config("u", Duration::from_secs(1)))
                .unwrap_err();
            let msg = err.to_string();
            assert!(!msg.contains(secret), "{msg}");
            match err {
                Error::InvalidMetadata { field, .. } => assert_eq!(field, FIELD),
                other => panic!("{other:?}"),
            }
        }
        let debug = format!("{:?}", ConnParams::parse("password=hunter2").unwrap());
        assert!(!debug.contains("hunter2"));
    }
}
