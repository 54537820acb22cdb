//! Distributed tracing: W3C Trace Context propagation, spans, sampling and export.
//!
//! - [`SpanContext`]: a `traceparent` (and the binary `grpc-trace-bin`) parsed and written.
//! - [`Tracer`]: decides sampling (parent-based, else a ratio of trace ids, like daprd's
//!   `ParentBased(TraceIDRatioBased(samplingRate))`) and starts [`Span`]s. A tracer that is
//!   off (`samplingRate: "0"`) does nothing and allocates nothing.
//! - [`export`]: sampled spans go through a bounded channel to one background task that
//!   batches them to OTLP (HTTP protobuf or gRPC), Zipkin v2 JSON and/or stdout.
//!
//! Propagation inside the sidecar rides on the request's own `traceparent` header: the API
//! front ends replace it with their server span's context, so every later step (service
//! invocation, publish, output bindings) forwards the right parent without extra plumbing.

pub mod export;
mod settings;

use std::borrow::Cow;
use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use http::{HeaderMap, HeaderValue};
use tokio::sync::mpsc;

pub use settings::{Settings, Sink};

/// The `traceparent` header.
pub const TRACEPARENT: &str = "traceparent";
/// The `tracestate` header.
pub const TRACESTATE: &str = "tracestate";
/// The `baggage` header.
pub const BAGGAGE: &str = "baggage";
/// The binary trace context of gRPC (OpenCensus format, base64 in HTTP/2 headers).
pub const GRPC_TRACE_BIN: &str = "grpc-trace-bin";
/// The same header names as [`HeaderName`]s: a lookup by one of these skips parsing and
/// validating the name, which a lookup by `&str` repeats every time.
pub mod names {
    use http::HeaderName;

    /// `traceparent`.
    pub static TRACEPARENT: HeaderName = HeaderName::from_static(super::TRACEPARENT);
    /// `tracestate`.
    pub static TRACESTATE: HeaderName = HeaderName::from_static(super::TRACESTATE);
    /// `baggage`.
    pub static BAGGAGE: HeaderName = HeaderName::from_static(super::BAGGAGE);
    /// `grpc-trace-bin`.
    pub static GRPC_TRACE_BIN: HeaderName = HeaderName::from_static(super::GRPC_TRACE_BIN);
}

/// The longest `tracestate` propagated (W3C).
pub const MAX_TRACESTATE_LEN: usize = 512;

/// A W3C trace context: trace id, span id and flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpanContext {
    /// The trace id (never all zero).
    pub trace_id: [u8; 16],
    /// The span id (never all zero).
    pub span_id: [u8; 8],
    /// Trace flags; bit 0 = sampled.
    pub flags: u8,
}

/// Each byte's value as a lower-case hex digit, or [`BAD`] (upper-case hex is not valid in a
/// `traceparent`).
const HEX_VAL: [u8; 256] = {
    let mut t = [BAD; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};
/// A bit no hex digit's value has.
const BAD: u8 = 0x10;

fn parse_hex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    // One table lookup per digit; a bad digit's bit is checked once, at the end.
    let mut bad = 0;
    for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        let (hi, lo) = (HEX_VAL[usize::from(pair[0])], HEX_VAL[usize::from(pair[1])]);
        bad |= hi | lo;
        *o = hi << 4 | lo;
    }
    (bad & BAD == 0).then_some(out)
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn put_hex(out: &mut [u8], bytes: &[u8]) {
    for (i, b) in bytes.iter().enumerate() {
        out[i * 2] = HEX[usize::from(b >> 4)];
        out[i * 2 + 1] = HEX[usize::from(b & 0xf)];
    }
}

/// The lower-case hex form of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = vec![0u8; bytes.len() * 2];
    put_hex(&mut out, bytes);
    String::from_utf8(out).unwrap_or_default()
}

/// Base64 for `grpc-trace-bin`: written without padding, read with or without it.
const BIN_B64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

