//! The load engine: open loop at a fixed rate, closed loop for throughput.
//!
//! Open loop: a pacer thread (plain `std::thread::sleep`, so its timing does not depend on the
//! runtime's 1 ms timer wheel) spawns each request onto the runtime at its scheduled instant,
//! never waiting for earlier answers. A latency runs from the *scheduled* instant to the end
//! of the answer, so a stall of the system under test is charged to every request queued
//! behind it (no coordinated omission), and so is any lateness of the generator itself; that
//! lateness is recorded on its own ([`Latency::lag`]) so that a busy generator shows.
//!
//! Every operation checks its answer (status, body); a failure or a time-out counts as an
//! error and a run with errors fails its scenario.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// The future of one request.
pub type OpFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
/// One request, sent again on every call.
pub type Op = Arc<dyn Fn() -> OpFuture + Send + Sync>;

/// Longest a request may take before it counts as failed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Wraps a closure returning a future as an [`Op`].
pub fn op<F, Fut>(f: F) -> Op
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    Arc::new(move || Box::pin(f()))
}

/// The outcome of an open-loop run.
pub struct Latency {
    /// Latency from the scheduled instant to the end of the answer, in microseconds.
    pub hist: Histogram<u64>,
    /// How late the request started against its schedule (generator lag), in microseconds.
    pub lag: Histogram<u64>,
    /// Requests sent.
    pub sent: u64,
}

impl Latency {
    /// p50, p90, p99 and p99.9 in milliseconds.
    pub fn percentiles_ms(&self) -> [f64; 4] {
        [0.5, 0.9, 0.99, 0.999].map(|q| self.hist.value_at_quantile(q) as f64 / 1000.0)
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds")
}

struct Sample {
    latency_us: u64,
    lag_us: u64,
    error: Option<String>,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// Sends `rate` requests per second for `duration`, each at its scheduled instant.
pub async fn open_loop(op: Op, rate: u64, duration: Duration) -> Result<Latency, String> {
    let rate = rate.max(1);
    let total = ((rate as f64) * duration.as_secs_f64()).round().max(1.0) as u64;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let handle = tokio::runtime::Handle::current();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Sample>();
    let pacer = std::thread::Builder::new()
        .name("pacer".into())
        .spawn(move || {
            let start = Instant::now() + Duration::from_millis(2);
            for i in 0..total {
                let at = start + interval.mul_f64(i as f64);
                let now = Instant::now();
                if at > now {
                    std::thread::sleep(at - now);
                }
                let op = op.clone();
                let tx = tx.clone();
                handle.spawn(async move {
                    let began = Instant::now();
                    let result = match tokio::time::timeout(REQUEST_TIMEOUT, op()).await {
                        Ok(r) => r,
                        Err(_) => Err(format!("no answer within {REQUEST_TIMEOUT:?}")),
                    };
                    let _ = tx.send(Sample {
                        latency_us: micros(at.elapsed()),
                        lag_us: micros(began.saturating_duration_since(at)),
                        error: result.err(),
                    });
                });
            }
        })
        .map_err(|e| format!("cannot start the pacer thread: {e}"))?;
    let mut out = Latency {
        hist: histogram(),
        lag: histogram(),
        sent: total,
    };
    let mut errors = 0u64;
    let mut first_error = None;
    while let Some(s) = rx.recv().await {
        match s.error {
            None => {
                let _ = out.hist.record(s.latency_us);
                let _ = out.lag.record(s.lag_us);
            }
            Some(e) => {
                errors += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    let _ = pacer.join();
    if errors > 0 {
        return Err(format!(
            "{errors} of {total} requests failed; first: {}",
            first_error.unwrap_or_default()
        ));
    }
    Ok(out)
}

/// Requests per second with `workers` loops sending back to back for `duration`.
pub async fn closed_loop(op: Op, workers: usize, duration: Duration) -> Result<Closed, String> {
    let deadline = Instant::now() + duration;
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..workers.max(1) {
        let op = op.clone();
        let errors = errors.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = 0u64;
            let mut first = None;
            while Instant::now() < deadline {
                match tokio::time::timeout(REQUEST_TIMEOUT, op()).await {
                    Ok(Ok(())) => done += 1,
                    Ok(Err(e)) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        first.get_or_insert(e);
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        first.get_or_insert_with(|| "no answer in time".to_owned());
                    }
                }
            }
            (done, first)
        }));
    }
    let mut total = 0;
    let mut first_error = None;
    for t in tasks {
        let (done, first) = t.await.map_err(|e| format!("worker panicked: {e}"))?;
        total += done;
        if first_error.is_none() {
            first_error = first;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let errors = errors.load(Ordering::Relaxed);
    if errors > 0 {
        return Err(format!(
            "{errors} requests failed in the closed loop; first: {}",
            first_error.unwrap_or_default()
        ));
    }
    Ok(Closed {
        rate: total as f64 / elapsed,
        requests: total,
    })
}

/// What a closed loop did.
pub struct Closed {
    /// Requests answered per second.
    pub rate: f64,
    /// Requests answered.
    pub requests: u64,
}

/// Sends `n` requests one after the other (warm-up, fixed-count runs).
pub async fn sequential(op: &Op, n: u64) -> Result<(), String> {
    for _ in 0..n {
        tokio::time::timeout(REQUEST_TIMEOUT, op())
            .await
            .map_err(|_| "no answer in time".to_owned())??;
    }
    Ok(())
}
