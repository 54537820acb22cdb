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

/// Boxes the future `make` returns, allocating first so that the optimiser can build the
/// future in the allocation.
///
/// A future is as large as its largest state: a request's whole path, several kilobytes.
/// `Box::pin(f())` builds it on the stack and then copies all of it to the heap, though only
/// its arguments are set (in release builds this measured 680 instructions of `memcpy` per
/// invocation through the HTTP API; boxed this way, that copy is gone).
pub(crate) fn boxed<F: std::future::Future>(make: impl FnOnce() -> F) -> std::pin::Pin<Box<F>> {
    Box::into_pin(Box::write(Box::new_uninit(), make()))
}