impl SpanContext {
    /// Parses a `traceparent`: `<version>-<32 hex trace id>-<16 hex span id>-<2 hex flags>`.
    /// Invalid values (wrong lengths, upper-case hex, all-zero ids, version `ff`) are `None`;
    /// a future version may carry more fields after the flags.
    pub fn parse(s: &str) -> Option<Self> {
        let b = s.trim().as_bytes();
        if b.len() < 55 || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
            return None;
        }
        let version = parse_hex::<1>(&b[..2])?[0];
        if version == 0xff || (version == 0 && b.len() != 55) || (b.len() > 55 && b[55] != b'-') {
            return None;
        }
        let trace_id = parse_hex::<16>(&b[3..35])?;
        let span_id = parse_hex::<8>(&b[36..52])?;
        let flags = parse_hex::<1>(&b[53..55])?[0];
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            span_id,
            flags,
        })
    }

    /// The context of a request's headers: `traceparent`, else `grpc-trace-bin`.
    pub fn from_headers(headers: &HeaderMap) -> Option<Self> {
        if let Some(tp) = headers.get(&names::TRACEPARENT) {
            return tp.to_str().ok().and_then(Self::parse);
        }
        headers
            .get(&names::GRPC_TRACE_BIN)
            .and_then(|v| Self::from_binary(v.as_bytes()))
    }

    /// Decodes `grpc-trace-bin` (base64 of version 0, then field 0 trace id, field 1 span id,
    /// field 2 options).
    pub fn from_binary(b64: &[u8]) -> Option<Self> {
        let raw = BIN_B64.decode(b64).ok()?;
        if raw.len() < 29 || raw[0] != 0 || raw[1] != 0 || raw[18] != 1 {
            return None;
        }
        let trace_id: [u8; 16] = raw[2..18].try_into().ok()?;
        let span_id: [u8; 8] = raw[19..27].try_into().ok()?;
        let flags = if raw[27] == 2 { raw[28] } else { 0 };
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            span_id,
            flags,
        })
    }

    /// Whether the sampled flag is set.
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    fn write(&self) -> [u8; 55] {
        let mut out = [b'-'; 55];
        out[0] = b'0';
        out[1] = b'0';
        put_hex(&mut out[3..35], &self.trace_id);
        put_hex(&mut out[36..52], &self.span_id);
        put_hex(&mut out[53..55], &[self.flags]);
        out
    }

    /// The `traceparent` form.
    pub fn traceparent(&self) -> String {
        String::from_utf8_lossy(&self.write()).into_owned()
    }

    /// The `traceparent` form as a header value.
    ///
    /// Trace header values are marked sensitive: each span's value is new, so HPACK (HTTP/2)
    /// sends them as never-indexed literals instead of adding each to the dynamic table and
    /// evicting reusable entries. HTTP/1.1 ignores the mark.
    pub fn header_value(&self) -> HeaderValue {
        let mut v =
            HeaderValue::from_bytes(&self.write()).expect("hex and dashes are valid header bytes");
        v.set_sensitive(true);
        v
    }

    /// The binary form of `grpc-trace-bin` (before base64).
    pub fn binary(&self) -> [u8; 29] {
        let mut raw = [0u8; 29];
        raw[18] = 1;
        raw[2..18].copy_from_slice(&self.trace_id);
        raw[19..27].copy_from_slice(&self.span_id);
        raw[27] = 2;
        raw[28] = self.flags & 1;
        raw
    }

    /// The `grpc-trace-bin` form (base64, as it travels in HTTP/2 headers).
    /// Marked sensitive, like [`Self::header_value`].
    pub fn binary_header_value(&self) -> HeaderValue {
        let mut v =
            HeaderValue::from_bytes(&self.binary_text()).expect("base64 is a valid header value");
        v.set_sensitive(true);
        v
    }

    /// The `grpc-trace-bin` text: [`Self::binary`] in base64 without padding, 39 characters.
    /// Encoded by hand: the length never changes, and this runs for every gRPC answer.
    pub fn binary_text(&self) -> [u8; 39] {
        const DIGITS: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let raw = self.binary();
        let mut out = [0u8; 39];
        // Nine groups of three bytes as four characters each, then two bytes as three.
        for (group, chars) in raw.chunks(3).zip(out.chunks_mut(4)) {
            let n = group
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
            for (i, c) in chars.iter_mut().enumerate() {
                *c = DIGITS[(n >> (18 - 6 * i)) as usize & 63];
            }
        }
        out
    }

    /// Writes this context into `headers`: `traceparent`, and `grpc-trace-bin` when the
    /// headers already carried one (a gRPC hop).
    pub fn inject(&self, headers: &mut HeaderMap) {
        headers.insert(names::TRACEPARENT.clone(), self.header_value());
        if headers.contains_key(&names::GRPC_TRACE_BIN) {
            headers.insert(names::GRPC_TRACE_BIN.clone(), self.binary_header_value());
        }
    }
}

