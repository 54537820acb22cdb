//! A lean HTTP/2 client (cleartext with prior knowledge, or over TLS with ALPN `h2`) that
//! sends every call to one peer over one connection, written for the sidecar-to-sidecar hop
//! of service invocation.
//!
//! One task per connection owns the socket. Callers hand it their requests through a channel;
//! it writes every request queued since its last write in one write, reads answers, and
//! hands each caller its answer head with a body that streams. Many calls in flight thus
//! share each read and each write, where a pool of HTTP/1.1 connections spends one of each
//! per call on both sides.
//!
//! What it does: request and answer bodies of any length, streamed both ways at once; flow
//! control both ways (1 MiB per stream and 4 MiB per connection offered to the server, given
//! back as the caller reads; the server's windows respected); trailers both ways; HPACK with
//! dynamic tables both ways; PING, SETTINGS (the server's stream limit respected, calls past
//! it wait their turn), `RST_STREAM`, GOAWAY. A connection that fails or is told to go away
//! takes no new calls; the next call opens a new one. A call that never left (the connection
//! could not be made, or closed before the call was written) comes back with its body
//! untouched, so it can be sent elsewhere. A dropped answer body resets its stream.
//!
//! A peer that vanishes without closing the connection (its machine gone, a partition) would
//! otherwise hold every call on it, and every call after them, until TCP gives up, which for
//! data in flight takes many minutes. So while calls are open the connection checks that the
//! peer still speaks: when nothing at all has been read for one interval ([`PING_EVERY`] by
//! default), it sends a PING, and when the next interval ends with still nothing read, the
//! connection fails. Its calls fail with a time-out, calls not written yet go to a new
//! connection. A peer that is only slow to answer (a long-running call) answers the PING and
//! keeps its connection. An idle connection sets no timer.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasherDefault;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::task::AtomicWaker;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::Body;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use crate::body::{Queue, RecvBody, Release};
use crate::frame::*;
use crate::hpack::{self, Field, Name, Pseudo};

/// The flow-control window offered on each stream.
const STREAM_WINDOW: u32 = 1 << 20;
/// The flow-control window offered on the connection.
const CONN_WINDOW: u32 = 4 << 20;
/// The largest answer header block accepted.
const MAX_HEADER_BLOCK: usize = 1 << 20;
/// Past this much unsent output, request bodies are not polled until the socket drains.
const WRITE_HIGH: usize = 256 << 10;
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle time before TCP keepalive probes start on a connection.
const KEEPALIVE: Duration = Duration::from_secs(60);
/// The last stream id a connection uses before it takes no more calls.
const LAST_STREAM_ID: u32 = (1 << 31) - 1;
/// While calls are open, how long the connection may go without reading anything before it
/// sends a PING; one more such interval without a byte, and the peer is taken for gone.
pub const PING_EVERY: Duration = Duration::from_secs(10);

/// A boxed error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a call failed.
#[derive(Debug)]
pub enum SendError<B> {
    /// The call never left: the connection could not be made, or closed before the call was
    /// written. The request comes back as it was given.
    NotSent {
        /// What went wrong.
        error: io::Error,
        /// The request, its body unread.
        request: Box<Request<B>>,
    },
    /// The call failed after (part of) it was sent.
    Failed(io::Error),
}

impl<B> SendError<B> {
    /// The error, without the request.
    pub fn into_error(self) -> io::Error {
        match self {
            SendError::NotSent { error, .. } | SendError::Failed(error) => error,
        }
    }
}

/// The kind of error of a call that a closing connection did not take: the call is tried
/// once more on a new connection.
const NOT_TAKEN: io::ErrorKind = io::ErrorKind::ConnectionAborted;

type Reply<B> = oneshot::Sender<Result<Response<RecvBody>, SendError<B>>>;

/// A call on its way to a connection.
struct Call<B> {
    parts: http::request::Parts,
    body: B,
    reply: Reply<B>,
}

impl<B> Call<B> {
    /// Sends the call back unsent.
    fn refuse(self, kind: io::ErrorKind, why: &str) {
        let _ = self.reply.send(Err(SendError::NotSent {
            error: io::Error::new(kind, why.to_owned()),
            request: Box::new(Request::from_parts(self.parts, self.body)),
        }));
    }
}

/// One connection's entry in the client.
struct Handle<B> {
    calls: mpsc::UnboundedSender<Call<B>>,
    open: Arc<AtomicBool>,
}

/// The client: one multiplexed connection per peer address (`host:port`), opened on first use
/// and replaced when it fails.
pub struct Client<B> {
    /// Looked up on every call: foldhash, not SipHash (the addresses are the caller's peers).
    conns: RwLock<HashMap<String, Arc<Handle<B>>, foldhash::fast::RandomState>>,
    ping_every: Duration,
    /// TLS over each connection, when set ([`Client::tls`]).
    tls: Option<tokio_rustls::TlsConnector>,
}

