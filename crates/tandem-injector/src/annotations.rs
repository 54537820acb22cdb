//! Reads a pod's `dapr.io/*` annotations into a [`SidecarSpec`].
//!
//! Every value is checked before anything is injected: a bad value (a port that is not a
//! number, a CPU quantity Kubernetes would reject, an app ID that cannot name a Service) is
//! reported as a message, and the caller admits the pod without a sidecar rather than inject
//! one that would fail later.

use std::collections::BTreeMap;

use serde_json::Value;

/// `dapr.io/enabled`.
pub const ENABLED: &str = "dapr.io/enabled";

/// Everything the annotations say about the sidecar, already validated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SidecarSpec {
    /// `--app-id`.
    pub app_id: String,
    /// `--app-port`, when the app listens.
    pub app_port: Option<u16>,
    /// `--app-protocol` (lower case).
    pub app_protocol: String,
    /// Deprecated `--app-ssl`.
    pub app_ssl: bool,
    /// `--app-channel-address`.
    pub app_channel_address: Option<String>,
    /// `--config`: the Configuration resource's name.
    pub config: Option<String>,
    /// `--log-level`.
    pub log_level: String,
    /// `--log-as-json`.
    pub log_as_json: bool,
    /// `--enable-profiling`.
    pub enable_profiling: bool,
    /// `--enable-api-logging=<bool>`, only when annotated.
    pub enable_api_logging: Option<bool>,
    /// Secret (key `token`) holding the API token: env `DAPR_API_TOKEN`.
    pub api_token_secret: Option<String>,
    /// Secret (key `token`) holding the app token: env `APP_API_TOKEN`.
    pub app_token_secret: Option<String>,
    /// `--app-max-concurrency`.
    pub app_max_concurrency: Option<i64>,
    /// `--enable-metrics`.
    pub enable_metrics: bool,
    /// `--metrics-port`.
    pub metrics_port: u16,
    /// `--dapr-http-port` (always 3500 in Kubernetes).
    pub http_port: u16,
    /// `--dapr-grpc-port`.
    pub grpc_port: u16,
    /// `--dapr-internal-grpc-port`.
    pub internal_grpc_port: u16,
    /// `--dapr-listen-addresses`, when annotated.
    pub listen_addresses: Option<String>,
    /// Extra environment variables for the sidecar (`dapr.io/env`), in order.
    pub env: Vec<(String, String)>,
    /// Environment variables from secrets (`dapr.io/env-from-secret`): name, secret, key.
    pub env_from_secret: Vec<(String, String, String)>,
    /// Container resources: `requests` and `limits`, each `cpu` / `memory` → quantity.
    pub requests: BTreeMap<&'static str, String>,
    /// See `requests`.
    pub limits: BTreeMap<&'static str, String>,
    /// Liveness probe: initial delay, timeout, period, failure threshold (seconds / count).
    pub liveness: Probe,
    /// Readiness probe settings.
    pub readiness: Probe,
    /// `dapr.io/sidecar-image`, overriding the injector's image.
    pub image: Option<String>,
    /// `securityContext.seccompProfile.type`.
    pub seccomp_profile_type: String,
    /// `--max-body-size`.
    pub max_body_size: Option<String>,
    /// `--read-buffer-size`.
    pub read_buffer_size: Option<String>,
    /// Legacy `--dapr-http-max-request-size` (MB).
    pub http_max_request_size: Option<u64>,
    /// Legacy `--dapr-http-read-buffer-size` (KB).
    pub http_read_buffer_size: Option<u64>,
    /// `--dapr-graceful-shutdown-seconds`, when annotated with a value ≥ 0.
    pub graceful_shutdown_seconds: Option<u64>,
    /// `--dapr-block-shutdown-duration`.
    pub block_shutdown_duration: Option<String>,
    /// `dapr.io/unix-domain-socket-path`: where the app containers see the socket folder.
    pub unix_domain_socket_path: Option<String>,
    /// `dapr.io/volume-mounts`: (volume, path) mounted read-only into the sidecar.
    pub volume_mounts: Vec<(String, String)>,
    /// `dapr.io/volume-mounts-rw`: (volume, path) mounted read-write.
    pub volume_mounts_rw: Vec<(String, String)>,
    /// `--disable-builtin-k8s-secret-store`.
    pub disable_builtin_k8s_secret_store: bool,
    /// App health checks (`--enable-app-health-check` and its settings).
    pub app_health: Option<AppHealth>,
    /// `--app-binding-options-timeout`.
    pub app_binding_options_timeout: Option<String>,
    /// `--placement-host-address` (may be empty: disables placement).
    pub placement_host_address: Option<String>,
    /// `--actors-disseminate-timeout`.
    pub actors_disseminate_timeout: Option<String>,
    /// `--scheduler-host-address` (may be empty).
    pub scheduler_host_address: Option<String>,
    /// `--sentry-request-jwt-audiences`.
    pub sentry_request_jwt_audiences: Option<String>,
    /// `--disable-init-endpoints`.
    pub disable_init_endpoints: Option<String>,
    /// Inject as a native sidecar (an init container with `restartPolicy: Always`).
    pub native_sidecar: bool,
}

