//! Private backend servers that a test may stop and start again.
//!
//! The machine's shared servers serve every test at once and must never be stopped; a test
//! about broker restarts starts its own copy instead: the binary found on the `PATH` (as
//! `which` finds it), listening on a [`quiet_port`] of its own, with its data in a scratch
//! folder that outlives restarts. The process runs in a process group of its own, so that
//! stopping it also stops whatever it started (RabbitMQ's start script runs the Erlang VM as
//! a child). Its output goes to `server.log` in the scratch folder. The server is killed when
//! the value is dropped.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::process::{Child, Command};

use crate::proxy::quiet_port;
use crate::services;

/// How long a server may take to accept connections after it was started.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A server process of the test's own.
pub struct PrivateServer {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    port: u16,
    dir: TempDir,
    child: Option<Child>,
}

/// `program` as `which` finds it: the first executable file of that name in a `PATH` folder.
pub fn which(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

impl PrivateServer {
    /// A server run from `program` (found with [`which`]) on a free quiet port, with a fresh
    /// scratch folder; nothing runs until [`PrivateServer::start`]. `None` (after printing why
    /// the test is skipped) when the program is not installed; panics instead when
    /// `TANDEM_REQUIRE_SERVICES=1`.
    pub fn find(name: &str, program: &str) -> Option<Self> {
        match which(program) {
            Some(path) => Some(Self::new(name, path)),
            None => {
                if services::required() {
                    panic!("{program} is not on the PATH and TANDEM_REQUIRE_SERVICES=1");
                }
                eprintln!("skipping: {name} needs {program}, which is not on the PATH");
                None
            }
        }
    }

    /// A server run from the executable `program`.
    pub fn new(name: &str, program: PathBuf) -> Self {
        Self {
            name: name.to_owned(),
            program,
            args: Vec::new(),
            env: Vec::new(),
            port: quiet_port(),
            dir: tempfile::Builder::new()
                .prefix("tandem-server-")
                .tempdir()
                .expect("scratch dir"),
            child: None,
        }
    }

    /// Replaces the program (for example by a sibling of the one found on the `PATH`).
    pub fn program(&mut self, program: PathBuf) -> &mut Self {
        self.program = program;
        self
    }

    /// The program that runs.
    pub fn program_path(&self) -> &Path {
        &self.program
    }

    /// Adds a command-line argument.
    pub fn arg(&mut self, arg: impl Into<String>) -> &mut Self {
        self.args.push(arg.into());
        self
    }

    /// Sets an environment variable of the process.
    pub fn env(&mut self, key: &str, value: impl Into<String>) -> &mut Self {
        self.env.push((key.to_owned(), value.into()));
        self
    }

    /// The port the server is expected to listen on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The scratch folder (data, configuration, `server.log`); it lives as long as the value.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Everything the server wrote so far, over all its runs.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Whether the server process is running.
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts the server and waits until it accepts connections on its port.
    pub async fn start(&mut self) -> Result<(), String> {
        if self.child.is_some() {
            return Err(format!("{} is already running", self.name));
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
            .map_err(|e| format!("server log: {e}"))?;
        let err = log.try_clone().map_err(|e| format!("server log: {e}"))?;
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .process_group(0)
            .kill_on_drop(true);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.program.display()))?;
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "{} exited with {status}; log:\n{}",
                    self.name,
                    self.log()
                ));
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                self.child = Some(child);
                return Ok(());
            }
            if started.elapsed() > START_TIMEOUT {
                self.child = Some(child);
                self.kill().await;
                return Err(format!(
                    "{} did not listen on port {} within {START_TIMEOUT:?}; log:\n{}",
                    self.name,
                    self.port,
                    self.log()
                ));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Kills the server's process group with SIGKILL (no chance to save anything) and waits.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal_group(&child, "-KILL").await;
            let _ = child.kill().await;
            let _ = child.wait().await;
        }
    }

    /// Stops the server's process group with SIGTERM (a clean shutdown, which lets servers
    /// that keep data in memory save it) and waits, killing it after 30 s.
    pub async fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal_group(&child, "-TERM").await;
            if tokio::time::timeout(Duration::from_secs(30), child.wait())
                .await
                .is_err()
            {
                signal_group(&child, "-KILL").await;
                let _ = child.kill().await;
                let _ = child.wait().await;
            }
        }
    }
}

/// Sends `signal` to the process group led by `child`.
async fn signal_group(child: &Child, signal: &str) {
    if let Some(pid) = child.id() {
        let _ = Command::new("kill")
            .arg(signal)
            .arg("--")
            .arg(format!("-{pid}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            if let Some(pid) = child.id() {
                // The group too: its other processes do not die with the leader.
                let _ = std::process::Command::new("kill")
                    .arg("-KILL")
                    .arg("--")
                    .arg(format!("-{pid}"))
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
            let _ = child.start_kill();
        }
    }
}
