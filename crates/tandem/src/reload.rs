//! Hot reload of component and subscription files (daprd's `HotReload` feature, on by default): the
//! `--resources-path` folders are watched for added, changed and removed `.yaml`/`.yml` files
//! (inotify on Linux: nothing runs while nothing changes; elsewhere, or when a folder cannot be
//! watched, a check every second), a change is confirmed by a `stat` per file (nothing is read
//! unless something changed), and the component definitions are applied again every
//! `--hot-reload-reconcile-interval` (60 s by default) in any case. A folder that no longer
//! parses is reported and the running components stay as they are.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tandem_runtime::Runtime;
use tracing::{error, info, warn};

/// How often the folders are looked at when they cannot be watched.
const SCAN_INTERVAL: Duration = Duration::from_secs(1);

/// How long a burst of changes (an editor writing a file in steps, several files copied) is
/// waited out before the folders are looked at.
const SETTLE: Duration = Duration::from_millis(50);

/// Tells when the folders may have changed.
enum Changes {
    /// inotify events on every folder.
    #[cfg(target_os = "linux")]
    Watched(inotify::EventStream<Vec<u8>>),
    /// A look every [`SCAN_INTERVAL`].
    Polled,
}

impl Changes {
    fn new(paths: &[PathBuf]) -> Self {
        #[cfg(target_os = "linux")]
        match watch(paths) {
            Ok(stream) => return Self::Watched(stream),
            Err(e) => {
                warn!(error = %e, "cannot watch the resources folders; checking them every second")
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = paths;
        Self::Polled
    }

    /// Waits for the next possible change.
    async fn next(&mut self) {
        match self {
            #[cfg(target_os = "linux")]
            Self::Watched(stream) => {
                use futures_util::StreamExt;
                match stream.next().await {
                    Some(Ok(_)) => tokio::time::sleep(SETTLE).await,
                    Some(Err(e)) => {
                        warn!(error = %e, "watching the resources folders failed; checking them every second");
                        *self = Self::Polled;
                    }
                    None => *self = Self::Polled,
                }
            }
            Self::Polled => tokio::time::sleep(SCAN_INTERVAL).await,
        }
    }
}

#[cfg(target_os = "linux")]
fn watch(paths: &[PathBuf]) -> std::io::Result<inotify::EventStream<Vec<u8>>> {
    use inotify::{Inotify, WatchMask};
    let inotify = Inotify::init()?;
    let mask = WatchMask::CREATE
        | WatchMask::CLOSE_WRITE
        | WatchMask::MODIFY
        | WatchMask::ATTRIB
        | WatchMask::DELETE
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF;
    for dir in paths {
        inotify.watches().add(dir, mask)?;
    }
    inotify.into_event_stream(vec![0u8; 4096])
}

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
        let mut changes = Changes::new(&paths);
        let mut next_reconcile = tokio::time::Instant::now() + reconcile;
        loop {
            let due = tokio::select! {
                _ = &mut stop => return,
                () = changes.next() => false,
                () = tokio::time::sleep_until(next_reconcile) => true,
            };
            let scan_paths = paths.clone();
            let Ok(now) = tokio::task::spawn_blocking(move || fingerprint(&scan_paths)).await
            else {
                continue;
            };
            if now == last && !due {
                continue;
            }
            next_reconcile = tokio::time::Instant::now() + reconcile;
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
