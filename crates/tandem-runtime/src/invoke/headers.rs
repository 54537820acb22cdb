//! Which headers cross a service invocation, and the ones the sidecars add.
//!
//! Hop-by-hop headers (§5.1: `Connection`, `Keep-Alive`, `Proxy-Connection`,
//! `Transfer-Encoding`, `Upgrade`, `HTTP2-Settings`, `TE`, `Trailer`, `Proxy-Authorization`,
//! `Proxy-Authenticate`, and any header named in `Connection`) are stripped in both directions.
//! Requests also lose `Host` (the target's is set from its URL), `Expect` (the body is already
//! flowing), `dapr-app-id` and `dapr-api-token`.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// `dapr-caller-app-id`.
pub const CALLER_APP_ID: HeaderName = HeaderName::from_static("dapr-caller-app-id");
/// `dapr-caller-namespace`.
pub const CALLER_NAMESPACE: HeaderName = HeaderName::from_static("dapr-caller-namespace");
/// `dapr-callee-app-id`: also how a request on the internal port names its target.
pub const CALLEE_APP_ID: HeaderName = HeaderName::from_static("dapr-callee-app-id");
/// Tandem's internal protocol: the caller's access-control trust domain, sent only when it is
/// not `public`, and removed before the request reaches the app.
pub const CALLER_TRUST_DOMAIN: HeaderName = HeaderName::from_static("tandem-caller-trust-domain");

/// Tandem's internal protocol: marks a raw gRPC call proxied to the app (gRPC proxying with
/// `dapr-app-id` metadata), forwarded as-is instead of through `OnInvoke`.
pub const GRPC_PROXY: HeaderName = HeaderName::from_static("tandem-grpc-proxy");

/// Whether `name` is hop-by-hop. A match on the name, not a list of [`HeaderName`]s: a
/// `const` list would be built and dropped at every use.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "upgrade"
            | "http2-settings"
            | "te"
            | "trailer"
            | "proxy-authorization"
            | "proxy-authenticate"
    )
}

/// Whether requests lose `name` besides the hop-by-hop headers (`Host` aside, which nearly
/// every request has).
fn request_only(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "expect" | "dapr-app-id" | "dapr-api-token" | "tandem-grpc-proxy"
    )
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Removes hop-by-hop headers, including those listed in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Usually there is none: one look at each name is cheaper than a removal of each.
    if !headers.keys().any(hop_by_hop) {
        return;
    }
    // Names listed in `Connection` are rare: only collect them when there is one.
    if let Some(listed) = connection_listed(headers) {
        for name in listed {
            headers.remove(name);
        }
    }
    remove_where(headers, hop_by_hop);
}

/// Removes every header whose name `drop` picks (a few at most: no list is collected).
fn remove_where(headers: &mut HeaderMap, drop: fn(&HeaderName) -> bool) {
    while let Some(name) = headers.keys().find(|n| drop(n)).cloned() {
        headers.remove(name);
    }
}

fn connection_listed(headers: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut values = headers.get_all(header::CONNECTION).iter().peekable();
    values.peek()?;
    Some(
        values
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
            .collect(),
    )
}

/// Prepares the caller's headers for the target: hop-by-hop headers, `Host`, `Expect`,
/// `dapr-app-id` and `dapr-api-token` go.
pub fn strip_request(headers: &mut HeaderMap) {
    strip_hop_by_hop(headers);
    headers.remove(header::HOST);
    if headers.keys().any(request_only) {
        remove_where(headers, request_only);
    }
}

/// The `X-Forwarded-For`, `X-Forwarded-Host` and `Forwarded` values a calling sidecar appends,
/// computed once: `for=<ip>;by=<ip>;host=<hostname>` as daprd writes them.
#[derive(Clone, Debug, Default)]
pub struct Forwarded {
    for_: Option<HeaderValue>,
    host: Option<HeaderValue>,
    forwarded: Option<HeaderValue>,
}

