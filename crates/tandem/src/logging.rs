//! Log set-up from `--log-level` and `--log-as-json`.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `TANDEM_LOG` (an `EnvFilter` directive) overrides the level.
pub(crate) fn init(level: &str, json: bool) {
    let level = match level {
        "warning" => "warn",
        "fatal" => "error",
        other => other,
    };
    let filter = EnvFilter::try_from_env("TANDEM_LOG")
        .unwrap_or_else(|_| EnvFilter::new(format!("{level},hyper=warn,h2=warn,tower=warn")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    let res = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init()
    } else {
        builder.try_init()
    };
    if let Err(e) = res {
        eprintln!("tandem: cannot initialise logging: {e}");
    }
}
