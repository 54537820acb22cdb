//! Finding backends for tests.
//!
//! A test that needs a backend calls [`require`]: when the backend does not answer at its
//! standard local address the test is skipped with a one-line reason, unless
//! `TANDEM_REQUIRE_SERVICES=1` (set by CI), in which case it fails.

use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Whether `TANDEM_REQUIRE_SERVICES=1`.
pub fn required() -> bool {
    std::env::var("TANDEM_REQUIRE_SERVICES").is_ok_and(|v| v == "1" || v == "true")
}

/// Whether something accepts TCP connections at `addr` (`host:port`).
pub fn reachable(addr: &str) -> bool {
    addr.to_socket_addrs()
        .ok()
        .into_iter()
        .flatten()
        .any(|a| TcpStream::connect_timeout(&a, Duration::from_millis(500)).is_ok())
}

/// `true` when `name` at `addr` can be used; otherwise prints why the test is skipped, or
/// panics when services are required.
pub fn require(name: &str, addr: &str) -> bool {
    if reachable(addr) {
        return true;
    }
    if required() {
        panic!("{name} is not reachable at {addr} and TANDEM_REQUIRE_SERVICES=1");
    }
    eprintln!("skipping: {name} is not reachable at {addr}");
    false
}
