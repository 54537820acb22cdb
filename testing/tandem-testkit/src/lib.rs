//! Test harness for Tandem's end-to-end tests.
//!
//! [`SidecarBuilder`] starts the real `tandem` binary with `--dapr-http-port 0` and a
//! `--ports-file`, waits until `/v1.0/healthz/outbound` answers 204, and hands back a
//! [`Sidecar`] with its bound port, so tests never race for ports. Its logs go to a file that
//! failures print. [`services`] finds backends at their standard local addresses;
//! [`openbao::OpenBao`] starts a Vault-API dev server; [`kafka::Tansu`] finds or starts a
//! Kafka-compatible broker; [`server::PrivateServer`] runs a private copy of a backend that a
//! test may stop and start again.
//! [`kmock::KubeApi`] runs an in-memory Kubernetes API.
//! [`mock_app`] is an in-process HTTP app for service-invocation tests.
//!
//! Each sidecar gets its own name-resolution database in its scratch folder unless
//! [`SidecarBuilder::name_resolution_db`] points several at a shared one, and its internal
//! (sidecar-to-sidecar) listener binds `127.0.0.1` on a free port ([`Sidecar::internal_port`]).
//! The gRPC API binds a free port too unless the test passes `--dapr-grpc-port`
//! ([`Sidecar::grpc_port`]); metrics are off unless the test passes `--metrics-port`.

pub mod grpc_app;
pub mod kafka;
pub mod kmock;
pub mod mock_app;
pub mod openbao;
pub mod proxy;
pub mod server;
pub mod services;
pub mod subscriber;

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::process::{Child, Command};

/// How long a sidecar may take to become ready before the test fails.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Builds and starts a sidecar process.
pub struct SidecarBuilder {
    binary: PathBuf,
    app_id: String,
    resources: Vec<(String, String)>,
    resources_dirs: Vec<PathBuf>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    work: TempDir,
}

/// A running sidecar. Killed when dropped.
pub struct Sidecar {
    child: Option<Child>,
    /// The bound HTTP API port.
    pub http_port: u16,
    /// The bound gRPC API port (a free one unless the test passed `--dapr-grpc-port`).
    pub grpc_port: u16,
    /// The bound internal (sidecar-to-sidecar) port.
    pub internal_port: u16,
    /// The process id.
    pub pid: u32,
    log: PathBuf,
    work: TempDir,
}

/// The outcome of a sidecar run expected to stop by itself (for example on bad input).
#[derive(Debug)]
pub struct Exited {
    /// Its exit status.
    pub status: ExitStatus,
    /// Everything it logged.
    pub log: String,
}

impl SidecarBuilder {
    /// A sidecar from `binary` (use `env!("CARGO_BIN_EXE_tandem")`) with app-id `test-app`.
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        Self {
            binary: binary.into(),
            app_id: "test-app".into(),
            resources: Vec::new(),
            resources_dirs: Vec::new(),
            args: Vec::new(),
            env: Vec::new(),
            work: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// Sets `--app-id`.
    pub fn app_id(mut self, id: &str) -> Self {
        id.clone_into(&mut self.app_id);
        self
    }

    /// Adds a resource file (written into a fresh resources folder).
    pub fn resource(mut self, file_name: &str, yaml: &str) -> Self {
        self.resources.push((file_name.to_owned(), yaml.to_owned()));
        self
    }

    /// Adds an existing resources folder.
    pub fn resources_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.resources_dirs.push(dir.into());
        self
    }

    /// Adds a command-line argument.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Sets `--app-port` (for example a [`mock_app::MockApp`]'s port).
    pub fn app_port(self, port: u16) -> Self {
        self.arg("--app-port").arg(port.to_string())
    }

    /// Uses `path` as the name-resolution database (`TANDEM_NAME_RESOLUTION_DB`): sidecars
    /// sharing one file find each other.
    pub fn name_resolution_db(self, path: impl AsRef<Path>) -> Self {
        let path = path.as_ref().display().to_string();
        self.env("TANDEM_NAME_RESOLUTION_DB", &path)
    }

    /// Sets an environment variable of the process.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// A scratch folder that lives as long as the sidecar (for secrets files, databases, …).
    pub fn work_dir(&self) -> &Path {
        self.work.path()
    }

