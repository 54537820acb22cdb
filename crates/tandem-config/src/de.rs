//! Lenient decoding shared by every resource kind.
//!
//! daprd turns resource YAML into JSON and decodes it with Go's `encoding/json`, which matches
//! field names case-insensitively and treats `null` as "absent". [`Loose`] reproduces that over a
//! [`serde_norway::Value`] so that `pubsubName:` works as well as `pubsubname:`. The helpers below
//! decode the value shapes Dapr users write: any scalar as a string, booleans written as strings,
//! Go durations, and integers written as strings.

use std::fmt;
use std::time::Duration;

use serde::de::value::{
    MapAccessDeserializer, MapDeserializer, SeqAccessDeserializer, SeqDeserializer,
};
use serde::de::{self, DeserializeOwned, Deserializer, IntoDeserializer, Visitor};
use serde::forward_to_deserialize_any;
use serde_norway::{Mapping, Value};
use tandem_components::metadata::{parse_bool, parse_duration};

use crate::error::FieldError;

/// Decodes `value` into `T` with Go-like leniency, reporting the field path on failure.
pub(crate) fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(Loose(value)).map_err(FieldError::from)
}

/// A YAML value decoded the way Go's JSON decoder would: case-insensitive struct fields, `null`
/// fields treated as absent, non-string map keys turned into strings, tags ignored.
pub(crate) struct Loose(pub(crate) Value);

/// Map keys become strings, as in YAML → JSON conversion.
fn key_to_string(key: Value) -> Value {
    match key {
        Value::Number(n) => Value::String(n.to_string()),
        Value::Bool(b) => Value::String(b.to_string()),
        Value::Null => Value::String("null".to_owned()),
        Value::Tagged(tagged) => key_to_string(tagged.value),
        other => other,
    }
}

impl<'de> IntoDeserializer<'de, serde_norway::Error> for Loose {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

impl<'de> Deserializer<'de> for Loose {
    type Error = serde_norway::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Sequence(seq) => {
                let mut access = SeqDeserializer::new(seq.into_iter().map(Loose));
                let value = visitor.visit_seq(&mut access)?;
                access.end()?;
                Ok(value)
            }
            Value::Mapping(map) => {
                let mut access = MapDeserializer::new(
                    map.into_iter()
                        .map(|(k, v)| (Loose(key_to_string(k)), Loose(v))),
                );
                let value = visitor.visit_map(&mut access)?;
                access.end()?;
                Ok(value)
            }
            Value::Tagged(tagged) => Loose(tagged.value).deserialize_any(visitor),
            other => other.deserialize_any(visitor),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        let Value::Mapping(map) = self.0 else {
            return Loose(self.0).deserialize_any(visitor);
        };
        let map: Mapping = map
            .into_iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| {
                let key = match key_to_string(k) {
                    Value::String(s) if !fields.contains(&s.as_str()) => {
                        match fields.iter().find(|f| f.eq_ignore_ascii_case(&s)) {
                            Some(field) => Value::String((*field).to_owned()),
                            None => Value::String(s),
                        }
                    }
                    other => other,
                };
                (key, v)
            })
            .collect();
        Loose(Value::Mapping(map)).deserialize_any(visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_enum(name, variants, visitor)
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map identifier ignored_any
    }
}

/// Formats a float the way Go's JSON encoder does for YAML numbers: `1.0` → `1`, `1.5` → `1.5`.
fn format_float(f: f64) -> String {
    if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e15 {
        format!("{}", f as i64)
    } else {
        format!("{f}")
    }
}

/// Any YAML value as text: scalars as written (`true`, `42`, `1.5`), `null` as "", mappings and
/// sequences as JSON.
struct ScalarText;

