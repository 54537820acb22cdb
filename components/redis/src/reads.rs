//! A connection of its own for state reads on a single node, lean where the shared one is
//! general.
//!
//! On the shared multiplexed connection ([`crate::client`]) each command is built as a
//! generic `Cmd`, goes to the connection's task through a channel, and its reply is parsed
//! into a `Value` tree before it comes back through another channel; that was about half of
//! the sidecar's own work for a Redis state GET. A state read always has the same shape
//! (`HMGET <key> data version` and `PTTL <key>` per key), so on a plain-TCP node (no TLS,
//! Sentinel or cluster) it goes out on a connection kept for reads:
//! - the calling task encodes its commands straight into the connection's write buffer and
//!   queues a one-shot slot for the answer;
//! - the connection's task writes everything queued since its last write in one write (the
//!   calls in flight share it, as on the shared connection: one connection per call would
//!   cost Redis and the sidecar a read and a write per call, and measured slower), reads the
//!   replies, and turns each call's replies into its items directly.
//!
//! It only makes reads cheaper; it never changes what they answer:
//! - **Opened in the background.** A read made while there is no connection goes the shared
//!   way, and asks for one, opened (with `AUTH` and `SELECT` as configured) by a background
//!   task, one attempt at a time. Building the store never dials; while Redis is down the
//!   dial fails quietly (at most once a second) and reads fail the shared way, with its errors
//!   and retries.
//! - **Any trouble falls back.** When the connection fails (an I/O error, a reply it did not
//!   expect), it is closed and the reads waiting on it are made again the shared way; the
//!   next read asks for a new one. A reply that is an error other than `WRONGTYPE` also sends
//!   its read the shared way, whose error it then reports. Only a reply that does not come
//!   within `readTimeout` fails the read here, as it would there (trying again would double
//!   the wait); the connection is then closed, as Dapr's Go client closes a connection after
//!   a time-out, since every reply queued behind the late one is late too.
//! - **One timer per connection.** Replies come in order, so only the oldest call waiting
//!   can be the first to be late: the connection's task keeps one timer, set for that call's
//!   deadline. When it fires it fails that call if it is still waiting, else it is set again
//!   for the call now oldest: under steady load it fires about once per `readTimeout`,
//!   instead of a timer set and cancelled for every read.
//! - **Cancellation is safe.** A call that is dropped (its client went away) leaves its slot
//!   behind; its replies are read and dropped, so the connection stays in step.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use bytes::{Buf, Bytes, BytesMut};
use futures_util::task::AtomicWaker;
use redis::RedisError;
use tandem_components::{Error, Result};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};
use tokio_util::io::poll_read_buf;

use crate::client::Failure;
use crate::metadata::{RedisMetadata, RedisType};
use crate::state::{KeyRead, ReadError, state_item};

/// The capacity the buffers start with, and keep between calls.
const BUFFER: usize = 4096;
/// A buffer grown past this by a large call is replaced once it is empty.
const KEEP: usize = 64 * 1024;
/// The longest reply line (not a bulk string's bytes) accepted.
const MAX_LINE: usize = 64 * 1024;
/// The pause after a failed dial before the next may start.
const DIAL_PAUSE: Duration = Duration::from_secs(1);

/// The read connection of one store.
pub(crate) struct Reads {
    dialer: Arc<Dialer>,
    read_timeout: Option<Duration>,
    /// What the background dial shares.
    shared: Arc<Shared>,
}

struct Shared {
    /// The open connection, if any.
    pipe: ArcSwapOption<Pipe>,
    /// Whether a dial is under way (or pausing after a failure).
    dialing: AtomicBool,
    /// Set when the store is dropped, so that a dial finishing later closes its connection.
    dropped: AtomicBool,
}

