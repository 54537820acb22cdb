//! Request-body decoding with Go's rules: field names match case-insensitively (`"Key"`,
//! `"KEY"`), unknown fields are ignored, and JSON values are kept as raw text slices of the
//! request body instead of being re-encoded.

use std::collections::HashMap;
use std::fmt;

use bytes::Bytes;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// Identifies a field by case-insensitive name: `Some(index into names)` or `None` (unknown).
struct FieldSeed(&'static [&'static str]);

impl<'de> DeserializeSeed<'de> for FieldSeed {
    type Value = Option<usize>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for FieldSeed {
    type Value = Option<usize>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(self.0.iter().position(|n| n.eq_ignore_ascii_case(v)))
    }
}

/// Walks a JSON object, calling `on_field(index, map)` for known fields and skipping others.
fn walk_object<'de, A, F>(
    mut map: A,
    names: &'static [&'static str],
    mut on_field: F,
) -> Result<(), A::Error>
where
    A: MapAccess<'de>,
    F: FnMut(usize, &mut A) -> Result<(), A::Error>,
{
    while let Some(field) = map.next_key_seed(FieldSeed(names))? {
        match field {
            Some(i) => on_field(i, &mut map)?,
            None => {
                map.next_value::<IgnoredAny>()?;
            }
        }
    }
    Ok(())
}

/// A `map[string]string`; `null` decodes as empty.
fn string_map<'de, A: MapAccess<'de>>(map: &mut A) -> Result<HashMap<String, String>, A::Error> {
    Ok(map
        .next_value::<Option<HashMap<String, String>>>()?
        .unwrap_or_default())
}

/// One state item as written in save, transaction and (for `options`) delete bodies.
#[derive(Debug, Default)]
pub(crate) struct RawItem<'a> {
    pub(crate) key: String,
    pub(crate) value: Option<&'a RawValue>,
    pub(crate) etag: Option<String>,
    pub(crate) metadata: HashMap<String, String>,
    pub(crate) concurrency: String,
    pub(crate) consistency: String,
}

impl<'de: 'a, 'a> de::Deserialize<'de> for RawItem<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = RawItem<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a state item object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawItem<'a>, A::Error> {
                let mut item = RawItem::default();
                walk_object(
                    map,
                    &["key", "value", "etag", "metadata", "options"],
                    |i, m| {
                        match i {
                            0 => item.key = m.next_value::<Option<String>>()?.unwrap_or_default(),
                            1 => item.value = Some(m.next_value::<&'de RawValue>()?),
                            2 => item.etag = m.next_value()?,
                            3 => item.metadata = string_map(m)?,
                            _ => {
                                let o: Options = m.next_value()?;
                                item.concurrency = o.concurrency;
                                item.consistency = o.consistency;
                            }
                        }
                        Ok(())
                    },
                )?;
                Ok(item)
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

#[derive(Default)]
struct Options {
    concurrency: String,
    consistency: String,
}

impl<'de> de::Deserialize<'de> for Options {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Options;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("state options")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Options, E> {
                Ok(Options::default())
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Options, A::Error> {
                let mut o = Options::default();
                walk_object(map, &["concurrency", "consistency"], |i, m| {
                    let v = m.next_value::<Option<String>>()?.unwrap_or_default();
                    if i == 0 {
                        o.concurrency = v
                    } else {
                        o.consistency = v
                    }
                    Ok(())
                })?;
                Ok(o)
            }
        }
        d.deserialize_any(V)
    }
}

/// A transaction body.
#[derive(Debug, Default)]
pub(crate) struct RawTransaction<'a> {
    pub(crate) operations: Vec<RawOperation<'a>>,
    pub(crate) metadata: HashMap<String, String>,
}

/// One transaction operation.
#[derive(Debug, Default)]
pub(crate) struct RawOperation<'a> {
    pub(crate) operation: String,
    pub(crate) request: RawItem<'a>,
}

impl<'de: 'a, 'a> de::Deserialize<'de> for RawOperation<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = RawOperation<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a transaction operation object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawOperation<'a>, A::Error> {
                let mut op = RawOperation::default();
                walk_object(map, &["operation", "request"], |i, m| {
                    if i == 0 {
                        op.operation = m.next_value::<Option<String>>()?.unwrap_or_default();
                    } else {
                        op.request = m.next_value()?;
                    }
                    Ok(())
                })?;
                Ok(op)
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

