//! Stream entries in Dapr's layout, and the replies of the stream commands that carry them.
//!
//! An entry has the field `data` (the payload, verbatim) and, when the publish request had
//! metadata, `metadata` (a JSON object of strings). Tandem also writes `contentType` when the
//! request has one; Dapr's reader ignores fields it does not know, and entries written by
//! Dapr (without it) read with no content type.
//!
//! Replies are parsed by hand, accepting RESP2 arrays and RESP3 maps alike, so that an entry
//! Redis reports without fields (deleted after it was delivered) is still seen, by its id.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use redis::Value;
use tandem_components::pubsub::{Message, PublishRequest};

/// The payload field.
pub(super) const DATA: &str = "data";
/// The request metadata, as a JSON object of strings.
pub(super) const METADATA: &str = "metadata";
/// The content type (Tandem only).
pub(super) const CONTENT_TYPE: &str = "contentType";

/// The fields of a new entry for `req`, in the order they are written.
pub(super) fn fields(req: &PublishRequest) -> Vec<(&'static str, Bytes)> {
    let mut out = vec![(DATA, req.data.clone())];
    if !req.metadata.is_empty() {
        // A map of strings always serialises.
        let json = serde_json::to_vec(&req.metadata).unwrap_or_default();
        out.push((METADATA, Bytes::from(json)));
    }
    if let Some(ct) = &req.content_type {
        out.push((CONTENT_TYPE, Bytes::copy_from_slice(ct.as_bytes())));
    }
    out
}

/// An entry read from a stream.
#[derive(Debug)]
pub(super) struct Entry {
    /// The entry id (`<ms>-<seq>`).
    pub(super) id: String,
    /// The message, or `None` when the entry no longer exists (trimmed or deleted after it
    /// was delivered).
    pub(super) message: Option<Message>,
}

/// A pending entry, as `XPENDING <key> <group> <start> <end> <count>` lists it.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Pending {
    /// The entry id.
    pub(super) id: String,
    /// The consumer holding it.
    pub(super) consumer: String,
    /// Time since it was last delivered (or claimed).
    pub(super) idle: Duration,
}

/// The entries of an `XREADGROUP` reply (`Nil` when the read timed out).
pub(super) fn read_reply(reply: Value, topic: &str) -> Vec<Entry> {
    let streams = match reply {
        Value::Array(items) => items
            .into_iter()
            .filter_map(|s| match s {
                Value::Array(mut pair) if pair.len() == 2 => pair.pop(),
                _ => None,
            })
            .collect(),
        Value::Map(pairs) => pairs.into_iter().map(|(_, entries)| entries).collect(),
        _ => Vec::new(),
    };
    streams
        .into_iter()
        .flat_map(|entries| entry_list(entries, topic))
        .collect()
}

/// The entries of an `XCLAIM` (or `XRANGE`) reply.
pub(super) fn entry_list(reply: Value, topic: &str) -> Vec<Entry> {
    match reply {
        Value::Array(items) => items
            .into_iter()
            .filter_map(|item| entry(item, topic))
            .collect(),
        _ => Vec::new(),
    }
}

/// The pending entries of an extended `XPENDING` reply.
pub(super) fn pending_reply(reply: Value) -> Vec<Pending> {
    let Value::Array(items) = reply else {
        return Vec::new();
    };
    items
        .into_iter()
        .filter_map(|item| {
            let Value::Array(parts) = item else {
                return None;
            };
            let mut parts = parts.into_iter();
            let id = text(parts.next()?)?;
            let consumer = text(parts.next()?)?;
            let idle = match parts.next()? {
                Value::Int(ms) => Duration::from_millis(u64::try_from(ms).unwrap_or(0)),
                other => Duration::from_millis(text(other)?.parse().ok()?),
            };
            Some(Pending { id, consumer, idle })
        })
        .collect()
}

/// The id that follows `id` (for paging through `XPENDING` without the exclusive-range syntax
/// of Redis 6.2).
pub(super) fn next_id(id: &str) -> String {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    let (ms, seq) = (
        ms.parse::<u64>().unwrap_or(0),
        seq.parse::<u64>().unwrap_or(0),
    );
    match seq.checked_add(1) {
        Some(seq) => format!("{ms}-{seq}"),
        None => format!("{}-0", ms.saturating_add(1)),
    }
}

