//! Tandem's sidecar injector: a Kubernetes mutating admission webhook that adds a `daprd`
//! container running Tandem to every pod annotated `dapr.io/enabled: "true"`, the way Dapr's
//! injector does, so existing Dapr manifests work unchanged.
//!
//! - [`annotations`]: reads the `dapr.io/*` annotations into a [`SidecarSpec`], reporting
//!   every invalid value.
//! - [`patch`]: builds the JSON Patch (the container, labels, app-container env).
//! - [`review`]: AdmissionReview v1 in and out, and which callers are trusted.
//! - [`server`]: the HTTPS server (`POST /mutate`, `GET /healthz`) whose certificate is
//!   re-read when its files change.

pub mod annotations;
pub mod patch;
pub mod review;
pub mod server;

pub use annotations::SidecarSpec;
pub use review::{BadRequest, review};

/// Service accounts whose pods are injected without further configuration: the built-in
/// controllers that create pods for workloads (`namespace:name`).
pub const DEFAULT_ALLOWED_SERVICE_ACCOUNTS: &[&str] = &[
    "kube-system:replicaset-controller",
    "kube-system:replication-controller",
    "kube-system:deployment-controller",
    "kube-system:cronjob-controller",
    "kube-system:job-controller",
    "kube-system:statefulset-controller",
    "kube-system:daemon-set-controller",
    "openshift-operator-lifecycle-manager:olm-operator-serviceaccount",
    "tekton-pipelines:tekton-pipelines-controller",
    "mirrord:mirrord-operator",
];

/// The injector's own settings (flags and environment of `tandem injector`).
#[derive(Debug, Clone)]
pub struct InjectorConfig {
    /// The sidecar image (`--sidecar-image`, env `SIDECAR_IMAGE`).
    pub sidecar_image: String,
    /// `imagePullPolicy` of the sidecar.
    pub sidecar_image_pull_policy: String,
    /// The container's `command`: the image's Tandem binary in sidecar mode.
    pub sidecar_command: Vec<String>,
    /// Extra `namespace:name` globs of service accounts whose pods are injected.
    pub allowed_service_accounts: Vec<String>,
    /// `securityContext.runAsUser` of the sidecar, if set.
    pub sidecar_run_as_user: Option<i64>,
    /// `securityContext.runAsGroup` of the sidecar, if set.
    pub sidecar_run_as_group: Option<i64>,
}

impl InjectorConfig {
    /// Settings with the defaults and this sidecar image.
    pub fn new(sidecar_image: impl Into<String>) -> Self {
        InjectorConfig {
            sidecar_image: sidecar_image.into(),
            sidecar_image_pull_policy: "IfNotPresent".to_owned(),
            sidecar_command: vec!["/tandem".to_owned(), "sidecar".to_owned()],
            allowed_service_accounts: Vec::new(),
            sidecar_run_as_user: None,
            sidecar_run_as_group: None,
        }
    }

    /// Whether pods created by this user get a sidecar: a built-in controller, an allowed
    /// service account, or a member of `system:masters`. Anyone else's pods are admitted
    /// unchanged, so a plain `kubectl run` by a user gets no sidecar.
    pub fn caller_allowed(&self, username: &str, groups: &[String]) -> bool {
        if groups.iter().any(|g| g == "system:masters") {
            return true;
        }
        let Some(sa) = username.strip_prefix("system:serviceaccount:") else {
            return false;
        };
        DEFAULT_ALLOWED_SERVICE_ACCOUNTS.contains(&sa)
            || self
                .allowed_service_accounts
                .iter()
                .any(|p| review::glob_match(p.trim(), sa))
    }
}
