//! Prometheus metrics recorded by the runtime's services, under daprd's names and labels.
//!
//! Each metric family maps a label set to a series of atomics. A request finds its series in
//! a map that it reads without locking (the map is replaced, under a mutex, only when a new
//! label set appears) and then only adds to atomic counters. Every family has a cap on its
//! number of series: label values come from finite sets (component names, route templates,
//! operations, status codes) or, where a caller chooses them (app ids, topics), the cap bounds
//! them; past the cap an observation is not recorded.
//!
//! [`Metrics::encode`] writes the Prometheus text format; `spec.metric.rules` rewrite label
//! values there (series whose rewritten labels agree are merged), so rules cost nothing per
//! request.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use arc_swap::ArcSwap;

/// daprd's default latency buckets, in milliseconds.
pub const LATENCY_BUCKETS: &[f64] = &[
    1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 13.0, 16.0, 20.0, 25.0, 30.0, 40.0, 50.0, 65.0, 80.0,
    100.0, 130.0, 160.0, 200.0, 250.0, 300.0, 400.0, 500.0, 650.0, 800.0, 1000.0, 2000.0, 5000.0,
    10000.0, 20000.0, 50000.0, 100000.0,
];

/// daprd's size buckets, in bytes.
pub const SIZE_BUCKETS: &[f64] = &[
    1024.0,
    2048.0,
    4096.0,
    16384.0,
    65536.0,
    262144.0,
    1048576.0,
    4194304.0,
    16777216.0,
    67108864.0,
    268435456.0,
    1073741824.0,
    4294967296.0,
];

/// The most series one family keeps.
pub const MAX_SERIES: usize = 1000;

