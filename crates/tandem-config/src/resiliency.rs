//! `Resiliency` (`dapr.io/v1alpha1`): named timeout, retry and circuit-breaker policies and the
//! targets they apply to (§6.4). Defaults follow daprd (`dapr/kit/retry`, gobreaker).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::RangeInclusive;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use serde_norway::Value;

use crate::Source;
use crate::de::{self, from_value};
use crate::error::FieldError;

/// Retry policies daprd defines itself; targets may name them without defining them.
pub const BUILT_IN_RETRY_POLICIES: [&str; 5] = [
    "DaprBuiltInServiceRetries",
    "DaprBuiltInActorRetries",
    "DaprBuiltInActorReminderRetries",
    "DaprBuiltInInitializationRetries",
    "DaprBuiltInActorNotFoundRetries",
];

/// A Resiliency manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resiliency {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`, when set.
    pub namespace: Option<String>,
    /// `spec.policies`.
    pub policies: Policies,
    /// `spec.targets`.
    pub targets: Targets,
    /// `scopes`: app-ids it applies to (empty = all).
    pub scopes: Vec<String>,
    /// Where the manifest was read.
    pub source: Source,
}

/// `spec.policies`: named policies, referenced by name from the targets.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Policies {
    /// `timeouts`: name → duration (Go syntax, or a bare integer of milliseconds).
    #[serde(default, deserialize_with = "timeouts")]
    pub timeouts: BTreeMap<String, Duration>,
    /// `retries`: name → retry policy.
    #[serde(default)]
    pub retries: BTreeMap<String, RetryPolicy>,
    /// `circuitBreakers`: name → circuit breaker.
    #[serde(default)]
    pub circuit_breakers: BTreeMap<String, CircuitBreakerPolicy>,
}

/// The back-off shape of a retry policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackoffPolicy {
    /// The same `duration` between attempts (the default).
    #[default]
    Constant,
    /// Exponential back-off (initial 500 ms, ×1.5, ±50 %, capped at `max_interval`).
    Exponential,
}

impl<'de> Deserialize<'de> for BackoffPolicy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        match text.trim().to_ascii_lowercase().as_str() {
            "" | "constant" => Ok(Self::Constant),
            "exponential" => Ok(Self::Exponential),
            _ => Err(serde::de::Error::custom(format!(
                "unknown back-off policy '{text}': expected constant or exponential"
            ))),
        }
    }
}

/// A named retry policy.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "RawRetry")]
pub struct RetryPolicy {
    /// `policy`: constant (default) or exponential.
    pub policy: BackoffPolicy,
    /// `duration`: the constant interval (default 5 s).
    pub duration: Duration,
    /// `maxInterval`: the cap of exponential back-off (default 60 s).
    pub max_interval: Duration,
    /// `maxRetries`: -1 (default) retries forever, 0 never.
    pub max_retries: i64,
    /// `matching`: which status codes are retried.
    pub matching: RetryMatching,
}

impl RetryPolicy {
    /// The retry limit; `None` means unlimited.
    pub fn retry_limit(&self) -> Option<u64> {
        u64::try_from(self.max_retries).ok()
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RawRetry::default().into()
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawRetry {
    #[serde(default)]
    policy: BackoffPolicy,
    #[serde(default, deserialize_with = "de::opt_duration_millis")]
    duration: Option<Duration>,
    #[serde(default, deserialize_with = "de::opt_duration_millis")]
    max_interval: Option<Duration>,
    #[serde(default, deserialize_with = "de::opt_int")]
    max_retries: Option<i64>,
    #[serde(default)]
    matching: RetryMatching,
}

impl From<RawRetry> for RetryPolicy {
    fn from(raw: RawRetry) -> Self {
        Self {
            policy: raw.policy,
            duration: raw.duration.unwrap_or(Duration::from_secs(5)),
            max_interval: raw.max_interval.unwrap_or(Duration::from_secs(60)),
            max_retries: raw.max_retries.unwrap_or(-1),
            matching: raw.matching,
        }
    }
}

/// `matching`: status codes that make a failure retriable. An empty list retries every failure
/// of that protocol (Dapr's rule, per list).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct RetryMatching {
    /// `httpStatusCodes`, valid codes 100–599.
    #[serde(default, rename = "httpStatusCodes", deserialize_with = "http_codes")]
    pub http_status_codes: StatusCodes,
    /// `gRPCStatusCodes`, valid codes 0–16.
    #[serde(default, rename = "gRPCStatusCodes", deserialize_with = "grpc_codes")]
    pub grpc_status_codes: StatusCodes,
}

impl RetryMatching {
    /// Whether an HTTP response with `status` should be retried.
    pub fn retries_http(&self, status: u16) -> bool {
        self.http_status_codes.is_empty() || self.http_status_codes.matches(status)
    }