/// Checks a `baggage` header (W3C Baggage): comma-separated `key=value[;properties]` members
/// with token keys and percent-encoded values, at most 8192 bytes and 180 members.
pub fn valid_baggage(s: &str) -> bool {
    if s.len() > 8192 {
        return false;
    }
    let mut members = 0;
    for member in s.split(',') {
        members += 1;
        if members > 180 {
            return false;
        }
        let mut parts = member.split(';');
        let Some((k, v)) = parts.next().and_then(|kv| kv.split_once('=')) else {
            return false;
        };
        let (k, v) = (k.trim(), v.trim());
        if k.is_empty() || !k.bytes().all(is_token) || !v.bytes().all(is_baggage_octet) {
            return false;
        }
        for prop in parts {
            let key = prop.split_once('=').map_or(prop, |(k, _)| k).trim();
            if key.is_empty() || !key.bytes().all(is_token) {
                return false;
            }
        }
    }
    true
}

fn is_token(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

fn is_baggage_octet(c: u8) -> bool {
    matches!(c, 0x21 | 0x23..=0x2b | 0x2d..=0x3a | 0x3c..=0x5b | 0x5d..=0x7e)
}

/// The kind of a span (OTLP numbering).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanKind {
    /// Handling a request from another sidecar.
    Server = 2,
    /// Handling an API call of the app (daprd marks these as client spans).
    Client = 3,
    /// Publishing a message.
    Producer = 4,
    /// Delivering a message to the app.
    Consumer = 5,
}

/// A finished, sampled span on its way to the exporters.
#[derive(Clone, Debug)]
pub struct SpanData {
    /// Its context.
    pub context: SpanContext,
    /// The parent span id, when it has a parent.
    pub parent: Option<[u8; 8]>,
    /// `tracestate` as received.
    pub tracestate: Option<String>,
    /// The span name.
    pub name: Cow<'static, str>,
    /// The kind.
    pub kind: SpanKind,
    /// Start, nanoseconds since the Unix epoch.
    pub start: u64,
    /// End, nanoseconds since the Unix epoch.
    pub end: u64,
    /// Attributes.
    pub attributes: Vec<(&'static str, String)>,
    /// The error description when the operation failed.
    pub error: Option<String>,
}

/// An open span. Unsampled spans (or sampled ones with no exporter) only carry a context.
#[derive(Debug)]
pub struct Span {
    context: SpanContext,
    record: Option<(Box<SpanData>, mpsc::Sender<SpanData>, Arc<AtomicU64>)>,
}

impl Span {
    /// The span's context (what children and downstream hops see as their parent).
    pub fn context(&self) -> &SpanContext {
        &self.context
    }

    /// Whether the span is recorded for export (attributes are worth computing).
    pub fn recording(&self) -> bool {
        self.record.is_some()
    }

    /// Renames the span.
    pub fn set_name(&mut self, name: impl Into<Cow<'static, str>>) {
        if let Some((data, ..)) = &mut self.record {
            data.name = name.into();
        }
    }

    /// Adds an attribute (ignored unless recording).
    pub fn set_attribute(&mut self, key: &'static str, value: impl Into<String>) {
        if let Some((data, ..)) = &mut self.record {
            data.attributes.push((key, value.into()));
        }
    }

    /// Marks the span as failed.
    pub fn set_error(&mut self, description: impl Into<String>) {
        if let Some((data, ..)) = &mut self.record {
            data.error = Some(description.into());
        }
    }

