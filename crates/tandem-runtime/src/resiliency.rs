//! Resiliency: the timeouts, retries and circuit breakers of `Resiliency` resources, applied to
//! service invocation (per target app) and to component calls (outbound: state, publish,
//! output bindings, secrets; inbound: pub/sub deliveries and input binding events to the app).
//!
//! Every target's policy is resolved once at start-up ([`Resiliency::new`]): the explicit
//! target if there is one, else daprd's default policies by reserved name
//! (`DefaultStatestoreComponentOutboundRetryPolicy`, …, `DefaultRetryPolicy`). A call to a
//! target without policy costs one map lookup and nothing else.
//!
//! A [`Policy`] runs an operation as daprd does: each attempt under the timeout, inside the
//! circuit breaker, inside the retry loop. An open breaker fails at once with
//! `circuit breaker is open` (half-open and full: `too many requests`) and is never retried.

mod breaker;
mod trip;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use tandem_components::Error as ComponentError;
use tandem_config::{
    BUILT_IN_RETRY_POLICIES, BackoffPolicy, CircuitBreakerPolicy, PolicyNames, RetryMatching,
    RetryPolicy,
};

pub use breaker::{Breaker, BreakerState, Counts, Ticket};
pub use trip::TripExpr;

/// The exponential back-off's first interval.
pub const EXPONENTIAL_INITIAL: Duration = Duration::from_millis(500);
/// The exponential back-off's growth factor.
pub const EXPONENTIAL_MULTIPLIER: f64 = 1.5;
/// The exponential back-off's randomization (each pause is within ±50 % of the interval).
pub const EXPONENTIAL_RANDOMIZATION: f64 = 0.5;
/// Exponential back-off gives up once this much time has passed since the first attempt.
pub const EXPONENTIAL_MAX_ELAPSED: Duration = Duration::from_secs(15 * 60);

/// The kind of component a policy is looked up for (it selects the typed default policies).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ComponentKind {
    /// A state store.
    Statestore,
    /// A pub/sub.
    Pubsub,
    /// A binding.
    Binding,
    /// A secret store.
    Secretstore,
}

impl ComponentKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Statestore => "Statestore",
            Self::Pubsub => "Pubsub",
            Self::Binding => "Binding",
            Self::Secretstore => "Secretstore",
        }
    }
}

/// Which way a component call goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Runtime → component.
    Outbound,
    /// Component → app.
    Inbound,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Self::Outbound => "Outbound",
            Self::Inbound => "Inbound",
        }
    }
}

/// A status code a failed attempt carried, matched against a retry policy's `matching`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusCode {
    /// An HTTP status (service invocation of an HTTP target).
    Http(u16),
    /// A gRPC code (service invocation of a gRPC app).
    Grpc(u16),
}

/// How an attempt ended, as far as retries and the circuit breaker are concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// It worked.
    Success,
    /// It failed: counted by the breaker, retried if the policy allows (and `matching` lists
    /// the code, when there is one).
    Failure(Option<StatusCode>),
    /// It failed for a reason retrying cannot change (a bad request, an ETag mismatch): the
    /// result goes back as it is and the breaker does not count it.
    Final,
}

/// Why a policy ended a call without the operation's own result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyError {
    /// The last attempt did not finish within the timeout.
    Timeout(Duration),
    /// The circuit breaker is open.
    CircuitOpen,
    /// The circuit breaker is half-open and already lets `maxRequests` calls through.
    TooManyRequests,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // daprd's words (Go's context and gobreaker errors), which clients may match on.
        match self {
            Self::Timeout(_) => f.write_str("context deadline exceeded"),
            Self::CircuitOpen => f.write_str("circuit breaker is open"),
            Self::TooManyRequests => f.write_str("too many requests"),
        }
    }
}

impl std::error::Error for PolicyError {}

/// A resolved retry policy.
#[derive(Clone, Debug)]
pub struct Retry {
    policy: BackoffPolicy,
    duration: Duration,
    max_interval: Duration,
    limit: Option<u64>,
    matching: RetryMatching,
}

