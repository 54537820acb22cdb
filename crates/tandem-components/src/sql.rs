//! What the SQL output bindings (`bindings.postgresql`, `bindings.mysql`) share: Dapr's
//! request shape, its response metadata, and JSON written the way Dapr's Go code writes it.
//!
//! - Requests: operations `exec`, `query` and `close`; metadata `sql` (required for `exec`
//!   and `query`) and `params`, a JSON array of positional parameters ([`SqlRequest::parse`]).
//! - Responses carry the metadata `operation`, `sql`, `start-time`, `end-time` (RFC 3339 with
//!   nanoseconds, UTC), `duration` (Go's form: `1.5ms`, `2m3.5s`) and, for `exec`,
//!   `rows-affected` ([`Timing`]).
//! - Query results are JSON written by hand, cell by cell: [`write_str`] escapes as Go's
//!   `encoding/json` does (`<`, `>` and `&` as `\u003c`…), [`write_f64`] / [`write_f32`]
//!   format floats as Go does (shortest form, exponent only below 1e-6 and from 1e21), and
//!   [`write_go_json`] re-encodes a JSON document as Go does after decoding it into `any`
//!   (object keys sorted, every number a float64).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::Value;

use crate::bindings::{InvokeRequest, InvokeResponse};
use crate::error::{Error, Result};

/// The operations of the SQL bindings.
pub const OPERATIONS: &[&str] = &["exec", "query", "close"];

/// The statement and parameters of an `exec` or `query` call.
#[derive(Clone, Debug, PartialEq)]
pub struct SqlRequest {
    /// Request metadata `sql`.
    pub sql: String,
    /// Request metadata `params`, decoded (empty when absent).
    pub params: Vec<Value>,
}

impl SqlRequest {
    /// Reads `sql` (required, non-empty) and `params` (optional; when present and non-empty,
    /// a JSON array) from the request metadata, with Dapr's error messages.
    pub fn parse(req: &InvokeRequest) -> Result<Self> {
        let sql = req
            .metadata
            .get("sql")
            .filter(|s| !s.is_empty())
            .ok_or_else(|| Error::InvalidRequest("required metadata not set: sql".into()))?;
        let params = match req.metadata.get("params").filter(|p| !p.is_empty()) {
            None => Vec::new(),
            Some(raw) => match serde_json::from_str::<Value>(raw) {
                Ok(Value::Array(items)) => items,
                Ok(Value::Null) => Vec::new(),
                Ok(_) => {
                    return Err(Error::InvalidRequest(
                        "invalid metadata property params: failed to unserialize into an array: \
                         the value is not a JSON array"
                            .into(),
                    ));
                }
                Err(e) => {
                    return Err(Error::InvalidRequest(format!(
                        "invalid metadata property params: failed to unserialize into an array: {e}"
                    )));
                }
            },
        };
        Ok(Self {
            sql: sql.clone(),
            params,
        })
    }
}

/// The statements of a SQL binding, run by [`exec_or_query`].
#[async_trait]
pub trait SqlStatements: Send + Sync {
    /// Runs `exec`: the rows affected.
    async fn exec(&self, req: &SqlRequest) -> Result<u64>;
    /// Runs `query`: the rows as the JSON answer.
    async fn query(&self, req: &SqlRequest) -> Result<Bytes>;
}

/// Answers an `exec` or `query` call (`close` is the binding's own): reads the statement and
/// its parameters, runs it on `db`, and answers with the response metadata of [`Timing`]
/// (`exec` with no data and `rows-affected`, `query` with the rows). Any other operation is
/// refused with Dapr's message.
pub async fn exec_or_query(db: &dyn SqlStatements, req: &InvokeRequest) -> Result<InvokeResponse> {
    let sql = SqlRequest::parse(req)?;
    let timing = Timing::start();
    match req.operation.as_str() {
        "exec" => {
            let rows = db.exec(&sql).await?;
            Ok(InvokeResponse {
                data: Some(Bytes::new()),
                metadata: timing.finish("exec", &sql.sql, Some(rows)),
                content_type: None,
            })
        }
        "query" => {
            let data = db.query(&sql).await?;
            Ok(InvokeResponse {
                data: Some(data),
                metadata: timing.finish("query", &sql.sql, None),
                content_type: None,
            })
        }
        other => Err(Error::InvalidRequest(format!(
            "invalid operation type: {other}. Expected exec, query, or close"
        ))),
    }
}