impl<'de: 'a, 'a> de::Deserialize<'de> for RawTransaction<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = RawTransaction<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a transaction object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawTransaction<'a>, A::Error> {
                let mut tx = RawTransaction::default();
                walk_object(map, &["operations", "metadata"], |i, m| {
                    if i == 0 {
                        tx.operations = m
                            .next_value::<Option<Vec<RawOperation<'a>>>>()?
                            .unwrap_or_default();
                    } else {
                        tx.metadata = string_map(m)?;
                    }
                    Ok(())
                })?;
                Ok(tx)
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// A bulk-get body.
#[derive(Debug, Default)]
pub(crate) struct RawBulkGet {
    pub(crate) keys: Vec<String>,
    pub(crate) metadata: HashMap<String, String>,
}

impl<'de> de::Deserialize<'de> for RawBulkGet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawBulkGet;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a bulk state request object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawBulkGet, A::Error> {
                let mut b = RawBulkGet::default();
                walk_object(map, &["keys", "metadata", "parallelism"], |i, m| {
                    match i {
                        0 => b.keys = m.next_value::<Option<Vec<String>>>()?.unwrap_or_default(),
                        1 => b.metadata = string_map(m)?,
                        _ => {
                            m.next_value::<Option<i64>>()?;
                        }
                    }
                    Ok(())
                })?;
                Ok(b)
            }
        }
        d.deserialize_map(V)
    }
}

/// A JSON array of state items (the save body).
pub(crate) struct RawItems<'a>(pub(crate) Vec<RawItem<'a>>);

impl<'de: 'a, 'a> de::Deserialize<'de> for RawItems<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = RawItems<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of state items")
            }
            fn visit_unit<E: de::Error>(self) -> Result<RawItems<'a>, E> {
                Ok(RawItems(Vec::new()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawItems<'a>, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(1).min(1024));
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(RawItems(items))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// The stored bytes for a raw JSON value taken from `body`.
///
/// Large values are zero-copy slices of the body; small ones are copied so a store does not
/// keep a whole multi-item body alive for one small value.
pub(crate) fn value_bytes(body: &Bytes, raw: Option<&RawValue>) -> Bytes {
    let Some(raw) = raw else {
        return Bytes::from_static(b"null");
    };
    let text = raw.get().as_bytes();
    if text.len() * 2 >= body.len() {
        body.slice_ref(text)
    } else {
        Bytes::copy_from_slice(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_match_fields_case_insensitively_and_keep_raw_values() {
        let body = Bytes::from_static(
            br#"[{"KEY":"a","Value":{"b": [1, 2]},"eTag":"3","metadata":{"ttlInSeconds":"5"},"options":{"Concurrency":"first-write"},"extra":1}]"#,
        );
        let items: RawItems<'_> = serde_json::from_slice(&body).unwrap();
        let item = &items.0[0];
        assert_eq!(item.key, "a");
        assert_eq!(item.value.unwrap().get(), r#"{"b": [1, 2]}"#);
        assert_eq!(item.etag.as_deref(), Some("3"));
        assert_eq!(item.metadata["ttlInSeconds"], "5");
        assert_eq!(item.concurrency, "first-write");
        let v = value_bytes(&body, item.value);
        assert_eq!(v.as_ref(), br#"{"b": [1, 2]}"#);
    }

    #[test]
    fn transactions_and_bulk() {
        let tx: RawTransaction<'_> = serde_json::from_slice(
            br#"{"Operations":[{"operation":"upsert","request":{"key":"k","value":"v"}},{"operation":"delete","request":{"key":"d","etag":"1"}}],"metadata":{"a":"b"}}"#,
        )
        .unwrap();
        assert_eq!(tx.operations.len(), 2);
        assert_eq!(tx.operations[1].request.etag.as_deref(), Some("1"));
        let bulk: RawBulkGet =
            serde_json::from_slice(br#"{"keys":["a","b"],"parallelism":10}"#).unwrap();
        assert_eq!(bulk.keys, vec!["a", "b"]);
    }

    #[test]
    fn wrong_types_are_errors() {
        assert!(serde_json::from_slice::<RawItems<'_>>(br#"{"key":"a"}"#).is_err());
        assert!(serde_json::from_slice::<RawItems<'_>>(br#"[{"key":1}]"#).is_err());
        assert!(
            serde_json::from_slice::<RawItems<'_>>(br#"[{"key":"a","metadata":{"x":1}}]"#).is_err()
        );
        assert!(serde_json::from_slice::<RawItems<'_>>(b"[{").is_err());
    }
}
