//! `tandem sidecar`: daprd's command line.
//!
//! Every daprd flag is accepted, in `--flag value`, `--flag=value` and Go's `-flag value`
//! forms. Flags whose feature Tandem does not have yet are accepted with a warning when set.

use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args};

fn go_bool(s: &str) -> Result<bool, String> {
    tandem_components::metadata::parse_bool(s).ok_or_else(|| format!("invalid boolean '{s}'"))
}

/// daprd's flags.
#[derive(Debug, Clone, Args)]
#[allow(missing_docs)]
pub(crate) struct SidecarArgs {
    /// A unique id for the app; used for service discovery, state key prefixes and pub/sub groups.
    #[arg(long = "app-id", default_value = "")]
    pub(crate) app_id: String,
    /// The port the application listens on; empty means no app channel.
    #[arg(long = "app-port")]
    pub(crate) app_port: Option<u16>,
    /// Protocol of the application: http, https, h2c, grpc, grpcs.
    #[arg(long = "app-protocol", default_value = "http", value_parser = ["http", "https", "h2c", "grpc", "grpcs"])]
    pub(crate) app_protocol: String,
    /// Network address the application listens on.
    #[arg(long = "app-channel-address", default_value = "127.0.0.1")]
    pub(crate) app_channel_address: String,
    /// Bound on concurrent calls to the app; -1 for none.
    #[arg(long = "app-max-concurrency", default_value_t = -1, allow_negative_numbers = true)]
    pub(crate) app_max_concurrency: i64,
    /// Deprecated: use --app-protocol https|grpcs.
    #[arg(long = "app-ssl", num_args = 0..=1, default_missing_value = "true", default_value = "false", value_parser = go_bool)]
    pub(crate) app_ssl: bool,
    /// Enable app health checks.
    #[arg(long = "enable-app-health-check", num_args = 0..=1, default_missing_value = "true", default_value = "false", value_parser = go_bool)]
    pub(crate) enable_app_health_check: bool,
    /// Path of the HTTP health probe.
    #[arg(long = "app-health-check-path", default_value = "/healthz")]
    pub(crate) app_health_check_path: String,
    /// Seconds between app health probes.
    #[arg(long = "app-health-probe-interval", default_value_t = 5)]
    pub(crate) app_health_probe_interval: u64,
    /// Timeout of an app health probe, in milliseconds.
    #[arg(long = "app-health-probe-timeout", default_value_t = 500)]
    pub(crate) app_health_probe_timeout: u64,
    /// Consecutive failures before the app counts as unhealthy.
    #[arg(long = "app-health-threshold", default_value_t = 3)]
    pub(crate) app_health_threshold: u32,
    /// HTTP port of the Dapr API (0 picks a free port).
    #[arg(long = "dapr-http-port", default_value_t = 3500)]
    pub(crate) dapr_http_port: u16,
    /// gRPC port of the Dapr API (0 picks a free port).
    #[arg(long = "dapr-grpc-port", default_value_t = 50001)]
    pub(crate) dapr_grpc_port: u16,
    /// Port for sidecar-to-sidecar calls (Tandem's HTTP internal protocol, not daprd's gRPC);
    /// any free port when unset (0 works too). The bound port is registered in name resolution.
    #[arg(long = "dapr-internal-grpc-port")]
    pub(crate) dapr_internal_grpc_port: Option<u16>,
    /// Address the sidecar-to-sidecar listener binds (default: all interfaces).
    #[arg(long = "dapr-internal-grpc-listen-address", default_value = "")]
    pub(crate) dapr_internal_grpc_listen_address: String,
    /// Comma-separated addresses the APIs listen on (default: all interfaces).
    #[arg(long = "dapr-listen-addresses", default_value = "")]
    pub(crate) dapr_listen_addresses: String,
    #[arg(long = "dapr-public-port")]
    pub(crate) dapr_public_port: Option<u16>,
    #[arg(long = "dapr-public-listen-address", default_value = "")]
    pub(crate) dapr_public_listen_address: String,
    /// Port of the Prometheus metrics endpoint.
    #[arg(long = "metrics-port", default_value_t = 9090)]
    pub(crate) metrics_port: u16,
    /// Address the metrics endpoint binds.
    #[arg(long = "metrics-listen-address", default_value = "0.0.0.0")]
    pub(crate) metrics_listen_address: String,
    /// Serve Prometheus metrics.
    #[arg(long = "enable-metrics", num_args = 0..=1, default_missing_value = "true", default_value = "true", value_parser = go_bool)]
    pub(crate) enable_metrics: bool,
    #[arg(long = "profile-port", default_value_t = 7777)]
    pub(crate) profile_port: u16,
    #[arg(long = "enable-profiling", num_args = 0..=1, default_missing_value = "true", default_value = "false", value_parser = go_bool)]
    pub(crate) enable_profiling: bool,
    /// Folders of resource YAML files (repeatable, or comma-separated).
    #[arg(long = "resources-path", value_delimiter = ',')]
    pub(crate) resources_path: Vec<PathBuf>,
    /// Deprecated alias of --resources-path.
    #[arg(long = "components-path")]
    pub(crate) components_path: Option<PathBuf>,
    /// Configuration file(s).
    #[arg(long = "config", value_delimiter = ',')]
    pub(crate) config: Vec<PathBuf>,
    /// standalone or kubernetes.
    #[arg(long = "mode", default_value = "standalone", value_parser = ["standalone", "kubernetes"])]
    pub(crate) mode: String,
    /// debug, info, warn, error or fatal.
    #[arg(long = "log-level", default_value = "info", value_parser = ["debug", "info", "warn", "warning", "error", "fatal"])]
    pub(crate) log_level: String,
    /// Log in JSON.
    #[arg(long = "log-as-json", num_args = 0..=1, default_missing_value = "true", default_value = "false", value_parser = go_bool)]
    pub(crate) log_as_json: bool,
    /// Log every API call.
    #[arg(long = "enable-api-logging", num_args = 0..=1, default_missing_value = "true", value_parser = go_bool)]
    pub(crate) enable_api_logging: Option<bool>,
    /// Largest accepted request body (resource quantity, e.g. 4Mi).
    #[arg(long = "max-body-size")]
    pub(crate) max_body_size: Option<String>,
    /// Deprecated: largest request body in MB.
    #[arg(long = "dapr-http-max-request-size")]
    pub(crate) dapr_http_max_request_size: Option<u64>,
    #[arg(long = "read-buffer-size")]
    pub(crate) read_buffer_size: Option<String>,
    #[arg(long = "dapr-http-read-buffer-size")]
    pub(crate) dapr_http_read_buffer_size: Option<u64>,
    #[arg(long = "unix-domain-socket", default_value = "")]
    pub(crate) unix_domain_socket: String,
    /// Seconds to drain in-flight work on shutdown.
    #[arg(long = "dapr-graceful-shutdown-seconds", default_value_t = 5)]
    pub(crate) dapr_graceful_shutdown_seconds: u64,
    #[arg(long = "dapr-block-shutdown-duration")]
    pub(crate) dapr_block_shutdown_duration: Option<String>,
    #[arg(long = "allowed-origins", default_value = "")]
    pub(crate) allowed_origins: String,
    /// mTLS between sidecars (SPIFFE identities; certificates from DAPR_TRUST_ANCHORS,
    /// DAPR_CERT_CHAIN and DAPR_CERT_KEY, else from the local CA under ~/.tandem).
    #[arg(long = "enable-mtls", num_args = 0..=1, default_missing_value = "true", default_value = "false", value_parser = go_bool)]
    pub(crate) enable_mtls: bool,
    #[arg(long = "sentry-address", default_value = "")]
    pub(crate) sentry_address: String,
    #[arg(long = "control-plane-address", default_value = "")]
    pub(crate) control_plane_address: String,
    #[arg(long = "control-plane-trust-domain", default_value = "localhost")]
    pub(crate) control_plane_trust_domain: String,
    #[arg(long = "control-plane-namespace", default_value = "default")]
    pub(crate) control_plane_namespace: String,
    #[arg(long = "sentry-request-jwt-audiences", value_delimiter = ',')]
    pub(crate) sentry_request_jwt_audiences: Vec<String>,
    #[arg(long = "disable-builtin-k8s-secret-store", num_args = 0..=1, default_missing_value = "true", default_value = "false", value_parser = go_bool)]
    pub(crate) disable_builtin_k8s_secret_store: bool,
    #[arg(long = "disable-init-endpoints", value_delimiter = ',')]
    pub(crate) disable_init_endpoints: Vec<String>,
    #[arg(long = "placement-host-address", default_value = "")]
    pub(crate) placement_host_address: String,
    #[arg(long = "scheduler-host-address", value_delimiter = ',')]
    pub(crate) scheduler_host_address: Vec<String>,
    #[arg(long = "scheduler-job-streams", default_value_t = 3)]
    pub(crate) scheduler_job_streams: u32,
    #[arg(long = "actors-disseminate-timeout")]
    pub(crate) actors_disseminate_timeout: Option<String>,
    #[arg(long = "hot-reload-reconcile-interval")]
    pub(crate) hot_reload_reconcile_interval: Option<String>,
    #[arg(long = "app-binding-options-timeout")]
    pub(crate) app_binding_options_timeout: Option<String>,
    #[arg(long = "reminders-service", hide = true)]
    pub(crate) reminders_service: Option<String>,
    #[arg(long = "actors-service", hide = true)]
    pub(crate) actors_service: Option<String>,
    /// Wait for the outbound health of the sidecar on --dapr-http-port, then exit.
    #[arg(long = "wait", num_args = 0..=1, default_missing_value = "true", default_value = "false", value_parser = go_bool)]
    pub(crate) wait: bool,
    /// Print the version and exit.
    #[arg(long = "version", num_args = 0..=1, default_missing_value = "true", default_value = "false", value_parser = go_bool)]
    pub(crate) version: bool,
    /// Print build information and exit.
    #[arg(long = "build-info", num_args = 0..=1, default_missing_value = "true", default_value = "false", value_parser = go_bool)]
    pub(crate) build_info: bool,
    /// Tandem: write the bound ports as JSON to this file once listening.
    #[arg(long = "ports-file")]
    pub(crate) ports_file: Option<PathBuf>,
}

