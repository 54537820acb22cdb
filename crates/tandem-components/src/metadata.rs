//! A component's `spec.metadata`, decoded the way Dapr users write it.
//!
//! Keys are matched case-insensitively (`redisHost` = `redishost`), booleans accept Go's and
//! Dapr's truthy forms, and durations accept Go's syntax (`1h30m`, `500ms`) or a plain number of
//! seconds.

use std::time::Duration;

use crate::error::{Error, Result};

/// The settings a component is built from: its identity and its resolved `spec.metadata`.
#[derive(Clone, Debug, Default)]
pub struct Metadata {
    /// The component's `metadata.name`.
    pub name: String,
    /// The app-id of the sidecar that loads it.
    pub app_id: String,
    /// The namespace (`NAMESPACE`), when set.
    pub namespace: Option<String>,
    properties: Vec<(String, String)>,
}

impl Metadata {
    /// Metadata for the component `name` loaded by `app_id`, with no properties.
    pub fn new(name: impl Into<String>, app_id: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            app_id: app_id.into(),
            namespace: None,
            properties: Vec::new(),
        }
    }

    /// Adds a property (builder style).
    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.insert(key, value);
        self
    }

    /// Adds or replaces a property.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) {
        let key = key.into();
        let value = value.into();
        match self
            .properties
            .iter_mut()
            .find(|(k, _)| k.eq_ignore_ascii_case(&key))
        {
            Some(slot) => slot.1 = value,
            None => self.properties.push((key, value)),
        }
    }

    /// All properties in definition order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.properties
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The value of `key` (case-insensitive); empty values count as unset, as in Dapr.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.properties
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.trim().is_empty())
    }

    /// The value of a required field.
    pub fn required(&self, key: &str) -> Result<&str> {
        self.get(key)
            .ok_or_else(|| Error::invalid_metadata(key, "the field is required"))
    }

    /// The value of `key`, or `default`.
    pub fn string_or(&self, key: &str, default: &str) -> String {
        self.get(key).unwrap_or(default).to_owned()
    }

    /// A boolean field (`true`/`false`, `1`/`0`, `yes`/`no`, `on`/`off`, `t`/`f`).
    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => parse_bool(v).ok_or_else(|| {
                Error::invalid_metadata(key, "expected a boolean such as true or false")
            }),
        }
    }

    /// A duration field in Go syntax (`5s`, `1m30s`) or a number of seconds.
    pub fn duration_or(&self, key: &str, default: Duration) -> Result<Duration> {
        match self.get(key) {
            None => Ok(default),
            // The parser's message quotes the text; metadata values may be secrets, so say
            // only what was expected.
            Some(v) => parse_duration(v).map_err(|_| {
                Error::invalid_metadata(key, "expected a duration such as 5s, 1m30s or 250ms")
            }),
        }
    }

    /// An unsigned integer field.
    pub fn u64_or(&self, key: &str, default: u64) -> Result<u64> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .trim()
                .parse()
                .map_err(|_| Error::invalid_metadata(key, "expected a non-negative integer")),
        }
    }

    /// A signed integer field.
    pub fn i64_or(&self, key: &str, default: i64) -> Result<i64> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .trim()
                .parse()
                .map_err(|_| Error::invalid_metadata(key, "expected an integer")),
        }
    }
}

/// Parses the boolean spellings Dapr accepts. `None` when the text is not a boolean.
pub fn parse_bool(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "t" | "1" | "yes" | "y" | "on" => Some(true),
        "false" | "f" | "0" | "no" | "n" | "off" => Some(false),
        _ => None,
    }
}

/// Parses a Go duration (`300ms`, `1.5h`, `2h45m`, `-1s` is rejected) or a bare number of
/// seconds (`"20"`).
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let invalid =
        || format!("invalid duration '{text}': expected a form such as 5s, 1m30s or 250ms");
    let mut rest = text.strip_prefix('+').unwrap_or(text);
    if rest.starts_with('-') {
        return Err(format!("negative duration '{text}' is not allowed"));
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(invalid)?;
        if num_len == 0 {
            return Err(invalid());
        }
        let number: f64 = rest[..num_len].parse().map_err(|_| invalid())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let nanos_per_unit = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(invalid()),
        };
        total += number * nanos_per_unit;
        rest = &rest[unit_len..];
    }
    if !total.is_finite() || total > u64::MAX as f64 {
        return Err(invalid());
    }
    Ok(Duration::from_nanos(total as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("20"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn case_insensitive_keys_and_empty_values() {
        let m = Metadata::new("c", "app")
            .with("redisHost", "localhost:6379")
            .with("empty", "  ");
        assert_eq!(m.get("REDISHOST"), Some("localhost:6379"));
        assert_eq!(m.get("empty"), None);
        assert!(m.required("missing").is_err());
        assert!(m.bool_or("redisHost", false).is_err());
        let secret = Metadata::new("c", "app").with("timeout", "hunter2");
        let err = secret.duration_or("timeout", Duration::ZERO).unwrap_err();
        assert!(err.to_string().contains("timeout"));
        assert!(!err.to_string().contains("hunter2"));
    }
}
