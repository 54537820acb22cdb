//! The gRPC port's HTTP/2 server (RFC 9113, cleartext, prior knowledge), written for how a
//! sidecar is called: many small unary calls on one long-lived connection.
//!
//! One task per connection does everything: it reads and parses frames, calls the service,
//! polls the answers and their bodies, and writes. Nothing is spawned per call and no lock
//! is shared between connections: a unary call that fits in one read is dispatched with its
//! whole message in place, and its answer (HEADERS, DATA and trailers) leaves in one write.
//! Every stream has its own waker, so a wake-up polls only the calls that can progress.
//!
//! What it does: flow control both ways (1 MiB per stream and 4 MiB per connection offered
//! to the client, given back as the service reads; the client's windows respected), request
//! and answer bodies of any length and in both directions at once (streaming RPCs, gRPC
//! proxying), trailers both ways, HPACK with dynamic tables both ways ([`hpack`]), PING,
//! SETTINGS, `RST_STREAM`, and GOAWAY on errors and on a graceful stop (in-flight calls
//! finish). A client that cancels far more calls than it lets finish ("rapid reset") is
//! disconnected with `ENHANCE_YOUR_CALM`. What it does not do, as gRPC needs none of it: server push, priorities (read and
//! ignored), HTTP/1.1 (a connection that does not open with the HTTP/2 preface is closed),
//! extended CONNECT.

pub use tandem_http2::body::{RecvBody, StreamReset};
pub use tandem_http2::hpack;

use std::borrow::Cow;
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::hash::BuildHasherDefault;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::task::AtomicWaker;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri, header};
use http_body::Body;
use tokio::net::TcpListener;
use tower::Service;

use tandem_http2::frame::{self, *};

use hpack::{Field, Name, Pseudo};
use tandem_http2::Transport;
use tandem_http2::body::{Queue, Release};

/// The flow-control window offered on each stream.
const STREAM_WINDOW: u32 = 1 << 20;
/// The flow-control window offered on the connection.
const CONN_WINDOW: u32 = 4 << 20;
/// Streams open at once on one connection.
const MAX_STREAMS: u32 = 1024;
/// The largest header block accepted (HEADERS and its CONTINUATIONs).
const MAX_HEADER_BLOCK: usize = 1 << 20;
/// How many more calls a client may cancel (RST_STREAM on a call in flight) than it lets
/// finish before the connection is closed with `ENHANCE_YOUR_CALM`: opening streams and
/// resetting them at once ("rapid reset") would otherwise make the sidecar start work that
/// nobody waits for, as fast as the client can write.
const MAX_RESET_DEBT: u32 = 1024;
/// Past this much unsent output, the connection stops reading and polling answer bodies
/// until the socket drains.
const WRITE_HIGH: usize = 256 << 10;
/// Wakers of finished streams kept for the next streams, at most.
const SPARE_WAKERS: usize = 32;

/// Serves `service` over HTTP/2 on `listener` until `shutdown` resolves; then stops
/// accepting, sends every connection a GOAWAY, lets the calls in flight finish, and returns
/// once every connection has closed.
pub async fn serve<S, B>(
    listener: TcpListener,
    service: S,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    S: Service<http::Request<RecvBody>, Response = http::Response<B>, Error = Infallible>
        + Clone
        + Send
        + Unpin
        + 'static,
    S::Future: Send + Unpin + 'static,
    B: AnswerBody + Send + 'static,
{
    crate::http::server::accept_loop(
        listener,
        shutdown,
        "gRPC server",
        move |tcp, _, mut stopped| {
            let stop: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            });
            Connection::new(Transport::Tcp(tcp), service.clone(), stop)
        },
    )
    .await
}

/// Serves `service` over HTTP/2 on one accepted connection, TCP or TLS (whose first bytes
/// may already have been peeked at) until the client goes away or `stop` resolves; then
/// sends a GOAWAY and lets the calls in flight finish.
pub async fn serve_connection<I, S, B>(
    io: I,
    service: S,
    stop: impl Future<Output = ()> + Send + 'static,
) where
    S: Service<http::Request<RecvBody>, Response = http::Response<B>, Error = Infallible>
        + Send
        + Unpin
        + 'static,
    S::Future: Send + Unpin + 'static,
    B: AnswerBody + Send + 'static,
    I: Into<Transport>,
{
    Connection::new(io.into(), service, Box::pin(stop)).await;
}

/// An answer's body as this server polls it: any [`Body`] of [`Bytes`], which may also carry
/// fields of the answer's head, and say that all it has left to send is a fixed set of
/// trailers. Both are then written without a [`HeaderMap`] to build, encode from and drop for
/// every answer (a gRPC answer's `content-type` and `grpc-trace-bin`, its `grpc-status: 0`).
pub trait AnswerBody: Body<Data = Bytes> + Unpin {
    /// Writes the fields of the answer's head that the body carries, after those of the
    /// answer's header map. A server of such bodies must call it for every answer.
    fn head_fields(&self, _enc: &mut hpack::Encoder, _dst: &mut BytesMut) {}

