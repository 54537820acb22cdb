//! Service invocation: app → sidecar → sidecar → app against app → app directly.
//!
//! The benchmark starts the built-in echo app, a callee sidecar (`bench-echo`, `--app-port`
//! the echo app) and a caller sidecar (`bench-caller`, no app), the two sharing one SQLite
//! name-resolution database so that they find each other. Direct: `POST /echo` to the app.
//! Via Tandem: `POST /v1.0/invoke/bench-echo/method/echo` to the caller sidecar. Both over
//! HTTP/1.1 keep-alive, with the same payload; the echoed body is checked. With `--mtls` the
//! two sidecars talk mTLS, from a local CA made for the run.
//!
//! A third path measures the floor for any pair of proxies between the two: `POST /echo`
//! through two plain TCP relays in a row (`tandem-bench app --relay-to`, one thread each like
//! a sidecar on two CPUs), processes that copy bytes without reading them. On a machine whose
//! cores the four processes share, what the relays reach is about the most a sidecar pair
//! could, whatever its code.

use bytes::Bytes;
use std::sync::Arc;

use super::Paths;
use crate::load::{Op, op};
use crate::procs::{App, Sidecar, SidecarSpec};
use crate::report::{PathRow, Report};
use crate::settings::Settings;

/// The callee's app-id.
pub const CALLEE: &str = "bench-echo";

/// The running pair and its app.
pub struct Pair {
    /// The echo app.
    pub app: App,
    /// The callee sidecar.
    pub callee: Sidecar,
    /// The caller sidecar.
    pub caller: Sidecar,
    _dir: tempfile::TempDir,
}

/// Starts the echo app and the two sidecars. `caller_resources` adds resources to the caller;
/// the wrappers run each sidecar under a command (valgrind, taskset).
pub async fn start_pair(
    s: &Settings,
    caller_resources: Vec<(String, String)>,
    caller_wrapper: Vec<String>,
    callee_wrapper: Vec<String>,
) -> Result<Pair, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let db = dir.path().join("nameresolution.db");
    let app = App::start(0, &[], &s.wrapper()).await?;
    let home = dir.path().join("home").display().to_string();
    let secure = |spec: &mut SidecarSpec| {
        if s.mtls {
            spec.args.push("--enable-mtls".into());
            spec.env.push(("TANDEM_HOME".into(), home.clone()));
        }
    };
    let mut callee = SidecarSpec::new(CALLEE);
    callee.app_port = Some(app.port);
    callee.name_resolution_db = Some(db.clone());
    callee.wrapper = callee_wrapper;
    secure(&mut callee);
    let callee = callee.start(&s.tandem).await?;
    let mut caller = SidecarSpec::new("bench-caller");
    caller.name_resolution_db = Some(db);
    caller.wrapper = caller_wrapper;
    caller.resources = caller_resources;
    secure(&mut caller);
    let caller = caller.start(&s.tandem).await?;
    Ok(Pair {
        app,
        callee,
        caller,
        _dir: dir,
    })
}

/// A payload of `n` bytes.
pub fn payload(n: usize) -> Bytes {
    Bytes::from(
        (0..n)
            .map(|i| b"abcdefghijklmnopqrstuvwxyz"[i % 26])
            .collect::<Vec<u8>>(),
    )
}

/// `POST` `body` to `path` on `port`, expecting it echoed.
pub fn echo_op(port: u16, path: &str, body: Bytes) -> Op {
    let client = crate::raw::H1::new(port);
    let req: Arc<[u8]> = client
        .request(
            "POST",
            path,
            &[("content-type", "application/octet-stream")],
            &body,
        )
        .into();
    op(move || {
        let (client, req, body) = (client.clone(), req.clone(), body.clone());
        async move {
            let got = client.call(&req, 200).await?;
            if got == body {
                Ok(())
            } else {
                Err(format!(
                    "echo of {} bytes came back as {}",
                    body.len(),
                    got.len()
                ))
            }
        }
    })
}

/// Two TCP relays in a row in front of the app (`tandem-bench app --relay-to`), the first
/// the one to call. They stop when dropped.
async fn start_relays(s: &Settings, app: u16) -> Result<(App, App), String> {
    let second = App::start(0, &["--relay-to".into(), app.to_string()], &s.wrapper()).await?;
    let first = App::start(
        0,
        &["--relay-to".into(), second.port.to_string()],
        &s.wrapper(),
    )
    .await?;
    Ok((first, second))
}

/// The invocation path through the caller sidecar.
pub fn via_path() -> String {
    format!("/v1.0/invoke/{CALLEE}/method/echo")
}

/// Runs the invocation scenario.
pub async fn run(s: &Settings, report: &mut Report) -> Result<(), String> {
    let pair = start_pair(s, Vec::new(), s.wrapper(), s.wrapper()).await?;
    let scenario = format!("invoke 2 sidecars, {} B", s.payload);
    eprintln!("{scenario}");
    let body = payload(s.payload);
    let mut paths = Paths::new(&report.paths);
    let rows = &mut report.paths;
    let direct = echo_op(pair.app.port, "/echo", body.clone());
    paths
        .measure(s, rows, &scenario, "direct app → app", direct, Vec::new())
        .await;
    // Kept running until the later rounds are done.
    let relays = start_relays(s, pair.app.port).await;
    const FLOOR: &str = "two TCP relays (floor)";
    match &relays {
        Ok((first, second)) => {
            let op = echo_op(first.port, "/echo", body.clone());
            let pids = vec![first.pid, second.pid];
            paths.measure(s, rows, &scenario, FLOOR, op, pids).await;
        }
        Err(e) => {
            let mut row = PathRow::new(&scenario, FLOOR);
            row.error = Some(e.clone());
            rows.push(row);
        }
    }
    let via = if s.mtls {
        "Tandem HTTP/1.1 (both sidecars, mTLS)"
    } else {
        "Tandem HTTP/1.1 (both sidecars)"
    };
    let op = echo_op(pair.caller.http, &via_path(), body);
    let pids = vec![pair.caller.pid, pair.callee.pid];
    paths.measure(s, rows, &scenario, via, op, pids).await;
    let scenario_rows = paths.finish(s, rows, true).await;
    drop(relays);
    let failed: Vec<String> = rows[scenario_rows]
        .iter()
        .filter_map(|r| r.error.clone())
        .collect();
    let logs = format!("{}\n{}", pair.caller.log(), pair.callee.log());
    pair.caller.stop().await?;
    pair.callee.stop().await?;
    drop(pair.app);
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{}; sidecar logs:\n{}",
            failed.join("; "),
            super::state::tail(&logs, 20)
        ))
    }
}
