//! Connection options shared by `state.mysql` and `bindings.mysql`: the DSN's server,
//! credentials, session variables and TLS.

use std::path::Path;

use mysql_async::{Opts, OptsBuilder, PoolOpts, SslOpts};
use tandem_components::{Error, Result};

use crate::dsn::{Address, Dsn};
use crate::metadata::TlsMode;

/// The DSN's unknown parameters as `SET name=value` statements run on every new connection,
/// as the Go driver does.
pub(crate) fn session_init(dsn: &Dsn) -> Vec<String> {
    dsn.session_variables
        .iter()
        .map(|(name, value)| format!("SET {name}={value}"))
        .collect()
}

/// Client options for the DSN's server and credentials, with `tls`, the statements `init`
/// run on every new connection, and the pool settings `pool`.
pub(crate) fn connect_opts(dsn: &Dsn, tls: &TlsMode, init: Vec<String>, pool: PoolOpts) -> Opts {
    let builder = OptsBuilder::default()
        .user(dsn.user.clone())
        .pass(dsn.password.clone())
        .init(init)
        .pool_opts(pool)
        // The driver would otherwise switch a loopback TCP connection to the server's Unix
        // socket, which is not what the DSN says (and bypasses anything in between).
        .prefer_socket(false)
        .client_found_rows(false)
        .enable_cleartext_plugin(dsn.allow_cleartext_passwords);
    let builder = match &dsn.address {
        Address::Tcp { host, port } => builder.ip_or_hostname(host.clone()).tcp_port(*port),
        Address::Unix(path) => builder.socket(Some(path.clone())),
    };
    // The TLS provider is rustls with ring, selected by mysql_async's features.
    let ssl = match tls {
        TlsMode::Off => None,
        TlsMode::WebRoots => Some(SslOpts::default()),
        TlsMode::CustomCa(path) => Some(
            SslOpts::default()
                .with_root_certs(vec![path.clone().into()])
                .with_disable_built_in_roots(true),
        ),
        TlsMode::SkipVerify => Some(
            SslOpts::default()
                .with_danger_accept_invalid_certs(true)
                .with_danger_skip_domain_validation(true),
        ),
    };
    builder.ssl_opts(ssl).into()
}

/// `pemPath` must name a readable file with a certificate (PEM, or DER bytes). Checked at
/// build so that a typo is a start-up error rather than a failure of every call.
pub(crate) async fn check_ca_file(path: &Path) -> Result<()> {
    let data = tokio::fs::read(path)
        .await
        .map_err(|_| Error::invalid_metadata("pemPath", "the file cannot be read"))?;
    let is_text = std::str::from_utf8(&data).is_ok();
    let has_pem_cert = data
        .windows(b"-----BEGIN CERTIFICATE-----".len())
        .any(|w| w == b"-----BEGIN CERTIFICATE-----");
    if data.is_empty() || (is_text && !has_pem_cert) {
        return Err(Error::invalid_metadata(
            "pemPath",
            "the file holds no PEM certificate",
        ));
    }
    Ok(())
}
