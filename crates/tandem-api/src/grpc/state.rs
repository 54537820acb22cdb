//! State RPCs: convert the message, call [`tandem_runtime::state::StateService`], convert back.
//!
//! Values travel as bytes, unlike over HTTP where they are JSON: `SaveState` stores an item's
//! `value` as it came, unless the item's metadata says `contentType: application/json`, in
//! which case it must be JSON (it is stored as that JSON text, as an HTTP save would store it).
//! Reads hand back the stored bytes unchanged.
//!
//! Prost's `bytes` fields here are `Vec<u8>`: a value written arrives as a `Vec` that becomes
//! the stored `Bytes` without a copy; a value read is copied once, into the answer's message
//! (`GetState` on the lean unary path writes that message itself, see [`answer`]; elsewhere
//! into the answer's `Vec`, only when the store still shares the buffer).

use dapr::dapr::proto::runtime::v1 as rt;
use prost::Message as _;
use tandem_components::state::{RequestMetadata, StateItem};
use tandem_runtime::state::{DeleteItem, TxOperation};
use tandem_runtime::{ApiError, ErrorCode, Runtime};
use tonic::{Request, Response, Status};

use super::error::to_status;

type Result<T> = std::result::Result<Response<T>, Status>;
type StdResult<T> = std::result::Result<T, Status>;

/// `common.v1.StateOptions.StateConsistency` as Dapr's text.
fn consistency_text(value: i32) -> &'static str {
    match value {
        1 => "eventual",
        2 => "strong",
        _ => "",
    }
}

pub(super) use tandem_runtime::state::save_item_from_proto as save_item;
use tandem_runtime::state::{proto_etag as etag, proto_options as options};

/// `GetState` through tonic's service (a compressed message, say): a missing key is an empty
/// answer, not an error. The lean unary path has its own ([`get_item`], [`answer`]).
pub(super) async fn get(
    rt: &Runtime,
    req: rt::GetStateRequest,
) -> std::result::Result<rt::GetStateResponse, Status> {
    let item = rt
        .state
        .get(
            &req.store_name,
            &req.key,
            consistency_text(req.consistency),
            &req.metadata,
        )
        .await
        .map_err(to_status)?;
    let Some(item) = item else {
        return Ok(rt::GetStateResponse::default());
    };
    Ok(rt::GetStateResponse {
        data: item.value.into(),
        etag: item.etag.map(|e| e.as_str().to_owned()).unwrap_or_default(),
        metadata: item.metadata,
    })
}

/// A `GetStateRequest` read in place, as most clients send it: the store, the key and perhaps
/// a consistency, each at most once, and no metadata. Anything else (metadata, unknown or
/// repeated fields, a malformed message) is for prost to decode, with its own errors.
pub(super) struct GetRequest<'a> {
    store_name: &'a str,
    key: &'a str,
    consistency: i32,
}

impl<'a> GetRequest<'a> {
    pub(super) fn read(mut buf: &'a [u8]) -> Option<Self> {
        let (mut store_name, mut key, mut consistency) = (None, None, None);
        while !buf.is_empty() {
            let slot = match varint(&mut buf)? {
                // Field 1 (`store_name`) and 2 (`key`), length-delimited.
                0x0a => &mut store_name,
                0x12 => &mut key,
                // Field 3 (`consistency`), a varint: an `int32` keeps the low 32 bits.
                0x18 => {
                    let value = varint(&mut buf)? as i32;
                    return_if_set(consistency.replace(value))?;
                    continue;
                }
                _ => return None,
            };
            let len = usize::try_from(varint(&mut buf)?).ok()?;
            let text = std::str::from_utf8(buf.get(..len)?).ok()?;
            buf = &buf[len..];
            return_if_set(slot.replace(text))?;
        }
        Some(GetRequest {
            store_name: store_name.unwrap_or_default(),
            key: key.unwrap_or_default(),
            consistency: consistency.unwrap_or_default(),
        })
    }
}

/// `None` when a field was already set (a repeated field is left to prost, whose last value
/// wins).
fn return_if_set<T>(previous: Option<T>) -> Option<()> {
    previous.is_none().then_some(())
}

/// A base-128 varint of at most ten bytes.
fn varint(buf: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for (i, &b) in buf.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            *buf = &buf[i + 1..];
            return Some(value);
        }
    }
    None
}

