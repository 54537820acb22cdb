//! `tandem run`: `dapr run`'s command line.

use std::path::PathBuf;

use clap::Args;

fn go_bool(s: &str) -> Result<bool, String> {
    tandem_components::metadata::parse_bool(s).ok_or_else(|| format!("invalid boolean '{s}'"))
}

/// `dapr run`'s flags, then `-- <app command>`.
#[derive(Debug, Clone, Args)]
pub(crate) struct RunArgs {
    /// The app's id (default: the app command's name, or "tandem-app").
    #[arg(long = "app-id", short = 'a')]
    pub(crate) app_id: Option<String>,
    /// The port the app listens on.
    #[arg(long = "app-port", short = 'p')]
    pub(crate) app_port: Option<u16>,
    /// http, https, h2c, grpc or grpcs.
    #[arg(long = "app-protocol", short = 'P', default_value = "http")]
    pub(crate) app_protocol: String,
    /// The address the app listens on.
    #[arg(long = "app-channel-address", default_value = "127.0.0.1")]
    pub(crate) app_channel_address: String,
    /// Sidecar HTTP port (default 3500, or a free port when taken).
    #[arg(long = "dapr-http-port", short = 'H')]
    pub(crate) dapr_http_port: Option<u16>,
    /// Sidecar gRPC port (default 50001, or a free port when taken).
    #[arg(long = "dapr-grpc-port", short = 'G')]
    pub(crate) dapr_grpc_port: Option<u16>,
    /// Sidecar internal port for other sidecars.
    #[arg(long = "dapr-internal-grpc-port", short = 'I')]
    pub(crate) dapr_internal_grpc_port: Option<u16>,
    /// Metrics port.
    #[arg(long = "metrics-port", short = 'M')]
    pub(crate) metrics_port: Option<u16>,
    /// Resource folders (default: the embedded local defaults under ~/.tandem).
    #[arg(
        long = "resources-path",
        short = 'd',
        alias = "components-path",
        value_delimiter = ','
    )]
    pub(crate) resources_path: Vec<PathBuf>,
    /// Configuration file.
    #[arg(long = "config", short = 'c')]
    pub(crate) config: Option<PathBuf>,
    /// Sidecar log level.
    #[arg(long = "log-level", default_value = "info")]
    pub(crate) log_level: String,
    /// Log every API call.
    #[arg(long = "enable-api-logging", num_args = 0..=1, default_missing_value = "true", default_value = "false", value_parser = go_bool)]
    pub(crate) enable_api_logging: bool,
    /// Bound on concurrent calls to the app.
    #[arg(long = "app-max-concurrency", default_value_t = -1, allow_negative_numbers = true)]
    pub(crate) app_max_concurrency: i64,
    /// Probe the app's health.
    #[arg(long = "enable-app-health-check", num_args = 0..=1, default_missing_value = "true", default_value = "false", value_parser = go_bool)]
    pub(crate) enable_app_health_check: bool,
    /// Health probe path.
    #[arg(long = "app-health-check-path")]
    pub(crate) app_health_check_path: Option<String>,
    /// Seconds between probes.
    #[arg(long = "app-health-probe-interval")]
    pub(crate) app_health_probe_interval: Option<u64>,
    /// Probe timeout in milliseconds.
    #[arg(long = "app-health-probe-timeout")]
    pub(crate) app_health_probe_timeout: Option<u64>,
    /// Failures before unhealthy.
    #[arg(long = "app-health-threshold")]
    pub(crate) app_health_threshold: Option<u32>,
    /// Largest request body.
    #[arg(long = "max-body-size")]
    pub(crate) max_body_size: Option<String>,
    /// Accepted for compatibility; no effect yet.
    #[arg(long = "placement-host-address")]
    pub(crate) placement_host_address: Option<String>,
    /// Accepted for compatibility; no effect yet.
    #[arg(long = "scheduler-host-address")]
    pub(crate) scheduler_host_address: Option<String>,
    /// Accepted for compatibility; no effect yet.
    #[arg(long = "unix-domain-socket", short = 'u')]
    pub(crate) unix_domain_socket: Option<String>,
    /// Accepted for compatibility; no effect yet.
    #[arg(long = "enable-profiling", num_args = 0..=1, default_missing_value = "true", value_parser = go_bool)]
    pub(crate) enable_profiling: Option<bool>,
    /// Accepted for compatibility; no effect yet.
    #[arg(long = "profile-port")]
    pub(crate) profile_port: Option<u16>,
    /// Accepted for compatibility; no effect yet.
    #[arg(long = "run-file", short = 'f')]
    pub(crate) run_file: Option<PathBuf>,
    /// The app command and its arguments.
    #[arg(last = true)]
    pub(crate) command: Vec<String>,
}
