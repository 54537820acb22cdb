//! The leanest HTTP/1.1 client the benchmark can have: the calling task writes the request
//! and reads the answer on a pooled keep-alive connection itself, with no connection task,
//! no channel and no header map in between. It measures what the sidecar adds with as
//! little of the client in the way as the direct paths have (a direct Redis GET goes
//! through `redis`' multiplexed connection, a few microseconds of client).
//!
//! One connection per request in flight, like a browser or `hyper`'s pool; answers are
//! read by `content-length` or chunked framing.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderValue;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

/// A pool of keep-alive HTTP/1.1 connections to `127.0.0.1:port`.
#[derive(Clone)]
pub struct H1 {
    port: u16,
    idle: Arc<Mutex<Vec<Conn>>>,
}

struct Conn {
    tcp: TcpStream,
    buf: BytesMut,
}

/// The longest answer head read.
const MAX_HEAD: usize = 16 * 1024;

impl H1 {
    /// A client of `127.0.0.1:port`; it connects as requests need.
    pub fn new(port: u16) -> Self {
        Self {
            port,
            idle: Arc::default(),
        }
    }

    /// The bytes of a request: `method path`, then `headers`, then the body (with its
    /// `content-length` when there is one).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Vec<u8> {
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1:{}\r\n",
            self.port
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() || method != "GET" {
            req.push_str(&format!("content-length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let mut req = req.into_bytes();
        req.extend_from_slice(body);
        req
    }

    /// Sends `request` (from [`H1::request`]); fails unless the status is `expect`; returns
    /// the body.
    pub async fn call(&self, request: &[u8], expect: u16) -> Result<Bytes, String> {
        let pooled = self.idle.lock().expect("pool lock").pop();
        let mut conn = match pooled {
            Some(c) => c,
            None => Conn {
                tcp: connect(self.port).await?,
                buf: BytesMut::with_capacity(4096),
            },
        };
        conn.tcp
            .write_all(request)
            .await
            .map_err(|e| format!("write: {e}"))?;
        let (status, body, keep_alive) = conn.answer().await?;
        if keep_alive {
            self.idle.lock().expect("pool lock").push(conn);
        }
        if status != expect {
            return Err(format!(
                "status {status} (expected {expect}): {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ));
        }
        Ok(body)
    }
}

/// How an answer's body is framed.
enum Framing {
    Length(usize),
    Chunked,
}

impl Conn {
    /// Reads more bytes; fails at end of stream.
    async fn fill(&mut self) -> Result<(), String> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(4096);
        }
        match self.tcp.read_buf(&mut self.buf).await {
            Ok(0) => Err("the connection closed mid-answer".into()),
            Ok(_) => Ok(()),
            Err(e) => Err(format!("read: {e}")),
        }
    }

    /// Reads one answer: status, body, and whether the connection stays open.
    async fn answer(&mut self) -> Result<(u16, Bytes, bool), String> {
        let head_len = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            if self.buf.len() > MAX_HEAD {
                return Err("answer head too long".into());
            }
            self.fill().await?;
        };
        let head = self.buf.split_to(head_len);
        let head = std::str::from_utf8(&head).map_err(|_| "answer head is not UTF-8")?;
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.strip_prefix("HTTP/1.1 "))
            .and_then(|l| l.get(..3))
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| format!("bad status line in {head:?}"))?;
        let mut framing = Framing::Length(0);
        let mut keep_alive = true;
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                let n = value.parse().map_err(|_| "bad content-length")?;
                framing = Framing::Length(n);
            } else if name.eq_ignore_ascii_case("transfer-encoding")
                && value.eq_ignore_ascii_case("chunked")
            {
                framing = Framing::Chunked;
            } else if name.eq_ignore_ascii_case("connection") && value.eq_ignore_ascii_case("close")
            {
                keep_alive = false;
            }
        }
        let body = match framing {
            Framing::Length(n) => self.take(n).await?,
            Framing::Chunked => self.chunked().await?,
        };
        Ok((status, body, keep_alive))
    }

    /// The next `n` bytes.
    async fn take(&mut self, n: usize) -> Result<Bytes, String> {
        while self.buf.len() < n {
            self.buf.reserve(n - self.buf.len());
            self.fill().await?;
        }
        Ok(self.buf.split_to(n).freeze())
    }

    /// Where the next line (of a chunked body) ends, once it is all read.
    async fn line_end(&mut self) -> Result<usize, String> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                return Ok(i);
            }
            self.fill().await?;
        }
    }

    /// A chunked body, trailers skipped.
    async fn chunked(&mut self) -> Result<Bytes, String> {
        let mut body = BytesMut::new();
        loop {
            let line = self.line_end().await?;
            let size = std::str::from_utf8(&self.buf[..line])
                .ok()
                .map(|l| l.split(';').next().unwrap_or("").trim())
                .and_then(|l| usize::from_str_radix(l, 16).ok())
                .ok_or("bad chunk size")?;
            self.buf.advance(line + 2);
            if size == 0 {
                // Trailers, if any, end with an empty line.
                loop {
                    let end = self.line_end().await?;
                    self.buf.advance(end + 2);
                    if end == 0 {
                        return Ok(body.freeze());
                    }
                }
            }
            let chunk = self.take(size + 2).await?;
            body.extend_from_slice(&chunk[..size]);
        }
    }
}

