//! Tandem's HTTP/1.1 pieces shared by its API server and its app-channel client: the
//! fields of a parsed head turned into a [`HeaderMap`] that shares the head's bytes
//! ([`Spans`], [`Fields`]), the body framing state machine ([`Framing`]), reads into a
//! buffer ([`poll_fill`]) and the `Date` value ([`put_date`]).

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, header};
use tokio::io::AsyncRead;

/// The most header fields in a head.
pub const MAX_FIELDS: usize = 100;
/// The longest chunk-size or trailer line accepted.
pub const MAX_LINE: usize = 8 * 1024;
/// How much room each read asks for.
pub const READ_SIZE: usize = 16 * 1024;

/// Where each field's name and value sit in a head, taken while `httparse`'s fields still
/// borrow the buffer, so that the values can later share the frozen head's bytes.
pub struct Spans {
    at: [(u32, u32, u32, u32); MAX_FIELDS],
    len: usize,
}

impl Spans {
    /// The spans of `fields`, parsed out of `buf` (which stays far below 4 GiB).
    pub fn of(buf: &[u8], fields: &[httparse::Header<'_>]) -> Self {
        let base = buf.as_ptr() as usize;
        let mut spans = Self {
            at: [(0, 0, 0, 0); MAX_FIELDS],
            len: fields.len().min(MAX_FIELDS),
        };
        for (span, field) in spans.at.iter_mut().zip(fields) {
            *span = (
                (field.name.as_ptr() as usize - base) as u32,
                field.name.len() as u32,
                (field.value.as_ptr() as usize - base) as u32,
                field.value.len() as u32,
            );
        }
        spans
    }

    /// The fields as a header map over `head` (the bytes the spans were taken from), with
    /// what the framing and the connection depend on picked out on the way. The map has
    /// room for a few more fields (trace context, identity) without growing.
    pub fn decode(&self, head: &Bytes) -> Result<Fields, String> {
        let mut fields = Fields {
            headers: HeaderMap::with_capacity(self.len + 4),
            length: None,
            chunked: None,
            close: false,
            keep_alive: false,
            expect_continue: false,
        };
        for &(name_at, name_len, value_at, value_len) in &self.at[..self.len] {
            let (name_at, name_len) = (name_at as usize, name_len as usize);
            let (value_at, value_len) = (value_at as usize, value_len as usize);
            let raw_name = &head[name_at..name_at + name_len];
            let raw_value = &head[value_at..value_at + value_len];
            let name = HeaderName::from_bytes(raw_name).map_err(|_| {
                format!(
                    "invalid header name {:?}",
                    String::from_utf8_lossy(raw_name)
                )
            })?;
            let value = HeaderValue::from_maybe_shared(head.slice(value_at..value_at + value_len))
                .map_err(|_| format!("invalid value of header {name}"))?;
            if name == header::CONTENT_LENGTH {
                for v in raw_value.split(|&b| b == b',') {
                    let n = std::str::from_utf8(v.trim_ascii())
                        .ok()
                        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                        .and_then(|v| v.parse::<u64>().ok())
                        .ok_or("invalid content-length")?;
                    if fields.length.is_some_and(|l| l != n) {
                        return Err("conflicting content-length".into());
                    }
                    fields.length = Some(n);
                }
            } else if name == header::TRANSFER_ENCODING {
                // Chunked only when it is the last coding.
                fields.chunked = Some(
                    raw_value
                        .rsplit(|&b| b == b',')
                        .next()
                        .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked")),
                );
            } else if name == header::CONNECTION {
                if has_token(raw_value, b"close") {
                    fields.close = true;
                } else if has_token(raw_value, b"keep-alive") {
                    fields.keep_alive = true;
                }
            } else if name == header::EXPECT {
                fields.expect_continue =
                    raw_value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
            }
            fields.headers.append(name, value);
        }
        Ok(fields)
    }
}

/// A head's fields, and what framing and keep-alive depend on.
pub struct Fields {
    /// Every field, in order.
    pub headers: HeaderMap,
    /// `Content-Length`, when stated (the same value however often it is repeated).
    pub length: Option<u64>,
    /// `Transfer-Encoding`, when present: whether `chunked` is its last coding.
    pub chunked: Option<bool>,
    /// `Connection: close`.
    pub close: bool,
    /// `Connection: keep-alive`.
    pub keep_alive: bool,
    /// `Expect: 100-continue`.
    pub expect_continue: bool,
}

/// Whether a comma-separated header value holds `token` (ASCII case-insensitive).
pub fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// How a body is framed on the wire, and how much of it is left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body, or none left.
    Done,
    /// This many bytes left.
    Length(u64),
    /// Chunked, at this point of a chunk.
    Chunked(Chunk),
    /// Until the peer closes the connection.
    UntilClose,
}

/// Where a chunked body's reader stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// This many bytes of chunk data left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// Reading the trailer section, up to its empty line.
    Trailers,
}