/// Nanoseconds since `start`.
pub fn nanos_since(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// A cumulative histogram over fixed bucket bounds.
pub struct Histogram {
    bounds: Arc<[f64]>,
    /// Observations are integers of `1 / scale` of the bounds' unit (nanoseconds for
    /// millisecond bounds, bytes for byte bounds).
    scale: f64,
    /// One count per bound plus one for `+Inf`; not cumulative (summed when encoded).
    buckets: Box<[AtomicU64]>,
    sum: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    /// A latency histogram: bounds in milliseconds, observations in nanoseconds.
    pub fn latency(bounds: Arc<[f64]>) -> Self {
        Self::with_scale(bounds, 1e6)
    }

    /// A size histogram over daprd's byte buckets.
    pub fn sizes() -> Self {
        Self::with_scale(SIZE_BUCKETS.into(), 1.0)
    }

    fn with_scale(bounds: Arc<[f64]>, scale: f64) -> Self {
        let buckets = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        Self {
            bounds,
            scale,
            buckets,
            sum: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Records one observation (nanoseconds or bytes, as the histogram was made).
    pub fn observe(&self, raw: u64) {
        let v = raw as f64 / self.scale;
        let i = self.bounds.partition_point(|b| *b < v);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(raw, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Records the time since `start`.
    pub fn observe_since(&self, start: Instant) {
        self.observe(nanos_since(start));
    }

    /// How many observations were made.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn snapshot(&self) -> HistValue {
        HistValue {
            bounds: self.bounds.clone(),
            buckets: self
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            sum: self.sum.load(Ordering::Relaxed) as f64 / self.scale,
            count: self.count(),
        }
    }

    /// Writes the `_bucket`, `_sum` and `_count` lines of one series; `labels` is the
    /// already-encoded label list without braces.
    pub fn encode(&self, out: &mut String, name: &str, labels: &str) {
        self.snapshot().encode(out, name, labels);
    }
}

/// A histogram's values at one moment.
#[derive(Clone)]
struct HistValue {
    bounds: Arc<[f64]>,
    buckets: Vec<u64>,
    sum: f64,
    count: u64,
}

impl HistValue {
    fn merge(&mut self, other: &HistValue) {
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
        self.sum += other.sum;
        self.count += other.count;
    }

    fn encode(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0u64;
        for (i, n) in self.buckets.iter().enumerate() {
            cumulative += n;
            let le = match self.bounds.get(i) {
                Some(b) => format_float(*b),
                None => "+Inf".to_owned(),
            };
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
            );
        }
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", format_float(self.sum));
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

/// A number in the text format (integers without a fraction).
pub fn format_float(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// Escapes a label value for the text format.
pub fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// One series of a family: its label values and its atomics.
pub struct Series<S> {
    /// The label values, in the family's label order.
    pub values: Box<[Box<str>]>,
    /// The series' counters.
    pub value: S,
}

/// Series by the hash of their label values. foldhash, not SipHash: the values are a small
/// bounded set decided by the sidecar, and the lookup runs on every request.
type SeriesMap<S> = HashMap<u64, Vec<Arc<Series<S>>>, foldhash::fast::FixedState>;

/// A metric family: label values → series, at most [`MAX_SERIES`] of them.
pub struct Family<S> {
    labels: &'static [&'static str],
    hasher: foldhash::fast::RandomState,
    map: ArcSwap<SeriesMap<S>>,
    /// Serialises insertions; holds the number of series.
    insert: Mutex<usize>,
}

impl<S> Family<S> {
    /// An empty family with these label names.
    pub fn new(labels: &'static [&'static str]) -> Self {
        Self {
            labels,
            hasher: foldhash::fast::RandomState::default(),
            map: ArcSwap::from_pointee(HashMap::default()),
            insert: Mutex::new(0),
        }
    }

    /// The label names.
    pub fn labels(&self) -> &'static [&'static str] {
        self.labels
    }

    /// The series for `values` (one per label), made by `make` on first use; `None` when the
    /// family is full.
    pub fn get(&self, values: &[&str], make: impl FnOnce() -> S) -> Option<Arc<Series<S>>> {
        debug_assert_eq!(values.len(), self.labels.len());
        let h = self.hasher.hash_one(values);
        let matches =
            |s: &&Arc<Series<S>>| s.values.iter().map(|v| &**v).eq(values.iter().copied());
        if let Some(s) = self.map.load().get(&h).and_then(|l| l.iter().find(matches)) {
            return Some(s.clone());
        }
        let mut len = self.insert.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.map.load_full();
        if let Some(s) = current.get(&h).and_then(|l| l.iter().find(matches)) {
            return Some(s.clone());
        }
        if *len >= MAX_SERIES {
            return None;
        }
        let series = Arc::new(Series {
            values: values.iter().map(|v| Box::from(*v)).collect(),
            value: make(),
        });
        let mut next = (*current).clone();
        next.entry(h).or_default().push(series.clone());
        self.map.store(Arc::new(next));
        *len += 1;
        Some(series)
    }

    /// Every series, in label order.
    pub fn series(&self) -> Vec<Arc<Series<S>>> {
        let mut all: Vec<Arc<Series<S>>> = self.map.load().values().flatten().cloned().collect();
        all.sort_by(|a, b| a.values.cmp(&b.values));
        all
    }

    /// How many series the family holds.
    pub fn len(&self) -> usize {
        *self.insert.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the family holds no series.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `spec.metric.http.pathMatching`: path templates such as `/orders/{id}` (one segment per
/// `{name}`; `{name...}` takes the rest of the path).
#[derive(Debug, Default)]
pub struct PathMatcher {
    templates: Vec<(String, Vec<Segment>)>,
}

#[derive(Debug)]
enum Segment {
    Literal(String),
    Any,
    Rest,
}

impl PathMatcher {
    /// A matcher over `templates`, tried in order.
    pub fn new(templates: &[String]) -> Self {
        let templates = templates
            .iter()
            .map(|t| {
                let segs = t
                    .trim_matches('/')
                    .split('/')
                    .filter(|s| !s.is_empty())
                    .map(|s| {
                        if s.starts_with('{') && s.ends_with("...}") {
                            Segment::Rest
                        } else if s.starts_with('{') && s.ends_with('}') {
                            Segment::Any
                        } else {
                            Segment::Literal(s.to_owned())
                        }
                    })
                    .collect();
                (t.clone(), segs)
            })
            .collect();
        Self { templates }
    }

    /// Whether there are templates at all.
    pub fn is_empty(&self) -> bool {
        self.templates.is_empty()
    }

    /// The first template that `path` (without its query) matches.
    pub fn find(&self, path: &str) -> Option<&str> {
        self.find_index(path).map(|i| self.template(i))
    }

    /// The `i`-th template (an index from [`PathMatcher::find_index`]).
    pub fn template(&self, i: usize) -> &str {
        self.templates.get(i).map_or("", |(t, _)| t.as_str())
    }

    /// The index of the first template that `path` (without its query) matches.
    pub fn find_index(&self, path: &str) -> Option<usize> {
        let path = path.split('?').next().unwrap_or_default();
        'templates: for (i, (_, segs)) in self.templates.iter().enumerate() {
            let mut parts = path.trim_matches('/').split('/').filter(|s| !s.is_empty());
            for seg in segs {
                match seg {
                    Segment::Rest => return Some(i),
                    Segment::Any => {
                        if parts.next().is_none() {
                            continue 'templates;
                        }
                    }
                    Segment::Literal(l) => {
                        if parts.next() != Some(l.as_str()) {
                            continue 'templates;
                        }
                    }
                }
            }
            if parts.next().is_none() {
                return Some(i);
            }
        }
        None
    }
}

/// A label-rewriting rule of `spec.metric.rules`.
struct Rule {
    metric: String,
    label: String,
    /// (replacement, pattern).
    patterns: Vec<(String, regex::Regex)>,
}

/// Writes metric families in the text format, applying the label rules.
pub struct Encoder<'a> {
    out: &'a mut String,
    constant: String,
    rules: &'a [Rule],
}

enum Value {
    Counter(u64),
    Gauge(f64),
    Hist(HistValue),
}

impl Encoder<'_> {
    /// The text written so far.
    pub fn out(&mut self) -> &mut String {
        self.out
    }

    /// Writes one family; `rows` are (label names and values, value).
    fn family(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        extra: &[(&str, &str)],
        rows: Vec<(Vec<(&str, String)>, Value)>,
    ) {
        let rules: Vec<&Rule> = self.rules.iter().filter(|r| r.metric == name).collect();
        let mut merged: BTreeMap<String, Value> = BTreeMap::new();
        for (labels, value) in rows {
            let mut text = self.constant.clone();
            for (k, v) in extra
                .iter()
                .map(|(k, v)| (*k, (*v).to_owned()))
                .chain(labels)
            {
                let mut v = v;
                for rule in rules.iter().filter(|r| r.label == k) {
                    if let Some((replacement, _)) =
                        rule.patterns.iter().find(|(_, re)| re.is_match(&v))
                    {
                        v.clone_from(replacement);
                    }
                }
                if !text.is_empty() {
                    text.push(',');
                }
                let _ = write!(text, "{k}=\"{}\"", escape(&v));
            }
            match (merged.get_mut(&text), value) {
                (Some(Value::Counter(a)), Value::Counter(b)) => *a += b,
                // Series that the rules (or several circuit breakers of one target) make
                // alike: counts add up, a gauge keeps the highest value.
                (Some(Value::Gauge(a)), Value::Gauge(b)) => *a = a.max(b),
                (Some(Value::Hist(a)), Value::Hist(b)) => a.merge(&b),
                (_, value) => {
                    merged.insert(text, value);
                }
            }
        }
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in merged {
            match value {
                Value::Counter(n) => {
                    let _ = writeln!(self.out, "{name}{{{labels}}} {n}");
                }
                Value::Gauge(v) => {
                    let _ = writeln!(self.out, "{name}{{{labels}}} {}", format_float(v));
                }
                Value::Hist(h) => h.encode(self.out, name, &labels),
            }
        }
    }

    /// Writes a counter family of plain counters.
    pub fn counters(
        &mut self,
        name: &str,
        help: &str,
        extra: &[(&str, &str)],
        family: &Family<AtomicU64>,
    ) {
        let rows = rows(family, |c| Value::Counter(c.load(Ordering::Relaxed)));
        self.family(name, "counter", help, extra, rows);
    }

    /// Writes a counter family whose series carry their own `app_id` (another app's, not
    /// this sidecar's).
    pub fn counters_of_callers(&mut self, name: &str, help: &str, family: &Family<AtomicU64>) {
        let own = std::mem::take(&mut self.constant);
        self.counters(name, help, &[], family);
        self.constant = own;
    }

    /// Writes the observation counts of histogram series as a counter family.
    pub fn counts(
        &mut self,
        name: &str,
        help: &str,
        extra: &[(&str, &str)],
        family: &Family<Histogram>,
    ) {
        let rows = rows(family, |h| Value::Counter(h.count()));
        self.family(name, "counter", help, extra, rows);
    }

    /// Writes a histogram family.
    pub fn histograms(
        &mut self,
        name: &str,
        help: &str,
        extra: &[(&str, &str)],
        family: &Family<Histogram>,
    ) {
        let rows = rows(family, |h| Value::Hist(h.snapshot()));
        self.family(name, "histogram", help, extra, rows);
    }

    /// Writes a one-series counter.
    pub fn counter(&mut self, name: &str, help: &str, labels: &[(&str, String)], value: u64) {
        self.family(
            name,
            "counter",
            help,
            &[],
            vec![(labels.to_vec(), Value::Counter(value))],
        );
    }

    /// Writes a one-series gauge.
    pub fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, String)], value: f64) {
        self.family(
            name,
            "gauge",
            help,
            &[],
            vec![(labels.to_vec(), Value::Gauge(value))],
        );
    }

    /// Writes a one-series histogram.
    pub fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        self.family(
            name,
            "histogram",
            help,
            &[],
            vec![(Vec::new(), Value::Hist(h.snapshot()))],
        );
    }

    /// Writes a gauge family from already-gathered rows (label values, value).
    pub fn gauge_rows(&mut self, name: &str, help: &str, rows: Vec<(Vec<(&str, String)>, f64)>) {
        let rows = rows
            .into_iter()
            .map(|(l, v)| (l, Value::Gauge(v)))
            .collect();
        self.family(name, "gauge", help, &[], rows);
    }

    /// Writes a family from already-gathered rows (label values, count).
    pub fn counter_rows(&mut self, name: &str, help: &str, rows: Vec<(Vec<(&str, String)>, u64)>) {
        let rows = rows
            .into_iter()
            .map(|(l, v)| (l, Value::Counter(v)))
            .collect();
        self.family(name, "counter", help, &[], rows);
    }
}

