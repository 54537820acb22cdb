//! Readiness and shutdown: the two signals every front end and task watches.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::watch;

/// Readiness of the sidecar, as reported by `/v1.0/healthz` and `/v1.0/healthz/outbound`.
#[derive(Debug, Default)]
pub struct Readiness {
    outbound: AtomicBool,
    ready: AtomicBool,
}

impl Readiness {
    /// Components are loaded and the outbound APIs are usable.
    pub fn set_outbound_ready(&self) {
        self.outbound.store(true, Ordering::Release);
    }

    /// Every readiness target is ready (outbound, and the app channel when configured).
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Whether `/v1.0/healthz/outbound` answers 204.
    pub fn outbound_ready(&self) -> bool {
        self.outbound.load(Ordering::Acquire)
    }

    /// Whether `/v1.0/healthz` answers 204.
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

/// How the process was asked to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopKind {
    /// Still running.
    Running,
    /// Drain in-flight work, then exit 0.
    Graceful,
    /// Exit with status 1 at once (`dapr-force-shutdown: true`).
    Forced,
}

/// A shutdown signal that many tasks can await and anyone can trigger.
///
/// A graceful stop has two phases: [`Shutdown::wait`] resolves first (stop taking new
/// messages, drain deliveries), [`Shutdown::servers_stopped`] once the API servers should
/// stop too ([`Shutdown::stop_servers`]), so that an app finishing a delivery can still call
/// its sidecar. A forced stop ends both at once.
#[derive(Debug)]
pub struct Shutdown {
    tx: watch::Sender<StopKind>,
    servers: watch::Sender<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self {
            tx: watch::Sender::new(StopKind::Running),
            servers: watch::Sender::new(false),
        }
    }
}

impl Shutdown {
    /// Asks for a graceful stop.
    pub fn trigger(&self) {
        self.tx.send_if_modified(|k| {
            if *k == StopKind::Running {
                *k = StopKind::Graceful;
                true
            } else {
                false
            }
        });
    }

    /// Asks for an immediate stop with exit status 1 after `delay` (so the answer can leave).
    pub fn force(&self, delay: Duration) {
        let tx = self.tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            tx.send_replace(StopKind::Forced);
        });
    }

    /// Second phase of a graceful stop: the API servers stop accepting and drain.
    pub fn stop_servers(&self) {
        self.servers.send_replace(true);
    }

    /// Resolves once the API servers should stop (after [`Shutdown::stop_servers`], or at
    /// once on a forced stop).
    pub fn servers_stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut servers = self.servers.subscribe();
        let mut kind = self.tx.subscribe();
        async move {
            tokio::select! {
                _ = servers.wait_for(|s| *s) => {}
                _ = kind.wait_for(|k| *k == StopKind::Forced) => {}
            }
        }
    }

    /// The current state.
    pub fn kind(&self) -> StopKind {
        *self.tx.borrow()
    }

    /// Resolves once a stop was requested.
    pub fn wait(&self) -> impl std::future::Future<Output = StopKind> + Send + 'static {
        let mut rx = self.tx.subscribe();
        async move {
            match rx.wait_for(|k| *k != StopKind::Running).await {
                Ok(k) => *k,
                Err(_) => StopKind::Graceful,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn shutdown_wakes_waiters() {
        let s = Shutdown::default();
        let w = s.wait();
        s.trigger();
        assert_eq!(w.await, StopKind::Graceful);
        let s2 = Shutdown::default();
        let w2 = s2.wait();
        s2.force(Duration::from_millis(100));
        assert_eq!(w2.await, StopKind::Forced);
    }
}
