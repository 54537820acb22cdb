//! Command-line settings of a benchmark run.

use std::path::PathBuf;
use std::time::Duration;

/// A state store under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    /// `state.in-memory` (no direct path).
    Memory,
    /// `state.redis`.
    Redis,
    /// `state.postgresql` v1.
    Postgres,
}

/// A protocol between the app and the sidecar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 keep-alive through the benchmark's own lean client ([`crate::raw::H1`]).
    Http1,
    /// HTTP/1.1 keep-alive through `hyper`'s pooled client (a connection task per
    /// connection, header maps both ways).
    Http1Hyper,
    /// HTTP/2 with prior knowledge.
    H2c,
    /// gRPC (`GetState` / `SaveState`) through the benchmark's own lean unary client
    /// ([`crate::raw::Grpc`]).
    Grpc,
    /// The same calls through the benchmark's lean client on one multiplexed connection
    /// ([`crate::raw::GrpcMux`]), as gRPC clients and the direct Redis path connect.
    GrpcMux,
    /// The same calls through tonic's generated client (a task per call in the generator).
    GrpcTonic,
}

/// Everything a run needs.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The `tandem` binary.
    pub tandem: PathBuf,
    /// Quick mode (a smoke test).
    pub quick: bool,
    /// Scenarios to run.
    pub scenarios: Vec<String>,
    /// Open-loop rate, requests per second.
    pub rate: u64,
    /// Open-loop duration per path.
    pub open: Duration,
    /// Closed-loop duration per path.
    pub closed: Duration,
    /// Closed-loop workers (requests in flight).
    pub workers: usize,
    /// Worker threads of the generator's own runtime.
    pub generator_threads: usize,
    /// Closed loops per path, taken in turn across a scenario's paths (direct first); a
    /// path's closed-loop figures are the medians over them, its ratio the median of the
    /// ratios round by round.
    pub closed_rounds: usize,
    /// Sequential warm-up requests per path.
    pub warmup: u64,
    /// Redis `host:port`.
    pub redis: String,
    /// PostgreSQL connection string.
    pub postgres: String,
    /// State stores of the state scenario.
    pub stores: Vec<Store>,
    /// `get`, `set`.
    pub ops: Vec<String>,
    /// Protocols of the state scenario.
    pub protocols: Vec<Protocol>,
    /// Invocation / publish payload size in bytes.
    pub payload: usize,
    /// Messages per subscriber-delivery run.
    pub messages: u64,
    /// Handler time of the subscriber app.
    pub handler_delay: Duration,
    /// Requests counted under callgrind per measure.
    pub callgrind_requests: u64,
    /// Where the callgrind dumps are kept (for `callgrind_annotate`); a temporary folder,
    /// deleted after the run, when unset.
    pub callgrind_dir: Option<PathBuf>,
    /// Time between ready and the idle RSS reading.
    pub idle_settle: Duration,
    /// Idle CPU window (once with the app port closed, once with the app up).
    pub idle_cpu: Duration,
    /// Sustained-load duration.
    pub load: Duration,
    /// Start-up runs per configuration (median reported).
    pub startup_runs: usize,
    /// Pin sidecars and apps to CPU 1 (`taskset -c 1`); the script pins the generator to 0.
    pub pin: bool,
    /// mTLS between the two sidecars of the `invoke` and `cpu` scenarios (from a local CA
    /// made in a temporary folder).
    pub mtls: bool,
}

/// Every scenario, in the order `all` runs them.
pub const ALL: &[&str] = &[
    "state",
    "invoke",
    "publish",
    "subscribe",
    "cpu",
    "footprint",
];

const USAGE: &str = "usage: tandem-bench [SCENARIO…] [--quick] [--tandem PATH] [--rate N] \
[--seconds S] [--closed-seconds S] [--closed-rounds N] [--workers N] [--generator-threads N] [--warmup N] [--redis HOST:PORT] \
[--postgres CONNSTR] [--stores memory,redis,postgresql] [--ops get,set] \
[--protocols http1,http1-hyper,h2c,grpc,grpc-mux,grpc-tonic] [--payload BYTES] [--messages N] [--callgrind-requests N] [--callgrind-dir DIR] \
[--idle-settle S] [--idle-seconds S] [--load-seconds S] [--startup-runs N] [--pin] [--mtls]
scenarios: all (default), state, invoke, publish, subscribe, cpu, footprint";

fn secs(v: &str, flag: &str) -> Result<Duration, String> {
    v.parse::<f64>()
        .ok()
        .filter(|s| *s >= 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("{flag} takes a number of seconds"))
}

fn num<T: std::str::FromStr>(v: &str, flag: &str) -> Result<T, String> {
    v.parse().map_err(|_| format!("{flag} takes a number"))
}

