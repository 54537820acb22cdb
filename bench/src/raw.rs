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
            None => {
                let tcp = TcpStream::connect(("127.0.0.1", self.port))
                    .await
                    .map_err(|e| format!("connect 127.0.0.1:{}: {e}", self.port))?;
                tcp.set_nodelay(true).map_err(|e| e.to_string())?;
                Conn {
                    tcp,
                    buf: BytesMut::with_capacity(4096),
                }
            }
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

    /// A chunked body, trailers skipped.
    async fn chunked(&mut self) -> Result<Bytes, String> {
        let mut body = BytesMut::new();
        loop {
            let line = loop {
                if let Some(i) = find(&self.buf, b"\r\n") {
                    break i;
                }
                self.fill().await?;
            };
            let size = std::str::from_utf8(&self.buf[..line])
                .ok()
                .map(|l| l.split(';').next().unwrap_or("").trim())
                .and_then(|l| usize::from_str_radix(l, 16).ok())
                .ok_or("bad chunk size")?;
            self.buf.advance(line + 2);
            if size == 0 {
                // Trailers, if any, end with an empty line.
                loop {
                    let end = loop {
                        if let Some(i) = find(&self.buf, b"\r\n") {
                            break i;
                        }
                        self.fill().await?;
                    };
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
        let mut message = BytesMut::with_capacity(5 + msg.encoded_len());
        bytes::BufMut::put_u8(&mut message, 0);
        bytes::BufMut::put_u32(&mut message, msg.encoded_len() as u32);
        msg.encode(&mut message).map_err(|e| e.to_string())?;
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
        let data = data.map_err(|e| format!("{path}: {e}"))?;
        if data.len() < 5 || data[0] != 0 {
            return Err(format!(
                "{path}: malformed gRPC message ({} bytes)",
                data.len()
            ));
        }
        Resp::decode(&data[5..]).map_err(|e| format!("{path}: {e}"))
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

/// One HTTP/2 connection of [`Grpc`].
struct GrpcConn {
    tcp: TcpStream,
    authority: String,
    /// Bytes to send with the next call (the preface, acknowledgements, window updates).
    out: BytesMut,
    input: BytesMut,
    encoder: Encoder,
    decoder: tandem_api::http2::hpack::Decoder,
    block: Vec<u8>,
    next_stream: u32,
    send_window: i64,
    received: u32,
}

/// The outcome of one call on a healthy connection: the answer's message bytes, or the
/// error status it carried.
type Answer = Result<Bytes, String>;

impl GrpcConn {
    async fn connect(port: u16) -> Result<Self, String> {
        let tcp = TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| format!("connect 127.0.0.1:{port}: {e}"))?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
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
            next_stream: 1,
            send_window: 65_535,
            received: 0,
        })
    }

    /// Sends one call and reads until its answer is complete. An `Err` means the
    /// connection is no longer usable.
    async fn call(&mut self, path: &str, message: &[u8]) -> Result<Answer, String> {
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
        self.tcp
            .write_all(&self.out)
            .await
            .map_err(|e| format!("write: {e}"))?;
        self.out.clear();
        let mut data = BytesMut::new();
        let mut status_ok = false;
        // A header block split over CONTINUATION frames: its flags and bytes so far.
        let mut partial: Option<(u8, Vec<u8>)> = None;
        loop {
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
                match kind {
                    DATA => {
                        self.received += len as u32;
                        if on == stream {
                            data.extend_from_slice(unpad(&payload, flags)?);
                            if flags & END_STREAM != 0 {
                                return Ok(Err("an answer without trailers".into()));
                            }
                        }
                    }
                    HEADERS | CONTINUATION => {
                        // A block in one frame is decoded where it lies; only one split
                        // over CONTINUATION frames is gathered.
                        let (flags, block) = if kind == HEADERS {
                            let mut body = unpad(&payload, flags)?;
                            if flags & PRIORITY != 0 {
                                body = body.get(5..).ok_or("a short HEADERS frame")?;
                            }
                            (flags, Cow::Borrowed(body))
                        } else {
                            let (f, mut so_far) =
                                partial.take().ok_or("an unexpected CONTINUATION")?;
                            so_far.extend_from_slice(&payload);
                            (f | (flags & END_HEADERS), Cow::Owned(so_far))
                        };
                        if flags & END_HEADERS == 0 {
                            partial = Some((flags, block.into_owned()));
                            continue;
                        }
                        let fields = headers(&mut self.decoder, &block)?;
                        if on != stream {
                            continue;
                        }
                        if let Some(s) = &fields.status {
                            status_ok = s.as_bytes() == b"200";
                        }
                        if flags & END_STREAM != 0 {
                            return Ok(
                                if status_ok
                                    && fields.grpc_status.as_ref().map(HeaderValue::as_bytes)
                                        == Some(b"0")
                                {
                                    Ok(std::mem::take(&mut data).freeze())
                                } else {
                                    Err(fields.describe())
                                },
                            );
                        }
                    }
                    RST_STREAM if on == stream => {
                        return Ok(Err(format!("stream reset: {payload:?}")));
                    }
                    SETTINGS if flags & ACK == 0 => frame(&mut self.out, SETTINGS, ACK, 0, &[]),
                    PING if flags & ACK == 0 => frame(&mut self.out, PING, ACK, 0, &payload),
                    GOAWAY => return Err(format!("GOAWAY {payload:?}")),
                    WINDOW_UPDATE if on == 0 && payload.len() == 4 => {
                        let n =
                            u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
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
            match self.tcp.read_buf(&mut self.input).await {
                Ok(0) => return Err("the server closed the connection".into()),
                Ok(_) => {}
                Err(e) => return Err(format!("read: {e}")),
            }
        }
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