/// What a call and the connection's task share.
struct Pipe {
    queue: Mutex<Queue>,
    /// Wakes the connection's task when the queue's bytes go from none to some, or when the
    /// connection is closed.
    wake: AtomicWaker,
    /// Set by [`Pipe::close`]: no more calls, and the task ends, even while its write is
    /// blocked. Calls read it under the queue's lock, which `close` takes after setting it:
    /// a call queued before that is dropped with the queue (its caller goes the shared way).
    closed: AtomicBool,
    /// The connection's local address (for logs).
    local: Option<SocketAddr>,
}

struct Queue {
    /// Commands not yet handed to the task.
    out: Vec<u8>,
    /// Their calls, in the same order.
    calls: VecDeque<Call>,
}

/// A call waiting for its replies.
struct Call {
    keys: usize,
    answer: oneshot::Sender<Answer>,
    /// When its replies are late (`readTimeout` after it was queued).
    deadline: Option<Instant>,
}

/// A call's items, `Ok(None)` to make it again the shared way, or `Err` when its replies did
/// not come within `readTimeout`.
type Answer = Result<Option<Vec<KeyRead>>, Late>;

/// The replies of a call did not come in time.
struct Late;

impl Pipe {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// No more calls; the task ends.
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let calls = std::mem::take(&mut self.queue().calls);
        drop(calls);
        self.wake.wake();
    }
}

impl Reads {
    /// The read connection for `md`, or `None` where reads must stay on the shared one: TLS,
    /// Sentinel, cluster, or a username without a password.
    pub(crate) fn new(md: &RedisMetadata) -> Option<Self> {
        if md.redis_type != RedisType::Node
            || md.failover
            || md.enable_tls
            || (md.username.is_some() && md.password.is_none())
        {
            return None;
        }
        let host = md.hosts.first()?;
        let mut login = Vec::new();
        let mut logins = 0;
        if let Some(password) = &md.password {
            let mut args = vec!["AUTH".as_bytes()];
            if let Some(user) = &md.username {
                args.push(user.as_bytes());
            }
            args.push(password.as_bytes());
            command(&mut login, &args);
            logins += 1;
        }
        if md.db != 0 {
            let db = md.db.to_string();
            command(&mut login, &[b"SELECT", db.as_bytes()]);
            logins += 1;
        }
        Some(Self {
            dialer: Arc::new(Dialer {
                host: host.host.clone(),
                port: host.port,
                login,
                logins,
                timeout: md.dial_timeout,
            }),
            read_timeout: md.read_timeout,
            shared: Arc::new(Shared {
                pipe: ArcSwapOption::empty(),
                dialing: AtomicBool::new(false),
                dropped: AtomicBool::new(false),
            }),
        })
    }