/// Times one `exec` or `query` call and builds its response metadata.
#[derive(Debug)]
pub struct Timing {
    start: SystemTime,
    started: Instant,
}

impl Timing {
    /// Starts the clock.
    pub fn start() -> Self {
        Self {
            start: SystemTime::now(),
            started: Instant::now(),
        }
    }

    /// The response metadata: `operation`, `sql`, `start-time`, `end-time`, `duration`, and
    /// `rows-affected` when given.
    pub fn finish(
        self,
        operation: &str,
        sql: &str,
        rows_affected: Option<u64>,
    ) -> HashMap<String, String> {
        let elapsed = self.started.elapsed();
        let end = self.start + elapsed;
        let mut md = HashMap::with_capacity(6);
        md.insert("operation".to_owned(), operation.to_owned());
        md.insert("sql".to_owned(), sql.to_owned());
        md.insert("start-time".to_owned(), rfc3339_nano(self.start));
        md.insert("end-time".to_owned(), rfc3339_nano(end));
        md.insert("duration".to_owned(), go_duration(elapsed));
        if let Some(rows) = rows_affected {
            md.insert("rows-affected".to_owned(), rows.to_string());
        }
        md
    }
}

/// A time as Go's `time.RFC3339Nano` in UTC: `2024-05-01T12:30:45.123456789Z`, trailing
/// zeros of the fraction dropped.
pub fn rfc3339_nano(at: SystemTime) -> String {
    let (secs, nanos) = match at.duration_since(UNIX_EPOCH) {
        Ok(d) => (
            i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            d.subsec_nanos(),
        ),
        Err(e) => {
            let d = e.duration();
            let secs = -i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            match d.subsec_nanos() {
                0 => (secs, 0),
                n => (secs - 1, 1_000_000_000 - n),
            }
        }
    };
    unix_rfc3339_nano(secs, nanos)
}

/// Seconds (and nanoseconds) since the Unix epoch as Go's `time.RFC3339Nano` in UTC.
pub fn unix_rfc3339_nano(secs: i64, nanos: u32) -> String {
    let days = secs.div_euclid(86_400);
    let in_day = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let mut out = String::with_capacity(30);
    write_datetime(
        &mut out,
        (y, m, d),
        (
            (in_day / 3600) as u32,
            (in_day / 60 % 60) as u32,
            (in_day % 60) as u32,
        ),
        nanos,
    );
    out.push('Z');
    out
}

/// Writes `YYYY-MM-DDTHH:MM:SS[.fraction]` (no zone), the fraction's trailing zeros dropped.
pub fn write_datetime(out: &mut String, date: (i64, u32, u32), time: (u32, u32, u32), nanos: u32) {
    let (y, m, d) = date;
    let (h, mi, s) = time;
    if y < 0 {
        let _ = write!(out, "-{:04}", -y);
    } else {
        let _ = write!(out, "{y:04}");
    }
    let _ = write!(out, "-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}");
    write_fraction(out, nanos, 9);
}

/// Writes `.digits` for a fraction of `10^width`, trailing zeros dropped; nothing for zero.
pub fn write_fraction(out: &mut String, value: u32, width: usize) {
    if value == 0 {
        return;
    }
    let digits = format!("{value:0width$}");
    out.push('.');
    out.push_str(digits.trim_end_matches('0'));
}

