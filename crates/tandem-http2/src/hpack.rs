//! HPACK (RFC 7541), as Tandem's HTTP/2 server and client need it. The decoder is public so
//! that `tandem-bench`'s lean gRPC client can read the server's answers with it.
//!
//! The decoder keeps its dynamic table as ready-made [`HeaderName`]s and [`HeaderValue`]s, so
//! a field sent as an index (what every HTTP/2 client does for a header it repeats) costs a
//! reference-count increment instead of a parse, a validation and an allocation. Huffman
//! strings are decoded by `httlib-huffman`.
//!
//! The encoder mirrors the peer's dynamic table: a field already in it is sent as one index,
//! a short field seen for the first time is inserted (so `content-type: application/grpc`
//! and `grpc-status: 0` cost one byte each from the second answer on), and sensitive values
//! are sent never-indexed. It never Huffman-encodes.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::LazyLock;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderName, HeaderValue};

/// The decoder's dynamic table limit, which is also HTTP/2's default
/// `SETTINGS_HEADER_TABLE_SIZE` (so it is never announced).
pub const TABLE_SIZE: usize = 4096;

/// A pseudo-header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pseudo {
    /// `:method`
    Method,
    /// `:scheme`
    Scheme,
    /// `:authority`
    Authority,
    /// `:path`
    Path,
    /// `:status`
    Status,
    /// `:protocol`
    Protocol,
    /// A name starting with `:` that HTTP/2 does not define: the request is malformed.
    Unknown,
}

/// A field name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Name {
    /// A pseudo-header.
    Pseudo(Pseudo),
    /// A regular header.
    Header(HeaderName),
    /// Not a valid header name: the request is malformed.
    Invalid(Bytes),
}

impl Name {
    fn parse(raw: Bytes) -> Name {
        if let Some(rest) = raw.strip_prefix(b":") {
            return Name::Pseudo(match rest {
                b"method" => Pseudo::Method,
                b"scheme" => Pseudo::Scheme,
                b"authority" => Pseudo::Authority,
                b"path" => Pseudo::Path,
                b"status" => Pseudo::Status,
                b"protocol" => Pseudo::Protocol,
                _ => Pseudo::Unknown,
            });
        }
        // HTTP/2 field names are lowercase; an uppercase one makes the request malformed.
        if raw.iter().any(u8::is_ascii_uppercase) {
            return Name::Invalid(raw);
        }
        match HeaderName::from_bytes(&raw) {
            Ok(name) => Name::Header(name),
            Err(_) => Name::Invalid(raw),
        }
    }

    fn len(&self) -> usize {
        match self {
            Name::Pseudo(p) => match p {
                Pseudo::Method | Pseudo::Scheme | Pseudo::Status => 7,
                Pseudo::Path => 5,
                Pseudo::Authority => 10,
                Pseudo::Protocol => 9,
                Pseudo::Unknown => 1,
            },
            Name::Header(h) => h.as_str().len(),
            Name::Invalid(raw) => raw.len(),
        }
    }
}

/// One decoded field. `value` is `None` when the bytes are not a valid field value.
#[derive(Clone, Debug)]
pub struct Field {
    /// The name.
    pub name: Name,
    /// The value.
    pub value: Option<HeaderValue>,
    /// RFC 7541's entry size: name and value lengths plus 32.
    size: usize,
}

impl Field {
    /// The regular header `field` is (its name and a valid value), moved out when the field
    /// is owned, cloned when borrowed; `None` for pseudo-headers and invalid fields.
    pub fn into_header(field: Cow<'_, Field>) -> Option<(HeaderName, HeaderValue)> {
        match field {
            Cow::Owned(Field {
                name: Name::Header(name),
                value: Some(value),
                ..
            }) => Some((name, value)),
            Cow::Borrowed(Field {
                name: Name::Header(name),
                value: Some(value),
                ..
            }) => Some((name.clone(), value.clone())),
            _ => None,
        }
    }