impl<B> Default for Client<B> {
    fn default() -> Self {
        Client::with_ping_interval(PING_EVERY)
    }
}

impl<B> Client<B> {
    /// A client whose connections check their peer after `every` without a byte read while
    /// calls are open (see the module's documentation); the default is [`PING_EVERY`].
    pub fn with_ping_interval(every: Duration) -> Self {
        Client {
            conns: RwLock::new(HashMap::default()),
            ping_every: every,
            tls: None,
        }
    }

    /// This client over TLS with `config` (its ALPN set to `h2`). A peer that does not agree
    /// to HTTP/2 in the handshake gets no call: the call comes back unsent with an error of
    /// kind [`NO_HTTP2`], so that it can be sent some other way.
    pub fn tls(mut self, mut config: rustls::ClientConfig) -> Self {
        config.alpn_protocols = vec![b"h2".to_vec()];
        self.tls = Some(tokio_rustls::TlsConnector::from(Arc::new(config)));
        self
    }
}

/// The kind of error of a call refused because the peer, over TLS, did not agree to HTTP/2.
pub const NO_HTTP2: io::ErrorKind = io::ErrorKind::Unsupported;

/// The TLS handshake over `tcp` to `address` (`host:port`; the host names the server for
/// the certificate check), which must settle on HTTP/2.
async fn handshake(
    connector: &tokio_rustls::TlsConnector,
    address: &str,
    tcp: TcpStream,
) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = rustls::pki_types::ServerName::try_from(host.to_owned()).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{host} cannot name a TLS server: {e}"),
        )
    })?;
    let tls = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, tcp))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the TLS handshake timed out"))??;
    if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
        return Err(io::Error::new(
            NO_HTTP2,
            "the peer did not agree to HTTP/2 in the TLS handshake (ALPN)",
        ));
    }
    Ok(tls)
}

impl<B> Client<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    /// Sends `req` to `address` (`host:port`); the URI's path and query are sent, its
    /// authority (or else `address`) is the `:authority`. Resolves with the answer's head once
    /// it arrives; the body streams.
    pub async fn send(
        &self,
        address: &str,
        mut req: Request<B>,
    ) -> Result<Response<RecvBody>, SendError<B>> {
        // A connection found open may close before it takes the call; then a new one does.
        for _ in 0..2 {
            let (parts, body) = req.into_parts();
            let (reply, answer) = oneshot::channel();
            let handle = self.handle(address);
            match handle.calls.send(Call { parts, body, reply }) {
                Ok(()) => match answer.await {
                    Ok(Err(SendError::NotSent { error, request })) if error.kind() == NOT_TAKEN => {
                        req = *request;
                    }
                    Ok(answer) => return answer,
                    Err(_) => {
                        return Err(SendError::Failed(io::Error::other(
                            "the HTTP/2 connection ended before the call was answered",
                        )));
                    }
                },
                Err(mpsc::error::SendError(back)) => {
                    handle.open.store(false, Ordering::Release);
                    req = Request::from_parts(back.parts, back.body);
                }
            }
        }
        Err(SendError::NotSent {
            error: io::Error::new(
                NOT_TAKEN,
                "the HTTP/2 connection closed before the call was sent",
            ),
            request: Box::new(req),
        })
    }

    /// The open connection to `address`, or a new one (connecting in the background; calls
    /// queue meanwhile).
    fn handle(&self, address: &str) -> Arc<Handle<B>> {
        if let Some(h) = read(&self.conns).get(address)
            && h.open.load(Ordering::Acquire)
        {
            return h.clone();
        }
        let mut conns = self.conns.write().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = conns.get(address)
            && h.open.load(Ordering::Acquire)
        {
            return h.clone();
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let open = Arc::new(AtomicBool::new(true));
        let handle = Arc::new(Handle {
            calls: tx,
            open: open.clone(),
        });
        conns.insert(address.to_owned(), handle.clone());
        tokio::spawn(run(
            address.to_owned(),
            rx,
            open,
            self.ping_every,
            self.tls.clone(),
        ));
        handle
    }
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A connection's life: connect, serve calls until it fails or goes away, then send back
/// every call it did not take.
async fn run<B>(
    address: String,
    mut rx: mpsc::UnboundedReceiver<Call<B>>,
    open: Arc<AtomicBool>,
    ping_every: Duration,
    tls: Option<tokio_rustls::TlsConnector>,
) where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&address)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => {
            open.store(false, Ordering::Release);
            return refuse_all(&mut rx, VecDeque::new(), &e);
        }
        Err(_) => {
            open.store(false, Ordering::Release);
            let e = io::Error::new(io::ErrorKind::TimedOut, "connecting timed out");
            return refuse_all(&mut rx, VecDeque::new(), &e);
        }
    };
    let _ = tcp.set_nodelay(true);
    // A peer that vanishes without closing (its machine gone, a partition) is noticed by TCP
    // keepalive while the connection is idle, and by the PING check while calls are open; the
    // connection then fails and the next call opens a new one.
    let keepalive = socket2::TcpKeepalive::new().with_time(KEEPALIVE);
    let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive);
    let io = match &tls {
        None => crate::Transport::Tcp(tcp),
        Some(connector) => match handshake(connector, &address, tcp).await {
            Ok(tls) => tls.into(),
            Err(e) => {
                open.store(false, Ordering::Release);
                return refuse_all(&mut rx, VecDeque::new(), &e);
            }
        },
    };
    let mut conn = Conn::new(io, address, rx, open, ping_every);
    std::future::poll_fn(|cx| conn.poll(cx)).await;
    conn.open.store(false, Ordering::Release);
    let waiting = std::mem::take(&mut conn.waiting);
    let error = conn
        .error
        .take()
        .unwrap_or_else(|| io::Error::new(io::ErrorKind::ConnectionAborted, "connection closed"));
    conn.fail_streams(&error);
    // Calls not written yet go to a new connection.
    refuse_all(
        &mut conn.rx,
        waiting,
        &io::Error::new(NOT_TAKEN, error.to_string()),
    );
}