impl<'de> Visitor<'de> for ScalarText {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a value")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
        Ok(v)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<String, E> {
        Ok(format_float(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<String, E> {
        Ok(String::new())
    }
    fn visit_none<E: de::Error>(self) -> Result<String, E> {
        Ok(String::new())
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<String, A::Error> {
        let json: serde_json::Value =
            serde::Deserialize::deserialize(SeqAccessDeserializer::new(seq))?;
        Ok(json.to_string())
    }
    fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<String, A::Error> {
        let json: serde_json::Value =
            serde::Deserialize::deserialize(MapAccessDeserializer::new(map))?;
        Ok(json.to_string())
    }
}

/// Any value as a string (see [`ScalarText`]).
pub(crate) fn scalar_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    d.deserialize_any(ScalarText)
}

/// Any value as an optional string; an empty result is `None`.
pub(crate) fn opt_scalar_string<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<String>, D::Error> {
    let s = d.deserialize_any(ScalarText)?;
    Ok((!s.is_empty()).then_some(s))
}

/// A boolean written as a YAML boolean or as text (`"true"`, `"yes"`, `"1"`).
struct FlexBool;

impl<'de> Visitor<'de> for FlexBool {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a boolean")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<bool, E> {
        Ok(v)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        if v.trim().is_empty() {
            return Ok(false);
        }
        parse_bool(v).ok_or_else(|| E::custom("expected a boolean such as true or false"))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<bool, E> {
        match v {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(E::custom("expected a boolean such as true or false")),
        }
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<bool, E> {
        self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
    }
}

/// A lenient boolean (see [`FlexBool`]).
pub(crate) fn flex_bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    d.deserialize_any(FlexBool)
}

/// A lenient optional boolean.
pub(crate) fn opt_flex_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    d.deserialize_any(FlexBool).map(Some)
}

/// An integer written as a YAML number or as text.
struct FlexInt;

impl<'de> Visitor<'de> for FlexInt {
    type Value = i128;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an integer")
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<i128, E> {
        Ok(v.into())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<i128, E> {
        Ok(v.into())
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<i128, E> {
        v.trim()
            .parse()
            .map_err(|_| E::custom("expected an integer"))
    }
}

/// A lenient optional integer of type `T`, range-checked.
pub(crate) fn opt_int<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<i128>,
{
    let v = d.deserialize_any(FlexInt)?;
    T::try_from(v)
        .map(Some)
        .map_err(|_| de::Error::custom("integer out of range"))
}

/// A duration: Go syntax (`5s`, `1m30s`), or a bare integer counted in seconds or milliseconds.
/// Empty text is `None`.
struct DurationVisitor {
    bare_integer_millis: bool,
}

impl DurationVisitor {
    fn integer<E: de::Error>(&self, n: u64) -> Result<Option<Duration>, E> {
        Ok(Some(if self.bare_integer_millis {
            Duration::from_millis(n)
        } else {
            Duration::from_secs(n)
        }))
    }
}

impl<'de> Visitor<'de> for DurationVisitor {
    type Value = Option<Duration>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration such as 5s")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Option<Duration>, E> {
        let text = v.trim();
        if text.is_empty() {
            return Ok(None);
        }
        if let Ok(n) = text.parse::<u64>() {
            return self.integer(n);
        }
        parse_duration(text).map(Some).map_err(E::custom)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Option<Duration>, E> {
        self.integer(v)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Option<Duration>, E> {
        if v < 0 {
            return Err(E::custom("negative duration is not allowed"));
        }
        self.integer(v.unsigned_abs())
    }
    fn visit_unit<E: de::Error>(self) -> Result<Option<Duration>, E> {
        Ok(None)
    }
}

/// A Go duration; a bare integer counts seconds (as `tandem_components::metadata::parse_duration`).
pub(crate) fn opt_duration_secs<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Duration>, D::Error> {
    d.deserialize_any(DurationVisitor {
        bare_integer_millis: false,
    })
}

/// A Go duration; a bare integer counts milliseconds (Dapr's resiliency and OTLP timeout rule).
pub(crate) fn opt_duration_millis<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Duration>, D::Error> {
    d.deserialize_any(DurationVisitor {
        bare_integer_millis: true,
    })
}

/// Finds `key` in a mapping, exactly or else case-insensitively (as Go's JSON decoder does).
pub(crate) fn get_field<'a>(map: &'a Mapping, key: &str) -> Option<&'a Value> {
    map.get(key).or_else(|| {
        map.iter()
            .find(|(k, _)| k.as_str().is_some_and(|k| k.eq_ignore_ascii_case(key)))
            .map(|(_, v)| v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize, Debug, Default)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        pubsubname: Option<String>,
        #[serde(default)]
        items: Vec<String>,
        #[serde(default, deserialize_with = "scalar_string")]
        text: String,
        #[serde(default, deserialize_with = "opt_duration_millis")]
        wait: Option<Duration>,
    }

    fn probe(yaml: &str) -> Result<Probe, FieldError> {
        from_value(serde_norway::from_str(yaml).unwrap())
    }

    #[test]
    fn fields_match_case_insensitively_and_null_is_absent() {
        let p = probe("pubsubName: p\nitems:\n").unwrap();
        assert_eq!(p.pubsubname.as_deref(), Some("p"));
        assert!(p.items.is_empty());
    }

    #[test]
    fn scalars_become_text() {
        assert_eq!(probe("text: 42").unwrap().text, "42");
        assert_eq!(probe("text: 1.0").unwrap().text, "1");
        assert_eq!(probe("text: 1.25").unwrap().text, "1.25");
        assert_eq!(probe("text: true").unwrap().text, "true");
        assert_eq!(probe("text: {a: 1}").unwrap().text, r#"{"a":1}"#);
        assert_eq!(probe("text: [1, x]").unwrap().text, r#"[1,"x"]"#);
    }

    #[test]
    fn durations_and_paths() {
        assert_eq!(
            probe("wait: 250").unwrap().wait,
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            probe("wait: 1m").unwrap().wait,
            Some(Duration::from_secs(60))
        );
        let err = probe("wait: soon").unwrap_err();
        assert_eq!(err.field.as_deref(), Some("wait"));
        assert!(err.message.contains("invalid duration"), "{}", err.message);
        let err = probe("items: secretvalue").unwrap_err();
        assert_eq!(err.field.as_deref(), Some("items"));
        assert!(!err.message.contains("secretvalue"), "{}", err.message);
    }
}