fn rows<S>(
    family: &Family<S>,
    value: impl Fn(&S) -> Value,
) -> Vec<(Vec<(&'static str, String)>, Value)> {
    family
        .series()
        .iter()
        .map(|s| {
            let labels = family
                .labels()
                .iter()
                .copied()
                .zip(s.values.iter().map(|v| v.to_string()))
                .collect();
            (labels, value(&s.value))
        })
        .collect()
}

const COMPONENT_OP: &[&str] = &["component", "operation", "success"];
const COMPONENT: &[&str] = &["component", "success"];
/// The labels of the access-control families: the caller's identity, as daprd's (whose
/// `app_id` there is the caller's, not this sidecar's).
const ACL_LABELS: &[&str] = &["app_id", "trustDomain", "namespace"];
/// The access-control families, in the order of [`Metrics::access_control`]'s index.
const ACL_FAMILIES: [(&str, &str); 4] = [
    (
        "dapr_runtime_acl_app_policy_action_allowed_total",
        "The number of requests allowed by the app specific action specified in the access control policy.",
    ),
    (
        "dapr_runtime_acl_global_policy_action_allowed_total",
        "The number of requests allowed by the global action specified in the access control policy.",
    ),
    (
        "dapr_runtime_acl_app_policy_action_blocked_total",
        "The number of requests blocked by the app specific action specified in the access control policy.",
    ),
    (
        "dapr_runtime_acl_global_policy_action_blocked_total",
        "The number of requests blocked by the global action specified in the access control policy.",
    ),
];

/// Which component metric family a call belongs to.
#[derive(Clone, Copy, Debug)]
pub enum ComponentFamily {
    /// `dapr_component_state_*`.
    State,
    /// `dapr_component_secret_*`.
    Secret,
    /// `dapr_component_output_binding_*`.
    OutputBinding,
    /// `dapr_component_configuration_*`.
    Configuration,
}

/// The runtime's metrics: components, pub/sub, service invocation, app channel.
pub struct Metrics {
    enabled: bool,
    app_id: String,
    namespace: String,
    bounds: Arc<[f64]>,
    rules: Vec<Rule>,
    paths: PathMatcher,
    exclude_verbs: bool,
    increased_cardinality: bool,
    state: Family<Histogram>,
    secret: Family<Histogram>,
    output_binding: Family<Histogram>,
    configuration: Family<Histogram>,
    input_binding: Family<Histogram>,
    pubsub_egress: Family<Histogram>,
    pubsub_ingress: Family<Histogram>,
    pubsub_egress_bulk: Family<Histogram>,
    pubsub_egress_bulk_events: Family<AtomicU64>,
    component_init: Family<AtomicU64>,
    component_init_fail: Family<AtomicU64>,
    req_sent: Family<AtomicU64>,
    req_recv: Family<AtomicU64>,
    res_sent: Family<AtomicU64>,
    res_recv: Family<AtomicU64>,
    res_recv_latency: Family<Histogram>,
    /// Access-control decisions by the caller's identity: allowed by its policy, allowed by
    /// the global action, blocked by its policy, blocked by the global action.
    acl: [Family<AtomicU64>; 4],
    /// mTLS: set-ups done, set-ups failed (by reason), workload certificates renewed, renewals
    /// failed (by reason).
    mtls_init: Family<AtomicU64>,
    mtls_init_fail: Family<AtomicU64>,
    mtls_rotated: Family<AtomicU64>,
    mtls_rotated_fail: Family<AtomicU64>,
    http_client: Family<Histogram>,
    http_client_sent: Family<Histogram>,
    http_client_received: Histogram,
    grpc_client: Family<Histogram>,
    grpc_client_sent: Family<Histogram>,
    grpc_client_received: Family<Histogram>,
    http_health: Family<Histogram>,
    grpc_health: Family<Histogram>,
    /// `recordErrorCodes`: `dapr_error_code_total` is exported.
    error_codes: bool,
}

/// `dapr_error_code_total` (error code, category): one per process, as daprd's, counted
/// where an API error is rendered ([`record_error_code`]) once a sidecar's Configuration
/// says `recordErrorCodes: true`.
static ERROR_CODES: OnceLock<Family<AtomicU64>> = OnceLock::new();

/// Counts one API error answered with `code` in `dapr_error_code_total`, when
/// `recordErrorCodes` is on. As daprd, only the codes of its error table count, each with
/// its category.
pub fn record_error_code(code: crate::error::ErrorCode) {
    if let Some(family) = ERROR_CODES.get()
        && let Some(category) = category_of(code)
    {
        Metrics::count(family, &[code.code(), category]);
    }
}

/// The category of an error as daprd counts it: by its code, except for the one code that
/// daprd's table gives two categories (`ERR_MALFORMED_REQUEST`, `state` for an illegal key).
fn category_of(code: crate::error::ErrorCode) -> Option<&'static str> {
    match code {
        crate::error::ErrorCode::StateIllegalKey => Some("state"),
        _ => error_category(code.code()),
    }
}

