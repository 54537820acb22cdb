//! Values between JSON and PostgreSQL for `bindings.postgresql`.
//!
//! Parameters go to the server in text format, so the server parses each one as the type it
//! inferred for its placeholder: a JSON string is sent as it is (`"42"` binds to an `integer`,
//! `"2024-05-01T10:00:00Z"` to a `timestamptz`, `"{\"a\":1}"` to a `jsonb`), numbers and
//! booleans as their text, objects as JSON text, and arrays as an array literal when the
//! placeholder is an array (`[1,2]` → `{"1","2"}`), otherwise as JSON text. `null` is SQL
//! `NULL`.
//!
//! Result cells arrive in binary format and are written as the JSON that Dapr's binding
//! (pgx's values encoded by Go's `encoding/json`) answers:
//!
//! | Column type | JSON |
//! |---|---|
//! | `NULL` | `null` |
//! | `boolean` | `true` / `false` |
//! | `smallint`, `integer`, `bigint`, `oid`, `xid`, `cid`, `xid8`, `reg*` | number |
//! | `real`, `double precision` | number (Go's shortest form; NaN and ±Infinity as the strings `"NaN"`, `"Infinity"`, `"-Infinity"`) |
//! | `numeric` | number with the column's scale (`12.50`); NaN and ±Infinity as strings |
//! | `money` | string with two decimals (`"12.34"`, no currency symbol) |
//! | `text`, `varchar`, `char(n)`, `name`, enums, `jsonpath` | string |
//! | `"char"` | the byte as a number (pgx reads it as a rune) |
//! | `bytea`, `xml`, `macaddr`, `macaddr8` | base64 string (Go encodes byte slices so) |
//! | `uuid` | array of its 16 bytes as numbers (pgx hands a `[16]byte` to Go's encoder) |
//! | `date` | `"2024-05-01T00:00:00Z"` |
//! | `timestamp`, `timestamptz` | RFC 3339 in UTC with up to 6 fractional digits (`"2024-05-01T10:30:00.5Z"`) |
//! | `date`/`timestamp`/`timestamptz` `infinity` | `"infinity"` / `"-infinity"` (Dapr answers `1` / `-1`) |
//! | `time` | `{"Microseconds":…,"Valid":true}` |
//! | `timetz` | string (`"10:30:00+02"`) |
//! | `interval` | `{"Microseconds":…,"Days":…,"Months":…,"Valid":true}` |
//! | `json`, `jsonb` | the document itself, keys sorted, numbers as float64 |
//! | `inet`, `cidr` | string with the prefix length (`"10.0.0.1/32"`) |
//! | `bit`, `varbit` | `{"Bytes":"<base64>","Len":…,"Valid":true}` |
//! | `point` | string `"(x,y)"` |
//! | arrays | JSON arrays (nested for several dimensions) of the element values |
//! | records and composite types | arrays of the field values |
//! | domains | as their base type |
//! | anything else | its binary form as a string when that is printable text, else base64 — cast it (`::text`) for a defined answer |

use std::error::Error as StdError;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::BytesMut;
use serde_json::Value;
use tandem_components::sql::{
    civil_from_days, param_text, write_datetime, write_f32, write_f64, write_go_json, write_str,
};
use tokio_postgres::types::{Format, FromSql, IsNull, Kind, ToSql, Type, to_sql_checked};

/// Days from 1970-01-01 to PostgreSQL's epoch, 2000-01-01.
const PG_EPOCH_DAYS: i64 = 10_957;

/// A parameter sent in text format, whatever the placeholder's type.
#[derive(Debug)]
pub(crate) struct TextParam(Option<String>);

impl TextParam {
    /// The text of a JSON parameter for a placeholder of type `ty` (`None` when the type is
    /// not known).
    pub(crate) fn new(value: &Value, ty: Option<&Type>) -> Self {
        match (value, ty.map(Type::kind)) {
            (Value::Array(items), Some(Kind::Array(_))) => {
                let mut out = String::new();
                array_literal(&mut out, items);
                Self(Some(out))
            }
            _ => Self(param_text(value)),
        }
    }
}