    fn new(name: Name, value: Bytes) -> Field {
        let size = name.len() + value.len() + 32;
        Field {
            name,
            value: HeaderValue::from_maybe_shared(value).ok(),
            size,
        }
    }
}

/// The static table (RFC 7541, Appendix A), one-based in the protocol, zero-based here.
const STATIC: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// The first index of the static table with this name, and the index of an entry with this
/// name and value if there is one; zeros when the name is not in the table.
fn static_index(name: &[u8], value: &[u8]) -> (usize, usize) {
    let first = match name {
        b":authority" => 1,
        b":method" => 2,
        b":path" => 4,
        b":scheme" => 6,
        b":status" => 8,
        b"accept-charset" => 15,
        b"accept-encoding" => 16,
        b"accept-language" => 17,
        b"accept-ranges" => 18,
        b"accept" => 19,
        b"access-control-allow-origin" => 20,
        b"age" => 21,
        b"allow" => 22,
        b"authorization" => 23,
        b"cache-control" => 24,
        b"content-disposition" => 25,
        b"content-encoding" => 26,
        b"content-language" => 27,
        b"content-length" => 28,
        b"content-location" => 29,
        b"content-range" => 30,
        b"content-type" => 31,
        b"cookie" => 32,
        b"date" => 33,
        b"etag" => 34,
        b"expect" => 35,
        b"expires" => 36,
        b"from" => 37,
        b"host" => 38,
        b"if-match" => 39,
        b"if-modified-since" => 40,
        b"if-none-match" => 41,
        b"if-range" => 42,
        b"if-unmodified-since" => 43,
        b"last-modified" => 44,
        b"link" => 45,
        b"location" => 46,
        b"max-forwards" => 47,
        b"proxy-authenticate" => 48,
        b"proxy-authorization" => 49,
        b"range" => 50,
        b"referer" => 51,
        b"refresh" => 52,
        b"retry-after" => 53,
        b"server" => 54,
        b"set-cookie" => 55,
        b"strict-transport-security" => 56,
        b"transfer-encoding" => 57,
        b"user-agent" => 58,
        b"vary" => 59,
        b"via" => 60,
        b"www-authenticate" => 61,
        _ => return (0, 0),
    };
    let exact = STATIC[first - 1..]
        .iter()
        .take_while(|(n, _)| n.as_bytes() == name)
        .position(|(_, v)| v.as_bytes() == value)
        .map_or(0, |i| first + i);
    (first, exact)
}

/// Fields whose values differ from one message to the next: inserting them into the table
/// would only push out the ones that repeat.
fn changes_every_time(name: &[u8]) -> bool {
    matches!(
        name,
        b"traceparent" | b"grpc-trace-bin" | b"x-request-id" | b"date"
    )
}

static STATIC_FIELDS: LazyLock<Vec<Field>> = LazyLock::new(|| {
    STATIC
        .iter()
        .map(|(n, v)| {
            Field::new(
                Name::parse(Bytes::from_static(n.as_bytes())),
                Bytes::from_static(v.as_bytes()),
            )
        })
        .collect()
});

/// A decoding failure: always a connection error (`COMPRESSION_ERROR`), since the dynamic
/// table can no longer be trusted.
#[derive(Debug, PartialEq, Eq)]
pub struct DecodeError(pub &'static str);

type Decoded<T> = Result<T, DecodeError>;

/// The decoder of one connection's header blocks.
pub struct Decoder {
    /// Newest first.
    table: VecDeque<Field>,
    size: usize,
    max_size: usize,
    scratch: Vec<u8>,
    /// The last Huffman strings decoded, coded and decoded. A client that sends a field as a
    /// literal on every request (the `h2` crate does so for `:path`) sends the same bytes
    /// each time: they are decoded once.
    recent: Vec<(Bytes, Bytes)>,
    next_recent: usize,
    /// The last header names sent as literals, as coded (with the Huffman flag in front) and
    /// parsed. A peer that never indexes a field whose name is in no table (`traceparent` on
    /// every call between sidecars) sends its name each time: it is parsed once.
    names: Vec<(Vec<u8>, Name)>,
    next_name: usize,
}

/// Huffman strings remembered per connection, and the longest remembered.
const RECENT: usize = 8;
const RECENT_MAX_LEN: usize = 256;
/// Literal names remembered per connection, and the longest remembered.
const NAMES: usize = 4;
const NAME_MAX_LEN: usize = 64;

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            table: VecDeque::new(),
            size: 0,
            max_size: TABLE_SIZE,
            scratch: Vec::new(),
            recent: Vec::new(),
            next_recent: 0,
            names: Vec::new(),
            next_name: 0,
        }
    }
}