/// The category daprd's error table gives `code` (`None` for codes outside it).
pub fn error_category(code: &str) -> Option<&'static str> {
    Some(match code {
        _ if code.starts_with("ERR_ACTOR_") => "actor",
        "ERR_GET_WORKFLOW"
        | "ERR_START_WORKFLOW"
        | "ERR_PAUSE_WORKFLOW"
        | "ERR_RESUME_WORKFLOW"
        | "ERR_TERMINATE_WORKFLOW"
        | "ERR_PURGE_WORKFLOW"
        | "ERR_RAISE_EVENT_WORKFLOW" => "workflow",
        _ if code.starts_with("ERR_WORKFLOW_") || code.starts_with("ERR_INSTANCE_ID_") => {
            "workflow"
        }
        "ERR_NOT_SUPPORTED_STATE_OPERATION" => "state",
        _ if code.starts_with("ERR_STATE_") => "state",
        _ if code.starts_with("ERR_CONFIGURATION_") => "configuration",
        "ERR_CRYPTO"
        | "ERR_CRYPTO_KEY"
        | "ERR_CRYPTO_PROVIDER_NOT_FOUND"
        | "ERR_CRYPTO_PROVIDERS_NOT_CONFIGURED" => "crypto",
        "ERR_SECRET_GET"
        | "ERR_SECRET_STORE_NOT_FOUND"
        | "ERR_SECRET_STORES_NOT_CONFIGURED"
        | "ERR_PERMISSION_DENIED" => "secret",
        "ERR_PUBSUB_EMPTY"
        | "ERR_PUBSUB_NOT_FOUND"
        | "ERR_PUBSUB_NOT_CONFIGURED"
        | "ERR_TOPIC_NAME_EMPTY"
        | "ERR_PUBSUB_FORBIDDEN"
        | "ERR_PUBSUB_PUBLISH_MESSAGE"
        | "ERR_PUBSUB_REQUEST_METADATA"
        | "ERR_PUBSUB_CLOUD_EVENTS_SER"
        | "ERR_PUBSUB_EVENTS_SER"
        | "ERR_PUBLISH_OUTBOX" => "pubsub",
        "ERR_CONVERSATION_INVALID_PARMS"
        | "ERR_CONVERSATION_INVOKE"
        | "ERR_CONVERSATION_MISSING_INPUTS"
        | "ERR_CONVERSATION_NOT_FOUND" => "conversation",
        "ERR_DIRECT_INVOKE" => "service-invocation",
        "ERR_INVOKE_OUTPUT_BINDING" => "binding",
        "ERR_LOCK_STORE_NOT_CONFIGURED"
        | "ERR_LOCK_STORE_NOT_FOUND"
        | "ERR_TRY_LOCK"
        | "ERR_UNLOCK" => "lock",
        "ERR_HEALTH_NOT_READY" | "ERR_HEALTH_APPID_NOT_MATCH" | "ERR_OUTBOUND_HEALTH_NOT_READY" => {
            "health"
        }
        "ERR_API_UNIMPLEMENTED"
        | "ERR_APP_CHANNEL_NIL"
        | "ERR_BAD_REQUEST"
        | "ERR_BODY_READ"
        | "ERR_INTERNAL"
        | "ERR_MALFORMED_REQUEST"
        | "ERR_MALFORMED_REQUEST_DATA"
        | "ERR_MALFORMED_RESPONSE"
        | "ERROR" => "common",
        _ if code.starts_with("DAPR_SCHEDULER_") => "job",
        _ => return None,
    })
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("enabled", &self.enabled)
            .field("app_id", &self.app_id)
            .finish_non_exhaustive()
    }
}

/// Latency bounds from `latencyDistributionBuckets` (empty: daprd's defaults).
pub fn latency_bounds(buckets: &[f64]) -> Arc<[f64]> {
    let mut bounds: Vec<f64> = if buckets.is_empty() {
        LATENCY_BUCKETS.to_vec()
    } else {
        buckets.iter().copied().filter(|b| b.is_finite()).collect()
    };
    bounds.sort_by(f64::total_cmp);
    bounds.dedup();
    bounds.into()
}

/// A rule whose pattern does not compile.
#[derive(Debug, thiserror::Error)]
#[error("spec.metric.rules: metric {metric}, label {label}: invalid regex {pattern:?}: {reason}")]
pub struct RuleError {
    metric: String,
    label: String,
    pattern: String,
    reason: String,
}

impl Metrics {
    /// Metrics of app `app_id` in `namespace`, as Configuration `spec.metric` says.
    pub fn new(
        app_id: &str,
        namespace: Option<&str>,
        spec: &tandem_config::MetricSpec,
    ) -> Result<Self, RuleError> {
        let mut rules = Vec::new();
        for r in &spec.rules {
            for l in &r.labels {
                let mut patterns = Vec::new();
                for (replacement, pattern) in &l.regex {
                    let re = regex::Regex::new(pattern).map_err(|e| RuleError {
                        metric: r.name.clone(),
                        label: l.name.clone(),
                        pattern: pattern.clone(),
                        reason: e.to_string(),
                    })?;
                    patterns.push((replacement.clone(), re));
                }
                rules.push(Rule {
                    metric: r.name.clone(),
                    label: l.name.clone(),
                    patterns,
                });
            }
        }
        if spec.record_error_codes {
            ERROR_CODES.get_or_init(|| Family::new(&["error_code", "category"]));
        }
        Ok(Self {
            enabled: true,
            app_id: app_id.to_owned(),
            namespace: namespace.unwrap_or_default().to_owned(),
            bounds: latency_bounds(&spec.latency_distribution_buckets),
            rules,
            paths: PathMatcher::new(&spec.http.path_matching),
            exclude_verbs: spec.http.exclude_verbs,
            increased_cardinality: spec.http.increased_cardinality,
            state: Family::new(COMPONENT_OP),
            secret: Family::new(COMPONENT_OP),
            output_binding: Family::new(COMPONENT_OP),
            configuration: Family::new(COMPONENT_OP),
            input_binding: Family::new(COMPONENT),
            pubsub_egress: Family::new(&["component", "success", "topic"]),
            pubsub_ingress: Family::new(&["component", "process_status", "status", "topic"]),
            pubsub_egress_bulk: Family::new(&["component", "success", "topic"]),
            pubsub_egress_bulk_events: Family::new(&["component", "success", "topic"]),
            component_init: Family::new(&["component"]),
            component_init_fail: Family::new(&["component", "reason", "componentName"]),
            req_sent: Family::new(&["dst_app_id", "type"]),
            req_recv: Family::new(&["src_app_id"]),
            res_sent: Family::new(&["dst_app_id", "status"]),
            res_recv: Family::new(&["src_app_id", "status", "type"]),
            res_recv_latency: Family::new(&["src_app_id", "status"]),
            acl: std::array::from_fn(|_| Family::new(ACL_LABELS)),
            mtls_init: Family::new(&[]),
            mtls_init_fail: Family::new(&["reason"]),
            mtls_rotated: Family::new(&[]),
            mtls_rotated_fail: Family::new(&["reason"]),
            http_client: Family::new(&["method", "path", "status"]),
            http_client_sent: Family::new(&["method", "path"]),
            http_client_received: Histogram::sizes(),
            grpc_client: Family::new(&["grpc_client_method", "grpc_client_status"]),
            grpc_client_sent: Family::new(&["grpc_client_method"]),
            grpc_client_received: Family::new(&["grpc_client_method"]),
            http_health: Family::new(&["status"]),
            grpc_health: Family::new(&["grpc_client_status"]),
            error_codes: spec.record_error_codes,
        })
    }

