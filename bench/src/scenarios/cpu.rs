//! Instructions per request in the sidecar, with callgrind: a CPU cost that machine noise
//! cannot blur.
//!
//! Method: the release sidecar runs under `valgrind --tool=callgrind` (the whole process,
//! every thread). After start-up and a warm-up, the counters are zeroed
//! (`callgrind_control -z`), N requests are sent one at a time by this process (which is not
//! under valgrind), and the counters are dumped (`callgrind_control -d`). The counters are
//! then zeroed again and dumped after the same wall time with no requests: that idle
//! baseline (timers, background tasks) is subtracted. Instructions per request =
//! (Ir(load) − Ir(idle)) / N. Requests are sequential (one in flight), the most expensive
//! case per request: no batching of wake-ups or reads across requests.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::invoke::{echo_op, payload, start_pair, via_path};
use super::state::{self, seed, via};
use crate::load::{self, Op};
use crate::report::{Measure, Report};
use crate::settings::{Protocol, Settings, Store};

/// Runs `callgrind_control` with `flag` on `pid`.
async fn control(flag: &str, pid: u32) -> Result<(), String> {
    let out = tokio::process::Command::new("callgrind_control")
        .args([flag, &pid.to_string()])
        .output()
        .await
        .map_err(|e| format!("callgrind_control: {e}"))?;
    if out.status.success() && String::from_utf8_lossy(&out.stdout).contains("OK") {
        Ok(())
    } else {
        Err(format!(
            "callgrind_control {flag} {pid}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A process under callgrind, with its dump counter.
struct Counted {
    pid: u32,
    out: PathBuf,
    dumps: u32,
}

impl Counted {
    fn new(pid: u32, out: &Path) -> Self {
        Self {
            pid,
            out: out.to_owned(),
            dumps: 0,
        }
    }

    async fn zero(&self) -> Result<(), String> {
        control("-z", self.pid).await
    }

    /// Dumps and returns the instructions counted since the last zero.
    async fn dump(&mut self) -> Result<u64, String> {
        control("-d", self.pid).await?;
        self.dumps += 1;
        let file = PathBuf::from(format!("{}.{}", self.out.display(), self.dumps));
        let started = Instant::now();
        loop {
            if let Some(ir) = std::fs::read_to_string(&file).ok().and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("summary:"))
                    .and_then(|v| v.trim().parse().ok())
            }) {
                return Ok(ir);
            }
            if started.elapsed() > Duration::from_secs(30) {
                return Err(format!("no callgrind dump at {}", file.display()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn wrapper(s: &Settings, out: &Path) -> Vec<String> {
    let mut w = s.wrapper();
    w.extend([
        "valgrind".to_owned(),
        "--tool=callgrind".to_owned(),
        format!("--callgrind-out-file={}", out.display()),
    ]);
    w
}

/// Counts `n` requests of `op` on every process of `procs`; instructions per request each.
async fn per_request(op: &Op, n: u64, procs: &mut [Counted]) -> Result<Vec<f64>, String> {
    for p in procs.iter() {
        p.zero().await?;
    }
    let started = Instant::now();
    load::sequential(op, n).await?;
    let elapsed = started.elapsed();
    let mut loaded = Vec::new();
    for p in procs.iter_mut() {
        loaded.push(p.dump().await?);
    }
    for p in procs.iter() {
        p.zero().await?;
    }
    tokio::time::sleep(elapsed).await;
    let mut out = Vec::new();
    for (p, l) in procs.iter_mut().zip(loaded) {
        let idle = p.dump().await?;
        out.push(l.saturating_sub(idle) as f64 / n as f64);
    }
    Ok(out)
}

fn available() -> bool {
    ["valgrind", "callgrind_control"].iter().all(|t| {
        std::process::Command::new(t)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

const HOW: &str = "callgrind, whole sidecar process; (Ir(N requests) − Ir(idle, same time)) / N; one request in flight";

/// Runs the instructions-per-request scenario.
pub async fn run(s: &Settings, report: &mut Report) -> Result<(), String> {
    if !available() {
        report.measures.push(Measure::new(
            "instructions per request",
            "skipped".into(),
            "valgrind / callgrind_control not installed",
        ));
        return Ok(());
    }
    let n = s.callgrind_requests.max(1);
    let temp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let dir = match &s.callgrind_dir {
        Some(d) => {
            std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
            d.as_path()
        }
        None => temp.path(),
    };
    let out = dir.join("state.cg");
    eprintln!("instructions per request (callgrind, {n} requests each)");

    let mut spec = state::sidecar(s, &[Store::Memory, Store::Redis]);
    spec.wrapper = wrapper(s, &out);
    let sidecar = spec.start(&s.tandem).await?;
    seed(sidecar.http, Store::Memory).await?;
    seed(sidecar.http, Store::Redis).await?;
    let mut procs = [Counted::new(sidecar.pid, &out)];
    for (name, protocol, store) in [
        (
            "state GET in-memory, HTTP/1.1",
            Protocol::Http1,
            Store::Memory,
        ),
        ("state GET redis, HTTP/1.1", Protocol::Http1, Store::Redis),
        ("state GET redis, gRPC", Protocol::Grpc, Store::Redis),
    ] {
        let op = via(protocol, sidecar.http, sidecar.grpc, store, false);
        load::sequential(&op, s.warmup.min(200)).await?;
        let ir = per_request(&op, n, &mut procs).await?;
        eprintln!("  {name}: {:.0} instructions/request", ir[0]);
        report.measures.push(Measure::new(
            &format!("instructions/request, {name}"),
            format!("{:.0}", ir[0]),
            HOW,
        ));
    }
    sidecar.stop().await?;

    let caller_out = dir.join("caller.cg");
    let callee_out = dir.join("callee.cg");
    let pair = start_pair(
        s,
        Vec::new(),
        wrapper(s, &caller_out),
        wrapper(s, &callee_out),
    )
    .await?;
    let op = echo_op(pair.caller.http, &via_path(), payload(s.payload));
    load::sequential(&op, s.warmup.min(200)).await?;
    let mut procs = [
        Counted::new(pair.caller.pid, &caller_out),
        Counted::new(pair.callee.pid, &callee_out),
    ];
    let ir = per_request(&op, n, &mut procs).await?;
    eprintln!(
        "  invoke: caller {:.0}, callee {:.0} instructions/request",
        ir[0], ir[1]
    );
    for (who, v) in [("caller sidecar", ir[0]), ("callee sidecar", ir[1])] {
        report.measures.push(Measure::new(
            &format!(
                "instructions/request, invoke {} B, {who}{}",
                s.payload,
                if s.mtls { ", mTLS" } else { "" }
            ),
            format!("{v:.0}"),
            HOW,
        ));
    }
    pair.caller.stop().await?;
    pair.callee.stop().await?;
    Ok(())
}