/// One probe's timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Probe {
    /// `initialDelaySeconds`.
    pub delay: i32,
    /// `timeoutSeconds`.
    pub timeout: i32,
    /// `periodSeconds`.
    pub period: i32,
    /// `failureThreshold`.
    pub threshold: i32,
}

/// App health-check settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppHealth {
    /// `--app-health-check-path`.
    pub path: String,
    /// `--app-health-probe-interval` (seconds).
    pub interval: u64,
    /// `--app-health-probe-timeout` (milliseconds).
    pub timeout: u64,
    /// `--app-health-threshold`.
    pub threshold: u64,
}

/// Whether the pod asks for a sidecar: `dapr.io/enabled` equal to "true", any case.
pub fn enabled(annotations: &BTreeMap<String, String>) -> bool {
    annotations
        .get(ENABLED)
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// The pod's annotations as strings (non-string values are ignored: the API server only
/// sends strings).
pub fn of_pod(pod: &Value) -> BTreeMap<String, String> {
    pod.pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// Reads every annotation. `Err` lists each invalid value, one message per annotation.
pub fn parse(
    annotations: &BTreeMap<String, String>,
    pod: &Value,
) -> Result<SidecarSpec, Vec<String>> {
    let mut r = Reader {
        a: annotations,
        errors: Vec::new(),
    };
    let app_id = match r.string("dapr.io/app-id") {
        Some(id) => id,
        None => default_app_id(pod),
    };
    if let Err(e) = check_app_id(&app_id) {
        r.errors.push(e);
    }
    let app_port = match r.int("dapr.io/app-port", 0, 65535) {
        Some(0) | None => None,
        Some(p) => Some(p as u16),
    };
    let app_protocol = r
        .one_of(
            "dapr.io/app-protocol",
            &["http", "https", "grpc", "grpcs", "h2c"],
        )
        .unwrap_or_else(|| "http".to_owned());
    let log_level = r
        .one_of(
            "dapr.io/log-level",
            &["debug", "info", "warn", "warning", "error", "fatal"],
        )
        .unwrap_or_else(|| "info".to_owned());
    let liveness = Probe {
        delay: r.int_or("dapr.io/sidecar-liveness-probe-delay-seconds", 0, 180),
        timeout: r.int_or("dapr.io/sidecar-liveness-probe-timeout-seconds", 1, 3),
        period: r.int_or("dapr.io/sidecar-liveness-probe-period-seconds", 1, 10),
        threshold: r.int_or("dapr.io/sidecar-liveness-probe-threshold", 1, 5),
    };
    let readiness = Probe {
        delay: r.int_or("dapr.io/sidecar-readiness-probe-delay-seconds", 0, 1),
        timeout: r.int_or("dapr.io/sidecar-readiness-probe-timeout-seconds", 1, 1),
        period: r.int_or("dapr.io/sidecar-readiness-probe-period-seconds", 1, 1),
        threshold: r.int_or("dapr.io/sidecar-readiness-probe-threshold", 1, 5),
    };
    let mut requests = BTreeMap::new();
    let mut limits = BTreeMap::new();
    for (key, limit, resource) in [
        ("dapr.io/sidecar-cpu-request", false, "cpu"),
        ("dapr.io/sidecar-cpu-limit", true, "cpu"),
        ("dapr.io/sidecar-memory-request", false, "memory"),
        ("dapr.io/sidecar-memory-limit", true, "memory"),
    ] {
        if let Some(q) = r.quantity(key) {
            if limit {
                limits.insert(resource, q);
            } else {
                requests.insert(resource, q);
            }
        }
    }
    let graceful = r.int("dapr.io/graceful-shutdown-seconds", -1, i32::MAX as i64);
    let app_health = if r.bool("dapr.io/enable-app-health-check", false) {
        Some(AppHealth {
            path: r
                .string("dapr.io/app-health-check-path")
                .unwrap_or_else(|| "/healthz".to_owned()),
            interval: r.int_or("dapr.io/app-health-probe-interval", 1, 5) as u64,
            timeout: r.int_or("dapr.io/app-health-probe-timeout", 1, 500) as u64,
            threshold: r.int_or("dapr.io/app-health-threshold", 1, 3) as u64,
        })
    } else {
        None
    };
    let env = r.env("dapr.io/env");
    let env_from_secret = r.env_from_secret("dapr.io/env-from-secret");
    let spec = SidecarSpec {
        app_id,
        app_port,
        app_protocol,
        app_ssl: r.bool("dapr.io/app-ssl", false),
        app_channel_address: r.string("dapr.io/app-channel-address"),
        config: r.string("dapr.io/config"),
        log_level,
        log_as_json: r.bool("dapr.io/log-as-json", false),
        enable_profiling: r.bool("dapr.io/enable-profiling", false),
        enable_api_logging: r.opt_bool("dapr.io/enable-api-logging"),
        api_token_secret: r.string("dapr.io/api-token-secret"),
        app_token_secret: r.string("dapr.io/app-token-secret"),
        app_max_concurrency: r.int("dapr.io/app-max-concurrency", -1, i32::MAX as i64),
        enable_metrics: r.bool("dapr.io/enable-metrics", true),
        metrics_port: r.port("dapr.io/metrics-port", 9090),
        http_port: 3500,
        grpc_port: r.port("dapr.io/grpc-port", 50001),
        internal_grpc_port: r.port("dapr.io/internal-grpc-port", 50002),
        listen_addresses: r.string("dapr.io/sidecar-listen-addresses"),
        env,
        env_from_secret,
        requests,
        limits,
        liveness,
        readiness,
        image: r.string("dapr.io/sidecar-image"),
        seccomp_profile_type: r
            .one_of(
                "dapr.io/sidecar-seccomp-profile-type",
                &["RuntimeDefault", "Localhost", "Unconfined"],
            )
            .unwrap_or_else(|| "RuntimeDefault".to_owned()),
        max_body_size: r.quantity("dapr.io/max-body-size"),
        read_buffer_size: r.quantity("dapr.io/read-buffer-size"),
        http_max_request_size: r
            .int("dapr.io/http-max-request-size", 1, i32::MAX as i64)
            .map(|v| v as u64),
        http_read_buffer_size: r
            .int("dapr.io/http-read-buffer-size", 1, i32::MAX as i64)
            .map(|v| v as u64),
        graceful_shutdown_seconds: graceful.filter(|v| *v >= 0).map(|v| v as u64),
        block_shutdown_duration: r.duration("dapr.io/block-shutdown-duration"),
        unix_domain_socket_path: r.path("dapr.io/unix-domain-socket-path"),
        volume_mounts: r.mounts("dapr.io/volume-mounts"),
        volume_mounts_rw: r.mounts("dapr.io/volume-mounts-rw"),
        disable_builtin_k8s_secret_store: r.bool("dapr.io/disable-builtin-k8s-secret-store", false),
        app_health,
        app_binding_options_timeout: r.duration("dapr.io/app-binding-options-timeout"),
        placement_host_address: r.raw_trimmed_quotes("dapr.io/placement-host-address"),
        actors_disseminate_timeout: r.duration("dapr.io/actors-disseminate-timeout"),
        scheduler_host_address: r.raw_trimmed_quotes("dapr.io/scheduler-host-address"),
        sentry_request_jwt_audiences: r.string("dapr.io/sentry-request-jwt-audiences"),
        disable_init_endpoints: r.string("dapr.io/disable-init-endpoints"),
        native_sidecar: r.bool("dapr.io/enable-native-sidecar", false),
    };
    if r.errors.is_empty() {
        Ok(spec)
    } else {
        Err(r.errors)
    }
}

/// The app ID when `dapr.io/app-id` is absent: the pod's name, or, for a pod that only has
/// `generateName` (every pod a controller makes), the owning workload's name: `generateName`
/// without its trailing `-` and, for a Deployment's pods, without the `pod-template-hash`
/// suffix (`orders-7d9f8b6c4-` → `orders`).
pub fn default_app_id(pod: &Value) -> String {
    let meta = pod.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("");
    if !name.is_empty() {
        return name.to_owned();
    }
    let generate = meta
        .and_then(|m| m.get("generateName"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let mut base = generate.trim_end_matches('-');
    if let Some(hash) = meta
        .and_then(|m| m.pointer("/labels/pod-template-hash"))
        .and_then(Value::as_str)
        && let Some(stripped) = base.strip_suffix(hash)
        && let Some(stripped) = stripped.strip_suffix('-')
        && !stripped.is_empty()
    {
        base = stripped;
    }
    base.to_owned()
}

/// An app ID must make `<id>-dapr` a DNS-1123 label: the headless Service's name.
fn check_app_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("dapr.io/app-id: empty, and the pod has neither a name nor a generateName to derive one from".to_owned());
    }
    let service = format!("{id}-dapr");
    let valid = service.len() <= 63
        && service
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && service
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric());
    if valid {
        Ok(())
    } else {
        Err(format!(
            "dapr.io/app-id: '{id}' is not a valid app ID: '{service}' must be a DNS-1123 label (lower-case letters, digits and '-', at most 63 characters, starting with a letter or digit)"
        ))
    }
}

struct Reader<'a> {
    a: &'a BTreeMap<String, String>,
    errors: Vec<String>,
}

