//! `--mode kubernetes`: resources from the Kubernetes API instead of folders, applied while
//! running as they change; and `tandem operator`.

use std::sync::Arc;

use tandem_config::{Configuration, LoadContext, MetadataValue, Resources};
use tandem_kube::resources::{ResourceSource, Snapshot};
use tandem_runtime::Runtime;
use tracing::{error, info, warn};

use crate::cli::sidecar::SidecarArgs;

/// The name of the built-in secret store (daprd's too).
pub(crate) const BUILTIN_SECRET_STORE: &str = "kubernetes";

/// What the sidecar keeps to follow the cluster after start-up.
pub(crate) struct Cluster {
    source: ResourceSource,
    snapshot: Snapshot,
    builtin_secret_store: bool,
    resources: Resources,
}

/// Connects to the API and reads the namespace's resources and the `--config` Configuration.
pub(crate) async fn load(
    args: &SidecarArgs,
    ctx: &LoadContext,
) -> Result<(Resources, Configuration, Cluster), String> {
    let namespace = ctx.namespace.clone().unwrap_or_else(|| "default".into());
    let client = tandem_kube::client::connect(None).await?;
    let source = ResourceSource::new(client, namespace.clone());
    let snapshot = source.list().await?;
    let builtin_secret_store = !args.disable_builtin_k8s_secret_store;
    let resources = resources_of(&snapshot, ctx, builtin_secret_store);
    let configuration = match args.config.first() {
        None => Configuration::default(),
        Some(name) => {
            let name = name.display().to_string();
            source.configuration(&name).await?.ok_or_else(|| {
                format!("Configuration {name} (--config) not found in namespace {namespace}")
            })?
        }
    };
    info!(namespace = %namespace, objects = snapshot.len(), "resources read from the Kubernetes API");
    let cluster = Cluster {
        source,
        snapshot,
        builtin_secret_store,
        resources: resources.clone(),
    };
    Ok((resources, configuration, cluster))
}

/// The resources of `snapshot` for this app, with the built-in `kubernetes` secret store
/// (unless disabled or a component already has that name) as the store of every
/// `secretKeyRef` that names none, as in daprd.
fn resources_of(snapshot: &Snapshot, ctx: &LoadContext, builtin_secret_store: bool) -> Resources {
    let mut resources = snapshot.resources(ctx);
    if !builtin_secret_store {
        return resources;
    }
    if resources.component(BUILTIN_SECRET_STORE).is_none() {
        let text = format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: {BUILTIN_SECRET_STORE}\nspec:\n  type: secretstores.kubernetes\n  version: v1\n"
        );
        let file = std::path::Path::new("kubernetes:built-in secret store");
        match tandem_config::parse_resources(&text, file, &LoadContext::new(&ctx.app_id)) {
            Ok(r) => resources.components.extend(r.components),
            Err(e) => warn!(error = %e, "the built-in kubernetes secret store cannot be defined"),
        }
    }
    for c in &mut resources.components {
        let refs = c
            .metadata
            .iter()
            .any(|m| matches!(m.value, MetadataValue::SecretKeyRef { .. }));
        if refs && c.secret_store.is_none() && c.name != BUILTIN_SECRET_STORE {
            c.secret_store = Some(BUILTIN_SECRET_STORE.to_owned());
        }
    }
    resources
}

/// Follows the cluster until shutdown: each change to the namespace's Components is applied
/// to the running sidecar (added, rebuilt or dropped), and so is each change to its
/// Subscriptions; Resiliencies, HTTPEndpoints and the Configuration are read at start-up only.
pub(crate) fn follow(cluster: Cluster, runtime: Arc<Runtime>, ctx: LoadContext) {
    let mut rx = cluster.source.watch(cluster.snapshot);
    let shutdown = runtime.shutdown.wait();
    tokio::spawn(async move {
        tokio::pin!(shutdown);
        let mut last = cluster.resources;
        loop {
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { break },
                _ = &mut shutdown => break,
            }
            let snapshot = rx.borrow_and_update().clone();
            let resources = resources_of(&snapshot, &ctx, cluster.builtin_secret_store);
            crate::reload::apply(&runtime, &resources).await;
            if resources.resiliencies != last.resiliencies
                || resources.http_endpoints != last.http_endpoints
            {
                warn!(
                    "Resiliencies or HTTPEndpoints changed in the Kubernetes API: they apply when the sidecar restarts"
                );
            }
            last = resources;
        }
    });
}

/// Runs `tandem operator` until SIGTERM or Ctrl-C.
pub(crate) fn operator_main(args: crate::cli::operator::OperatorArgs) -> std::process::ExitCode {
    crate::logging::init(&args.log_level, args.log_as_json, "");
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start the async runtime");
            return std::process::ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let client = match tandem_kube::client::connect(args.kubeconfig.as_deref()).await {
            Ok(c) => c,
            Err(e) => {
                error!("{e}");
                return std::process::ExitCode::FAILURE;
            }
        };
        info!(
            namespace = args.watch_namespace.as_deref().unwrap_or("(all)"),
            "tandem operator started"
        );
        tandem_kube::operator::run(
            client,
            args.watch_namespace,
            crate::sidecar::terminate_signal(),
        )
        .await;
        info!("tandem operator stopped");
        std::process::ExitCode::SUCCESS
    })
}