impl Retry {
    /// From a `retries` entry.
    pub fn new(spec: &RetryPolicy) -> Self {
        Self {
            policy: spec.policy,
            duration: spec.duration,
            max_interval: spec.max_interval,
            limit: spec.retry_limit(),
            matching: spec.matching.clone(),
        }
    }

    /// Whether the policy retries at all (`maxRetries` is not 0).
    pub fn retries(&self) -> bool {
        self.limit != Some(0)
    }

    fn matches(&self, code: Option<StatusCode>) -> bool {
        match code {
            None => true,
            Some(StatusCode::Http(c)) => self.matching.retries_http(c),
            Some(StatusCode::Grpc(c)) => self.matching.retries_grpc(c),
        }
    }

    /// The back-off state of one call.
    pub fn backoff(&self) -> Backoff {
        Backoff {
            policy: self.policy,
            constant: self.duration,
            max_interval: self.max_interval,
            current: EXPONENTIAL_INITIAL,
            limit: self.limit,
            done: 0,
            elapsed: Duration::ZERO,
            seed: seed(),
        }
    }
}

/// The pauses between the attempts of one call.
#[derive(Clone, Debug)]
pub struct Backoff {
    policy: BackoffPolicy,
    constant: Duration,
    max_interval: Duration,
    current: Duration,
    limit: Option<u64>,
    done: u64,
    elapsed: Duration,
    seed: u64,
}

impl Backoff {
    /// The pause before the next retry, or `None` when no retry is left.
    pub fn next_pause(&mut self) -> Option<Duration> {
        if self.limit.is_some_and(|l| self.done >= l) {
            return None;
        }
        let pause = match self.policy {
            BackoffPolicy::Constant => self.constant,
            BackoffPolicy::Exponential => {
                if self.elapsed > EXPONENTIAL_MAX_ELAPSED {
                    return None;
                }
                let interval = self.current.as_secs_f64();
                let delta = EXPONENTIAL_RANDOMIZATION * interval;
                let low = interval - delta;
                let pause = low + self.random() * (2.0 * delta);
                let max = self.max_interval.as_secs_f64();
                self.current = if interval >= max / EXPONENTIAL_MULTIPLIER {
                    self.max_interval
                } else {
                    Duration::from_secs_f64(interval * EXPONENTIAL_MULTIPLIER)
                };
                Duration::from_secs_f64(pause.max(0.0))
            }
        };
        self.done += 1;
        self.elapsed += pause;
        Some(pause)
    }

    /// A uniform number in [0, 1) (splitmix64).
    fn random(&mut self) -> f64 {
        self.seed = self.seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn seed() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish()
}

/// One target's policy: timeout, retry and circuit breaker, any of them optional.
#[derive(Debug)]
pub struct Policy {
    name: String,
    timeout: Option<Duration>,
    retry: Option<Retry>,
    breaker: Option<Breaker>,
    stats: PolicyStats,
}

/// The circuit breaker states as daprd labels them, in [`breaker_index`] order.
pub const BREAKER_STATES: [&str; 3] = ["closed", "open", "half-open"];

fn breaker_index(state: BreakerState) -> usize {
    match state {
        BreakerState::Closed => 0,
        BreakerState::Open => 1,
        BreakerState::HalfOpen => 2,
    }
}

/// What a policy did, for `dapr_resiliency_count` (policy applied to a call),
/// `dapr_resiliency_activations_total` (timeout fired, retry made, breaker changed state) and
/// `dapr_resiliency_cb_state` (the breaker's state as last seen).
#[derive(Debug, Default)]
pub struct PolicyStats {
    /// The Resiliency resource that defined the policy.
    pub resiliency: String,
    /// daprd's target label: `app_<id>` or `<Kind>_<component>`.
    pub target: String,
    /// `inbound` or `outbound`.
    pub direction: &'static str,
    /// Calls under the timeout / retry policy.
    pub timeout_applied: AtomicU64,
    /// Timeouts that fired.
    pub timeout_activated: AtomicU64,
    /// Calls under the retry policy.
    pub retry_applied: AtomicU64,
    /// Retries made.
    pub retry_activated: AtomicU64,
    /// Calls through a breaker, by the breaker's state then ([`BREAKER_STATES`]).
    pub breaker_applied: [AtomicU64; 3],
    /// Breaker state changes, by the new state.
    pub breaker_activated: [AtomicU64; 3],
    /// The breaker's state when a call last went through it or it last changed state, as
    /// its [`breaker_index`] plus one, for `dapr_resiliency_cb_state`; 0 before that.
    breaker_state: AtomicU8,
}

impl PolicyStats {
    /// The breaker's state as last seen (`None` before any call went through it), as an
    /// index into [`BREAKER_STATES`].
    pub fn breaker_seen(&self) -> Option<usize> {
        usize::from(self.breaker_state.load(Ordering::Relaxed)).checked_sub(1)
    }

