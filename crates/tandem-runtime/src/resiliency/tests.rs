//! The policy engine against scripted operations, under paused time.

use std::cell::RefCell;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::*;

fn retry(yaml_policy: BackoffPolicy, duration: Duration, max: Duration, limit: i64) -> Retry {
    Retry::new(&RetryPolicy {
        policy: yaml_policy,
        duration,
        max_interval: max,
        max_retries: limit,
        matching: RetryMatching::default(),
    })
}

fn breaker(trip: &str, max_requests: u32, timeout: Duration, interval: Duration) -> Breaker {
    let spec = CircuitBreakerPolicy {
        max_requests,
        interval,
        timeout,
        trip: trip.into(),
    };
    Breaker::new("test", &spec, Arc::new(TripExpr::parse(trip).unwrap()))
}

/// A scripted service: answers `script[i]` on attempt `i` (the last entry repeats) and
/// records when each attempt started.
struct Script {
    answers: Vec<Result<u32, &'static str>>,
    calls: RefCell<Vec<Instant>>,
}

impl Script {
    fn new(answers: Vec<Result<u32, &'static str>>) -> Self {
        Self {
            answers,
            calls: RefCell::new(Vec::new()),
        }
    }

    async fn call(&self) -> Result<u32, &'static str> {
        let mut calls = self.calls.borrow_mut();
        let i = calls.len().min(self.answers.len() - 1);
        calls.push(Instant::now());
        self.answers[i]
    }

    fn attempts(&self) -> usize {
        self.calls.borrow().len()
    }

    fn gaps(&self) -> Vec<Duration> {
        let calls = self.calls.borrow();
        calls.windows(2).map(|w| w[1] - w[0]).collect()
    }
}

#[tokio::test(start_paused = true)]
async fn constant_retry_until_success() {
    let policy = Policy::new(
        "t",
        None,
        Some(retry(
            BackoffPolicy::Constant,
            Duration::from_secs(2),
            Duration::from_secs(60),
            5,
        )),
        None,
    );
    let svc = Script::new(vec![Err("a"), Err("b"), Err("c"), Ok(7)]);
    let out = policy.run(|| svc.call()).await;
    assert_eq!(out, Ok(Ok(7)));
    assert_eq!(svc.attempts(), 4);
    assert_eq!(svc.gaps(), vec![Duration::from_secs(2); 3]);
}

#[tokio::test(start_paused = true)]
async fn max_retries_bounds_the_attempts() {
    let policy = Policy::new(
        "t",
        None,
        Some(retry(
            BackoffPolicy::Constant,
            Duration::from_millis(100),
            Duration::from_secs(60),
            2,
        )),
        None,
    );
    let svc = Script::new(vec![Err("a"), Err("b"), Err("last")]);
    let start = Instant::now();
    assert_eq!(policy.run(|| svc.call()).await, Ok(Err("last")));
    assert_eq!(svc.attempts(), 3);
    assert_eq!(start.elapsed(), Duration::from_millis(200));

    // maxRetries 0: a single attempt.
    let never = Policy::new(
        "t",
        None,
        Some(retry(
            BackoffPolicy::Constant,
            Duration::from_secs(1),
            Duration::from_secs(60),
            0,
        )),
        None,
    );
    assert!(!never.has_retries());
    let svc = Script::new(vec![Err("a"), Ok(1)]);
    assert_eq!(never.run(|| svc.call()).await, Ok(Err("a")));
    assert_eq!(svc.attempts(), 1);
}

#[tokio::test(start_paused = true)]
async fn forever_retries_until_success() {
    let policy = Policy::new(
        "t",
        None,
        Some(retry(
            BackoffPolicy::Constant,
            Duration::from_secs(5),
            Duration::from_secs(60),
            -1,
        )),
        None,
    );
    let mut answers = vec![Err("down"); 40];
    answers.push(Ok(1));
    let svc = Script::new(answers);
    assert_eq!(policy.run(|| svc.call()).await, Ok(Ok(1)));
    assert_eq!(svc.attempts(), 41);
}

