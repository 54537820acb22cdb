//! Footprint: binary size, start-up time, idle memory and CPU, memory and CPU under a
//! sustained load.
//!
//! - Binary: the size of the release `tandem` (the release profile strips symbols; `strip`
//!   is run on a copy to confirm).
//! - Start-up: wall time from spawning the process to the first `204` from
//!   `/v1.0/healthz/outbound`, polled every 0.5 ms over fresh connections from a plain thread;
//!   median (and max) of N runs, without components and with three local ones
//!   (`state.sqlite`, `pubsub.sqlite`, `secretstores.local.file`; their database files and
//!   the name-resolution database are kept across runs, as on a developer machine).
//! - Idle: a sidecar with `state.redis`, `pubsub.redis` and `secretstores.local.file`, and an
//!   `--app-port` where nothing listens yet. RSS (`VmRSS`) after the settle time; CPU
//!   (utime + stime from `/proc/<pid>/stat`) over the idle window while the app port is
//!   closed, then again over the same window once the app is up.
//! - Sustained load: the same sidecar answers state GETs (Redis, HTTP/1.1) at the open-loop
//!   rate for the load duration; RSS is sampled every second. Growth compares RSS at the end
//!   of the first window (60 s, or a third of a shorter load) with RSS at the end.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::load;
use crate::procs::{self, App, SidecarSpec, cpu_ticks, free_port, rss_kib};
use crate::report::{Measure, PathRow, Report};
use crate::resources;
use crate::settings::{Protocol, Settings, Store};

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// (size, how): the size of a stripped copy when `strip` is there.
fn binary_size(tandem: &Path) -> Result<(String, String), String> {
    let size = std::fs::metadata(tandem)
        .map_err(|e| format!("{}: {e}", tandem.display()))?
        .len();
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let copy = dir.path().join("tandem");
    let stripped = std::process::Command::new("strip")
        .arg("-o")
        .arg(&copy)
        .arg(tandem)
        .status()
        .ok()
        .filter(|s| s.success())
        .and_then(|_| std::fs::metadata(&copy).ok())
        .map(|m| m.len());
    let mb = |b: u64| b as f64 / (1024.0 * 1024.0);
    Ok(match stripped {
        Some(st) => (
            format!("{:.1} MiB", mb(st)),
            format!("release build, every built-in component; file {size} B, `strip` copy {st} B"),
        ),
        None => (
            format!("{:.1} MiB", mb(size)),
            format!("release build, every built-in component; file {size} B (no `strip` here)"),
        ),
    })
}

/// One start-up: spawn → first 204 from `/v1.0/healthz/outbound`.
fn startup_once(spec: &SidecarSpec, tandem: &Path) -> Result<Duration, String> {
    let mut spec = spec.clone();
    spec.http_port = free_port()?;
    let prepared = spec.prepare(tandem)?;
    let mut cmd = prepared.command()?;
    let started = Instant::now();
    let mut child = cmd.spawn().map_err(|e| format!("cannot start: {e}"))?;
    let result = loop {
        if poll_outbound(spec.http_port) == Some(204) {
            break Ok(started.elapsed());
        }
        if let Ok(Some(status)) = child.try_wait() {
            break Err(format!(
                "exited with {status}: {}",
                std::fs::read_to_string(&prepared.log).unwrap_or_default()
            ));
        }
        if started.elapsed() > Duration::from_secs(30) {
            break Err("not ready in 30 s".into());
        }
        std::thread::sleep(Duration::from_micros(500));
    };
    let _ = child.kill();
    let _ = child.wait();
    result
}

fn poll_outbound(port: u16) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.write_all(
        b"GET /v1.0/healthz/outbound HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
    .ok()?;
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).ok()?;
    std::str::from_utf8(&buf[9..12]).ok()?.parse().ok()
}

