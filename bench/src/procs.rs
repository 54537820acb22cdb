//! Processes the benchmark starts: Tandem sidecars (optionally under a wrapper such as
//! valgrind) and the built-in app (this binary's `app` mode), plus what `/proc` says about them.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

/// How long a sidecar may take to answer `/v1.0/healthz/outbound` (valgrind is slow).
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// What to start.
#[derive(Clone, Default)]
pub struct SidecarSpec {
    /// `--app-id`.
    pub app_id: String,
    /// Resource files: (file name, YAML).
    pub resources: Vec<(String, String)>,
    /// `--app-port`.
    pub app_port: Option<u16>,
    /// Shared name-resolution database; a private one in the sidecar's folder when unset.
    pub name_resolution_db: Option<PathBuf>,
    /// More flags.
    pub args: Vec<String>,
    /// More environment variables.
    pub env: Vec<(String, String)>,
    /// A command the sidecar runs under (`valgrind …`, `taskset -c 1`).
    pub wrapper: Vec<String>,
    /// A fixed HTTP port (0: any, reported through `--ports-file`).
    pub http_port: u16,
}

/// A prepared sidecar command line.
pub struct Prepared {
    /// Program and arguments (wrapper first).
    pub argv: Vec<String>,
    /// `TANDEM_NAME_RESOLUTION_DB`.
    pub name_resolution_db: PathBuf,
    /// More environment variables.
    pub env: Vec<(String, String)>,
    /// The ports file.
    pub ports: PathBuf,
    /// The log file.
    pub log: PathBuf,
    /// The folder holding them.
    pub dir: TempDir,
}

impl Prepared {
    /// A `std` command for it, logging to the log file.
    pub fn command(&self) -> Result<std::process::Command, String> {
        let mut cmd = std::process::Command::new(&self.argv[0]);
        cmd.args(&self.argv[1..])
            .env("TANDEM_NAME_RESOLUTION_DB", &self.name_resolution_db)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env_remove("DAPR_API_TOKEN")
            .env_remove("APP_API_TOKEN")
            .env_remove("RUST_LOG");
        let log = std::fs::File::create(&self.log).map_err(|e| e.to_string())?;
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);
        Ok(cmd)
    }
}

/// A running sidecar; killed when dropped.
pub struct Sidecar {
    child: Child,
    /// HTTP API port.
    pub http: u16,
    /// gRPC API port.
    pub grpc: u16,
    /// The process id of the sidecar itself.
    pub pid: u32,
    /// Its scratch folder (resources, logs, name resolution).
    pub dir: TempDir,
}

impl SidecarSpec {
    /// A sidecar with `app_id` and nothing else.
    pub fn new(app_id: &str) -> Self {
        Self {
            app_id: app_id.to_owned(),
            ..Self::default()
        }
    }

    /// Adds a resource file.
    pub fn resource(mut self, name: &str, yaml: String) -> Self {
        self.resources.push((name.to_owned(), yaml));
        self
    }

