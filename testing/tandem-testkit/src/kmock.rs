//! An in-memory Kubernetes API for tests: kmock's emulator (PyPI `kmock`, pure Python).
//!
//! `kmock` is installed on first use into a virtualenv under the cache folder (as for
//! [`crate::openbao`]: `$TANDEM_CACHE_DIR`, else `$XDG_CACHE_HOME/tandem`, else
//! `~/.cache/tandem`, then `kmock/.venv`). Each [`KubeApi`] is its own emulator process on a free
//! port with a kubeconfig pointing at it; it is stopped when dropped. When it cannot be had,
//! [`KubeApi::start`] skips (prints why and returns `None`), or panics under
//! `TANDEM_REQUIRE_SERVICES=1`.
//!
//! The emulator stores objects and serves list, watch, get, create, merge-patch and delete. It
//! keeps no real `resourceVersion` or `uid`, runs no admission, validation, conversion or
//! garbage collection: tests on it exercise Tandem's use of the API, not Kubernetes itself.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use serde_json::Value;
use tempfile::TempDir;

use crate::services::required;

/// The kmock release installed.
pub const KMOCK_VERSION: &str = "0.8";

const SERVE: &str = include_str!("kmock/serve.py");

/// A running emulator. Stopped when dropped.
pub struct KubeApi {
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// A kubeconfig for it (namespace `default`).
    pub kubeconfig: PathBuf,
    dir: TempDir,
    http: reqwest::Client,
}

impl KubeApi {
    /// Starts an emulator, or skips (see the module documentation).
    pub async fn start() -> Option<Self> {
        let python = match tokio::task::spawn_blocking(python).await {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => return skip(&e),
            Err(e) => return skip(&e.to_string()),
        };
        match Self::launch(&python) {
            Ok(api) => Some(api),
            Err(e) => skip(&e),
        }
    }

    fn launch(python: &Path) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let script = dir.path().join("serve.py");
        std::fs::write(&script, SERVE).map_err(|e| e.to_string())?;
        let mut child = Command::new(python)
            .arg(&script)
            .arg("0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start the kmock emulator: {e}"))?;
        let mut line = String::new();
        let stdout = child.stdout.take().ok_or("no stdout")?;
        BufReader::new(stdout)
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        let port: u16 = line.trim().parse().map_err(|_| {
            let _ = child.kill();
            format!("the kmock emulator did not report its port (got {line:?})")
        })?;
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: kmock\n  cluster:\n    server: http://127.0.0.1:{port}\ncontexts:\n- name: kmock\n  context:\n    cluster: kmock\n    user: kmock\n    namespace: default\ncurrent-context: kmock\nusers:\n- name: kmock\n  user:\n    token: test\n"
            ),
        )
        .map_err(|e| e.to_string())?;
        Ok(Self {
            child: Some(child),
            port,
            kubeconfig,
            dir,
            http: reqwest::Client::new(),
        })
    }

    /// The emulator's scratch folder.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// One request to the API: `path` like `/apis/dapr.io/v1alpha1/namespaces/default/components`.
    /// PATCH bodies are sent as merge patches. Returns the status and the JSON answer.
    pub async fn request(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        let method = http::Method::from_bytes(method.as_bytes()).expect("method");
        let content_type = if method == http::Method::PATCH {
            "application/merge-patch+json"
        } else {
            "application/json"
        };
        let mut req = self.http.request(method, url);
        if let Some(b) = body {
            req = req.header("content-type", content_type).body(b.to_string());
        }
        let resp = req.send().await.expect("kmock request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Creates `object` (its `apiVersion`, `kind` and `metadata.namespace` pick the URL;
    /// the plural is the kind in lower case + `s`, `ies` for a final `y`).
    pub async fn create(&self, object: Value) -> Value {
        let path = collection_path(&object);
        let (status, answer) = self.request("POST", &path, Some(object)).await;
        assert!(status < 300, "creating at {path}: {status} {answer}");
        answer
    }

    /// Merge-patches the object named like `object` with `patch`.
    pub async fn patch(&self, object: &Value, patch: Value) -> Value {
        let path = object_path(object);
        let (status, answer) = self.request("PATCH", &path, Some(patch)).await;
        assert!(status < 300, "patching {path}: {status} {answer}");
        answer
    }

    /// Deletes the object named like `object`.
    pub async fn delete(&self, object: &Value) {
        let path = object_path(object);
        let (status, answer) = self.request("DELETE", &path, None).await;
        assert!(status < 300, "deleting {path}: {status} {answer}");
    }

    /// The object at `path`, or `None` when the API answers 404.
    pub async fn get(&self, path: &str) -> Option<Value> {
        let (status, answer) = self.request("GET", path, None).await;
        match status {
            404 => None,
            s if s < 300 => Some(answer),
            s => panic!("reading {path}: {s} {answer}"),
        }
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn skip<T>(why: &str) -> Option<T> {
    if required() {
        panic!("the kmock Kubernetes emulator is unavailable and TANDEM_REQUIRE_SERVICES=1: {why}");
    }
    eprintln!("skipping: the kmock Kubernetes emulator is unavailable: {why}");
    None
}

fn collection_path(object: &Value) -> String {
    let api_version = object["apiVersion"].as_str().expect("apiVersion");
    let kind = object["kind"].as_str().expect("kind").to_ascii_lowercase();
    let plural = match kind.strip_suffix('y') {
        Some(stem) => format!("{stem}ies"),
        None => format!("{kind}s"),
    };
    let ns = object["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default");
    let base = if api_version.contains('/') {
        format!("/apis/{api_version}")
    } else {
        format!("/api/{api_version}")
    };
    format!("{base}/namespaces/{ns}/{plural}")
}

fn object_path(object: &Value) -> String {
    let name = object["metadata"]["name"].as_str().expect("metadata.name");
    format!("{}/{name}", collection_path(object))
}

/// The virtualenv's python with kmock installed (installed on first use). Blocking.
fn python() -> Result<PathBuf, String> {
    static FOUND: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            let dir = cache_dir().join("kmock");
            let venv = dir.join(".venv");
            if ready(&venv) {
                return Ok(venv.join("bin/python"));
            }
            install(&dir)
        })
        .clone()
}

fn ready(venv: &Path) -> bool {
    Command::new(venv.join("bin/python"))
        .args(["-c", "import kmock"])
        .output()
        .is_ok_and(|o| o.status.success())
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

/// Installs kmock into `<dir>/.venv`; concurrent test processes each stage their own and
/// rename it into place.
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
            &format!("kmock=={KMOCK_VERSION}"),
        ]),
        "pip install kmock",
    )?;
    let target = dir.join(".venv");
    if !ready(&target) {
        let _ = std::fs::remove_dir_all(&target);
    }
    if std::fs::rename(&staging, &target).is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    if ready(&target) {
        Ok(target.join("bin/python"))
    } else {
        Err(format!(
            "kmock is installed but {} cannot import it",
            target.display()
        ))
    }
}