impl Reader<'_> {
    fn raw(&self, key: &str) -> Option<&str> {
        self.a.get(key).map(String::as_str)
    }

    /// A non-empty string, trimmed.
    fn string(&self, key: &str) -> Option<String> {
        self.raw(key)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    }

    /// Kept even when empty (an empty address disables the service); quotes trimmed.
    fn raw_trimmed_quotes(&self, key: &str) -> Option<String> {
        self.raw(key)
            .map(|s| s.trim().trim_matches(|c| c == '"' || c == '\'').to_owned())
    }

    fn opt_bool(&mut self, key: &str) -> Option<bool> {
        let v = self.raw(key)?.trim().to_ascii_lowercase();
        match v.as_str() {
            "y" | "yes" | "true" | "t" | "on" | "1" => Some(true),
            "n" | "no" | "false" | "f" | "off" | "0" | "" => Some(false),
            _ => {
                self.errors.push(format!(
                    "{key}: '{v}' is not a boolean (use \"true\" or \"false\")"
                ));
                None
            }
        }
    }

    fn bool(&mut self, key: &str, default: bool) -> bool {
        self.opt_bool(key).unwrap_or(default)
    }

    fn int(&mut self, key: &str, min: i64, max: i64) -> Option<i64> {
        let v = self.string(key)?;
        match v.parse::<i64>() {
            Ok(n) if (min..=max).contains(&n) => Some(n),
            Ok(_) => {
                self.errors.push(format!(
                    "{key}: {v} is out of range (expected {min} to {max})"
                ));
                None
            }
            Err(_) => {
                self.errors
                    .push(format!("{key}: '{v}' is not a whole number"));
                None
            }
        }
    }

    fn int_or(&mut self, key: &str, min: i64, default: i64) -> i32 {
        self.int(key, min, i32::MAX as i64).unwrap_or(default) as i32
    }

    fn port(&mut self, key: &str, default: u16) -> u16 {
        self.int(key, 1, 65535).map_or(default, |p| p as u16)
    }

    fn one_of(&mut self, key: &str, allowed: &[&str]) -> Option<String> {
        let v = self.string(key)?;
        match allowed.iter().find(|a| a.eq_ignore_ascii_case(&v)) {
            Some(a) => Some((*a).to_owned()),
            None => {
                self.errors
                    .push(format!("{key}: '{v}' is not one of {}", allowed.join(", ")));
                None
            }
        }
    }

    fn quantity(&mut self, key: &str) -> Option<String> {
        let v = self.string(key)?;
        if is_quantity(&v) {
            Some(v)
        } else {
            self.errors.push(format!(
                "{key}: '{v}' is not a Kubernetes quantity (e.g. 100m, 0.5, 128Mi, 1G)"
            ));
            None
        }
    }

    fn duration(&mut self, key: &str) -> Option<String> {
        let v = self.string(key)?;
        if is_go_duration(&v) {
            Some(v)
        } else {
            self.errors
                .push(format!("{key}: '{v}' is not a duration (e.g. 5s, 1m30s)"));
            None
        }
    }

    fn path(&mut self, key: &str) -> Option<String> {
        let v = self.string(key)?;
        if v.starts_with('/') {
            Some(v)
        } else {
            self.errors
                .push(format!("{key}: '{v}' is not an absolute path"));
            None
        }
    }

    /// `"K=V,K2=V2"`; a value may contain commas as long as what follows is not `NAME=`.
    fn env(&mut self, key: &str) -> Vec<(String, String)> {
        let Some(v) = self.string(key) else {
            return Vec::new();
        };
        let mut out: Vec<(String, String)> = Vec::new();
        for piece in v.split(',') {
            let trimmed = piece.trim_start();
            match trimmed.split_once('=') {
                Some((name, value)) if is_env_name(name) => {
                    out.push((name.to_owned(), value.trim_end().to_owned()));
                }
                _ => match out.last_mut() {
                    Some(last) => {
                        last.1.push(',');
                        last.1.push_str(piece.trim_end());
                    }
                    None => {
                        self.errors.push(format!(
                            "{key}: '{v}' is not a list of NAME=value pairs separated by commas"
                        ));
                        return Vec::new();
                    }
                },
            }
        }
        out
    }

    /// `"K=secret"` (key `K`) or `"K=secret:key"`, comma-separated.
    fn env_from_secret(&mut self, key: &str) -> Vec<(String, String, String)> {
        let Some(v) = self.string(key) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for piece in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let parsed = piece.split_once('=').and_then(|(name, source)| {
                let (secret, skey) = source.split_once(':').unwrap_or((source, name));
                (is_env_name(name) && !secret.trim().is_empty() && !skey.trim().is_empty()).then(
                    || {
                        (
                            name.to_owned(),
                            secret.trim().to_owned(),
                            skey.trim().to_owned(),
                        )
                    },
                )
            });
            match parsed {
                Some(p) => out.push(p),
                None => {
                    self.errors.push(format!(
                        "{key}: '{piece}' is not NAME=secret or NAME=secret:key"
                    ));
                    return Vec::new();
                }
            }
        }
        out
    }

    /// `"vol:/path,vol2:/p2"`.
    fn mounts(&mut self, key: &str) -> Vec<(String, String)> {
        let Some(v) = self.string(key) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for piece in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match piece.split_once(':') {
                Some((vol, path)) if !vol.trim().is_empty() && path.trim().starts_with('/') => {
                    out.push((vol.trim().to_owned(), path.trim().to_owned()));
                }
                _ => {
                    self.errors
                        .push(format!("{key}: '{piece}' is not volume:/absolute/path"));
                    return Vec::new();
                }
            }
        }
        out
    }
}

