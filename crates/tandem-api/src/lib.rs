//! Tandem's front ends: thin adapters from wire protocols to the runtime services.
//!
//! - [`http`]: the Dapr HTTP API (axum), error rendering in [`http::error`].
//!
//! Handlers only extract, call a [`tandem_runtime::Runtime`] service and render; no building
//! block logic lives here.

pub mod http;
