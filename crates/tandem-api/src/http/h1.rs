//! Tandem's HTTP/1.1 server for one plain-TCP connection.
//!
//! The connection's task does all of the work itself: it reads a request head, hands the
//! request to the service, and writes the answer; there is no dispatcher, channel or extra
//! task between the socket and the service. A request whose body arrived with its head
//! (the usual case for API calls) is handed over whole, as are other bodies of up to 64 KiB
//! (read before the service is called); longer ones, chunked ones and those sent after
//! `100 Continue` stream from the socket as the service reads them. A streamed body that
//! the service leaves unread is read and dropped when it is at most 64 KiB; otherwise the
//! connection closes after the answer.
//!
//! Requests: `Content-Length` or chunked framing (extensions and trailers read and dropped);
//! `Transfer-Encoding` together with `Content-Length`, or ending in anything but `chunked`,
//! is refused (400), as are bad heads; heads are limited to 64 KiB and 100 fields (431).
//! HTTP/1.0 is served, kept alive only when it asks to be. `Expect: 100-continue` is
//! answered when the service first reads the body.
//!
//! Answers: `Content-Length` when the body's size is known, chunked otherwise (close
//! delimited for HTTP/1.0); no body for `HEAD`, `1xx`, `204` and `304`; `date` added when
//! missing. A short body is written with its head in one write.
//!
//! A request head must arrive whole within [`HEAD_TIMEOUT`] (daprd's `ReadHeaderTimeout`),
//! counted from when serving the connection begins for its first request and from the
//! head's first byte for the next ones; otherwise the connection closes without an answer.
//! An idle connection between requests has no limit.
//!
//! While a request whose body is already read is in the service, the socket is watched:
//! when the client goes away, the call is dropped (cancelled). When the server stops, an
//! idle connection closes at once and a busy one after its answer, which says
//! `connection: close`.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{Method, Request, Response, StatusCode, Uri, Version, header};
use http_body::{Body, Frame, SizeHint};
use tandem_http1::{Framing, Spans, Step, fill, has_token, poll_fill, put_date, put_length};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::watch;
use tower::Service;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The largest request head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Bodies of up to this size are read before the service is called.
const READ_AHEAD: u64 = 64 * 1024;
/// A body the service left unread is read and dropped, to keep the connection, up to this
/// size; the connection closes after longer ones.
const DRAIN: u64 = 64 * 1024;
/// Answer bodies up to this size are copied next to their head; longer ones go out in
/// vectored writes.
const COPY: usize = 16 * 1024;
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
/// How long a request head may take to arrive, as daprd's HTTP server allows.
pub(crate) const HEAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves HTTP/1.1 on `tcp` until the client closes it, it fails, or `stopped` turns true
/// (at once when idle, after the answer in progress otherwise).
pub(crate) async fn serve_connection<S, B>(
    tcp: TcpStream,
    mut service: S,
    mut stopped: watch::Receiver<bool>,
) where
    S: Service<Request<RequestBody>, Response = Response<B>, Error = Infallible>,
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let stopping = stopped.clone();
    let stop = stopped.wait_for(|stop| *stop);
    tokio::pin!(stop);
    let (rd, wr) = tcp.into_split();
    let mut conn = Conn {
        rd: Some(rd),
        wr,
        buf: BytesMut::with_capacity(tandem_http1::READ_SIZE),
        out: BytesMut::with_capacity(1024),
    };
    // The first head is due within HEAD_TIMEOUT of the connection's start.
    let mut due = Some(tokio::time::Instant::now() + HEAD_TIMEOUT);
    loop {
        // The next request's head; while none has begun, the server's stop ends the connection.
        let head = loop {
            if !conn.buf.is_empty() {
                match parse(&mut conn.buf) {
                    Ok(Some(head)) => break head,
                    Ok(None) if conn.buf.len() > MAX_HEAD => {
                        return conn
                            .refuse(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "")
                            .await;
                    }
                    Ok(None) => {}
                    Err(refusal) => return conn.refuse(refusal.0, &refusal.1).await,
                }
                // A head has begun: it is due within HEAD_TIMEOUT (the clock is read only
                // when a head comes in more than one read).
                due.get_or_insert_with(|| tokio::time::Instant::now() + HEAD_TIMEOUT);
            }
            let more = match due {
                Some(due) => tokio::time::timeout_at(due, conn.read_more(stop.as_mut())).await,
                None => Ok(conn.read_more(stop.as_mut()).await),
            };
            match more {
                Ok(true) => {}
                Ok(false) => return,
                Err(_) => {
                    tracing::debug!(
                        "HTTP server: closed a connection whose request head took longer than {HEAD_TIMEOUT:?}"
                    );
                    return;
                }
            }
        };
        due = None;

        let Head {
            method,
            uri,
            version,
            fields,
        } = head;
        let mut keep_alive = if version == Version::HTTP_11 {
            !fields.close
        } else {
            fields.keep_alive && !fields.close
        };
        let framing = match (fields.chunked, fields.length) {
            (Some(true), None) => {
                // A chunked HTTP/1.0 request is served, then the connection closes.
                keep_alive &= version == Version::HTTP_11;
                Framing::Chunked(tandem_http1::Chunk::Size)
            }
            (Some(_), _) => {
                let why = "transfer-encoding must end in chunked and comes without content-length";
                return conn.refuse(StatusCode::BAD_REQUEST, why).await;
            }
            (None, Some(n)) if n > 0 => Framing::Length(n),
            (None, _) => Framing::Done,
        };
        let expect_continue = fields.expect_continue && version == Version::HTTP_11;

        let body = match framing {
            Framing::Done => RequestBody::full(Bytes::new()),
            Framing::Length(n) if conn.buf.len() as u64 >= n => {
                RequestBody::full(conn.buf.split_to(n as usize).freeze())
            }
            Framing::Length(n) if n <= READ_AHEAD && !expect_continue => {
                while (conn.buf.len() as u64) < n {
                    if !conn.read_more(stop.as_mut()).await {
                        return;
                    }
                }
                RequestBody::full(conn.buf.split_to(n as usize).freeze())
            }
            framing => {
                let Some(rd) = conn.rd.take() else { return };
                RequestBody(Kind::Stream(Box::new(Reader {
                    side: Some(ReadSide {
                        rd,
                        buf: std::mem::take(&mut conn.buf),
                        framing,
                        continue_left: if expect_continue { CONTINUE.len() } else { 0 },
                        failed: false,
                    }),
                    home: Arc::new(Home::default()),
                })))
            }
        };
        let home = match &body.0 {
            Kind::Stream(reader) => Some(reader.home.clone()),
            Kind::Full(_) => None,
        };

        let head_request = method == Method::HEAD;
        let mut req = Request::new(body);
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        *req.version_mut() = version;
        *req.headers_mut() = fields.headers;
        let call = service.call(req);
        let answer = match conn.rd.as_mut() {
            // The body is read: a client that goes away cancels the call.
            Some(rd) => {
                tokio::select! {
                    biased;
                    answer = call => answer,
                    () = gone(rd, &mut conn.buf) => return,
                }
            }
            None => call.await,
        };
        let Ok(answer) = answer;

        if *stopping.borrow() {
            keep_alive = false;
        }
        let mut unread = None;
        if let Some(home) = home {
            // The body streamed: the connection carries on only if its end was read, or
            // can still be read and dropped.
            let left = home.0.lock().unwrap_or_else(|e| e.into_inner()).take();
            let carry_on = left.as_ref().is_some_and(|left| {
                !left.failed
                    && match left.framing {
                        Framing::Done | Framing::Length(0) => true,
                        // Unread, and never asked for: the client may not send it at all.
                        _ if left.continue_left > 0 => false,
                        Framing::Length(n) => n <= DRAIN,
                        _ => false,
                    }
            });
            match left {
                Some(ReadSide {
                    rd, buf, framing, ..
                }) if carry_on => {
                    conn.rd = Some(rd);
                    conn.buf = buf;
                    if let Framing::Length(n) = framing {
                        unread = Some(n).filter(|n| *n > 0);
                    }
                }
                _ => keep_alive = false,
            }
        }
        let written = conn
            .answer(answer, head_request, version, &mut keep_alive)
            .await;
        if written.is_err() || !keep_alive {
            return;
        }
        // What the service left of a body is read and dropped.
        if let Some(n) = unread
            && !conn.skip(n).await
        {
            return;
        }
    }
}