impl ToSql for TextParam {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        match &self.0 {
            None => Ok(IsNull::Yes),
            Some(text) => {
                out.extend_from_slice(text.as_bytes());
                Ok(IsNull::No)
            }
        }
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    fn encode_format(&self, _ty: &Type) -> Format {
        Format::Text
    }

    to_sql_checked!();
}

/// A PostgreSQL array literal: `{"1","two",NULL,{"3"}}`.
fn array_literal(out: &mut String, items: &[Value]) {
    out.push('{');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match item {
            Value::Null => out.push_str("NULL"),
            Value::Array(inner) => array_literal(out, inner),
            other => {
                out.push('"');
                for c in param_text(other).unwrap_or_default().chars() {
                    if c == '"' || c == '\\' {
                        out.push('\\');
                    }
                    out.push(c);
                }
                out.push('"');
            }
        }
    }
    out.push('}');
}

/// A result cell's bytes, whatever its type.
pub(crate) struct RawCell<'a>(pub(crate) &'a [u8]);

impl<'a> FromSql<'a> for RawCell<'a> {
    fn from_sql(_ty: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn StdError + Sync + Send>> {
        Ok(Self(raw))
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }
}

/// A cell that does not hold what its type promises.
fn malformed(ty: &Type) -> String {
    format!("malformed {} value from the server", ty.name())
}

/// Reads `N` bytes at `at`.
fn take<const N: usize>(raw: &[u8], at: usize, ty: &Type) -> Result<[u8; N], String> {
    raw.get(at..at + N)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| malformed(ty))
}