    /// The trailers that are all this body has left, when they are fixed: the server then
    /// writes them and ends the stream without polling the body again.
    fn fixed_trailers(&self) -> Option<&'static [(HeaderName, HeaderValue)]> {
        None
    }
}

impl AnswerBody for axum::body::Body {}

/// What stream wakers and request bodies share with their connection.
pub(crate) struct Shared {
    /// Streams whose call or answer body can make progress.
    ready: Mutex<Vec<u32>>,
    /// Request bytes the service has read, per stream, not yet given back to the client.
    released: Mutex<Vec<(u32, usize)>>,
    /// The server's stop signal may have changed.
    stop_woken: AtomicBool,
    waker: AtomicWaker,
}

/// Wakes the connection for its stop signal.
struct StopWaker(Arc<Shared>);

impl Wake for StopWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.stop_woken.store(true, Ordering::Release);
        self.0.waker.wake();
    }
}

impl Release for Shared {
    fn release(&self, id: u32, n: usize) {
        lock(&self.released).push((id, n));
        self.waker.wake();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Wakes one stream: queues it on its connection, then wakes the connection's task.
struct StreamWaker {
    id: u32,
    queued: AtomicBool,
    shared: Arc<Shared>,
}

impl Wake for StreamWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            lock(&self.shared.ready).push(self.id);
        }
        self.shared.waker.wake();
    }
}

type Streams<F, B> = HashMap<u32, Stream<F, B>, BuildHasherDefault<tandem_http2::IdHasher>>;

/// A request whose head has arrived and that waits for the end of the current read to be
/// dispatched, with the data that came with it.
struct Parked {
    head: http::request::Parts,
    first: Option<Bytes>,
    more: Vec<Bytes>,
    trailers: Option<HeaderMap>,
}

/// A stream's state. Kept small, as it moves into and out of the connection's map once per
/// call: a request waiting for dispatch is parked on the connection, not here, and trailers
/// are written as soon as the answer's body yields them.
struct Stream<F, B> {
    waker: Arc<StreamWaker>,
    task_waker: Waker,
    /// The request waits in [`Connection::parked`] for the end of the current read.
    parked: bool,
    /// The service's answer, until it resolves.
    call: Option<F>,
    /// The answer's body, until it ends.
    body: Option<B>,
    /// Answer data the send windows have not let out yet.
    held: Option<Bytes>,
    send_window: i64,
    /// How much more the client may send.
    recv_window: i64,
    /// Bytes read by the service and not yet given back in a WINDOW_UPDATE.
    unreleased: usize,
    /// The request body's queue, while it streams.
    queue: Option<Arc<Queue>>,
    remote_closed: bool,
    local_closed: bool,
}

impl<F, B> Stream<F, B> {
    fn reset_queue(&mut self) {
        if let Some(q) = self.queue.take() {
            let mut state = q.lock();
            state.reset = true;
            Queue::notify(&mut state);
        }
    }
}

impl<F, B> Drop for Stream<F, B> {
    fn drop(&mut self) {
        if !self.remote_closed {
            self.reset_queue();
        }
    }
}

/// The writing side: the output buffer and what framing it needs.
struct Out {
    buf: BytesMut,
    scratch: BytesMut,
    enc: hpack::Encoder,
    max_frame: usize,
    conn_send: i64,
    /// Streams that stopped polling their body because the buffer was full.
    write_blocked: Vec<u32>,
}

impl Out {
    fn head(&mut self, len: usize, kind: u8, flags: u8, id: u32) {
        self.buf.put_uint(len as u64, 3);
        self.buf.put_u8(kind);
        self.buf.put_u8(flags);
        self.buf.put_u32(id);
    }

    fn rst(&mut self, id: u32, code: u32) {
        frame::put_rst(&mut self.buf, id, code);
    }

    fn window_update(&mut self, id: u32, n: usize) {
        frame::put_window_update(&mut self.buf, id, n);
    }

    /// A header block (HEADERS, then CONTINUATIONs past the peer's frame size).
    fn headers(
        &mut self,
        id: u32,
        end_stream: bool,
        block: impl FnOnce(&mut hpack::Encoder, &mut BytesMut),
    ) {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        self.enc.begin(&mut scratch);
        block(&mut self.enc, &mut scratch);
        frame::put_header_block(&mut self.buf, self.max_frame, id, end_stream, &scratch);
        self.scratch = scratch;
    }

    fn trailers(&mut self, id: u32, trailers: &HeaderMap) {
        self.headers(id, true, |enc, dst| enc.fields(dst, trailers));
    }