/// Resolves when the client closes the connection (or it fails); bytes of a next request
/// sent early stay in `buf`, and the watch ends there.
async fn gone(rd: &mut OwnedReadHalf, buf: &mut BytesMut) {
    match fill(rd, buf).await {
        Ok(0) | Err(_) => {}
        Ok(_) => std::future::pending().await,
    }
}

struct Conn {
    /// `None` while a streaming request body has it.
    rd: Option<OwnedReadHalf>,
    wr: OwnedWriteHalf,
    buf: BytesMut,
    out: BytesMut,
}

impl Conn {
    /// Reads more of the request into `buf`; `false` when the client closed the connection
    /// or it failed, or when `stop` resolved first.
    async fn read_more(&mut self, stop: Pin<&mut impl Future>) -> bool {
        let Some(rd) = self.rd.as_mut() else {
            return false;
        };
        tokio::select! {
            biased;
            read = fill(rd, &mut self.buf) => matches!(read, Ok(n) if n > 0),
            _ = stop => false,
        }
    }

    /// Answers a bad request and ends the connection (the write half closes on drop).
    async fn refuse(mut self, status: StatusCode, why: &str) {
        tracing::debug!(%status, why, "HTTP server: refused a request");
        self.out.clear();
        status_line(&mut self.out, Version::HTTP_11, status);
        put_date(&mut self.out);
        self.out
            .put_slice(b"content-type: text/plain; charset=utf-8\r\nconnection: close\r\n");
        let text = format!("{}\n", status.canonical_reason().unwrap_or("Bad Request"));
        put_length(&mut self.out, text.len() as u64);
        self.out.put_slice(b"\r\n");
        self.out.put_slice(text.as_bytes());
        let _ = self.flush().await;
    }