/// Writes one cell (binary format) as JSON; `None` is SQL `NULL`.
pub(crate) fn write_cell(out: &mut String, ty: &Type, raw: Option<&[u8]>) -> Result<(), String> {
    let Some(raw) = raw else {
        out.push_str("null");
        return Ok(());
    };
    let int = |n: i64, out: &mut String| {
        let _ = write!(out, "{n}");
    };
    match *ty {
        Type::BOOL => out.push_str(if take::<1>(raw, 0, ty)?[0] != 0 {
            "true"
        } else {
            "false"
        }),
        Type::INT2 => int(i16::from_be_bytes(take(raw, 0, ty)?).into(), out),
        Type::INT4 => int(i32::from_be_bytes(take(raw, 0, ty)?).into(), out),
        Type::INT8 => int(i64::from_be_bytes(take(raw, 0, ty)?), out),
        Type::OID
        | Type::XID
        | Type::CID
        | Type::REGPROC
        | Type::REGPROCEDURE
        | Type::REGOPER
        | Type::REGOPERATOR
        | Type::REGCLASS
        | Type::REGTYPE
        | Type::REGCONFIG
        | Type::REGDICTIONARY
        | Type::REGNAMESPACE
        | Type::REGROLE
        | Type::REGCOLLATION => int(u32::from_be_bytes(take(raw, 0, ty)?).into(), out),
        Type::XID8 => {
            let _ = write!(out, "{}", u64::from_be_bytes(take(raw, 0, ty)?));
        }
        Type::FLOAT4 => write_f32(out, f32::from_be_bytes(take(raw, 0, ty)?)),
        Type::FLOAT8 => write_f64(out, f64::from_be_bytes(take(raw, 0, ty)?)),
        Type::NUMERIC => write_numeric(out, raw, ty)?,
        Type::MONEY => {
            let cents = i64::from_be_bytes(take(raw, 0, ty)?);
            let sign = if cents < 0 { "-" } else { "" };
            let abs = cents.unsigned_abs();
            let _ = write!(out, "\"{sign}{}.{:02}\"", abs / 100, abs % 100);
        }
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
            write_str(out, &String::from_utf8_lossy(raw));
        }
        Type::JSONPATH => write_str(out, &String::from_utf8_lossy(raw.get(1..).unwrap_or(raw))),
        Type::CHAR => int(take::<1>(raw, 0, ty)?[0].into(), out),
        Type::BYTEA | Type::XML | Type::MACADDR | Type::MACADDR8 => {
            out.push('"');
            out.push_str(&BASE64.encode(raw));
            out.push('"');
        }
        Type::UUID => {
            let bytes: [u8; 16] = take(raw, 0, ty)?;
            out.push('[');
            for (i, b) in bytes.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{b}");
            }
            out.push(']');
        }
        Type::DATE => match i32::from_be_bytes(take(raw, 0, ty)?) {
            i32::MAX => out.push_str("\"infinity\""),
            i32::MIN => out.push_str("\"-infinity\""),
            days => {
                out.push('"');
                let date = civil_from_days(PG_EPOCH_DAYS + i64::from(days));
                write_datetime(out, date, (0, 0, 0), 0);
                out.push_str("Z\"");
            }
        },
        Type::TIMESTAMP | Type::TIMESTAMPTZ => match i64::from_be_bytes(take(raw, 0, ty)?) {
            i64::MAX => out.push_str("\"infinity\""),
            i64::MIN => out.push_str("\"-infinity\""),
            micros => {
                let secs = micros.div_euclid(1_000_000);
                let frac = micros.rem_euclid(1_000_000) as u32;
                let days = secs.div_euclid(86_400);
                let in_day = secs.rem_euclid(86_400) as u32;
                out.push('"');
                write_datetime(
                    out,
                    civil_from_days(PG_EPOCH_DAYS + days),
                    (in_day / 3600, in_day / 60 % 60, in_day % 60),
                    frac * 1000,
                );
                out.push_str("Z\"");
            }
        },
        Type::TIME => {
            let micros = i64::from_be_bytes(take(raw, 0, ty)?);
            let _ = write!(out, "{{\"Microseconds\":{micros},\"Valid\":true}}");
        }
        Type::TIMETZ => {
            let micros = i64::from_be_bytes(take(raw, 0, ty)?);
            // The zone is stored in seconds west of UTC.
            let west = i32::from_be_bytes(take(raw, 8, ty)?);
            write_str(out, &timetz_text(micros, west));
        }
        Type::INTERVAL => {
            let micros = i64::from_be_bytes(take(raw, 0, ty)?);
            let days = i32::from_be_bytes(take(raw, 8, ty)?);
            let months = i32::from_be_bytes(take(raw, 12, ty)?);
            let _ = write!(
                out,
                "{{\"Microseconds\":{micros},\"Days\":{days},\"Months\":{months},\"Valid\":true}}"
            );
        }
        Type::JSON | Type::JSONB => {
            let text = if *ty == Type::JSONB {
                raw.get(1..).ok_or_else(|| malformed(ty))?
            } else {
                raw
            };
            let doc: Value = serde_json::from_slice(text).map_err(|_| malformed(ty))?;
            write_go_json(out, &doc);
        }
        Type::INET | Type::CIDR => write_str(out, &inet_text(raw, ty)?),
        Type::BIT | Type::VARBIT => {
            let len = i32::from_be_bytes(take(raw, 0, ty)?);
            let _ = write!(
                out,
                "{{\"Bytes\":\"{}\",\"Len\":{len},\"Valid\":true}}",
                BASE64.encode(&raw[4..])
            );
        }
        Type::POINT => {
            let x = f64::from_be_bytes(take(raw, 0, ty)?);
            let y = f64::from_be_bytes(take(raw, 8, ty)?);
            let (mut xs, mut ys) = (String::new(), String::new());
            write_f64(&mut xs, x);
            write_f64(&mut ys, y);
            write_str(out, &format!("({xs},{ys})"));
        }
        Type::RECORD => write_record(out, raw, ty, None)?,
        _ => match ty.kind() {
            Kind::Array(element) => write_array(out, raw, ty, element)?,
            Kind::Domain(base) => write_cell(out, base, Some(raw))?,
            Kind::Enum(_) => write_str(out, &String::from_utf8_lossy(raw)),
            Kind::Composite(fields) => {
                let types: Vec<Type> = fields.iter().map(|f| f.type_().clone()).collect();
                write_record(out, raw, ty, Some(&types))?;
            }
            _ => match std::str::from_utf8(raw) {
                Ok(text) if !text.chars().any(|c| c.is_control() && !c.is_whitespace()) => {
                    write_str(out, text);
                }
                _ => {
                    out.push('"');
                    out.push_str(&BASE64.encode(raw));
                    out.push('"');
                }
            },
        },
    }
    Ok(())
}