    fn saw_breaker(&self, state: usize) {
        self.breaker_state.store(state as u8 + 1, Ordering::Relaxed);
    }
}

impl Policy {
    /// A policy from its parts (`timeout` zero = none).
    pub fn new(
        name: impl Into<String>,
        timeout: Option<Duration>,
        retry: Option<Retry>,
        breaker: Option<Breaker>,
    ) -> Self {
        Self {
            name: name.into(),
            timeout: timeout.filter(|t| !t.is_zero()),
            retry,
            breaker,
            stats: PolicyStats::default(),
        }
    }

    /// Sets the metric labels: the defining resource, the target and the direction.
    fn labelled(mut self, resiliency: &str, target: String, direction: &'static str) -> Self {
        self.stats.resiliency = resiliency.to_owned();
        self.stats.target = target;
        self.stats.direction = direction;
        self
    }

    /// What the policy did so far.
    pub fn stats(&self) -> &PolicyStats {
        &self.stats
    }

    /// What the policy applies to, for logs.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The per-attempt timeout.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// Whether a failed call may be attempted again (so its request must be replayable).
    pub fn has_retries(&self) -> bool {
        self.retry.as_ref().is_some_and(Retry::retries)
    }

    /// The policy's own circuit breaker.
    pub fn breaker(&self) -> Option<&Breaker> {
        self.breaker.as_ref()
    }

    /// Runs `op` under the policy with its own breaker: an `Err` is a failure, `Ok` a success.
    pub async fn run<T, E, F, Fut>(&self, op: F) -> Result<Result<T, E>, PolicyError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.run_with(self.breaker.as_ref(), true, op, |r: &Result<T, E>| {
            if r.is_ok() {
                Verdict::Success
            } else {
                Verdict::Failure(None)
            }
        })
        .await
    }

