//! `tandem run`: start a sidecar and an app together, as `dapr run` does.
//!
//! The sidecar starts first (its own binary, `tandem sidecar`), the app once the sidecar's
//! outbound APIs are ready, with the environment `dapr run` gives (`APP_ID`, `APP_PORT`,
//! `DAPR_HTTP_PORT`, `DAPR_GRPC_PORT`, …). Both outputs are interleaved line by line with a
//! prefix. SIGINT/SIGTERM are forwarded; when the app exits the sidecar is stopped and
//! `tandem run` exits with the app's status.

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

use crate::cli::run::RunArgs;

const STATESTORE_YAML: &str = "# Tandem's embedded default state store (created by `tandem run`).
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: statestore
spec:
  type: state.sqlite
  version: v1
  metadata:
  - name: connectionString
    value: \"{dir}/state.db\"
  - name: actorStateStore
    value: \"true\"
";

const PUBSUB_YAML: &str = "# Tandem's embedded default pub/sub (created by `tandem run`).
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: pubsub
spec:
  type: pubsub.sqlite
  version: v1
  metadata:
  - name: connectionString
    value: \"{dir}/pubsub.db\"
";

/// `~/.tandem` (or `$TANDEM_HOME`).
pub(crate) fn tandem_home() -> PathBuf {
    if let Some(dir) = std::env::var_os("TANDEM_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".tandem")
}

/// Creates the embedded default resources on first use and returns their folder.
fn default_resources(home: &Path) -> std::io::Result<PathBuf> {
    let dir = home.join("resources");
    std::fs::create_dir_all(&dir)?;
    let data = home.display().to_string();
    for (name, template) in [
        ("statestore.yaml", STATESTORE_YAML),
        ("pubsub.yaml", PUBSUB_YAML),
    ] {
        let path = dir.join(name);
        if !path.exists() {
            std::fs::write(&path, template.replace("{dir}", &data))?;
        }
    }
    Ok(dir)
}

/// `preferred` when it can be bound on 127.0.0.1, else a free port.
fn port_or_free(preferred: u16) -> u16 {
    if std::net::TcpListener::bind(("127.0.0.1", preferred)).is_ok() {
        return preferred;
    }
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(preferred)
}

async fn pipe(prefix: &'static str, stream: impl AsyncRead + Unpin, to_stderr: bool) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if to_stderr {
            eprintln!("{prefix} {line}");
        } else {
            println!("{prefix} {line}");
        }
    }
}

fn spawn_piped(mut cmd: Command, prefix: &'static str) -> std::io::Result<Child> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn()?;
    if let Some(out) = child.stdout.take() {
        tokio::spawn(pipe(prefix, out, false));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(pipe(prefix, err, true));
    }
    Ok(child)
}

fn signal_child(child: &Child, signal: &str) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status();
    }
}

