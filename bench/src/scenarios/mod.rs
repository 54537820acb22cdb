//! The scenarios. Each starts what it needs, measures its paths (the direct one first) and
//! adds rows to the report; a path that fails keeps its row, marked, and fails the run.

pub mod cpu;
pub mod footprint;
pub mod invoke;
pub mod publish;
pub mod state;
pub mod subscribe;

use crate::load::{self, Op};
use crate::procs::{cpu_seconds_since, cpu_ticks, machine_idle_since, machine_ticks};
use crate::report::{ClosedRound, PathRow};
use crate::settings::Settings;

/// Measures one path: sequential warm-up, open loop at the fixed rate, then the closed loop,
/// with the CPU time of `pids` over each.
pub async fn measure(s: &Settings, scenario: &str, path: &str, op: Op, pids: &[u32]) -> PathRow {
    let mut row = PathRow::new(scenario, path);
    if let Err(e) = measure_into(&mut row, s, op, pids).await {
        row.error = Some(e);
    }
    match (&row.error, row.latency) {
        (Some(e), _) => eprintln!("  {scenario} / {path}: ERROR {e}"),
        (None, Some(l)) => eprintln!(
            "  {scenario} / {path}: p50 {:.3} p90 {:.3} p99 {:.3} p99.9 {:.3} ms, closed {:.0} req/s",
            l[0],
            l[1],
            l[2],
            l[3],
            row.closed.unwrap_or(0.0)
        ),
        (None, None) => {}
    }
    row
}

async fn measure_into(row: &mut PathRow, s: &Settings, op: Op, pids: &[u32]) -> Result<(), String> {
    load::sequential(&op, s.warmup)
        .await
        .map_err(|e| format!("warm-up: {e}"))?;
    let before: Vec<u64> = pids.iter().map(|p| cpu_ticks(*p).unwrap_or(0)).collect();
    let me = [std::process::id()];
    let me_before = [cpu_ticks(me[0]).unwrap_or(0)];
    let lat = load::open_loop(op.clone(), s.rate, s.open).await?;
    if !pids.is_empty() {
        row.cpu_per_1k = Some(cpu_seconds_since(pids, &before) / lat.sent as f64 * 1000.0);
    }
    row.gen_cpu_per_1k = Some(cpu_seconds_since(&me, &me_before) / lat.sent as f64 * 1000.0);
    row.latency = Some(lat.percentiles_ms());
    row.lag_p99 = Some(lat.lag.value_at_quantile(0.99) as f64 / 1000.0);
    closed_round(row, s, op, pids).await
}

/// One closed loop of a path, added to its row.
async fn closed_round(row: &mut PathRow, s: &Settings, op: Op, pids: &[u32]) -> Result<(), String> {
    let before: Vec<u64> = pids.iter().map(|p| cpu_ticks(*p).unwrap_or(0)).collect();
    let machine_before = machine_ticks();
    let closed = load::closed_loop(op, s.workers, s.closed).await?;
    let idle_pct = machine_idle_since(machine_before);
    let cpu_us = (!pids.is_empty() && closed.requests > 0)
        .then(|| cpu_seconds_since(pids, &before) / closed.requests as f64 * 1_000_000.0);
    row.add_round(ClosedRound {
        rate: closed.rate,
        cpu_us,
        idle_pct,
    });
    Ok(())
}

/// A path that [`Paths::finish`] takes again: its row, its operation and the processes
/// charged with its CPU.
struct Again {
    row: usize,
    op: Op,
    pids: Vec<u32>,
}

/// The paths of one scenario, their rows added to the report's in the order measured (the
/// direct path first, when there is one) and kept for the later closed-loop rounds.
pub struct Paths {
    first: usize,
    again: Vec<Again>,
}

impl Paths {
    /// The scenario's rows will follow the `rows` already there.
    pub fn new(rows: &[PathRow]) -> Self {
        Self {
            first: rows.len(),
            again: Vec::new(),
        }
    }

    /// [`measure`]s a path, adds its row and keeps the path for the later rounds.
    pub async fn measure(
        &mut self,
        s: &Settings,
        rows: &mut Vec<PathRow>,
        scenario: &str,
        path: &str,
        op: Op,
        pids: Vec<u32>,
    ) {
        let row = measure(s, scenario, path, op.clone(), &pids).await;
        self.again.push(Again {
            row: rows.len(),
            op,
            pids,
        });
        rows.push(row);
    }

    /// The closed loops after the first: `s.closed_rounds - 1` rounds, each one closed loop
    /// of every kept path in turn, in the order measured. Loops of the same round run
    /// seconds apart, so their ratio is less exposed to the machine's drift than a ratio
    /// across the whole scenario. A path that fails a loop keeps its error and is not taken
    /// again. Then, when the scenario's first row is its direct path, every other row gets
    /// its ratios to it. Returns the range of the scenario's rows.
    pub async fn finish(
        self,
        s: &Settings,
        rows: &mut [PathRow],
        direct_first: bool,
    ) -> std::ops::Range<usize> {
        for round in 1..s.closed_rounds {
            for p in &self.again {
                let row = &mut rows[p.row];
                if row.error.is_some() {
                    continue;
                }
                if let Err(e) = closed_round(row, s, p.op.clone(), &p.pids).await {
                    eprintln!("  {} / {}: ERROR {e}", row.scenario, row.path);
                    row.error = Some(e);
                } else if let Some(r) = row.rounds.last() {
                    eprintln!(
                        "  {} / {}: closed round {} {:.0} req/s",
                        row.scenario,
                        row.path,
                        round + 1,
                        r.rate
                    );
                }
            }
        }
        if direct_first && rows.len() > self.first {
            let (direct, others) = rows[self.first..].split_at_mut(1);
            for row in others {
                row.compare_with(&direct[0]);
            }
        }
        self.first..rows.len()
    }
}