/// daprd flags accepted but without effect in this build; a warning names them when set.
const NOT_YET: &[&str] = &[
    "app_ssl",
    "dapr_public_port",
    "dapr_public_listen_address",
    "profile_port",
    "enable_profiling",
    "read_buffer_size",
    "dapr_http_read_buffer_size",
    "unix_domain_socket",
    "dapr_block_shutdown_duration",
    "allowed_origins",
    "sentry_address",
    "control_plane_address",
    "control_plane_trust_domain",
    "control_plane_namespace",
    "sentry_request_jwt_audiences",
    "disable_builtin_k8s_secret_store",
    "disable_init_endpoints",
    "placement_host_address",
    "scheduler_host_address",
    "scheduler_job_streams",
    "actors_disseminate_timeout",
    "app_binding_options_timeout",
    "reminders_service",
    "actors_service",
];

/// The flags given on the command line that have no effect yet.
pub(crate) fn unimplemented_flags_set(matches: &ArgMatches) -> Vec<String> {
    NOT_YET
        .iter()
        .filter(|id| matches.value_source(id) == Some(ValueSource::CommandLine))
        .map(|id| format!("--{}", id.replace('_', "-")))
        .collect()
}

impl SidecarArgs {
    /// All resource folders (`--resources-path` and the deprecated `--components-path`).
    pub(crate) fn resource_paths(&self) -> Vec<PathBuf> {
        let mut paths = self.resources_path.clone();
        if let Some(p) = &self.components_path {
            paths.push(p.clone());
        }
        paths
    }

    /// `--max-body-size` in bytes (default 4 MiB), honouring the deprecated MB flag.
    pub(crate) fn max_body_size(&self) -> Result<usize, String> {
        if let Some(q) = &self.max_body_size {
            return super::quantity::parse_bytes(q)
                .map(|b| b as usize)
                .map_err(|e| format!("--max-body-size: {e}"));
        }
        if let Some(mb) = self.dapr_http_max_request_size {
            return Ok((mb as usize) << 20);
        }
        Ok(4 << 20)
    }

    /// The addresses the API servers bind.
    pub(crate) fn listen_addresses(&self) -> Vec<String> {
        let list: Vec<String> = self
            .dapr_listen_addresses
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| s.trim_start_matches('[').trim_end_matches(']').to_owned())
            .collect();
        if list.is_empty() {
            vec!["0.0.0.0".to_owned()]
        } else {
            list
        }
    }
}
