//! `tandem injector`: binds the webhook's ports and serves until SIGTERM.

use std::process::ExitCode;
use std::sync::Arc;

use tandem_injector::InjectorConfig;
use tandem_injector::server::{self, ReloadingCert};
use tokio::net::TcpListener;
use tracing::{error, info};

use crate::cli::injector::InjectorArgs;
use crate::logging;

pub(crate) fn main(args: InjectorArgs) -> ExitCode {
    logging::init(&args.log_level, args.log_as_json, "");
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: InjectorArgs) -> Result<(), String> {
    if args.sidecar_image.trim().is_empty() {
        return Err("--sidecar-image (or SIDECAR_IMAGE) is required".to_owned());
    }
    let mut cfg = InjectorConfig::new(args.sidecar_image.trim());
    cfg.sidecar_image_pull_policy = args.sidecar_image_pull_policy;
    cfg.allowed_service_accounts = args
        .allowed_service_accounts
        .into_iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    cfg.sidecar_run_as_user = args.sidecar_run_as_user;
    cfg.sidecar_run_as_group = args.sidecar_run_as_group;

    let cert = ReloadingCert::load(&args.tls_cert, &args.tls_key)
        .map_err(|e| format!("cannot load the serving certificate (--tls-cert/--tls-key): {e}"))?;
    let tls = server::tls_config(Arc::new(cert))?;
    let listen = args
        .listen_address
        .trim_start_matches('[')
        .trim_end_matches(']');
    let https = TcpListener::bind((listen, args.port))
        .await
        .map_err(|e| format!("cannot listen on {listen}:{} (--port): {e}", args.port))?;
    let health = TcpListener::bind((listen, args.healthz_port))
        .await
        .map_err(|e| {
            format!(
                "cannot listen on {listen}:{} (--healthz-port): {e}",
                args.healthz_port
            )
        })?;
    let https_port = https.local_addr().map(|a| a.port()).unwrap_or(0);
    let health_port = health.local_addr().map(|a| a.port()).unwrap_or(0);
    info!(port = https_port, healthz_port = health_port, sidecar_image = %cfg.sidecar_image, "sidecar injector listening (POST /mutate)");
    if let Some(path) = &args.ports_file {
        let body = serde_json::json!({"https": https_port, "healthz": health_port, "pid": std::process::id()});
        std::fs::write(path, body.to_string())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let health_task = tokio::spawn({
        let stop = stopped(stop_rx.clone());
        async move {
            let _ = axum::serve(health, server::health_router())
                .with_graceful_shutdown(stop)
                .await;
        }
    });
    let app = server::router(Arc::new(cfg));
    let webhook = tokio::spawn(server::serve_tls(https, tls, app, stopped(stop_rx)));
    crate::sidecar::terminate_signal().await;
    info!("shutting down");
    let _ = stop_tx.send(true);
    let _ = webhook.await;
    let _ = health_task.await;
    Ok(())
}