fn startup(s: &Settings, spec: SidecarSpec) -> Result<(f64, f64), String> {
    let mut runs = Vec::new();
    for _ in 0..s.startup_runs.max(1) {
        runs.push(startup_once(&spec, &s.tandem)?.as_secs_f64() * 1000.0);
    }
    runs.sort_by(f64::total_cmp);
    Ok((runs[runs.len() / 2], runs[runs.len() - 1]))
}

fn cpu_percent(ticks: u64, window: Duration) -> f64 {
    ticks as f64 / procs::clock_ticks() as f64 / window.as_secs_f64() * 100.0
}

/// Runs the footprint scenario.
pub async fn run(s: &Settings, report: &mut Report) -> Result<(), String> {
    eprintln!("footprint");
    let mut failed = Vec::new();
    match binary_size(&s.tandem) {
        Ok((v, how)) => report
            .measures
            .push(Measure::new("binary size, stripped", v, &how)),
        Err(e) => failed.push(e),
    }

    // Start-up.
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let secrets = dir.path().join("secrets.json");
    std::fs::write(&secrets, r#"{"bench-secret":"value"}"#).map_err(|e| e.to_string())?;
    let mut bare = SidecarSpec::new("bench-startup");
    bare.wrapper = s.wrapper();
    bare.name_resolution_db = Some(dir.path().join("nameresolution.db"));
    let local = bare
        .clone()
        .resource(
            "state.yaml",
            resources::sqlite_state(
                "statestore",
                &dir.path().join("state.db").display().to_string(),
            ),
        )
        .resource(
            "pubsub.yaml",
            resources::sqlite_pubsub(
                "pubsub",
                &dir.path().join("pubsub.db").display().to_string(),
            ),
        )
        .resource(
            "secrets.yaml",
            resources::local_secrets("secretstore", &secrets.display().to_string()),
        );
    for (label, spec) in [
        ("no components", bare),
        (
            "3 local components (sqlite state + pubsub, file secrets)",
            local,
        ),
    ] {
        let runs = s.startup_runs;
        let name = format!("start-up to healthz/outbound 204, {label}");
        let r = tokio::task::spawn_blocking({
            let s = s.clone();
            move || startup(&s, spec)
        })
        .await
        .map_err(|e| e.to_string())?;
        match r {
            Ok((median, max)) => {
                eprintln!("  {name}: median {median:.1} ms");
                report.measures.push(Measure::new(
                    &name,
                    format!("{median:.1} ms (max {max:.1})"),
                    &format!("median of {runs}; exec → first 204, polled every 0.5 ms"),
                ));
            }
            Err(e) => {
                report
                    .measures
                    .push(Measure::new(&name, "ERROR".into(), &e));
                failed.push(format!("{name}: {e}"));
            }
        }
    }

    // Idle, then sustained load, on one sidecar.
    let app_port = free_port()?;
    let mut spec = SidecarSpec::new(super::state::APP_ID)
        .resource(
            "redisstore.yaml",
            resources::redis_state("redisstore", &s.redis),
        )
        .resource(
            "redispubsub.yaml",
            resources::redis_pubsub("redispubsub", &s.redis, 10, resources::STREAM_MAX_LEN),
        )
        .resource(
            "secrets.yaml",
            resources::local_secrets("secretstore", &secrets.display().to_string()),
        );
    spec.app_port = Some(app_port);
    spec.wrapper = s.wrapper();
    let sidecar = spec.start(&s.tandem).await?;
    let pid = sidecar.pid;
    let components = "state.redis, pubsub.redis, secretstores.local.file";
    tokio::time::sleep(s.idle_settle).await;
    let idle_rss = rss_kib(pid).ok_or("no /proc status")?;
    eprintln!("  idle RSS {}", mib(idle_rss));
    report.measures.push(Measure::new(
        "RSS idle",
        mib(idle_rss),
        &format!(
            "VmRSS {:.0} s after ready; {components}",
            s.idle_settle.as_secs_f64()
        ),
    ));
    let t0 = cpu_ticks(pid).ok_or("no /proc stat")?;
    tokio::time::sleep(s.idle_cpu).await;
    let closed = cpu_ticks(pid).ok_or("no /proc stat")? - t0;
    let app = App::start(app_port, &[], &s.wrapper()).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t1 = cpu_ticks(pid).ok_or("no /proc stat")?;
    tokio::time::sleep(s.idle_cpu).await;
    let up = cpu_ticks(pid).ok_or("no /proc stat")? - t1;
    let window = s.idle_cpu.as_secs_f64();
    for (label, ticks) in [("app port not open", closed), ("app up", up)] {
        let pct = cpu_percent(ticks, s.idle_cpu);
        eprintln!("  idle CPU, {label}: {pct:.3} %");
        report.measures.push(Measure::new(
            &format!("idle CPU, {label}"),
            format!("{pct:.3} % of a core ({ticks} ticks)"),
            &format!(
                "utime+stime over {window:.0} s (1 tick = {} ms)",
                1000 / procs::clock_ticks()
            ),
        ));
    }

    super::state::seed(sidecar.http, Store::Redis).await?;
    let op = super::state::via(
        Protocol::Http1,
        sidecar.http,
        sidecar.grpc,
        Store::Redis,
        false,
    );
    load::sequential(&op, s.warmup).await?;
    let ticks_before = cpu_ticks(pid).ok_or("no /proc stat")?;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            let mut samples = Vec::new();
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if let Some(r) = rss_kib(pid) {
                    samples.push((start.elapsed(), r));
                }
            }
            samples
        })
    };
    eprintln!(
        "  sustained load: state GET redis HTTP/1.1 at {} req/s for {:.0} s",
        s.rate,
        s.load.as_secs_f64()
    );
    let lat = load::open_loop(op, s.rate, s.load).await;
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let cpu = (cpu_ticks(pid).unwrap_or(ticks_before) - ticks_before) as f64
        / procs::clock_ticks() as f64;
    let end_rss = rss_kib(pid).ok_or("no /proc status")?;
    let samples = sampler.await.map_err(|e| e.to_string())?;
    let scenario = format!("sustained state GET redis, {:.0} s", s.load.as_secs_f64());
    let mut row = PathRow::new(&scenario, "Tandem HTTP/1.1");
    match lat {
        Ok(lat) => {
            row.latency = Some(lat.percentiles_ms());
            row.lag_p99 = Some(lat.lag.value_at_quantile(0.99) as f64 / 1000.0);
            let per_1k = cpu / lat.sent as f64 * 1000.0;
            row.cpu_per_1k = Some(per_1k);
            report.measures.push(Measure::new(
                "CPU per 1 000 requests (state GET redis, HTTP/1.1)",
                format!("{per_1k:.3} s"),
                &format!(
                    "utime+stime over the sustained load at {} req/s ({:.2} of a core)",
                    s.rate,
                    cpu / s.load.as_secs_f64()
                ),
            ));
        }
        Err(e) => {
            row.error = Some(e.clone());
            failed.push(format!("sustained load: {e}"));
        }
    }
    report.paths.push(row);
    report.measures.push(Measure::new(
        "RSS at the end of the sustained load",
        mib(end_rss),
        &format!(
            "state GET redis at {} req/s for {:.0} s",
            s.rate,
            s.load.as_secs_f64()
        ),
    ));
    let window = if s.load >= Duration::from_secs(180) {
        Duration::from_secs(60)
    } else {
        s.load / 3
    };
    let first = samples
        .iter()
        .rev()
        .find(|(t, _)| *t <= window)
        .or(samples.first())
        .map(|(_, r)| *r);
    if let Some(first) = first {
        let growth = (end_rss as f64 - first as f64) / first as f64 * 100.0;
        report.measures.push(Measure::new(
            "RSS growth under load",
            format!("{growth:+.1} % ({} → {})", mib(first), mib(end_rss)),
            &format!(
                "end of the first {:.0} s vs end of the load",
                window.as_secs_f64()
            ),
        ));
    }
    sidecar.stop().await?;
    drop(app);
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed.join("; "))
    }
}
