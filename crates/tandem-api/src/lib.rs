//! Tandem's front ends: thin adapters from wire protocols to the runtime services.
//!
//! - [`http`]: the Dapr HTTP API (axum), error rendering in [`http::error`].
//! - [`grpc`]: the Dapr gRPC API (tonic, `dapr.proto.runtime.v1.Dapr`), error rendering in
//!   [`grpc::error`].
//! - [`http2`]: the gRPC port's own HTTP/2 server.
//! - [`allowlist`]: Configuration `spec.api` allow/deny rules, decided once at start-up.
//! - [`internal`]: the sidecar-to-sidecar listener serving service invocations from other
//!   Tandem sidecars.
//!
//! Handlers only extract, call a [`tandem_runtime::Runtime`] service and render; no building
//! block logic lives here.

pub mod allowlist;
pub mod grpc;
pub mod http;
pub mod http2;
pub mod internal;