    /// Metrics that record nothing (`--enable-metrics=false`, embedding, tests).
    pub fn disabled() -> Self {
        let mut m = Self::new("", None, &tandem_config::MetricSpec::default())
            .unwrap_or_else(|_| unreachable!("no rules"));
        m.enabled = false;
        m
    }

    /// Whether anything is recorded.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// `pathMatching`.
    pub fn paths(&self) -> &PathMatcher {
        &self.paths
    }

    /// `excludeVerbs`: HTTP metrics carry an empty `method`.
    pub fn exclude_verbs(&self) -> bool {
        self.exclude_verbs
    }

    /// `increasedCardinality` (adds `dapr_http_server_response_count`).
    pub fn increased_cardinality(&self) -> bool {
        self.increased_cardinality
    }

    /// The latency bounds in milliseconds.
    pub fn bounds(&self) -> &Arc<[f64]> {
        &self.bounds
    }

    fn latency(&self) -> Histogram {
        Histogram::latency(self.bounds.clone())
    }

    fn observe(&self, family: &Family<Histogram>, values: &[&str], start: Instant) {
        if let Some(s) = family.get(values, || self.latency()) {
            s.value.observe_since(start);
        }
    }

    fn count(family: &Family<AtomicU64>, values: &[&str]) {
        if let Some(s) = family.get(values, || AtomicU64::new(0)) {
            s.value.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records one call of `operation` on `component` that started at `start`.
    pub fn component(
        &self,
        family: ComponentFamily,
        component: &str,
        operation: &str,
        success: bool,
        start: Instant,
    ) {
        if !self.enabled {
            return;
        }
        let family = match family {
            ComponentFamily::State => &self.state,
            ComponentFamily::Secret => &self.secret,
            ComponentFamily::OutputBinding => &self.output_binding,
            ComponentFamily::Configuration => &self.configuration,
        };
        self.observe(family, &[component, operation, bool_str(success)], start);
    }

    /// Records one input binding event handed to the app.
    pub fn input_binding(&self, component: &str, success: bool, start: Instant) {
        if self.enabled {
            self.observe(&self.input_binding, &[component, bool_str(success)], start);
        }
    }

    /// Records one publish to `topic` of `component`.
    pub fn pubsub_egress(&self, component: &str, topic: &str, success: bool, start: Instant) {
        if self.enabled {
            self.observe(
                &self.pubsub_egress,
                &[component, bool_str(success), topic],
                start,
            );
        }
    }

    /// Records one bulk publish of `events` events to `topic` of `component`.
    pub fn pubsub_egress_bulk(
        &self,
        component: &str,
        topic: &str,
        success: bool,
        events: usize,
        start: Instant,
    ) {
        if !self.enabled {
            return;
        }
        let values = [component, bool_str(success), topic];
        self.observe(&self.pubsub_egress_bulk, &values, start);
        if let Some(s) = self
            .pubsub_egress_bulk_events
            .get(&values, || AtomicU64::new(0))
        {
            s.value.fetch_add(events as u64, Ordering::Relaxed);
        }
    }

    /// Records one message delivered to the app: `process_status` is `success`, `retry` or
    /// `drop`; `status` is the app's answer (`success`, `retry`, `drop`, or a failure).
    pub fn pubsub_ingress(
        &self,
        component: &str,
        topic: &str,
        process_status: &str,
        status: &str,
        start: Instant,
    ) {
        if self.enabled {
            self.observe(
                &self.pubsub_ingress,
                &[component, process_status, status, topic],
                start,
            );
        }
    }

    /// Records a component initialised (`component` is its type, e.g. `state.redis`).
    pub fn component_initialized(&self, component_type: &str) {
        if self.enabled {
            Self::count(&self.component_init, &[component_type]);
        }
    }

    /// Records a component that failed to initialise.
    pub fn component_init_failed(&self, component_type: &str, reason: &str, name: &str) {
        if self.enabled {
            Self::count(&self.component_init_fail, &[component_type, reason, name]);
        }
    }

    /// A call to another app is sent (`streaming` for the gRPC proxy's streams).
    pub fn invocation_sent(&self, dst_app_id: &str, streaming: bool) {
        if self.enabled {
            let kind = if streaming { "streaming" } else { "unary" };
            Self::count(&self.req_sent, &[dst_app_id, kind]);
        }
    }

    /// Another app's answer arrived (`status`: HTTP status or gRPC code).
    pub fn invocation_answered(&self, dst_app_id: &str, status: &str, start: Instant) {
        if self.enabled {
            Self::count(&self.res_recv, &[dst_app_id, status, "unary"]);
            self.observe(&self.res_recv_latency, &[dst_app_id, status], start);
        }
    }

    /// A call from app `src_app_id` arrived on the internal listener.
    pub fn invocation_received(&self, src_app_id: &str) {
        if self.enabled {
            Self::count(&self.req_recv, &[src_app_id]);
        }
    }

    /// This app's answer to a call from `src_app_id` went back.
    pub fn invocation_responded(&self, src_app_id: &str, status: &str) {
        if self.enabled {
            Self::count(&self.res_sent, &[src_app_id, status]);
        }
    }

    /// mTLS between sidecars was set up. (A set-up that fails stops the sidecar, so
    /// `dapr_runtime_mtls_init_fail_total` is exported without series, as daprd's, which
    /// never records it either.)
    pub fn mtls_initialised(&self) {
        if self.enabled {
            Self::count(&self.mtls_init, &[]);
        }
    }

    /// The workload certificate was renewed, or its renewal failed (reason `sign`, daprd's
    /// for a certificate that could not be issued).
    pub fn workload_cert_rotated(&self, ok: bool) {
        if self.enabled {
            if ok {
                Self::count(&self.mtls_rotated, &[]);
            } else {
                Self::count(&self.mtls_rotated_fail, &["sign"]);
            }
        }
    }

    /// The access-control list decided a call from `caller` (daprd's
    /// `dapr_runtime_acl_{app,global}_policy_action_{allowed,blocked}_total`, labelled with the
    /// caller's identity).
    pub fn access_control(
        &self,
        decision: crate::invoke::Decision,
        caller: &crate::invoke::Caller<'_>,
    ) {
        if self.enabled {
            use crate::invoke::DecidedBy;
            let i = match (decision.allowed, decision.by) {
                (true, DecidedBy::App) => 0,
                (true, DecidedBy::Global) => 1,
                (false, DecidedBy::App) => 2,
                (false, DecidedBy::Global) => 3,
            };
            Self::count(
                &self.acl[i],
                &[caller.app_id, caller.trust_domain, caller.namespace],
            );
        }
    }

    /// An HTTP call to the app completed; `path` is labelled with its `pathMatching`
    /// template, or empty, never as it is.
    pub fn http_client(
        &self,
        method: &str,
        path: &str,
        status: &str,
        sent: u64,
        received: u64,
        start: Instant,
    ) {
        if !self.enabled {
            return;
        }
        let path = self.paths.find(path).unwrap_or("");
        let method = if self.exclude_verbs { "" } else { method };
        self.observe(&self.http_client, &[method, path, status], start);
        if let Some(s) = self.http_client_sent.get(&[method, path], Histogram::sizes) {
            s.value.observe(sent);
        }
        self.http_client_received.observe(received);
    }

    /// A gRPC call to the app completed with `code` (a gRPC status code).
    pub fn grpc_client(&self, method: &str, code: i32, sent: u64, received: u64, start: Instant) {
        if !self.enabled {
            return;
        }
        let code = grpc_code_name(code);
        self.observe(&self.grpc_client, &[method, code], start);
        if let Some(s) = self.grpc_client_sent.get(&[method], Histogram::sizes) {
            s.value.observe(sent);
        }
        if let Some(s) = self.grpc_client_received.get(&[method], Histogram::sizes) {
            s.value.observe(received);
        }
    }

    /// An app health probe over HTTP ended with `status` (the answer's status code; `500`
    /// when there was no answer, as daprd records it).
    pub fn http_health_probe(&self, status: &str, start: Instant) {
        if self.enabled {
            self.observe(&self.http_health, &[status], start);
        }
    }

    /// An app health probe over gRPC ended with `code` (a gRPC status code).
    pub fn grpc_health_probe(&self, code: i32, start: Instant) {
        if self.enabled {
            self.observe(&self.grpc_health, &[grpc_code_name(code)], start);
        }
    }

    /// An encoder writing to `out` with this sidecar's `app_id` label and rules.
    pub fn encoder<'a>(&'a self, out: &'a mut String) -> Encoder<'a> {
        Encoder {
            out,
            constant: format!("app_id=\"{}\"", escape(&self.app_id)),
            rules: &self.rules,
        }
    }

    /// Writes the runtime's families.
    pub fn encode(&self, enc: &mut Encoder<'_>) {
        let ns: &[(&str, &str)] = &[("namespace", &self.namespace)];
        let comp = |enc: &mut Encoder<'_>, base: &str, what: &str, f: &Family<Histogram>| {
            enc.counts(
                &format!("{base}_count"),
                &format!("The number of {what}."),
                ns,
                f,
            );
            enc.histograms(
                &format!("{base}_latencies"),
                &format!("The latency of {what}, in milliseconds."),
                ns,
                f,
            );
        };
        comp(
            enc,
            "dapr_component_state",
            "state store operations",
            &self.state,
        );
        comp(
            enc,
            "dapr_component_secret",
            "secret store operations",
            &self.secret,
        );
        comp(
            enc,
            "dapr_component_output_binding",
            "output binding invocations",
            &self.output_binding,
        );
        comp(
            enc,
            "dapr_component_input_binding",
            "input binding events handed to the app",
            &self.input_binding,
        );
        comp(
            enc,
            "dapr_component_configuration",
            "configuration store operations",
            &self.configuration,
        );
        comp(
            enc,
            "dapr_component_pubsub_egress",
            "messages published",
            &self.pubsub_egress,
        );
        comp(
            enc,
            "dapr_component_pubsub_ingress",
            "messages delivered to the app",
            &self.pubsub_ingress,
        );
        enc.counts(
            "dapr_component_pubsub_egress_bulk_count",
            "The number of bulk publish calls.",
            ns,
            &self.pubsub_egress_bulk,
        );
        enc.counters(
            "dapr_component_pubsub_egress_bulk_event_count",
            "The number of events published in bulk.",
            ns,
            &self.pubsub_egress_bulk_events,
        );
        enc.histograms(
            "dapr_component_pubsub_egress_bulk_latencies",
            "The latency of bulk publish calls, in milliseconds.",
            ns,
            &self.pubsub_egress_bulk,
        );
        enc.counters(
            "dapr_runtime_component_init_total",
            "The number of initialized components.",
            &[],
            &self.component_init,
        );
        enc.counters(
            "dapr_runtime_component_init_fail_total",
            "The number of component initialization failures.",
            &[],
            &self.component_init_fail,
        );
        enc.counters(
            "dapr_runtime_service_invocation_req_sent_total",
            "The number of requests sent to other apps.",
            &[],
            &self.req_sent,
        );
        enc.counters(
            "dapr_runtime_service_invocation_req_recv_total",
            "The number of requests received from other apps.",
            &[],
            &self.req_recv,
        );
        enc.counters(
            "dapr_runtime_service_invocation_res_sent_total",
            "The number of responses sent to other apps.",
            &[],
            &self.res_sent,
        );
        enc.counters(
            "dapr_runtime_service_invocation_res_recv_total",
            "The number of responses received from other apps.",
            &[],
            &self.res_recv,
        );
        enc.histograms(
            "dapr_runtime_service_invocation_res_recv_latency_ms",
            "The latency of calls to other apps until their response, in milliseconds.",
            &[],
            &self.res_recv_latency,
        );
        for (name, help, family) in [
            (
                "dapr_runtime_mtls_init_total",
                "The number of successful mTLS authenticator initialization.",
                &self.mtls_init,
            ),
            (
                "dapr_runtime_mtls_init_fail_total",
                "The number of mTLS authenticator init failures.",
                &self.mtls_init_fail,
            ),
            (
                "dapr_runtime_mtls_workload_cert_rotated_total",
                "The number of the successful workload certificate rotations.",
                &self.mtls_rotated,
            ),
            (
                "dapr_runtime_mtls_workload_cert_rotated_fail_total",
                "The number of the failed workload certificate rotations.",
                &self.mtls_rotated_fail,
            ),
        ] {
            enc.counters(name, help, &[], family);
        }
        for ((name, help), family) in ACL_FAMILIES.iter().zip(&self.acl) {
            enc.counters_of_callers(name, help, family);
        }
        enc.counts(
            "dapr_http_client_completed_count",
            "The number of HTTP calls to the app completed.",
            &[],
            &self.http_client,
        );
        enc.histograms(
            "dapr_http_client_roundtrip_latency",
            "The latency of HTTP calls to the app, in milliseconds.",
            &[],
            &self.http_client,
        );
        enc.histograms(
            "dapr_http_client_sent_bytes",
            "The request body sizes of HTTP calls to the app.",
            &[],
            &self.http_client_sent,
        );
        enc.histogram(
            "dapr_http_client_received_bytes",
            "The response body sizes of HTTP calls to the app.",
            &self.http_client_received,
        );
        enc.counts(
            "dapr_grpc_io_client_completed_rpcs",
            "The number of gRPC calls to the app completed, by method and status.",
            &[],
            &self.grpc_client,
        );
        enc.histograms(
            "dapr_grpc_io_client_roundtrip_latency",
            "The latency of gRPC calls to the app, in milliseconds.",
            &[],
            &self.grpc_client,
        );
        enc.histograms(
            "dapr_grpc_io_client_sent_bytes_per_rpc",
            "The request sizes of gRPC calls to the app.",
            &[],
            &self.grpc_client_sent,
        );
        enc.histograms(
            "dapr_grpc_io_client_received_bytes_per_rpc",
            "The response sizes of gRPC calls to the app.",
            &[],
            &self.grpc_client_received,
        );
        if let Some(family) = ERROR_CODES.get().filter(|_| self.error_codes) {
            enc.counters(
                "dapr_error_code_total",
                "The number of times an error with a specific error code was answered.",
                &[],
                family,
            );
        }
        enc.counts(
            "dapr_http_healthprobes_completed_count",
            "The number of app health probes over HTTP completed.",
            &[],
            &self.http_health,
        );
        enc.histograms(
            "dapr_http_healthprobes_roundtrip_latency",
            "The latency of app health probes over HTTP, in milliseconds.",
            &[],
            &self.http_health,
        );
        enc.counts(
            "dapr_grpc_io_healthprobes_completed_count",
            "The number of app health probes over gRPC completed.",
            &[],
            &self.grpc_health,
        );
        enc.histograms(
            "dapr_grpc_io_healthprobes_roundtrip_latency",
            "The latency of app health probes over gRPC, in milliseconds.",
            &[],
            &self.grpc_health,
        );
    }
}

impl Metrics {
    /// Writes `dapr_resiliency_loaded`, `dapr_resiliency_count`,
    /// `dapr_resiliency_activations_total` and `dapr_resiliency_cb_state` from the policies'
    /// own counters.
    pub fn encode_resiliency(&self, enc: &mut Encoder<'_>, r: &crate::resiliency::Resiliency) {
        use crate::resiliency::BREAKER_STATES;
        let ns = || ("namespace", self.namespace.clone());
        let loaded = r
            .loaded()
            .iter()
            .map(|name| (vec![("name", name.clone()), ns()], 1))
            .collect();
        enc.counter_rows(
            "dapr_resiliency_loaded",
            "The number of resiliency policies loaded.",
            loaded,
        );
        let mut applied = Vec::new();
        let mut activated = Vec::new();
        let mut breakers = Vec::new();
        r.for_each_policy(|p, has_breaker| {
            let st = p.stats();
            let row = |policy: &str, status: &str, n: u64| {
                (
                    vec![
                        ("name", st.resiliency.clone()),
                        ("policy", policy.to_owned()),
                        ns(),
                        ("flow_direction", st.direction.to_owned()),
                        ("target", st.target.clone()),
                        ("status", status.to_owned()),
                    ],
                    n,
                )
            };
            let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
            if p.timeout().is_some() {
                applied.push(row("timeout", "", load(&st.timeout_applied)));
                activated.push(row("timeout", "", load(&st.timeout_activated)));
            }
            if p.has_retries() {
                applied.push(row("retry", "", load(&st.retry_applied)));
                activated.push(row("retry", "", load(&st.retry_activated)));
            }
            if has_breaker {
                for (i, state) in BREAKER_STATES.iter().enumerate() {
                    let n = load(&st.breaker_applied[i]);
                    if n > 0 {
                        applied.push(row("circuitbreaker", state, n));
                    }
                    let n = load(&st.breaker_activated[i]);
                    if n > 0 {
                        activated.push(row("circuitbreaker", state, n));
                    }
                }
                // As daprd: once a call went through the breaker, one series per state, the
                // one it was last seen in at 1.
                if let Some(last) = st.breaker_seen() {
                    let last = BREAKER_STATES.get(last).copied();
                    for state in CB_STATE_ORDER {
                        let (labels, _) = row("circuitbreaker", state, 0);
                        breakers.push((labels, if last == Some(state) { 1.0 } else { 0.0 }));
                    }
                }
            }
        });
        enc.counter_rows(
            "dapr_resiliency_count",
            "The number of times a resiliency policy was applied.",
            applied,
        );
        enc.counter_rows(
            "dapr_resiliency_activations_total",
            "The number of times a resiliency policy was activated: a timeout fired, a retry was made, a circuit breaker changed state.",
            activated,
        );
        enc.gauge_rows(
            "dapr_resiliency_cb_state",
            "A resiliency policy's current circuit breaker state: 1 on the series of the state it is in, 0 on the others.",
            breakers,
        );
    }
}

/// The `status` values of `dapr_resiliency_cb_state`, in daprd's order.
const CB_STATE_ORDER: [&str; 4] = ["closed", "half-open", "open", "unknown"];

fn bool_str(b: bool) -> &'static str {
    if b { "true" } else { "false" }
}