impl Settings {
    /// Parses the command line (without the program name).
    pub fn parse(args: &[String]) -> Result<Settings, String> {
        let quick = args.iter().any(|a| a == "--quick");
        let mut s = Settings {
            tandem: PathBuf::from("target/release/tandem"),
            quick,
            scenarios: Vec::new(),
            rate: if quick { 200 } else { 1000 },
            open: Duration::from_secs_f64(if quick { 0.5 } else { 10.0 }),
            closed: Duration::from_secs_f64(if quick { 0.3 } else { 10.0 }),
            workers: if quick { 4 } else { 16 },
            generator_threads: 2,
            closed_rounds: 1,
            warmup: if quick { 30 } else { 500 },
            redis: "127.0.0.1:6379".into(),
            postgres: "host=127.0.0.1 port=5432 user=postgres dbname=test".into(),
            stores: vec![Store::Memory, Store::Redis, Store::Postgres],
            ops: vec!["get".into(), "set".into()],
            protocols: vec![
                Protocol::Http1,
                Protocol::H2c,
                Protocol::Grpc,
                Protocol::GrpcMux,
            ],
            payload: 1024,
            messages: if quick { 300 } else { 10_000 },
            handler_delay: Duration::from_millis(5),
            callgrind_requests: if quick { 300 } else { 5000 },
            callgrind_dir: None,
            idle_settle: Duration::from_secs(if quick { 2 } else { 10 }),
            idle_cpu: Duration::from_secs(if quick { 5 } else { 60 }),
            load: Duration::from_secs(if quick { 6 } else { 300 }),
            startup_runs: if quick { 5 } else { 20 },
            pin: false,
            mtls: false,
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let mut val = || it.next().cloned().ok_or(format!("{flag} needs a value"));
            match flag.as_str() {
                "--quick" => {}
                "--pin" => s.pin = true,
                "--mtls" => s.mtls = true,
                "-h" | "--help" => return Err(USAGE.into()),
                "--tandem" => s.tandem = PathBuf::from(val()?),
                "--rate" => s.rate = num(&val()?, flag)?,
                "--seconds" => s.open = secs(&val()?, flag)?,
                "--closed-seconds" => s.closed = secs(&val()?, flag)?,
                "--workers" => s.workers = num(&val()?, flag)?,
                "--closed-rounds" => s.closed_rounds = num::<usize>(&val()?, flag)?.max(1),
                "--generator-threads" => s.generator_threads = num::<usize>(&val()?, flag)?.max(1),
                "--warmup" => s.warmup = num(&val()?, flag)?,
                "--redis" => s.redis = val()?,
                "--postgres" => s.postgres = val()?,
                "--payload" => s.payload = num(&val()?, flag)?,
                "--messages" => s.messages = num(&val()?, flag)?,
                "--callgrind-requests" => s.callgrind_requests = num(&val()?, flag)?,
                "--callgrind-dir" => s.callgrind_dir = Some(PathBuf::from(val()?)),
                "--idle-settle" => s.idle_settle = secs(&val()?, flag)?,
                "--idle-seconds" => s.idle_cpu = secs(&val()?, flag)?,
                "--load-seconds" => s.load = secs(&val()?, flag)?,
                "--startup-runs" => s.startup_runs = num(&val()?, flag)?,
                "--stores" => {
                    s.stores = val()?
                        .split(',')
                        .map(|v| match v.trim() {
                            "memory" | "in-memory" => Ok(Store::Memory),
                            "redis" => Ok(Store::Redis),
                            "postgres" | "postgresql" => Ok(Store::Postgres),
                            o => Err(format!("unknown store {o}")),
                        })
                        .collect::<Result<_, _>>()?
                }
                "--ops" => {
                    s.ops = val()?.split(',').map(|v| v.trim().to_owned()).collect();
                    if let Some(o) = s.ops.iter().find(|o| !["get", "set"].contains(&o.as_str())) {
                        return Err(format!("unknown op {o}"));
                    }
                }
                "--protocols" => {
                    s.protocols = val()?
                        .split(',')
                        .map(|v| match v.trim() {
                            "http1" | "http" => Ok(Protocol::Http1),
                            "http1-hyper" => Ok(Protocol::Http1Hyper),
                            "h2c" | "http2" => Ok(Protocol::H2c),
                            "grpc" => Ok(Protocol::Grpc),
                            "grpc-mux" => Ok(Protocol::GrpcMux),
                            "grpc-tonic" => Ok(Protocol::GrpcTonic),
                            o => Err(format!("unknown protocol {o}")),
                        })
                        .collect::<Result<_, _>>()?
                }
                f if f.starts_with('-') => return Err(format!("unknown flag {f}\n{USAGE}")),
                "all" => s.scenarios.extend(ALL.iter().map(|a| (*a).to_owned())),
                name if ALL.contains(&name) => s.scenarios.push(name.to_owned()),
                other => return Err(format!("unknown scenario {other}\n{USAGE}")),
            }
        }
        if s.scenarios.is_empty() {
            s.scenarios = ALL.iter().map(|a| (*a).to_owned()).collect();
        }
        Ok(s)
    }

    /// The command sidecars and apps run under (`taskset -c 1` when pinning).
    pub fn wrapper(&self) -> Vec<String> {
        if self.pin {
            vec!["taskset".into(), "-c".into(), "1".into()]
        } else {
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Settings, String> {
        Settings::parse(&args.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>())
    }

    #[test]
    fn closed_rounds_default_to_one_and_take_a_count() {
        assert_eq!(parse(&[]).unwrap().closed_rounds, 1);
        assert_eq!(parse(&["--closed-rounds", "5"]).unwrap().closed_rounds, 5);
        assert_eq!(parse(&["--closed-rounds", "0"]).unwrap().closed_rounds, 1);
        let err = parse(&["--closed-rounds", "many"]).err().unwrap();
        assert!(err.contains("--closed-rounds takes a number"), "{err}");
    }
}
