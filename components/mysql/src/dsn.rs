//! The `connectionString` of `state.mysql`: a Go MySQL driver DSN, or a `mysql://` URL.
//!
//! Dapr hands the connection string to go-sql-driver/mysql, so existing component files use its
//! DSN syntax, `[user[:password]@][net[(address)]]/dbname[?param=value&...]`, for example
//! `root:secret@tcp(db.internal:3306)/?allowNativePasswords=true&parseTime=true`. It is parsed
//! here the way that driver parses it: the last `/` separates the address from the database,
//! the last `@` before it separates the credentials, the password is everything after the
//! first `:` of the credentials (so it may contain `@`, `:` and `/`), and parameter values are
//! URL-decoded.
//!
//! Errors name the field (`connectionString`) and what is wrong, never any part of the value:
//! the string holds a password.

use std::fmt;
use std::time::Duration;

use percent_encoding::percent_decode_str;
use tandem_components::metadata::parse_duration;
use tandem_components::{Error, Result};

/// The metadata field every error of this module is about.
const FIELD: &str = "connectionString";

/// The server's default port.
pub const DEFAULT_PORT: u16 = 3306;

/// Where the server listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    /// TCP (`tcp(host:port)`, or the `mysql://host:port` form). `host` has no brackets, even
    /// for IPv6.
    Tcp {
        /// Host name or IP address.
        host: String,
        /// Port (3306 when not given).
        port: u16,
    },
    /// A Unix domain socket (`unix(/run/mysqld/mysqld.sock)`).
    Unix(String),
}

/// What the DSN's `tls` parameter asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TlsParam {
    /// No `tls` parameter.
    #[default]
    Unset,
    /// `tls=false`: plain TCP.
    Off,
    /// `tls=true`: TLS, server certificate verified against the well-known web roots (or the
    /// `pemPath` CA when one is set).
    Verify,
    /// `tls=skip-verify`: TLS without verifying the server certificate.
    SkipVerify,
    /// `tls=custom` (what Dapr's docs tell `pemPath` users to write): TLS verified against the
    /// `pemPath` CA only.
    Custom,
}

/// A parsed connection string.
///
/// `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Dsn {
    /// User name (`None` when the DSN has none; the server then sees an empty user).
    pub user: Option<String>,
    /// Password (`None` when absent or empty).
    pub password: Option<String>,
    /// Server address.
    pub address: Address,
    /// The database named in the DSN, if any. Tandem qualifies every table with
    /// `schemaName`, so this is only the connection's initial default database.
    pub database: Option<String>,
    /// The `tls` parameter.
    pub tls: TlsParam,
    /// The `timeout` parameter: how long establishing a connection may take.
    pub dial_timeout: Option<Duration>,
    /// `allowCleartextPasswords=true`: allow the `mysql_clear_password` authentication plugin.
    pub allow_cleartext_passwords: bool,
    /// Parameters the driver does not know, which the Go driver sends as `SET name=value` on
    /// every new connection (for example `sql_mode`), in DSN order. Names are plain
    /// identifiers; values are used verbatim, as in the Go driver.
    pub session_variables: Vec<(String, String)>,
}

impl fmt::Debug for Dsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dsn")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("address", &self.address)
            .field("database", &self.database)
            .field("tls", &self.tls)
            .field("dial_timeout", &self.dial_timeout)
            .field("allow_cleartext_passwords", &self.allow_cleartext_passwords)
            .field("session_variables", &self.session_variables)
            .finish()
    }
}

/// Go driver parameters that need nothing from Tandem: they tune the Go side (`parseTime`,
/// `loc`, `interpolateParams`, …) or are fixed by Tandem's client (`charset` is always
/// utf8mb4, found-rows semantics are the store's own).
const IGNORED_PARAMS: &[&str] = &[
    "allowAllFiles",
    "allowFallbackToPlaintext",
    "allowNativePasswords",
    "allowOldPasswords",
    "charset",
    "checkConnLiveness",
    "clientFoundRows",
    "collation",
    "columnsWithAlias",
    "compress",
    "connectionAttributes",
    "interpolateParams",
    "loc",
    "maxAllowedPacket",
    "multiStatements",
    "parseTime",
    "readTimeout",
    "rejectReadOnly",
    "serverPubKey",
    "timeTruncate",
    "writeTimeout",
];