/// `GetState` on the lean unary path: the request read in place when it can be, and the
/// item written straight into the answer's message (no `GetStateResponse` built and
/// encoded, no copy of the value into it). `None` is a missing key.
pub(super) async fn get_item(rt: &Runtime, message: &[u8]) -> StdResult<Option<StateItem>> {
    let empty = RequestMetadata::new();
    let decoded;
    let (store_name, key, consistency, metadata) = match GetRequest::read(message) {
        Some(req) => (req.store_name, req.key, req.consistency, &empty),
        None => {
            decoded = rt::GetStateRequest::decode(message)
                .map_err(|e| Status::internal(format!("failed to decode Protobuf message: {e}")))?;
            (
                decoded.store_name.as_str(),
                decoded.key.as_str(),
                decoded.consistency,
                &decoded.metadata,
            )
        }
    };
    rt.state
        .get(store_name, key, consistency_text(consistency), metadata)
        .await
        .map_err(to_status)
}

/// The `GetStateResponse` message of `item` (fields in order, empty ones left out, as prost
/// writes them) after the 5-byte gRPC prefix; `OUT_OF_RANGE`, as tonic answers, when it is
/// over `limit` bytes.
pub(super) fn answer(item: Option<StateItem>, limit: usize) -> StdResult<bytes::Bytes> {
    use bytes::BufMut;
    let Some(item) = item else {
        return Ok(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]));
    };
    let etag = item.etag.as_ref().map_or("", |e| e.as_str());
    let field = |len: usize| if len == 0 { 0 } else { 1 + len_of(len) + len };
    let entry = |k: &str, v: &str| field(k.len()) + field(v.len());
    let len = field(item.value.len())
        + field(etag.len())
        + item
            .metadata
            .iter()
            .map(|(k, v)| 1 + len_of(entry(k, v)) + entry(k, v))
            .sum::<usize>();
    if len > limit {
        return Err(super::unary::too_large("encoded", Some(len), limit));
    }
    let mut buf = bytes::BytesMut::with_capacity(5 + len);
    buf.put_u8(0);
    buf.put_u32(len as u32);
    let put = |buf: &mut bytes::BytesMut, tag: u8, bytes: &[u8]| {
        if !bytes.is_empty() {
            buf.put_u8(tag);
            put_varint(buf, bytes.len());
            buf.put_slice(bytes);
        }
    };
    put(&mut buf, 0x0a, &item.value);
    put(&mut buf, 0x12, etag.as_bytes());
    for (k, v) in &item.metadata {
        buf.put_u8(0x1a);
        put_varint(&mut buf, entry(k, v));
        put(&mut buf, 0x0a, k.as_bytes());
        put(&mut buf, 0x12, v.as_bytes());
    }
    Ok(buf.freeze())
}

/// The length of `n` as a varint.
fn len_of(n: usize) -> usize {
    (usize::BITS - (n | 1).leading_zeros()).div_ceil(7) as usize
}

fn put_varint(buf: &mut bytes::BytesMut, mut n: usize) {
    use bytes::BufMut;
    while n >= 0x80 {
        buf.put_u8(n as u8 | 0x80);
        n >>= 7;
    }
    buf.put_u8(n as u8);
}

/// `GetBulkState`: one item per key, per-key failures in `error`.
pub(super) async fn get_bulk(
    rt: &Runtime,
    req: Request<rt::GetBulkStateRequest>,
) -> Result<rt::GetBulkStateResponse> {
    let req = req.into_inner();
    let items = rt
        .state
        .bulk_get(&req.store_name, &req.keys, &req.metadata)
        .await
        .map_err(to_status)?;
    let items = items
        .into_iter()
        .map(|i| {
            let (data, etag, metadata) = match i.item {
                Some(item) => (
                    item.value.into(),
                    item.etag.map(|e| e.as_str().to_owned()).unwrap_or_default(),
                    item.metadata,
                ),
                None => Default::default(),
            };
            rt::BulkStateItem {
                key: i.key,
                data,
                etag,
                error: i.error.unwrap_or_default(),
                metadata,
            }
        })
        .collect();
    Ok(Response::new(rt::GetBulkStateResponse { items }))
}