    /// Whether a gRPC error with `code` should be retried.
    pub fn retries_grpc(&self, code: u16) -> bool {
        self.grpc_status_codes.is_empty() || self.grpc_status_codes.matches(code)
    }
}

/// A list of status codes and ranges such as `429,500-599`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StatusCodes {
    ranges: Vec<RangeInclusive<u16>>,
}

impl StatusCodes {
    /// Valid HTTP status codes.
    pub const HTTP: RangeInclusive<u16> = 100..=599;
    /// Valid gRPC status codes.
    pub const GRPC: RangeInclusive<u16> = 0..=16;

    /// Parses a comma list of codes (`429`) and ranges (`500-504`), each within `valid`.
    /// Empty entries are ignored; an empty text is the empty list.
    pub fn parse(text: &str, valid: RangeInclusive<u16>) -> Result<Self, String> {
        let mut ranges = Vec::new();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (start, end) = match entry.split_once('-') {
                Some((start, end)) => (start.trim(), end.trim()),
                None => (entry, entry),
            };
            let code = |s: &str| -> Result<u16, String> {
                let code: u16 = s
                    .parse()
                    .map_err(|_| format!("invalid status code pattern '{entry}'"))?;
                if valid.contains(&code) {
                    Ok(code)
                } else {
                    Err(format!(
                        "status code {code} in '{entry}' is outside {}-{}",
                        valid.start(),
                        valid.end()
                    ))
                }
            };
            let (start, end) = (code(start)?, code(end)?);
            if end < start {
                return Err(format!(
                    "invalid status code range '{entry}': start is greater than end"
                ));
            }
            ranges.push(start..=end);
        }
        Ok(Self { ranges })
    }

    /// Whether `code` is listed.
    pub fn matches(&self, code: u16) -> bool {
        self.ranges.iter().any(|r| r.contains(&code))
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The listed ranges (a single code is a one-element range).
    pub fn ranges(&self) -> &[RangeInclusive<u16>] {
        &self.ranges
    }
}

impl fmt::Display for StatusCodes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if r.start() == r.end() {
                write!(f, "{}", r.start())?;
            } else {
                write!(f, "{}-{}", r.start(), r.end())?;
            }
        }
        Ok(())
    }
}

fn codes<'de, D: Deserializer<'de>>(
    d: D,
    valid: RangeInclusive<u16>,
) -> Result<StatusCodes, D::Error> {
    let text = de::scalar_string(d)?;
    StatusCodes::parse(&text, valid).map_err(serde::de::Error::custom)
}

fn http_codes<'de, D: Deserializer<'de>>(d: D) -> Result<StatusCodes, D::Error> {
    codes(d, StatusCodes::HTTP)
}

fn grpc_codes<'de, D: Deserializer<'de>>(d: D) -> Result<StatusCodes, D::Error> {
    codes(d, StatusCodes::GRPC)
}