    /// Reads `keys`: `None` when the read should go the shared way (no connection yet, or one
    /// that failed), an error only when the reply timed out.
    pub(crate) async fn read(
        &self,
        what: &'static str,
        keys: &[&str],
    ) -> Option<Result<Vec<KeyRead>>> {
        let answer = self.send(keys)?;
        match answer.await {
            Ok(Ok(items)) => items.map(Ok),
            Ok(Err(Late)) => {
                // The connection's task has closed the connection (see `Driver::expire`).
                let err = RedisError::from(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "timed out waiting for the reply",
                ));
                Some(Err(Error::backend(Failure::new(what, err))))
            }
            // A closed slot: the connection failed.
            Err(_) => None,
        }
    }

    /// Queues the commands for `keys`; `None` when there is no open connection.
    fn send(&self, keys: &[&str]) -> Option<oneshot::Receiver<Answer>> {
        let current = self.shared.pipe.load();
        let Some(pipe) = current.as_ref() else {
            self.dial();
            return None;
        };
        let (answer, slot) = oneshot::channel();
        let deadline = self.read_timeout.map(|limit| Instant::now() + limit);
        let mut q = pipe.queue();
        if pipe.closed.load(Ordering::Acquire) {
            drop(q);
            let failed = Arc::clone(pipe);
            drop(current);
            self.shared.pipe.rcu(|now| match now {
                Some(p) if Arc::ptr_eq(p, &failed) => None,
                other => other.clone(),
            });
            self.dial();
            return None;
        }
        let first = q.out.is_empty();
        for key in keys {
            command(&mut q.out, &[b"HMGET", key.as_bytes(), b"data", b"version"]);
            command(&mut q.out, &[b"PTTL", key.as_bytes()]);
        }
        q.calls.push_back(Call {
            keys: keys.len(),
            answer,
            deadline,
        });
        drop(q);
        if first {
            pipe.wake.wake();
        }
        Some(slot)
    }

    /// Opens a connection in the background, unless one is being opened.
    fn dial(&self) {
        if self.shared.dialing.swap(true, Ordering::AcqRel) {
            return;
        }
        let dialer = Arc::clone(&self.dialer);
        let shared = Arc::clone(&self.shared);
        tokio::spawn(async move {
            match dialer.open().await {
                Ok(stream) => {
                    let local = stream.local_addr().ok();
                    tracing::debug!(?local, "state.redis read connection open");
                    let pipe = Arc::new(Pipe {
                        queue: Mutex::new(Queue {
                            out: Vec::with_capacity(BUFFER),
                            calls: VecDeque::new(),
                        }),
                        wake: AtomicWaker::new(),
                        closed: AtomicBool::new(false),
                        local,
                    });
                    shared.pipe.store(Some(Arc::clone(&pipe)));
                    shared.dialing.store(false, Ordering::Release);
                    // The store sets `dropped` before it takes the connection out: either it
                    // saw this one, or this sees `dropped`.
                    if shared.dropped.load(Ordering::SeqCst) {
                        pipe.close();
                    }
                    drop(shared);
                    Driver::new(pipe, stream).run().await;
                }
                Err(err) => {
                    tracing::debug!(error = %err, "state.redis read connection: dial failed");
                    tokio::time::sleep(DIAL_PAUSE).await;
                    shared.dialing.store(false, Ordering::Release);
                }
            }
        });
    }

    /// Whether a connection is open.
    #[cfg(test)]
    fn is_open(&self) -> bool {
        self.shared
            .pipe
            .load()
            .as_ref()
            .is_some_and(|p| !p.closed.load(Ordering::Acquire))
    }

    /// The open connection's local address.
    #[cfg(test)]
    fn local(&self) -> Option<SocketAddr> {
        self.shared.pipe.load().as_ref().and_then(|p| p.local)
    }
}

impl Drop for Reads {
    fn drop(&mut self) {
        self.shared.dropped.store(true, Ordering::SeqCst);
        if let Some(pipe) = self.shared.pipe.swap(None) {
            pipe.close();
        }
    }
}

/// How to open a connection.
struct Dialer {
    host: String,
    port: u16,
    /// `AUTH` and `SELECT`, encoded, sent on every new connection.
    login: Vec<u8>,
    /// How many `+OK` replies `login` gets.
    logins: usize,
    timeout: Duration,
}

impl Dialer {
    /// Connects and logs in.
    async fn open(&self) -> io::Result<TcpStream> {
        let open = async {
            let mut stream = TcpStream::connect((self.host.as_str(), self.port)).await?;
            stream.set_nodelay(true)?;
            if self.logins > 0 {
                stream.write_all(&self.login).await?;
                let mut buf = BytesMut::with_capacity(256);
                let mut at = 0;
                for _ in 0..self.logins {
                    let (reply, next) = loop {
                        if let Some(done) = element(&buf, at)? {
                            break done;
                        }
                        buf.reserve(256);
                        if poll_fn(|cx| poll_read_buf(Pin::new(&mut stream), cx, &mut buf)).await?
                            == 0
                        {
                            return Err(io::ErrorKind::UnexpectedEof.into());
                        }
                    };
                    if !matches!(reply, Element::Simple(ref r) if &buf[r.clone()] == b"OK") {
                        return Err(io::Error::new(
                            io::ErrorKind::PermissionDenied,
                            "the login was refused",
                        ));
                    }
                    at = next;
                }
            }
            Ok(stream)
        };
        match tokio::time::timeout(self.timeout, open).await {
            Ok(opened) => opened,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "dial timed out")),
        }
    }
}

