//! The `tandem` binary. `main` only wires: parse flags → build → run → drain on signal.
//!
//! Invoked under the name `daprd` (a symlink), it behaves as `tandem sidecar`.

mod api_log;
mod cli;
mod heap;
mod injector;
#[cfg(feature = "kubernetes")]
mod kubernetes;
mod logging;
mod metrics;
mod mtls;
mod observe;
mod process;
mod registry;
mod reload;
mod resident;
mod run;
mod sched;
mod sidecar;

use std::process::ExitCode;

use clap::{Args, CommandFactory, FromArgMatches};

fn main() -> ExitCode {
    heap::tune();
    let args = cli::normalize_args(std::env::args());
    let invoked_as = args
        .first()
        .and_then(|a| {
            std::path::Path::new(a)
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
        })
        .unwrap_or_default();

    let (sidecar_args, matches) = if invoked_as == "daprd" {
        let cmd = cli::sidecar::SidecarArgs::augment_args(clap::Command::new("daprd"));
        let matches = cmd.get_matches_from(args);
        match cli::sidecar::SidecarArgs::from_arg_matches(&matches) {
            Ok(a) => (a, matches),
            Err(e) => e.exit(),
        }
    } else {
        let matches = cli::Cli::command().get_matches_from(args);
        let parsed = cli::Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
        match parsed.command {
            cli::Command::Run(a) => return run::main(*a),
            cli::Command::Injector(a) => return injector::main(*a),
            #[cfg(feature = "kubernetes")]
            cli::Command::Operator(a) => return kubernetes::operator_main(*a),
            cli::Command::Sidecar(a) => {
                let sub = matches
                    .subcommand_matches("sidecar")
                    .cloned()
                    .unwrap_or_default();
                (*a, sub)
            }
        }
    };
    sidecar::main(sidecar_args, &matches)
}
