//! Tandem's HTTP/2 pieces shared by its server (the gRPC port) and its sidecar-to-sidecar
//! client: HPACK ([`hpack`]), the frame vocabulary ([`frame`]) and a lean client that
//! multiplexes every call to one peer over one connection ([`client`]).

pub mod body;
pub mod client;
pub mod frame;
pub mod hpack;

use std::task::{Context, Poll};

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