fn entry(item: Value, topic: &str) -> Option<Entry> {
    let Value::Array(parts) = item else {
        return None;
    };
    let mut parts = parts.into_iter();
    let id = text(parts.next()?)?;
    let pairs = match parts.next() {
        Some(Value::Array(flat)) => {
            let mut pairs = Vec::with_capacity(flat.len() / 2);
            let mut it = flat.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                pairs.push((k, v));
            }
            pairs
        }
        Some(Value::Map(pairs)) => pairs,
        _ => {
            return Some(Entry { id, message: None });
        }
    };
    let mut msg = Message {
        topic: topic.to_owned(),
        ..Default::default()
    };
    for (key, value) in pairs {
        let Some(key) = text(key) else { continue };
        match key.as_str() {
            DATA => msg.data = bytes(value),
            METADATA => match serde_json::from_slice::<HashMap<String, String>>(&bytes(value)) {
                Ok(m) => msg.metadata = m,
                Err(_) => {
                    tracing::warn!(
                        topic,
                        id,
                        "pubsub.redis: ignoring unreadable message metadata"
                    )
                }
            },
            CONTENT_TYPE => msg.content_type = text(value),
            _ => {}
        }
    }
    Some(Entry {
        id,
        message: Some(msg),
    })
}

fn bytes(v: Value) -> Bytes {
    match v {
        Value::BulkString(b) => Bytes::from(b),
        Value::SimpleString(s) => Bytes::from(s),
        Value::Int(n) => Bytes::from(n.to_string()),
        _ => Bytes::new(),
    }
}

fn text(v: Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn fields_follow_daprs_layout() {
        let mut req = PublishRequest {
            topic: "t".into(),
            data: Bytes::from_static(b"payload"),
            ..Default::default()
        };
        let names = |req: &PublishRequest| fields(req).iter().map(|f| f.0).collect::<Vec<_>>();
        assert_eq!(names(&req), ["data"]);
        req.metadata.insert("k".into(), "v".into());
        req.content_type = Some("text/plain".into());
        let f = fields(&req);
        assert_eq!(f[1], ("metadata", Bytes::from_static(br#"{"k":"v"}"#)));
        assert_eq!(f[2], ("contentType", Bytes::from_static(b"text/plain")));
    }

    #[test]
    fn read_replies_in_resp2_and_resp3() {
        let entry = Value::Array(vec![
            bulk("1-1"),
            Value::Array(vec![
                bulk("data"),
                Value::BulkString(vec![0, 255]),
                bulk("metadata"),
                bulk(r#"{"a":"b"}"#),
                bulk("other"),
                bulk("x"),
            ]),
        ]);
        let resp2 = Value::Array(vec![Value::Array(vec![
            bulk("t"),
            Value::Array(vec![entry.clone()]),
        ])]);
        let resp3 = Value::Map(vec![(bulk("t"), Value::Array(vec![entry]))]);
        for reply in [resp2, resp3] {
            let got = read_reply(reply, "t");
            assert_eq!(got.len(), 1);
            assert_eq!(got[0].id, "1-1");
            let msg = got[0].message.as_ref().unwrap();
            assert_eq!(msg.data.as_ref(), &[0, 255]);
            assert_eq!(msg.metadata["a"], "b");
            assert_eq!(msg.topic, "t");
            assert_eq!(msg.content_type, None);
        }
        assert!(read_reply(Value::Nil, "t").is_empty());
    }

    #[test]
    fn deleted_entries_keep_their_id() {
        let got = entry_list(
            Value::Array(vec![
                Value::Array(vec![bulk("5-0"), Value::Nil]),
                Value::Nil,
            ]),
            "t",
        );
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].id, "5-0");
        assert!(got[0].message.is_none());
    }

    #[test]
    fn pending_entries() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("7-3"),
            bulk("c1"),
            Value::Int(1500),
            Value::Int(2),
        ])]);
        assert_eq!(
            pending_reply(reply),
            [Pending {
                id: "7-3".into(),
                consumer: "c1".into(),
                idle: Duration::from_millis(1500)
            }]
        );
    }

    #[test]
    fn next_ids() {
        assert_eq!(next_id("7-3"), "7-4");
        assert_eq!(next_id(&format!("7-{}", u64::MAX)), "8-0");
    }
}
