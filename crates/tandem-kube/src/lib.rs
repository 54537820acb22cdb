//! Tandem in Kubernetes: what the sidecar reads from the Kubernetes API in `--mode kubernetes`,
//! the components that talk to the API, and `tandem operator`.
//!
//! Map of the crate:
//! - [`client`]: connecting (in-cluster service account, or the kubeconfig named by
//!   `KUBECONFIG` / `~/.kube/config` for local use) and the sidecar's namespace (`NAMESPACE`,
//!   else the service-account namespace file).
//! - [`resources`]: the `dapr.io` resources of one namespace (Component, Configuration,
//!   Resiliency, Subscription v1alpha1 and v2alpha1, HTTPEndpoint), listed once and then
//!   watched; each change is published as a new [`resources::Snapshot`], which turns into
//!   [`tandem_config::Resources`] through the same parser and checks as resource files.
//! - [`secretstore`]: `secretstores.kubernetes`, the Secrets of a namespace.
//! - [`nameresolution`]: `<app-id>-dapr.<namespace>.svc.<cluster domain>:<port>`, the headless
//!   Service the operator keeps for every app.
//! - [`operator`]: keeps a `<app-id>-dapr` Service for every Deployment and StatefulSet whose pod
//!   template is annotated `dapr.io/enabled: "true"`.

pub mod client;
pub mod nameresolution;
pub mod operator;
pub mod resources;
pub mod secretstore;

pub use kube::Client;