    async fn flush(&mut self) -> io::Result<()> {
        let (wr, out) = (&self.wr, &mut self.out);
        std::future::poll_fn(|cx| tandem_http2::poll_write_all(wr.as_ref(), out, cx)).await
    }

    /// Writes `self.out` then `data`, in vectored writes.
    async fn write_with(&mut self, mut data: Bytes) -> io::Result<()> {
        let (wr, out) = (&self.wr, &mut self.out);
        std::future::poll_fn(|cx| {
            while !out.is_empty() || !data.is_empty() {
                let bufs = [io::IoSlice::new(out), io::IoSlice::new(&data)];
                match wr.as_ref().try_write_vectored(&bufs) {
                    Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Ok(mut n) => {
                        let from_out = n.min(out.len());
                        out.advance(from_out);
                        n -= from_out;
                        data.advance(n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        ready!(wr.as_ref().poll_write_ready(cx))?;
                    }
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            Poll::Ready(Ok(()))
        })
        .await
    }

    /// Reads and drops `n` bytes of an unread body; whether they all came.
    async fn skip(&mut self, mut n: u64) -> bool {
        let Some(rd) = self.rd.as_mut() else {
            return false;
        };
        loop {
            let take = (self.buf.len() as u64).min(n);
            self.buf.advance(take as usize);
            n -= take;
            if n == 0 {
                return true;
            }
            match fill(rd, &mut self.buf).await {
                Ok(0) | Err(_) => return false,
                Ok(_) => {}
            }
        }
    }

    /// Writes `answer`; `keep_alive` turns false when the connection cannot carry on.
    async fn answer<B>(
        &mut self,
        answer: Response<B>,
        head_request: bool,
        version: Version,
        keep_alive: &mut bool,
    ) -> io::Result<()>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        let (parts, mut body) = answer.into_parts();
        let status = parts.status;
        let out = &mut self.out;
        out.clear();
        status_line(out, version, status);
        let mut stated: Option<u64> = None;
        let mut has_date = false;
        let mut has_connection = false;
        for (name, value) in &parts.headers {
            if *name == header::CONTENT_LENGTH {
                stated = value.to_str().ok().and_then(|v| v.trim().parse().ok());
                continue;
            }
            if *name == header::TRANSFER_ENCODING {
                // The framing is the server's to choose.
                continue;
            }
            if *name == header::DATE {
                has_date = true;
            } else if *name == header::CONNECTION {
                has_connection = true;
                if has_token(value.as_bytes(), b"close") {
                    *keep_alive = false;
                }
            }
            out.put_slice(name.as_str().as_bytes());
            out.put_slice(b": ");
            out.put_slice(value.as_bytes());
            out.put_slice(b"\r\n");
        }
        if !has_date {
            put_date(out);
        }
        let bodiless = status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        let framing = if bodiless {
            if status == StatusCode::NOT_MODIFIED
                && let Some(n) = stated
            {
                put_length(out, n);
            }
            Out::None
        } else {
            let known = stated.or_else(|| {
                if body.is_end_stream() {
                    Some(0)
                } else {
                    body.size_hint().exact()
                }
            });
            match known {
                Some(n) => {
                    put_length(out, n);
                    Out::Length(n)
                }
                None if version == Version::HTTP_11 => {
                    out.put_slice(b"transfer-encoding: chunked\r\n");
                    Out::Chunked
                }
                None => {
                    *keep_alive = false;
                    Out::UntilClose
                }
            }
        };
        if !has_connection {
            if !*keep_alive && version == Version::HTTP_11 {
                out.put_slice(b"connection: close\r\n");
            } else if *keep_alive && version == Version::HTTP_10 {
                out.put_slice(b"connection: keep-alive\r\n");
            }
        }
        out.put_slice(b"\r\n");
        if head_request || matches!(framing, Out::None) {
            return self.flush().await;
        }

        let mut sent = 0u64;
        loop {
            // What the body has now; what it has not is waited for after the buffered
            // bytes went out.
            let polled =
                std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await;
            let frame = match polled {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    if !self.out.is_empty() {
                        self.flush().await?;
                    }
                    std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
                }
            };
            let data = match frame {
                None => break,
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if !data.is_empty() => data,
                    _ => continue,
                },
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "HTTP server: the answer's body failed");
                    *keep_alive = false;
                    // What is buffered goes out; the client sees the body cut short.
                    let _ = self.flush().await;
                    return Err(io::Error::other(e.to_string()));
                }
            };
            sent += data.len() as u64;
            if let Out::Length(n) = framing
                && sent > n
            {
                *keep_alive = false;
                return Err(io::Error::other("the answer's body is longer than stated"));
            }
            if let Out::Chunked = framing {
                self.out
                    .put_slice(format!("{:x}\r\n", data.len()).as_bytes());
            }
            if data.len() <= COPY {
                self.out.put_slice(&data);
            } else {
                self.write_with(data).await?;
            }
            if let Out::Chunked = framing {
                self.out.put_slice(b"\r\n");
            }
        }
        if let Out::Chunked = framing {
            self.out.put_slice(b"0\r\n\r\n");
        }
        self.flush().await?;
        if let Out::Length(n) = framing
            && sent != n
        {
            *keep_alive = false;
            return Err(io::Error::other("the answer's body is shorter than stated"));
        }
        Ok(())
    }
}