#[tokio::test(start_paused = true)]
async fn exponential_intervals_grow_randomised_and_capped() {
    let policy = Policy::new(
        "t",
        None,
        Some(retry(
            BackoffPolicy::Exponential,
            Duration::from_secs(5),
            Duration::from_secs(2),
            6,
        )),
        None,
    );
    let svc = Script::new(vec![Err("down")]);
    assert_eq!(policy.run(|| svc.call()).await, Ok(Err("down")));
    assert_eq!(svc.attempts(), 7);
    // Intervals 0.5, 0.75, 1.125, 1.6875, then capped at 2 s; each pause within ±50 %.
    let intervals = [0.5, 0.75, 1.125, 1.6875, 2.0, 2.0];
    for (gap, interval) in svc.gaps().iter().zip(intervals) {
        let gap = gap.as_secs_f64();
        assert!(
            gap >= interval * 0.5 - 1e-3 && gap <= interval * 1.5 + 1e-3,
            "pause {gap} outside the range of interval {interval}"
        );
    }
    // The pauses are randomised, not all at the interval's centre.
    let r = Retry::new(&RetryPolicy {
        policy: BackoffPolicy::Exponential,
        ..RetryPolicy::default()
    });
    let firsts: Vec<Duration> = (0..20).map(|_| r.backoff().next_pause().unwrap()).collect();
    assert!(firsts.iter().any(|d| *d != firsts[0]));
}

#[tokio::test(start_paused = true)]
async fn matching_retries_only_listed_codes() {
    let mut spec = RetryPolicy {
        policy: BackoffPolicy::Constant,
        duration: Duration::from_secs(1),
        max_interval: Duration::from_secs(60),
        max_retries: 3,
        matching: RetryMatching::default(),
    };
    spec.matching.http_status_codes =
        tandem_config::StatusCodes::parse("429,500-503", tandem_config::StatusCodes::HTTP).unwrap();
    spec.matching.grpc_status_codes =
        tandem_config::StatusCodes::parse("14", tandem_config::StatusCodes::GRPC).unwrap();
    let policy = Policy::new("t", None, Some(Retry::new(&spec)), None);
    let classify = |r: &Result<u32, StatusCode>| match r {
        Ok(_) => Verdict::Success,
        Err(code) => Verdict::Failure(Some(*code)),
    };
    let run = |answers: Vec<Result<u32, StatusCode>>| {
        let policy = &policy;
        async move {
            let calls = RefCell::new(0usize);
            let out = policy
                .run_with(
                    None,
                    true,
                    || {
                        let mut n = calls.borrow_mut();
                        let a = answers[(*n).min(answers.len() - 1)];
                        *n += 1;
                        std::future::ready(a)
                    },
                    classify,
                )
                .await;
            (out, calls.into_inner())
        }
    };
    let (out, n) = run(vec![Err(StatusCode::Http(503)), Ok(1)]).await;
    assert_eq!((out, n), (Ok(Ok(1)), 2));
    let (out, n) = run(vec![
        Err(StatusCode::Http(429)),
        Err(StatusCode::Http(500)),
        Ok(1),
    ])
    .await;
    assert_eq!((out, n), (Ok(Ok(1)), 3));
    // Not listed: returned at once.
    let (out, n) = run(vec![Err(StatusCode::Http(504)), Ok(1)]).await;
    assert_eq!((out, n), (Ok(Err(StatusCode::Http(504))), 1));
    let (out, n) = run(vec![Err(StatusCode::Grpc(13)), Ok(1)]).await;
    assert_eq!((out, n), (Ok(Err(StatusCode::Grpc(13))), 1));
    let (out, n) = run(vec![Err(StatusCode::Grpc(14)), Ok(1)]).await;
    assert_eq!((out, n), (Ok(Ok(1)), 2));
    // Listed but exhausted: the last answer.
    let (out, n) = run(vec![Err(StatusCode::Http(500))]).await;
    assert_eq!((out, n), (Ok(Err(StatusCode::Http(500))), 4));

    // A final verdict is neither retried nor a failure.
    let calls = RefCell::new(0);
    let out = policy
        .run_with(
            None,
            true,
            || {
                *calls.borrow_mut() += 1;
                std::future::ready(Err::<u32, _>("etag mismatch"))
            },
            |_| Verdict::Final,
        )
        .await;
    assert_eq!((out, calls.into_inner()), (Ok(Err("etag mismatch")), 1));
    // Nothing is retried when the request cannot be replayed.
    let calls = RefCell::new(0);
    let out = policy
        .run_with(
            None,
            false,
            || {
                *calls.borrow_mut() += 1;
                std::future::ready(Err::<u32, _>(StatusCode::Http(500)))
            },
            classify,
        )
        .await;
    assert_eq!(
        (out, calls.into_inner()),
        (Ok(Err(StatusCode::Http(500))), 1)
    );
}

