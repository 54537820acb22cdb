//! Process metrics (`process_*`), read from `/proc` when scraped.

use std::fmt::Write as _;

/// Seconds since the Unix epoch at which this process started (approximately: when this
/// was first called, which happens at start-up).
pub(crate) fn start_time() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Appends the process families the platform provides.
pub(crate) fn encode(out: &mut String, start_time: f64) {
    let mut gauge = |name: &str, kind: &str, help: &str, value: f64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
            tandem_runtime::metrics::format_float(value)
        );
    };
    #[cfg(target_os = "linux")]
    if let Some(p) = linux::read() {
        gauge(
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            p.cpu_seconds,
        );
        gauge(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            p.resident_bytes,
        );
        gauge(
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            p.virtual_bytes,
        );
        if let Some(n) = p.open_fds {
            gauge(
                "process_open_fds",
                "gauge",
                "Number of open file descriptors.",
                n,
            );
        }
        if let Some(n) = p.max_fds {
            gauge(
                "process_max_fds",
                "gauge",
                "Maximum number of open file descriptors.",
                n,
            );
        }
    }
    gauge(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
        start_time,
    );
}

#[cfg(target_os = "linux")]
mod linux {
    pub(super) struct Process {
        pub(super) cpu_seconds: f64,
        pub(super) resident_bytes: f64,
        pub(super) virtual_bytes: f64,
        pub(super) open_fds: Option<f64>,
        pub(super) max_fds: Option<f64>,
    }

    /// Clock ticks per second for `/proc/self/stat` (100 on every Linux platform Tandem
    /// builds for; `sysconf` would need `unsafe`).
    const TICKS: f64 = 100.0;

    pub(super) fn read() -> Option<Process> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name, which is in parentheses and may contain spaces.
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        // `rest` starts at field 3 (state): utime is field 14, stime 15, vsize 23.
        let num = |i: usize| f.get(i - 3).and_then(|v| v.parse::<f64>().ok());
        let cpu_seconds = (num(14)? + num(15)?) / TICKS;
        let virtual_bytes = num(23)?;
        // Resident size from `status` (in kB), which does not depend on the page size.
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let resident_bytes = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())?
            * 1024.0;
        let open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| d.count() as f64);
        let max_fds = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|l| {
                l.lines()
                    .find(|l| l.starts_with("Max open files"))
                    .and_then(|l| l.split_whitespace().nth(3))
                    .and_then(|v| v.parse::<f64>().ok())
            });
        Some(Process {
            cpu_seconds,
            resident_bytes,
            virtual_bytes,
            open_fds,
            max_fds,
        })
    }
}
