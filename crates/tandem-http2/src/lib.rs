//! Tandem's HTTP/2 pieces shared by its server (the gRPC port) and its sidecar-to-sidecar
//! client: HPACK ([`hpack`]), the frame vocabulary ([`frame`]) and a lean client that
//! multiplexes every call to one peer over one connection ([`client`]).

pub mod body;
pub mod client;
pub mod frame;
pub mod hpack;

use std::hash::Hasher;
use std::task::{Context, Poll};

/// Hashes HTTP/2 stream ids, distinct odd numbers, with one multiplication: that spreads
/// them well enough, for less than the standard library's SipHash costs.
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// Writes all of `buf` to `io` without blocking; `Ready(Ok(()))` once it is all out,
/// `Pending` (with `cx` woken when the socket drains) otherwise.
pub fn poll_write_all(
    io: &tokio::net::TcpStream,
    buf: &mut bytes::BytesMut,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<()>> {
    use bytes::Buf;
    while !buf.is_empty() {
        match io.try_write(buf) {
            Ok(0) => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
            Ok(n) => buf.advance(n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::task::ready!(io.poll_write_ready(cx))?;
            }
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
    Poll::Ready(Ok(()))
}

/// A connection's byte stream: a TCP socket, or TLS over one.
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}

impl<T> Io for T where T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}

/// A connection's socket: TCP, written to without going through `AsyncWrite` (the hot path
/// of plaintext connections), or any other stream (TLS).
pub enum Transport {
    /// A TCP socket.
    Tcp(tokio::net::TcpStream),
    /// Another stream, TLS over TCP.
    Other(Box<dyn Io>),
}

impl From<tokio::net::TcpStream> for Transport {
    fn from(tcp: tokio::net::TcpStream) -> Self {
        Transport::Tcp(tcp)
    }
}

impl From<tokio_rustls::server::TlsStream<tokio::net::TcpStream>> for Transport {
    fn from(tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>) -> Self {
        Transport::Other(Box::new(tls))
    }
}

impl From<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> for Transport {
    fn from(tls: tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> Self {
        Transport::Other(Box::new(tls))
    }
}

impl Transport {
    /// Reads what is there into `buf` (see [`tokio_util::io::poll_read_buf`]).
    pub fn poll_read_buf(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut bytes::BytesMut,
    ) -> Poll<std::io::Result<usize>> {
        match self {
            Transport::Tcp(t) => tokio_util::io::poll_read_buf(std::pin::Pin::new(t), cx, buf),
            Transport::Other(o) => tokio_util::io::poll_read_buf(std::pin::Pin::new(o), cx, buf),
        }
    }

    /// Writes all of `buf` (see [`poll_write_all`] and [`poll_write_out`]).
    pub fn poll_write_all(
        &mut self,
        buf: &mut bytes::BytesMut,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self {
            Transport::Tcp(t) => poll_write_all(t, buf, cx),
            Transport::Other(o) => poll_write_out(o, buf, cx),
        }
    }

    /// Writes what of `buf` goes out at once, without waiting: the last words of a
    /// connection that is being closed.
    pub fn write_now(&mut self, buf: &mut bytes::BytesMut) {
        let _ = self.poll_write_all(buf, &mut Context::from_waker(std::task::Waker::noop()));
    }
}

/// Writes all of `buf` to `io` and flushes it (TLS keeps records until then; TCP has nothing
/// to flush); `Ready(Ok(()))` once it is all out, `Pending` (with `cx` woken when the socket
/// drains) otherwise.
fn poll_write_out<W>(
    io: &mut W,
    buf: &mut bytes::BytesMut,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<()>>
where
    W: tokio::io::AsyncWrite + Unpin + ?Sized,
{
    use bytes::Buf;
    while !buf.is_empty() {
        match std::task::ready!(std::pin::Pin::new(&mut *io).poll_write(cx, buf)) {
            Ok(0) => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
            Ok(n) => buf.advance(n),
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
    std::pin::Pin::new(io).poll_flush(cx)
}