#[tokio::test(start_paused = true)]
async fn timeout_ends_each_attempt() {
    let slow = || async {
        tokio::time::sleep(Duration::from_secs(10)).await;
        Ok::<u32, &str>(1)
    };
    let policy = Policy::new("t", Some(Duration::from_secs(1)), None, None);
    let start = Instant::now();
    let out = policy.run(slow).await;
    assert_eq!(out, Err(PolicyError::Timeout(Duration::from_secs(1))));
    assert_eq!(out.unwrap_err().to_string(), "context deadline exceeded");
    assert_eq!(start.elapsed(), Duration::from_secs(1));

    // Under a retry policy a timed-out attempt is retried; a fast one then succeeds.
    let policy = Policy::new(
        "t",
        Some(Duration::from_secs(1)),
        Some(retry(
            BackoffPolicy::Constant,
            Duration::from_millis(500),
            Duration::from_secs(60),
            3,
        )),
        None,
    );
    let attempt = RefCell::new(0u32);
    let start = Instant::now();
    let out = policy
        .run(|| {
            *attempt.borrow_mut() += 1;
            let n = *attempt.borrow();
            async move {
                if n < 3 {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                }
                Ok::<u32, &str>(n)
            }
        })
        .await;
    assert_eq!(out, Ok(Ok(3)));
    // Two timed-out attempts (1 s each) and two pauses (0.5 s each).
    assert_eq!(start.elapsed(), Duration::from_secs(3));
}

#[tokio::test(start_paused = true)]
async fn breaker_opens_half_opens_and_closes() {
    let policy = Policy::new(
        "t",
        None,
        None,
        Some(breaker(
            "consecutiveFailures >= 2",
            1,
            Duration::from_secs(30),
            Duration::ZERO,
        )),
    );
    let b = policy.breaker().unwrap();
    let svc = Script::new(vec![Err("a"), Err("b"), Ok(1), Err("c"), Ok(2), Ok(3)]);
    assert_eq!(policy.run(|| svc.call()).await, Ok(Err("a")));
    assert_eq!(b.state(), BreakerState::Closed);
    assert_eq!(policy.run(|| svc.call()).await, Ok(Err("b")));
    assert_eq!(b.state(), BreakerState::Open);
    // Open: fails fast without calling the service.
    let out = policy.run(|| svc.call()).await;
    assert_eq!(out, Err(PolicyError::CircuitOpen));
    assert_eq!(out.unwrap_err().to_string(), "circuit breaker is open");
    assert_eq!(svc.attempts(), 2);
    tokio::time::advance(Duration::from_secs(29)).await;
    assert_eq!(b.state(), BreakerState::Open);
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(b.state(), BreakerState::HalfOpen);
    // Half-open: a trial call that works closes it.
    assert_eq!(policy.run(|| svc.call()).await, Ok(Ok(1)));
    assert_eq!(b.state(), BreakerState::Closed);
    assert_eq!(b.counts(), Counts::default());
    // One failure does not trip `>= 2`.
    assert_eq!(policy.run(|| svc.call()).await, Ok(Err("c")));
    assert_eq!(b.state(), BreakerState::Closed);
    assert_eq!(policy.run(|| svc.call()).await, Ok(Ok(2)));
    assert_eq!(b.counts().consecutive_failures, 0);
}