/// `numeric` in binary: digit count, weight (of the first base-10000 digit), sign, display
/// scale, then the base-10000 digits. Written with exactly the scale's fractional digits.
fn write_numeric(out: &mut String, raw: &[u8], ty: &Type) -> Result<(), String> {
    let ndigits = usize::from(u16::from_be_bytes(take(raw, 0, ty)?));
    let weight = i64::from(i16::from_be_bytes(take(raw, 2, ty)?));
    let sign = u16::from_be_bytes(take(raw, 4, ty)?);
    let dscale = usize::from(u16::from_be_bytes(take(raw, 6, ty)?));
    match sign {
        0xC000 => {
            out.push_str("\"NaN\"");
            return Ok(());
        }
        0xD000 => {
            out.push_str("\"Infinity\"");
            return Ok(());
        }
        0xF000 => {
            out.push_str("\"-Infinity\"");
            return Ok(());
        }
        _ => {}
    }
    let mut digits = Vec::with_capacity(ndigits);
    for i in 0..ndigits {
        digits.push(u16::from_be_bytes(take(raw, 8 + 2 * i, ty)?));
    }
    if digits.is_empty() {
        // Zero, whatever its scale (as pgx writes it).
        out.push('0');
        return Ok(());
    }
    let digit = |i: i64| -> u16 {
        usize::try_from(i)
            .ok()
            .and_then(|i| digits.get(i).copied())
            .unwrap_or(0)
    };
    if sign == 0x4000 {
        out.push('-');
    }
    if weight < 0 {
        out.push('0');
    } else {
        for i in 0..=weight {
            if i == 0 {
                let _ = write!(out, "{}", digit(i));
            } else {
                let _ = write!(out, "{:04}", digit(i));
            }
        }
    }
    if dscale > 0 {
        let mut frac = String::with_capacity(dscale + 4);
        let mut i = weight + 1;
        while frac.len() < dscale {
            let _ = write!(frac, "{:04}", digit(i));
            i += 1;
        }
        frac.truncate(dscale);
        out.push('.');
        out.push_str(&frac);
    }
    Ok(())
}

/// `timetz` as PostgreSQL prints it: `10:30:00.5+02`, `08:00:00-03:30`.
fn timetz_text(micros: i64, west: i32) -> String {
    let secs = micros.div_euclid(1_000_000);
    let frac = micros.rem_euclid(1_000_000) as u32;
    let mut out = format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
    tandem_components::sql::write_fraction(&mut out, frac, 6);
    let east = -west;
    let abs = east.unsigned_abs();
    let _ = write!(out, "{}{:02}", if east < 0 { '-' } else { '+' }, abs / 3600);
    if !abs.is_multiple_of(3600) {
        let _ = write!(out, ":{:02}", abs / 60 % 60);
        if !abs.is_multiple_of(60) {
            let _ = write!(out, ":{:02}", abs % 60);
        }
    }
    out
}

/// `inet` / `cidr` in binary: family, prefix bits, is-cidr flag, address length, address.
fn inet_text(raw: &[u8], ty: &Type) -> Result<String, String> {
    let [family, bits, _, len] = take::<4>(raw, 0, ty)?;
    let addr: IpAddr = match (family, len) {
        (2, 4) => Ipv4Addr::from(take::<4>(raw, 4, ty)?).into(),
        (3, 16) => Ipv6Addr::from(take::<16>(raw, 4, ty)?).into(),
        _ => return Err(malformed(ty)),
    };
    Ok(format!("{addr}/{bits}"))
}