/// The connection's task: writes what the calls queued, reads the replies, answers the calls
/// in order.
struct Driver {
    pipe: Arc<Pipe>,
    stream: TcpStream,
    /// Bytes being written, and how many are.
    pending: Vec<u8>,
    written: usize,
    /// The calls whose commands were taken from the queue, oldest first.
    calls: VecDeque<Call>,
    buf: BytesMut,
    /// The oldest call's replies parsed so far (kept for its capacity).
    replies: Vec<Replies>,
    /// Set for the deadline of a call waiting (see the module's notes), once there is one.
    timer: Option<Pin<Box<Sleep>>>,
    /// Whether `timer` is set.
    armed: bool,
}

impl Driver {
    fn new(pipe: Arc<Pipe>, stream: TcpStream) -> Self {
        Self {
            pipe,
            stream,
            pending: Vec::with_capacity(BUFFER),
            written: 0,
            calls: VecDeque::new(),
            buf: BytesMut::with_capacity(BUFFER),
            replies: Vec::new(),
            timer: None,
            armed: false,
        }
    }

    async fn run(mut self) {
        let local = self.pipe.local;
        match poll_fn(|cx| self.poll(cx)).await {
            Ok(()) => tracing::debug!(?local, "state.redis read connection closed"),
            Err(err) => tracing::debug!(?local, error = %err, "state.redis read connection failed"),
        }
        // Calls still waiting go the shared way (their slots close).
        self.pipe.close();
    }

