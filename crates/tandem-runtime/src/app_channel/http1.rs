//! The HTTP/1.1 client for apps spoken to over plain HTTP (`--app-protocol http`).
//!
//! The task that makes a call does all of its work itself: it takes an idle keep-alive
//! connection (or opens one), writes the request, reads the answer's head and hands the body
//! over. There is no connection task and no channel in between, so a call costs its write and
//! its read and little else. An answer whose body arrived with its head (the usual case for
//! small answers) is handed over whole and its connection goes back to the pool at once; a
//! longer one streams from the connection, which goes back to the pool when the body ends. A
//! body dropped before its end closes its connection.
//!
//! Requests: `Content-Length` framing when the length is known (from the header or the body),
//! chunked otherwise, nothing for an empty body; `Host` is added when missing. A request
//! body of up to 64 KiB is written together with the head in one write, and such a request
//! is sent again on a new connection when a reused one turns out to have been closed by the
//! app (a failed write, or, for idempotent methods, an end of stream before any answer).
//!
//! Answers: interim `1xx` heads are skipped; bodies framed by `Content-Length`, chunked
//! (trailers are read and dropped) or by the end of the connection; `HEAD` answers and
//! `204`/`304` have none. Heads are limited to 64 KiB and 100 fields (as hyper's client).
//!
//! Idle connections are kept for 90 seconds, newest first. One that the app closed (or that
//! has unexpected bytes waiting) is noticed from its readiness before it is used, without a
//! system call.

use std::collections::VecDeque;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker, ready};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Frame, SizeHint};
use tandem_components::BoxError;
use tandem_http1::{Framing, Spans, Step, has_token, put_length};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::AppBody;

/// How long an idle connection is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// The most idle connections kept.
const MAX_IDLE: usize = 1024;
/// The largest answer head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Request bodies up to this size are written with the head and can be sent again.
const BUFFERED_BODY: u64 = 64 * 1024;
/// Connection attempts give up after this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Keep-alive connections to one app.
pub(crate) struct Pool {
    host: String,
    port: u16,
    authority: HeaderValue,
    idle: Mutex<VecDeque<Idle>>,
}

struct Idle {
    io: TcpStream,
    since: Instant,
}

impl Pool {
    /// A pool for the app at `host:port` (`host` without brackets).
    pub(crate) fn new(host: &str, port: u16) -> Self {
        let authority = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Self {
            host: host.to_owned(),
            port,
            authority: HeaderValue::from_str(&authority)
                .unwrap_or_else(|_| HeaderValue::from_static("localhost")),
            idle: Mutex::new(VecDeque::new()),
        }
    }

    /// Sends `req` to `path_and_query` (which starts with `/`) and returns the answer once its
    /// head has arrived.
    pub(crate) async fn send(
        self: &Arc<Self>,
        req: Request<AppBody>,
        path_and_query: &str,
    ) -> Result<Response<Body>, String> {
        if path_and_query.is_empty() || path_and_query.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(format!("invalid path: {path_and_query:?}"));
        }
        let (parts, mut body) = req.into_parts();
        // Room for the head and, when it is short, the body written with it.
        let buffered = body
            .size_hint()
            .exact()
            .filter(|n| *n <= BUFFERED_BODY)
            .unwrap_or(0);
        let mut out = BytesMut::with_capacity(512 + buffered as usize);
        out.put_slice(parts.method.as_str().as_bytes());
        out.put_u8(b' ');
        out.put_slice(path_and_query.as_bytes());
        out.put_slice(b" HTTP/1.1\r\n");
        let mut has_host = false;
        let mut close = false;
        let mut stated: Option<u64> = None;
        for (name, value) in &parts.headers {
            if *name == http::header::CONTENT_LENGTH {
                let n = value
                    .to_str()
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .ok_or("invalid content-length header")?;
                if stated.is_some_and(|s| s != n) {
                    return Err("conflicting content-length headers".into());
                }
                stated = Some(n);
                continue;
            }
            if *name == http::header::TRANSFER_ENCODING {
                // The framing is this client's to choose.
                continue;
            }
            if *name == http::header::HOST {
                has_host = true;
            } else if *name == http::header::CONNECTION {
                close |= has_token(value.as_bytes(), b"close");
            }
            out.put_slice(name.as_str().as_bytes());
            out.put_slice(b": ");
            out.put_slice(value.as_bytes());
            out.put_slice(b"\r\n");
        }
        if !has_host {
            out.put_slice(b"host: ");
            out.put_slice(self.authority.as_bytes());
            out.put_slice(b"\r\n");
        }
        let framing = if body.is_end_stream() {
            match stated {
                Some(0) | None => {
                    if stated.is_some() {
                        out.put_slice(b"content-length: 0\r\n");
                    }
                    Outgoing::Empty
                }
                Some(n) => return Err(format!("content-length is {n} but the body is empty")),
            }
        } else if let Some(n) = stated.or_else(|| body.size_hint().exact()) {
            put_length(&mut out, n);
            Outgoing::Length(n)
        } else {
            out.put_slice(b"transfer-encoding: chunked\r\n");
            Outgoing::Chunked
        };
        out.put_slice(b"\r\n");