/// The civil date (proleptic Gregorian) of a day number counted from 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    // Shift to an era starting on 0000-03-01, so that leap days end each 400-year era.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A duration as Go's `time.Duration.String`: `0s`, `850ns`, `1.5µs`, `12.345ms`, `1.5s`,
/// `2m3.5s`, `1h0m0s`.
pub fn go_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    let mut out = String::new();
    if nanos == 0 {
        return "0s".to_owned();
    }
    let unit = |out: &mut String, value: u128, per: u128, width: usize, suffix: &str| {
        let _ = write!(out, "{}", value / per);
        write_fraction(out, (value % per) as u32, width);
        out.push_str(suffix);
    };
    if nanos < 1_000 {
        let _ = write!(out, "{nanos}ns");
    } else if nanos < 1_000_000 {
        unit(&mut out, nanos, 1_000, 3, "µs");
    } else if nanos < 1_000_000_000 {
        unit(&mut out, nanos, 1_000_000, 6, "ms");
    } else {
        let secs = nanos / 1_000_000_000;
        let (h, m) = (secs / 3600, secs / 60 % 60);
        if h > 0 {
            let _ = write!(out, "{h}h");
        }
        if h > 0 || m > 0 {
            let _ = write!(out, "{m}m");
        }
        unit(&mut out, nanos % 60_000_000_000, 1_000_000_000, 9, "s");
    }
    out
}