/// How an answer's body goes out.
#[derive(Clone, Copy)]
enum Out {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

fn status_line(out: &mut BytesMut, version: Version, status: StatusCode) {
    out.put_slice(if version == Version::HTTP_10 {
        b"HTTP/1.0 "
    } else {
        b"HTTP/1.1 "
    });
    out.put_slice(status.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.put_slice(b"\r\n");
}

struct Head {
    method: Method,
    uri: Uri,
    version: Version,
    fields: tandem_http1::Fields,
}

/// Why a request is refused, and what the log says.
struct Refusal(StatusCode, String);

fn bad(why: impl Into<String>) -> Refusal {
    Refusal(StatusCode::BAD_REQUEST, why.into())
}

/// Parses a complete request head off `buf`; `None` when more bytes are needed.
fn parse(buf: &mut BytesMut) -> Result<Option<Head>, Refusal> {
    let mut slots = [const { MaybeUninit::uninit() }; tandem_http1::MAX_FIELDS];
    let mut req = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_request_with_uninit_headers(&mut req, buf, &mut slots)
    {
        Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Ok(httparse::Status::Complete(_)) => {
            return Err(Refusal(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "the head is too long".into(),
            ));
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Refusal(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "too many header fields".into(),
            ));
        }
        Err(e) => return Err(bad(e.to_string())),
    };
    let method = Method::from_bytes(req.method.unwrap_or_default().as_bytes())
        .map_err(|_| bad("invalid method"))?;
    let version = match req.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    let path = req.path.unwrap_or_default();
    let path_at = path.as_ptr() as usize - buf.as_ptr() as usize;
    let path_len = path.len();
    let spans = Spans::of(buf, req.headers);
    let head = buf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(head.slice(path_at..path_at + path_len))
        .map_err(|e| bad(format!("invalid request target: {e}")))?;
    let fields = spans.decode(&head).map_err(bad)?;
    Ok(Some(Head {
        method,
        uri,
        version,
        fields,
    }))
}

/// A request body: whole, or streaming from the connection.
pub struct RequestBody(Kind);

enum Kind {
    Full(Option<Bytes>),
    Stream(Box<Reader>),
}

impl RequestBody {
    fn full(data: Bytes) -> Self {
        Self(Kind::Full(Some(data).filter(|d| !d.is_empty())))
    }
}

/// Where a streaming body leaves the connection's read side when it ends or is dropped.
#[derive(Default)]
struct Home(Mutex<Option<ReadSide>>);

/// The connection's read half and what a streaming body needs to read from it.
struct ReadSide {
    rd: OwnedReadHalf,
    buf: BytesMut,
    framing: Framing,
    /// Bytes of `100 Continue` still to write before the body is waited for.
    continue_left: usize,
    failed: bool,
}

struct Reader {
    /// `None` once it went back to the connection (at the body's end, or on drop).
    side: Option<ReadSide>,
    home: Arc<Home>,
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.go_home();
    }
}

