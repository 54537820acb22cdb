//! Cross-process wake-ups: "something changed in topic T" without polling the database.
//!
//! Every process that subscribes binds one Unix datagram socket (its *bell*) in a folder next
//! to the database, `<database file>.bells/`. After committing a change that can make a
//! message deliverable (a publish, a retry), the writer sends one datagram holding the topic
//! name to every bell in the folder, and rings the in-process [`Notify`] of the topic directly.
//! A process's bell task turns each datagram into a `notify_waiters` on that topic's `Notify`,
//! which is what idle subscriptions wait on.
//!
//! Why datagrams: sending is one non-blocking syscall per process, needs no connection, and a
//! full receive buffer (`EAGAIN`) can be ignored safely, because the receiver then already has
//! wake-ups queued and re-reads the database when it gets to them. A socket file whose process
//! died refuses datagrams (`ECONNREFUSED`) and is removed by whichever sender notices.
//!
//! `sun_path` holds at most 107 bytes. When `<database>.bells/<name>` would be longer, the folder
//! is `$TMPDIR/tandem-bells-<hash of the database's canonical path>` instead; every process
//! computes the same choice from the same path.

use std::collections::HashMap;
use std::io;
use std::os::unix::net::UnixDatagram as StdDatagram;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::net::UnixDatagram;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// Datagrams carry the topic name when it is at most this long; an empty datagram wakes every
/// topic.
const MAX_TOPIC_IN_DATAGRAM: usize = 1024;
/// Length of a bell's file name: `<10-digit pid>-<16 hex digits>.bell`.
const BELL_NAME_LEN: usize = 32;
/// Longest socket path `bind` accepts (`sun_path` minus the terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Only maps and options behind these locks, each updated in one step.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The in-process side: one [`Notify`] per subscribed topic.
#[derive(Default)]
pub(super) struct Wakers {
    topics: Mutex<HashMap<String, Arc<Notify>>>,
}

impl Wakers {
    /// The `Notify` of `topic`, created on first use (subscriptions only, so the map is bounded
    /// by the topics this process subscribes to).
    pub(super) fn topic(&self, topic: &str) -> Arc<Notify> {
        Arc::clone(lock(&self.topics).entry(topic.to_owned()).or_default())
    }

    /// Wakes the subscriptions of `topic` (of every topic when `None`).
    fn wake(&self, topic: Option<&str>) {
        let topics = lock(&self.topics);
        match topic {
            Some(topic) => {
                if let Some(notify) = topics.get(topic) {
                    notify.notify_waiters();
                }
            }
            None => topics.values().for_each(|n| n.notify_waiters()),
        }
    }
}

/// This process's bell: the bound socket's path and the task reading it.
struct Bound {
    path: PathBuf,
    task: JoinHandle<()>,
}

impl Drop for Bound {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The bells of one database.
pub(super) struct Bells {
    dir: PathBuf,
    /// An unbound, non-blocking socket used only to send.
    sender: StdDatagram,
    wakers: Arc<Wakers>,
    own: Mutex<Option<Bound>>,
}

impl Bells {
    /// Chooses and creates the folder for `database` (a canonical path). Blocking: call it on
    /// the blocking pool.
    pub(super) fn open(database: &Path) -> io::Result<Self> {
        let dir = folder_for(database);
        std::fs::create_dir_all(&dir)?;
        let sender = StdDatagram::unbound()?;
        sender.set_nonblocking(true)?;
        Ok(Self {
            dir,
            sender,
            wakers: Arc::default(),
            own: Mutex::new(None),
        })
    }

    /// The in-process wakers.
    pub(super) fn wakers(&self) -> &Wakers {
        &self.wakers
    }

    /// Binds this process's bell when not yet done (on the first subscription), so that
    /// publishes from other processes wake our subscriptions. Needs a tokio runtime.
    pub(super) fn listen(&self) -> io::Result<()> {
        let mut own = lock(&self.own);
        if own.is_some() {
            return Ok(());
        }
        let path = self.dir.join(bell_name());
        let socket = UnixDatagram::bind(&path)?;
        let task = tokio::spawn(receive(socket, Arc::clone(&self.wakers)));
        *own = Some(Bound { path, task });
        Ok(())
    }

