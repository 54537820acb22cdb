//! `tandem injector`: the Kubernetes sidecar injector's flags.

use std::path::PathBuf;

use clap::Args;

/// Flags of `tandem injector`. Each can also come from the environment, as the Helm chart sets it.
#[derive(Debug, Args)]
pub(crate) struct InjectorArgs {
    /// HTTPS port of the webhook (`POST /mutate`, `GET /healthz`); 0 picks a free port.
    #[arg(long = "port", env = "INJECTOR_PORT", default_value_t = 4000)]
    pub(crate) port: u16,
    /// Address the webhook listens on.
    #[arg(
        long = "listen-address",
        env = "INJECTOR_LISTEN_ADDRESS",
        default_value = "0.0.0.0"
    )]
    pub(crate) listen_address: String,
    /// PEM certificate chain served by the webhook; re-read when the file changes.
    #[arg(long = "tls-cert", env = "TLS_CERT_FILE")]
    pub(crate) tls_cert: PathBuf,
    /// PEM private key of the certificate; re-read when the file changes.
    #[arg(long = "tls-key", env = "TLS_KEY_FILE")]
    pub(crate) tls_key: PathBuf,
    /// Plain-HTTP port for `GET /healthz` (kubelet probes); 0 picks a free port.
    #[arg(
        long = "healthz-port",
        env = "INJECTOR_HEALTHZ_PORT",
        default_value_t = 8080
    )]
    pub(crate) healthz_port: u16,
    /// Image of the injected `daprd` container (runs `/tandem sidecar --mode kubernetes`).
    #[arg(long = "sidecar-image", env = "SIDECAR_IMAGE")]
    pub(crate) sidecar_image: String,
    /// `imagePullPolicy` of the injected container.
    #[arg(long = "sidecar-image-pull-policy", env = "SIDECAR_IMAGE_PULL_POLICY", default_value = "IfNotPresent", value_parser = ["Always", "IfNotPresent", "Never"])]
    pub(crate) sidecar_image_pull_policy: String,
    /// Extra service accounts (`namespace:name`, `*` globs, comma-separated) whose pods are
    /// injected, beyond the built-in workload controllers.
    #[arg(
        long = "allowed-service-accounts",
        env = "ALLOWED_SERVICE_ACCOUNTS",
        value_delimiter = ',',
        default_value = ""
    )]
    pub(crate) allowed_service_accounts: Vec<String>,
    /// `runAsUser` of the injected container.
    #[arg(long = "sidecar-run-as-user", env = "SIDECAR_RUN_AS_USER")]
    pub(crate) sidecar_run_as_user: Option<i64>,
    /// `runAsGroup` of the injected container.
    #[arg(long = "sidecar-run-as-group", env = "SIDECAR_RUN_AS_GROUP")]
    pub(crate) sidecar_run_as_group: Option<i64>,
    /// Log level.
    #[arg(long = "log-level", default_value = "info", value_parser = ["debug", "info", "warn", "error"])]
    pub(crate) log_level: String,
    /// Log in JSON.
    #[arg(long = "log-as-json", num_args = 0..=1, default_missing_value = "true", default_value = "false", value_parser = clap::value_parser!(bool))]
    pub(crate) log_as_json: bool,
    /// Write the bound ports as JSON (`{"https":…,"healthz":…}`) to this file once listening.
    #[arg(long = "ports-file")]
    pub(crate) ports_file: Option<PathBuf>,
}
