//! Bindings: output bindings called by the app, and input bindings delivered to the app.
//!
//! - [`BindingsService::invoke`] serves `/v1.0/bindings/{name}` and gRPC `InvokeBinding`: the
//!   operation must be one the binding declares.
//! - [`InputBindingManager`] starts input bindings the app wants while it is healthy and stops
//!   them while it is not. An HTTP app says it wants a binding by answering `OPTIONS /<route>`
//!   with 2xx or 405, and receives `POST /<route>` (JSON content type, the event's metadata as
//!   headers; a 2xx answer accepts the event). A gRPC app lists the bindings it wants in
//!   `ListInputBindings` and receives `OnBindingEvent`; its answer may save `states` in a
//!   state store and send `data` to the output bindings named in `to`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Limited};
use tandem_components::bindings::{BindingEvent, EventHandler, InvokeRequest, InvokeResponse};
use tandem_components::pubsub::Subscription;

use crate::app_channel::{AppChannel, empty_body, full_body, grpc};
use crate::components::{BindingEntry, Components, LiveComponents};
use crate::error::{ApiError, ErrorCode};
use crate::lifecycle::Shutdown;
use crate::metrics::{ComponentFamily, Metrics};
use crate::resiliency::{Policy, call_component};
use crate::state::StateService;

/// How long the app may take to answer the `OPTIONS` probe of an input binding.
pub const OPTIONS_TIMEOUT: Duration = Duration::from_secs(3);
/// The largest app answer to an input event that is read.
const MAX_ANSWER: usize = 4 << 20;

/// Output bindings.
pub struct BindingsService {
    components: Arc<LiveComponents>,
    metrics: Arc<Metrics>,
}

fn invoke_error(name: &str, err: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        ErrorCode::InvokeOutputBinding,
        format!("error invoking output binding {name}: {err}"),
    )
}

impl BindingsService {
    /// Over the loaded components, under their resiliency policies.
    pub fn new(components: Arc<LiveComponents>, metrics: Arc<Metrics>) -> Self {
        Self {
            components,
            metrics,
        }
    }

    /// Performs `req.operation` on the output binding `name`.
    pub async fn invoke(&self, name: &str, req: InvokeRequest) -> Result<InvokeResponse, ApiError> {
        let entry = self
            .components
            .load()
            .bindings
            .get(name)
            .filter(|b| b.output.is_some())
            .cloned()
            .ok_or_else(|| invoke_error(name, format!("couldn't find output binding {name}")))?;
        let Some(output) = &entry.output else {
            return Err(invoke_error(
                name,
                format!("couldn't find output binding {name}"),
            ));
        };
        let ops = output.operations();
        if !ops.contains(&req.operation.as_str()) {
            return Err(invoke_error(
                name,
                format!(
                    "binding {name} does not support operation {}. supported operations:{}",
                    req.operation,
                    ops.join(" ")
                ),
            ));
        }
        let start = Instant::now();
        let operation = req.operation.clone();
        let res = call_component(entry.policies.outbound.as_deref(), req, |req| {
            output.invoke(req)
        })
        .await;
        self.metrics.component(
            ComponentFamily::OutputBinding,
            name,
            &operation,
            res.is_ok(),
            start,
        );
        res.map_err(|e| invoke_error(name, e))
    }
}

/// Delivers one input binding's events to the app.
struct AppHandler {
    name: String,
    route: String,
    channel: Arc<AppChannel>,
    state: Arc<StateService>,
    bindings: Arc<BindingsService>,
    /// The binding's inbound resiliency policy, if any.
    inbound: Option<Arc<Policy>>,
    tracer: crate::trace::Tracer,
}

#[async_trait]
impl EventHandler for AppHandler {
    async fn handle(&self, mut event: BindingEvent) -> Result<Option<Bytes>, String> {
        let start = Instant::now();
        // A `bindings/<name>` span, child of a context the event carries; the app sees it.
        let span = if self.tracer.enabled() {
            let parent = event
                .metadata
                .get(crate::trace::TRACEPARENT)
                .and_then(|t| crate::trace::SpanContext::parse(t));
            let tracestate = event.metadata.get(crate::trace::TRACESTATE).cloned();
            self.tracer.start_span(
                parent.as_ref(),
                tracestate.as_deref(),
                crate::trace::SpanKind::Client,
                || format!("bindings/{}", self.name).into(),
            )
        } else {
            None
        };
        if let Some(span) = &span {
            event.metadata.insert(
                crate::trace::TRACEPARENT.to_owned(),
                span.context().traceparent(),
            );
        }
        let res = self.handle_once(event).await;
        if let Some(mut span) = span {
            if let Err(e) = &res {
                span.set_error(e.clone());
            }
            span.end();
        }
        self.bindings
            .metrics
            .input_binding(&self.name, res.is_ok(), start);
        res
    }
}