    /// Runs `op` under the policy: each attempt within the timeout and through `breaker`;
    /// failed attempts (as `classify` judges them) are retried while the retry policy allows
    /// and `replayable` is true. Returns the last attempt's result, or why there is none.
    pub async fn run_with<R, F, Fut, C>(
        &self,
        breaker: Option<&Breaker>,
        replayable: bool,
        mut op: F,
        classify: C,
    ) -> Result<R, PolicyError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = R>,
        C: Fn(&R) -> Verdict,
    {
        let mut backoff = self
            .retry
            .as_ref()
            .filter(|r| replayable && r.retries())
            .map(|r| (r, r.backoff()));
        let stats = &self.stats;
        if self.timeout.is_some() {
            stats.timeout_applied.fetch_add(1, Ordering::Relaxed);
        }
        if self.retry.is_some() {
            stats.retry_applied.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(b) = breaker {
            let state = breaker_index(b.state());
            stats.breaker_applied[state].fetch_add(1, Ordering::Relaxed);
            stats.saw_breaker(state);
        }
        let mut attempt = 0u64;
        loop {
            attempt += 1;
            let (outcome, code) = match self.attempt(breaker, &mut op, &classify).await {
                Err(e @ (PolicyError::CircuitOpen | PolicyError::TooManyRequests)) => {
                    return Err(e);
                }
                Err(e) => (Err(e), None),
                Ok((result, Verdict::Failure(code))) => (Ok(result), code),
                Ok((result, _)) => {
                    if attempt > 1 {
                        tracing::info!(policy = %self.name, attempts = attempt, "recovered after retries");
                    }
                    return Ok(result);
                }
            };
            let Some((retry, backoff)) = backoff.as_mut() else {
                return outcome;
            };
            if !retry.matches(code) {
                return outcome;
            }
            let Some(pause) = backoff.next_pause() else {
                return outcome;
            };
            drop(outcome);
            stats.retry_activated.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(policy = %self.name, attempt, "operation failed; retrying in {pause:?}");
            tokio::time::sleep(pause).await;
        }
    }

    async fn attempt<R, F, Fut, C>(
        &self,
        breaker: Option<&Breaker>,
        op: &mut F,
        classify: &C,
    ) -> Result<(R, Verdict), PolicyError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = R>,
        C: Fn(&R) -> Verdict,
    {
        let before = breaker.map(Breaker::state);
        let ticket = match breaker {
            Some(b) => Some(b.admit().inspect_err(|_| self.note_breaker(b, before))?),
            None => None,
        };
        let result = match self.timeout {
            Some(t) => tokio::time::timeout(t, op()).await.map_err(|_| {
                self.stats.timeout_activated.fetch_add(1, Ordering::Relaxed);
                PolicyError::Timeout(t)
            }),
            None => Ok(op().await),
        };
        let verdict = result.as_ref().map_or(Verdict::Failure(None), classify);
        if let (Some(b), Some(ticket)) = (breaker, ticket) {
            b.record(ticket, !matches!(verdict, Verdict::Failure(_)));
            self.note_breaker(b, before);
        }
        result.map(|r| (r, verdict))
    }

    /// Counts a state change of `breaker` since `before`.
    fn note_breaker(&self, breaker: &Breaker, before: Option<BreakerState>) {
        let now = breaker.state();
        if before != Some(now) {
            let state = breaker_index(now);
            self.stats.breaker_activated[state].fetch_add(1, Ordering::Relaxed);
            self.stats.saw_breaker(state);
        }
    }
}

/// How a component error counts: a backend failure is retried and counted by the breaker;
/// errors about the request itself (ETag mismatch or invalid, not supported, invalid request
/// or metadata, not found) cannot change by retrying and go back at once.
pub fn component_verdict<T>(result: &Result<T, ComponentError>) -> Verdict {
    match result {
        Ok(_) => Verdict::Success,
        Err(ComponentError::Backend(_)) => Verdict::Failure(None),
        Err(_) => Verdict::Final,
    }
}

/// Runs a component call with `req` under `policy`; without a policy it is one plain call.
/// Each attempt gets its own copy of `req`. A refusal of the policy itself (timeout, open
/// breaker) is a backend error worded as daprd words it.
pub async fn call_component<R, T, F, Fut>(
    policy: Option<&Policy>,
    req: R,
    mut op: F,
) -> Result<T, ComponentError>
where
    R: Clone,
    F: FnMut(R) -> Fut,
    Fut: Future<Output = Result<T, ComponentError>>,
{
    let Some(policy) = policy else {
        return op(req).await;
    };
    policy
        .run_with(
            policy.breaker(),
            true,
            || op(req.clone()),
            component_verdict,
        )
        .await
        .unwrap_or_else(|e| Err(ComponentError::backend(e)))
}

/// Service invocation policy of one target app: circuit breakers per method (daprd keeps one
/// per endpoint), at most `circuitBreakerCacheSize` of them.
#[derive(Debug)]
pub struct AppPolicy {
    policy: Policy,
    breaker: Option<BreakerTemplate>,
}

#[derive(Debug)]
struct BreakerTemplate {
    spec: CircuitBreakerPolicy,
    trip: Arc<TripExpr>,
    capacity: usize,
    per_endpoint: RwLock<HashMap<String, Arc<Breaker>>>,
}

impl AppPolicy {
    /// The timeout / retry part.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    fn all_closed(&self) -> bool {
        self.breaker.as_ref().is_none_or(|t| {
            t.per_endpoint
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .values()
                .all(|b| b.state() == BreakerState::Closed)
        })
    }

