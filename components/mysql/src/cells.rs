//! Values between JSON and MySQL for `bindings.mysql`.
//!
//! Parameters: `null` is `NULL`, a boolean `1`/`0`, an integer a 64-bit integer, any other
//! number a double, a string its bytes, and an object or array its JSON text.
//!
//! Result rows are JSON objects keyed by column name (keys sorted, a repeated name keeps the
//! last column), with the values Dapr's binding answers (Go's MySQL driver with
//! `parseTime=true`, its values encoded by `encoding/json`):
//!
//! | Column type | JSON |
//! |---|---|
//! | `TINYINT` … `BIGINT` (`BOOLEAN` included), `YEAR` | number |
//! | `FLOAT` | number; in a nullable column widened to double as Go does (`1.100000023841858`) |
//! | `DOUBLE` | number |
//! | `DECIMAL` | string (`"12.50"`) |
//! | `CHAR`, `VARCHAR`, `TEXT`, `ENUM`, `SET`, `JSON` | string |
//! | `TIME` | string (`"10:30:00"`, `"-838:59:59.5"`) |
//! | `DATE`, `DATETIME`, `TIMESTAMP` | RFC 3339 (`"2024-05-01T10:30:00.25Z"`), read as UTC; a zero date is `"0001-01-01T00:00:00Z"` |
//! | `BINARY`, `VARBINARY`, `BLOB`, `BIT`, `GEOMETRY` (binary character set) | base64 string |
//!
//! `NULL` leaves the key out of the row's object, except in binary columns and in columns of
//! no type (`SELECT NULL`), where it is `null` — as in Dapr. MySQL's `JSON` type comes back as
//! its text in a string (Dapr's binding answers base64 there); MariaDB's `JSON` is `LONGTEXT`
//! and is a string in both.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use mysql_async::consts::{ColumnFlags, ColumnType};
use mysql_async::{Column, Value};
use serde_json::Value as Json;
use tandem_components::sql::{civil_from_days, write_datetime, write_f32, write_f64, write_str};

/// The character set number of binary strings.
const BINARY_CHARSET: u16 = 63;

/// A JSON parameter as a MySQL value.
pub(crate) fn param(value: &Json) -> Value {
    match value {
        Json::Null => Value::NULL,
        Json::Bool(b) => Value::Int(i64::from(*b)),
        Json::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::Int(i),
            (None, Some(u)) => Value::UInt(u),
            _ => Value::Double(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => Value::Bytes(s.as_bytes().to_vec()),
        Json::Array(_) | Json::Object(_) => Value::Bytes(value.to_string().into_bytes()),
    }
}

/// Appends one row as a JSON object to `out`.
pub(crate) fn write_row(
    out: &mut String,
    columns: &[Column],
    values: &[Value],
) -> Result<(), String> {
    let mut fields: BTreeMap<String, String> = BTreeMap::new();
    for (column, value) in columns.iter().zip(values) {
        let name = column.name_str().into_owned();
        let mut cell = String::new();
        if write_cell(&mut cell, column, value)? {
            fields.insert(name, cell);
        } else {
            fields.remove(&name);
        }
    }
    out.push('{');
    for (i, (name, cell)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_str(out, name);
        out.push(':');
        out.push_str(cell);
    }
    out.push('}');
    Ok(())
}

/// Whether the column holds bytes rather than text.
fn is_binary(column: &Column) -> bool {
    use ColumnType::*;
    matches!(
        column.column_type(),
        MYSQL_TYPE_BIT
            | MYSQL_TYPE_TINY_BLOB
            | MYSQL_TYPE_MEDIUM_BLOB
            | MYSQL_TYPE_LONG_BLOB
            | MYSQL_TYPE_BLOB
            | MYSQL_TYPE_VAR_STRING
            | MYSQL_TYPE_STRING
            | MYSQL_TYPE_GEOMETRY
    ) && column.character_set() == BINARY_CHARSET
}

/// The text of a value the server sent in text form.
fn text<'a>(value: &'a Value, column: &Column) -> Result<&'a str, String> {
    match value {
        Value::Bytes(b) => std::str::from_utf8(b).map_err(|_| bad(column)),
        _ => Err(bad(column)),
    }
}

fn bad(column: &Column) -> String {
    format!(
        "unexpected value in column {} of type {:?}",
        column.name_str(),
        column.column_type()
    )
}

