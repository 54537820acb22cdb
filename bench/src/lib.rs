//! `tandem-bench`: Tandem side by side with the direct path, in one run.
//!
//! It starts the sidecars (the release `tandem` binary given with `--tandem`), its own small
//! app when a scenario needs one (`tandem-bench app`, a child process), and measures:
//!
//! - `state`: state GET and SET for `state.in-memory`, `state.redis` and `state.postgresql`
//!   over HTTP/1.1, h2c and gRPC, against the same backend commands sent directly;
//! - `invoke`: app → sidecar → sidecar → app against app → app;
//! - `publish`: publish through the sidecar against a direct `XADD` (Redis Streams);
//! - `subscribe`: delivered messages per second to an app with a 5 ms handler;
//! - `cpu`: instructions per request in the sidecar, under callgrind;
//! - `footprint`: binary size, start-up time, idle RSS and CPU, RSS and CPU under load.
//!
//! Latencies are open loop at a fixed rate, measured from each request's scheduled instant
//! ([`load`]); throughput is closed loop. The report ([`report`]) is printed as Markdown on
//! stdout; progress goes to stderr. The exit status is non-zero when any scenario failed.
//!
//! Modules: [`settings`] (flags), [`load`] (the engine), [`clients`] (HTTP/1.1, h2c, gRPC),
//! [`procs`] (processes and `/proc`), [`resources`] (component YAML), [`app`] (the built-in
//! app), [`scenarios`], [`report`].

pub mod app;
pub mod clients;
pub mod load;
pub mod procs;
pub mod raw;
pub mod report;
pub mod resources;
pub mod scenarios;
pub mod settings;

use std::process::ExitCode;

use report::Report;
use settings::Settings;

/// The whole program, for `args` without the program name.
pub fn main(args: Vec<String>) -> ExitCode {
    if args.first().map(String::as_str) == Some("app") {
        return match app::main(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tandem-bench app: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let settings = match Settings::parse(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tandem-bench: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(settings.generator_threads)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let report = rt.block_on(run(&settings));
    println!("{}", header(&settings));
    println!("{}", report.render());
    if report.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs the scenarios of `s`.
pub async fn run(s: &Settings) -> Report {
    let mut report = Report::default();
    if !s.tandem.is_file() {
        report.failures.push(format!(
            "no tandem binary at {} (use --tandem)",
            s.tandem.display()
        ));
        return report;
    }
    for name in &s.scenarios {
        let started = std::time::Instant::now();
        eprintln!("== {name}");
        let result = match name.as_str() {
            "state" => scenarios::state::run(s, &mut report).await,
            "invoke" => scenarios::invoke::run(s, &mut report).await,
            "publish" => scenarios::publish::run(s, &mut report).await,
            "subscribe" => scenarios::subscribe::run(s, &mut report).await,
            "cpu" => scenarios::cpu::run(s, &mut report).await,
            "footprint" => scenarios::footprint::run(s, &mut report).await,
            other => Err(format!("unknown scenario {other}")),
        };
        eprintln!("== {name}: {:.1} s", started.elapsed().as_secs_f64());
        if let Err(e) = result {
            eprintln!("scenario {name} FAILED: {e}");
            report
                .failures
                .push(format!("{name}: {}", e.lines().next().unwrap_or("")));
        }
    }
    report
}

/// The run's conditions: machine, load average, settings.
pub fn header(s: &Settings) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    format!(
        "\n## tandem-bench{}\n\nMachine: {cores} × {cpu}; load average at the end {load}.\n\
         Open loop {} req/s for {:.1} s per path; closed loop {} in flight for {:.1} s{}; \
         latencies in ms from the scheduled send time; × = Tandem / direct.\n",
        if s.quick {
            " --quick (smoke test: figures mean little)"
        } else {
            ""
        },
        s.rate,
        s.open.as_secs_f64(),
        s.workers,
        s.closed.as_secs_f64(),
        if s.closed_rounds > 1 {
            format!(
                ", {} rounds taken in turn across each scenario's paths (closed figures: \
                 medians; ×closed: the median of the ratios round by round, lowest–highest \
                 in brackets)",
                s.closed_rounds
            )
        } else {
            String::new()
        }
    )
}