    /// The breaker of `method` (created on first use), if the policy has one.
    pub fn breaker_for(&self, method: &str) -> Option<Arc<Breaker>> {
        let t = self.breaker.as_ref()?;
        if let Some(b) = t
            .per_endpoint
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(method)
        {
            return Some(b.clone());
        }
        let mut map = t
            .per_endpoint
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(b) = map.get(method) {
            return Some(b.clone());
        }
        if map.len() >= t.capacity {
            // Evict a closed breaker first: forgetting an open one would let traffic through.
            let victim = map
                .iter()
                .find(|(_, b)| b.state() == BreakerState::Closed)
                .or_else(|| map.iter().next())
                .map(|(k, _)| k.clone());
            if let Some(k) = victim {
                map.remove(&k);
            }
        }
        let b = Arc::new(Breaker::new(
            format!("{}:{method}", self.policy.name),
            &t.spec,
            t.trip.clone(),
        ));
        map.insert(method.to_owned(), b.clone());
        Some(b)
    }
}

/// A component's policies.
#[derive(Clone, Debug, Default)]
pub struct ComponentPolicies {
    /// Calls from the runtime to the component.
    pub outbound: Option<Arc<Policy>>,
    /// Deliveries from the component to the app.
    pub inbound: Option<Arc<Policy>>,
}

/// Every policy of this sidecar, resolved per target.
#[derive(Debug, Default)]
pub struct Resiliency {
    apps: HashMap<String, Arc<AppPolicy>>,
    /// For app ids without a target of their own: the default policy and its per-app
    /// instances (each app gets its own breakers).
    default_app: Option<DefaultApp>,
    components: HashMap<String, ComponentPolicies>,
    /// The names of the Resiliency resources that apply.
    loaded: Vec<String>,
    /// What resolves the policies of components that appear later (hot reload).
    component_rules: Option<ComponentRules>,
}

/// The merged named policies and the `targets.components` entries, kept to resolve a
/// component's policies by name and kind at any time.
#[derive(Debug)]
struct ComponentRules {
    merged: Arc<Merged>,
    /// Each target with the Resiliency resource that named it.
    targets: HashMap<String, (tandem_config::ComponentTarget, String)>,
    /// The first applying resource, credited with default policies in metrics.
    first: String,
}

#[derive(Debug)]
struct DefaultApp {
    /// The resource that set the defaults (for metric labels).
    resource: String,
    names: PolicyNames,
    /// Without a circuit breaker the default policy holds no state: one for every app.
    shared: Option<Arc<AppPolicy>>,
    /// With one, each app gets its own breakers (up to [`MAX_DEFAULT_APPS`] apps).
    instances: RwLock<HashMap<String, Arc<AppPolicy>>>,
    merged: Arc<Merged>,
}

/// How many app ids keep their own default-policy breakers.
const MAX_DEFAULT_APPS: usize = 1000;

/// The built-in retry policy that resources cannot redefine.
const PROTECTED_RETRY: &str = "DaprBuiltInActorNotFoundRetries";

/// daprd's built-in retry policies, which targets may name without defining them (a
/// definition of the same name replaces them, except the protected one).
fn built_in_retries() -> [(String, RetryPolicy); 5] {
    let constant = |retries| RetryPolicy {
        policy: BackoffPolicy::Constant,
        duration: Duration::from_secs(1),
        max_retries: retries,
        ..RetryPolicy::default()
    };
    let exponential = |retries, max_interval| RetryPolicy {
        policy: BackoffPolicy::Exponential,
        max_interval,
        max_retries: retries,
        ..RetryPolicy::default()
    };
    [
        ("DaprBuiltInServiceRetries".into(), constant(3)),
        ("DaprBuiltInActorRetries".into(), constant(3)),
        (
            "DaprBuiltInActorReminderRetries".into(),
            exponential(-1, Duration::from_secs(60)),
        ),
        (
            "DaprBuiltInInitializationRetries".into(),
            exponential(3, Duration::from_secs(1)),
        ),
        (PROTECTED_RETRY.into(), constant(5)),
    ]
}