/// An array in binary: dimensions, a null flag, the element type, each dimension's length
/// and lower bound, then the elements (length-prefixed, -1 for `NULL`).
fn write_array(out: &mut String, raw: &[u8], ty: &Type, element: &Type) -> Result<(), String> {
    let ndim = usize::try_from(i32::from_be_bytes(take(raw, 0, ty)?)).map_err(|_| malformed(ty))?;
    if ndim == 0 {
        out.push_str("[]");
        return Ok(());
    }
    let mut dims = Vec::with_capacity(ndim);
    for d in 0..ndim {
        let len = i32::from_be_bytes(take(raw, 12 + 8 * d, ty)?);
        dims.push(usize::try_from(len).map_err(|_| malformed(ty))?);
    }
    let mut at = 12 + 8 * ndim;
    write_dimension(out, raw, ty, element, &dims, &mut at)
}

fn write_dimension(
    out: &mut String,
    raw: &[u8],
    ty: &Type,
    element: &Type,
    dims: &[usize],
    at: &mut usize,
) -> Result<(), String> {
    out.push('[');
    for i in 0..dims[0] {
        if i > 0 {
            out.push(',');
        }
        if dims.len() > 1 {
            write_dimension(out, raw, ty, element, &dims[1..], at)?;
        } else {
            let cell = next_value(raw, ty, at)?;
            write_cell(out, element, cell)?;
        }
    }
    out.push(']');
    Ok(())
}

/// A length-prefixed value at `*at` (`None` for `NULL`), advancing `*at`.
fn next_value<'a>(raw: &'a [u8], ty: &Type, at: &mut usize) -> Result<Option<&'a [u8]>, String> {
    let len = i32::from_be_bytes(take(raw, *at, ty)?);
    *at += 4;
    if len < 0 {
        return Ok(None);
    }
    let len = len as usize;
    let value = raw.get(*at..*at + len).ok_or_else(|| malformed(ty))?;
    *at += len;
    Ok(Some(value))
}