/// Sends back, unsent, every call still queued.
fn refuse_all<B>(
    rx: &mut mpsc::UnboundedReceiver<Call<B>>,
    waiting: VecDeque<Call<B>>,
    error: &io::Error,
) {
    rx.close();
    let refuse = |call: Call<B>| call.refuse(error.kind(), &error.to_string());
    waiting.into_iter().for_each(refuse);
    while let Ok(call) = rx.try_recv() {
        refuse(call);
    }
}

/// What answer bodies share with their connection.
struct Shared {
    released: Mutex<Vec<(u32, usize)>>,
    abandoned: Mutex<Vec<u32>>,
    waker: AtomicWaker,
}

impl Release for Shared {
    fn release(&self, id: u32, n: usize) {
        lock(&self.released).push((id, n));
        self.waker.wake();
    }

    fn abandoned(&self, id: u32) {
        lock(&self.abandoned).push(id);
        self.waker.wake();
    }
}

/// An answer whose head has arrived, handed over at the end of the current read together
/// with the data that came with it.
struct Parked {
    head: http::response::Parts,
    data: Option<BytesMut>,
    trailers: Option<HeaderMap>,
}

struct Stream<B> {
    /// Until the answer's head is handed over.
    reply: Option<Reply<B>>,
    /// The request body, while it is being sent.
    body: Option<B>,
    /// Request data the send windows have not let out yet, and what follows it.
    held: Option<Bytes>,
    held_trailers: Option<HeaderMap>,
    held_end: bool,
    send_window: i64,
    recv_window: i64,
    unreleased: usize,
    parked: Option<Parked>,
    queue: Option<Arc<Queue>>,
    remote_closed: bool,
    local_closed: bool,
}

impl<B> Stream<B> {
    /// Fails whatever waits on the stream.
    fn fail(&mut self, error: &io::Error) {
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(Err(SendError::Failed(io::Error::new(
                error.kind(),
                error.to_string(),
            ))));
        }
        if let Some(q) = self.queue.take() {
            let mut state = q.lock();
            state.reset = true;
            Queue::notify(&mut state);
        }
    }
}

struct Conn<B> {
    io: crate::Transport,
    authority: http::HeaderValue,
    rx: mpsc::UnboundedReceiver<Call<B>>,
    open: Arc<AtomicBool>,
    /// Calls past the server's stream limit.
    waiting: VecDeque<Call<B>>,
    streams: HashMap<u32, Stream<B>, BuildHasherDefault<crate::IdHasher>>,
    /// Streams whose request body is still being sent.
    sending: Vec<u32>,
    /// Streams whose answer head arrived during the current read.
    arrived: Vec<u32>,
    shared: Arc<Shared>,
    rbuf: BytesMut,
    out: BytesMut,
    scratch: BytesMut,
    enc: hpack::Encoder,
    dec: hpack::Decoder,
    blocks: HeaderBlocks,
    next_id: u32,
    /// The server's first SETTINGS arrived: until then no stream is opened, so that its
    /// stream limit is known before calls go out.
    settings_known: bool,
    max_streams: usize,
    max_frame: usize,
    peer_initial_window: i64,
    conn_send: i64,
    conn_recv: i64,
    conn_unreleased: usize,
    /// The server sent GOAWAY, or the connection failed: no new calls.
    draining: bool,
    error: Option<io::Error>,
    /// The peer's liveness check: reads so far, reads at the last check, whether a PING
    /// went out at the last check, and the timer (armed only while calls are open).
    reads: u64,
    reads_checked: u64,
    pinged: bool,
    ping_every: Duration,
    check: Pin<Box<tokio::time::Sleep>>,
    check_armed: bool,
}