fn is_env_name(s: &str) -> bool {
    let mut b = s.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// Kubernetes' quantity grammar, non-negative: a decimal number, then an optional binary
/// (`Ki`…`Ei`) or decimal (`n u m k M G T P E`) suffix or an exponent (`e3`, `E-2`).
pub fn is_quantity(s: &str) -> bool {
    let s = s.strip_prefix('+').unwrap_or(s);
    let digits_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(digits_end);
    let dots = num.matches('.').count();
    if num.is_empty() || num == "." || dots > 1 {
        return false;
    }
    const SUFFIXES: &[&str] = &[
        "", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "n", "u", "m", "k", "M", "G", "T", "P", "E",
    ];
    if SUFFIXES.contains(&suffix) {
        return true;
    }
    let Some(exp) = suffix
        .strip_prefix('e')
        .or_else(|| suffix.strip_prefix('E'))
    else {
        return false;
    };
    let exp = exp
        .strip_prefix('+')
        .or_else(|| exp.strip_prefix('-'))
        .unwrap_or(exp);
    !exp.is_empty() && exp.bytes().all(|c| c.is_ascii_digit())
}

/// Go's `time.ParseDuration` forms: `300ms`, `1.5h`, `2h45m`, `0`.
fn is_go_duration(s: &str) -> bool {
    if s == "0" {
        return true;
    }
    let mut rest = s.strip_prefix(['+', '-']).unwrap_or(s);
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if n == 0 {
            return false;
        }
        rest = &rest[n..];
        let unit = ["ns", "us", "µs", "ms", "s", "m", "h"]
            .into_iter()
            .find(|u| rest.starts_with(u));
        match unit {
            Some(u) => rest = &rest[u.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn quantities() {
        for ok in ["100m", "0.5", "1", "128Mi", "1G", "1e3", "2E-2", ".5", "+1"] {
            assert!(is_quantity(ok), "{ok}");
        }
        for bad in ["abc", "", "1.2.3", "10MB", "-1", "1e", "m", "1 Mi"] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }

    #[test]
    fn durations() {
        for ok in ["5s", "1m30s", "300ms", "1.5h", "0"] {
            assert!(is_go_duration(ok), "{ok}");
        }
        for bad in ["5", "s", "5 s", "five"] {
            assert!(!is_go_duration(bad), "{bad}");
        }
    }

    #[test]
    fn app_id_from_generate_name_and_template_hash() {
        let pod = json!({"metadata": {"generateName": "orders-7d9f8b6c4-", "labels": {"pod-template-hash": "7d9f8b6c4"}}});
        assert_eq!(default_app_id(&pod), "orders");
        let pod = json!({"metadata": {"generateName": "batch-"}});
        assert_eq!(default_app_id(&pod), "batch");
        let pod = json!({"metadata": {"name": "web-0", "generateName": "web-"}});
        assert_eq!(default_app_id(&pod), "web-0");
    }

    #[test]
    fn env_values_keep_their_commas() {
        let a = ann(&[("dapr.io/env", "A=1,B=x,y, C=3")]);
        let spec = parse(&a, &json!({"metadata": {"name": "p"}})).unwrap();
        assert_eq!(
            spec.env,
            vec![
                ("A".into(), "1".into()),
                ("B".into(), "x,y".into()),
                ("C".into(), "3".into())
            ]
        );
    }

    #[test]
    fn every_bad_value_is_reported() {
        let a = ann(&[
            ("dapr.io/app-port", "abc"),
            ("dapr.io/sidecar-cpu-limit", "lots"),
            ("dapr.io/app-protocol", "ftp"),
            ("dapr.io/log-as-json", "maybe"),
            ("dapr.io/app-id", "Bad_ID"),
        ]);
        let errors = parse(&a, &json!({"metadata": {"name": "p"}})).unwrap_err();
        assert_eq!(errors.len(), 5, "{errors:?}");
        assert!(errors.iter().any(|e| e.starts_with("dapr.io/app-port")));
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("dapr.io/sidecar-cpu-limit"))
        );
    }

    #[test]
    fn env_from_secret_forms() {
        let a = ann(&[("dapr.io/env-from-secret", "A=s1,B=s2:k2")]);
        let spec = parse(&a, &json!({"metadata": {"name": "p"}})).unwrap();
        assert_eq!(
            spec.env_from_secret,
            vec![
                ("A".into(), "s1".into(), "A".into()),
                ("B".into(), "s2".into(), "k2".into())
            ]
        );
    }
}
