//! The HTTP/2 frame vocabulary (RFC 9113, section 6): frame types, flags, error codes and
//! settings, shared by the server and the client. The constants carry the RFC's names.
#![allow(missing_docs)]

use http::{HeaderName, header};

/// What a client sends first.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

// Frame types.
pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const PRIORITY: u8 = 0x2;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PUSH_PROMISE: u8 = 0x5;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

// Flags.
pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const PADDED: u8 = 0x8;
pub const PRIORITY_FLAG: u8 = 0x20;

// Error codes.
pub const NO_ERROR: u32 = 0x0;
pub const PROTOCOL_ERROR: u32 = 0x1;
pub const INTERNAL_ERROR: u32 = 0x2;
pub const FLOW_CONTROL_ERROR: u32 = 0x3;
pub const STREAM_CLOSED: u32 = 0x5;
pub const FRAME_SIZE_ERROR: u32 = 0x6;
pub const REFUSED_STREAM: u32 = 0x7;
pub const CANCEL: u32 = 0x8;
pub const COMPRESSION_ERROR: u32 = 0x9;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

// Settings.
pub const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;
pub const SETTINGS_ENABLE_PUSH: u16 = 0x2;
pub const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
pub const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
pub const SETTINGS_MAX_FRAME_SIZE: u16 = 0x5;
pub const SETTINGS_MAX_HEADER_LIST_SIZE: u16 = 0x6;

/// The largest frame accepted: HTTP/2's default, never raised.
pub const MAX_FRAME: usize = 16_384;
/// HTTP/2's default initial window, before SETTINGS say otherwise.
pub const DEFAULT_WINDOW: i64 = 65_535;
/// The largest a flow-control window may grow.
pub const MAX_WINDOW: i64 = (1 << 31) - 1;

/// Headers HTTP/2 forbids (RFC 9113, 8.2.2).
pub fn connection_specific(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name == header::TE
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

/// The payload of a DATA or HEADERS frame without its padding, or the connection error
/// code of a malformed one.
pub fn unpad(flags: u8, payload: &[u8]) -> Result<&[u8], u32> {
    if flags & PADDED == 0 {
        return Ok(payload);
    }
    let (&pad, rest) = payload.split_first().ok_or(FRAME_SIZE_ERROR)?;
    let pad = usize::from(pad);
    if pad > rest.len() {
        return Err(PROTOCOL_ERROR);
    }
    Ok(&rest[..rest.len() - pad])
}

/// The nine-byte head of a frame.
pub fn put_head(buf: &mut bytes::BytesMut, len: usize, kind: u8, flags: u8, id: u32) {
    use bytes::BufMut;
    buf.put_uint(len as u64, 3);
    buf.put_u8(kind);
    buf.put_u8(flags);
    buf.put_u32(id);
}

/// The next complete frame at the start of `buf`: its type, flags, stream id and payload
/// length (the payload follows the nine-byte head). `Ok(None)` while it is incomplete;
/// `Err(FRAME_SIZE_ERROR)` for a frame larger than [`MAX_FRAME`].
pub fn next(buf: &[u8]) -> Result<Option<(u8, u8, u32, usize)>, u32> {
    if buf.len() < 9 {
        return Ok(None);
    }
    let len = (usize::from(buf[0]) << 16) | (usize::from(buf[1]) << 8) | usize::from(buf[2]);
    if len > MAX_FRAME {
        return Err(FRAME_SIZE_ERROR);
    }
    if buf.len() < 9 + len {
        return Ok(None);
    }
    let id = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
    Ok(Some((buf[3], buf[4], id, len)))
}

/// A header block as HEADERS, then CONTINUATION frames past `max_frame`.
pub fn put_header_block(
    buf: &mut bytes::BytesMut,
    max_frame: usize,
    id: u32,
    end_stream: bool,
    block: &[u8],
) {
    use bytes::BufMut;
    let mut kind = HEADERS;
    let mut flags = if end_stream { END_STREAM } else { 0 };
    let mut rest = block;
    loop {
        let n = rest.len().min(max_frame);
        let last = n == rest.len();
        put_head(buf, n, kind, flags | if last { END_HEADERS } else { 0 }, id);
        buf.put_slice(&rest[..n]);
        rest = &rest[n..];
        if last {
            return;
        }
        kind = CONTINUATION;
        flags = 0;
    }
}

/// As much of `data` as the stream's and the connection's send windows allow, as DATA
/// frames of at most `max_frame` (the last one with END_STREAM when `end`); the windows are
/// charged. Returns what is left.
pub fn put_data(
    buf: &mut bytes::BytesMut,
    max_frame: usize,
    id: u32,
    mut data: bytes::Bytes,
    window: &mut i64,
    conn_window: &mut i64,
    end: bool,
) -> Option<bytes::Bytes> {
    use bytes::{Buf, BufMut};
    loop {
        let n = (data.len() as i64).min(*window).min(*conn_window).max(0) as usize;
        let n = n.min(max_frame);
        if n == 0 && !data.is_empty() {
            return Some(data);
        }
        let last = n == data.len();
        put_head(buf, n, DATA, if last && end { END_STREAM } else { 0 }, id);
        buf.put_slice(&data[..n]);
        *window -= n as i64;
        *conn_window -= n as i64;
        if last {
            return None;
        }
        data.advance(n);
    }
}

/// The increment a WINDOW_UPDATE payload carries.
pub fn window_increment(payload: &[u8]) -> Result<i64, u32> {
    let bytes: [u8; 4] = payload.try_into().map_err(|_| FRAME_SIZE_ERROR)?;
    Ok(i64::from(u32::from_be_bytes(bytes) & 0x7fff_ffff))
}

/// The settings a SETTINGS payload carries, as (identifier, value).
pub fn settings(payload: &[u8]) -> Result<impl Iterator<Item = (u16, u32)> + '_, u32> {
    if !payload.len().is_multiple_of(6) {
        return Err(FRAME_SIZE_ERROR);
    }
    Ok(payload.chunks_exact(6).map(|s| {
        (
            u16::from_be_bytes([s[0], s[1]]),
            u32::from_be_bytes([s[2], s[3], s[4], s[5]]),
        )
    }))
}