/// A connection to `127.0.0.1:port` with `TCP_NODELAY`, like every client of the benchmark.
async fn connect(port: u16) -> Result<TcpStream, String> {
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect 127.0.0.1:{port}: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    Ok(tcp)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The leanest unary gRPC client the benchmark can have, built like [`H1`] so that the two
/// protocols are compared on equal terms: a pool of HTTP/2 connections, one call in flight
/// on each, and the calling task writes the call and reads the answer itself (no connection
/// task, no channel). Headers go out as HPACK indexes once the first call has put them in
/// the server's table (as grpc-go and grpcio send them); answers are decoded by the
/// server's own HPACK decoder.
///
/// A 1 GiB window is offered per stream and per connection (topped up as answers arrive),
/// so the client never stalls the server; its own sends are small and checked against the
/// server's window.
#[derive(Clone)]
pub struct Grpc {
    port: u16,
    idle: Arc<Mutex<Vec<GrpcConn>>>,
}

impl Grpc {
    /// A client of `127.0.0.1:port`; it connects as calls need.
    pub fn new(port: u16) -> Self {
        Self {
            port,
            idle: Arc::default(),
        }
    }

    /// Calls `path` (`/package.Service/Method`) with `msg`; returns the answer message.
    pub async fn unary<Req: prost::Message, Resp: prost::Message + Default>(
        &self,
        path: &str,
        msg: &Req,
    ) -> Result<Resp, String> {
        let message = encode_message(path, msg)?;
        let pooled = self.idle.lock().expect("pool lock").pop();
        let mut conn = match pooled {
            Some(c) => c,
            None => GrpcConn::connect(self.port).await?,
        };
        let data = conn
            .call(path, &message)
            .await
            .map_err(|e| format!("{path}: {e}"))?;
        // A failed call drops its connection; a completed one (even with an error status)
        // leaves it usable.
        self.idle.lock().expect("pool lock").push(conn);
        decode_message(path, data)
    }
}

/// A gRPC message with its 5-byte prefix (uncompressed).
fn encode_message<Req: prost::Message>(path: &str, msg: &Req) -> Result<BytesMut, String> {
    let mut message = BytesMut::with_capacity(5 + msg.encoded_len());
    bytes::BufMut::put_u8(&mut message, 0);
    bytes::BufMut::put_u32(&mut message, msg.encoded_len() as u32);
    msg.encode(&mut message)
        .map_err(|e| format!("{path}: {e}"))?;
    Ok(message)
}

/// The answer message of a call, or why there is none.
fn decode_message<Resp: prost::Message + Default>(
    path: &str,
    answer: Answer,
) -> Result<Resp, String> {
    let data = answer.map_err(|e| format!("{path}: {e}"))?;
    if data.len() < 5 || data[0] != 0 {
        return Err(format!(
            "{path}: malformed gRPC message ({} bytes)",
            data.len()
        ));
    }
    Resp::decode(&data[5..]).map_err(|e| format!("{path}: {e}"))
}

/// Unary gRPC calls over one HTTP/2 connection shared by every caller, as gRPC clients use
/// a channel (grpc-go, grpcio, grpc-js, the Dapr SDKs over them): many calls in flight on
/// one connection, like the direct Redis path's one multiplexed connection. Callers hand
/// their call to the connection's task, which writes every call queued since its last
/// write in one write and routes the answers by stream. The framing, HPACK and checks are
/// [`Grpc`]'s.
#[derive(Clone)]
pub struct GrpcMux {
    calls: mpsc::UnboundedSender<MuxCall>,
}

/// A call handed to the connection task of [`GrpcMux`].
struct MuxCall {
    path: &'static str,
    message: BytesMut,
    answer: oneshot::Sender<Result<Answer, String>>,
}

impl GrpcMux {
    /// A client of `127.0.0.1:port`; its connection task connects at once (calls made
    /// meanwhile wait for it). Must be called within a Tokio runtime.
    pub fn new(port: u16) -> Self {
        let (calls, queued) = mpsc::unbounded_channel();
        tokio::spawn(drive(port, queued));
        Self { calls }
    }

    /// Calls `path` (`/package.Service/Method`) with `msg`; returns the answer message.
    pub async fn unary<Req: prost::Message, Resp: prost::Message + Default>(
        &self,
        path: &'static str,
        msg: &Req,
    ) -> Result<Resp, String> {
        let message = encode_message(path, msg)?;
        let (answer, answered) = oneshot::channel();
        self.calls
            .send(MuxCall {
                path,
                message,
                answer,
            })
            .map_err(|_| format!("{path}: the connection is closed"))?;
        let answer = answered
            .await
            .map_err(|_| format!("{path}: the connection task ended"))?
            .map_err(|e| format!("{path}: {e}"))?;
        decode_message(path, answer)
    }
}

/// The connection task of [`GrpcMux`]: connects, then writes queued calls and reads
/// answers until every client handle is gone or the connection fails (then every call in
/// flight or queued gets the error).
async fn drive(port: u16, mut queued: mpsc::UnboundedReceiver<MuxCall>) {
    type Waiter = oneshot::Sender<Result<Answer, String>>;
    let mut pending: Vec<Pending<Waiter>> = Vec::new();
    let failure: Result<(), String> = async {
        let mut conn = GrpcConn::connect(port).await?;
        loop {
            tokio::select! {
                call = queued.recv() => {
                    let Some(call) = call else { return Ok(()) };
                    let mut next = Some(call);
                    while let Some(call) = next {
                        match conn.queue_call(call.path, &call.message) {
                            Ok(stream) => pending.push(Pending::new(stream, call.answer)),
                            Err(e) => {
                                let _ = call.answer.send(Err(e));
                            }
                        }
                        next = queued.try_recv().ok();
                    }
                }
                read = conn.read_more() => {
                    read?;
                    conn.take_frames(&mut pending, |waiter, answer| {
                        let _ = waiter.send(Ok(answer));
                    })?;
                }
            }
            conn.flush().await?;
        }
    }
    .await;
    if let Err(e) = failure {
        queued.close();
        let waiters = pending.drain(..).map(|p| p.waiter);
        for waiter in waiters.chain(std::iter::from_fn(|| {
            queued.try_recv().ok().map(|c| c.answer)
        })) {
            let _ = waiter.send(Err(e.clone()));
        }
    }
}

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const WINDOW_UPDATE: u8 = 8;
const CONTINUATION: u8 = 9;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The window offered per stream and per connection.
const WINDOW: u32 = 1 << 30;

fn frame(out: &mut BytesMut, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = payload.len() as u32;
    out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// HPACK integer with an `n`-bit prefix whose high bits are `first`.
fn integer(out: &mut Vec<u8>, first: u8, n: u8, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// The request side of HPACK: static names, and the fields this client repeats put in the
/// server's dynamic table once, then sent as indexes.
#[derive(Default)]
struct Encoder {
    /// Newest first: (static name index, value, entry size).
    table: std::collections::VecDeque<(usize, Vec<u8>, usize)>,
    size: usize,
}

impl Encoder {
    /// One field whose name is static-table entry `name` (0: `te`).
    fn field(&mut self, out: &mut Vec<u8>, name: usize, value: &[u8]) {
        if let Some(i) = self
            .table
            .iter()
            .position(|(n, v, _)| *n == name && v == value)
        {
            return integer(out, 0x80, 7, 62 + i);
        }
        integer(out, 0x40, 6, name);
        if name == 0 {
            // A literal name: `te`, the one field this client sends that the static table
            // does not name.
            integer(out, 0, 7, STATIC_NAMES[0].len());
            out.extend_from_slice(STATIC_NAMES[0].as_bytes());
        }
        integer(out, 0, 7, value.len());
        out.extend_from_slice(value);
        // Entry size: name length + value length + 32 (RFC 7541, 4.1).
        let size = STATIC_NAMES[name].len() + value.len() + 32;
        self.table.push_front((name, value.to_vec(), size));
        self.size += size;
        while self.size > 4096 {
            let (_, _, s) = self.table.pop_back().expect("a non-empty table");
            self.size -= s;
        }
    }
}

/// The static-table names this client uses, by index; index 0 stands for `te`, sent as a
/// literal name.
const STATIC_NAMES: [&str; 32] = {
    let mut n = [""; 32];
    n[0] = "te";
    n[1] = ":authority";
    n[4] = ":path";
    n[31] = "content-type";
    n
};

/// One HTTP/2 connection of [`Grpc`] (or [`GrpcMux`]).
struct GrpcConn {
    tcp: TcpStream,
    authority: String,
    /// Bytes to send next (calls, the preface, acknowledgements, window updates).
    out: BytesMut,
    input: BytesMut,
    encoder: Encoder,
    decoder: tandem_api::http2::hpack::Decoder,
    block: Vec<u8>,
    /// A header block split over CONTINUATION frames: its flags and bytes so far.
    partial: Option<(u8, Vec<u8>)>,
    /// The pending list of [`GrpcConn::call`], kept for its allocation.
    solo: Vec<Pending<()>>,
    next_stream: u32,
    send_window: i64,
    received: u32,
}

/// The outcome of one call on a healthy connection: the answer's message bytes, or the
/// error status it carried.
type Answer = Result<Bytes, String>;

/// A call whose answer is being read, and who waits for it.
struct Pending<T> {
    stream: u32,
    data: BytesMut,
    status_ok: bool,
    waiter: T,
}

impl<T> Pending<T> {
    fn new(stream: u32, waiter: T) -> Self {
        Self {
            stream,
            data: BytesMut::new(),
            status_ok: false,
            waiter,
        }
    }
}

impl GrpcConn {
    async fn connect(port: u16) -> Result<Self, String> {
        let tcp = connect(port).await?;
        let mut out = BytesMut::with_capacity(4096);
        out.extend_from_slice(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        // SETTINGS_ENABLE_PUSH = 0, SETTINGS_INITIAL_WINDOW_SIZE = WINDOW.
        let mut settings = vec![0, 2, 0, 0, 0, 0, 0, 4];
        settings.extend_from_slice(&WINDOW.to_be_bytes());
        frame(&mut out, SETTINGS, 0, 0, &settings);
        frame(
            &mut out,
            WINDOW_UPDATE,
            0,
            0,
            &(WINDOW - 65_535).to_be_bytes(),
        );
        Ok(Self {
            tcp,
            authority: format!("127.0.0.1:{port}"),
            out,
            input: BytesMut::with_capacity(4096),
            encoder: Encoder::default(),
            decoder: Default::default(),
            block: Vec::new(),
            partial: None,
            solo: Vec::with_capacity(1),
            next_stream: 1,
            send_window: 65_535,
            received: 0,
        })
    }

    /// Sends one call and reads until its answer is complete. An `Err` means the
    /// connection is no longer usable.
    async fn call(&mut self, path: &str, message: &[u8]) -> Result<Answer, String> {
        let stream = self.queue_call(path, message)?;
        let mut pending = std::mem::take(&mut self.solo);
        pending.push(Pending::new(stream, ()));
        let answer = loop {
            self.flush().await?;
            self.read_more().await?;
            let mut answer = None;
            self.take_frames(&mut pending, |(), a| answer = Some(a))?;
            if let Some(answer) = answer {
                break answer;
            }
        };
        self.solo = pending;
        Ok(answer)
    }

    /// Puts one call (HEADERS, then its message in one DATA frame) in the output; returns
    /// its stream.
    fn queue_call(&mut self, path: &str, message: &[u8]) -> Result<u32, String> {
        self.send_window -= message.len() as i64;
        if self.send_window < 0 {
            return Err("the server's window is exhausted".into());
        }
        let block = &mut self.block;
        block.clear();
        block.push(0x83); // :method POST
        block.push(0x86); // :scheme http
        self.encoder.field(block, 4, path.as_bytes());
        self.encoder.field(block, 1, self.authority.as_bytes());
        self.encoder.field(block, 31, b"application/grpc");
        self.encoder.field(block, 0, b"trailers");
        let stream = self.next_stream;
        self.next_stream += 2;
        frame(&mut self.out, HEADERS, END_HEADERS, stream, block);
        frame(&mut self.out, DATA, END_STREAM, stream, message);
        Ok(stream)
    }

    /// Reads what the server sent next (cancel-safe: nothing is lost when the read is
    /// dropped before it completes).
    async fn read_more(&mut self) -> Result<(), String> {
        match self.tcp.read_buf(&mut self.input).await {
            Ok(0) => Err("the server closed the connection".into()),
            Ok(_) => Ok(()),
            Err(e) => Err(format!("read: {e}")),
        }
    }

    /// Writes the output, if any.
    async fn flush(&mut self) -> Result<(), String> {
        if !self.out.is_empty() {
            self.tcp
                .write_all(&self.out)
                .await
                .map_err(|e| format!("write: {e}"))?;
            self.out.clear();
        }
        Ok(())
    }

    /// Handles every complete frame read so far: an answer that completes leaves `pending`
    /// and goes to `done` with its waiter; acknowledgements and window updates go to the
    /// output. An `Err` means the connection is no longer usable.
    fn take_frames<T>(
        &mut self,
        pending: &mut Vec<Pending<T>>,
        mut done: impl FnMut(T, Answer),
    ) -> Result<(), String> {
        while self.input.len() >= 9 {
            let input = &mut self.input;
            let len = (input[0] as usize) << 16 | (input[1] as usize) << 8 | input[2] as usize;
            if input.len() < 9 + len {
                input.reserve(9 + len - input.len());
                break;
            }
            let head = input.split_to(9);
            let (kind, flags) = (head[3], head[4]);
            let on = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            let payload = input.split_to(len);
            let at = pending.iter().position(|p| p.stream == on);
            match kind {
                DATA => {
                    self.received += len as u32;
                    if let Some(i) = at {
                        pending[i].data.extend_from_slice(unpad(&payload, flags)?);
                        if flags & END_STREAM != 0 {
                            let p = pending.swap_remove(i);
                            done(p.waiter, Err("an answer without trailers".into()));
                        }
                    }
                }
                HEADERS | CONTINUATION => {
                    // A block in one frame is decoded where it lies; only one split over
                    // CONTINUATION frames is gathered.
                    let (flags, block) = if kind == HEADERS {
                        let mut body = unpad(&payload, flags)?;
                        if flags & PRIORITY != 0 {
                            body = body.get(5..).ok_or("a short HEADERS frame")?;
                        }
                        (flags, Cow::Borrowed(body))
                    } else {
                        let (f, mut so_far) =
                            self.partial.take().ok_or("an unexpected CONTINUATION")?;
                        so_far.extend_from_slice(&payload);
                        (f | (flags & END_HEADERS), Cow::Owned(so_far))
                    };
                    if flags & END_HEADERS == 0 {
                        self.partial = Some((flags, block.into_owned()));
                        continue;
                    }
                    let fields = headers(&mut self.decoder, &block)?;
                    let Some(i) = at else { continue };
                    if let Some(s) = &fields.status {
                        pending[i].status_ok = s.as_bytes() == b"200";
                    }
                    if flags & END_STREAM != 0 {
                        let mut p = pending.swap_remove(i);
                        let ok = p.status_ok
                            && fields.grpc_status.as_ref().map(HeaderValue::as_bytes) == Some(b"0");
                        let answer = if ok {
                            Ok(std::mem::take(&mut p.data).freeze())
                        } else {
                            Err(fields.describe())
                        };
                        done(p.waiter, answer);
                    }
                }
                RST_STREAM => {
                    if let Some(i) = at {
                        let p = pending.swap_remove(i);
                        done(p.waiter, Err(format!("stream reset: {payload:?}")));
                    }
                }
                SETTINGS if flags & ACK == 0 => frame(&mut self.out, SETTINGS, ACK, 0, &[]),
                PING if flags & ACK == 0 => frame(&mut self.out, PING, ACK, 0, &payload),
                GOAWAY => return Err(format!("GOAWAY {payload:?}")),
                WINDOW_UPDATE if on == 0 && payload.len() == 4 => {
                    let n = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                    self.send_window += i64::from(n);
                }
                _ => {}
            }
        }
        if self.received >= WINDOW / 2 {
            frame(
                &mut self.out,
                WINDOW_UPDATE,
                0,
                0,
                &self.received.to_be_bytes(),
            );
            self.received = 0;
        }
        Ok(())
    }
}

/// A frame's payload without its padding.
fn unpad(payload: &[u8], flags: u8) -> Result<&[u8], String> {
    if flags & PADDED == 0 {
        return Ok(payload);
    }
    let pad = *payload.first().ok_or("a short padded frame")? as usize;
    payload
        .get(1..payload.len().saturating_sub(pad))
        .filter(|_| pad < payload.len())
        .ok_or_else(|| "bad padding".to_owned())
}

/// The fields of an answer's header block that the client looks at.
struct Fields {
    status: Option<HeaderValue>,
    grpc_status: Option<HeaderValue>,
    grpc_message: Option<HeaderValue>,
}

impl Fields {
    fn describe(&self) -> String {
        let text = |v: &Option<HeaderValue>| {
            v.as_ref()
                .map(|s| String::from_utf8_lossy(s.as_bytes()).into_owned())
        };
        format!(
            "status {:?}, grpc-status {:?}: {:?}",
            text(&self.status),
            text(&self.grpc_status),
            text(&self.grpc_message)
        )
    }
}

/// Decodes one complete header block (every block, whatever its stream: HPACK state is
/// per connection).
fn headers(
    decoder: &mut tandem_api::http2::hpack::Decoder,
    block: &[u8],
) -> Result<Fields, String> {
    use tandem_api::http2::hpack::{Name, Pseudo};
    let mut fields = Fields {
        status: None,
        grpc_status: None,
        grpc_message: None,
    };
    decoder
        .decode(block, |f| {
            let value = f.value.clone();
            match &f.name {
                Name::Pseudo(Pseudo::Status) => fields.status = value,
                Name::Header(h) if h == "grpc-status" => fields.grpc_status = value,
                Name::Header(h) if h == "grpc-message" => fields.grpc_message = value,
                _ => {}
            }
        })
        .map_err(|e| format!("HPACK: {}", e.0))?;
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// Reads one request head (these requests carry no body).
    async fn read_head(tcp: &mut TcpStream) -> String {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            assert_eq!(tcp.read(&mut b).await.unwrap(), 1, "request cut short");
            head.push(b[0]);
        }
        String::from_utf8(head).unwrap()
    }

    #[tokio::test]
    async fn h1_reads_length_and_chunked_answers_on_one_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            // One connection only: the client must reuse it.
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut heads = Vec::new();
            for answer in [
                &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"[..],
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nx-trailer: 1\r\n\r\n",
                b"HTTP/1.1 404 Not Found\r\ncontent-length: 4\r\n\r\ngone",
            ] {
                heads.push(read_head(&mut tcp).await);
                tcp.write_all(answer).await.unwrap();
            }
            heads
        });
        let client = H1::new(port);
        let get = client.request("GET", "/a", &[("x-k", "v")], b"");
        assert_eq!(&client.call(&get, 200).await.unwrap()[..], b"hello");
        assert_eq!(&client.call(&get, 200).await.unwrap()[..], b"abcde");
        let err = client.call(&get, 200).await.unwrap_err();
        assert!(err.contains("status 404") && err.contains("gone"), "{err}");
        let heads = server.await.unwrap();
        assert_eq!(
            heads[0],
            format!("GET /a HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nx-k: v\r\n\r\n")
        );
    }

    #[tokio::test]
    async fn h1_fails_on_a_connection_closed_mid_answer() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            read_head(&mut tcp).await;
            tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort")
                .await
                .unwrap();
        });
        let client = H1::new(port);
        let get = client.request("GET", "/", &[], b"");
        let err = client.call(&get, 200).await.unwrap_err();
        assert!(err.contains("closed"), "{err}");
    }

    #[test]
    fn post_requests_carry_their_length() {
        let req = H1::new(1).request("POST", "/p", &[], b"{}");
        assert_eq!(
            req,
            b"POST /p HTTP/1.1\r\nhost: 127.0.0.1:1\r\ncontent-length: 2\r\n\r\n{}"
        );
    }

    /// An answer body: one DATA frame, then trailers.
    struct Answer(Option<Bytes>, Option<http::HeaderMap>);

    impl tandem_api::http2::AnswerBody for Answer {}

    impl hyper::body::Body for Answer {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
            let frame = match self.0.take() {
                Some(data) => Some(hyper::body::Frame::data(data)),
                None => self.1.take().map(hyper::body::Frame::trailers),
            };
            std::task::Poll::Ready(frame.map(Ok))
        }
    }

    /// Tandem's own HTTP/2 server answering each call with its path as a `StringValue`,
    /// or with `NOT_FOUND` for paths ending in `/Missing`.
    async fn path_server() -> (u16, tokio::sync::oneshot::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let service = tower::service_fn(|req: http::Request<_>| {
            let path = req.uri().path().to_owned();
            let mut trailers = http::HeaderMap::new();
            let data = if path.ends_with("/Missing") {
                trailers.insert("grpc-status", HeaderValue::from_static("5"));
                trailers.insert("grpc-message", HeaderValue::from_static("no such thing"));
                None
            } else {
                trailers.insert("grpc-status", HeaderValue::from_static("0"));
                let msg = prost::Message::encode_to_vec(&path);
                let mut data = vec![0, 0, 0, 0, msg.len() as u8];
                data.extend_from_slice(&msg);
                Some(Bytes::from(data))
            };
            let answer = http::Response::builder()
                .header("content-type", "application/grpc")
                .body(Answer(data, Some(trailers)))
                .unwrap();
            std::future::ready(Ok::<_, std::convert::Infallible>(answer))
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(tandem_api::http2::serve(listener, service, async move {
            let _ = stopped.await;
        }));
        (port, stop)
    }

    #[tokio::test]
    async fn grpc_mux_routes_concurrent_answers_to_their_calls() {
        let (port, _stop) = path_server().await;
        let client = GrpcMux::new(port);
        const PATHS: [&str; 4] = ["/t.S/A", "/t.S/B", "/t.S/Missing", "/t.S/C"];
        let calls = (0..40).map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                let path = PATHS[i % PATHS.len()];
                (path, client.unary::<_, String>(path, &()).await)
            })
        });
        for call in calls {
            let (path, answer) = call.await.unwrap();
            if path.ends_with("/Missing") {
                let err = answer.unwrap_err();
                assert!(
                    err.contains("grpc-status Some(\"5\")") && err.contains("no such thing"),
                    "{err}"
                );
            } else {
                assert_eq!(answer.unwrap(), path);
            }
        }
        // The pooled client reads the same answers.
        let pooled = Grpc::new(port);
        assert_eq!(
            pooled.unary::<_, String>("/t.S/D", &()).await.unwrap(),
            "/t.S/D"
        );
    }

    #[tokio::test]
    async fn grpc_mux_calls_fail_once_the_server_is_gone() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // Accepts, reads the preface and the call, and hangs up without answering.
        tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 256];
            let _ = tcp.read(&mut buf).await;
        });
        let client = GrpcMux::new(port);
        let err = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            client.unary::<_, String>("/t.S/A", &()),
        )
        .await
        .expect("the call must fail, not hang")
        .unwrap_err();
        assert!(err.contains("closed") || err.contains("read"), "{err}");
        let again = client.unary::<_, String>("/t.S/A", &()).await.unwrap_err();
        assert!(
            again.contains("closed") || again.contains("ended"),
            "{again}"
        );
    }

    #[test]
    fn hpack_fields_are_indexed_after_their_first_use() {
        let mut enc = Encoder::default();
        let mut first = Vec::new();
        enc.field(&mut first, 4, b"/p");
        enc.field(&mut first, 0, b"trailers");
        let mut again = Vec::new();
        enc.field(&mut again, 4, b"/p");
        enc.field(&mut again, 0, b"trailers");
        // Newest first: te is 62, :path 63.
        assert_eq!(again, [0x80 | 63, 0x80 | 62]);
        let mut decoder = tandem_api::http2::hpack::Decoder::default();
        let mut seen = Vec::new();
        for block in [&first, &again] {
            decoder
                .decode(block, |f| {
                    seen.push(f.value.as_ref().unwrap().as_bytes().to_vec());
                })
                .unwrap();
        }
        assert_eq!(seen, [&b"/p"[..], b"trailers", b"/p", b"trailers"]);
    }
}