impl Forwarded {
    /// From this machine's address (`DAPR_HOST_IP` or detected) and host name.
    pub fn new(address: Option<&str>, host_name: Option<&str>) -> Self {
        let address = address.filter(|a| !a.is_empty());
        let host_name = host_name.filter(|h| !h.is_empty());
        let mut forwarded = String::new();
        if let Some(a) = address {
            // RFC 7239: IPv6 addresses are quoted and bracketed.
            let a = if a.contains(':') {
                format!("\"[{a}]\"")
            } else {
                a.to_owned()
            };
            forwarded.push_str(&format!("for={a};by={a}"));
        }
        if let Some(h) = host_name {
            if !forwarded.is_empty() {
                forwarded.push(';');
            }
            forwarded.push_str(&format!("host={h}"));
        }
        Self {
            for_: address.and_then(|a| HeaderValue::from_str(a).ok()),
            host: host_name.and_then(|h| HeaderValue::from_str(h).ok()),
            forwarded: (!forwarded.is_empty())
                .then(|| HeaderValue::from_str(&forwarded).ok())
                .flatten(),
        }
    }

    /// Appends the values to any the caller sent.
    pub fn append_to(&self, headers: &mut HeaderMap) {
        if let Some(v) = &self.for_ {
            headers.append(X_FORWARDED_FOR, v.clone());
        }
        if let Some(v) = &self.host {
            headers.append(X_FORWARDED_HOST, v.clone());
        }
        if let Some(v) = &self.forwarded {
            headers.append(header::FORWARDED, v.clone());
        }
    }
}

/// This machine's address as other sidecars see it: the source address of the default route
/// (no packet is sent), when it is not a loopback address.
pub fn detect_host_address() -> Option<String> {
    let socket = std::net::UdpSocket::bind(("0.0.0.0", 0)).ok()?;
    socket.connect(("8.8.8.8", 80)).ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then(|| ip.to_string())
}

/// This machine's host name (Linux `/proc`, then `HOSTNAME` from `env`).
pub fn detect_host_name(env: &std::collections::HashMap<String, String>) -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| env.get("HOSTNAME").cloned().filter(|s| !s.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_connection_listed_ones_go() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-private"),
            ("keep-alive", "timeout=5"),
            ("x-private", "1"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("proxy-authorization", "Basic x"),
            ("host", "localhost:3500"),
            ("expect", "100-continue"),
            ("dapr-app-id", "b"),
            ("dapr-api-token", "t"),
            ("traceparent", "00-1-2-01"),
            ("content-type", "text/plain"),
            ("x-custom", "kept"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        strip_request(&mut h);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-type", "traceparent", "x-custom"]);
    }

    #[test]
    fn each_stripped_header_goes_on_its_own() {
        for name in [
            "host",
            "expect",
            "dapr-app-id",
            "dapr-api-token",
            "tandem-grpc-proxy",
            "connection",
            "keep-alive",
            "proxy-connection",
            "transfer-encoding",
            "upgrade",
            "http2-settings",
            "te",
            "trailer",
            "proxy-authorization",
            "proxy-authenticate",
        ] {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            h.insert(HeaderName::from_static(name), HeaderValue::from_static("x"));
            strip_request(&mut h);
            assert_eq!(h.len(), 1, "{name} kept");
            assert!(h.contains_key(header::CONTENT_TYPE));
        }
    }

    #[test]
    fn forwarded_values_follow_daprd() {
        let f = Forwarded::new(Some("10.0.0.5"), Some("box"));
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        f.append_to(&mut h);
        let xff: Vec<_> = h.get_all("x-forwarded-for").iter().collect();
        assert_eq!(xff, ["1.2.3.4", "10.0.0.5"]);
        assert_eq!(h["x-forwarded-host"], "box");
        assert_eq!(h["forwarded"], "for=10.0.0.5;by=10.0.0.5;host=box");

        let v6 = Forwarded::new(Some("::1"), None);
        let mut h = HeaderMap::new();
        v6.append_to(&mut h);
        assert_eq!(h["forwarded"], "for=\"[::1]\";by=\"[::1]\"");
        assert!(h.get("x-forwarded-host").is_none());
    }
}