    /// Sends as much of `data` as the windows allow; returns what is left.
    fn data(&mut self, id: u32, data: Bytes, window: &mut i64, end: bool) -> Option<Bytes> {
        frame::put_data(
            &mut self.buf,
            self.max_frame,
            id,
            data,
            window,
            &mut self.conn_send,
            end,
        )
    }
}

/// A connection error: the GOAWAY code.
struct ConnError(u32);

/// One HTTP/2 connection, as a future that ends when the connection closes.
struct Connection<S: Service<http::Request<RecvBody>>, B> {
    io: Transport,
    service: S,
    shared: Arc<Shared>,
    rbuf: BytesMut,
    out: Out,
    dec: hpack::Decoder,
    streams: Streams<S::Future, B>,
    /// Requests whose head has arrived during the current read, in order.
    parked: Vec<(u32, Parked)>,
    ready: Vec<u32>,
    preface_done: bool,
    /// Header blocks, split over CONTINUATION frames or not.
    blocks: frame::HeaderBlocks,
    last_id: u32,
    /// The last request's URI and the pseudo-headers it was made of: a client calling one
    /// method over and over sends the same values each time.
    last_uri: Option<LastUri>,
    /// Wakers of finished streams that nothing else held any more, for the next streams:
    /// one allocation less per call.
    spare_wakers: Vec<Arc<StreamWaker>>,
    /// What a finished stream holds while its waker is taken back.
    idle_waker: Arc<StreamWaker>,
    peer_initial_window: i64,
    /// How much more the client may send on the connection.
    conn_recv: i64,
    conn_unreleased: usize,
    reading: bool,
    goaway_sent: bool,
    peer_goaway: bool,
    /// A connection error was sent: write what is left, then close.
    closing: bool,
    /// Calls the client cancelled, less the calls answered (never below 0); see
    /// [`MAX_RESET_DEBT`].
    reset_debt: u32,
    stop: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    stop_waker: Waker,
}