        let method = parts.method;
        let head_request = method == Method::HEAD;
        let whole = match framing {
            Outgoing::Empty => true,
            Outgoing::Length(n) if n <= BUFFERED_BODY => {
                let mut sent = 0;
                while let Some(data) = next_data(&mut body, framing, &mut sent).await? {
                    out.put_slice(&data);
                }
                true
            }
            _ => false,
        };

        if whole {
            let request = out.freeze();
            let idempotent = matches!(
                method,
                Method::GET
                    | Method::HEAD
                    | Method::PUT
                    | Method::DELETE
                    | Method::OPTIONS
                    | Method::TRACE
            );
            if let Some(io) = self.take() {
                let mut conn = Conn::new(io);
                // A failed write means the app had closed the connection: it read nothing of the
                // request, which goes out again on a new connection.
                if conn.io.write_all(&request).await.is_ok() {
                    match conn.read_head(head_request).await {
                        Ok(head) => return Ok(self.answer(conn, head, close)),
                        // The app closed the connection as the request went out: nothing was
                        // answered, and an idempotent request may be sent again.
                        Err(HeadError::Closed) if idempotent => {}
                        Err(e) => return Err(e.to_string()),
                    }
                }
            }
            let mut conn = self.connect().await?;
            conn.io
                .write_all(&request)
                .await
                .map_err(|e| format!("writing the request: {e}"))?;
            return self.answer_on(conn, head_request, close).await;
        }

        // A long or open-ended body streams after the head.
        let mut conn = match self.take() {
            Some(io) => Conn::new(io),
            None => self.connect().await?,
        };
        let write_error = |e: io::Error| format!("writing the request: {e}");
        conn.io.write_all(&out).await.map_err(write_error)?;
        drop(out);
        let mut sent = 0;
        while let Some(data) = next_data(&mut body, framing, &mut sent).await? {
            if let Outgoing::Chunked = framing {
                // Size line, data and CRLF in one (vectored) write.
                let size = format!("{:x}\r\n", data.len());
                let mut chunk = size.as_bytes().chain(&data[..]).chain(&b"\r\n"[..]);
                conn.io.write_all_buf(&mut chunk).await
            } else {
                conn.io.write_all(&data).await
            }
            .map_err(write_error)?;
        }
        if let Outgoing::Chunked = framing {
            conn.io.write_all(b"0\r\n\r\n").await.map_err(write_error)?;
        }
        self.answer_on(conn, head_request, close).await
    }

    /// Reads the answer to the request just written on `conn`.
    async fn answer_on(
        self: &Arc<Self>,
        mut conn: Conn,
        head_request: bool,
        close: bool,
    ) -> Result<Response<Body>, String> {
        let head = conn
            .read_head(head_request)
            .await
            .map_err(|e| e.to_string())?;
        Ok(self.answer(conn, head, close))
    }

    /// An idle connection that is still open, newest first.
    fn take(&self) -> Option<TcpStream> {
        let now = Instant::now();
        loop {
            let idle = self
                .idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop_back()?;
            if now.duration_since(idle.since) > IDLE_TIMEOUT {
                continue;
            }
            // An idle connection has nothing to read: readiness means the app closed it (or
            // sent something unasked). The readiness is tokio's, so this costs no system call.
            let mut cx = Context::from_waker(Waker::noop());
            if idle.io.poll_read_ready(&mut cx).is_pending() {
                return Some(idle.io);
            }
        }
    }

    fn put(&self, conn: Conn) {
        if !conn.buf.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while idle
            .front()
            .is_some_and(|i| now.duration_since(i.since) > IDLE_TIMEOUT)
        {
            idle.pop_front();
        }
        if idle.len() < MAX_IDLE {
            idle.push_back(Idle {
                io: conn.io,
                since: now,
            });
        }
    }

    async fn connect(&self) -> Result<Conn, String> {
        let io = tokio::time::timeout(
            CONNECT_TIMEOUT,
            TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| format!("connecting to {}: timed out", self.authority_str()))?
        .map_err(|e| format!("connecting to {}: {e}", self.authority_str()))?;
        let _ = io.set_nodelay(true);
        Ok(Conn::new(io))
    }

    fn authority_str(&self) -> &str {
        self.authority.to_str().unwrap_or("the app")
    }

    /// The answer to hand over: whole when its body is already here, else streaming.
    fn answer(self: &Arc<Self>, mut conn: Conn, head: Head, close: bool) -> Response<Body> {
        let reusable = !close && head.keep_alive;
        let mut response = Response::new(Body::empty());
        *response.status_mut() = head.status;
        *response.version_mut() = head.version;
        *response.headers_mut() = head.headers;
        match head.framing {
            Framing::Length(n) if conn.buf.len() as u64 >= n => {
                let data = conn.buf.split_to(n as usize).freeze();
                if reusable {
                    self.put(conn);
                }
                *response.body_mut() = Body::full(data);
            }
            Framing::Done => {
                if reusable {
                    self.put(conn);
                }
            }
            framing => {
                *response.body_mut() = Body {
                    state: State::Reading(Box::new(Reader {
                        conn: Some(conn),
                        framing,
                        reusable,
                        pool: self.clone(),
                    })),
                };
            }
        }
        response
    }
}