async fn wait_outbound(port: u16, sidecar: &mut Child) -> bool {
    for _ in 0..600 {
        if let Ok(Some(_)) = sidecar.try_wait() {
            return false;
        }
        if crate::sidecar::outbound_ready(port).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Runs `tandem run` to completion.
pub(crate) fn main(args: RunArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tandem run: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(run(args))
}

async fn run(args: RunArgs) -> ExitCode {
    let app_id = args.app_id.clone().unwrap_or_else(|| {
        args.command
            .first()
            .and_then(|c| Path::new(c).file_stem())
            .map(|s| s.to_string_lossy().replace('.', "-"))
            .unwrap_or_else(|| "tandem-app".into())
    });
    let http_port = args.dapr_http_port.unwrap_or_else(|| port_or_free(3500));
    let grpc_port = args.dapr_grpc_port.unwrap_or_else(|| port_or_free(50001));
    let metrics_port = args.metrics_port.unwrap_or_else(|| port_or_free(9090));
    let resources = if args.resources_path.is_empty() {
        match default_resources(&tandem_home()) {
            Ok(dir) => vec![dir],
            Err(e) => {
                eprintln!(
                    "tandem run: cannot create the default resources under {}: {e}",
                    tandem_home().display()
                );
                return ExitCode::FAILURE;
            }
        }
    } else {
        args.resources_path.clone()
    };

    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("tandem run: cannot find its own binary: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut sidecar = Command::new(exe);
    sidecar
        .arg("sidecar")
        .args(["--app-id", &app_id])
        .args(["--dapr-http-port", &http_port.to_string()])
        .args(["--dapr-grpc-port", &grpc_port.to_string()])
        .args(["--metrics-port", &metrics_port.to_string()])
        .args(["--app-protocol", &args.app_protocol])
        .args(["--app-channel-address", &args.app_channel_address])
        .args(["--log-level", &args.log_level])
        .args([
            "--app-max-concurrency",
            &args.app_max_concurrency.to_string(),
        ]);
    for dir in &resources {
        sidecar.arg("--resources-path").arg(dir);
    }
    // Local name resolution shares the embedded defaults' home.
    if std::env::var_os("TANDEM_NAME_RESOLUTION_DB").is_none() {
        sidecar.env(
            "TANDEM_NAME_RESOLUTION_DB",
            tandem_home().join("nameresolution.db"),
        );
    }
    if let Some(port) = args.app_port {
        sidecar.args(["--app-port", &port.to_string()]);
    }
    if let Some(port) = args.dapr_internal_grpc_port {
        sidecar.args(["--dapr-internal-grpc-port", &port.to_string()]);
    }
    if let Some(config) = &args.config {
        sidecar.arg("--config").arg(config);
    }
    if let Some(size) = &args.max_body_size {
        sidecar.args(["--max-body-size", size]);
    }
    if args.enable_api_logging {
        sidecar.arg("--enable-api-logging");
    }
    if args.enable_app_health_check {
        sidecar.arg("--enable-app-health-check");
        if let Some(p) = &args.app_health_check_path {
            sidecar.args(["--app-health-check-path", p]);
        }
        if let Some(v) = args.app_health_probe_interval {
            sidecar.args(["--app-health-probe-interval", &v.to_string()]);
        }
        if let Some(v) = args.app_health_probe_timeout {
            sidecar.args(["--app-health-probe-timeout", &v.to_string()]);
        }
        if let Some(v) = args.app_health_threshold {
            sidecar.args(["--app-health-threshold", &v.to_string()]);
        }
    }
    for (flag, set) in [
        (
            "--placement-host-address",
            args.placement_host_address.is_some(),
        ),
        (
            "--scheduler-host-address",
            args.scheduler_host_address.is_some(),
        ),
        ("--unix-domain-socket", args.unix_domain_socket.is_some()),
        ("--enable-profiling", args.enable_profiling.is_some()),
        ("--profile-port", args.profile_port.is_some()),
        ("--run-file", args.run_file.is_some()),
    ] {
        if set {
            eprintln!(
                "tandem run: {flag} is accepted for compatibility with dapr run and has no effect yet"
            );
        }
    }

    let mut sidecar = match spawn_piped(sidecar, "== TANDEM ==") {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tandem run: cannot start the sidecar: {e}");
            return ExitCode::FAILURE;
        }
    };
    if !wait_outbound(http_port, &mut sidecar).await {
        eprintln!("tandem run: the sidecar did not become ready");
        let _ = sidecar.kill().await;
        return ExitCode::FAILURE;
    }
    eprintln!("tandem run: sidecar for app '{app_id}' is ready on HTTP port {http_port}");

    let Some((program, rest)) = args.command.split_first() else {
        eprintln!("tandem run: no app command given; running the sidecar alone (Ctrl-C to stop)");
        return wait_sidecar_only(sidecar).await;
    };
    let mut app = Command::new(program);
    app.args(rest)
        .env("APP_ID", &app_id)
        .env("DAPR_HTTP_PORT", http_port.to_string())
        .env("DAPR_GRPC_PORT", grpc_port.to_string())
        .env("DAPR_METRICS_PORT", metrics_port.to_string())
        .env("APP_PROTOCOL", &args.app_protocol)
        .env("APP_CHANNEL_ADDRESS", &args.app_channel_address)
        .env("PYTHONUNBUFFERED", "1");
    if let Some(port) = args.app_port {
        app.env("APP_PORT", port.to_string());
    }
    let mut app = match spawn_piped(app, "== APP ==") {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tandem run: cannot start the app '{program}': {e}");
            signal_child(&sidecar, "TERM");
            let _ = sidecar.wait().await;
            return ExitCode::FAILURE;
        }
    };

    let code = tokio::select! {
        status = app.wait() => status.ok().and_then(|s| s.code()).unwrap_or(1),
        _ = terminate() => {
            signal_child(&app, "TERM");
            match tokio::time::timeout(Duration::from_secs(10), app.wait()).await {
                Ok(status) => status.ok().and_then(|s| s.code()).unwrap_or(0),
                Err(_) => { let _ = app.kill().await; 1 }
            }
        }
        status = sidecar.wait() => {
            eprintln!("tandem run: the sidecar exited ({}); stopping the app", status.map(|s| s.to_string()).unwrap_or_default());
            signal_child(&app, "TERM");
            let _ = tokio::time::timeout(Duration::from_secs(10), app.wait()).await;
            return ExitCode::FAILURE;
        }
    };
    signal_child(&sidecar, "TERM");
    if tokio::time::timeout(Duration::from_secs(10), sidecar.wait())
        .await
        .is_err()
    {
        let _ = sidecar.kill().await;
    }
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

async fn wait_sidecar_only(mut sidecar: Child) -> ExitCode {
    tokio::select! {
        status = sidecar.wait() => if status.is_ok_and(|s| s.success()) { ExitCode::SUCCESS } else { ExitCode::FAILURE },
        _ = terminate() => {
            signal_child(&sidecar, "TERM");
            let ok = tokio::time::timeout(Duration::from_secs(10), sidecar.wait()).await.is_ok_and(|s| s.is_ok_and(|s| s.success()));
            if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
    }
}

async fn terminate() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