/// `SaveState`.
pub(super) async fn save(rt: &Runtime, req: Request<rt::SaveStateRequest>) -> Result<()> {
    let req = req.into_inner();
    let items = req
        .states
        .into_iter()
        .map(save_item)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(to_status)?;
    rt.state
        .save(&req.store_name, items)
        .await
        .map_err(to_status)?;
    Ok(Response::new(()))
}

/// `DeleteState`.
pub(super) async fn delete(rt: &Runtime, req: Request<rt::DeleteStateRequest>) -> Result<()> {
    let req = req.into_inner();
    rt.state
        .delete(
            &req.store_name,
            &req.key,
            etag(req.etag),
            options(req.options),
            req.metadata,
        )
        .await
        .map_err(to_status)?;
    Ok(Response::new(()))
}

/// `DeleteBulkState` (gRPC only).
pub(super) async fn delete_bulk(
    rt: &Runtime,
    req: Request<rt::DeleteBulkStateRequest>,
) -> Result<()> {
    let req = req.into_inner();
    let items = req
        .states
        .into_iter()
        .map(|s| DeleteItem {
            key: s.key,
            etag: etag(s.etag),
            metadata: s.metadata,
            options: options(s.options),
        })
        .collect();
    rt.state
        .bulk_delete(&req.store_name, items)
        .await
        .map_err(to_status)?;
    Ok(Response::new(()))
}

/// `ExecuteStateTransaction`: operations `upsert` and `delete`.
pub(super) async fn transaction(
    rt: &Runtime,
    req: Request<rt::ExecuteStateTransactionRequest>,
) -> Result<()> {
    let req = req.into_inner();
    let mut ops = Vec::with_capacity(req.operations.len());
    for op in req.operations {
        let item = op.request.unwrap_or_default();
        ops.push(match op.operation_type.as_str() {
            "upsert" => TxOperation::Upsert(save_item(item).map_err(to_status)?),
            "delete" => TxOperation::Delete {
                key: item.key,
                etag: etag(item.etag),
                metadata: item.metadata,
                options: options(item.options),
            },
            other => {
                return Err(to_status(ApiError::new(
                    ErrorCode::NotSupportedStateOperation,
                    format!("operation type {other} not supported"),
                )));
            }
        });
    }
    rt.state
        .transaction(&req.store_name, ops, req.metadata)
        .await
        .map_err(to_status)?;
    Ok(Response::new(()))
}