#[tokio::test(start_paused = true)]
async fn half_open_failure_reopens_and_limits_trials() {
    let b = breaker(
        "consecutiveFailures > 0",
        2,
        Duration::from_secs(10),
        Duration::ZERO,
    );
    let t = b.admit().unwrap();
    b.record(t, false);
    assert_eq!(b.state(), BreakerState::Open);
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(b.state(), BreakerState::HalfOpen);
    // maxRequests 2: two trials pass, the third is refused.
    let t1 = b.admit().unwrap();
    let t2 = b.admit().unwrap();
    assert_eq!(b.admit().unwrap_err(), PolicyError::TooManyRequests);
    b.record(t1, true);
    assert_eq!(b.state(), BreakerState::HalfOpen);
    b.record(t2, false);
    assert_eq!(b.state(), BreakerState::Open);
    tokio::time::advance(Duration::from_secs(10)).await;
    let (t1, t2) = (b.admit().unwrap(), b.admit().unwrap());
    b.record(t1, true);
    b.record(t2, true);
    assert_eq!(b.state(), BreakerState::Closed);
    // A result of an older period does not count.
    let stale = b.admit().unwrap();
    let t = b.admit().unwrap();
    b.record(t, false);
    assert_eq!(b.state(), BreakerState::Open);
    tokio::time::advance(Duration::from_secs(10)).await;
    b.record(stale, false);
    assert_eq!(b.state(), BreakerState::HalfOpen);
}