/// The next data of a request body (`None` at its end), checked against the length stated
/// for it; `sent` counts the bytes so far.
async fn next_data(
    body: &mut AppBody,
    framing: Outgoing,
    sent: &mut u64,
) -> Result<Option<Bytes>, String> {
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("reading the request body: {e}"))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        *sent += data.len() as u64;
        if let Outgoing::Length(n) = framing
            && *sent > n
        {
            return Err(format!("the request body is longer than {n} bytes"));
        }
        return Ok(Some(data));
    }
    if let Outgoing::Length(n) = framing
        && *sent != n
    {
        return Err(format!("the request body ended after {sent} of {n} bytes"));
    }
    Ok(None)
}

#[derive(Clone, Copy)]
enum Outgoing {
    Empty,
    Length(u64),
    Chunked,
}

struct Head {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    framing: Framing,
    keep_alive: bool,
}

#[derive(Debug)]
enum HeadError {
    /// The connection ended before a byte of the answer arrived.
    Closed,
    Io(io::Error),
    Invalid(String),
}

impl std::fmt::Display for HeadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Closed => f.write_str("the app closed the connection without answering"),
            Self::Io(e) => write!(f, "reading the answer: {e}"),
            Self::Invalid(e) => write!(f, "invalid answer from the app: {e}"),
        }
    }
}

struct Conn {
    io: TcpStream,
    buf: BytesMut,
}