impl AppHandler {
    async fn handle_once(&self, event: BindingEvent) -> Result<Option<Bytes>, String> {
        match &self.inbound {
            None => self.deliver(event).await,
            Some(policy) => policy
                .run(|| self.deliver(event.clone()))
                .await
                .unwrap_or_else(|e| {
                    Err(format!(
                        "delivering an event of input binding {} to the app: {e}",
                        self.name
                    ))
                }),
        }
    }
}

impl AppHandler {
    /// One delivery attempt: the app's answer, or why it failed.
    async fn deliver(&self, event: BindingEvent) -> Result<Option<Bytes>, String> {
        if self.channel.is_grpc() {
            return self.handle_grpc(event).await;
        }
        let mut req = Request::builder().method(Method::POST);
        if let Some(h) = req.headers_mut() {
            for (k, v) in &event.metadata {
                if let (Ok(name), Ok(value)) =
                    (HeaderName::try_from(k.as_str()), HeaderValue::try_from(v))
                {
                    h.insert(name, value);
                }
            }
            h.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        let req = req.body(full_body(event.data)).map_err(|e| e.to_string())?;
        let resp = self
            .channel
            .send(req, &self.route)
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.response.status();
        let body = Limited::new(resp.response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        if status.is_success() {
            Ok(Some(body).filter(|b| !b.is_empty()))
        } else {
            Err(format!(
                "the app answered input binding {} with status {}",
                self.name,
                status.as_u16()
            ))
        }
    }
}

impl AppHandler {
    async fn handle_grpc(&self, event: BindingEvent) -> Result<Option<Bytes>, String> {
        let answer = grpc::binding_event(&self.channel, &self.name, event).await?;
        if !answer.store_name.is_empty() && !answer.states.is_empty() {
            let items = answer
                .states
                .into_iter()
                .map(crate::state::save_item_from_proto)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.message)?;
            self.state
                .save(&answer.store_name, items)
                .await
                .map_err(|e| e.message)?;
        }
        let data = Bytes::from(answer.data);
        if !answer.to.is_empty() {
            let send = |to: String| {
                let bindings = self.bindings.clone();
                let req = InvokeRequest {
                    operation: "create".to_owned(),
                    data: data.clone(),
                    metadata: HashMap::new(),
                };
                async move {
                    let res = bindings.invoke(&to, req).await;
                    (to, res)
                }
            };
            let mut results = Vec::with_capacity(answer.to.len());
            // PARALLEL (1) sends to every binding at once; SEQUENTIAL (0) one after another.
            if answer.concurrency == 1 {
                let mut set = tokio::task::JoinSet::new();
                for to in answer.to {
                    set.spawn(send(to));
                }
                while let Some(done) = set.join_next().await {
                    if let Ok(r) = done {
                        results.push(r);
                    }
                }
            } else {
                for to in answer.to {
                    results.push(send(to).await);
                }
            }
            for (to, res) in results {
                if let Err(e) = res {
                    tracing::warn!(binding = %self.name, to = %to, error = %e.message, "forwarding the app's answer failed");
                }
            }
        }
        Ok(Some(data).filter(|d| !d.is_empty()))
    }
}

/// Starts the input bindings the app wants while it is healthy.
pub struct InputBindingManager {
    pub(crate) components: Arc<LiveComponents>,
    pub(crate) channel: Arc<AppChannel>,
    pub(crate) state: Arc<StateService>,
    pub(crate) bindings: Arc<BindingsService>,
    pub(crate) tracer: crate::trace::Tracer,
}

/// An input binding the app was asked about: the component asked for, and its reader while
/// one runs.
struct Known {
    entry: Arc<BindingEntry>,
    wanted: bool,
    reader: Option<Subscription>,
}

impl InputBindingManager {
    /// Which of `names` (input bindings of `set`) the app asks for: `OPTIONS` probes (HTTP) or
    /// `ListInputBindings` (gRPC).
    async fn wanted(&self, set: &Components, mut names: Vec<String>) -> Vec<String> {
        names.sort();
        if names.is_empty() {
            return Vec::new();
        }
        if self.channel.is_grpc() {
            return match grpc::list_input_bindings(&self.channel).await {
                Ok(listed) => names
                    .into_iter()
                    .filter(|n| listed.iter().any(|l| l == n))
                    .collect(),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot list the app's input bindings; none started");
                    Vec::new()
                }
            };
        }
        let mut out = Vec::new();
        for name in names {
            let Some(entry) = set.bindings.get(&name) else {
                continue;
            };
            let Ok(req) = Request::builder()
                .method(Method::OPTIONS)
                .body(empty_body())
            else {
                continue;
            };
            match tokio::time::timeout(OPTIONS_TIMEOUT, self.channel.send(req, &entry.route)).await
            {
                Ok(Ok(resp))
                    if resp.response.status().is_success() || resp.response.status() == 405 =>
                {
                    out.push(name);
                }
                Ok(Ok(resp)) => {
                    tracing::info!(binding = %name, status = resp.response.status().as_u16(), "the app does not want this input binding");
                }
                Ok(Err(e)) => {
                    tracing::warn!(binding = %name, error = %e, "input binding probe failed");
                }
                Err(_) => {
                    tracing::warn!(binding = %name, "input binding probe timed out");
                }
            }
        }
        out
    }