#[tokio::test(start_paused = true)]
async fn interval_resets_closed_counts() {
    let b = breaker(
        "totalFailures >= 3",
        1,
        Duration::from_secs(60),
        Duration::from_secs(10),
    );
    for _ in 0..2 {
        let t = b.admit().unwrap();
        b.record(t, false);
    }
    assert_eq!(b.counts().total_failures, 2);
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(b.counts(), Counts::default());
    let t = b.admit().unwrap();
    b.record(t, false);
    assert_eq!(b.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_stops_the_retries() {
    let policy = Policy::new(
        "t",
        None,
        Some(retry(
            BackoffPolicy::Constant,
            Duration::from_secs(1),
            Duration::from_secs(60),
            10,
        )),
        Some(breaker(
            "consecutiveFailures >= 3",
            1,
            Duration::from_secs(60),
            Duration::ZERO,
        )),
    );
    let svc = Script::new(vec![Err("down")]);
    assert_eq!(
        policy.run(|| svc.call()).await,
        Err(PolicyError::CircuitOpen)
    );
    assert_eq!(svc.attempts(), 3);
}

fn load(yaml: &str, app: &str) -> Vec<tandem_config::Resiliency> {
    let ctx = tandem_config::LoadContext::new(app);
    tandem_config::parse_resources(yaml, Path::new("/tmp/res.yaml"), &ctx)
        .unwrap()
        .resiliencies
}

const TARGETS: &str = "\
apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata:
  name: res
spec:
  policies:
    timeouts:
      short: 1s
      DefaultTimeoutPolicy: 9s
      DefaultComponentOutboundTimeoutPolicy: 8s
    retries:
      three:
        maxRetries: 3
      DefaultStatestoreComponentOutboundRetryPolicy:
        maxRetries: 2
      DefaultAppRetryPolicy:
        maxRetries: 1
    circuitBreakers:
      cb:
        trip: consecutiveFailures > 2
  targets:
    apps:
      appB:
        timeout: short
        circuitBreaker: cb
    components:
      explicit:
        outbound:
          retry: three
";

#[test]
fn targets_and_defaults_resolve_once() {
    let comps = [
        ("store", ComponentKind::Statestore),
        ("explicit", ComponentKind::Statestore),
        ("secrets", ComponentKind::Secretstore),
    ];
    let r = Resiliency::new(&load(TARGETS, "app1"), "app1", &comps).unwrap();
    // An explicit app target: only what it names.
    let b = r.app("appB").unwrap();
    assert_eq!(b.policy().timeout(), Some(Duration::from_secs(1)));
    assert!(!b.policy().has_retries());
    let cb = b.breaker_for("m1").unwrap();
    assert!(Arc::ptr_eq(&cb, &b.breaker_for("m1").unwrap()));
    assert!(!Arc::ptr_eq(&cb, &b.breaker_for("m2").unwrap()));
    // Any other app: DefaultAppRetryPolicy and the bare DefaultTimeoutPolicy.
    let c = r.app("appC").unwrap();
    assert!(c.policy().has_retries());
    assert_eq!(c.policy().timeout(), Some(Duration::from_secs(9)));
    assert!(c.breaker_for("m").is_none());
    assert!(Arc::ptr_eq(&c, &r.app("appC").unwrap()));
    // Components: the typed default before the generic ones.
    let store = r.component("store", Direction::Outbound).unwrap();
    assert!(store.has_retries());
    assert_eq!(store.timeout(), Some(Duration::from_secs(8)));
    let inbound = r.component("store", Direction::Inbound).unwrap();
    assert!(!inbound.has_retries());
    assert_eq!(inbound.timeout(), Some(Duration::from_secs(9)));
    let secrets = r.component("secrets", Direction::Outbound).unwrap();
    assert!(!secrets.has_retries());
    // An explicit component target takes no defaults, inbound included.
    let explicit = r.component("explicit", Direction::Outbound).unwrap();
    assert!(explicit.has_retries());
    assert_eq!(explicit.timeout(), None);
    assert!(r.component("explicit", Direction::Inbound).is_none());
    assert!(r.component("unknown", Direction::Outbound).is_none());
}

#[test]
fn scopes_and_empty_sets() {
    let scoped = TARGETS.replace("spec:\n", "scopes: [other]\nspec:\n");
    let resources = load(&scoped, "other");
    assert!(
        !Resiliency::new(&resources, "other", &[])
            .unwrap()
            .is_empty()
    );
    assert!(Resiliency::new(&resources, "app1", &[]).unwrap().is_empty());
    let none = Resiliency::new(&[], "app1", &[("s", ComponentKind::Statestore)]).unwrap();
    assert!(none.is_empty());
    assert!(none.app("x").is_none());
    assert!(none.component("s", Direction::Outbound).is_none());
}

#[test]
fn a_bad_trip_expression_is_a_startup_error() {
    let bad = TARGETS.replace("consecutiveFailures > 2", "failures > 2");
    let err = Resiliency::new(&load(&bad, "app1"), "app1", &[]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "resiliency res: spec.policies.circuitBreakers.cb.trip: invalid trip expression 'failures > 2': unknown variable 'failures' (expected requests, totalSuccesses, totalFailures, consecutiveSuccesses or consecutiveFailures)"
    );
}

#[test]
fn a_default_app_breaker_is_kept_per_app() {
    let yaml = TARGETS.replace(
        "      cb:\n",
        "      DefaultAppCircuitBreakerPolicy:\n        trip: consecutiveFailures > 1\n      cb:\n",
    );
    let r = Resiliency::new(&load(&yaml, "app1"), "app1", &[]).unwrap();
    let (x, y) = (r.app("x").unwrap(), r.app("y").unwrap());
    assert!(!Arc::ptr_eq(&x, &y));
    assert!(Arc::ptr_eq(&x, &r.app("x").unwrap()));
    let bx = x.breaker_for("m").unwrap();
    assert!(!Arc::ptr_eq(&bx, &y.breaker_for("m").unwrap()));
    assert!(Arc::ptr_eq(
        &bx,
        &r.app("x").unwrap().breaker_for("m").unwrap()
    ));
    for _ in 0..2 {
        let t = bx.admit().unwrap();
        bx.record(t, false);
    }
    assert_eq!(bx.state(), BreakerState::Open);
    assert_eq!(y.breaker_for("m").unwrap().state(), BreakerState::Closed);
}

#[test]
fn built_in_retries_can_be_named_and_overridden_within_limits() {
    let yaml = "\
apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata:
  name: builtin
spec:
  policies:
    retries:
      DaprBuiltInActorRetries:
        maxRetries: 1
      DaprBuiltInActorNotFoundRetries:
        maxRetries: 50
  targets:
    apps:
      a:
        retry: DaprBuiltInServiceRetries
      b:
        retry: DaprBuiltInActorRetries
      c:
        retry: DaprBuiltInActorNotFoundRetries
";
    let r = Resiliency::new(&load(yaml, "app1"), "app1", &[]).unwrap();
    let limit = |app: &str| {
        r.app(app)
            .unwrap()
            .policy()
            .retry
            .as_ref()
            .map(|r| (r.policy, r.duration, r.limit))
    };
    let second = Duration::from_secs(1);
    assert_eq!(limit("a"), Some((BackoffPolicy::Constant, second, Some(3))));
    // An override below 3 retries is raised to 3.
    assert_eq!(limit("b").unwrap().2, Some(3));
    // The protected policy ignores its redefinition.
    assert_eq!(limit("c"), Some((BackoffPolicy::Constant, second, Some(5))));
}