impl<S, B> Connection<S, B>
where
    S: Service<http::Request<RecvBody>, Response = http::Response<B>, Error = Infallible>,
    S::Future: Unpin,
    B: AnswerBody,
{
    fn new(io: Transport, service: S, stop: Pin<Box<dyn Future<Output = ()> + Send>>) -> Self {
        let mut out = Out {
            buf: BytesMut::with_capacity(4096),
            scratch: BytesMut::new(),
            enc: hpack::Encoder::default(),
            max_frame: MAX_FRAME,
            conn_send: DEFAULT_WINDOW,
            write_blocked: Vec::new(),
        };
        let settings = [
            (SETTINGS_MAX_CONCURRENT_STREAMS, MAX_STREAMS),
            (SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW),
            (SETTINGS_MAX_HEADER_LIST_SIZE, MAX_HEADER_BLOCK as u32),
        ];
        frame::put_settings(&mut out.buf, &settings);
        out.window_update(0, (i64::from(CONN_WINDOW) - DEFAULT_WINDOW) as usize);
        let shared = Arc::new(Shared {
            ready: Mutex::new(Vec::new()),
            released: Mutex::new(Vec::new()),
            stop_woken: AtomicBool::new(true),
            waker: AtomicWaker::new(),
        });
        Connection {
            io,
            service,
            rbuf: BytesMut::with_capacity(MAX_FRAME + 9),
            out,
            dec: hpack::Decoder::default(),
            streams: HashMap::default(),
            parked: Vec::new(),
            ready: Vec::new(),
            preface_done: false,
            blocks: frame::HeaderBlocks::new(MAX_HEADER_BLOCK),
            last_id: 0,
            last_uri: None,
            spare_wakers: Vec::new(),
            idle_waker: Arc::new(StreamWaker {
                id: 0,
                queued: AtomicBool::new(true),
                shared: shared.clone(),
            }),
            peer_initial_window: DEFAULT_WINDOW,
            conn_recv: i64::from(CONN_WINDOW),
            conn_unreleased: 0,
            reading: true,
            goaway_sent: false,
            peer_goaway: false,
            closing: false,
            reset_debt: 0,
            stop: Some(stop),
            stop_waker: Waker::from(Arc::new(StopWaker(shared.clone()))),
            shared,
        }
    }

    /// Reads what the socket has; `Ready(Ok(0))` is the end of the stream.
    ///
    /// Through `AsyncRead`, not `try_read_buf`: a read shorter than the buffer clears the
    /// socket's readiness, so the next poll does not spend a `recvfrom` only to learn that
    /// nothing more has arrived.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        if self.rbuf.capacity() - self.rbuf.len() < 4096 {
            self.rbuf.reserve(MAX_FRAME + 9);
        }
        self.io.poll_read_buf(cx, &mut self.rbuf)
    }

    /// Writes what is buffered; `Ready(Ok(()))` once it is all out.
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.io.poll_write_all(&mut self.out.buf, cx)
    }

    /// Parses every complete frame in the read buffer.
    fn on_read(&mut self) -> Result<(), ConnError> {
        let mut rbuf = std::mem::take(&mut self.rbuf);
        let result = self.frames(&mut rbuf);
        self.rbuf = rbuf;
        result
    }

    fn frames(&mut self, rbuf: &mut BytesMut) -> Result<(), ConnError> {
        if !self.preface_done {
            let n = rbuf.len().min(PREFACE.len());
            if rbuf[..n] != PREFACE[..n] {
                // Not HTTP/2 with prior knowledge (an HTTP/1.1 request, TLS, noise).
                return Err(ConnError(PROTOCOL_ERROR));
            }
            if n < PREFACE.len() {
                return Ok(());
            }
            rbuf.advance(PREFACE.len());
            self.preface_done = true;
        }
        while !self.closing {
            let Some((kind, flags, id, len)) = frame::next(rbuf).map_err(ConnError)? else {
                break;
            };
            let result = self.frame(kind, flags, id, &rbuf[9..9 + len]);
            rbuf.advance(9 + len);
            result?;
        }
        Ok(())
    }

    fn frame(&mut self, kind: u8, flags: u8, id: u32, payload: &[u8]) -> Result<(), ConnError> {
        self.blocks.check(kind, id).map_err(ConnError)?;
        match kind {
            DATA => self.on_data(flags, id, payload),
            HEADERS | CONTINUATION => {
                let block = if kind == HEADERS {
                    self.blocks.headers(flags, id, payload)
                } else {
                    self.blocks.continuation(flags, payload)
                };
                match block.map_err(ConnError)? {
                    Some((id, end_stream, block)) => self.on_header_block(id, end_stream, &block),
                    None => Ok(()),
                }
            }
            SETTINGS => self.on_settings(flags, id, payload),
            PING => frame::on_ping(&mut self.out.buf, flags, id, payload).map_err(ConnError),
            WINDOW_UPDATE => self.on_window_update(id, payload),
            RST_STREAM => {
                if id == 0 {
                    return Err(ConnError(PROTOCOL_ERROR));
                }
                if payload.len() != 4 {
                    return Err(ConnError(FRAME_SIZE_ERROR));
                }
                if id > self.last_id {
                    return Err(ConnError(PROTOCOL_ERROR));
                }
                // Dropping the stream drops its call and answer, and fails its request body.
                if let Some(mut st) = self.streams.remove(&id) {
                    st.reset_queue();
                    self.reset_debt += 1;
                    if self.reset_debt > MAX_RESET_DEBT {
                        return Err(ConnError(ENHANCE_YOUR_CALM));
                    }
                }
                Ok(())
            }
            PRIORITY => {
                if id == 0 {
                    return Err(ConnError(PROTOCOL_ERROR));
                }
                if payload.len() != 5 {
                    return Err(ConnError(FRAME_SIZE_ERROR));
                }
                Ok(())
            }
            GOAWAY => {
                self.peer_goaway = true;
                Ok(())
            }
            PUSH_PROMISE => Err(ConnError(PROTOCOL_ERROR)),
            // Unknown frame types are ignored (RFC 9113, 4.1).
            _ => Ok(()),
        }
    }

    fn on_settings(&mut self, flags: u8, id: u32, payload: &[u8]) -> Result<(), ConnError> {
        if id != 0 {
            return Err(ConnError(PROTOCOL_ERROR));
        }
        if flags & ACK != 0 {
            return if payload.is_empty() {
                Ok(())
            } else {
                Err(ConnError(FRAME_SIZE_ERROR))
            };
        }
        for (key, value) in frame::settings(payload).map_err(ConnError)? {
            match key {
                SETTINGS_HEADER_TABLE_SIZE => self.out.enc.set_peer_table_size(value as usize),
                SETTINGS_INITIAL_WINDOW_SIZE => {
                    let value = i64::from(value);
                    if value > MAX_WINDOW {
                        return Err(ConnError(FLOW_CONTROL_ERROR));
                    }
                    let delta = value - self.peer_initial_window;
                    self.peer_initial_window = value;
                    for st in self.streams.values_mut() {
                        st.send_window += delta;
                        if st.send_window > MAX_WINDOW {
                            return Err(ConnError(FLOW_CONTROL_ERROR));
                        }
                        if delta > 0 && st.held.is_some() {
                            st.waker.wake_by_ref();
                        }
                    }
                }
                SETTINGS_MAX_FRAME_SIZE => {
                    if !(16_384..=16_777_215).contains(&value) {
                        return Err(ConnError(PROTOCOL_ERROR));
                    }
                    self.out.max_frame = value as usize;
                }
                _ => {}
            }
        }
        self.out.head(0, SETTINGS, ACK, 0);
        Ok(())
    }

    fn on_window_update(&mut self, id: u32, payload: &[u8]) -> Result<(), ConnError> {
        let inc = frame::window_increment(payload).map_err(ConnError)?;
        if id == 0 {
            if inc == 0 {
                return Err(ConnError(PROTOCOL_ERROR));
            }
            self.out.conn_send += inc;
            if self.out.conn_send > MAX_WINDOW {
                return Err(ConnError(FLOW_CONTROL_ERROR));
            }
            for st in self.streams.values() {
                if st.held.is_some() {
                    st.waker.wake_by_ref();
                }
            }
            return Ok(());
        }
        if id > self.last_id {
            return Err(ConnError(PROTOCOL_ERROR));
        }
        let Some(st) = self.streams.get_mut(&id) else {
            return Ok(());
        };
        st.send_window += inc;
        if inc == 0 || st.send_window > MAX_WINDOW {
            let code = if inc == 0 {
                PROTOCOL_ERROR
            } else {
                FLOW_CONTROL_ERROR
            };
            self.out.rst(id, code);
            self.streams.remove(&id);
        } else if st.held.is_some() {
            st.waker.wake_by_ref();
        }
        Ok(())
    }

    fn on_data(&mut self, flags: u8, id: u32, payload: &[u8]) -> Result<(), ConnError> {
        if id == 0 {
            return Err(ConnError(PROTOCOL_ERROR));
        }
        let len = payload.len();
        if len as i64 > self.conn_recv {
            return Err(ConnError(FLOW_CONTROL_ERROR));
        }
        self.conn_recv -= len as i64;
        let data = unpad(flags, payload)?;
        // Padding counts against the windows and is given back at once.
        self.conn_unreleased += len - data.len();
        let Some(st) = self.streams.get_mut(&id) else {
            if id > self.last_id {
                return Err(ConnError(PROTOCOL_ERROR));
            }
            // A stream already closed here (reset, or answered): data in flight is dropped.
            self.conn_unreleased += data.len();
            self.give_back_connection();
            return Ok(());
        };
        if st.remote_closed {
            self.conn_unreleased += data.len();
            self.out.rst(id, STREAM_CLOSED);
            self.streams.remove(&id);
            return Ok(());
        }
        if len as i64 > st.recv_window {
            self.conn_unreleased += data.len();
            self.out.rst(id, FLOW_CONTROL_ERROR);
            self.streams.remove(&id);
            return Ok(());
        }
        st.recv_window -= len as i64;
        let end = flags & END_STREAM != 0;
        if st.parked {
            // A parked stream's request is in the parked list until it is dispatched.
            if let Some((_, parked)) = self.parked.iter_mut().find(|(p, _)| *p == id)
                && !data.is_empty()
            {
                let chunk = Bytes::copy_from_slice(data);
                match parked.first {
                    None => parked.first = Some(chunk),
                    Some(_) => parked.more.push(chunk),
                }
            }
            st.remote_closed |= end;
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
            drop(state);
            if end {
                st.remote_closed = true;
                st.queue = None;
            }
        } else {
            self.conn_unreleased += data.len();
            st.remote_closed |= end;
        }
        if st.remote_closed && st.local_closed {
            self.streams.remove(&id);
        }
        self.give_back_connection();
        Ok(())
    }

    fn on_header_block(
        &mut self,
        id: u32,
        end_stream: bool,
        block: &[u8],
    ) -> Result<(), ConnError> {
        let mut head = Head {
            // Room for the fields a gRPC client usually sends besides the pseudo-headers
            // (`content-type`, `te`, `user-agent`, `grpc-accept-encoding`, `grpc-timeout`, an
            // API token), so that the map is not grown field by field; and no more, so that
            // its storage (six entries) stays small enough for the allocator's per-thread
            // cache, where sixteen went to its slower shared bins.
            headers: HeaderMap::with_capacity(6),
            ..Head::default()
        };
        self.dec
            .decode(block, |f| head.add(f))
            .map_err(|_| ConnError(COMPRESSION_ERROR))?;
        if let Some(st) = self.streams.get_mut(&id) {
            // Trailers: only ordinary fields, and they end the stream.
            if st.remote_closed {
                self.out.rst(id, STREAM_CLOSED);
                self.streams.remove(&id);
                return Ok(());
            }
            if !end_stream || head.malformed || head.any_pseudo {
                self.out.rst(id, PROTOCOL_ERROR);
                self.streams.remove(&id);
                return Ok(());
            }
            st.remote_closed = true;
            if st.parked {
                if let Some((_, parked)) = self.parked.iter_mut().find(|(p, _)| *p == id) {
                    parked.trailers = Some(head.headers);
                }
            } else if let Some(queue) = st.queue.take() {
                let mut state = queue.lock();
                state.trailers = Some(head.headers);
                state.end = true;
                Queue::notify(&mut state);
            }
            if st.local_closed {
                self.streams.remove(&id);
            }
            return Ok(());
        }
        if id.is_multiple_of(2) {
            return Err(ConnError(PROTOCOL_ERROR));
        }
        if id <= self.last_id {
            // A stream already closed here.
            self.out.rst(id, STREAM_CLOSED);
            return Ok(());
        }
        self.last_id = id;
        if self.goaway_sent {
            // Past the GOAWAY: the client retries it elsewhere.
            return Ok(());
        }
        let Some(parts) = head.request(&mut self.last_uri) else {
            self.out.rst(id, PROTOCOL_ERROR);
            return Ok(());
        };
        if self.streams.len() >= MAX_STREAMS as usize {
            self.out.rst(id, REFUSED_STREAM);
            return Ok(());
        }
        let spare = self.spare_wakers.pop().and_then(|mut waker| {
            let w = Arc::get_mut(&mut waker)?;
            w.id = id;
            *w.queued.get_mut() = false;
            Some(waker)
        });
        let waker = spare.unwrap_or_else(|| {
            Arc::new(StreamWaker {
                id,
                queued: AtomicBool::new(false),
                shared: self.shared.clone(),
            })
        });
        let stream = Stream {
            task_waker: Waker::from(waker.clone()),
            waker,
            parked: true,
            call: None,
            body: None,
            held: None,
            send_window: self.peer_initial_window,
            recv_window: i64::from(STREAM_WINDOW),
            unreleased: 0,
            queue: None,
            remote_closed: end_stream,
            local_closed: false,
        };
        self.streams.insert(id, stream);
        self.parked.push((
            id,
            Parked {
                head: parts,
                first: None,
                more: Vec::new(),
                trailers: None,
            },
        ));
        Ok(())
    }

    /// Calls the service for every request parked during the last read.
    fn dispatch(&mut self) {
        let mut parked = std::mem::take(&mut self.parked);
        for (id, parked) in parked.drain(..) {
            // A stream reset since its head arrived is gone, and its request with it.
            let Some(st) = self.streams.get_mut(&id) else {
                continue;
            };
            st.parked = false;
            let Parked {
                head,
                first,
                more,
                trailers,
            } = parked;
            let body = if st.remote_closed {
                let data = if more.is_empty() {
                    first
                } else {
                    let mut all = BytesMut::new();
                    for chunk in first.iter().chain(&more) {
                        all.extend_from_slice(chunk);
                    }
                    Some(all.freeze())
                };
                self.conn_unreleased += data.as_ref().map_or(0, Bytes::len);
                RecvBody::full(data, trailers)
            } else {
                let queue = Arc::new(Queue::default());
                {
                    let mut state = queue.lock();
                    state.data.extend(first);
                    state.data.extend(more);
                }
                st.queue = Some(queue.clone());
                RecvBody::streaming(queue, self.shared.clone() as Arc<dyn Release>, id)
            };
            let mut cx = Context::from_waker(&st.task_waker);
            if self.service.poll_ready(&mut cx).is_pending() {
                self.out.rst(id, REFUSED_STREAM);
                self.streams.remove(&id);
                continue;
            }
            st.call = Some(self.service.call(http::Request::from_parts(head, body)));
            self.ready.push(id);
        }
        self.parked = parked;
        self.give_back_connection();
    }

    /// Gives back what request bodies have read.
    fn take_releases(&mut self) {
        let released = std::mem::take(&mut *lock(&self.shared.released));
        if released.is_empty() {
            return;
        }
        for (id, n) in released {
            self.conn_unreleased += n;
            if let Some(st) = self.streams.get_mut(&id)
                && !st.remote_closed
            {
                st.unreleased += n;
                if st.unreleased >= STREAM_WINDOW as usize / 2 {
                    let n = std::mem::take(&mut st.unreleased);
                    st.recv_window += n as i64;
                    self.out.window_update(id, n);
                }
            }
        }
        self.give_back_connection();
    }

    fn give_back_connection(&mut self) {
        if self.conn_unreleased >= CONN_WINDOW as usize / 2 {
            let n = std::mem::take(&mut self.conn_unreleased);
            self.conn_recv += n as i64;
            self.out.window_update(0, n);
        }
    }

    /// Polls every stream that was woken; true when there were any.
    fn poll_streams(&mut self) -> bool {
        {
            let mut woken = lock(&self.shared.ready);
            if woken.is_empty() && self.ready.is_empty() {
                return false;
            }
            self.ready.append(&mut woken);
        }
        let ready = std::mem::take(&mut self.ready);
        for &id in &ready {
            let Some(st) = self.streams.get_mut(&id) else {
                continue;
            };
            st.waker.queued.store(false, Ordering::Release);
            if poll_stream(id, st, &mut self.out) {
                self.reset_debt = self.reset_debt.saturating_sub(1);
                if let Some(st) = self.streams.remove(&id) {
                    if !st.remote_closed {
                        // Answered before the request ended: the rest is not needed.
                        self.out.rst(id, NO_ERROR);
                    }
                    self.recycle(st);
                }
            }
        }
        let mut ready = ready;
        ready.clear();
        self.ready = ready;
        true
    }

    /// Drops a finished stream, keeping its waker for the next stream when nothing else
    /// holds it any more (the call's future and what it waited on are gone).
    fn recycle(&mut self, mut st: Stream<S::Future, B>) {
        if self.spare_wakers.len() >= SPARE_WAKERS {
            return;
        }
        st.task_waker = Waker::noop().clone();
        let mut waker = std::mem::replace(&mut st.waker, self.idle_waker.clone());
        drop(st);
        if Arc::get_mut(&mut waker).is_some() {
            self.spare_wakers.push(waker);
        }
    }

    fn go_away(&mut self, code: u32) {
        frame::put_goaway(&mut self.out.buf, self.last_id, code);
        self.goaway_sent = true;
    }

    fn fail(&mut self, ConnError(code): ConnError) {
        if self.preface_done {
            self.go_away(code);
        }
        self.closing = true;
        self.reading = false;
        self.streams.clear();
    }

    fn finished(&self) -> bool {
        let idle = self.streams.is_empty() && !self.blocks.is_pending();
        self.out.buf.is_empty()
            && (self.closing || !self.reading || ((self.goaway_sent || self.peer_goaway) && idle))
    }
}

