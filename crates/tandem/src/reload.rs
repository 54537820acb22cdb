//! Hot reload of component and subscription files (daprd's `HotReload` feature, on by default): the
//! `--resources-path` folders are checked every second for added, changed and removed
//! `.yaml`/`.yml` files (a `stat` per file, nothing read unless something changed), and the
//! component definitions are applied again every `--hot-reload-reconcile-interval` (60 s by
//! default) in any case. A folder that no longer parses is reported and the running
//! components stay as they are.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tandem_runtime::Runtime;
use tracing::{error, info, warn};

/// How often the folders are looked at.
const SCAN_INTERVAL: Duration = Duration::from_secs(1);

/// What the folders held at the last look: each file's path, size and modification time.
type Fingerprint = Vec<(PathBuf, u64, Option<SystemTime>)>;

fn fingerprint(paths: &[PathBuf]) -> Fingerprint {
    let mut out = Vec::new();
    for dir in paths {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let yaml = path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"));
            if !yaml {
                continue;
            }
            if let Ok(meta) = std::fs::metadata(&path)
                && meta.is_file()
            {
                out.push((path, meta.len(), meta.modified().ok()));
            }
        }
    }
    out.sort();
    out
}

/// Applies a new set of resources to the running sidecar (components and subscriptions; the
/// other kinds apply at the next start) and logs what changed. Shared by the file watcher and
/// the Kubernetes watch.
pub(crate) async fn apply(runtime: &Runtime, resources: &tandem_config::Resources) {
    let report = runtime.reload_components(&resources.components).await;
    if runtime.reload_subscriptions(&resources.subscriptions) {
        info!("subscriptions changed (hot reload)");
    }
    for name in &report.added {
        info!(component = %name, "component added (hot reload)");
    }
    for name in &report.updated {
        info!(component = %name, "component updated (hot reload)");
    }
    for name in &report.removed {
        info!(component = %name, "component removed (hot reload)");
    }
    for e in &report.failed {
        warn!(error = %e, "component not reloaded; its previous version (if any) stays");
    }
}

/// Watches `paths` until the runtime shuts down.
pub(crate) fn spawn(
    runtime: Arc<Runtime>,
    paths: Vec<PathBuf>,
    ctx: tandem_config::LoadContext,
    reconcile: Duration,
) {
    if paths.is_empty() {
        return;
    }
    let stop = runtime.shutdown.wait();
    tokio::spawn(async move {
        tokio::pin!(stop);
        let scan_paths = paths.clone();
        let mut last = tokio::task::spawn_blocking(move || fingerprint(&scan_paths))
            .await
            .unwrap_or_default();
        let mut since_reconcile = Duration::ZERO;
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(SCAN_INTERVAL) => {}
            }
            since_reconcile += SCAN_INTERVAL;
            let scan_paths = paths.clone();
            let Ok(now) = tokio::task::spawn_blocking(move || fingerprint(&scan_paths)).await
            else {
                continue;
            };
            let due = since_reconcile >= reconcile;
            if now == last && !due {
                continue;
            }
            since_reconcile = Duration::ZERO;
            let changed = now != last;
            last = now;
            let load_paths = paths.clone();
            let load_ctx = ctx.clone();
            let loaded = tokio::task::spawn_blocking(move || {
                tandem_config::load_resources(&load_paths, &load_ctx)
            })
            .await;
            let resources = match loaded {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    if changed {
                        error!(error = %e, "resources changed but cannot be loaded; components left as they were");
                    }
                    continue;
                }
                Err(_) => continue,
            };
            apply(&runtime, &resources).await;
        }
    });
}