/// What the buffered bytes of a body give.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// The next piece of the body.
    Data(Bytes),
    /// The body ended.
    End,
    /// More bytes are needed.
    More,
}

impl Framing {
    /// Takes the next piece of the body off `buf`. Chunk extensions and trailers are read
    /// and dropped.
    pub fn step(&mut self, buf: &mut BytesMut) -> Result<Step, &'static str> {
        loop {
            match *self {
                Framing::Done | Framing::Length(0) => return Ok(Step::End),
                Framing::Length(n) => {
                    if buf.is_empty() {
                        return Ok(Step::More);
                    }
                    let take = (buf.len() as u64).min(n) as usize;
                    *self = Framing::Length(n - take as u64);
                    return Ok(Step::Data(buf.split_to(take).freeze()));
                }
                Framing::UntilClose => {
                    if buf.is_empty() {
                        return Ok(Step::More);
                    }
                    return Ok(Step::Data(buf.split().freeze()));
                }
                Framing::Chunked(Chunk::Size) => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(Step::More);
                    };
                    let size = line[..]
                        .split(|&b| b == b';')
                        .next()
                        .map(<[u8]>::trim_ascii)
                        .filter(|s| !s.is_empty() && s.len() <= 16)
                        .and_then(|s| std::str::from_utf8(s).ok())
                        .filter(|s| s.bytes().all(|b| b.is_ascii_hexdigit()))
                        .and_then(|s| u64::from_str_radix(s, 16).ok())
                        .ok_or("invalid chunk size")?;
                    *self = Framing::Chunked(if size == 0 {
                        Chunk::Trailers
                    } else {
                        Chunk::Data(size)
                    });
                }
                Framing::Chunked(Chunk::Data(n)) => {
                    if buf.is_empty() {
                        return Ok(Step::More);
                    }
                    let take = (buf.len() as u64).min(n) as usize;
                    let left = n - take as u64;
                    *self = Framing::Chunked(if left == 0 {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left)
                    });
                    return Ok(Step::Data(buf.split_to(take).freeze()));
                }
                Framing::Chunked(Chunk::DataEnd) => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(Step::More);
                    };
                    if !line.is_empty() {
                        return Err("missing CRLF after chunk data");
                    }
                    *self = Framing::Chunked(Chunk::Size);
                }
                Framing::Chunked(Chunk::Trailers) => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(Step::More);
                    };
                    if line.is_empty() {
                        *self = Framing::Done;
                    }
                }
            }
        }
    }

    /// The exact number of body bytes left, when the framing tells.
    pub fn exact(&self) -> Option<u64> {
        match *self {
            Framing::Done => Some(0),
            Framing::Length(n) => Some(n),
            _ => None,
        }
    }
}

/// Takes one line (without its CRLF, or a bare LF) off `buf`; `None` when it is not complete.
fn take_line(buf: &mut BytesMut) -> Result<Option<BytesMut>, &'static str> {
    match buf.iter().position(|&b| b == b'\n') {
        Some(end) => {
            let mut line = buf.split_to(end + 1);
            line.truncate(end);
            if line.last() == Some(&b'\r') {
                line.truncate(end - 1);
            }
            Ok(Some(line))
        }
        None if buf.len() > MAX_LINE => Err("chunk line too long"),
        None => Ok(None),
    }
}

/// Reads what `io` has into `buf` (growing it by [`READ_SIZE`] when it runs short of
/// room); `Ready(Ok(0))` at the end of the stream.
///
/// Through `AsyncRead`, not `try_read_buf`: a read shorter than the buffer clears the
/// socket's readiness, so the next poll does not spend a `recvfrom` only to learn that
/// nothing more has arrived.
pub fn poll_fill<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < READ_SIZE / 4 {
        buf.reserve(READ_SIZE);
    }
    tokio_util::io::poll_read_buf(Pin::new(io), cx, buf)
}

/// [`poll_fill`] as a future.
pub async fn fill<R: AsyncRead + Unpin>(io: &mut R, buf: &mut BytesMut) -> io::Result<usize> {
    std::future::poll_fn(|cx| poll_fill(io, buf, cx)).await
}

/// Writes a `content-length` field.
pub fn put_length(out: &mut BytesMut, n: u64) {
    out.put_slice(b"content-length: ");
    out.put_slice(itoa::Buffer::new().format(n).as_bytes());
    out.put_slice(b"\r\n");
}

thread_local! {
    /// The `Date` value of the current second, formatted once per second per thread.
    static DATE: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) };
}

/// Writes a `date` field with the current time.
pub fn put_date(out: &mut BytesMut) {
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|date| {
        let mut date = date.borrow_mut();
        if date.0 != secs {
            let formatted = httpdate::fmt_http_date(now);
            if formatted.len() == 29 {
                date.1.copy_from_slice(formatted.as_bytes());
                date.0 = secs;
            }
        }
        if date.0 == secs {
            out.put_slice(b"date: ");
            out.put_slice(&date.1);
            out.put_slice(b"\r\n");
        }
    });
}

#[cfg(test)]
mod tests;