impl Decoder {
    /// Decodes one complete header block, calling `field` for each field in order: borrowed
    /// when the dynamic table keeps it, owned when nothing else does (so that taking its
    /// value costs no copy).
    pub fn decode(
        &mut self,
        mut block: &[u8],
        mut field: impl FnMut(Cow<'_, Field>),
    ) -> Decoded<()> {
        let mut first = true;
        while let Some(&b) = block.first() {
            if b & 0x80 != 0 {
                let index = integer(&mut block, 7)?;
                field(Cow::Borrowed(self.get(index)?));
            } else if b & 0xc0 == 0x40 {
                let f = self.literal(&mut block, 6)?;
                field(Cow::Borrowed(&f));
                self.insert(f);
            } else if b & 0xe0 == 0x20 {
                if !first {
                    return Err(DecodeError("a dynamic table size update after a field"));
                }
                let size = integer(&mut block, 5)?;
                if size > TABLE_SIZE {
                    return Err(DecodeError("a dynamic table size over the limit"));
                }
                self.max_size = size;
                self.evict(0);
                continue;
            } else {
                // Without indexing (0000) or never indexed (0001).
                let f = self.literal(&mut block, 4)?;
                field(Cow::Owned(f));
            }
            first = false;
        }
        Ok(())
    }

    fn get(&self, index: usize) -> Decoded<&Field> {
        match index {
            0 => Err(DecodeError("index 0")),
            1..=61 => Ok(&STATIC_FIELDS[index - 1]),
            _ => self
                .table
                .get(index - 62)
                .ok_or(DecodeError("an index past the dynamic table")),
        }
    }

    fn literal(&mut self, block: &mut &[u8], prefix: u8) -> Decoded<Field> {
        let index = integer(block, prefix)?;
        let name = if index == 0 {
            self.literal_name(block)?
        } else {
            self.get(index)?.name.clone()
        };
        let value = self.string(block)?;
        Ok(Field::new(name, value))
    }

    /// A name sent as a literal: taken from the names remembered when its coded bytes match
    /// one, else decoded, parsed and remembered (valid header names only).
    fn literal_name(&mut self, block: &mut &[u8]) -> Decoded<Name> {
        let start = *block;
        let len = integer(block, 7)?;
        if len > block.len() {
            return Err(DecodeError("a string longer than its block"));
        }
        let coded = &start[..start.len() - block.len() + len];
        if let Some((_, name)) = self.names.iter().find(|(c, _)| c[..] == *coded) {
            *block = &block[len..];
            return Ok(name.clone());
        }
        *block = start;
        let name = Name::parse(self.string(block)?);
        if matches!(name, Name::Header(_)) && coded.len() <= NAME_MAX_LEN {
            let entry = (coded.to_vec(), name.clone());
            remember(&mut self.names, &mut self.next_name, NAMES, entry);
        }
        Ok(name)
    }

    fn string(&mut self, block: &mut &[u8]) -> Decoded<Bytes> {
        let huffman = block.first().is_some_and(|b| b & 0x80 != 0);
        let len = integer(block, 7)?;
        if len > block.len() {
            return Err(DecodeError("a string longer than its block"));
        }
        let (raw, rest) = block.split_at(len);
        *block = rest;
        if !huffman {
            return Ok(Bytes::copy_from_slice(raw));
        }
        if let Some((_, decoded)) = self.recent.iter().find(|(coded, _)| coded[..] == *raw) {
            return Ok(decoded.clone());
        }
        self.scratch.clear();
        httlib_huffman::decode(
            raw,
            &mut self.scratch,
            httlib_huffman::DecoderSpeed::FourBits,
        )
        .map_err(|_| DecodeError("an invalid Huffman string"))?;
        let decoded = Bytes::copy_from_slice(&self.scratch);
        if raw.len() <= RECENT_MAX_LEN {
            let entry = (Bytes::copy_from_slice(raw), decoded.clone());
            remember(&mut self.recent, &mut self.next_recent, RECENT, entry);
        }
        Ok(decoded)
    }

    fn insert(&mut self, f: Field) {
        if f.size > self.max_size {
            self.table.clear();
            self.size = 0;
            return;
        }
        self.evict(f.size);
        self.size += f.size;
        self.table.push_front(f);
    }

    /// Evicts the oldest entries until `room` more bytes fit.
    fn evict(&mut self, room: usize) {
        while self.size + room > self.max_size {
            match self.table.pop_back() {
                Some(old) => self.size -= old.size,
                None => break,
            }
        }
    }
}

/// Adds `entry` to a ring of at most `cap` entries, replacing the oldest once it is full.
fn remember<T>(ring: &mut Vec<T>, next: &mut usize, cap: usize, entry: T) {
    if ring.len() < cap {
        ring.push(entry);
    } else {
        ring[*next] = entry;
        *next = (*next + 1) % cap;
    }
}

/// Reads an integer with an `prefix`-bit prefix (RFC 7541, 5.1).
fn integer(block: &mut &[u8], prefix: u8) -> Decoded<usize> {
    let (&first, mut rest) = block
        .split_first()
        .ok_or(DecodeError("a truncated integer"))?;
    let mask = (1u8 << prefix) - 1;
    let mut value = usize::from(first & mask);
    if value == usize::from(mask) {
        let mut shift = 0;
        loop {
            let (&b, more) = rest
                .split_first()
                .ok_or(DecodeError("a truncated integer"))?;
            rest = more;
            if shift > 21 {
                return Err(DecodeError("an integer too large"));
            }
            value += usize::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
        }
    }
    *block = rest;
    Ok(value)
}

fn put_integer(dst: &mut BytesMut, flags: u8, prefix: u8, value: usize) {
    let mask = (1usize << prefix) - 1;
    if value < mask {
        dst.put_u8(flags | value as u8);
        return;
    }
    dst.put_u8(flags | mask as u8);
    let mut rest = value - mask;
    while rest >= 0x80 {
        dst.put_u8((rest as u8 & 0x7f) | 0x80);
        rest >>= 7;
    }
    dst.put_u8(rest as u8);
}

fn put_string(dst: &mut BytesMut, s: &[u8]) {
    put_integer(dst, 0, 7, s.len());
    dst.put_slice(s);
}

/// The response-side encoder of one connection.
pub struct Encoder {
    /// A copy of the peer's dynamic table, newest first.
    table: VecDeque<Entry>,
    size: usize,
    max_size: usize,
    /// A size update owed at the start of the next block: the smallest size set since the
    /// last block, then the current one.
    update: Option<usize>,
    /// For the n-th field of a block, the table entry (position + 1; 0 for none) that the
    /// n-th field of an earlier block was sent as. A sidecar's blocks repeat field for field,
    /// and checking that one entry costs less than searching the table. The entry is compared
    /// with the field before use, so a stale hint only costs the search.
    hints: [u8; HINTS],
    /// The position of the next field in the current block.
    next: usize,
}

/// Fields per block that get a hint.
const HINTS: usize = 32;

impl Default for Encoder {
    fn default() -> Self {
        Encoder {
            table: VecDeque::new(),
            size: 0,
            max_size: TABLE_SIZE,
            update: None,
            hints: [0; HINTS],
            next: 0,
        }
    }
}

/// An entry of the encoder's copy of the peer's table.
struct Entry {
    name: Bytes,
    value: Bytes,
    size: usize,
}

/// Fields at most this long (name and value) are inserted into the peer's table.
const INDEX_AT_MOST: usize = 96;

impl Encoder {
    /// The peer's `SETTINGS_HEADER_TABLE_SIZE`: the encoder uses at most that much (and never
    /// more than [`TABLE_SIZE`]).
    pub fn set_peer_table_size(&mut self, size: usize) {
        let size = size.min(TABLE_SIZE);
        if size == self.max_size {
            return;
        }
        self.update = Some(self.update.map_or(size, |u| u.min(size)));
        self.max_size = size;
        self.evict(0);
    }

