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
