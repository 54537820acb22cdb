//! Starting and stopping the sidecar process.

use std::collections::HashMap;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::ArgMatches;
use tandem_api::grpc::GrpcOptions;
use tandem_api::http::HttpOptions;
use tandem_runtime::app_channel::{AppChannelOptions, HealthCheck};
use tandem_runtime::lifecycle::StopKind;
use tandem_runtime::metadata::{AppConnectionInfo, AppHealthInfo};
use tandem_runtime::{Runtime, RuntimeOptions};
use tokio::net::TcpListener;
use tracing::{debug, error, info, warn};

use crate::cli::sidecar::{SidecarArgs, unimplemented_flags_set};
use crate::{api_log, logging, metrics, registry};

/// The least time given to exporting the last spans at shutdown, even past the grace period.
const FLUSH_AT_LEAST: Duration = Duration::from_secs(1);

/// Runs `tandem sidecar` to completion.
pub(crate) fn main(args: SidecarArgs, matches: &ArgMatches) -> ExitCode {
    if args.version {
        println!("{}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    if args.build_info {
        println!(
            "Version: {}\nRuntime: tandem (Rust)",
            env!("CARGO_PKG_VERSION")
        );
        return ExitCode::SUCCESS;
    }
    // Before any other thread exists: the threads started afterwards inherit the policy.
    let policy = crate::sched::tune();
    logging::init(&args.log_level, args.log_as_json, &args.app_id);
    match policy {
        crate::sched::Policy::Refused(e) => {
            debug!(error = %e, "cannot run under SCHED_BATCH; keeping the default policy")
        }
        p => debug!(policy = ?p, "CPU scheduling policy"),
    }
    for flag in unimplemented_flags_set(matches) {
        warn!(flag = %flag, "flag accepted for compatibility with daprd; it has no effect in this build yet");
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = worker_threads(std::env::var("TANDEM_WORKER_THREADS").ok().as_deref(), cpus);
    let built = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    };
    let rt = match built {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(run(args))
}

/// Most worker threads chosen without `TANDEM_WORKER_THREADS`.
const MAX_DEFAULT_WORKERS: usize = 4;

/// How many threads run the sidecar's tasks: `TANDEM_WORKER_THREADS` when it holds a
/// positive number (like `GOMAXPROCS` for daprd), otherwise half the CPUs the process may use
/// (`cpus`: affinity and cgroup quota included), at least 1 and at most
/// [`MAX_DEFAULT_WORKERS`]. The sidecar shares its machine with the app it serves; on one or
/// two CPUs a single thread (a current-thread runtime) avoids waking a second worker and
/// moving tasks between threads on every request, which on two cores costs more than the
/// second thread brings (`docs/performance.md`, "Worker threads").
fn worker_threads(setting: Option<&str>, cpus: usize) -> usize {
    setting
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or_else(|| (cpus / 2).clamp(1, MAX_DEFAULT_WORKERS))
}

async fn run(args: SidecarArgs) -> ExitCode {
    if args.wait {
        return wait_outbound(args.dapr_http_port).await;
    }
    match start(args).await {
        Ok(code) => code,
        Err(msg) => {
            error!("{msg}");
            ExitCode::FAILURE
        }
    }
}

async fn start(args: SidecarArgs) -> Result<ExitCode, String> {
    let kubernetes = args.mode == "kubernetes";
    #[cfg(not(feature = "kubernetes"))]
    if kubernetes {
        return Err(
            "--mode kubernetes is not available in this build of tandem (built without the kubernetes feature)"
                .into(),
        );
    }
    if args.app_id.is_empty() {
        return Err("--app-id is required".into());
    }
    if args.app_id.contains('.') {
        return Err(format!(
            "invalid --app-id '{}': app ids cannot contain dots",
            args.app_id
        ));
    }
    let max_body_size = args.max_body_size()?;
    let env: HashMap<String, String> = std::env::vars().collect();
    let non_empty = |k: &str| env.get(k).filter(|v| !v.is_empty()).cloned();
    let mut namespace = non_empty("NAMESPACE");
    #[cfg(feature = "kubernetes")]
    if kubernetes {
        namespace = Some(tandem_kube::client::namespace(namespace.as_deref()));
    }

    let ctx = tandem_config::LoadContext {
        app_id: args.app_id.clone(),
        namespace: namespace.clone(),
        pod_name: non_empty("POD_NAME"),
    };
    #[cfg(feature = "kubernetes")]
    let mut cluster = None;
    let (resources, configuration) = if kubernetes {
        #[cfg(feature = "kubernetes")]
        {
            let (resources, configuration, c) = crate::kubernetes::load(&args, &ctx).await?;
            cluster = Some(c);
            (resources, configuration)
        }
        #[cfg(not(feature = "kubernetes"))]
        unreachable!("refused above")
    } else {
        let resources = tandem_config::load_resources(&args.resource_paths(), &ctx)
            .map_err(|e| e.to_string())?;
        let configuration = if args.config.is_empty() {
            tandem_config::Configuration::default()
        } else {
            tandem_config::load_configuration(&args.config, &|k| env.get(k).cloned())
                .map_err(|e| e.to_string())?
        };
        (resources, configuration)
    };
    for skipped in &resources.skipped {
        debug!(reason = %skipped, "resource skipped");
    }

    let runtime_metrics = if args.enable_metrics && configuration.metric.enabled {
        let m = tandem_runtime::metrics::Metrics::new(
            &args.app_id,
            namespace.as_deref(),
            &configuration.metric,
        )
        .map_err(|e| format!("--config: {e}"))?;
        Some(Arc::new(m))
    } else {
        None
    };
    let security = crate::mtls::security(
        args.enable_mtls,
        kubernetes,
        &configuration,
        &args.app_id,
        namespace.as_deref(),
        &env,
        runtime_metrics.as_ref(),
    )?;
    let options = RuntimeOptions {
        app_id: args.app_id.clone(),
        namespace,
        app_connection: AppConnectionInfo {
            port: args.app_port,
            protocol: args.app_protocol.clone(),
            channel_address: args.app_channel_address.clone(),
            max_concurrency: u32::try_from(args.app_max_concurrency)
                .ok()
                .filter(|n| *n > 0),
            health: args.enable_app_health_check.then(|| AppHealthInfo {
                path: args
                    .app_protocol
                    .starts_with("http")
                    .then(|| args.app_health_check_path.clone()),
                interval: format!("{}s", args.app_health_probe_interval),
                timeout: format!("{}ms", args.app_health_probe_timeout),
                threshold: args.app_health_threshold,
            }),
        },
        env: env.clone(),
        app_channel: args.app_port.map(|port| AppChannelOptions {
            port,
            address: args.app_channel_address.clone(),
            protocol: args.app_protocol.clone(),
            token: non_empty("APP_API_TOKEN"),
            max_concurrency: usize::try_from(args.app_max_concurrency)
                .ok()
                .filter(|n| *n > 0),
            health: args.enable_app_health_check.then(|| HealthCheck {
                path: args.app_health_check_path.clone(),
                interval: Duration::from_secs(args.app_health_probe_interval),
                timeout: Duration::from_millis(args.app_health_probe_timeout),
                threshold: args.app_health_threshold,
            }),
            max_message_size: max_body_size,
        }),
        invoke: tandem_runtime::invoke::InvokeOptions {
            security,
            ..invoke_options(&args.app_id, &configuration, &env, kubernetes).await
        },
        metrics: runtime_metrics.clone(),
    };
    let registry = registry::registry();
    let runtime = Runtime::build(options, &resources, &configuration, &registry)
        .await
        .map_err(|e| e.to_string())?;
    #[cfg(feature = "kubernetes")]
    if let Some(cluster) = cluster {
        if configuration.feature_enabled("HotReload") {
            crate::kubernetes::follow(cluster, runtime.clone(), ctx.clone());
        } else {
            info!(
                "the HotReload feature is disabled in the Configuration: changes in the Kubernetes API apply when the sidecar restarts"
            );
        }
    }
    let components = runtime.metadata.snapshot().components;
    for c in &components {
        info!(component = %c.name, r#type = %c.type_name, version = %c.version, "component loaded");
    }
    let metrics = runtime_metrics.map(|rm| {
        let m = metrics::Metrics::new(rm);
        m.set_components_loaded(components.len() as u64);
        Arc::new(m)
    });
    let mut servers = Vec::new();
    if let Some(m) = &metrics {
        start_metrics(&args, &runtime, m.clone(), &mut servers).await;
    }

    let api_rules = api_rules(&configuration.api);
    let http_options = HttpOptions {
        max_body_size,
        api_token: non_empty("DAPR_API_TOKEN"),
        api_rules: api_rules.clone(),
    };
    let api_logging = api_log::ApiLogging::from_config(
        args.enable_api_logging,
        &configuration.logging.api_logging,
    );
    let router = tandem_api::http::api(
        runtime.clone(),
        &http_options,
        crate::observe::HttpObserver::new(metrics.clone(), api_logging),
    );
    let mut port = args.dapr_http_port;
    for addr in args.listen_addresses() {
        let listener = TcpListener::bind((addr.as_str(), port))
            .await
            .map_err(|e| format!("cannot listen on {addr}:{port} (--dapr-http-port): {e}"))?;
        let bound = listener.local_addr().map_err(|e| e.to_string())?;
        port = bound.port();
        info!(address = %bound, "HTTP API listening");
        let shutdown = runtime.shutdown.servers_stopped();
        let router = router.clone();
        servers.push(tokio::spawn(async move {
            if let Err(e) = tandem_api::http::serve(listener, router, async move {
                shutdown.await;
            })
            .await
            {
                error!(error = %e, "HTTP API server failed");
            }
        }));
    }
    let grpc_options = GrpcOptions {
        max_body_size,
        api_token: http_options.api_token.clone(),
        api_rules,
    };
    let grpc_port = start_grpc(
        &args,
        &runtime,
        &grpc_options,
        (metrics, api_logging),
        &mut servers,
    )
    .await?;
    let internal_port = start_internal(&args, &runtime, &env, &mut servers).await?;
    if let Some(path) = &args.ports_file {
        write_ports_file(path, port, grpc_port, internal_port)
            .map_err(|e| format!("cannot write --ports-file {}: {e}", path.display()))?;
    }
    runtime.readiness.set_outbound_ready();
    runtime.readiness.set_ready();
    let app_work = runtime.start_app_channel();
    if !kubernetes && configuration.feature_enabled("HotReload") {
        let reconcile = args
            .hot_reload_reconcile_interval
            .as_deref()
            .map(tandem_components::metadata::parse_duration)
            .transpose()
            .map_err(|e| format!("invalid --hot-reload-reconcile-interval: {e}"))?
            .filter(|d| !d.is_zero())
            .unwrap_or(Duration::from_secs(60));
        crate::reload::spawn(runtime.clone(), args.resource_paths(), ctx, reconcile);
    }
    info!(app_id = %runtime.app_id, http_port = port, grpc_port, "tandem sidecar is ready");
    release_start_up_pages();

    let kind = wait_for_stop(&runtime).await;
    if kind == StopKind::Forced {
        warn!("forced shutdown requested: exiting at once");
        return Ok(ExitCode::FAILURE);
    }
    info!("shutting down gracefully");
    let grace = Duration::from_secs(args.dapr_graceful_shutdown_seconds);
    let deadline = tokio::time::Instant::now() + grace;
    // Leave name resolution first, so other sidecars stop picking this one while it drains.
    let _ = tokio::time::timeout(Duration::from_secs(2), runtime.invoke.unregister()).await;
    // Then stop taking messages and let in-flight deliveries finish and be acknowledged; the
    // API stays up meanwhile, so a handler can still call its sidecar.
    if let Some(work) = app_work
        && tokio::time::timeout_at(deadline, work).await.is_err()
    {
        warn!(
            seconds = args.dapr_graceful_shutdown_seconds,
            "graceful shutdown timed out while deliveries were in flight; unacknowledged messages stay with the broker"
        );
    }
    // Last, the servers: no new connections, in-flight requests answered.
    runtime.shutdown.stop_servers();
    let drain = async {
        for s in servers {
            let _ = s.await;
        }
    };
    if tokio::time::timeout_at(deadline, drain).await.is_err() {
        warn!(
            seconds = args.dapr_graceful_shutdown_seconds,
            "graceful shutdown timed out"
        );
    }
    // The spans of what was just answered may still wait for their batch: send them now,
    // within what is left of the grace period (at least a moment, even when it is spent).
    let now = tokio::time::Instant::now();
    let flush_within = deadline.max(now + FLUSH_AT_LEAST) - now;
    if !runtime.tracer.flush(flush_within).await {
        warn!("spans still queued at shutdown could not all be exported in time");
    }
    Ok(ExitCode::SUCCESS)
}

/// A moment after readiness, gives back the pages of code and read-only data that only
/// start-up used (see [`resident`](crate::resident)): an idle sidecar keeps about 10 MiB less
/// mapped, and one that serves requests maps back in only the code they run. Then the free
/// memory start-up left in the heap goes back to the kernel ([`heap`](crate::heap)). Reading
/// `/proc/self/smaps` and trimming the heap take well under a millisecond each, so they run
/// on the async worker.
fn release_start_up_pages() {
    tokio::spawn(async {
        tokio::time::sleep(crate::resident::RELEASE_AFTER).await;
        match crate::resident::release_start_up_pages() {
            Ok(kib) => debug!(kib, "pages only start-up used given back to the page cache"),
            Err(e) => debug!(error = %e, "cannot list this process's mappings"),
        }
        let started = std::time::Instant::now();
        crate::heap::give_back();
        debug!(
            micros = started.elapsed().as_micros() as u64,
            "free heap memory given back"
        );
    });
}

/// Configuration `spec.api` in the API crate's terms.
fn api_rules(spec: &tandem_config::ApiSpec) -> tandem_api::allowlist::ApiRules {
    let convert = |rules: &[tandem_config::ApiRule]| {
        rules
            .iter()
            .map(|r| tandem_api::allowlist::ApiRule {
                name: r.name.clone(),
                version: r.version.clone(),
                protocol: r.protocol.clone(),
            })
            .collect()
    };
    tandem_api::allowlist::ApiRules {
        allowed: convert(&spec.allowed),
        denied: convert(&spec.denied),
    }
}

async fn wait_for_stop(runtime: &Arc<Runtime>) -> StopKind {
    let stop = runtime.shutdown.wait();
    tokio::select! {
        kind = stop => kind,
        _ = terminate_signal() => {
            runtime.shutdown.trigger();
            StopKind::Graceful
        }
    }
}

pub(crate) async fn terminate_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn write_ports_file(path: &Path, http: u16, grpc: u16, internal: u16) -> std::io::Result<()> {
    let body = serde_json::json!({ "http": http, "grpc": grpc, "internal": internal, "pid": std::process::id() });
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, body.to_string())?;
    std::fs::rename(tmp, path)
}

/// Binds the gRPC API (`--dapr-grpc-port`) on every `--dapr-listen-addresses` address and
/// serves one shared set of routes on them until shutdown. Returns the bound port (with port
/// 0, the port the first address got, reused for the others as for HTTP).
async fn start_grpc(
    args: &SidecarArgs,
    runtime: &Arc<Runtime>,
    options: &GrpcOptions,
    (metrics, api_logging): (Option<Arc<metrics::Metrics>>, Option<api_log::ApiLogging>),
    servers: &mut Vec<tokio::task::JoinHandle<()>>,
) -> Result<u16, String> {
    let routes = tandem_api::grpc::api(
        runtime.clone(),
        options,
        crate::observe::GrpcObserver::new(metrics, api_logging),
    );
    let mut port = args.dapr_grpc_port;
    for addr in args.listen_addresses() {
        let listener = TcpListener::bind((addr.as_str(), port))
            .await
            .map_err(|e| format!("cannot listen on {addr}:{port} (--dapr-grpc-port): {e}"))?;
        let bound = listener.local_addr().map_err(|e| e.to_string())?;
        port = bound.port();
        info!(address = %bound, "gRPC API listening");
        let shutdown = runtime.shutdown.servers_stopped();
        let routes = routes.clone();
        servers.push(tokio::spawn(async move {
            if let Err(e) = tandem_api::grpc::serve(listener, routes, async move {
                shutdown.await;
            })
            .await
            {
                error!(error = %e, "gRPC API server failed");
            }
        }));
    }
    Ok(port)
}

/// Serves the Prometheus metrics on `--metrics-listen-address`:`--metrics-port` until
/// shutdown. A port that cannot be bound is logged and leaves the sidecar running without
/// the endpoint.
async fn start_metrics(
    args: &SidecarArgs,
    runtime: &Arc<Runtime>,
    metrics: Arc<metrics::Metrics>,
    servers: &mut Vec<tokio::task::JoinHandle<()>>,
) {
    let addr = args
        .metrics_listen_address
        .trim()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let addr = if addr.is_empty() { "0.0.0.0" } else { addr };
    let port = args.metrics_port;
    let listener = match TcpListener::bind((addr, port)).await {
        Ok(l) => l,
        Err(e) => {
            error!(error = %e, "cannot listen on {addr}:{port} (--metrics-port): metrics are not served");
            return;
        }
    };
    if let Ok(bound) = listener.local_addr() {
        info!(address = %bound, "metrics server listening");
    }
    let shutdown = runtime.shutdown.servers_stopped();
    let rt = runtime.clone();
    servers.push(tokio::spawn(async move {
        if let Err(e) = metrics::serve(listener, metrics, rt, async move {
            shutdown.await;
        })
        .await
        {
            error!(error = %e, "metrics server failed");
        }
    }));
}

/// Service invocation settings: the name resolver from `spec.nameResolution` (a failure leaves
/// calls to other apps failing with the reason, it does not stop the sidecar) and this
/// machine's address and name for the forwarding headers.
async fn invoke_options(
    app_id: &str,
    configuration: &tandem_config::Configuration,
    env: &HashMap<String, String>,
    kubernetes: bool,
) -> tandem_runtime::invoke::InvokeOptions {
    use tandem_runtime::invoke::{headers, resolution};
    let spec = configuration.name_resolution.as_ref();
    let component = spec
        .map(|s| s.component.trim().to_ascii_lowercase())
        .unwrap_or_default();
    // In Kubernetes the default (and daprd's `kubernetes` component) is the `<app-id>-dapr`
    // Service that `tandem operator` keeps.
    let built = if kubernetes && (component.is_empty() || component == "kubernetes") {
        let mut metadata = tandem_components::Metadata::new("nameresolution", app_id);
        if let Some(serde_json::Value::Object(map)) = spec.map(|s| &s.configuration) {
            for (k, v) in map {
                match v {
                    serde_json::Value::String(s) => metadata.insert(k.clone(), s.clone()),
                    serde_json::Value::Null => {}
                    other => metadata.insert(k.clone(), other.to_string()),
                }
            }
        }
        registry::name_resolver("kubernetes", metadata).await
    } else {
        match resolution::choose_resolver(spec, app_id, env) {
            Ok(choice) => registry::name_resolver(&choice.component, choice.metadata).await,
            Err(e) => Err(e),
        }
    };
    let (resolver, resolver_problem) = match built {
        Ok(r) => (Some(r), None),
        Err(e) => {
            warn!(error = %e, "name resolution is unavailable: this app cannot call other apps nor be called by them");
            (None, Some(format!("name resolution is unavailable: {e}")))
        }
    };
    tandem_runtime::invoke::InvokeOptions {
        resolver,
        resolver_problem,
        host_address: env
            .get("DAPR_HOST_IP")
            .filter(|v| !v.is_empty())
            .cloned()
            .or_else(headers::detect_host_address),
        host_name: headers::detect_host_name(env),
        security: None,
    }
}

/// Binds the internal listener (`--dapr-internal-grpc-port`, any free port by default), serves
/// other sidecars' calls on it and registers it in name resolution. Returns the bound port.
///
/// The address registered is `DAPR_HOST_IP` when set, else the listen address when it is a
/// specific one, else `127.0.0.1`: local mode shares one database file between sidecars of one
/// machine, and the loopback address survives network changes.
async fn start_internal(
    args: &SidecarArgs,
    runtime: &Arc<Runtime>,
    env: &HashMap<String, String>,
    servers: &mut Vec<tokio::task::JoinHandle<()>>,
) -> Result<u16, String> {
    let listen = args
        .dapr_internal_grpc_listen_address
        .trim()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let listen = if listen.is_empty() { "0.0.0.0" } else { listen };
    let port = args.dapr_internal_grpc_port.unwrap_or(0);
    let listener = TcpListener::bind((listen, port)).await.map_err(|e| {
        format!("cannot listen on {listen}:{port} (--dapr-internal-grpc-port): {e}")
    })?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    info!(address = %bound, "internal API (sidecar to sidecar) listening");
    let shutdown = runtime.shutdown.servers_stopped();
    let rt = runtime.clone();
    servers.push(tokio::spawn(async move {
        if let Err(e) = tandem_api::internal::serve(listener, rt, async move {
            shutdown.await;
        })
        .await
        {
            error!(error = %e, "internal API server failed");
        }
    }));
    let host = match env.get("DAPR_HOST_IP").filter(|v| !v.is_empty()) {
        Some(ip) => ip.clone(),
        None if !bound.ip().is_unspecified() => bound.ip().to_string(),
        None => "127.0.0.1".to_owned(),
    };
    let address = if host.contains(':') {
        format!("[{host}]:{}", bound.port())
    } else {
        format!("{host}:{}", bound.port())
    };
    if let Err(e) = runtime.invoke.register(&address).await {
        warn!(error = %e, "not registered in name resolution: other apps cannot call this one");
    }
    Ok(bound.port())
}

/// `--wait`: polls `/v1.0/healthz/outbound` of a running sidecar until it answers 204.
async fn wait_outbound(port: u16) -> ExitCode {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while tokio::time::Instant::now() < deadline {
        if outbound_ready(port).await {
            return ExitCode::SUCCESS;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    error!(port, "the sidecar did not become ready within 60s");
    ExitCode::FAILURE
}

/// One probe: whether `GET /v1.0/healthz/outbound` on `127.0.0.1:port` answers 204. A bare
/// HTTP/1.1 exchange keeps the binary free of an HTTP client for this one call.
pub(crate) async fn outbound_ready(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let req = format!(
        "GET /v1.0/healthz/outbound HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    );
    if s.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut buf = [0u8; 32];
    matches!(s.read(&mut buf).await, Ok(n) if buf[..n].starts_with(b"HTTP/1.1 204"))
}

#[cfg(test)]
mod tests {
    use super::worker_threads;

    #[test]
    fn worker_threads_default_to_half_the_cpus_between_one_and_four() {
        assert_eq!(worker_threads(None, 1), 1);
        assert_eq!(worker_threads(None, 2), 1);
        assert_eq!(worker_threads(None, 3), 1);
        assert_eq!(worker_threads(None, 4), 2);
        assert_eq!(worker_threads(None, 6), 3);
        assert_eq!(worker_threads(None, 64), 4);
    }

    #[test]
    fn a_positive_setting_wins_and_a_bad_one_is_ignored() {
        assert_eq!(worker_threads(Some("3"), 2), 3);
        assert_eq!(worker_threads(Some(" 1 "), 64), 1);
        assert_eq!(worker_threads(Some("0"), 8), 4);
        assert_eq!(worker_threads(Some("many"), 4), 2);
        assert_eq!(worker_threads(Some(""), 2), 1);
    }
}