    /// Starts a header block.
    pub fn begin(&mut self, dst: &mut BytesMut) {
        self.next = 0;
        if let Some(smallest) = self.update.take() {
            put_integer(dst, 0x20, 5, smallest);
            if smallest != self.max_size {
                put_integer(dst, 0x20, 5, self.max_size);
            }
        }
    }

    /// `:status`.
    pub fn status(&mut self, dst: &mut BytesMut, status: http::StatusCode) {
        let index = match status.as_u16() {
            200 => 8,
            204 => 9,
            206 => 10,
            304 => 11,
            400 => 12,
            404 => 13,
            500 => 14,
            _ => {
                self.field(dst, b":status", status.as_str().as_bytes(), false);
                return;
            }
        };
        put_integer(dst, 0x80, 7, index);
    }

    /// A request pseudo-header (`:method`, `:scheme`, `:authority`, `:path`).
    pub fn pseudo(&mut self, dst: &mut BytesMut, name: &str, value: &[u8]) {
        self.field(dst, name.as_bytes(), value, false);
    }

    /// Every field of `fields` that HTTP/2 allows: connection-specific ones are left out.
    pub fn fields(&mut self, dst: &mut BytesMut, fields: &http::HeaderMap) {
        for (name, value) in fields {
            if !crate::frame::connection_specific(name) {
                self.header(dst, name, value);
            }
        }
    }