impl<B> Conn<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    fn new(
        io: crate::Transport,
        address: String,
        rx: mpsc::UnboundedReceiver<Call<B>>,
        open: Arc<AtomicBool>,
        ping_every: Duration,
    ) -> Self {
        let mut out = BytesMut::with_capacity(4096);
        out.put_slice(PREFACE);
        let settings = [
            (SETTINGS_ENABLE_PUSH, 0),
            (SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW),
            (SETTINGS_MAX_HEADER_LIST_SIZE, MAX_HEADER_BLOCK as u32),
        ];
        put_settings(&mut out, &settings);
        put_window_update(
            &mut out,
            0,
            (i64::from(CONN_WINDOW) - DEFAULT_WINDOW) as usize,
        );
        let authority = http::HeaderValue::from_str(&address)
            .unwrap_or_else(|_| http::HeaderValue::from_static("localhost"));
        Conn {
            io,
            authority,
            rx,
            open,
            waiting: VecDeque::new(),
            streams: HashMap::default(),
            sending: Vec::new(),
            arrived: Vec::new(),
            shared: Arc::new(Shared {
                released: Mutex::new(Vec::new()),
                abandoned: Mutex::new(Vec::new()),
                waker: AtomicWaker::new(),
            }),
            rbuf: BytesMut::with_capacity(MAX_FRAME + 9),
            out,
            scratch: BytesMut::new(),
            enc: hpack::Encoder::default(),
            dec: hpack::Decoder::default(),
            blocks: HeaderBlocks::new(MAX_HEADER_BLOCK),
            next_id: 1,
            settings_known: false,
            max_streams: usize::MAX,
            max_frame: MAX_FRAME,
            peer_initial_window: DEFAULT_WINDOW,
            conn_send: DEFAULT_WINDOW,
            conn_recv: i64::from(CONN_WINDOW),
            conn_unreleased: 0,
            draining: false,
            error: None,
            reads: 0,
            reads_checked: 0,
            pinged: false,
            ping_every,
            check: Box::pin(tokio::time::sleep(ping_every)),
            check_armed: false,
        }
    }

    /// Checks on the peer when its interval is up; an error once it is taken for gone.
    fn poll_check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let busy = !self.streams.is_empty() || !self.waiting.is_empty();
        if !self.check_armed {
            if !busy {
                return Ok(());
            }
            // Calls are open again: the first check is one interval away.
            self.check_armed = true;
            self.reads_checked = self.reads;
            self.pinged = false;
            self.rearm();
        }
        while self.check.as_mut().poll(cx).is_ready() {
            if !busy {
                self.check_armed = false;
                return Ok(());
            }
            if self.reads != self.reads_checked {
                self.reads_checked = self.reads;
                self.pinged = false;
            } else if self.pinged {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "the peer sent nothing, not even a PING answer, for {} ms; the HTTP/2 connection is taken for dead",
                        (2 * self.ping_every).as_millis()
                    ),
                ));
            } else {
                put_head(&mut self.out, 8, PING, 0, 0);
                self.out.put_slice(b"tandem\0\0");
                self.pinged = true;
            }
            self.rearm();
        }
        Ok(())
    }

    fn rearm(&mut self) {
        let at = tokio::time::Instant::now() + self.ping_every;
        self.check.as_mut().reset(at);
    }

    /// Drives the connection; `Ready` once it is over.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.shared.waker.register(cx.waker());
        let mut checked = false;
        loop {
            let mut again = false;
            // New calls.
            if !self.draining {
                while let Poll::Ready(next) = self.rx.poll_recv(cx) {
                    match next {
                        Some(call) => self.waiting.push_back(call),
                        None => {
                            self.draining = true;
                            break;
                        }
                    }
                }
            }
            self.start_waiting();
            // Answers.
            if self.out.len() < WRITE_HIGH {
                if self.rbuf.capacity() - self.rbuf.len() < 4096 {
                    self.rbuf.reserve(MAX_FRAME + 9);
                }
                match self.io.poll_read_buf(cx, &mut self.rbuf) {
                    Poll::Ready(Ok(0)) => {
                        self.error = Some(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the peer closed the HTTP/2 connection",
                        ));
                        return Poll::Ready(());
                    }
                    Poll::Ready(Err(e)) => {
                        self.error = Some(e);
                        return Poll::Ready(());
                    }
                    Poll::Ready(Ok(_)) => {
                        self.reads += 1;
                        if let Err(code) = self.on_read() {
                            self.go_away(code);
                            self.io.write_now(&mut self.out);
                            return Poll::Ready(());
                        }
                        again = true;
                    }
                    Poll::Pending => {}
                }
            }
            self.take_releases();
            self.send_bodies(cx);
            // Once per wake-up, after the reads: the check's PING goes out with this write.
            if !checked {
                checked = true;
                if let Err(e) = self.poll_check(cx) {
                    self.error = Some(e);
                    return Poll::Ready(());
                }
            }
            // Past the mark, reading and request bodies were skipped: once the buffer is out,
            // go round again, or nothing would wake them.
            let was_full = self.out.len() >= WRITE_HIGH;
            match self.poll_flush(cx) {
                Poll::Ready(Err(e)) => {
                    self.error = Some(e);
                    return Poll::Ready(());
                }
                Poll::Ready(Ok(())) => again |= was_full,
                Poll::Pending => {}
            }
            if self.draining && self.streams.is_empty() && self.out.is_empty() {
                return Poll::Ready(());
            }
            if !again {
                return Poll::Pending;
            }
        }
    }

    /// Opens streams for waiting calls, as far as the server's limit allows.
    fn start_waiting(&mut self) {
        while self.settings_known && self.streams.len() < self.max_streams && !self.draining {
            let Some(call) = self.waiting.pop_front() else {
                break;
            };
            if call.reply.is_closed() {
                continue;
            }
            let id = self.next_id;
            if id >= LAST_STREAM_ID {
                self.waiting.push_front(call);
                self.stop_taking();
                break;
            }
            self.next_id += 2;
            let Call { parts, body, reply } = call;
            let end = body.is_end_stream();
            self.headers(id, end, &parts);
            let mut stream = Stream {
                reply: Some(reply),
                body: None,
                held: None,
                held_trailers: None,
                held_end: false,
                send_window: self.peer_initial_window,
                recv_window: i64::from(STREAM_WINDOW),
                unreleased: 0,
                parked: None,
                queue: None,
                remote_closed: false,
                local_closed: end,
            };
            if !end {
                stream.body = Some(body);
                self.sending.push(id);
            }
            self.streams.insert(id, stream);
        }
        if self.draining {
            for call in std::mem::take(&mut self.waiting) {
                call.refuse(NOT_TAKEN, "the HTTP/2 connection is going away");
            }
        }
    }

    /// Takes no more calls: the next ones open a new connection.
    fn stop_taking(&mut self) {
        self.open.store(false, Ordering::Release);
        self.draining = true;
        self.rx.close();
        while let Ok(call) = self.rx.try_recv() {
            self.waiting.push_back(call);
        }
    }

    /// A request's header block.
    fn headers(&mut self, id: u32, end_stream: bool, parts: &http::request::Parts) {
        let mut block = std::mem::take(&mut self.scratch);
        block.clear();
        self.enc.begin(&mut block);
        let enc = &mut self.enc;
        enc.pseudo(&mut block, ":method", parts.method.as_str().as_bytes());
        let scheme = parts.uri.scheme_str().unwrap_or("http");
        enc.pseudo(&mut block, ":scheme", scheme.as_bytes());
        match parts.uri.authority() {
            Some(a) => enc.pseudo(&mut block, ":authority", a.as_str().as_bytes()),
            None => enc.pseudo(&mut block, ":authority", self.authority.as_bytes()),
        }
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        enc.pseudo(&mut block, ":path", path.as_bytes());
        for (name, value) in &parts.headers {
            if !connection_specific(name) && name != http::header::HOST {
                enc.header(&mut block, name, value);
            }
        }
        self.header_frames(id, end_stream, &block);
        self.scratch = block;
    }

    fn header_frames(&mut self, id: u32, end_stream: bool, block: &[u8]) {
        put_header_block(&mut self.out, self.max_frame, id, end_stream, block);
    }

    /// Writes what request bodies have ready, as far as the windows allow.
    fn send_bodies(&mut self, cx: &mut Context<'_>) {
        if self.sending.is_empty() {
            return;
        }
        let mut sending = std::mem::take(&mut self.sending);
        sending.retain(|&id| {
            let Some(st) = self.streams.get_mut(&id) else {
                return false;
            };
            let mut trailers_out = None;
            let done = send_body(
                id,
                st,
                &mut self.out,
                &mut self.conn_send,
                self.max_frame,
                cx,
                &mut trailers_out,
            );
            if let Some(t) = trailers_out {
                let mut block = std::mem::take(&mut self.scratch);
                block.clear();
                self.enc.begin(&mut block);
                self.enc.fields(&mut block, &t);
                self.header_frames(id, true, &block);
                self.scratch = block;
            }
            if done && let Some(st) = self.streams.get_mut(&id) {
                st.local_closed = true;
                if st.remote_closed && st.reply.is_none() && st.parked.is_none() {
                    self.streams.remove(&id);
                }
            }
            !done
        });
        sending.append(&mut self.sending);
        self.sending = sending;
    }

    /// Writes what is buffered; `Ready(Ok(()))` once it is all out.
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io.poll_write_all(&mut self.out, cx)
    }

    fn go_away(&mut self, code: u32) {
        put_goaway(&mut self.out, 0, code);
        self.error = Some(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the peer broke the HTTP/2 protocol (error {code:#x})"),
        ));
    }

    /// Resets stream `id` with `code` and forgets it; whatever still waits on it fails with
    /// `why`.
    fn reset(&mut self, id: u32, code: u32, why: &str) {
        put_rst(&mut self.out, id, code);
        if let Some(mut st) = self.streams.remove(&id) {
            st.fail(&io::Error::other(why.to_owned()));
        }
        self.sending.retain(|&s| s != id);
    }

    /// Parses every complete frame read, then hands over the answers that arrived.
    fn on_read(&mut self) -> Result<(), u32> {
        let mut rbuf = std::mem::take(&mut self.rbuf);
        let mut result = Ok(());
        loop {
            let (kind, flags, id, len) = match next(&rbuf) {
                Ok(Some(head)) => head,
                Ok(None) => break,
                Err(code) => {
                    result = Err(code);
                    break;
                }
            };
            result = self.frame(kind, flags, id, &rbuf[9..9 + len]);
            rbuf.advance(9 + len);
            if result.is_err() {
                break;
            }
        }
        self.rbuf = rbuf;
        self.hand_over();
        result
    }

    fn frame(&mut self, kind: u8, flags: u8, id: u32, payload: &[u8]) -> Result<(), u32> {
        self.blocks.check(kind, id)?;
        match kind {
            DATA => self.on_data(flags, id, payload),
            HEADERS | CONTINUATION => {
                let block = if kind == HEADERS {
                    self.blocks.headers(flags, id, payload)?
                } else {
                    self.blocks.continuation(flags, payload)?
                };
                match block {
                    Some((id, end_stream, block)) => self.on_header_block(id, end_stream, &block),
                    None => Ok(()),
                }
            }
            SETTINGS => self.on_settings(flags, id, payload),
            PING => on_ping(&mut self.out, flags, id, payload),
            WINDOW_UPDATE => self.on_window_update(id, payload),
            RST_STREAM => {
                if payload.len() != 4 {
                    return Err(FRAME_SIZE_ERROR);
                }
                let code = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                if let Some(mut st) = self.streams.remove(&id) {
                    let kind = if code == REFUSED_STREAM {
                        io::ErrorKind::ConnectionRefused
                    } else {
                        io::ErrorKind::ConnectionReset
                    };
                    st.fail(&io::Error::new(
                        kind,
                        format!("the peer reset the HTTP/2 stream (error {code:#x})"),
                    ));
                }
                Ok(())
            }
            GOAWAY => {
                if payload.len() < 8 {
                    return Err(FRAME_SIZE_ERROR);
                }
                let last = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]])
                    & 0x7fff_ffff;
                self.stop_taking();
                // Streams past the last one the server took were not processed.
                let unprocessed: Vec<u32> =
                    self.streams.keys().copied().filter(|&s| s > last).collect();
                for s in unprocessed {
                    if let Some(mut st) = self.streams.remove(&s) {
                        st.fail(&io::Error::new(
                            io::ErrorKind::ConnectionAborted,
                            "the peer went away before taking the call",
                        ));
                    }
                }
                Ok(())
            }
            PUSH_PROMISE => Err(PROTOCOL_ERROR),
            _ => Ok(()),
        }
    }

    fn on_settings(&mut self, flags: u8, id: u32, payload: &[u8]) -> Result<(), u32> {
        if id != 0 {
            return Err(PROTOCOL_ERROR);
        }
        if flags & ACK != 0 {
            return Ok(());
        }
        for (key, value) in settings(payload)? {
            match key {
                SETTINGS_HEADER_TABLE_SIZE => self.enc.set_peer_table_size(value as usize),
                SETTINGS_MAX_CONCURRENT_STREAMS => self.max_streams = value as usize,
                SETTINGS_INITIAL_WINDOW_SIZE => {
                    let value = i64::from(value);
                    if value > MAX_WINDOW {
                        return Err(FLOW_CONTROL_ERROR);
                    }
                    let delta = value - self.peer_initial_window;
                    self.peer_initial_window = value;
                    for st in self.streams.values_mut() {
                        st.send_window += delta;
                    }
                }
                SETTINGS_MAX_FRAME_SIZE => {
                    if !(16_384..=16_777_215).contains(&value) {
                        return Err(PROTOCOL_ERROR);
                    }
                    self.max_frame = value as usize;
                }
                _ => {}
            }
        }
        put_head(&mut self.out, 0, SETTINGS, ACK, 0);
        self.settings_known = true;
        Ok(())
    }

    fn on_window_update(&mut self, id: u32, payload: &[u8]) -> Result<(), u32> {
        let inc = window_increment(payload)?;
        if id == 0 {
            self.conn_send += inc;
            if inc == 0 || self.conn_send > MAX_WINDOW {
                return Err(FLOW_CONTROL_ERROR);
            }
        } else if let Some(st) = self.streams.get_mut(&id) {
            st.send_window += inc;
            if inc == 0 || st.send_window > MAX_WINDOW {
                self.reset(id, FLOW_CONTROL_ERROR, "HTTP/2 flow-control error");
            }
        }
        Ok(())
    }

    fn on_data(&mut self, flags: u8, id: u32, payload: &[u8]) -> Result<(), u32> {
        let len = payload.len();
        if len as i64 > self.conn_recv {
            return Err(FLOW_CONTROL_ERROR);
        }
        self.conn_recv -= len as i64;
        let data = unpad(flags, payload)?;
        self.conn_unreleased += len - data.len();
        let end = flags & END_STREAM != 0;
        let Some(st) = self.streams.get_mut(&id) else {
            self.conn_unreleased += data.len();
            self.give_back_connection();
            return Ok(());
        };
        if len as i64 > st.recv_window || st.reply.is_some() && st.parked.is_none() {
            // Past the window, or data before the answer's head.
            self.conn_unreleased += data.len();
            let code = if st.parked.is_none() {
                PROTOCOL_ERROR
            } else {
                FLOW_CONTROL_ERROR
            };
            self.reset(id, code, "the peer broke HTTP/2 framing on the stream");
            self.give_back_connection();
            return Ok(());
        }
        st.recv_window -= len as i64;
        if let Some(parked) = &mut st.parked {
            if !data.is_empty() {
                parked
                    .data
                    .get_or_insert_with(BytesMut::new)
                    .extend_from_slice(data);
            }
        } else if let Some(queue) = &st.queue {
            let mut state = queue.lock();
            if state.dropped {
                self.conn_unreleased += data.len();
            } else {
                if !data.is_empty() {
                    state.data.push_back(Bytes::copy_from_slice(data));
                }
                state.end |= end;
                Queue::notify(&mut state);
            }
        } else {
            self.conn_unreleased += data.len();
        }
        if end {
            self.remote_end(id);
        }
        self.give_back_connection();
        Ok(())
    }

    /// The server ended stream `id`.
    fn remote_end(&mut self, id: u32) {
        let Some(st) = self.streams.get_mut(&id) else {
            return;
        };
        st.remote_closed = true;
        st.queue = None;
        if st.parked.is_none() && st.reply.is_none() {
            if st.local_closed {
                self.streams.remove(&id);
            } else {
                // Answered before the request ended: the rest is not needed.
                self.reset(id, NO_ERROR, "answered");
            }
        }
    }

    fn on_header_block(&mut self, id: u32, end_stream: bool, block: &[u8]) -> Result<(), u32> {
        let mut head = AnswerHead::default();
        self.dec
            .decode(block, |f| head.add(f))
            .map_err(|_| COMPRESSION_ERROR)?;
        let Some(st) = self.streams.get_mut(&id) else {
            return Ok(());
        };
        if st.reply.is_none() || st.parked.is_some() {
            // Trailers.
            if head.malformed || head.status.is_some() || !end_stream {
                self.reset(id, PROTOCOL_ERROR, "malformed HTTP/2 trailers");
                return Ok(());
            }
            if let Some(parked) = &mut st.parked {
                parked.trailers = Some(head.headers);
            } else if let Some(queue) = &st.queue {
                let mut state = queue.lock();
                state.trailers = Some(head.headers);
                state.end = true;
                Queue::notify(&mut state);
            }
            self.remote_end(id);
            return Ok(());
        }
        let status = match head.status {
            Some(s) if !head.malformed => s,
            _ => {
                self.reset(id, PROTOCOL_ERROR, "malformed HTTP/2 answer head");
                return Ok(());
            }
        };
        if status.is_informational() {
            return Ok(());
        }
        let (mut parts, ()) = Response::new(()).into_parts();
        parts.status = status;
        parts.version = http::Version::HTTP_2;
        parts.headers = head.headers;
        st.parked = Some(Parked {
            head: parts,
            data: None,
            trailers: None,
        });
        self.arrived.push(id);
        if end_stream {
            self.remote_end(id);
        }
        Ok(())
    }

    /// Hands each answer whose head arrived during the read to its caller: whole when the
    /// stream has ended, streaming otherwise.
    fn hand_over(&mut self) {
        let mut arrived = std::mem::take(&mut self.arrived);
        for id in arrived.drain(..) {
            let Some(st) = self.streams.get_mut(&id) else {
                continue;
            };
            let (Some(parked), Some(reply)) = (st.parked.take(), st.reply.take()) else {
                continue;
            };
            let body = if st.remote_closed {
                let data = parked.data.map(BytesMut::freeze);
                self.conn_unreleased += data.as_ref().map_or(0, Bytes::len);
                RecvBody::full(data, parked.trailers)
            } else {
                let queue = Arc::new(Queue::default());
                if let Some(d) = parked.data {
                    queue.lock().data.push_back(d.freeze());
                }
                st.queue = Some(queue.clone());
                RecvBody::streaming(queue, self.shared.clone() as Arc<dyn Release>, id)
            };
            let sent = reply.send(Ok(Response::from_parts(parked.head, body)));
            let done = st.remote_closed && st.local_closed;
            if sent.is_err() && !st.remote_closed {
                self.reset(id, CANCEL, "the caller gave up");
            } else if done {
                self.streams.remove(&id);
            } else if st.remote_closed {
                // The answer is complete before the request: the rest is not needed.
                self.reset(id, NO_ERROR, "answered");
            }
        }
        self.arrived = arrived;
        self.give_back_connection();
    }

    /// Gives back what answer bodies have read, and resets the streams of dropped ones.
    fn take_releases(&mut self) {
        let abandoned = std::mem::take(&mut *lock(&self.shared.abandoned));
        for id in abandoned {
            if self.streams.get(&id).is_some_and(|st| !st.remote_closed) {
                self.reset(id, CANCEL, "the answer body was dropped");
            }
        }
        let released = std::mem::take(&mut *lock(&self.shared.released));
        for (id, n) in released {
            self.conn_unreleased += n;
            if let Some(st) = self.streams.get_mut(&id)
                && !st.remote_closed
            {
                st.unreleased += n;
                if st.unreleased >= STREAM_WINDOW as usize / 2 {
                    let n = std::mem::take(&mut st.unreleased);
                    st.recv_window += n as i64;
                    put_window_update(&mut self.out, id, n);
                }
            }
        }
        self.give_back_connection();
    }

    fn give_back_connection(&mut self) {
        if self.conn_unreleased >= CONN_WINDOW as usize / 2 {
            let n = std::mem::take(&mut self.conn_unreleased);
            self.conn_recv += n as i64;
            put_window_update(&mut self.out, 0, n);
        }
    }

    /// Fails every stream in flight.
    fn fail_streams(&mut self, error: &io::Error) {
        for (_, mut st) in self.streams.drain() {
            st.fail(error);
        }
    }
}