    /// Runs until the connection fails (an error) or the store is dropped (`Ok`).
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            // Register before looking, so that a call queued (or a close) after the look
            // wakes the task.
            self.pipe.wake.register(cx.waker());
            if self.pipe.closed.load(Ordering::Acquire) {
                return Poll::Ready(Ok(()));
            }
            if self.expire() {
                return Poll::Ready(Ok(()));
            }
            if self.pending.is_empty() {
                let mut q = self.pipe.queue();
                std::mem::swap(&mut q.out, &mut self.pending);
                self.calls.extend(q.calls.drain(..));
                drop(q);
                if self.pending.is_empty() {
                    self.read(cx)?;
                    self.arm(cx);
                    return Poll::Pending;
                }
            }
            while self.written < self.pending.len() {
                match Pin::new(&mut self.stream).poll_write(cx, &self.pending[self.written..]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => self.written += n,
                    Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                    Poll::Pending => break,
                }
            }
            self.read(cx)?;
            if self.written < self.pending.len() {
                self.arm(cx);
                return Poll::Pending;
            }
            self.written = 0;
            if self.pending.capacity() > KEEP {
                self.pending = Vec::with_capacity(BUFFER);
            } else {
                self.pending.clear();
            }
        }
    }

    /// When the timer has fired: fails the oldest call waiting if it is late, and answers
    /// true (the connection must close: every reply queued behind it is late too); else the
    /// timer is free to be set for the call now oldest.
    fn expire(&mut self) -> bool {
        // Not polled: its registration (made when it was set) wakes the task when it fires,
        // and looking costs less than a poll on every wake-up.
        if !self.armed || !self.timer.as_ref().is_some_and(|t| t.is_elapsed()) {
            return false;
        }
        self.armed = false;
        let late = self
            .calls
            .front()
            .and_then(|c| c.deadline)
            .is_some_and(|d| d <= Instant::now());
        if late && let Some(call) = self.calls.pop_front() {
            let _ = call.answer.send(Err(Late));
        }
        late
    }

    /// Sets the timer for the oldest waiting call's deadline, unless it is set already (for
    /// an earlier one) or no call has a deadline.
    fn arm(&mut self, cx: &mut Context<'_>) {
        if self.armed {
            return;
        }
        let Some(deadline) = self.calls.front().and_then(|c| c.deadline) else {
            return;
        };
        let timer = match &mut self.timer {
            Some(timer) => {
                timer.as_mut().reset(deadline);
                timer
            }
            None => self
                .timer
                .insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        self.armed = true;
        // Registers the task with the timer (it cannot have fired yet, or it fires now and
        // the next poll sees it).
        if timer.as_mut().poll(cx).is_ready() {
            cx.waker().wake_by_ref();
        }
    }

    /// Reads what has arrived and answers the calls it completes.
    fn read(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        loop {
            if self.buf.capacity() - self.buf.len() < BUFFER / 2 {
                self.buf.reserve(self.buf.capacity().max(BUFFER));
            }
            match poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.buf) {
                Poll::Ready(Ok(0)) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Poll::Ready(Ok(_)) => self.answer()?,
                Poll::Ready(Err(err)) => return Err(err),
                Poll::Pending => return Ok(()),
            }
        }
    }

    /// Answers every call whose replies are all in `buf`, and drops their bytes.
    fn answer(&mut self) -> io::Result<()> {
        let mut at = 0;
        while let Some(call) = self.calls.front() {
            self.replies.clear();
            let mut next = at;
            while self.replies.len() < call.keys {
                match key_replies(&self.buf, next)? {
                    Some((r, after)) => {
                        self.replies.push(r);
                        next = after;
                    }
                    None => break,
                }
            }
            if self.replies.len() < call.keys {
                break;
            }
            let answer = items(&self.buf, &self.replies);
            at = next;
            if let Some(call) = self.calls.pop_front() {
                // The caller may have gone: its replies are dropped.
                let _ = call.answer.send(answer);
            }
        }
        if at == 0 && !self.buf.is_empty() && self.calls.is_empty() {
            return Err(invalid("a reply nobody asked for"));
        }
        if at == self.buf.len() && self.buf.capacity() > KEEP {
            self.buf = BytesMut::with_capacity(BUFFER);
        } else {
            self.buf.advance(at);
        }
        Ok(())
    }
}

/// One call's items from its replies in `buf`; `None` when a reply was an error the shared
/// way should report.
fn items(buf: &[u8], replies: &[Replies]) -> Answer {
    if replies.iter().any(|r| match &r.fields {
        Fields::Error(text) => !buf[text.clone()].starts_with(b"WRONGTYPE"),
        Fields::Pair(..) => false,
    }) {
        return Ok(None);
    }
    // The clock is read only for an item that expires (`PTTL` of 0 or more); the others do
    // not look at it.
    let now = if replies.iter().any(|r| r.pttl.is_some_and(|ms| ms >= 0)) {
        SystemTime::now()
    } else {
        UNIX_EPOCH
    };
    let reads = replies
        .iter()
        .map(|r| match &r.fields {
            Fields::Error(_) => Err(ReadError::NotAHash),
            Fields::Pair(data, version) => state_item(
                data.clone().map(|d| Bytes::copy_from_slice(&buf[d])),
                version.clone().map(|v| &buf[v]),
                r.pttl,
                now,
            ),
        })
        .collect();
    Ok(Some(reads))
}