impl Reader {
    /// Hands the read side back to the connection, once.
    fn go_home(&mut self) {
        if let Some(side) = self.side.take() {
            *self.home.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(side);
        }
    }
}

impl ReadSide {
    fn fail(&mut self, why: String) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.failed = true;
        Poll::Ready(Some(Err(why.into())))
    }

    /// Writes what is left of `100 Continue`.
    fn poll_continue(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let io: &TcpStream = self.rd.as_ref();
        while self.continue_left > 0 {
            let from = CONTINUE.len() - self.continue_left;
            match io.try_write(&CONTINUE[from..]) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => self.continue_left -= n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(io.poll_write_ready(cx))?;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let reader = match &mut self.0 {
            Kind::Full(data) => return Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Kind::Stream(reader) => reader,
        };
        let Some(side) = reader.side.as_mut().filter(|side| !side.failed) else {
            return Poll::Ready(None);
        };
        loop {
            match side.framing.step(&mut side.buf) {
                Ok(Step::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(Step::End) => {
                    // The connection can carry on before whoever holds the body drops it.
                    reader.go_home();
                    return Poll::Ready(None);
                }
                Ok(Step::More) => {}
                Err(e) => return side.fail(format!("invalid request body: {e}")),
            }
            if side.continue_left > 0
                && let Err(e) = ready!(side.poll_continue(cx))
            {
                return side.fail(format!("writing 100 Continue: {e}"));
            }
            match ready!(poll_fill(&mut side.rd, &mut side.buf, cx)) {
                Ok(0) => {
                    return side
                        .fail("the client closed the connection before the body ended".into());
                }
                Ok(_) => {}
                Err(e) => return side.fail(format!("reading the request body: {e}")),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Full(data) => data.is_none(),
            Kind::Stream(reader) => reader
                .side
                .as_ref()
                .is_none_or(|side| side.failed || side.framing.exact() == Some(0)),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Kind::Stream(reader) => match &reader.side {
                Some(side) => side
                    .framing
                    .exact()
                    .map_or_else(SizeHint::default, SizeHint::with_exact),
                None => SizeHint::with_exact(0),
            },
        }
    }
}

impl std::fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RequestBody")
    }
}

#[cfg(test)]
mod tests;