/// Writes one value; `false` when the key is to be left out (a `NULL` Go scans as absent).
fn write_cell(out: &mut String, column: &Column, value: &Value) -> Result<bool, String> {
    use ColumnType::*;
    let ty = column.column_type();
    if matches!(value, Value::NULL) {
        if is_binary(column) || ty == MYSQL_TYPE_NULL {
            out.push_str("null");
            return Ok(true);
        }
        return Ok(false);
    }
    let not_null = column.flags().contains(ColumnFlags::NOT_NULL_FLAG);
    match ty {
        MYSQL_TYPE_TINY | MYSQL_TYPE_SHORT | MYSQL_TYPE_YEAR | MYSQL_TYPE_INT24
        | MYSQL_TYPE_LONG | MYSQL_TYPE_LONGLONG => match value {
            Value::Int(i) => {
                let _ = write!(out, "{i}");
            }
            Value::UInt(u) => {
                let _ = write!(out, "{u}");
            }
            other => {
                let t = text(other, column)?;
                if t.parse::<i64>().is_err() && t.parse::<u64>().is_err() {
                    return Err(bad(column));
                }
                out.push_str(t);
            }
        },
        MYSQL_TYPE_FLOAT => {
            let f = match value {
                Value::Float(f) => *f,
                Value::Double(d) => *d as f32,
                other => text(other, column)?
                    .parse::<f32>()
                    .map_err(|_| bad(column))?,
            };
            if not_null {
                write_f32(out, f);
            } else {
                write_f64(out, f64::from(f));
            }
        }
        MYSQL_TYPE_DOUBLE => {
            let d = match value {
                Value::Double(d) => *d,
                Value::Float(f) => f64::from(*f),
                other => text(other, column)?
                    .parse::<f64>()
                    .map_err(|_| bad(column))?,
            };
            write_f64(out, d);
        }
        MYSQL_TYPE_DATE
        | MYSQL_TYPE_NEWDATE
        | MYSQL_TYPE_TIMESTAMP
        | MYSQL_TYPE_DATETIME
        | MYSQL_TYPE_TIMESTAMP2
        | MYSQL_TYPE_DATETIME2 => {
            let parts = match value {
                Value::Date(y, mo, d, h, mi, s, us) => (
                    i64::from(*y),
                    u32::from(*mo),
                    u32::from(*d),
                    (u32::from(*h), u32::from(*mi), u32::from(*s)),
                    *us,
                ),
                other => parse_datetime(text(other, column)?).ok_or_else(|| bad(column))?,
            };
            write_time(out, parts);
        }
        MYSQL_TYPE_TIME | MYSQL_TYPE_TIME2 => match value {
            Value::Time(negative, days, h, m, s, us) => {
                let hours = u64::from(*days) * 24 + u64::from(*h);
                let mut t = format!(
                    "{}{hours:02}:{m:02}:{s:02}",
                    if *negative { "-" } else { "" }
                );
                let decimals = usize::from(column.decimals());
                if (1..=6).contains(&decimals) {
                    let digits = format!("{us:06}");
                    t.push('.');
                    t.push_str(&digits[..decimals]);
                }
                write_str(out, &t);
            }
            other => write_str(out, text(other, column)?),
        },
        _ if is_binary(column) => match value {
            Value::Bytes(b) => {
                out.push('"');
                out.push_str(&BASE64.encode(b));
                out.push('"');
            }
            _ => return Err(bad(column)),
        },
        _ => match value {
            Value::Bytes(b) => write_str(out, &String::from_utf8_lossy(b)),
            Value::Int(i) => write_str(out, &i.to_string()),
            Value::UInt(u) => write_str(out, &u.to_string()),
            Value::Double(d) => {
                let mut s = String::new();
                write_f64(&mut s, *d);
                write_str(out, &s);
            }
            _ => return Err(bad(column)),
        },
    }
    Ok(true)
}

type DateParts = (i64, u32, u32, (u32, u32, u32), u32);

/// `YYYY-MM-DD[ HH:MM:SS[.ffffff]]` as the server prints it; the zero date is Go's zero time.
fn parse_datetime(t: &str) -> Option<DateParts> {
    let num = |s: &str| s.parse::<u32>().ok();
    let (date, time) = t.split_once(' ').unwrap_or((t, "00:00:00"));
    let mut d = date.splitn(3, '-');
    let (y, mo, day) = (num(d.next()?)?, num(d.next()?)?, num(d.next()?)?);
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut h = hms.splitn(3, ':');
    let (hh, mi, s) = (num(h.next()?)?, num(h.next()?)?, num(h.next()?)?);
    let micros = if frac.is_empty() {
        0
    } else {
        num(&format!("{frac:0<6}")[..6])?
    };
    Some((i64::from(y), mo, day, (hh, mi, s), micros))
}

/// A date and time as RFC 3339 in UTC; the zero date as Go's zero time.
fn write_time(out: &mut String, (y, mo, d, hms, micros): DateParts) {
    out.push('"');
    if y == 0 && mo == 0 && d == 0 {
        // Go's driver reads the zero date (whatever its time of day) as the zero time.
        write_datetime(out, civil_from_days(-719_162), (0, 0, 0), 0);
    } else {
        write_datetime(out, (y, mo, d), hms, micros * 1000);
    }
    out.push_str("Z\"");
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn params() {
        assert_eq!(param(&json!(null)), Value::NULL);
        assert_eq!(param(&json!(true)), Value::Int(1));
        assert_eq!(param(&json!(-3)), Value::Int(-3));
        assert_eq!(param(&json!(u64::MAX)), Value::UInt(u64::MAX));
        assert_eq!(param(&json!(1.5)), Value::Double(1.5));
        assert_eq!(param(&json!("x")), Value::Bytes(b"x".to_vec()));
        assert_eq!(param(&json!([1])), Value::Bytes(b"[1]".to_vec()));
    }

    #[test]
    fn datetimes() {
        assert_eq!(
            parse_datetime("2024-05-01 10:30:00.25"),
            Some((2024, 5, 1, (10, 30, 0), 250_000))
        );
        assert_eq!(
            parse_datetime("2024-05-01"),
            Some((2024, 5, 1, (0, 0, 0), 0))
        );
        assert_eq!(parse_datetime("nope"), None);
        let mut out = String::new();
        write_time(&mut out, (2024, 5, 1, (10, 30, 0), 250_000));
        assert_eq!(out, "\"2024-05-01T10:30:00.25Z\"");
        let mut out = String::new();
        write_time(&mut out, (0, 0, 0, (0, 0, 0), 0));
        assert_eq!(out, "\"0001-01-01T00:00:00Z\"");
    }
}