    /// Starts reading `entry` (input binding `name`) into the app.
    async fn start(&self, name: &str, entry: &Arc<BindingEntry>) -> Option<Subscription> {
        let input = entry.input.clone()?;
        let handler = Arc::new(AppHandler {
            name: name.to_owned(),
            route: entry.route.clone(),
            channel: self.channel.clone(),
            state: self.state.clone(),
            bindings: self.bindings.clone(),
            inbound: entry.policies.inbound.clone(),
            tracer: self.tracer.clone(),
        });
        match input.read(handler).await {
            Ok(sub) => {
                tracing::info!(binding = %name, "input binding started");
                Some(sub)
            }
            Err(e) => {
                tracing::error!(binding = %name, error = %e, "cannot start input binding");
                None
            }
        }
    }

    /// Brings `known` in line with the current component set: readers of removed or replaced
    /// bindings stop; new and replaced bindings are offered to the app and started when it
    /// wants them (and `run` is set: the app is healthy).
    async fn sync(&self, known: &mut HashMap<String, Known>, run: bool) {
        let set = self.components.snapshot();
        let mut stale = Vec::new();
        known.retain(|name, k| {
            let current = set.bindings.get(name).filter(|e| e.input.is_some());
            let keep = current.is_some_and(|e| Arc::ptr_eq(e, &k.entry));
            if !keep && let Some(r) = k.reader.take() {
                stale.push((name.clone(), r));
            }
            keep
        });
        for (name, reader) in stale {
            tracing::info!(binding = %name, "input binding stopped: its component changed");
            reader.close().await;
        }
        let fresh: Vec<String> = set
            .bindings
            .iter()
            .filter(|(n, e)| e.input.is_some() && !known.contains_key(*n))
            .map(|(n, _)| n.clone())
            .collect();
        let wanted = self.wanted(&set, fresh.clone()).await;
        for name in fresh {
            let Some(entry) = set.bindings.get(&name) else {
                continue;
            };
            let wanted = wanted.contains(&name);
            let reader = if wanted && run {
                self.start(&name, entry).await
            } else {
                None
            };
            known.insert(
                name,
                Known {
                    entry: entry.clone(),
                    wanted,
                    reader,
                },
            );
        }
    }

    /// Runs until shutdown: waits for the app, asks which bindings it wants, keeps them
    /// reading exactly while the app is healthy, and follows component reloads.
    pub async fn run(self, shutdown: &Shutdown) {
        let stop = shutdown.wait();
        tokio::pin!(stop);
        let mut health = self.channel.health();
        tokio::select! {
            _ = &mut stop => return,
            _ = health.wait_for(|h| *h) => {}
        }
        let mut reloads = self.components.watch();
        reloads.borrow_and_update();
        let mut known = HashMap::new();
        self.sync(&mut known, true).await;
        let mut healthy = true;
        loop {
            tokio::select! {
                _ = &mut stop => break,
                changed = reloads.changed() => {
                    if changed.is_err() { break; }
                    reloads.borrow_and_update();
                    self.sync(&mut known, healthy).await;
                }
                changed = health.changed() => {
                    if changed.is_err() { break; }
                    let now = *health.borrow_and_update();
                    if now && !healthy {
                        tracing::info!("app is healthy again: resuming input bindings");
                        for (name, k) in known.iter_mut().filter(|(_, k)| k.wanted) {
                            k.reader = self.start(name, &k.entry).await;
                        }
                    } else if !now && healthy {
                        tracing::warn!("app is unhealthy: pausing input bindings");
                        for k in known.values_mut() {
                            if let Some(r) = k.reader.take() { r.close().await; }
                        }
                    }
                    healthy = now;
                }
            }
        }
        for k in known.into_values() {
            if let Some(r) = k.reader {
                r.close().await;
            }
        }
    }
}