/// `QueryStateAlpha1`: the query is JSON text, results carry the stored bytes.
pub(super) async fn query(
    rt: &Runtime,
    req: Request<rt::QueryStateRequest>,
) -> Result<rt::QueryStateResponse> {
    let req = req.into_inner();
    let resp = rt
        .state
        .query(&req.store_name, req.query.as_bytes(), &req.metadata)
        .await
        .map_err(to_status)?;
    Ok(Response::new(rt::QueryStateResponse {
        results: resp
            .results
            .into_iter()
            .map(|r| rt::QueryStateItem {
                key: r.key,
                data: r.data.into(),
                etag: r.etag.map(|e| e.as_str().to_owned()).unwrap_or_default(),
                error: String::new(),
            })
            .collect(),
        token: resp.token.unwrap_or_default(),
        metadata: Default::default(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dapr::dapr::proto::common::v1 as common;
    use tandem_components::state::{Concurrency, Consistency, StateOptions};

    fn encoded(m: &impl prost::Message) -> Vec<u8> {
        m.encode_to_vec()
    }

    #[test]
    fn get_requests_are_read_in_place_as_prost_reads_them() {
        let long = "k".repeat(300);
        for (store_name, key, consistency) in [
            ("statestore", "key-1", 0),
            ("", "", 0),
            ("s", long.as_str(), 2),
            ("störe", "ключ", 1),
            ("s", "k", -1),
        ] {
            let req = rt::GetStateRequest {
                store_name: store_name.into(),
                key: key.into(),
                consistency,
                metadata: Default::default(),
            };
            let bytes = encoded(&req);
            let read = GetRequest::read(&bytes).expect("a plain request is read in place");
            assert_eq!(
                (read.store_name, read.key, read.consistency),
                (store_name, key, consistency)
            );
        }
        // Fields in any order.
        let read = GetRequest::read(b"\x12\x01k\x18\x02\x0a\x01s").unwrap();
        assert_eq!((read.store_name, read.key, read.consistency), ("s", "k", 2));
    }

    #[test]
    fn get_requests_past_the_plain_shape_are_left_to_prost() {
        let mut with_metadata = rt::GetStateRequest {
            store_name: "s".into(),
            key: "k".into(),
            ..Default::default()
        };
        with_metadata.metadata.insert("ttl".into(), "1".into());
        let metadata = encoded(&with_metadata);
        let mut repeated = encoded(&with_metadata);
        repeated.truncate(6);
        repeated.extend_from_slice(b"\x12\x01j");
        for (what, bytes) in [
            ("metadata", &metadata[..]),
            ("a repeated key", &repeated[..]),
            ("an unknown field", b"\x0a\x01s\x22\x00"),
            ("a string cut short", b"\x0a\x05st"),
            ("invalid UTF-8", b"\x12\x02\xff\xfe"),
            ("a varint cut short", b"\x18\x80"),
            ("a tag of a string as a varint", b"\x08\x01"),
        ] {
            assert!(GetRequest::read(bytes).is_none(), "{what}");
        }
        // Prost last-value-wins on the repeat, errors on the rest, as tonic would answer.
        assert_eq!(rt::GetStateRequest::decode(&repeated[..]).unwrap().key, "j");
        assert!(rt::GetStateRequest::decode(&b"\x12\x02\xff\xfe"[..]).is_err());
    }

    #[test]
    fn get_answers_are_what_prost_writes() {
        let item = |value: &[u8], etag: Option<&str>, metadata: &[(&str, &str)]| StateItem {
            value: bytes::Bytes::copy_from_slice(value),
            etag: etag.map(|e| tandem_components::state::ETag::from(e.to_owned())),
            metadata: metadata
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let big = vec![7u8; 200_000];
        for item in [
            None,
            Some(item(b"", None, &[])),
            Some(item(b"{\"a\":1}", Some("3"), &[])),
            Some(item(
                &big,
                Some("etag"),
                &[("ttlExpireTime", "2026-01-01T00:00:00Z")],
            )),
            Some(item(b"v", None, &[("", "empty key"), ("k", "")])),
        ] {
            let expected = item
                .as_ref()
                .map_or_else(Default::default, |i| rt::GetStateResponse {
                    data: i.value.to_vec(),
                    etag: i
                        .etag
                        .as_ref()
                        .map(|e| e.as_str().to_owned())
                        .unwrap_or_default(),
                    metadata: i.metadata.clone(),
                });
            let answer = answer(item, usize::MAX).unwrap();
            assert_eq!(answer[0], 0);
            assert_eq!(answer[1..5], (expected.encoded_len() as u32).to_be_bytes());
            assert_eq!(
                rt::GetStateResponse::decode(&answer[5..]).unwrap(),
                expected
            );
            if expected.metadata.len() <= 1 {
                // Byte for byte where the map's order cannot differ.
                assert_eq!(answer[5..], encoded(&expected)[..]);
            }
        }
        let over = answer(Some(item(b"twelve bytes", None, &[])), 13).unwrap_err();
        assert_eq!(over.code(), tonic::Code::OutOfRange);
        assert!(answer(Some(item(b"twelve bytes", None, &[])), 14).is_ok());
    }

    #[test]
    fn json_items_must_be_json_and_raw_items_are_kept() {
        let raw = common::StateItem {
            key: "k".into(),
            value: vec![0xff, 0x00],
            ..Default::default()
        };
        assert_eq!(save_item(raw).unwrap().value.as_ref(), &[0xff, 0x00]);
        let mut json = common::StateItem {
            key: "k".into(),
            value: b"{\"a\":1}".to_vec(),
            ..Default::default()
        };
        json.metadata
            .insert("contentType".into(), "application/json".into());
        assert_eq!(
            save_item(json.clone()).unwrap().value.as_ref(),
            b"{\"a\":1}"
        );
        json.value = b"nope".to_vec();
        assert_eq!(
            save_item(json).unwrap_err().code,
            ErrorCode::MalformedRequest
        );
    }

    #[test]
    fn options_map_the_enums() {
        let o = options(Some(common::StateOptions {
            concurrency: 1,
            consistency: 2,
        }));
        assert_eq!(o.concurrency, Concurrency::FirstWrite);
        assert_eq!(o.consistency, Consistency::Strong);
        assert_eq!(options(None), StateOptions::default());
        assert_eq!(consistency_text(2), "strong");
    }
}