/// Polls one stream's call and answer body, writing what they produce; true once the answer
/// is complete.
fn poll_stream<F, B>(id: u32, st: &mut Stream<F, B>, out: &mut Out) -> bool
where
    F: Future<Output = Result<http::Response<B>, Infallible>> + Unpin,
    B: AnswerBody,
{
    let mut cx = Context::from_waker(&st.task_waker);
    if let Some(call) = &mut st.call {
        let Poll::Ready(Ok(resp)) = Pin::new(call).poll(&mut cx) else {
            return false;
        };
        st.call = None;
        let (parts, body) = resp.into_parts();
        let end = body.is_end_stream();
        out.headers(id, end, |enc, dst| {
            enc.status(dst, parts.status);
            enc.fields(dst, &parts.headers);
            body.head_fields(enc, dst);
        });
        if end {
            st.local_closed = true;
            return true;
        }
        st.body = Some(body);
    }
    loop {
        // Data is held only until the windows open; the body is polled again once it is out.
        if let Some(held) = st.held.take() {
            st.held = out.data(id, held, &mut st.send_window, false);
            if st.held.is_some() {
                return false;
            }
        }
        let Some(body) = &mut st.body else {
            return false;
        };
        if out.buf.len() >= WRITE_HIGH {
            out.write_blocked.push(id);
            return false;
        }
        if let Some(fields) = body.fixed_trailers() {
            st.body = None;
            out.headers(id, true, |enc, dst| {
                for (name, value) in fields {
                    enc.header(dst, name, value);
                }
            });
            st.local_closed = true;
            return true;
        }
        match Pin::new(body).poll_frame(&mut cx) {
            Poll::Pending => return false,
            Poll::Ready(None) => {
                st.body = None;
                out.head(0, DATA, END_STREAM, id);
                st.local_closed = true;
                return true;
            }
            Poll::Ready(Some(Err(_))) => {
                st.body = None;
                out.rst(id, INTERNAL_ERROR);
                st.local_closed = true;
                st.remote_closed = true;
                return true;
            }
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => {
                    if !data.is_empty() {
                        st.held = Some(data);
                    }
                }
                Err(frame) => {
                    st.body = None;
                    match frame.into_trailers() {
                        Ok(trailers) => out.trailers(id, &trailers),
                        // A frame of a kind this server does not know: end the stream.
                        Err(_) => out.head(0, DATA, END_STREAM, id),
                    }
                    st.local_closed = true;
                    return true;
                }
            },
        }
    }
}