    fn command(&self) -> (Command, PathBuf, PathBuf) {
        let ports = self.work.path().join("ports.json");
        let _ = std::fs::remove_file(&ports);
        let log = self.work.path().join("sidecar.log");
        let mut cmd = Command::new(&self.binary);
        cmd.arg("sidecar")
            .arg("--app-id")
            .arg(&self.app_id)
            .arg("--dapr-http-port")
            .arg("0")
            .arg("--dapr-listen-addresses")
            .arg("127.0.0.1")
            .arg("--ports-file")
            .arg(&ports);
        if !self.resources.is_empty() {
            let dir = self.work.path().join("resources");
            std::fs::create_dir_all(&dir).expect("resources dir");
            for (name, yaml) in &self.resources {
                std::fs::write(dir.join(name), yaml).expect("write resource");
            }
            cmd.arg("--resources-path").arg(dir);
        }
        for dir in &self.resources_dirs {
            cmd.arg("--resources-path").arg(dir);
        }
        if !self.args.iter().any(|a| a == "--dapr-grpc-port") {
            cmd.arg("--dapr-grpc-port").arg("0");
        }
        // Sidecars of parallel tests would all reach for the default metrics port 9090.
        if !self.args.iter().any(|a| a.starts_with("--metrics-port")) {
            cmd.arg("--enable-metrics=false");
        }
        if !self
            .args
            .iter()
            .any(|a| a.contains("dapr-internal-grpc-listen-address"))
        {
            cmd.arg("--dapr-internal-grpc-listen-address")
                .arg("127.0.0.1");
        }
        cmd.args(&self.args);
        cmd.env_remove("DAPR_API_TOKEN").env_remove("NAMESPACE");
        cmd.env(
            "TANDEM_NAME_RESOLUTION_DB",
            self.work.path().join("nameresolution.db"),
        );
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let log_file = std::fs::File::create(&log).expect("log file");
        cmd.stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log handle"))
            .stderr(log_file)
            .kill_on_drop(true);
        (cmd, ports, log)
    }

    /// Starts the sidecar and waits until it is ready.
    pub async fn spawn(self) -> Result<Sidecar, String> {
        let (mut cmd, ports, log) = self.command();
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.binary.display()))?;
        let pid = child.id().unwrap_or_default();
        let start = Instant::now();
        let http_port = loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "sidecar exited early with {status}; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                ));
            }
            if let Some(port) = read_port(&ports) {
                break port;
            }
            if start.elapsed() > READY_TIMEOUT {
                return Err(format!(
                    "sidecar wrote no ports file in {READY_TIMEOUT:?}; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let sidecar = Sidecar {
            child: Some(child),
            http_port,
            grpc_port: read_json_port(&ports, "grpc").unwrap_or_default(),
            internal_port: read_json_port(&ports, "internal").unwrap_or_default(),
            pid,
            log,
            work: self.work,
        };
        let client = reqwest::Client::new();
        loop {
            let url = sidecar.url("/v1.0/healthz/outbound");
            if let Ok(resp) = client.get(&url).send().await
                && resp.status().as_u16() == 204
            {
                return Ok(sidecar);
            }
            if start.elapsed() > READY_TIMEOUT {
                return Err(format!(
                    "sidecar not ready in {READY_TIMEOUT:?}; log:\n{}",
                    sidecar.log()
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Runs the sidecar expecting it to exit by itself within the ready timeout.
    pub async fn run_to_exit(self) -> Exited {
        let (mut cmd, _ports, log) = self.command();
        let mut child = cmd.spawn().expect("start sidecar");
        let status = match tokio::time::timeout(READY_TIMEOUT, child.wait()).await {
            Ok(status) => status.expect("wait for sidecar"),
            Err(_) => {
                let _ = child.kill().await;
                panic!(
                    "sidecar did not exit within {READY_TIMEOUT:?}; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        };
        Exited {
            status,
            log: std::fs::read_to_string(&log).unwrap_or_default(),
        }
    }
}

fn read_json_port(path: &Path, key: &str) -> Option<u16> {
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get(key)?.as_u64().and_then(|p| u16::try_from(p).ok())
}

fn read_port(path: &Path) -> Option<u16> {
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get("http")?.as_u64().and_then(|p| u16::try_from(p).ok())
}

impl Sidecar {
    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http_port)
    }

    /// Everything the sidecar logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The sidecar's scratch folder.
    pub fn work_dir(&self) -> &Path {
        self.work.path()
    }

    /// Kills the process with SIGKILL (no chance to flush anything) and waits for it.
    pub async fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
            let _ = child.wait().await;
        }
    }

    /// Stops the process (SIGSTOP) without closing anything: to its peers it is a machine that
    /// went silent. [`Sidecar::thaw`] lets it run again.
    pub fn freeze(&self) {
        Self::signal(self.pid, "-STOP");
    }

    /// Lets a frozen process run again (SIGCONT).
    pub fn thaw(&self) {
        Self::signal(self.pid, "-CONT");
    }

    fn signal(pid: u32, signal: &str) {
        let status = std::process::Command::new("kill")
            .arg(signal)
            .arg(pid.to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill {signal} {pid}: {status}");
    }

    /// Sends SIGTERM and waits for the exit status.
    pub async fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("sidecar already stopped");
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status();
        match tokio::time::timeout(Duration::from_secs(15), child.wait()).await {
            Ok(status) => status.expect("wait"),
            Err(_) => panic!("sidecar ignored SIGTERM; log:\n{}", self.log()),
        }
    }

    /// Waits for the process to exit by itself.
    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("sidecar already stopped");
        match tokio::time::timeout(within, child.wait()).await {
            Ok(status) => status.expect("wait"),
            Err(_) => panic!(
                "sidecar did not exit within {within:?}; log:\n{}",
                self.log()
            ),
        }
    }

    /// Takes the scratch folder away so it outlives this sidecar (for restart tests).
    pub fn into_work_dir(mut self) -> TempDir {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
        }
        std::mem::replace(&mut self.work, tempfile::tempdir().expect("temp dir"))
    }
}