/// A record or composite value in binary: field count, then per field its type and value.
/// Fields of types the server names only by number are written as unknown types.
fn write_record(
    out: &mut String,
    raw: &[u8],
    ty: &Type,
    types: Option<&[Type]>,
) -> Result<(), String> {
    let count =
        usize::try_from(i32::from_be_bytes(take(raw, 0, ty)?)).map_err(|_| malformed(ty))?;
    let mut at = 4;
    out.push('[');
    for i in 0..count {
        if i > 0 {
            out.push(',');
        }
        let oid = u32::from_be_bytes(take(raw, at, ty)?);
        at += 4;
        let field = types
            .and_then(|t| t.get(i).cloned())
            .or_else(|| Type::from_oid(oid))
            .unwrap_or_else(|| Type::new(format!("oid {oid}"), oid, Kind::Simple, String::new()));
        let cell = next_value(raw, ty, &mut at)?;
        write_cell(out, &field, cell)?;
    }
    out.push(']');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cell(ty: &Type, raw: &[u8]) -> String {
        let mut out = String::new();
        write_cell(&mut out, ty, Some(raw)).unwrap();
        out
    }

    fn numeric(ndigits: u16, weight: i16, sign: u16, dscale: u16, digits: &[u16]) -> Vec<u8> {
        let mut raw = Vec::new();
        for v in [ndigits, weight as u16, sign, dscale] {
            raw.extend_from_slice(&v.to_be_bytes());
        }
        for d in digits {
            raw.extend_from_slice(&d.to_be_bytes());
        }
        raw
    }

    #[test]
    fn numerics_keep_their_scale() {
        assert_eq!(
            cell(&Type::NUMERIC, &numeric(2, 0, 0, 2, &[12, 5000])),
            "12.50"
        );
        assert_eq!(cell(&Type::NUMERIC, &numeric(1, 1, 0, 0, &[1])), "10000");
        assert_eq!(
            cell(&Type::NUMERIC, &numeric(1, -1, 0x4000, 3, &[50])),
            "-0.005"
        );
        assert_eq!(cell(&Type::NUMERIC, &numeric(0, 0, 0, 2, &[])), "0");
        assert_eq!(
            cell(&Type::NUMERIC, &numeric(3, 1, 0, 1, &[1, 2345, 6000])),
            "12345.6"
        );
        assert_eq!(
            cell(&Type::NUMERIC, &numeric(0, 0, 0xC000, 0, &[])),
            "\"NaN\""
        );
    }

    #[test]
    fn times() {
        let ts = |micros: i64| cell(&Type::TIMESTAMPTZ, &micros.to_be_bytes());
        assert_eq!(ts(0), "\"2000-01-01T00:00:00Z\"");
        assert_eq!(ts(-1), "\"1999-12-31T23:59:59.999999Z\"");
        assert_eq!(ts(768_148_245_500_000), "\"2024-05-04T14:30:45.5Z\"");
        assert_eq!(ts(i64::MAX), "\"infinity\"");
        assert_eq!(
            cell(&Type::DATE, &(-1i32).to_be_bytes()),
            "\"1999-12-31T00:00:00Z\""
        );
        assert_eq!(timetz_text(37_800_500_000, -7200), "10:30:00.5+02");
        assert_eq!(timetz_text(28_800_000_000, 12_600), "08:00:00-03:30");
    }

    #[test]
    fn arrays_and_params() {
        // int4[] {{1,NULL},{3,4}}
        let mut raw = Vec::new();
        for v in [2i32, 1, 23, 2, 1, 2, 1] {
            raw.extend_from_slice(&v.to_be_bytes());
        }
        for v in [Some(1i32), None, Some(3), Some(4)] {
            match v {
                Some(n) => {
                    raw.extend_from_slice(&4i32.to_be_bytes());
                    raw.extend_from_slice(&n.to_be_bytes());
                }
                None => raw.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        assert_eq!(cell(&Type::INT4_ARRAY, &raw), "[[1,null],[3,4]]");
        assert_eq!(cell(&Type::INT4_ARRAY, &[0; 12]), "[]");

        let text = |v: Value, ty: Option<&Type>| TextParam::new(&v, ty).0;
        assert_eq!(
            text(json!([1, "a\"b", null, [2]]), Some(&Type::TEXT_ARRAY)).as_deref(),
            Some(r#"{"1","a\"b",NULL,{"2"}}"#)
        );
        assert_eq!(
            text(json!([1, 2]), Some(&Type::JSONB)).as_deref(),
            Some("[1,2]")
        );
        assert_eq!(text(json!([1, 2]), None).as_deref(), Some("[1,2]"));
        assert_eq!(text(json!(null), Some(&Type::INT4)), None);
    }

    #[test]
    fn other_types() {
        assert_eq!(
            cell(&Type::UUID, &[0; 16]),
            format!("[{}]", ["0"; 16].join(","))
        );
        assert_eq!(cell(&Type::BYTEA, b"hi"), "\"aGk=\"");
        assert_eq!(
            cell(&Type::INET, &[2, 32, 0, 4, 10, 0, 0, 1]),
            "\"10.0.0.1/32\""
        );
        assert_eq!(
            cell(&Type::JSONB, b"\x01{\"b\": 1.0, \"a\": [true]}"),
            r#"{"a":[true],"b":1}"#
        );
        assert_eq!(cell(&Type::MONEY, &(-1234i64).to_be_bytes()), "\"-12.34\"");
        let mut interval = 1_500_000i64.to_be_bytes().to_vec();
        interval.extend_from_slice(&2i32.to_be_bytes());
        interval.extend_from_slice(&3i32.to_be_bytes());
        assert_eq!(
            cell(&Type::INTERVAL, &interval),
            r#"{"Microseconds":1500000,"Days":2,"Months":3,"Valid":true}"#
        );
        let mut out = String::new();
        write_cell(&mut out, &Type::TEXT, None).unwrap();
        assert_eq!(out, "null");
        assert!(write_cell(&mut String::new(), &Type::INT4, Some(&[1])).is_err());
    }
}