/// Polls one request body and writes what it yields; true once the request has ended.
/// Trailers are handed back in `trailers` for the caller to encode.
fn send_body<B>(
    id: u32,
    st: &mut Stream<B>,
    out: &mut BytesMut,
    conn_send: &mut i64,
    max_frame: usize,
    cx: &mut Context<'_>,
    trailers: &mut Option<HeaderMap>,
) -> bool
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    loop {
        if let Some(data) = st.held.take() {
            let end = st.held_end && st.held_trailers.is_none();
            st.held = put_data(
                out,
                max_frame,
                id,
                data,
                &mut st.send_window,
                conn_send,
                end,
            );
            if st.held.is_some() {
                return false;
            }
            if end {
                return true;
            }
        }
        if let Some(t) = st.held_trailers.take() {
            *trailers = Some(t);
            return true;
        }
        if st.held_end {
            put_head(out, 0, DATA, END_STREAM, id);
            return true;
        }
        let Some(body) = &mut st.body else {
            return true;
        };
        if out.len() >= WRITE_HIGH {
            return false;
        }
        match Pin::new(body).poll_frame(cx) {
            Poll::Pending => return false,
            Poll::Ready(None) => {
                st.body = None;
                st.held_end = true;
            }
            Poll::Ready(Some(Err(_))) => {
                // The caller's body failed: the server must not take a truncated request.
                st.body = None;
                put_rst(out, id, CANCEL);
                st.fail(&io::Error::other("the request body failed"));
                st.remote_closed = true;
                return true;
            }
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => {
                    if st.body.as_ref().is_some_and(Body::is_end_stream) {
                        st.body = None;
                        st.held_end = true;
                    }
                    if !data.is_empty() {
                        st.held = Some(data);
                    }
                }
                Err(frame) => {
                    st.body = None;
                    st.held_end = true;
                    if let Ok(t) = frame.into_trailers() {
                        st.held_trailers = Some(t);
                    }
                }
            },
        }
    }
}

/// An answer head being decoded.
#[derive(Default)]
struct AnswerHead {
    status: Option<StatusCode>,
    headers: HeaderMap,
    malformed: bool,
}

impl AnswerHead {
    fn add(&mut self, f: Cow<'_, Field>) {
        let Some(value) = &f.value else {
            self.malformed = true;
            return;
        };
        match &f.name {
            Name::Pseudo(Pseudo::Status) => match StatusCode::from_bytes(value.as_bytes()) {
                Ok(s) if self.status.is_none() && self.headers.is_empty() => {
                    self.status = Some(s);
                }
                _ => self.malformed = true,
            },
            Name::Pseudo(_) | Name::Invalid(_) => self.malformed = true,
            Name::Header(_) => {
                if let Some((name, value)) = Field::into_header(f) {
                    self.headers.append(name, value);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