    /// Ends the span: a recorded span is handed to the exporter, or dropped if its queue is
    /// full (the exporter is behind); this never waits.
    pub fn end(self) {
        if let Some((mut data, tx, dropped)) = self.record {
            data.end = now_nanos();
            if tx.try_send(*data).is_err() {
                dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// A better name for the server span of a request, set by a handler as a response
/// extension (e.g. `CallLocal/<app-id>/<method>` for service invocation).
#[derive(Clone, Debug)]
pub struct SpanName(pub String);

/// Starts spans and decides sampling. Cheap to clone; [`Tracer::off`] is a no-op tracer.
#[derive(Clone, Debug, Default)]
pub struct Tracer {
    inner: Option<Arc<Inner>>,
}

#[derive(Debug)]
struct Inner {
    /// Trace ids whose upper 63 bits of their last 8 bytes fall below this are sampled.
    threshold: u64,
    exporter: Option<mpsc::Sender<SpanData>>,
    /// Flush requests to the export task ([`Tracer::start`] only).
    flush: Option<mpsc::Sender<export::FlushRequest>>,
    dropped: Arc<AtomicU64>,
}

impl Tracer {
    /// Tracing off: no spans, no `traceparent` created.
    pub fn off() -> Self {
        Self { inner: None }
    }

    /// A tracer sampling new traces at `rate` (0..=1), sending recorded spans to `exporter`.
    pub fn new(rate: f64, exporter: Option<mpsc::Sender<SpanData>>) -> Self {
        if rate <= 0.0 {
            return Self::off();
        }
        let threshold = if rate >= 1.0 {
            u64::MAX
        } else {
            (rate * (1u64 << 63) as f64) as u64
        };
        Self {
            inner: Some(Arc::new(Inner {
                threshold,
                exporter,
                flush: None,
                dropped: Arc::new(AtomicU64::new(0)),
            })),
        }
    }

    /// Builds the tracer of a sidecar from its settings, starting the export task when an
    /// exporter is configured (must be called inside a tokio runtime then).
    pub fn start(settings: Settings) -> Self {
        if !settings.enabled {
            return Self::off();
        }
        let (exporter, flush) = if settings.sinks.is_empty() {
            (None, None)
        } else {
            let (spans, flush) = export::spawn(settings.clone());
            (Some(spans), Some(flush))
        };
        let mut tracer = Self::new(settings.rate, exporter);
        if let Some(inner) = tracer.inner.as_mut().and_then(Arc::get_mut) {
            inner.flush = flush;
        }
        tracer
    }

    /// Sends every span ended so far to the exporters and waits until that is done, at most
    /// `within`. Returns whether it finished in time (true as well when nothing is exported).
    /// Called at shutdown: spans still waiting for their batch would otherwise be lost.
    pub async fn flush(&self, within: Duration) -> bool {
        let Some(flush) = self.inner.as_ref().and_then(|i| i.flush.clone()) else {
            return true;
        };
        let (done, answered) = tokio::sync::oneshot::channel();
        tokio::time::timeout(within, async move {
            flush.send(done).await.is_ok() && answered.await.is_ok()
        })
        .await
        .unwrap_or(false)
    }

    /// Whether tracing is on.
    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Whether a span whose context is in `headers` (as the API front ends put it there) is
    /// recorded: worth naming and describing.
    pub fn records(&self, headers: &HeaderMap) -> bool {
        self.inner.as_ref().is_some_and(|i| i.exporter.is_some())
            && SpanContext::from_headers(headers).is_some_and(|c| c.sampled())
    }

    /// Spans dropped because the exporter was behind.
    pub fn dropped(&self) -> u64 {
        self.inner
            .as_ref()
            .map_or(0, |i| i.dropped.load(Ordering::Relaxed))
    }

    /// Starts a span under `parent` (a new trace when `None`). `None` when tracing is off.
    /// `name` is only called when the span is recorded.
    pub fn start_span(
        &self,
        parent: Option<&SpanContext>,
        tracestate: Option<&str>,
        kind: SpanKind,
        name: impl FnOnce() -> Cow<'static, str>,
    ) -> Option<Span> {
        let inner = self.inner.as_ref()?;
        let (trace_id, sampled) = match parent {
            Some(p) => (p.trace_id, p.sampled()),
            None => {
                let id = new_trace_id();
                let low = u64::from_be_bytes(id[8..].try_into().unwrap_or_default()) >> 1;
                (id, inner.threshold == u64::MAX || low < inner.threshold)
            }
        };
        let context = SpanContext {
            trace_id,
            span_id: new_span_id(),
            flags: u8::from(sampled),
        };
        let record = match (&inner.exporter, sampled) {
            (Some(tx), true) => Some((
                Box::new(SpanData {
                    context,
                    parent: parent.map(|p| p.span_id),
                    tracestate: tracestate
                        .filter(|s| !s.is_empty() && s.len() <= MAX_TRACESTATE_LEN)
                        .map(str::to_owned),
                    name: name(),
                    kind,
                    start: now_nanos(),
                    end: 0,
                    attributes: Vec::new(),
                    error: None,
                }),
                tx.clone(),
                inner.dropped.clone(),
            )),
            _ => None,
        };
        Some(Span { context, record })
    }

    /// Starts a span whose parent comes from `headers` (`traceparent` or `grpc-trace-bin`)
    /// and writes the new span's context back into them, so that everything downstream
    /// propagates it. `None` when tracing is off (the headers are left alone).
    pub fn start_from_headers(
        &self,
        headers: &mut HeaderMap,
        kind: SpanKind,
        name: impl FnOnce() -> Cow<'static, str>,
    ) -> Option<Span> {
        let span = self.start_child_of_headers(headers, kind, name)?;
        span.context.inject(headers);
        Some(span)
    }

    /// Starts a span whose parent comes from `headers`, leaving them as they are: for work
    /// that hands no trace context on. `None` when tracing is off.
    pub fn start_child_of_headers(
        &self,
        headers: &HeaderMap,
        kind: SpanKind,
        name: impl FnOnce() -> Cow<'static, str>,
    ) -> Option<Span> {
        self.inner.as_ref()?;
        let parent = SpanContext::from_headers(headers);
        let tracestate = headers
            .get(&names::TRACESTATE)
            .and_then(|v| v.to_str().ok());
        self.start_span(parent.as_ref(), tracestate, kind, name)
    }
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

thread_local! {
    static RNG: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let bytes = uuid::Uuid::new_v4().into_bytes();
    u64::from_le_bytes(bytes[..8].try_into().unwrap_or_default()) | 1
}

/// SplitMix64 over a per-thread seed: ids must be unique and well spread, not secret, and a
/// system call per id would cost more than the rest of the span.
fn next_u64() -> u64 {
    RNG.with(|s| {
        let x = s.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        s.set(x);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

fn new_trace_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&next_u64().to_be_bytes());
    id[8..].copy_from_slice(&next_u64().to_be_bytes());
    if id == [0; 16] {
        id[15] = 1;
    }
    id
}

fn new_span_id() -> [u8; 8] {
    let id = next_u64();
    (if id == 0 { 1 } else { id }).to_be_bytes()
}

/// A fresh sampled `traceparent` for a new trace (used where a context is needed while
/// tracing is off, e.g. a CloudEvent's `traceparent`).
pub fn new_traceparent() -> String {
    SpanContext {
        trace_id: new_trace_id(),
        span_id: new_span_id(),
        flags: 1,
    }
    .traceparent()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn traceparent_round_trips() {
        let sc = SpanContext::parse(TP).unwrap();
        assert!(sc.sampled());
        assert_eq!(sc.traceparent(), TP);
        assert_eq!(hex(&sc.trace_id), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(hex(&sc.span_id), "b7ad6b7169203331");
        let bin = sc.binary_header_value();
        assert_eq!(SpanContext::from_binary(bin.as_bytes()), Some(sc));
        // Padded base64 is accepted too.
        let padded = format!("{}=", bin.to_str().unwrap());
        assert_eq!(SpanContext::from_binary(padded.as_bytes()), Some(sc));
    }

    #[test]
    fn binary_text_is_the_unpadded_base64_of_the_binary_form() {
        // Every byte value in every position, through contexts whose bytes step differently.
        for step in [1u8, 7, 45, 101, 255] {
            for start in [0u8, 1, 63, 128, 200] {
                let mut next = start;
                let mut byte = || {
                    next = next.wrapping_add(step);
                    next
                };
                let sc = SpanContext {
                    trace_id: std::array::from_fn(|_| byte()),
                    span_id: std::array::from_fn(|_| byte()),
                    flags: byte(),
                };
                let text = sc.binary_text();
                assert_eq!(text[..], BIN_B64.encode(sc.binary()).into_bytes()[..]);
                assert_eq!(
                    SpanContext::from_binary(&text).map(|c| c.trace_id),
                    Some(sc.trace_id)
                );
            }
        }
    }

    #[test]
    fn invalid_traceparents_are_ignored() {
        for bad in [
            "",
            "garbage",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "00_0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "0x-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            // The bytes either side of each digit range, and past ASCII.
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333g-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0:",
            "00-0af7651916cd43dd8448eb211c80319/-b7ad6b7169203331-01",
            "00-`af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c8031é-b7ad6b7169203331-01",
        ] {
            assert_eq!(SpanContext::parse(bad), None, "{bad}");
        }
        // A later version may add fields.
        assert!(
            SpanContext::parse("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00-x")
                .is_some()
        );
        assert!(SpanContext::from_binary(b"not base64!").is_none());
        assert!(SpanContext::from_binary(b"AAAA").is_none());
    }

    #[test]
    fn baggage_is_checked() {
        assert!(valid_baggage("userId=alice"));
        assert!(valid_baggage(
            "userId=alice, serverNode=DF%2028;prop, isProd=false"
        ));
        assert!(valid_baggage("k=v;p=1;flag"));
        assert!(!valid_baggage("no-equals"));
        assert!(!valid_baggage("=v"));
        assert!(!valid_baggage("k=v w"));
        assert!(!valid_baggage("k=v,"));
        assert!(!valid_baggage("k=\"v\""));
    }

    #[test]
    fn sampling_follows_parent_then_rate() {
        let (tx, _rx) = mpsc::channel(8);
        let all = Tracer::new(1.0, Some(tx.clone()));
        let none = Tracer::new(1e-12, Some(tx));
        let new = all
            .start_span(None, None, SpanKind::Client, || "a".into())
            .unwrap();
        assert!(new.context().sampled() && new.recording());
        let new = none
            .start_span(None, None, SpanKind::Client, || "a".into())
            .unwrap();
        assert!(!new.context().sampled() && !new.recording());
        // A sampled parent wins over the rate, and the trace id carries over.
        let parent = SpanContext::parse(TP).unwrap();
        let child = none
            .start_span(Some(&parent), None, SpanKind::Server, || "b".into())
            .unwrap();
        assert!(child.context().sampled());
        assert_eq!(child.context().trace_id, parent.trace_id);
        assert_ne!(child.context().span_id, parent.span_id);
        assert!(
            Tracer::off()
                .start_span(None, None, SpanKind::Client, || "c".into())
                .is_none()
        );
        assert!(!Tracer::new(0.0, None).enabled());
    }

    #[test]
    fn headers_carry_the_new_span() {
        let tracer = Tracer::new(1.0, None);
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, HeaderValue::from_static(TP));
        let span = tracer
            .start_from_headers(&mut h, SpanKind::Client, || "x".into())
            .unwrap();
        let now = SpanContext::from_headers(&h).unwrap();
        assert_eq!(&now, span.context());
        assert_eq!(hex(&now.trace_id), "0af7651916cd43dd8448eb211c80319c");
        // grpc-trace-bin alone is read, and rewritten.
        let mut g = HeaderMap::new();
        let parent = SpanContext::parse(TP).unwrap();
        g.insert(GRPC_TRACE_BIN, parent.binary_header_value());
        let span = tracer
            .start_from_headers(&mut g, SpanKind::Client, || "y".into())
            .unwrap();
        assert_eq!(span.context().trace_id, parent.trace_id);
        let bin = SpanContext::from_binary(g[GRPC_TRACE_BIN].as_bytes()).unwrap();
        assert_eq!(&bin, span.context());
        // Invalid ones start a new trace instead of failing.
        let mut bad = HeaderMap::new();
        bad.insert(TRACEPARENT, HeaderValue::from_static("00-zz-1-01"));
        let span = tracer
            .start_from_headers(&mut bad, SpanKind::Client, || "z".into())
            .unwrap();
        assert_ne!(span.context().trace_id, parent.trace_id);
        // Only what was there is rewritten.
        assert!(!h.contains_key(GRPC_TRACE_BIN));
        // The first `traceparent` counts, before any `grpc-trace-bin`; both are rewritten.
        let other =
            SpanContext::parse("00-11111111111111111111111111111111-2222222222222222-01").unwrap();
        let mut both = HeaderMap::new();
        both.append(TRACEPARENT, HeaderValue::from_static(TP));
        both.append(TRACEPARENT, other.header_value());
        both.insert(GRPC_TRACE_BIN, other.binary_header_value());
        both.insert(TRACESTATE, HeaderValue::from_static("k=v"));
        let span = tracer
            .start_from_headers(&mut both, SpanKind::Client, || "w".into())
            .unwrap();
        assert_eq!(span.context().trace_id, parent.trace_id);
        assert_eq!(both.get_all(TRACEPARENT).iter().count(), 1);
        assert_eq!(
            SpanContext::from_headers(&both).as_ref(),
            Some(span.context())
        );
        let bin = SpanContext::from_binary(both[GRPC_TRACE_BIN].as_bytes()).unwrap();
        assert_eq!(&bin, span.context());
    }
}
