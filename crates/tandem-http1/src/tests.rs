use std::mem::MaybeUninit;

use super::*;

/// Parses `raw` as a request head and decodes its fields.
fn fields(raw: &[u8]) -> Result<Fields, String> {
    let mut slots = [const { MaybeUninit::uninit() }; MAX_FIELDS];
    let mut req = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_request_with_uninit_headers(&mut req, raw, &mut slots)
    {
        Ok(httparse::Status::Complete(len)) => len,
        other => panic!("not a complete head: {other:?}"),
    };
    let spans = Spans::of(raw, req.headers);
    spans.decode(&Bytes::copy_from_slice(&raw[..len]))
}

#[test]
fn fields_share_the_head_and_pick_out_framing() {
    let f = fields(
        b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\nX-Custom: v 1\r\nx-custom: v2\r\nConnection: keep-alive\r\nExpect: 100-Continue\r\n\r\n",
    )
    .unwrap();
    assert_eq!(f.length, Some(5));
    assert_eq!(f.chunked, None);
    assert!(f.keep_alive && !f.close && f.expect_continue);
    let custom: Vec<_> = f.headers.get_all("x-custom").iter().collect();
    assert_eq!(custom, ["v 1", "v2"]);
    assert_eq!(f.headers["host"], "a");
    assert_eq!(f.headers.len(), 6);
}

#[test]
fn bad_or_conflicting_lengths_are_refused() {
    for head in [
        &b"GET / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: \r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
    ] {
        assert!(fields(head).is_err(), "{}", String::from_utf8_lossy(head));
    }
}

#[test]
fn chunked_only_when_last() {
    let f =
        fields(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, Chunked\r\nConnection: close\r\n\r\n")
            .unwrap();
    assert_eq!(f.chunked, Some(true));
    assert!(f.close);
    let f = fields(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n").unwrap();
    assert_eq!(f.chunked, Some(false));
}

/// Runs `framing` over `wire` fed `step` bytes at a time; the data and whether it ended.
fn run(
    mut framing: Framing,
    wire: &[u8],
    step: usize,
) -> Result<(Vec<u8>, bool, BytesMut), &'static str> {
    let mut buf = BytesMut::new();
    let mut data = Vec::new();
    let mut fed = 0;
    loop {
        match framing.step(&mut buf)? {
            Step::Data(d) => data.extend_from_slice(&d),
            Step::End => return Ok((data, true, buf)),
            Step::More if fed == wire.len() => return Ok((data, false, buf)),
            Step::More => {
                let end = (fed + step).min(wire.len());
                buf.extend_from_slice(&wire[fed..end]);
                fed = end;
            }
        }
    }
}

#[test]
fn chunked_bodies_decode_however_they_are_split() {
    let wire =
        b"5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nTrailer: x\r\n\r\nNEXT";
    for step in [1, 2, 3, 7, wire.len()] {
        let (data, ended, rest) = run(Framing::Chunked(Chunk::Size), wire, step).unwrap();
        assert_eq!(data, b"helloabcdefghijklmnopqrstuvwxyz", "step {step}");
        assert!(ended);
        // What follows the body is left for the next message.
        assert!(b"NEXT".starts_with(&rest), "step {step}");
    }
}

#[test]
fn bad_chunks_are_errors() {
    for wire in [
        &b"zz\r\n"[..],
        b"5\r\nhelloX\r\n",
        b"-1\r\n",
        b"\r\n",
        b"0x5\r\n",
    ] {
        assert!(
            run(Framing::Chunked(Chunk::Size), wire, 1).is_err(),
            "{}",
            String::from_utf8_lossy(wire)
        );
    }
    let long = vec![b'1'; MAX_LINE + 2];
    assert!(run(Framing::Chunked(Chunk::Size), &long, long.len()).is_err());
}

#[test]
fn lengths_stop_at_their_end() {
    let (data, ended, rest) = run(Framing::Length(5), b"helloGET", 3).unwrap();
    assert_eq!(data, b"hello");
    assert!(ended);
    assert!(b"GET".starts_with(&rest));
    let (data, ended, _) = run(Framing::Length(10), b"hello", 2).unwrap();
    assert_eq!(data, b"hello");
    assert!(!ended);
}

#[test]
fn date_is_an_http_date() {
    let mut out = BytesMut::new();
    put_date(&mut out);
    let line = std::str::from_utf8(&out).unwrap();
    let value = line
        .strip_prefix("date: ")
        .unwrap()
        .strip_suffix("\r\n")
        .unwrap();
    let parsed = httpdate::parse_http_date(value).unwrap();
    let age = SystemTime::now().duration_since(parsed).unwrap();
    assert!(age.as_secs() < 5, "{value}");
    let mut again = BytesMut::new();
    put_length(&mut again, 1234);
    assert_eq!(&again[..], b"content-length: 1234\r\n");
}