/// The payload of a DATA or HEADERS frame without its padding.
fn unpad(flags: u8, payload: &[u8]) -> Result<&[u8], ConnError> {
    frame::unpad(flags, payload).map_err(ConnError)
}

/// See [`Connection::last_uri`].
struct LastUri {
    scheme: Option<HeaderValue>,
    authority: Option<HeaderValue>,
    path: HeaderValue,
    uri: Uri,
}

/// A request head being decoded.
#[derive(Default)]
struct Head {
    method: Option<HeaderValue>,
    scheme: Option<HeaderValue>,
    authority: Option<HeaderValue>,
    path: Option<HeaderValue>,
    headers: HeaderMap,
    any_pseudo: bool,
    any_regular: bool,
    malformed: bool,
}

impl Head {
    fn add(&mut self, f: Cow<'_, Field>) {
        let Some(value) = &f.value else {
            self.malformed = true;
            return;
        };
        match &f.name {
            Name::Pseudo(p) => {
                self.any_pseudo = true;
                if self.any_regular {
                    self.malformed = true;
                }
                let slot = match p {
                    Pseudo::Method => &mut self.method,
                    Pseudo::Scheme => &mut self.scheme,
                    Pseudo::Authority => &mut self.authority,
                    Pseudo::Path => &mut self.path,
                    Pseudo::Status | Pseudo::Protocol | Pseudo::Unknown => {
                        self.malformed = true;
                        return;
                    }
                };
                if slot.replace(value.clone()).is_some() {
                    self.malformed = true;
                }
            }
            Name::Header(name) => {
                self.any_regular = true;
                if connection_specific(name) && !(name == header::TE && value == "trailers") {
                    self.malformed = true;
                    return;
                }
                if let Some((name, value)) = Field::into_header(f) {
                    self.headers.append(name, value);
                }
            }
            Name::Invalid(_) => self.malformed = true,
        }
    }