impl Conn {
    fn new(io: TcpStream) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
        }
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        tandem_http1::poll_fill(&mut self.io, &mut self.buf, cx)
    }

    async fn fill(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }

    /// Reads up to the final head of the answer (interim `1xx` heads are skipped).
    async fn read_head(&mut self, head_request: bool) -> Result<Head, HeadError> {
        let mut answered = false;
        loop {
            if !self.buf.is_empty() {
                answered = true;
                if let Some(head) = self.parse_head(head_request)? {
                    return Ok(head);
                }
                if self.buf.len() > MAX_HEAD {
                    return Err(HeadError::Invalid("the answer's head is too long".into()));
                }
            }
            match self.fill().await {
                Ok(0) if !answered => return Err(HeadError::Closed),
                Ok(0) => {
                    return Err(HeadError::Invalid(
                        "the connection closed in the middle of the head".into(),
                    ));
                }
                Ok(_) => {}
                Err(e)
                    if !answered
                        && matches!(
                            e.kind(),
                            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                        ) =>
                {
                    return Err(HeadError::Closed);
                }
                Err(e) => return Err(HeadError::Io(e)),
            }
        }
    }

    /// Parses a complete head off the buffer; `None` when more bytes are needed or an
    /// interim head was skipped.
    fn parse_head(&mut self, head_request: bool) -> Result<Option<Head>, HeadError> {
        loop {
            let mut slots = [const { MaybeUninit::uninit() }; tandem_http1::MAX_FIELDS];
            let mut parsed = httparse::Response::new(&mut []);
            let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
                &mut parsed,
                &self.buf,
                &mut slots,
            ) {
                Ok(httparse::Status::Complete(len)) => len,
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(e) => return Err(HeadError::Invalid(e.to_string())),
            };
            let code = parsed.code.unwrap_or(0);
            let version = if parsed.version == Some(0) {
                Version::HTTP_10
            } else {
                Version::HTTP_11
            };
            let spans = Spans::of(&self.buf, parsed.headers);
            let status = StatusCode::from_u16(code)
                .map_err(|_| HeadError::Invalid(format!("status {code}")))?;
            if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
                self.buf.advance(len);
                if self.buf.is_empty() {
                    return Ok(None);
                }
                continue;
            }
            let head = self.buf.split_to(len).freeze();
            let fields = spans.decode(&head).map_err(HeadError::Invalid)?;
            let mut keep_alive = if version == Version::HTTP_11 {
                !fields.close
            } else {
                fields.keep_alive && !fields.close
            };
            let (chunked, length, headers) = (fields.chunked, fields.length, fields.headers);
            let framing = if head_request
                || status == StatusCode::NO_CONTENT
                || status == StatusCode::NOT_MODIFIED
            {
                Framing::Done
            } else if status == StatusCode::SWITCHING_PROTOCOLS {
                // No upgrades on the app channel: the connection is not used again.
                keep_alive = false;
                Framing::Done
            } else if let Some(chunked) = chunked {
                if chunked {
                    Framing::Chunked(tandem_http1::Chunk::Size)
                } else {
                    keep_alive = false;
                    Framing::UntilClose
                }
            } else if let Some(n) = length {
                Framing::Length(n)
            } else {
                keep_alive = false;
                Framing::UntilClose
            };
            return Ok(Some(Head {
                status,
                version,
                headers,
                framing,
                keep_alive,
            }));
        }
    }
}

/// An answer's body from the app.
pub(crate) struct Body {
    state: State,
}

enum State {
    Full(Option<Bytes>),
    Reading(Box<Reader>),
}

struct Reader {
    /// `None` once the body ended.
    conn: Option<Conn>,
    framing: Framing,
    reusable: bool,
    pool: Arc<Pool>,
}

impl Body {
    fn empty() -> Self {
        Self {
            state: State::Full(None),
        }
    }

    fn full(data: Bytes) -> Self {
        Self {
            state: State::Full(Some(data).filter(|d| !d.is_empty())),
        }
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Body")
    }
}

impl Reader {
    /// The next step the buffered bytes allow.
    fn step(&mut self) -> Result<Step, &'static str> {
        match self.conn.as_mut() {
            Some(conn) => self.framing.step(&mut conn.buf),
            None => Ok(Step::End),
        }
    }

    /// The body ended: its connection goes back to the pool when it can be used again.
    fn finish(&mut self) {
        if let Some(conn) = self.conn.take()
            && self.reusable
        {
            self.pool.put(conn);
        }
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let reader = match &mut self.state {
            State::Full(data) => return Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            State::Reading(reader) => reader,
        };
        loop {
            match reader.step() {
                Ok(Step::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(Step::End) => {
                    reader.finish();
                    return Poll::Ready(None);
                }
                Ok(Step::More) => {}
                Err(e) => {
                    reader.conn = None;
                    return Poll::Ready(Some(Err(format!("invalid answer body: {e}").into())));
                }
            }
            let Some(conn) = reader.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if reader.framing == Framing::UntilClose => {
                    reader.framing = Framing::Done;
                    reader.reusable = false;
                    reader.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    reader.conn = None;
                    return Poll::Ready(Some(Err(
                        "the app closed the connection before the answer's body ended".into(),
                    )));
                }
                Ok(_) => {}
                Err(e) => {
                    reader.conn = None;
                    return Poll::Ready(Some(
                        Err(format!("reading the answer's body: {e}").into()),
                    ));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.state {
            State::Full(data) => data.is_none(),
            State::Reading(reader) => reader.conn.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            State::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            State::Reading(reader) => match reader.framing {
                Framing::Length(n) if reader.conn.is_some() => SizeHint::with_exact(n),
                Framing::Done => SizeHint::with_exact(0),
                _ => SizeHint::default(),
            },
        }
    }
}

#[cfg(test)]
mod tests;