/// Writes a JSON string escaped as Go's `encoding/json` does.
pub fn write_str(out: &mut String, s: &str) {
    out.reserve(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Writes a float64 as a JSON number the way Go does; NaN and the infinities (which Go
/// refuses to encode) as the strings `"NaN"`, `"Infinity"` and `"-Infinity"`.
pub fn write_f64(out: &mut String, f: f64) {
    if !non_finite(out, f.is_nan(), f.is_infinite(), f < 0.0) {
        let abs = f.abs();
        if abs != 0.0 && !(1e-6..1e21).contains(&abs) {
            push_exponent(out, &format!("{f:e}"));
        } else {
            let _ = write!(out, "{f}");
        }
    }
}

/// Writes a float32 as Go does (its shortest 32-bit form); see [`write_f64`].
pub fn write_f32(out: &mut String, f: f32) {
    if !non_finite(out, f.is_nan(), f.is_infinite(), f < 0.0) {
        let abs = f.abs();
        if abs != 0.0 && !(1e-6..1e21).contains(&abs) {
            push_exponent(out, &format!("{f:e}"));
        } else {
            let _ = write!(out, "{f}");
        }
    }
}

fn non_finite(out: &mut String, nan: bool, infinite: bool, negative: bool) -> bool {
    if nan {
        out.push_str("\"NaN\"");
    } else if infinite && negative {
        out.push_str("\"-Infinity\"");
    } else if infinite {
        out.push_str("\"Infinity\"");
    } else {
        return false;
    }
    true
}

/// Rust's `1.5e21` / `1e-7` as Go writes them: `1.5e+21`, `1e-07` shortened to `1e-7`.
fn push_exponent(out: &mut String, rust: &str) {
    match rust.split_once('e') {
        Some((mantissa, exp)) if !exp.starts_with('-') => {
            let _ = write!(out, "{mantissa}e+{exp}");
        }
        _ => out.push_str(rust),
    }
}

/// Writes a JSON document as Go re-encodes it after decoding it into `any`: compact, object
/// keys sorted, every number as a float64.
pub fn write_go_json(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => write_f64(out, n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => write_str(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_go_json(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_str(out, k);
                out.push(':');
                write_go_json(out, v);
            }
            out.push('}');
        }
    }
}

/// A JSON parameter value as the text a SQL server parses: strings as they are, numbers as Go
/// prints a float64 (`42`, `1.5`), booleans as `true`/`false`, objects and arrays as compact
/// JSON. `None` for `null`.
pub fn param_text(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => {
            let mut out = String::new();
            match (n.as_i64(), n.as_u64()) {
                (Some(i), _) => {
                    let _ = write!(out, "{i}");
                }
                (None, Some(u)) => {
                    let _ = write!(out, "{u}");
                }
                _ => write_f64(&mut out, n.as_f64().unwrap_or(f64::NAN)),
            }
            Some(out)
        }
        Value::Array(_) | Value::Object(_) => Some(value.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn req(md: &[(&str, &str)]) -> InvokeRequest {
        InvokeRequest {
            operation: "exec".into(),
            metadata: md
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..InvokeRequest::default()
        }
    }

    #[test]
    fn requests() {
        let r = SqlRequest::parse(&req(&[("sql", "SELECT $1"), ("params", r#"[1,"a",null]"#)]))
            .unwrap();
        assert_eq!(r.sql, "SELECT $1");
        assert_eq!(r.params, vec![json!(1), json!("a"), json!(null)]);
        assert!(
            SqlRequest::parse(&req(&[("sql", "SELECT 1")]))
                .unwrap()
                .params
                .is_empty()
        );
        for md in [&[][..], &[("sql", "")][..], &[("SQL", "SELECT 1")][..]] {
            let err = SqlRequest::parse(&req(md)).unwrap_err();
            assert_eq!(err.to_string(), "required metadata not set: sql");
        }
        for bad in ["{\"a\":1}", "[1,", "7"] {
            let err = SqlRequest::parse(&req(&[("sql", "x"), ("params", bad)])).unwrap_err();
            assert!(
                err.to_string()
                    .starts_with("invalid metadata property params: failed to unserialize"),
                "{err}"
            );
        }
    }

    #[test]
    fn times_and_durations() {
        assert_eq!(unix_rfc3339_nano(0, 0), "1970-01-01T00:00:00Z");
        assert_eq!(
            unix_rfc3339_nano(1_714_566_645, 123_000_000),
            "2024-05-01T12:30:45.123Z"
        );
        assert_eq!(
            unix_rfc3339_nano(951_782_400, 1),
            "2000-02-29T00:00:00.000000001Z"
        );
        assert_eq!(unix_rfc3339_nano(-1, 0), "1969-12-31T23:59:59Z");
        assert_eq!(
            rfc3339_nano(UNIX_EPOCH - Duration::from_millis(1500)),
            "1969-12-31T23:59:58.5Z"
        );
        assert_eq!(civil_from_days(-719_528), (0, 1, 1));
        assert_eq!(go_duration(Duration::ZERO), "0s");
        assert_eq!(go_duration(Duration::from_nanos(850)), "850ns");
        assert_eq!(go_duration(Duration::from_nanos(1_500)), "1.5µs");
        assert_eq!(go_duration(Duration::from_micros(12_345)), "12.345ms");
        assert_eq!(go_duration(Duration::from_millis(1_500)), "1.5s");
        assert_eq!(go_duration(Duration::from_millis(123_500)), "2m3.5s");
        assert_eq!(go_duration(Duration::from_secs(3600)), "1h0m0s");
    }

    #[test]
    fn json_as_go_writes_it() {
        let w = |f: f64| {
            let mut s = String::new();
            write_f64(&mut s, f);
            s
        };
        assert_eq!(w(1.0), "1");
        assert_eq!(w(-2.5), "-2.5");
        assert_eq!(w(0.1), "0.1");
        assert_eq!(w(1e20), "100000000000000000000");
        assert_eq!(w(1e21), "1e+21");
        assert_eq!(w(1.5e-7), "1.5e-7");
        assert_eq!(w(f64::NAN), "\"NaN\"");
        assert_eq!(w(f64::NEG_INFINITY), "\"-Infinity\"");
        let mut s = String::new();
        write_f32(&mut s, 1.1);
        assert_eq!(s, "1.1");

        let mut s = String::new();
        write_str(&mut s, "a\"b\\<c>&\n\u{1}é");
        assert_eq!(s, r#""a\"b\\\u003cc\u003e\u0026\n\u0001é""#);

        let mut s = String::new();
        write_go_json(
            &mut s,
            &json!({"b": [1.0, 2.5, null], "a": {"y": true, "x": "s"}}),
        );
        assert_eq!(s, r#"{"a":{"x":"s","y":true},"b":[1,2.5,null]}"#);
    }

    #[test]
    fn parameter_texts() {
        assert_eq!(param_text(&json!(null)), None);
        assert_eq!(param_text(&json!("x")).as_deref(), Some("x"));
        assert_eq!(param_text(&json!(42)).as_deref(), Some("42"));
        assert_eq!(param_text(&json!(1e3)).as_deref(), Some("1000"));
        assert_eq!(param_text(&json!(1.5)).as_deref(), Some("1.5"));
        assert_eq!(param_text(&json!(true)).as_deref(), Some("true"));
        assert_eq!(param_text(&json!({"a": 1})).as_deref(), Some(r#"{"a":1}"#));
    }
}