    /// One header.
    pub fn header(&mut self, dst: &mut BytesMut, name: &HeaderName, value: &HeaderValue) {
        self.field(
            dst,
            name.as_str().as_bytes(),
            value.as_bytes(),
            value.is_sensitive(),
        );
    }

    /// One header whose value is not a [`HeaderValue`] (made for this one answer, say);
    /// `sensitive` values are sent never-indexed. The value must be valid in a header.
    pub fn header_bytes(
        &mut self,
        dst: &mut BytesMut,
        name: &HeaderName,
        value: &[u8],
        sensitive: bool,
    ) {
        self.field(dst, name.as_str().as_bytes(), value, sensitive);
    }

    fn field(&mut self, dst: &mut BytesMut, name: &[u8], value: &[u8], sensitive: bool) {
        // Fields that repeat are usually in the peer's table already: look there first, and
        // in the static table only for what it does not hold.
        let mut dynamic_name = 0;
        let at = self.next;
        self.next += 1;
        if !sensitive {
            let hint = self.hints.get(at).map_or(0, |h| usize::from(*h));
            if hint != 0
                && self
                    .table
                    .get(hint - 1)
                    .is_some_and(|e| e.name == name && e.value == value)
            {
                put_integer(dst, 0x80, 7, 61 + hint);
                return;
            }
            for (i, e) in self.table.iter().enumerate() {
                if e.name == name {
                    if e.value == value {
                        if let (Some(slot), Ok(hint)) =
                            (self.hints.get_mut(at), u8::try_from(i + 1))
                        {
                            *slot = hint;
                        }
                        put_integer(dst, 0x80, 7, 62 + i);
                        return;
                    }
                    if dynamic_name == 0 {
                        dynamic_name = 62 + i;
                    }
                }
            }
        }
        let (static_name, exact) = static_index(name, value);
        if exact != 0 && !sensitive {
            put_integer(dst, 0x80, 7, exact);
            return;
        }
        let name_index = if static_name != 0 {
            static_name
        } else {
            dynamic_name
        };
        let index =
            !sensitive && name.len() + value.len() <= INDEX_AT_MOST && !changes_every_time(name);
        let (flags, prefix) = match (sensitive, index) {
            (true, _) => (0x10, 4),
            (false, true) => (0x40, 6),
            (false, false) => (0x00, 4),
        };
        put_integer(dst, flags, prefix, name_index);
        if name_index == 0 {
            put_string(dst, name);
        }
        put_string(dst, value);
        if index {
            let size = name.len() + value.len() + 32;
            if size > self.max_size {
                self.table.clear();
                self.size = 0;
                return;
            }
            self.evict(size);
            self.size += size;
            self.table.push_front(Entry {
                name: Bytes::copy_from_slice(name),
                value: Bytes::copy_from_slice(value),
                size,
            });
        }
    }