/// gRPC status code names, as daprd labels them.
pub const GRPC_CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The name of gRPC status `code` (`UNKNOWN` for codes outside the table).
pub fn grpc_code_name(code: i32) -> &'static str {
    usize::try_from(code)
        .ok()
        .and_then(|c| GRPC_CODES.get(c))
        .copied()
        .unwrap_or("UNKNOWN")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_have_daprs_categories() {
        for (code, category) in [
            ("ERR_STATE_GET", Some("state")),
            ("ERR_NOT_SUPPORTED_STATE_OPERATION", Some("state")),
            ("ERR_ACTOR_INSTANCE_MISSING", Some("actor")),
            ("ERR_INSTANCE_ID_NOT_FOUND", Some("workflow")),
            ("ERR_PUBSUB_NOT_FOUND", Some("pubsub")),
            ("ERR_DIRECT_INVOKE", Some("service-invocation")),
            ("ERR_INVOKE_OUTPUT_BINDING", Some("binding")),
            ("ERR_SECRET_STORES_NOT_CONFIGURED", Some("secret")),
            ("ERR_HEALTH_NOT_READY", Some("health")),
            ("ERR_MALFORMED_REQUEST", Some("common")),
            ("DAPR_SCHEDULER_GET_JOB", Some("job")),
            ("ERR_NOT_IN_DAPRS_TABLE", None),
        ] {
            assert_eq!(error_category(code), category, "{code}");
        }
        use crate::error::ErrorCode;
        assert_eq!(category_of(ErrorCode::MalformedRequest), Some("common"));
        assert_eq!(category_of(ErrorCode::StateIllegalKey), Some("state"));
        assert_eq!(category_of(ErrorCode::StateGet), Some("state"));
    }

    #[test]
    fn histogram_buckets_are_cumulative_with_sum_and_count() {
        let h = Histogram::latency(Arc::from(&[1.0, 5.0, 10.0][..]));
        h.observe(500_000); // 0.5 ms
        h.observe(1_000_000); // 1 ms: in le="1"
        h.observe(7_000_000); // 7 ms
        h.observe(20_000_000); // 20 ms: only +Inf
        let mut out = String::new();
        h.encode(&mut out, "x", "a=\"b\"");
        assert_eq!(
            out,
            "x_bucket{a=\"b\",le=\"1\"} 2\n\
             x_bucket{a=\"b\",le=\"5\"} 2\n\
             x_bucket{a=\"b\",le=\"10\"} 3\n\
             x_bucket{a=\"b\",le=\"+Inf\"} 4\n\
             x_sum{a=\"b\"} 28.5\n\
             x_count{a=\"b\"} 4\n"
        );
    }

    #[test]
    fn paths_match_templates() {
        let m = PathMatcher::new(&["/orders/{id}".into(), "/files/{rest...}".into()]);
        assert_eq!(m.find("/orders/42"), Some("/orders/{id}"));
        assert_eq!(m.find("/orders/42?x=1"), Some("/orders/{id}"));
        assert_eq!(m.find("/orders/42/items"), None);
        assert_eq!(m.find("/orders"), None);
        assert_eq!(m.find("/files/a/b/c"), Some("/files/{rest...}"));
        assert_eq!(m.find("/other"), None);
    }

    #[test]
    fn families_are_capped() {
        let f: Family<AtomicU64> = Family::new(&["k"]);
        for i in 0..(MAX_SERIES + 50) {
            let v = i.to_string();
            if let Some(s) = f.get(&[&v], || AtomicU64::new(0)) {
                s.value.fetch_add(1, Ordering::Relaxed);
            }
        }
        assert_eq!(f.len(), MAX_SERIES);
        let s = f
            .get(&["7"], || AtomicU64::new(0))
            .expect("existing series");
        assert_eq!(s.value.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn rules_rewrite_and_merge_series() {
        let spec = tandem_config::MetricSpec {
            rules: vec![tandem_config::MetricRule {
                name: "dapr_runtime_service_invocation_req_sent_total".into(),
                labels: vec![tandem_config::MetricLabel {
                    name: "dst_app_id".into(),
                    regex: [("orders".to_owned(), "^orders-.+".to_owned())].into(),
                }],
            }],
            ..Default::default()
        };
        let m = Metrics::new("me", None, &spec).expect("rules compile");
        m.invocation_sent("orders-1", false);
        m.invocation_sent("orders-2", false);
        m.invocation_sent("cart", false);
        let mut out = String::new();
        m.encode(&mut m.encoder(&mut out));
        assert!(out.contains(
            "dapr_runtime_service_invocation_req_sent_total{app_id=\"me\",dst_app_id=\"orders\",type=\"unary\"} 2\n"
        ), "{out}");
        assert!(out.contains(
            "dapr_runtime_service_invocation_req_sent_total{app_id=\"me\",dst_app_id=\"cart\",type=\"unary\"} 1\n"
        ), "{out}");
    }

    #[test]
    fn component_calls_are_labelled() {
        let m = Metrics::new("me", Some("prod"), &Default::default()).unwrap();
        let t = Instant::now();
        m.component(ComponentFamily::State, "store", "get", true, t);
        m.component(ComponentFamily::State, "store", "get", true, t);
        m.component(ComponentFamily::State, "store", "set", false, t);
        let mut out = String::new();
        m.encode(&mut m.encoder(&mut out));
        assert!(out.contains("dapr_component_state_count{app_id=\"me\",namespace=\"prod\",component=\"store\",operation=\"get\",success=\"true\"} 2\n"), "{out}");
        assert!(out.contains("dapr_component_state_latencies_count{app_id=\"me\",namespace=\"prod\",component=\"store\",operation=\"set\",success=\"false\"} 1\n"), "{out}");
        assert!(out.contains("# TYPE dapr_component_state_latencies histogram\n"));
    }
}