/// A `circuitBreakers` entry with its compiled trip expression.
type NamedBreaker = (CircuitBreakerPolicy, Arc<TripExpr>);

/// All loaded resiliencies merged into one set of named policies (daprd merges them too).
#[derive(Debug, Default)]
struct Merged {
    timeouts: HashMap<String, Duration>,
    retries: HashMap<String, RetryPolicy>,
    breakers: HashMap<String, NamedBreaker>,
    app_cache_sizes: HashMap<String, usize>,
}

/// Why the resiliency resources could not be applied.
#[derive(Debug, thiserror::Error)]
#[error("resiliency {resource}: {reason}")]
pub struct ResiliencyError {
    /// The resource name.
    pub resource: String,
    /// What is wrong.
    pub reason: String,
}

impl Resiliency {
    /// No policy anywhere.
    pub fn none() -> Self {
        Self::default()
    }

    /// Resolves the resiliencies that apply to `app_id` (those without `scopes`, or listing
    /// it) for the app targets they name and for `components` (name, kind).
    pub fn new(
        resources: &[tandem_config::Resiliency],
        app_id: &str,
        components: &[(&str, ComponentKind)],
    ) -> Result<Self, ResiliencyError> {
        let applying: Vec<&tandem_config::Resiliency> = resources
            .iter()
            .filter(|r| r.scopes.is_empty() || r.scopes.iter().any(|s| s == app_id))
            .collect();
        if applying.is_empty() {
            return Ok(Self::none());
        }
        let mut merged = Merged::default();
        merged.retries.extend(built_in_retries());
        let mut app_targets = HashMap::new();
        let mut component_targets = HashMap::new();
        for r in &applying {
            merged
                .timeouts
                .extend(r.policies.timeouts.iter().map(|(k, v)| (k.clone(), *v)));
            for (name, retry) in &r.policies.retries {
                let mut retry = retry.clone();
                match name.as_str() {
                    // Protected: daprd ignores a definition of this one.
                    PROTECTED_RETRY => continue,
                    n if BUILT_IN_RETRY_POLICIES.contains(&n)
                        && (0..3).contains(&retry.max_retries) =>
                    {
                        tracing::warn!(
                            policy = n,
                            "a built-in retry policy keeps at least 3 retries"
                        );
                        retry.max_retries = 3;
                    }
                    _ => {}
                }
                merged.retries.insert(name.clone(), retry);
            }
            for (name, cb) in &r.policies.circuit_breakers {
                let trip = TripExpr::parse(&cb.trip).map_err(|e| ResiliencyError {
                    resource: r.name.clone(),
                    reason: format!("spec.policies.circuitBreakers.{name}.trip: {e}"),
                })?;
                merged
                    .breakers
                    .insert(name.clone(), (cb.clone(), Arc::new(trip)));
            }
            for (app, t) in &r.targets.apps {
                merged
                    .app_cache_sizes
                    .insert(app.clone(), t.circuit_breaker_cache_size);
                app_targets.insert(
                    app.clone(),
                    (
                        PolicyNames {
                            timeout: t.timeout.clone(),
                            retry: t.retry.clone(),
                            circuit_breaker: t.circuit_breaker.clone(),
                        },
                        r.name.clone(),
                    ),
                );
            }
            for (name, t) in &r.targets.components {
                component_targets.insert(name.clone(), (t.clone(), r.name.clone()));
            }
        }
        let mut out = Self {
            loaded: applying.iter().map(|r| r.name.clone()).collect(),
            ..Self::default()
        };
        let first = applying.first().map_or("", |r| r.name.as_str());
        for (app, (names, resource)) in &app_targets {
            if let Some(mut p) = merged.app_policy(app, names) {
                p.policy = p
                    .policy
                    .labelled(resource, format!("app_{app}"), "outbound");
                out.apps.insert(app.clone(), Arc::new(p));
            }
        }
        let default_app = merged.defaults(&["App"]);
        let rules = ComponentRules {
            merged: Arc::new(merged),
            targets: component_targets,
            first: first.to_owned(),
        };
        for &(name, kind) in components {
            let policies = rules.resolve(name, kind);
            if policies.outbound.is_some() || policies.inbound.is_some() {
                out.components.insert(name.to_owned(), policies);
            }
        }
        let merged = rules.merged.clone();
        out.component_rules = Some(rules);
        if let Some(names) = default_app {
            let shared = names
                .circuit_breaker
                .is_none()
                .then(|| merged.app_policy("*", &names))
                .flatten()
                .map(|mut p| {
                    p.policy = p.policy.labelled(first, "app_*".to_owned(), "outbound");
                    Arc::new(p)
                });
            out.default_app = Some(DefaultApp {
                resource: first.to_owned(),
                names,
                shared,
                instances: RwLock::new(HashMap::new()),
                merged,
            });
        }
        Ok(out)
    }