    /// The request's head, unless it is malformed.
    fn request(self, last_uri: &mut Option<LastUri>) -> Option<http::request::Parts> {
        if self.malformed {
            return None;
        }
        let method = Method::from_bytes(self.method?.as_bytes()).ok()?;
        let path = self.path.filter(|p| !p.is_empty())?;
        let uri = match last_uri {
            Some(last)
                if last.path == path
                    && last.authority == self.authority
                    && last.scheme == self.scheme =>
            {
                last.uri.clone()
            }
            _ => {
                let uri = Self::uri(self.scheme.as_ref(), self.authority.as_ref(), &path)?;
                *last_uri = Some(LastUri {
                    scheme: self.scheme,
                    authority: self.authority,
                    path,
                    uri: uri.clone(),
                });
                uri
            }
        };
        let (mut parts, ()) = http::Request::new(()).into_parts();
        parts.method = method;
        parts.uri = uri;
        parts.version = http::Version::HTTP_2;
        parts.headers = self.headers;
        Some(parts)
    }

    fn uri(
        scheme: Option<&HeaderValue>,
        authority: Option<&HeaderValue>,
        path: &HeaderValue,
    ) -> Option<Uri> {
        let mut uri = http::uri::Parts::default();
        if let Some(authority) = authority {
            uri.authority = Some(
                http::uri::Authority::from_maybe_shared(Bytes::copy_from_slice(
                    authority.as_bytes(),
                ))
                .ok()?,
            );
            uri.scheme = Some(match scheme.map(HeaderValue::as_bytes) {
                Some(b"https") => http::uri::Scheme::HTTPS,
                Some(b"http") | None => http::uri::Scheme::HTTP,
                Some(other) => std::str::from_utf8(other).ok()?.parse().ok()?,
            });
        }
        uri.path_and_query = Some(
            http::uri::PathAndQuery::from_maybe_shared(Bytes::copy_from_slice(path.as_bytes()))
                .ok()?,
        );
        Uri::from_parts(uri).ok()
    }
}

