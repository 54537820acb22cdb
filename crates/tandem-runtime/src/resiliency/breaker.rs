//! A circuit breaker with daprd's semantics (gobreaker's state machine).
//!
//! - Closed: calls pass; results are counted, and the counts start over every `interval` (when
//!   not zero). When a failure makes the `trip` expression true, the breaker opens.
//! - Open: calls fail at once; after `timeout` the breaker turns half-open.
//! - Half-open: up to `maxRequests` calls pass; a failure opens the breaker again, and
//!   `maxRequests` consecutive successes close it.
//!
//! Each breaker has its own small lock, held only to update counters.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tandem_config::CircuitBreakerPolicy;
use tokio::time::Instant;

use super::PolicyError;
use super::trip::TripExpr;

/// The state of a breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls pass.
    Closed,
    /// Calls fail fast.
    Open,
    /// A few trial calls pass.
    HalfOpen,
}

/// The counters the `trip` expression sees.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// `requests`.
    pub requests: u64,
    /// `totalSuccesses`.
    pub total_successes: u64,
    /// `totalFailures`.
    pub total_failures: u64,
    /// `consecutiveSuccesses`.
    pub consecutive_successes: u64,
    /// `consecutiveFailures`.
    pub consecutive_failures: u64,
}

/// A circuit breaker.
#[derive(Debug)]
pub struct Breaker {
    name: String,
    max_requests: u64,
    interval: Duration,
    timeout: Duration,
    trip: Arc<TripExpr>,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    generation: u64,
    counts: Counts,
    /// Closed: when the counts start over; open: when it turns half-open.
    expiry: Option<Instant>,
}

/// A call let through by [`Breaker::admit`]; its result goes back with [`Breaker::record`].
#[derive(Debug, Clone, Copy)]
pub struct Ticket {
    generation: u64,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(name: impl Into<String>, spec: &CircuitBreakerPolicy, trip: Arc<TripExpr>) -> Self {
        let now = Instant::now();
        let interval = spec.interval;
        Self {
            name: name.into(),
            max_requests: u64::from(spec.max_requests.max(1)),
            interval,
            timeout: if spec.timeout.is_zero() {
                Duration::from_secs(60)
            } else {
                spec.timeout
            },
            trip,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                generation: 0,
                counts: Counts::default(),
                expiry: (!interval.is_zero()).then(|| now + interval),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        let mut inner = self.lock();
        self.refresh(&mut inner, Instant::now());
        inner.state
    }

    /// The current counts.
    pub fn counts(&self) -> Counts {
        let mut inner = self.lock();
        self.refresh(&mut inner, Instant::now());
        inner.counts
    }

    /// Lets a call through, or refuses it (open, or half-open with `maxRequests` in flight).
    pub fn admit(&self) -> Result<Ticket, PolicyError> {
        let mut inner = self.lock();
        self.refresh(&mut inner, Instant::now());
        match inner.state {
            BreakerState::Open => return Err(PolicyError::CircuitOpen),
            BreakerState::HalfOpen if inner.counts.requests >= self.max_requests => {
                return Err(PolicyError::TooManyRequests);
            }
            _ => {}
        }
        inner.counts.requests += 1;
        Ok(Ticket {
            generation: inner.generation,
        })
    }

    /// Records how an admitted call ended.
    pub fn record(&self, ticket: Ticket, success: bool) {
        let now = Instant::now();
        let mut inner = self.lock();
        self.refresh(&mut inner, now);
        if ticket.generation != inner.generation {
            // The breaker changed state meanwhile: this result belongs to the old period.
            return;
        }
        let c = &mut inner.counts;
        if success {
            c.total_successes += 1;
            c.consecutive_successes += 1;
            c.consecutive_failures = 0;
            if inner.state == BreakerState::HalfOpen
                && inner.counts.consecutive_successes >= self.max_requests
            {
                self.set_state(&mut inner, BreakerState::Closed, now);
            }
        } else {
            c.total_failures += 1;
            c.consecutive_failures += 1;
            c.consecutive_successes = 0;
            match inner.state {
                BreakerState::Closed if self.trip.eval(&inner.counts) => {
                    self.set_state(&mut inner, BreakerState::Open, now);
                }
                BreakerState::HalfOpen => self.set_state(&mut inner, BreakerState::Open, now),
                _ => {}
            }
        }
    }

    fn refresh(&self, inner: &mut Inner, now: Instant) {
        match inner.state {
            BreakerState::Closed => {
                if inner.expiry.is_some_and(|e| e <= now) {
                    self.new_generation(inner, now);
                }
            }
            BreakerState::Open => {
                if inner.expiry.is_some_and(|e| e <= now) {
                    self.set_state(inner, BreakerState::HalfOpen, now);
                }
            }
            BreakerState::HalfOpen => {}
        }
    }

    fn set_state(&self, inner: &mut Inner, state: BreakerState, now: Instant) {
        if inner.state == state {
            return;
        }
        let from = inner.state;
        inner.state = state;
        self.new_generation(inner, now);
        tracing::info!(breaker = %self.name, "circuit breaker changed state from {from:?} to {state:?}");
    }

    fn new_generation(&self, inner: &mut Inner, now: Instant) {
        inner.generation += 1;
        inner.counts = Counts::default();
        inner.expiry = match inner.state {
            BreakerState::Closed => (!self.interval.is_zero()).then(|| now + self.interval),
            BreakerState::Open => Some(now + self.timeout),
            BreakerState::HalfOpen => None,
        };
    }
}