/// Appends one command (a RESP array of bulk strings).
fn command(out: &mut Vec<u8>, args: &[&[u8]]) {
    let mut n = itoa::Buffer::new();
    out.push(b'*');
    out.extend_from_slice(n.format(args.len()).as_bytes());
    out.extend_from_slice(b"\r\n");
    for arg in args {
        out.push(b'$');
        out.extend_from_slice(n.format(arg.len()).as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

/// The replies to one key's `HMGET` and `PTTL`, as ranges of the read buffer.
#[derive(Debug)]
struct Replies {
    fields: Fields,
    /// `PTTL` in milliseconds; `None` when it failed.
    pttl: Option<i64>,
}

#[derive(Debug, PartialEq)]
enum Fields {
    /// `data` and `version`, each nil or bytes.
    Pair(Option<Range<usize>>, Option<Range<usize>>),
    /// An error reply's text.
    Error(Range<usize>),
}

/// One key's two replies from `at`: `Ok(None)` when `buf` does not hold them all yet.
fn key_replies(buf: &[u8], at: usize) -> io::Result<Option<(Replies, usize)>> {
    let Some((first, mut at)) = element(buf, at)? else {
        return Ok(None);
    };
    let fields = match first {
        Element::Array(2) => {
            let mut pair = [None, None];
            for slot in &mut pair {
                let Some((e, next)) = element(buf, at)? else {
                    return Ok(None);
                };
                *slot = match e {
                    Element::Nil => None,
                    Element::Bulk(r) => Some(r),
                    _ => return Err(invalid("unexpected HMGET field")),
                };
                at = next;
            }
            let [data, version] = pair;
            Fields::Pair(data, version)
        }
        Element::Error(text) => Fields::Error(text),
        _ => return Err(invalid("unexpected reply to HMGET")),
    };
    let Some((second, at)) = element(buf, at)? else {
        return Ok(None);
    };
    let pttl = match second {
        Element::Int(ms) => Some(ms),
        Element::Error(_) => None,
        _ => return Err(invalid("unexpected reply to PTTL")),
    };
    Ok(Some((Replies { fields, pttl }, at)))
}

/// One RESP2 element, with ranges into the buffer.
#[derive(Debug, PartialEq)]
enum Element {
    Simple(Range<usize>),
    Error(Range<usize>),
    Int(i64),
    Bulk(Range<usize>),
    Nil,
    /// An array's header: its elements follow.
    Array(i64),
}

/// The element at `at` and where the next one starts: `Ok(None)` when `buf` does not hold all
/// of it yet.
fn element(buf: &[u8], at: usize) -> io::Result<Option<(Element, usize)>> {
    let Some(&kind) = buf.get(at) else {
        return Ok(None);
    };
    let Some(nl) = buf[at..].iter().position(|&b| b == b'\n') else {
        if buf.len() - at > MAX_LINE {
            return Err(invalid("reply line too long"));
        }
        return Ok(None);
    };
    let end = at + nl;
    if nl < 2 || buf[end - 1] != b'\r' {
        return Err(invalid("reply line without CRLF"));
    }
    let line = at + 1..end - 1;
    let next = end + 1;
    Ok(Some(match kind {
        b'+' => (Element::Simple(line), next),
        b'-' => (Element::Error(line), next),
        b':' => (Element::Int(int(&buf[line])?), next),
        b'*' => (Element::Array(int(&buf[line])?), next),
        b'$' => match int(&buf[line])? {
            -1 => (Element::Nil, next),
            n if n < 0 => return Err(invalid("negative bulk length")),
            n => {
                let stop = usize::try_from(n)
                    .ok()
                    .and_then(|n| next.checked_add(n))
                    .ok_or_else(|| invalid("bulk length overflows"))?;
                if buf.len() < stop + 2 {
                    return Ok(None);
                }
                if &buf[stop..stop + 2] != b"\r\n" {
                    return Err(invalid("bulk string without CRLF"));
                }
                (Element::Bulk(next..stop), stop + 2)
            }
        },
        _ => return Err(invalid("unknown reply type")),
    }))
}

/// A decimal integer of a reply line.
fn int(text: &[u8]) -> io::Result<i64> {
    let (negative, digits) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(invalid("bad integer"));
    }
    let n = digits
        .iter()
        .fold(0i64, |n, d| n * 10 + i64::from(d - b'0'));
    Ok(if negative { -n } else { n })
}

fn invalid(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

#[cfg(test)]
mod tests;