fn timeouts<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, Duration>, D::Error> {
    #[derive(Deserialize)]
    struct Timeout(#[serde(deserialize_with = "de::opt_duration_millis")] Option<Duration>);

    let raw = BTreeMap::<String, Timeout>::deserialize(d)?;
    Ok(raw
        .into_iter()
        .map(|(name, t)| (name, t.0.unwrap_or_default()))
        .collect())
}

/// A named circuit breaker.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "RawBreaker")]
pub struct CircuitBreakerPolicy {
    /// `maxRequests` allowed while half-open (default 1).
    pub max_requests: u32,
    /// `interval`: the closed-state counter reset period; zero never resets (default).
    pub interval: Duration,
    /// `timeout`: open → half-open after this (default 60 s).
    pub timeout: Duration,
    /// `trip`: the CEL expression that opens the breaker (default `consecutiveFailures > 5`).
    pub trip: String,
}

impl Default for CircuitBreakerPolicy {
    fn default() -> Self {
        RawBreaker::default().into()
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawBreaker {
    #[serde(default, deserialize_with = "de::opt_int")]
    max_requests: Option<u32>,
    #[serde(default, deserialize_with = "de::opt_duration_millis")]
    interval: Option<Duration>,
    #[serde(default, deserialize_with = "de::opt_duration_millis")]
    timeout: Option<Duration>,
    #[serde(default)]
    trip: Option<String>,
}

impl From<RawBreaker> for CircuitBreakerPolicy {
    fn from(raw: RawBreaker) -> Self {
        Self {
            max_requests: raw.max_requests.filter(|n| *n > 0).unwrap_or(1),
            interval: raw.interval.unwrap_or_default(),
            timeout: raw
                .timeout
                .filter(|t| !t.is_zero())
                .unwrap_or(Duration::from_secs(60)),
            trip: raw
                .trip
                .filter(|t| !t.trim().is_empty())
                .unwrap_or_else(|| "consecutiveFailures > 5".to_owned()),
        }
    }
}

/// `spec.targets`: which policies apply where.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct Targets {
    /// `apps`: app-id → policies for service invocation to it.
    #[serde(default)]
    pub apps: BTreeMap<String, AppTarget>,
    /// `actors`: actor type → policies.
    #[serde(default)]
    pub actors: BTreeMap<String, ActorTarget>,
    /// `components`: component name → outbound / inbound policies.
    #[serde(default)]
    pub components: BTreeMap<String, ComponentTarget>,
}

/// Policy names for one direction of a target; `None` = no policy of that kind.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyNames {
    /// `timeout`.
    #[serde(default, deserialize_with = "de::opt_scalar_string")]
    pub timeout: Option<String>,
    /// `retry`.
    #[serde(default, deserialize_with = "de::opt_scalar_string")]
    pub retry: Option<String>,
    /// `circuitBreaker`.
    #[serde(default, deserialize_with = "de::opt_scalar_string")]
    pub circuit_breaker: Option<String>,
}

/// `targets.apps.<app-id>`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppTarget {
    /// `timeout` policy name.
    #[serde(default, deserialize_with = "de::opt_scalar_string")]
    pub timeout: Option<String>,
    /// `retry` policy name.
    #[serde(default, deserialize_with = "de::opt_scalar_string")]
    pub retry: Option<String>,
    /// `circuitBreaker` policy name.
    #[serde(default, deserialize_with = "de::opt_scalar_string")]
    pub circuit_breaker: Option<String>,
    /// `circuitBreakerCacheSize`: breakers kept per endpoint (default 100).
    #[serde(default = "default_app_cache", deserialize_with = "cache_size_app")]
    pub circuit_breaker_cache_size: usize,
}

/// What one actor circuit breaker covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActorCircuitBreakerScope {
    /// One breaker per actor type.
    Type,
    /// One breaker per actor id.
    Id,
    /// Both.
    Both,
}

/// `targets.actors.<actor type>`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActorTarget {
    /// `timeout` policy name.
    #[serde(default, deserialize_with = "de::opt_scalar_string")]
    pub timeout: Option<String>,
    /// `retry` policy name.
    #[serde(default, deserialize_with = "de::opt_scalar_string")]
    pub retry: Option<String>,
    /// `circuitBreaker` policy name.
    #[serde(default, deserialize_with = "de::opt_scalar_string")]
    pub circuit_breaker: Option<String>,
    /// `circuitBreakerScope`: required when `circuitBreaker` is set.
    #[serde(default)]
    pub circuit_breaker_scope: Option<ActorCircuitBreakerScope>,
    /// `circuitBreakerCacheSize` (default 5000).
    #[serde(default = "default_actor_cache", deserialize_with = "cache_size_actor")]
    pub circuit_breaker_cache_size: usize,
}

/// `targets.components.<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct ComponentTarget {
    /// `outbound`: calls from the runtime to the component.
    #[serde(default)]
    pub outbound: PolicyNames,
    /// `inbound`: deliveries from the component to the app.
    #[serde(default)]
    pub inbound: PolicyNames,
}

fn default_app_cache() -> usize {
    100
}

fn default_actor_cache() -> usize {
    5000
}

fn cache_size<'de, D: Deserializer<'de>>(d: D, default: usize) -> Result<usize, D::Error> {
    Ok(de::opt_int::<D, usize>(d)?
        .filter(|n| *n > 0)
        .unwrap_or(default))
}

fn cache_size_app<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    cache_size(d, default_app_cache())
}

fn cache_size_actor<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    cache_size(d, default_actor_cache())
}

#[derive(Deserialize)]
struct RawResiliency {
    #[serde(default)]
    spec: RawSpec,
    #[serde(default)]
    scopes: Vec<String>,
}

#[derive(Deserialize, Default)]
struct RawSpec {
    #[serde(default)]
    policies: Policies,
    #[serde(default)]
    targets: Targets,
}

/// Decodes a Resiliency document. Policy references are checked later, across all loaded
/// resiliencies, by [`check_references`]: daprd merges them into one set.
pub(crate) fn parse(
    value: Value,
    name: String,
    namespace: Option<String>,
    source: Source,
) -> Result<Resiliency, FieldError> {
    let raw: RawResiliency = from_value(value)?;
    for (actor, target) in &raw.spec.targets.actors {
        if target.circuit_breaker.is_some() && target.circuit_breaker_scope.is_none() {
            return Err(FieldError::new(
                format!("spec.targets.actors.{actor}.circuitBreakerScope"),
                "required when circuitBreaker is set (type, id or both)",
            ));
        }
    }
    Ok(Resiliency {
        name,
        namespace,
        policies: raw.spec.policies,
        targets: raw.spec.targets,
        scopes: raw.scopes,
        source,
    })
}