impl Dsn {
    /// Parses a Go MySQL DSN or a `mysql://user:pass@host:port/db?params` URL.
    pub fn parse(text: &str) -> Result<Self> {
        let text = text.trim();
        match text.strip_prefix("mysql://") {
            Some(rest) => Self::parse_url(rest),
            None => Self::parse_go(text),
        }
    }

    /// go-sql-driver/mysql's `ParseDSN`, the parts Tandem uses.
    fn parse_go(dsn: &str) -> Result<Self> {
        let Some(slash) = dsn.rfind('/') else {
            return Err(invalid(
                "missing the '/' that separates the server address from the database name \
                 (for example user:password@tcp(host:3306)/)",
            ));
        };
        let head = &dsn[..slash];
        let (credentials, server) = match head.rfind('@') {
            Some(at) => (Some(&head[..at]), &head[at + 1..]),
            None => (None, head),
        };
        let (user, password) = match credentials {
            Some(creds) => match creds.split_once(':') {
                Some((user, password)) => (user, password),
                None => (creds, ""),
            },
            None => ("", ""),
        };
        let (net, addr) = match server.find('(') {
            Some(open) => {
                let Some(addr) = server[open + 1..].strip_suffix(')') else {
                    return Err(invalid(
                        "the server address must be enclosed in parentheses, as in tcp(host:3306)",
                    ));
                };
                (&server[..open], addr)
            }
            None => (server, ""),
        };
        let address = match net {
            "" | "tcp" | "tcp4" | "tcp6" => tcp_address(addr)?,
            "unix" if !addr.is_empty() => Address::Unix(addr.to_owned()),
            "unix" => {
                return Err(invalid(
                    "unix needs a socket path, as in unix(/path/to.sock)",
                ));
            }
            _ => return Err(invalid("unsupported network: expected tcp or unix")),
        };
        let tail = &dsn[slash + 1..];
        let (database, params) = tail.split_once('?').unwrap_or((tail, ""));
        let database = decode(database, "the database name is not valid percent-encoding")?;
        let mut parsed = Self {
            user: non_empty(user.to_owned()),
            password: non_empty(password.to_owned()),
            address,
            database: non_empty(database),
            tls: TlsParam::Unset,
            dial_timeout: None,
            allow_cleartext_passwords: false,
            session_variables: Vec::new(),
        };
        parsed.apply_params(params)?;
        Ok(parsed)
    }

    /// `mysql://[user[:password]@]host[:port][/database][?params]`, with percent-encoded
    /// user, password and database, and the Go driver's parameter names.
    fn parse_url(rest: &str) -> Result<Self> {
        let (rest, params) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, database) = rest.split_once('/').unwrap_or((rest, ""));
        let (credentials, host_port) = match authority.rfind('@') {
            Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
            None => (None, authority),
        };
        let (user, password) = match credentials {
            Some(creds) => match creds.split_once(':') {
                Some((user, password)) => (user, password),
                None => (creds, ""),
            },
            None => ("", ""),
        };
        if host_port.is_empty() {
            return Err(invalid("the URL has no host"));
        }
        let mut parsed = Self {
            user: non_empty(decode(user, "the user name is not valid percent-encoding")?),
            password: non_empty(decode(
                password,
                "the password is not valid percent-encoding",
            )?),
            address: tcp_address(host_port)?,
            database: non_empty(decode(
                database,
                "the database name is not valid percent-encoding",
            )?),
            tls: TlsParam::Unset,
            dial_timeout: None,
            allow_cleartext_passwords: false,
            session_variables: Vec::new(),
        };
        parsed.apply_params(params)?;
        Ok(parsed)
    }

    fn apply_params(&mut self, params: &str) -> Result<()> {
        for pair in params.split('&') {
            // The Go driver skips parameters without '='.
            let Some((name, raw)) = pair.split_once('=') else {
                continue;
            };
            let value = decode_query(raw)?;
            match name {
                "tls" => {
                    self.tls = match value.to_ascii_lowercase().as_str() {
                        "true" | "1" => TlsParam::Verify,
                        "false" | "0" => TlsParam::Off,
                        "skip-verify" => TlsParam::SkipVerify,
                        "custom" => TlsParam::Custom,
                        "preferred" => {
                            return Err(invalid(
                                "tls=preferred is not supported: use tls=true, tls=false, \
                                 tls=skip-verify or pemPath",
                            ));
                        }
                        _ => {
                            return Err(invalid(
                                "parameter 'tls' must be true, false, skip-verify or custom",
                            ));
                        }
                    }
                }
                "timeout" => {
                    let timeout = parse_duration(&value).map_err(|_| {
                        invalid("parameter 'timeout' must be a duration such as 5s or 500ms")
                    })?;
                    self.dial_timeout = (!timeout.is_zero()).then_some(timeout);
                }
                "allowCleartextPasswords" => {
                    self.allow_cleartext_passwords =
                        tandem_components::metadata::parse_bool(&value).ok_or_else(|| {
                            invalid("parameter 'allowCleartextPasswords' must be true or false")
                        })?;
                }
                _ if IGNORED_PARAMS.contains(&name) => {}
                _ => {
                    if !is_identifier(name) {
                        return Err(invalid(
                            "parameter names must contain only letters, digits and underscores",
                        ));
                    }
                    self.session_variables.push((name.to_owned(), value));
                }
            }
        }
        Ok(())
    }
}

