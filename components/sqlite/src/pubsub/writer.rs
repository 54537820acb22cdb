//! The database connection of one component, with group commit.
//!
//! Nearly every pub/sub operation writes (publish, lease, ack, retry, lease renewal), and a
//! commit costs far more than the statements before it. So operations are queued as *jobs*;
//! one blocking-pool thread at a time owns the connection and runs everything queued in one
//! `BEGIN IMMEDIATE … COMMIT`, each job inside a savepoint of its own so that a failing job
//! rolls back alone. Under load, jobs that arrive while a batch commits form the next batch;
//! alone, a job is its own batch, with no added delay. The thread goes back to the pool (and
//! the connection back into the queue) as soon as the queue is empty.
//!
//! A job's result is handed to its caller only after the commit, so a publish that returned Ok
//! is durable. After the commit, the thread rings the topics of the successful jobs (see
//! [`super::bells`]).

use std::collections::HashSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rusqlite::Connection;
use tandem_components::{Error, Result};
use tokio::sync::oneshot;

use super::bells::Bells;

/// Most jobs per transaction, so that one commit (and the lock it holds against other
/// processes) stays short.
const MAX_BATCH: usize = 64;

/// A queued operation, its result type erased.
trait Task: Send {
    /// Runs the operation inside the batch's transaction (in a savepoint of its own).
    fn run(&mut self, conn: &Connection);
    /// Hands the result to the caller once the commit's outcome (its error, if any) is known;
    /// reports whether the operation took effect.
    fn finish(self: Box<Self>, commit_error: Option<&str>) -> bool;
}

struct Typed<T, F> {
    work: Option<F>,
    result: Option<Result<T>>,
    reply: oneshot::Sender<Result<T>>,
}

impl<T, F> Task for Typed<T, F>
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> Result<T> + Send + 'static,
{
    fn run(&mut self, conn: &Connection) {
        if let Some(work) = self.work.take() {
            self.result = Some(in_savepoint(conn, work));
        }
    }

    fn finish(self: Box<Self>, commit_error: Option<&str>) -> bool {
        let (result, took_effect) = match (self.result, commit_error) {
            (Some(Ok(value)), None) => (Ok(value), true),
            (Some(Err(err)), _) => (Err(err), false),
            (_, Some(err)) => (Err(Error::backend(err.to_owned())), false),
            (None, None) => (
                Err(Error::backend("pubsub.sqlite: a database job panicked")),
                false,
            ),
        };
        let _ = self.reply.send(result);
        took_effect
    }
}

struct Job {
    task: Box<dyn Task>,
    /// Topics to ring when the job took effect.
    ring: Vec<String>,
}

struct State {
    jobs: Vec<Job>,
    /// `None` while a thread is draining the queue.
    conn: Option<Connection>,
}

/// The connection and its job queue.
pub(super) struct Writer {
    state: Mutex<State>,
}

fn lock(mutex: &Mutex<State>) -> MutexGuard<'_, State> {
    // Pushes and takes only; a panic elsewhere cannot leave the queue half-updated.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Writer {
    pub(super) fn new(conn: Connection) -> Self {
        Self {
            state: Mutex::new(State {
                jobs: Vec::new(),
                conn: Some(conn),
            }),
        }
    }

    /// Queues `work` and waits for its committed result; rings `ring` when it took effect.
    /// Must be called within a tokio runtime. If the caller stops waiting, the job still runs.
    pub(super) async fn run<T, F>(
        self: &Arc<Self>,
        bells: &Arc<Bells>,
        ring: Vec<String>,
        work: F,
    ) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let (reply, result) = oneshot::channel();
        let task = Box::new(Typed {
            work: Some(work),
            result: None,
            reply,
        });
        let idle_conn = {
            let mut state = lock(&self.state);
            state.jobs.push(Job { task, ring });
            state.conn.take()
        };
        if let Some(conn) = idle_conn {
            let this = Arc::clone(self);
            let bells = Arc::clone(bells);
            tokio::task::spawn_blocking(move || this.drain(conn, &bells));
        }
        result
            .await
            .map_err(|_| Error::backend("pubsub.sqlite: the database job was lost"))?
    }

    /// Runs batches until the queue is empty, then parks the connection.
    fn drain(&self, conn: Connection, bells: &Bells) {
        loop {
            let batch: Vec<Job> = {
                let mut state = lock(&self.state);
                if state.jobs.is_empty() {
                    state.conn = Some(conn);
                    return;
                }
                let n = state.jobs.len().min(MAX_BATCH);
                state.jobs.drain(..n).collect()
            };
            let rings: HashSet<String> = run_batch(&conn, batch).into_iter().collect();
            for topic in rings {
                bells.ring(&topic);
            }
        }
    }
}

/// One transaction for the batch; returns the topics to ring of the jobs that took effect.
fn run_batch(conn: &Connection, mut batch: Vec<Job>) -> Vec<String> {
    let commit_error = match conn.execute_batch("BEGIN IMMEDIATE") {
        // Nothing runs; every job reports the failure.
        Err(err) => Some(err.to_string()),
        Ok(()) => {
            for job in &mut batch {
                job.task.run(conn);
            }
            conn.execute_batch("COMMIT").err().map(|err| {
                let _ = conn.execute_batch("ROLLBACK");
                err.to_string()
            })
        }
    };
    let mut rings = Vec::new();
    for job in batch {
        if job.task.finish(commit_error.as_deref()) {
            rings.extend(job.ring);
        }
    }
    rings
}

/// Runs `work` inside a savepoint, rolled back when it fails (or panics).
fn in_savepoint<T>(conn: &Connection, work: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
    conn.execute_batch("SAVEPOINT job")
        .map_err(Error::backend)?;
    let result = catch_unwind(AssertUnwindSafe(|| work(conn)))
        .unwrap_or_else(|_| Err(Error::backend("pubsub.sqlite: a database job panicked")));
    if result.is_err() {
        let _ = conn.execute_batch("ROLLBACK TO job");
    }
    conn.execute_batch("RELEASE job").map_err(Error::backend)?;
    result
}