    /// Whether no policy applies anywhere.
    pub fn is_empty(&self) -> bool {
        self.apps.is_empty() && self.default_app.is_none() && self.components.is_empty()
    }

    /// The service invocation policy for target `app` (as the caller named it).
    pub fn app(&self, app: &str) -> Option<Arc<AppPolicy>> {
        if let Some(p) = self.apps.get(app) {
            return Some(p.clone());
        }
        let d = self.default_app.as_ref()?;
        if d.names.circuit_breaker.is_none() {
            return d.shared.clone();
        }
        if let Some(p) = d
            .instances
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(app)
        {
            return Some(p.clone());
        }
        let mut instances = d.instances.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(p) = instances.get(app) {
            return Some(p.clone());
        }
        let mut p = d.merged.app_policy(app, &d.names)?;
        p.policy = p
            .policy
            .labelled(&d.resource, format!("app_{app}"), "outbound");
        let p = Arc::new(p);
        if instances.len() >= MAX_DEFAULT_APPS {
            // Forget an app whose breakers are all closed (nothing is lost), else any.
            let victim = instances
                .iter()
                .find(|(_, p)| p.all_closed())
                .or_else(|| instances.iter().next())
                .map(|(k, _)| k.clone());
            if let Some(k) = victim {
                instances.remove(&k);
            }
        }
        instances.insert(app.to_owned(), p.clone());
        Some(p)
    }

    /// The names of the Resiliency resources that apply (`dapr_resiliency_loaded`).
    pub fn loaded(&self) -> &[String] {
        &self.loaded
    }

    /// Calls `f` with every policy built so far (for the metrics).
    pub fn for_each_policy(&self, mut f: impl FnMut(&Policy, bool)) {
        for p in self.apps.values() {
            f(&p.policy, p.breaker.is_some());
        }
        if let Some(d) = &self.default_app {
            if let Some(p) = &d.shared {
                f(&p.policy, false);
            }
            let instances = d.instances.read().unwrap_or_else(PoisonError::into_inner);
            for p in instances.values() {
                f(&p.policy, p.breaker.is_some());
            }
        }
        for c in self.components.values() {
            for p in [&c.outbound, &c.inbound].into_iter().flatten() {
                f(p, p.breaker.is_some());
            }
        }
    }

    /// The policies of component `name` of `kind`: the ones resolved at start-up when it was
    /// known then (sharing their circuit breakers), else resolved now (a component added
    /// while running).
    pub fn component_policies(&self, name: &str, kind: ComponentKind) -> ComponentPolicies {
        if let Some(p) = self.components.get(name) {
            return p.clone();
        }
        self.component_rules
            .as_ref()
            .map(|r| r.resolve(name, kind))
            .unwrap_or_default()
    }

    /// The policy for calls to / deliveries from component `name`.
    pub fn component(&self, name: &str, direction: Direction) -> Option<&Arc<Policy>> {
        if self.components.is_empty() {
            return None;
        }
        let p = self.components.get(name)?;
        match direction {
            Direction::Outbound => p.outbound.as_ref(),
            Direction::Inbound => p.inbound.as_ref(),
        }
    }
}