/// `host[:port]`, `[v6]:port` or empty (the Go driver's default, 127.0.0.1:3306).
fn tcp_address(addr: &str) -> Result<Address> {
    if addr.is_empty() {
        return Ok(Address::Tcp {
            host: "127.0.0.1".into(),
            port: DEFAULT_PORT,
        });
    }
    let (host, port) = if let Some(rest) = addr.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            return Err(invalid("an IPv6 address is missing its closing ']'"));
        };
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| invalid("expected ':' and a port after an IPv6 address"))?,
            ),
        };
        (host, port)
    } else {
        match addr.split_once(':') {
            Some((_, rest)) if rest.contains(':') => {
                return Err(invalid(
                    "an IPv6 address must be written in brackets, as in [::1]:3306",
                ));
            }
            Some((host, port)) => (host, Some(port)),
            None => (addr, None),
        }
    };
    if host.is_empty() {
        return Err(invalid("the server address has no host"));
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| invalid("the port must be a number from 1 to 65535"))?,
    };
    Ok(Address::Tcp {
        host: host.to_owned(),
        port,
    })
}

/// Whether `name` is a plain SQL identifier: ASCII letters, digits and underscores.
pub(crate) fn is_identifier(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Percent-decoding that, like Go's, refuses a `%` not followed by two hex digits.
fn decode(text: &str, reason: &'static str) -> Result<String> {
    let bytes = text.as_bytes();
    let well_formed = bytes.iter().enumerate().all(|(i, b)| {
        *b != b'%'
            || bytes
                .get(i + 1..i + 3)
                .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
    });
    if !well_formed {
        return Err(invalid(reason));
    }
    percent_decode_str(text)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| invalid(reason))
}