    /// The command line (program, arguments, environment), in a fresh folder holding the
    /// resources, the ports file and the log.
    pub fn prepare(&self, tandem: &Path) -> Result<Prepared, String> {
        let dir = tempfile::Builder::new()
            .prefix("tandem-bench-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let ports = dir.path().join("ports.json");
        let resources = dir.path().join("resources");
        std::fs::create_dir_all(&resources).map_err(|e| e.to_string())?;
        for (name, yaml) in &self.resources {
            std::fs::write(resources.join(name), yaml).map_err(|e| e.to_string())?;
        }
        let mut argv: Vec<String> = self.wrapper.clone();
        argv.push(tandem.display().to_string());
        argv.extend(
            [
                "sidecar",
                "--app-id",
                &self.app_id,
                "--dapr-http-port",
                &self.http_port.to_string(),
                "--dapr-grpc-port",
                "0",
                "--dapr-listen-addresses",
                "127.0.0.1",
                "--dapr-internal-grpc-listen-address",
                "127.0.0.1",
                "--log-level",
                "warn",
                "--resources-path",
                &resources.display().to_string(),
                "--ports-file",
                &ports.display().to_string(),
            ]
            .map(str::to_owned),
        );
        if let Some(port) = self.app_port {
            argv.extend(["--app-port".to_owned(), port.to_string()]);
        }
        argv.extend(self.args.iter().cloned());
        let db = self
            .name_resolution_db
            .clone()
            .unwrap_or_else(|| dir.path().join("nameresolution.db"));
        let log = dir.path().join("sidecar.log");
        Ok(Prepared {
            argv,
            name_resolution_db: db,
            env: self.env.clone(),
            ports,
            log,
            dir,
        })
    }

    /// Starts the sidecar and waits until `/v1.0/healthz/outbound` answers 204.
    pub async fn start(&self, tandem: &Path) -> Result<Sidecar, String> {
        let prepared = self.prepare(tandem)?;
        let mut cmd = Command::from(prepared.command()?);
        cmd.kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", tandem.display()))?;
        let started = Instant::now();
        let Prepared {
            dir, ports, log, ..
        } = prepared;
        let failed = |what: String| {
            format!(
                "sidecar {}: {what}; log:\n{}",
                self.app_id,
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        };
        let (http, grpc, pid) = loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(failed(format!("exited with {status}")));
            }
            if let Some(p) = read_ports(&ports) {
                break p;
            }
            if started.elapsed() > READY_TIMEOUT {
                return Err(failed("wrote no ports file".into()));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        while outbound_status(http).await != Some(204) {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(failed(format!("exited with {status}")));
            }
            if started.elapsed() > READY_TIMEOUT {
                return Err(failed("/v1.0/healthz/outbound never answered 204".into()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Sidecar {
            child,
            http,
            grpc,
            pid,
            dir,
        })
    }
}

fn read_ports(path: &Path) -> Option<(u16, u16, u32)> {
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let port = |k: &str| v.get(k)?.as_u64().and_then(|p| u16::try_from(p).ok());
    let pid = v.get("pid")?.as_u64().and_then(|p| u32::try_from(p).ok())?;
    Some((port("http")?, port("grpc")?, pid))
}

/// The status of `GET /v1.0/healthz/outbound` on a fresh connection, or `None` when nothing
/// answers. Raw HTTP/1.1 so that a poll costs one connect and one write.
pub async fn outbound_status(port: u16) -> Option<u16> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(
        b"GET /v1.0/healthz/outbound HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
    .await
    .ok()?;
    let mut buf = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        let r = s.read(&mut buf[n..]).await.ok()?;
        if r == 0 {
            return None;
        }
        n += r;
    }
    std::str::from_utf8(&buf[9..12]).ok()?.parse().ok()
}

impl Sidecar {
    /// Stops the sidecar with SIGTERM (valgrind writes its files then) and waits for it.
    pub async fn stop(mut self) -> Result<(), String> {
        terminate(self.pid).await;
        match tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await {
            Ok(_) => Ok(()),
            Err(_) => {
                let _ = self.child.kill().await;
                Err(format!("sidecar {} ignored SIGTERM", self.pid))
            }
        }
    }

    /// The sidecar's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sidecar.log")).unwrap_or_default()
    }
}

/// Sends SIGTERM to `pid` (through `kill(1)`: this crate forbids `unsafe`).
pub async fn terminate(pid: u32) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await;
}

/// The built-in app (`tandem-bench app`) running as a child process; killed when dropped.
pub struct App {
    _child: Child,
    /// Its port.
    pub port: u16,
    /// Its process id (that of the wrapper, where there is one).
    pub pid: u32,
}

impl App {
    /// Starts this binary's `app` mode on `port` (0: any) with `args`.
    pub async fn start(port: u16, args: &[String], wrapper: &[String]) -> Result<App, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(exe);
                c
            }
            None => Command::new(exe),
        };
        cmd.arg("app")
            .args(["--port", &port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start the app: {e}"))?;
        let stdout = child.stdout.take().ok_or("no app stdout")?;
        let mut lines = tokio::io::BufReader::new(stdout);
        let mut line = String::new();
        tokio::time::timeout(
            Duration::from_secs(10),
            tokio::io::AsyncBufReadExt::read_line(&mut lines, &mut line),
        )
        .await
        .map_err(|_| "the app did not report its port")?
        .map_err(|e| e.to_string())?;
        let port = line
            .trim()
            .strip_prefix("port ")
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| format!("unexpected app output {line:?}"))?;
        Ok(App {
            pid: child.id().unwrap_or(0),
            _child: child,
            port,
        })
    }
}

/// A port that was free a moment ago.
pub fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

/// Resident set size in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let f = std::fs::File::open(format!("/proc/{pid}/status")).ok()?;
    BufReader::new(f)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| {
            l.strip_prefix("VmRSS:")?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
}

/// CPU time used so far (utime + stime of `/proc/<pid>/stat`), in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; fields restart after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// The machine's idle and total CPU time so far, in clock ticks, from the `cpu` line of
/// `/proc/stat` (idle counts `idle` and `iowait`; total every field but the guest ones,
/// which `user` and `nice` already hold).
pub fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    let idle = *f.get(3)? + *f.get(4)?;
    Some((idle, f.iter().sum()))
}

/// The share of the machine's CPU time, in per cent, spent idle since `before` (a
/// [`machine_ticks`] reading); `None` when `/proc/stat` cannot be read or no time passed.
pub fn machine_idle_since(before: Option<(u64, u64)>) -> Option<f64> {
    let (idle0, total0) = before?;
    let (idle1, total1) = machine_ticks()?;
    let total = total1.checked_sub(total0).filter(|t| *t > 0)?;
    Some(idle1.saturating_sub(idle0) as f64 * 100.0 / total as f64)
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 when that fails).
pub fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100)
    })
}

/// CPU seconds used by `pids` from `before` (their tick counts then) to now.
pub fn cpu_seconds_since(pids: &[u32], before: &[u64]) -> f64 {
    let ticks: u64 = pids
        .iter()
        .zip(before)
        .map(|(p, b)| cpu_ticks(*p).unwrap_or(*b).saturating_sub(*b))
        .sum();
    ticks as f64 / clock_ticks() as f64
}