impl ComponentRules {
    fn resolve(&self, name: &str, kind: ComponentKind) -> ComponentPolicies {
        let merged = &self.merged;
        let target = format!("{}_{name}", kind.as_str());
        let label = |p: Policy, resource: &str, direction: Direction| {
            let dir = match direction {
                Direction::Outbound => "outbound",
                Direction::Inbound => "inbound",
            };
            Arc::new(p.labelled(resource, target.clone(), dir))
        };
        match self.targets.get(name) {
            Some((t, resource)) => ComponentPolicies {
                outbound: merged
                    .policy(&format!("component[{name}] output"), &t.outbound)
                    .map(|p| label(p, resource, Direction::Outbound)),
                inbound: merged
                    .policy(&format!("component[{name}] input"), &t.inbound)
                    .map(|p| label(p, resource, Direction::Inbound)),
            },
            None => {
                let resolve = |d: Direction, what: &str| {
                    let dir = d.as_str();
                    let levels = [
                        format!("{}Component{dir}", kind.as_str()),
                        format!("Component{dir}"),
                        "Component".to_owned(),
                    ];
                    let levels: Vec<&str> = levels.iter().map(String::as_str).collect();
                    merged
                        .defaults(&levels)
                        .and_then(|n| merged.policy(&format!("component[{name}] {what}"), &n))
                        .map(|p| label(p, &self.first, d))
                };
                ComponentPolicies {
                    outbound: resolve(Direction::Outbound, "output"),
                    inbound: resolve(Direction::Inbound, "input"),
                }
            }
        }
    }
}

impl Merged {
    /// The default policy names for `levels` (most specific first), then the bare defaults.
    fn defaults(&self, levels: &[&str]) -> Option<PolicyNames> {
        let pick = |kind: &str, exists: &dyn Fn(&str) -> bool| {
            levels
                .iter()
                .map(|l| format!("Default{l}{kind}Policy"))
                .chain(std::iter::once(format!("Default{kind}Policy")))
                .find(|n| exists(n))
        };
        let names = PolicyNames {
            timeout: pick("Timeout", &|n| self.timeouts.contains_key(n)),
            retry: pick("Retry", &|n| self.retries.contains_key(n)),
            circuit_breaker: pick("CircuitBreaker", &|n| self.breakers.contains_key(n)),
        };
        (names.timeout.is_some() || names.retry.is_some() || names.circuit_breaker.is_some())
            .then_some(names)
    }

    fn parts(
        &self,
        names: &PolicyNames,
    ) -> (Option<Duration>, Option<Retry>, Option<&NamedBreaker>) {
        let timeout = names
            .timeout
            .as_ref()
            .and_then(|n| self.timeouts.get(n))
            .copied();
        let retry = names
            .retry
            .as_ref()
            .and_then(|n| self.retries.get(n))
            .map(Retry::new);
        let breaker = names
            .circuit_breaker
            .as_ref()
            .and_then(|n| self.breakers.get(n));
        (timeout, retry, breaker)
    }

    fn policy(&self, label: &str, names: &PolicyNames) -> Option<Policy> {
        let (timeout, retry, breaker) = self.parts(names);
        let breaker = breaker.map(|(spec, trip)| Breaker::new(label, spec, trip.clone()));
        let p = Policy::new(label, timeout, retry, breaker);
        (p.timeout.is_some() || p.retry.is_some() || p.breaker.is_some()).then_some(p)
    }

    fn app_policy(&self, app: &str, names: &PolicyNames) -> Option<AppPolicy> {
        let (timeout, retry, breaker) = self.parts(names);
        if timeout.filter(|t| !t.is_zero()).is_none() && retry.is_none() && breaker.is_none() {
            return None;
        }
        Some(AppPolicy {
            policy: Policy::new(format!("endpoint[{app}]"), timeout, retry, None),
            breaker: breaker.map(|(spec, trip)| BreakerTemplate {
                spec: spec.clone(),
                trip: trip.clone(),
                capacity: self.app_cache_sizes.get(app).copied().unwrap_or(100),
                per_endpoint: RwLock::new(HashMap::new()),
            }),
        })
    }
}

#[cfg(test)]
mod tests;