/// The policy names defined by a set of resiliencies (plus daprd's built-in retries).
#[derive(Default)]
pub(crate) struct KnownPolicies<'a> {
    timeouts: BTreeSet<&'a str>,
    retries: BTreeSet<&'a str>,
    circuit_breakers: BTreeSet<&'a str>,
}

impl<'a> KnownPolicies<'a> {
    /// Collects the names defined in `all`.
    pub(crate) fn of(all: &'a [Resiliency]) -> Self {
        let mut known = Self::default();
        known.retries.extend(BUILT_IN_RETRY_POLICIES);
        for r in all {
            known
                .timeouts
                .extend(r.policies.timeouts.keys().map(String::as_str));
            known
                .retries
                .extend(r.policies.retries.keys().map(String::as_str));
            known
                .circuit_breakers
                .extend(r.policies.circuit_breakers.keys().map(String::as_str));
        }
        known
    }
}

/// Checks that every target of `r` names policies that exist in `known`.
pub(crate) fn check_references(
    r: &Resiliency,
    known: &KnownPolicies<'_>,
) -> Result<(), FieldError> {
    let check = |prefix: String,
                 timeout: &Option<String>,
                 retry: &Option<String>,
                 breaker: &Option<String>|
     -> Result<(), FieldError> {
        let lists: [(&str, &str, &Option<String>, &BTreeSet<&str>); 3] = [
            ("timeout", "timeout", timeout, &known.timeouts),
            ("retry", "retry", retry, &known.retries),
            (
                "circuitBreaker",
                "circuit breaker",
                breaker,
                &known.circuit_breakers,
            ),
        ];
        for (field, what, name, set) in lists {
            if let Some(name) = name
                && !set.contains(name.as_str())
            {
                return Err(FieldError::new(
                    format!("{prefix}.{field}"),
                    format!(
                        "unknown {what} policy \"{name}\": it is not defined under spec.policies"
                    ),
                ));
            }
        }
        Ok(())
    };
    for (app, t) in &r.targets.apps {
        check(
            format!("spec.targets.apps.{app}"),
            &t.timeout,
            &t.retry,
            &t.circuit_breaker,
        )?;
    }
    for (actor, t) in &r.targets.actors {
        check(
            format!("spec.targets.actors.{actor}"),
            &t.timeout,
            &t.retry,
            &t.circuit_breaker,
        )?;
    }
    for (component, t) in &r.targets.components {
        for (direction, names) in [("outbound", &t.outbound), ("inbound", &t.inbound)] {
            check(
                format!("spec.targets.components.{component}.{direction}"),
                &names.timeout,
                &names.retry,
                &names.circuit_breaker,
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_parse_and_match() {
        let codes = StatusCodes::parse("429, 500-504,,", StatusCodes::HTTP).unwrap();
        assert!(codes.matches(429));
        assert!(codes.matches(500));
        assert!(codes.matches(504));
        assert!(!codes.matches(505));
        assert!(!codes.matches(428));
        assert_eq!(codes.to_string(), "429,500-504");
        assert!(
            StatusCodes::parse("", StatusCodes::HTTP)
                .unwrap()
                .is_empty()
        );
        assert!(StatusCodes::parse("99", StatusCodes::HTTP).is_err());
        assert!(StatusCodes::parse("600", StatusCodes::HTTP).is_err());
        assert!(StatusCodes::parse("504-500", StatusCodes::HTTP).is_err());
        assert!(StatusCodes::parse("1-2-3", StatusCodes::GRPC).is_err());
        assert!(StatusCodes::parse("abc", StatusCodes::GRPC).is_err());
        assert!(StatusCodes::parse("17", StatusCodes::GRPC).is_err());
        let grpc = StatusCodes::parse("1-4,8-11,13,14", StatusCodes::GRPC).unwrap();
        assert!(grpc.matches(3) && grpc.matches(13) && !grpc.matches(12) && !grpc.matches(0));
    }

    #[test]
    fn empty_matching_retries_everything() {
        let m = RetryMatching {
            http_status_codes: StatusCodes::parse("503", StatusCodes::HTTP).unwrap(),
            grpc_status_codes: StatusCodes::default(),
        };
        assert!(m.retries_http(503));
        assert!(!m.retries_http(500));
        assert!(m.retries_grpc(14));
    }
}