    /// Rings `topic` in this process and in every process with a bell. Blocking (a directory
    /// read and one non-blocking send per bell): call it on the blocking pool, after the commit
    /// that it announces.
    pub(super) fn ring(&self, topic: &str) {
        self.wakers.wake(Some(topic));
        let own = lock(&self.own).as_ref().map(|b| b.path.clone());
        let payload = if topic.len() <= MAX_TOPIC_IN_DATAGRAM {
            topic.as_bytes()
        } else {
            &[]
        };
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(err) => {
                tracing::warn!(error = %err, "pubsub.sqlite: cannot list the wake-up sockets");
                return;
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|ext| ext != "bell") || Some(&path) == own.as_ref() {
                continue;
            }
            match self.sender.send_to(payload, &path) {
                Ok(_) => {}
                // Nobody bound: the process that made it is gone.
                Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => {
                    let _ = std::fs::remove_file(&path);
                }
                // Full buffer: that process has wake-ups pending already. Gone meanwhile: fine.
                Err(_) => {}
            }
        }
    }
}

/// Reads datagrams and wakes the named topics; drains what is queued before sleeping again.
async fn receive(socket: UnixDatagram, wakers: Arc<Wakers>) {
    let mut buf = vec![0u8; MAX_TOPIC_IN_DATAGRAM + 1];
    loop {
        match socket.recv(&mut buf).await {
            Ok(n) => {
                wake_from(&wakers, &buf[..n]);
                while let Ok(n) = socket.try_recv(&mut buf) {
                    wake_from(&wakers, &buf[..n]);
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "pubsub.sqlite: reading the wake-up socket failed");
                // Not expected for a bound datagram socket; back off rather than spin.
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    }
}

fn wake_from(wakers: &Wakers, datagram: &[u8]) {
    match std::str::from_utf8(datagram) {
        Ok(topic) if !topic.is_empty() => wakers.wake(Some(topic)),
        _ => wakers.wake(None),
    }
}

/// A fixed-length unique file name, so the folder choice depends on the database path only.
fn bell_name() -> String {
    let random = uuid::Uuid::new_v4().as_u128() as u64;
    let name = format!("{:010}-{random:016x}.bell", std::process::id());
    debug_assert_eq!(name.len(), BELL_NAME_LEN);
    name
}

fn folder_for(database: &Path) -> PathBuf {
    let mut next_to = database.as_os_str().to_owned();
    next_to.push(".bells");
    let next_to = PathBuf::from(next_to);
    if next_to.as_os_str().len() + 1 + BELL_NAME_LEN <= MAX_SOCKET_PATH {
        return next_to;
    }
    let hash = fnv1a(database.as_os_str().as_encoded_bytes());
    std::env::temp_dir().join(format!("tandem-bells-{hash:016x}"))
}

/// FNV-1a: stable across processes and builds, unlike `std`'s hasher.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn folder_next_to_the_database_or_in_tmp_when_too_long() {
        assert_eq!(
            folder_for(Path::new("/var/lib/tandem/pubsub.db")),
            PathBuf::from("/var/lib/tandem/pubsub.db.bells")
        );
        let long = PathBuf::from(format!("/{}/pubsub.db", "d".repeat(90)));
        let folder = folder_for(&long);
        assert!(folder.starts_with(std::env::temp_dir()), "{folder:?}");
        assert_eq!(folder, folder_for(&long), "same choice every time");
        assert!(folder.join(bell_name()).as_os_str().len() <= MAX_SOCKET_PATH);
        assert_eq!(bell_name().len(), BELL_NAME_LEN);
    }

    #[tokio::test]
    async fn a_ring_wakes_another_bell_and_removes_dead_ones() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("x.db");
        let listener = Bells::open(&db).unwrap();
        listener.listen().unwrap();
        let notify = listener.wakers().topic("orders");
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();

        // A socket file nobody reads any more, as left by a killed process.
        let dead = folder_for(&db).join(bell_name());
        drop(StdDatagram::bind(&dead).unwrap());
        assert!(dead.exists());

        let sender = Bells::open(&db).unwrap();
        tokio::task::spawn_blocking(move || sender.ring("orders"))
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), notified)
            .await
            .expect("woken through the socket");
        assert!(!dead.exists(), "the dead bell was removed");

        let own = lock(&listener.own).as_ref().unwrap().path.clone();
        drop(listener);
        assert!(!own.exists(), "a bell is removed with its owner");
    }
}