/// A SETTINGS frame with `settings`.
pub fn put_settings(buf: &mut bytes::BytesMut, settings: &[(u16, u32)]) {
    use bytes::BufMut;
    put_head(buf, 6 * settings.len(), SETTINGS, 0, 0);
    for &(id, value) in settings {
        buf.put_u16(id);
        buf.put_u32(value);
    }
}

/// A RST_STREAM frame.
pub fn put_rst(buf: &mut bytes::BytesMut, id: u32, code: u32) {
    use bytes::BufMut;
    put_head(buf, 4, RST_STREAM, 0, id);
    buf.put_u32(code);
}

/// A WINDOW_UPDATE frame giving back `n` bytes.
pub fn put_window_update(buf: &mut bytes::BytesMut, id: u32, n: usize) {
    use bytes::BufMut;
    put_head(buf, 4, WINDOW_UPDATE, 0, id);
    buf.put_u32(n as u32);
}

/// A GOAWAY frame.
pub fn put_goaway(buf: &mut bytes::BytesMut, last_id: u32, code: u32) {
    use bytes::BufMut;
    put_head(buf, 8, GOAWAY, 0, 0);
    buf.put_u32(last_id);
    buf.put_u32(code);
}

/// A received PING: checked, and answered unless it is itself an answer.
pub fn on_ping(buf: &mut bytes::BytesMut, flags: u8, id: u32, payload: &[u8]) -> Result<(), u32> {
    use bytes::BufMut;
    if id != 0 {
        return Err(PROTOCOL_ERROR);
    }
    if payload.len() != 8 {
        return Err(FRAME_SIZE_ERROR);
    }
    if flags & ACK == 0 {
        put_head(buf, 8, PING, ACK, 0);
        buf.put_slice(payload);
    }
    Ok(())
}

/// Header blocks as they arrive: whole in one HEADERS frame, or split over HEADERS and
/// CONTINUATION frames, during which no other frame may come.
pub struct HeaderBlocks {
    /// A block waiting for its CONTINUATIONs: its stream, whether it ends the stream, and
    /// what has arrived.
    pending: Option<(u32, bool, Vec<u8>)>,
    /// The largest block accepted.
    max: usize,
}

/// A complete header block: its stream, whether it ends the stream, and its bytes.
pub type HeaderBlock<'a> = (u32, bool, std::borrow::Cow<'a, [u8]>);

impl HeaderBlocks {
    /// Accepts blocks of at most `max` bytes.
    pub fn new(max: usize) -> Self {
        HeaderBlocks { pending: None, max }
    }

    /// Whether a block waits for its CONTINUATION frames.
    pub fn is_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// Checks a frame's type and stream against a block waiting for its CONTINUATIONs.
    pub fn check(&self, kind: u8, id: u32) -> Result<(), u32> {
        match &self.pending {
            Some((pid, _, _)) if kind != CONTINUATION || *pid != id => Err(PROTOCOL_ERROR),
            _ => Ok(()),
        }
    }

    /// A HEADERS frame: its block when it is complete, `None` while CONTINUATIONs follow.
    pub fn headers<'a>(
        &mut self,
        flags: u8,
        id: u32,
        payload: &'a [u8],
    ) -> Result<Option<HeaderBlock<'a>>, u32> {
        if id == 0 {
            return Err(PROTOCOL_ERROR);
        }
        let mut fragment = unpad(flags, payload)?;
        if flags & PRIORITY_FLAG != 0 {
            fragment = fragment.get(5..).ok_or(PROTOCOL_ERROR)?;
        }
        let end_stream = flags & END_STREAM != 0;
        if flags & END_HEADERS != 0 {
            return Ok(Some((id, end_stream, fragment.into())));
        }
        self.pending = Some((id, end_stream, fragment.to_vec()));
        Ok(None)
    }

    /// A CONTINUATION frame (already [`check`](Self::check)ed): the block when it is
    /// complete.
    pub fn continuation<'a>(
        &mut self,
        flags: u8,
        payload: &[u8],
    ) -> Result<Option<HeaderBlock<'a>>, u32> {
        let Some((id, end_stream, mut block)) = self.pending.take() else {
            return Err(PROTOCOL_ERROR);
        };
        if block.len() + payload.len() > self.max {
            return Err(ENHANCE_YOUR_CALM);
        }
        block.extend_from_slice(payload);
        if flags & END_HEADERS != 0 {
            return Ok(Some((id, end_stream, block.into())));
        }
        self.pending = Some((id, end_stream, block));
        Ok(None)
    }
}
