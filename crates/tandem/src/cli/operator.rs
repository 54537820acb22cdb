//! `tandem operator`: keeps the `<app-id>-dapr` Service of every Dapr-enabled workload.

use std::path::PathBuf;

use clap::Args;

/// The operator's flags.
#[derive(Debug, Clone, Args)]
pub(crate) struct OperatorArgs {
    /// Only watch workloads in this namespace (default: all namespaces).
    #[arg(long = "watch-namespace", env = "WATCH_NAMESPACE")]
    pub(crate) watch_namespace: Option<String>,
    /// A kubeconfig to use instead of the in-cluster service account or KUBECONFIG.
    #[arg(long = "kubeconfig")]
    pub(crate) kubeconfig: Option<PathBuf>,
    /// debug, info, warn, error.
    #[arg(long = "log-level", default_value = "info", value_parser = ["debug", "info", "warn", "warning", "error", "fatal"])]
    pub(crate) log_level: String,
    /// Log in JSON.
    #[arg(long = "log-as-json")]
    pub(crate) log_as_json: bool,
}