impl<S, B> Future for Connection<S, B>
where
    S: Service<http::Request<RecvBody>, Response = http::Response<B>, Error = Infallible> + Unpin,
    S::Future: Unpin,
    B: AnswerBody,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        this.shared.waker.register(cx.waker());
        loop {
            let mut again = false;
            // Polled only when its own waker fired (and on the first poll), not on every
            // wake-up of the connection.
            if let Some(stop) = &mut this.stop
                && this.shared.stop_woken.swap(false, Ordering::AcqRel)
                && stop
                    .as_mut()
                    .poll(&mut Context::from_waker(&this.stop_waker))
                    .is_ready()
            {
                this.stop = None;
                if !this.goaway_sent {
                    this.go_away(NO_ERROR);
                }
            }
            if this.reading && this.out.buf.len() < WRITE_HIGH {
                match this.poll_read(cx) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                        // The client is gone: nothing more can be answered.
                        this.reading = false;
                        this.streams.clear();
                        this.out.buf.clear();
                        return Poll::Ready(());
                    }
                    Poll::Ready(Ok(_)) => {
                        if let Err(e) = this.on_read() {
                            this.fail(e);
                        }
                        again = true;
                    }
                    Poll::Pending => {}
                }
            }
            if !this.parked.is_empty() {
                this.dispatch();
            }
            this.take_releases();
            again |= this.poll_streams();
            let was_full = this.out.buf.len() >= WRITE_HIGH;
            match this.poll_flush(cx) {
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Ready(Ok(())) => {
                    for id in std::mem::take(&mut this.out.write_blocked) {
                        if let Some(st) = this.streams.get(&id) {
                            st.waker.wake_by_ref();
                        }
                    }
                    // Reading was skipped while the buffer was full.
                    again |= was_full && this.reading;
                }
                Poll::Pending => {}
            }
            if this.finished() {
                return Poll::Ready(());
            }
            if !again {
                return Poll::Pending;
            }
        }
    }
}

#[cfg(test)]
mod tests;