/// Go's `url.QueryUnescape`: `+` is a space.
fn decode_query(text: &str) -> Result<String> {
    decode(
        &text.replace('+', " "),
        "a parameter value is not valid percent-encoding",
    )
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn invalid(reason: &str) -> Error {
    Error::invalid_metadata(FIELD, reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(host: &str, port: u16) -> Address {
        Address::Tcp {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn daprs_documented_form() {
        let dsn = Dsn::parse("root:@tcp(127.0.0.1:3306)/?allowNativePasswords=true&parseTime=true")
            .unwrap();
        assert_eq!(dsn.user.as_deref(), Some("root"));
        assert_eq!(dsn.password, None);
        assert_eq!(dsn.address, tcp("127.0.0.1", 3306));
        assert_eq!(dsn.database, None);
        assert_eq!(dsn.tls, TlsParam::Unset);
        assert!(dsn.session_variables.is_empty());
    }

    #[test]
    fn passwords_may_hold_delimiters() {
        let dsn = Dsn::parse("me:p@ss:w/rd@tcp(db.example:3307)/app?tls=custom").unwrap();
        assert_eq!(dsn.user.as_deref(), Some("me"));
        assert_eq!(dsn.password.as_deref(), Some("p@ss:w/rd"));
        assert_eq!(dsn.address, tcp("db.example", 3307));
        assert_eq!(dsn.database.as_deref(), Some("app"));
        assert_eq!(dsn.tls, TlsParam::Custom);
    }

    #[test]
    fn defaults_and_variants() {
        let dsn = Dsn::parse("/").unwrap();
        assert_eq!(dsn.user, None);
        assert_eq!(dsn.address, tcp("127.0.0.1", 3306));
        assert_eq!(
            Dsn::parse("u@tcp/").unwrap().address,
            tcp("127.0.0.1", 3306)
        );
        assert_eq!(
            Dsn::parse("u@tcp(db)/").unwrap().address,
            tcp("db", DEFAULT_PORT)
        );
        assert_eq!(
            Dsn::parse("u@tcp([::1]:3310)/").unwrap().address,
            tcp("::1", 3310)
        );
        assert_eq!(
            Dsn::parse("u:p@unix(/run/mysqld/mysqld.sock)/d%20b").unwrap(),
            Dsn {
                user: Some("u".into()),
                password: Some("p".into()),
                address: Address::Unix("/run/mysqld/mysqld.sock".into()),
                database: Some("d b".into()),
                tls: TlsParam::Unset,
                dial_timeout: None,
                allow_cleartext_passwords: false,
                session_variables: Vec::new(),
            }
        );
    }

    #[test]
    fn parameters() {
        let dsn = Dsn::parse(
            "u@tcp(h:1)/?timeout=5s&tls=skip-verify&allowCleartextPasswords=true&noval\
             &sql_mode=%27ANSI%27&loc=Local",
        )
        .unwrap();
        assert_eq!(dsn.dial_timeout, Some(Duration::from_secs(5)));
        assert_eq!(dsn.tls, TlsParam::SkipVerify);
        assert!(dsn.allow_cleartext_passwords);
        assert_eq!(
            dsn.session_variables,
            vec![("sql_mode".to_owned(), "'ANSI'".to_owned())]
        );
        assert_eq!(Dsn::parse("/?tls=false").unwrap().tls, TlsParam::Off);
        assert_eq!(Dsn::parse("/?tls=true").unwrap().tls, TlsParam::Verify);
    }

    #[test]
    fn url_form() {
        let dsn = Dsn::parse("mysql://us%40er:p%2Fw@db.example:3307/state?tls=true").unwrap();
        assert_eq!(dsn.user.as_deref(), Some("us@er"));
        assert_eq!(dsn.password.as_deref(), Some("p/w"));
        assert_eq!(dsn.address, tcp("db.example", 3307));
        assert_eq!(dsn.database.as_deref(), Some("state"));
        assert_eq!(dsn.tls, TlsParam::Verify);
        let bare = Dsn::parse("mysql://localhost").unwrap();
        assert_eq!(bare.address, tcp("localhost", 3306));
        assert_eq!(bare.user, None);
    }

    #[test]
    fn errors_name_the_field_never_the_value() {
        let secret = "hunter2-s3cret";
        for bad in [
            format!("root:{secret}@tcp(127.0.0.1:3306)"),
            format!("root:{secret}@tcp(127.0.0.1:3306/"),
            format!("root:{secret}@tcp(127.0.0.1:port)/"),
            format!("root:{secret}@tcp(127.0.0.1:70000)/"),
            format!("root:{secret}@tcp(::1)/"),
            format!("root:{secret}@pipe(x)/"),
            format!("root:{secret}@unix/"),
            format!("root:{secret}@tcp(h)/?tls=preferred"),
            format!("root:{secret}@tcp(h)/?tls={secret}"),
            format!("root:{secret}@tcp(h)/?timeout={secret}"),
            format!("root:{secret}@tcp(h)/?bad-name{secret}=1"),
            format!("root:{secret}@tcp(h)/?x=%zz{secret}"),
            format!("mysql://root:{secret}@/db"),
            format!("mysql://root:{secret}@[::1/db"),
        ] {
            let err = Dsn::parse(&bad).expect_err(&bad);
            let text = err.to_string();
            assert!(!text.contains(secret), "{text}");
            match err {
                Error::InvalidMetadata { field, .. } => assert_eq!(field, FIELD, "{bad}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn debug_redacts_the_password() {
        let dsn = Dsn::parse("root:hunter2@tcp(h:1)/").unwrap();
        let text = format!("{dsn:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("<redacted>"), "{text}");
    }
}
