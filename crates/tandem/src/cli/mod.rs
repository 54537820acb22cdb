//! Command-line front: `tandem sidecar` (daprd's flags), `tandem injector` and the small tools.

pub(crate) mod injector;
#[cfg(feature = "kubernetes")]
pub(crate) mod operator;
pub(crate) mod quantity;
pub(crate) mod run;
pub(crate) mod sidecar;

use clap::{Parser, Subcommand};

/// Tandem: a light, Dapr-compatible sidecar runtime.
#[derive(Debug, Parser)]
#[command(name = "tandem", version, about, long_about = None)]
pub(crate) struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Tandem's commands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the sidecar (accepts daprd's flags; also what `daprd` runs).
    Sidecar(Box<sidecar::SidecarArgs>),
    /// Run an app with its sidecar, like `dapr run` (embedded local defaults when no
    /// `--resources-path` is given).
    Run(Box<run::RunArgs>),
    /// Run the Kubernetes sidecar injector: a mutating admission webhook that adds a `daprd`
    /// container running Tandem to pods annotated `dapr.io/enabled: "true"`.
    Injector(Box<injector::InjectorArgs>),
    /// Keep the `<app-id>-dapr` Service of every Deployment and StatefulSet annotated
    /// `dapr.io/enabled: "true"` (Kubernetes).
    #[cfg(feature = "kubernetes")]
    Operator(Box<operator::OperatorArgs>),
}

/// Rewrites Go-style single-dash long flags (`-app-id`) to `--app-id`, as daprd accepts both.
/// Values (`-1`) and short flags (`-h`) are left alone.
pub(crate) fn normalize_args(args: impl IntoIterator<Item = String>) -> Vec<String> {
    args.into_iter()
        .map(|a| {
            let is_single_dash_long = a.starts_with('-')
                && !a.starts_with("--")
                && a.len() > 2
                && a[1..]
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic());
            if is_single_dash_long {
                format!("-{a}")
            } else {
                a
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_dash_long_flags() {
        let out = normalize_args(
            [
                "daprd",
                "-app-id",
                "a",
                "--app-port",
                "1",
                "-app-max-concurrency",
                "-1",
                "-h",
            ]
            .map(String::from),
        );
        assert_eq!(
            out,
            [
                "daprd",
                "--app-id",
                "a",
                "--app-port",
                "1",
                "--app-max-concurrency",
                "-1",
                "-h"
            ]
        );
    }
}