    fn evict(&mut self, room: usize) {
        while self.size + room > self.max_size {
            match self.table.pop_back() {
                Some(e) => self.size -= e.size,
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(d: &mut Decoder, block: &[u8]) -> Vec<(String, String)> {
        let mut out = Vec::new();
        d.decode(block, |f| {
            let name = match &f.name {
                Name::Pseudo(p) => format!("{p:?}"),
                Name::Header(h) => h.to_string(),
                Name::Invalid(raw) => format!("invalid:{}", String::from_utf8_lossy(raw)),
            };
            let value = String::from_utf8_lossy(f.value.as_ref().unwrap().as_bytes()).into_owned();
            out.push((name, value));
        })
        .unwrap();
        out
    }

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    /// RFC 7541, C.3 and C.4: three requests on one connection, plain then Huffman-coded.
    #[test]
    fn rfc_7541_request_examples() {
        for blocks in [
            [
                "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
                "8286 84be 5808 6e6f 2d63 6163 6865",
                "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
            ],
            [
                "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
                "8286 84be 5886 a8eb 1064 9cbf",
                "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
            ],
        ] {
            let mut d = Decoder::default();
            assert_eq!(
                decode_all(&mut d, &hex(blocks[0])),
                pairs(&[
                    ("Method", "GET"),
                    ("Scheme", "http"),
                    ("Path", "/"),
                    ("Authority", "www.example.com")
                ])
            );
            assert_eq!(d.size, 57);
            assert_eq!(
                decode_all(&mut d, &hex(blocks[1])),
                pairs(&[
                    ("Method", "GET"),
                    ("Scheme", "http"),
                    ("Path", "/"),
                    ("Authority", "www.example.com"),
                    ("cache-control", "no-cache"),
                ])
            );
            assert_eq!(d.size, 110);
            assert_eq!(
                decode_all(&mut d, &hex(blocks[2])),
                pairs(&[
                    ("Method", "GET"),
                    ("Scheme", "https"),
                    ("Path", "/index.html"),
                    ("Authority", "www.example.com"),
                    ("custom-key", "custom-value"),
                ])
            );
            assert_eq!(d.size, 164);
        }
    }

    #[test]
    fn repeated_huffman_literals_decode_the_same() {
        // `:path` as a Huffman literal without indexing, nine distinct paths twice over: more
        // than the strings remembered, so entries are replaced too.
        let mut d = Decoder::default();
        for round in 0..2 {
            for i in 0..9 {
                let path = format!("/pkg.Svc/Method{i}");
                let mut coded = Vec::new();
                httlib_huffman::encode(path.as_bytes(), &mut coded).unwrap();
                let mut block = BytesMut::new();
                put_integer(&mut block, 0x00, 4, 4);
                put_integer(&mut block, 0x80, 7, coded.len());
                block.put_slice(&coded);
                assert_eq!(
                    decode_all(&mut d, &block),
                    pairs(&[("Path", &path)]),
                    "round {round}"
                );
            }
        }
        assert_eq!(d.recent.len(), RECENT);
    }

    #[test]
    fn literal_names_are_parsed_once_and_decode_the_same() {
        // Never-indexed fields with literal names, plain and Huffman-coded, more distinct
        // names than are remembered, twice over; the values differ every time.
        let mut d = Decoder::default();
        let names = [
            "traceparent",
            "x-one",
            "x-two",
            "x-three",
            "x-four",
            "x-five",
        ];
        for round in 0..2 {
            for (i, name) in names.iter().enumerate() {
                let value = format!("v{round}{i}");
                let mut block = BytesMut::new();
                put_integer(&mut block, 0x10, 4, 0);
                if i % 2 == 0 {
                    put_integer(&mut block, 0x00, 7, name.len());
                    block.put_slice(name.as_bytes());
                } else {
                    let mut coded = Vec::new();
                    httlib_huffman::encode(name.as_bytes(), &mut coded).unwrap();
                    put_integer(&mut block, 0x80, 7, coded.len());
                    block.put_slice(&coded);
                }
                put_integer(&mut block, 0x00, 7, value.len());
                block.put_slice(value.as_bytes());
                assert_eq!(
                    decode_all(&mut d, &block),
                    pairs(&[(name, &value)]),
                    "round {round}"
                );
            }
        }
        assert_eq!(d.names.len(), NAMES);
        // The same name, once plain and once Huffman-coded, are different coded bytes but
        // the same name; an invalid name is never remembered.
        let mut d = Decoder::default();
        assert_eq!(
            decode_all(&mut d, &hex("100b 7472 6163 6570 6172 656e 7402 3031")),
            pairs(&[("traceparent", "01")])
        );
        for _ in 0..2 {
            assert_eq!(
                decode_all(&mut d, &hex("1002 582d 0161")),
                pairs(&[("invalid:X-", "a")])
            );
        }
        assert_eq!(d.names.len(), 1);
    }

    #[test]
    fn malformed_blocks_are_errors() {
        let mut d = Decoder::default();
        for bad in [
            "80",
            "ff",
            "bf",
            "41",
            "4105",
            "0005 6162",
            "3fe2 1f",
            "82 3f01",
        ] {
            assert!(d.decode(&hex(bad), |_| {}).is_err(), "{bad}");
        }
        // A value with a newline is decoded (the table stays in step) but is not valid.
        let mut seen = None;
        Decoder::default()
            .decode(&hex("4001 6102 0a62"), |f| seen = Some(f.value.is_none()))
            .unwrap();
        assert_eq!(seen, Some(true));
    }

    #[test]
    fn what_the_encoder_writes_the_decoder_reads_back() {
        let mut e = Encoder::default();
        let mut d = Decoder::default();
        let grpc = HeaderValue::from_static("application/grpc");
        let mut secret = HeaderValue::from_static("00-abc-def-01");
        secret.set_sensitive(true);
        let long = HeaderValue::from_str(&"x".repeat(200)).unwrap();
        let mut sizes = Vec::new();
        for round in 0..3 {
            let mut dst = BytesMut::new();
            if round == 2 {
                e.set_peer_table_size(64);
            }
            e.begin(&mut dst);
            e.status(&mut dst, http::StatusCode::OK);
            e.status(&mut dst, http::StatusCode::IM_A_TEAPOT);
            e.header(&mut dst, &http::header::CONTENT_TYPE, &grpc);
            e.header(&mut dst, &HeaderName::from_static("traceparent"), &secret);
            e.header(&mut dst, &HeaderName::from_static("x-long"), &long);
            e.header(
                &mut dst,
                &HeaderName::from_static("grpc-status"),
                &HeaderValue::from_static("0"),
            );
            sizes.push(dst.len());
            let got = decode_all(&mut d, &dst);
            assert_eq!(
                got,
                pairs(&[
                    ("Status", "200"),
                    ("Status", "418"),
                    ("content-type", "application/grpc"),
                    ("traceparent", "00-abc-def-01"),
                    ("x-long", &"x".repeat(200)),
                    ("grpc-status", "0"),
                ])
            );
            assert_eq!((d.size, d.max_size), (e.size, e.max_size));
        }
        // Indexed from the second block on: status 418, content-type and grpc-status are one
        // byte each.
        assert!(sizes[1] < sizes[0] - 30, "{sizes:?}");
    }

    /// Blocks that mostly repeat, with fields coming and going and a small table that keeps
    /// evicting: whatever the encoder's hints point at, the decoder reads every block back.
    #[test]
    fn changing_blocks_read_back_whatever_the_hints() {
        let mut e = Encoder::default();
        let mut d = Decoder::default();
        e.set_peer_table_size(300);
        let mut seed = 7u64;
        let mut next = || {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (seed >> 33) as usize
        };
        for round in 0..400 {
            let mut dst = BytesMut::new();
            e.begin(&mut dst);
            let mut sent = Vec::new();
            for n in 0..(3 + next() % 6) {
                let name = format!("x-field-{}", (n + next() % 3) % 7);
                let value = format!("v{}", next() % 4);
                e.header(
                    &mut dst,
                    &HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    &HeaderValue::from_str(&value).unwrap(),
                );
                sent.push((name, value));
            }
            assert_eq!(decode_all(&mut d, &dst), sent, "round {round}");
            assert_eq!((d.size, d.max_size), (e.size, e.max_size));
        }
    }

    #[test]
    fn repeated_fields_become_indexes_and_trace_ids_stay_out_of_the_table() {
        let mut e = Encoder::default();
        let mut d = Decoder::default();
        let caller = HeaderName::from_static("dapr-caller-app-id");
        let trace = HeaderName::from_static("traceparent");
        for round in 0..2 {
            let mut dst = BytesMut::new();
            e.begin(&mut dst);
            e.pseudo(&mut dst, ":method", b"GET");
            e.header(&mut dst, &caller, &HeaderValue::from_static("app-a"));
            let before = e.table.len();
            let id = format!("00-{round:032x}-{round:016x}-01");
            e.header(&mut dst, &trace, &HeaderValue::from_str(&id).unwrap());
            assert_eq!(e.table.len(), before, "a trace id was inserted");
            if round == 1 {
                // `:method: GET` is static entry 2, the caller id the newest dynamic entry.
                assert_eq!(&dst[..2], &[0x82, 0x80 | 62]);
            }
            let got = decode_all(&mut d, &dst);
            assert_eq!(
                got,
                pairs(&[
                    ("Method", "GET"),
                    ("dapr-caller-app-id", "app-a"),
                    ("traceparent", &id)
                ])
            );
        }
    }

    #[test]
    fn static_lookup_agrees_with_the_table() {
        for (i, (n, v)) in STATIC.iter().enumerate() {
            let first = STATIC.iter().position(|(m, _)| m == n).unwrap() + 1;
            assert_eq!(
                static_index(n.as_bytes(), v.as_bytes()),
                (first, i + 1),
                "{n}: {v}"
            );
            assert_eq!(static_index(n.as_bytes(), b"\x01other").0, first);
        }
        assert_eq!(static_index(b":method", b"PUT"), (2, 0));
        assert_eq!(static_index(b"x-custom", b""), (0, 0));
        assert_eq!(static_index(b"content-typ", b""), (0, 0));
    }

    #[test]
    fn integers_round_trip() {
        for (prefix, v) in [
            (5, 10),
            (5, 31),
            (5, 1337),
            (7, 126),
            (7, 127),
            (7, 1 << 20),
            (4, 15),
        ] {
            let mut dst = BytesMut::new();
            put_integer(&mut dst, 0, prefix, v);
            let mut s = &dst[..];
            assert_eq!(integer(&mut s, prefix).unwrap(), v);
            assert!(s.is_empty());
        }
        let mut dst = BytesMut::new();
        put_integer(&mut dst, 0, 5, 1337);
        assert_eq!(&dst[..], [31, 154, 10]);
    }
}
