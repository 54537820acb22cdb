//! The report: one latency table (every path of every scenario, the direct path first) and
//! one table of costs and footprint, printed as Markdown so that it can be pasted as is.

use std::fmt::Write as _;

/// One closed loop of a path.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClosedRound {
    /// Requests answered per second.
    pub rate: f64,
    /// Sidecar CPU microseconds per request (all sidecars on the path), when charged.
    pub cpu_us: Option<f64>,
    /// The machine's idle share over the loop, in per cent.
    pub idle_pct: Option<f64>,
}

/// The median of `values` (the mean of the middle two for an even count); `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

/// One path of a latency scenario.
pub struct PathRow {
    /// The scenario, e.g. `state GET redis`.
    pub scenario: String,
    /// The path, e.g. `direct (HMGET+PTTL)` or `HTTP/1.1`.
    pub path: String,
    /// p50, p90, p99, p99.9 in ms (open loop), when measured.
    pub latency: Option<[f64; 4]>,
    /// Ratios to the direct path, when there is one.
    pub ratio: Option<[f64; 4]>,
    /// Closed-loop requests per second.
    pub closed: Option<f64>,
    /// Closed-loop ratio to the direct path (over several rounds, the median of the ratios
    /// round by round).
    pub closed_ratio: Option<f64>,
    /// Over several rounds, the lowest and highest of the ratios round by round.
    pub closed_ratio_range: Option<(f64, f64)>,
    /// Every closed loop of the path, in the order run.
    pub rounds: Vec<ClosedRound>,
    /// Sidecar CPU seconds per 1 000 requests during the open loop (all sidecars on the path).
    pub cpu_per_1k: Option<f64>,
    /// Sidecar CPU microseconds per request during the closed loop (all sidecars on the
    /// path): what the ratio is paid with when the machine is busy.
    pub closed_cpu_us: Option<f64>,
    /// The share of the machine's CPU time left idle during the closed loop, in per cent:
    /// whether the closed loop was bound by CPU or by the hand-offs between processes.
    pub closed_idle_pct: Option<f64>,
    /// The generator's own CPU seconds per 1 000 requests during the open loop (this
    /// process: pacer, clients and their connections).
    pub gen_cpu_per_1k: Option<f64>,
    /// Generator lag p99 (ms): how late requests left against their schedule.
    pub lag_p99: Option<f64>,
    /// Set when the path failed.
    pub error: Option<String>,
}

impl PathRow {
    /// An empty row for `scenario` / `path`.
    pub fn new(scenario: &str, path: &str) -> Self {
        Self {
            scenario: scenario.to_owned(),
            path: path.to_owned(),
            latency: None,
            ratio: None,
            closed: None,
            closed_ratio: None,
            closed_ratio_range: None,
            rounds: Vec::new(),
            cpu_per_1k: None,
            closed_cpu_us: None,
            closed_idle_pct: None,
            gen_cpu_per_1k: None,
            lag_p99: None,
            error: None,
        }
    }

    /// Adds a closed loop and sets the closed-loop figures to the medians over the rounds.
    pub fn add_round(&mut self, round: ClosedRound) {
        self.rounds.push(round);
        let of = |f: fn(&ClosedRound) -> Option<f64>| {
            median(&self.rounds.iter().filter_map(f).collect::<Vec<_>>())
        };
        self.closed = of(|r| Some(r.rate));
        self.closed_cpu_us = of(|r| r.cpu_us);
        self.closed_idle_pct = of(|r| r.idle_pct);
    }

    /// Fills the ratios against `direct`. With the same number of closed loops on both, the
    /// closed-loop ratio is the median of the ratios round by round (each round's loops ran
    /// one after the other, on a machine in about the same state).
    pub fn compare_with(&mut self, direct: &PathRow) {
        if let (Some(v), Some(d)) = (self.latency, direct.latency) {
            self.ratio = Some([0, 1, 2, 3].map(|i| v[i] / d[i]));
        }
        self.closed_ratio_range = None;
        if self.rounds.len() > 1 && self.rounds.len() == direct.rounds.len() {
            let ratios: Vec<f64> = self
                .rounds
                .iter()
                .zip(&direct.rounds)
                .map(|(v, d)| v.rate / d.rate)
                .collect();
            self.closed_ratio = median(&ratios);
            let lowest = ratios.iter().copied().fold(f64::INFINITY, f64::min);
            let highest = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            self.closed_ratio_range = Some((lowest, highest));
        } else if let (Some(v), Some(d)) = (self.closed, direct.closed) {
            self.closed_ratio = Some(v / d);
        }
    }
}

/// One measure of the cost and footprint table.
pub struct Measure {
    /// What was measured.
    pub name: String,
    /// The figure with its unit (or an error).
    pub value: String,
    /// How.
    pub how: String,
}

impl Measure {
    /// A measure.
    pub fn new(name: &str, value: String, how: &str) -> Self {
        Self {
            name: name.to_owned(),
            value,
            how: how.to_owned(),
        }
    }
}

/// Everything measured in one run.
#[derive(Default)]
pub struct Report {
    /// Latency and throughput rows.
    pub paths: Vec<PathRow>,
    /// Cost and footprint rows.
    pub measures: Vec<Measure>,
    /// Scenarios that failed, with the reason.
    pub failures: Vec<String>,
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "–".to_owned(), |v| format!("{v:.digits$}"))
}

fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: &[String], out: &mut String| {
        out.push('|');
        for (i, c) in cells.iter().enumerate() {
            let pad = width[i] - c.chars().count();
            let _ = write!(out, " {c}{} |", " ".repeat(pad));
        }
        out.push('\n');
    };
    line(
        &header.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>(),
        &mut out,
    );
    line(
        &width.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>(),
        &mut out,
    );
    for r in rows {
        line(r, &mut out);
    }
    out
}

impl Report {
    /// The two tables, as Markdown.
    pub fn render(&self) -> String {
        let mut rows = Vec::new();
        for p in &self.paths {
            if let Some(e) = &p.error {
                let mut r = vec![p.scenario.clone(), p.path.clone()];
                r.push(format!("ERROR: {}", e.lines().next().unwrap_or("")));
                r.resize(17, String::new());
                rows.push(r);
                continue;
            }
            let l = p.latency.map_or([None; 4], |v| v.map(Some));
            let x = p.ratio.map_or([None; 4], |v| v.map(Some));
            rows.push(vec![
                p.scenario.clone(),
                p.path.clone(),
                opt(l[0], 3),
                opt(l[1], 3),
                opt(l[2], 3),
                opt(l[3], 3),
                opt(x[0], 2),
                opt(x[1], 2),
                opt(x[2], 2),
                opt(x[3], 2),
                opt(p.closed, 0),
                match (p.closed_ratio, p.closed_ratio_range) {
                    (Some(x), Some((lo, hi))) => format!("{x:.3} ({lo:.3}–{hi:.3})"),
                    (x, _) => opt(x, 3),
                },
                opt(p.closed_cpu_us, 1),
                opt(p.closed_idle_pct, 1),
                opt(p.cpu_per_1k, 3),
                opt(p.gen_cpu_per_1k, 3),
                opt(p.lag_p99, 3),
            ]);
        }
        let mut out = table(
            &[
                "scenario",
                "path",
                "p50 ms",
                "p90 ms",
                "p99 ms",
                "p99.9 ms",
                "×p50",
                "×p90",
                "×p99",
                "×p99.9",
                "closed req/s",
                "×closed",
                "closed sidecar CPU µs/req",
                "closed machine idle %",
                "sidecar CPU s/1k req",
                "gen CPU s/1k req",
                "gen lag p99 ms",
            ],
            &rows,
        );
        if !self.measures.is_empty() {
            out.push('\n');
            let rows: Vec<Vec<String>> = self
                .measures
                .iter()
                .map(|m| vec![m.name.clone(), m.value.clone(), m.how.clone()])
                .collect();
            out.push_str(&table(&["measure", "value", "how"], &rows));
        }
        if !self.failures.is_empty() {
            out.push_str("\nFAILED:\n");
            for f in &self.failures {
                let _ = writeln!(out, "- {f}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(rate: f64) -> ClosedRound {
        ClosedRound {
            rate,
            cpu_us: Some(rate / 1000.0),
            idle_pct: None,
        }
    }

    #[test]
    fn the_median_of_an_odd_and_an_even_count() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[f64::NAN, 5.0]), Some(5.0));
    }

    #[test]
    fn rounds_give_medians_and_the_median_of_the_ratios_round_by_round() {
        let mut direct = PathRow::new("s", "direct");
        let mut via = PathRow::new("s", "via");
        // The machine drifts: the second round is slow for both paths.
        for (d, v) in [(100.0, 40.0), (50.0, 30.0), (90.0, 27.0)] {
            direct.add_round(round(d));
            via.add_round(round(v));
        }
        assert_eq!(direct.closed, Some(90.0));
        assert_eq!(via.closed, Some(30.0));
        assert_eq!(via.closed_cpu_us, Some(0.03));
        assert_eq!(via.closed_idle_pct, None);
        via.compare_with(&direct);
        // Ratios 0.4, 0.6 and 0.3: the median is 0.4, not 30 / 90.
        let ratio = via.closed_ratio.unwrap();
        assert!((ratio - 0.4).abs() < 1e-12, "{ratio}");
        let (lo, hi) = via.closed_ratio_range.unwrap();
        assert!((lo - 0.3).abs() < 1e-12 && (hi - 0.6).abs() < 1e-12);
        let table = Report {
            paths: vec![direct, via],
            ..Report::default()
        }
        .render();
        assert!(table.contains("| 0.400 (0.300–0.600) |"), "{table}");
    }

    #[test]
    fn one_round_keeps_the_plain_ratio() {
        let mut direct = PathRow::new("s", "direct");
        let mut via = PathRow::new("s", "via");
        direct.add_round(round(200.0));
        via.add_round(round(50.0));
        via.compare_with(&direct);
        assert_eq!(via.closed_ratio, Some(0.25));
        assert_eq!(via.closed_ratio_range, None);
        // Unequal counts (a path that failed a later round) fall back to the medians' ratio.
        direct.add_round(round(100.0));
        via.compare_with(&direct);
        assert_eq!(via.closed_ratio, Some(50.0 / 150.0));
        assert_eq!(via.closed_ratio_range, None);
    }
}
