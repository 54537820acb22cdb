//! The bindings contract (`bindings.*` components).
//!
//! A binding component is an output binding (the app calls it through
//! `/v1.0/bindings/{name}` with an operation), an input binding (it produces events the
//! runtime delivers to the app), or both. Components move bytes and string metadata; the
//! runtime owns the API shapes and the delivery to the app.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::Result;
use crate::pubsub::Subscription;

/// A call on an output binding.
#[derive(Clone, Debug, Default)]
pub struct InvokeRequest {
    /// The operation (`create`, `get`, `exec`, …).
    pub operation: String,
    /// The data: the request's `data` field, JSON-encoded.
    pub data: Bytes,
    /// Request metadata (`path`, `key`, `sql`, headers, …; `traceparent` added by the runtime).
    pub metadata: HashMap<String, String>,
}

/// What an output binding answers.
#[derive(Clone, Debug, Default)]
pub struct InvokeResponse {
    /// Response bytes; `None` answers 204 over HTTP.
    pub data: Option<Bytes>,
    /// Response metadata (sent as `metadata.<key>` headers over HTTP).
    pub metadata: HashMap<String, String>,
    /// The content type of `data`, when the binding knows it.
    pub content_type: Option<String>,
}

/// An output binding.
#[async_trait]
pub trait OutputBinding: Send + Sync + 'static {
    /// The operations this binding accepts; the runtime refuses others before calling.
    fn operations(&self) -> &'static [&'static str];

    /// Performs one operation.
    async fn invoke(&self, req: InvokeRequest) -> Result<InvokeResponse>;
}

/// One event read by an input binding.
#[derive(Clone, Debug, Default)]
pub struct BindingEvent {
    /// The payload.
    pub data: Bytes,
    /// Event metadata (for `bindings.cron`: `timeZone`, `readTimeUTC`).
    pub metadata: HashMap<String, String>,
}

/// Receives the events of an input binding: `Ok` with the app's answer when it accepted the
/// event, `Err` with the reason when it did not (the binding decides whether to redeliver).
#[async_trait]
pub trait EventHandler: Send + Sync + 'static {
    /// Handles one event.
    async fn handle(&self, event: BindingEvent) -> std::result::Result<Option<Bytes>, String>;
}

/// An input binding.
#[async_trait]
pub trait InputBinding: Send + Sync + 'static {
    /// Starts reading events and handing them to `handler`, until the returned
    /// [`Subscription`] is closed or dropped.
    async fn read(&self, handler: Arc<dyn EventHandler>) -> Result<Subscription>;
}

/// A built binding component: one or both directions.
#[derive(Clone, Default)]
pub struct Binding {
    /// The input side, if the component reads events.
    pub input: Option<Arc<dyn InputBinding>>,
    /// The output side, if the component performs operations.
    pub output: Option<Arc<dyn OutputBinding>>,
}

impl Binding {
    /// An output-only binding.
    pub fn output(b: impl OutputBinding) -> Self {
        Self {
            input: None,
            output: Some(Arc::new(b)),
        }
    }

    /// An input-only binding.
    pub fn input(b: impl InputBinding) -> Self {
        Self {
            input: Some(Arc::new(b)),
            output: None,
        }
    }

    /// A binding serving both directions with one value.
    pub fn both<B: InputBinding + OutputBinding>(b: B) -> Self {
        let b = Arc::new(b);
        Self {
            input: Some(b.clone()),
            output: Some(b),
        }
    }
}

impl std::fmt::Debug for Binding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Binding")
            .field("input", &self.input.is_some())
            .field("output", &self.output.is_some())
            .finish()
    }
}
