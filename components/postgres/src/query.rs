//! The state query API of `state.postgresql` v1: a [`Query`] translated into one SQL statement
//! over the JSONB `value` column.
//!
//! Everything the user supplies travels as a bound parameter; the SQL text is assembled only
//! from fixed fragments, the validated table name and parameter numbers. A dotted key
//! (`person.org`) becomes a `text[]` path parameter used with `#>` (`value #> $2`), so even
//! field names never reach the SQL text.
//!
//! The semantics are those of the in-process reference evaluator
//! ([`tandem_components::query::evaluate`]), so every store answers a query alike:
//!
//! - `EQ` / `IN`: JSONB equality (`value #> $p = $v::jsonb`, `= ANY($v::jsonb[])`): numbers
//!   compare numerically (`1` = `1.0`), everything else exactly and by type (`"1"` ≠ `1`).
//! - `NEQ`: `IS DISTINCT FROM`, so items lacking the field match, as in the evaluator.
//! - `GT`, `GTE`, `LT`, `LTE`: only between values of the same JSON type (an item whose field
//!   has another type, or lacks it, does not match): numbers numerically, booleans
//!   `false < true`, strings by code point (`COLLATE "C"`, independent of the database's
//!   collation). Against an array or object nothing matches. (Dapr's own implementation
//!   compares the fields' text, so `10 < 9`; this is deliberately not reproduced.)
//! - `sort`: per key, strings by code point, other values by JSONB order (numbers
//!   numerically); items lacking the key come last in ascending order and first in
//!   descending order; ties are broken by the key, byte-wise, so pages are stable.
//! - Only live (unexpired), JSON (not binary) rows whose key starts with the app's prefix are
//!   seen; the prefix is matched with `starts_with`, which has no wildcards to escape.
//! - Pages: `LIMIT n+1 OFFSET token`; the extra row tells whether another page exists, and the
//!   token (the next offset, as Dapr's) is returned only then.

use std::collections::HashMap;
use std::fmt::Write as _;

use serde_json::Value;
use tandem_components::query::{Filter, Query};
use tandem_components::{Error, Result};
use tokio_postgres::types::{ToSql, Type};

use crate::db::Param;

/// A bound value of a translated query.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum QueryParam {
    /// A `text` value (the key prefix, a string operand).
    Text(String),
    /// A `text[]` value (a JSON path).
    TextArray(Vec<String>),
    /// A JSON document as `text`, cast to `jsonb` in SQL.
    Json(String),
    /// A list of JSON documents as `text[]`, cast to `jsonb[]` in SQL.
    JsonArray(Vec<String>),
    /// A `bigint` (limit, offset).
    Int(i64),
}

impl QueryParam {
    /// The value with its declared type.
    pub(crate) fn as_param(&self) -> Param<'_> {
        match self {
            Self::Text(s) | Self::Json(s) => (s as &(dyn ToSql + Sync), Type::TEXT),
            Self::TextArray(v) | Self::JsonArray(v) => (v as &(dyn ToSql + Sync), Type::TEXT_ARRAY),
            Self::Int(n) => (n as &(dyn ToSql + Sync), Type::INT8),
        }
    }
}

/// A translated query: its SQL, parameters and paging.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct SqlQuery {
    /// `SELECT key, value::text, xmin::text FROM …`.
    pub(crate) sql: String,
    /// `$1`, `$2`, … in order.
    pub(crate) params: Vec<QueryParam>,
    /// Rows to return (0 = all).
    pub(crate) limit: usize,
    /// Rows skipped (from the token).
    pub(crate) offset: usize,
}

#[derive(Default)]
struct Builder {
    params: Vec<QueryParam>,
    paths: HashMap<String, usize>,
}

impl Builder {
    /// Adds a parameter, returning its number.
    fn push(&mut self, p: QueryParam) -> usize {
        self.params.push(p);
        self.params.len()
    }

    /// The parameter number of a dotted path (one parameter per distinct path).
    fn path(&mut self, key: &str) -> usize {
        if let Some(n) = self.paths.get(key) {
            return *n;
        }
        let n = self.push(QueryParam::TextArray(
            key.split('.').map(str::to_owned).collect(),
        ));
        self.paths.insert(key.to_owned(), n);
        n
    }

    fn json(&mut self, v: &Value) -> usize {
        self.push(QueryParam::Json(v.to_string()))
    }

    fn filter(&mut self, f: &Filter, out: &mut String) {
        match f {
            Filter::Eq(k, v) => {
                let (p, v) = (self.path(k), self.json(v));
                let _ = write!(out, "(value #> ${p}) = ${v}::jsonb");
            }
            Filter::Neq(k, v) => {
                let (p, v) = (self.path(k), self.json(v));
                let _ = write!(out, "(value #> ${p}) IS DISTINCT FROM ${v}::jsonb");
            }
            Filter::Gt(k, v) => self.compare(k, v, ">", out),
            Filter::Gte(k, v) => self.compare(k, v, ">=", out),
            Filter::Lt(k, v) => self.compare(k, v, "<", out),
            Filter::Lte(k, v) => self.compare(k, v, "<=", out),
            Filter::In(k, vs) => {
                let p = self.path(k);
                let vs = self.push(QueryParam::JsonArray(
                    vs.iter().map(Value::to_string).collect(),
                ));
                let _ = write!(out, "(value #> ${p}) = ANY(${vs}::jsonb[])");
            }
            Filter::And(fs) => self.group(fs, " AND ", out),
            Filter::Or(fs) => self.group(fs, " OR ", out),
        }
    }

    fn group(&mut self, fs: &[Filter], sep: &str, out: &mut String) {
        out.push('(');
        for (i, f) in fs.iter().enumerate() {
            if i > 0 {
                out.push_str(sep);
            }
            self.filter(f, out);
        }
        out.push(')');
    }

    fn compare(&mut self, k: &str, v: &Value, op: &str, out: &mut String) {
        let json_type = match v {
            Value::String(s) => {
                let p = self.path(k);
                let t = self.push(QueryParam::Text(s.clone()));
                let _ = write!(
                    out,
                    "(jsonb_typeof(value #> ${p}) = 'string' AND (value #>> ${p}) COLLATE \"C\" {op} ${t})"
                );
                return;
            }
            Value::Number(_) => "number",
            Value::Bool(_) => "boolean",
            Value::Null => "null",
            Value::Array(_) | Value::Object(_) => {
                out.push_str("FALSE");
                return;
            }
        };
        let p = self.path(k);
        let v = self.json(v);
        let _ = write!(
            out,
            "(jsonb_typeof(value #> ${p}) = '{json_type}' AND (value #> ${p}) {op} ${v}::jsonb)"
        );
    }
}

/// Translates `query` into SQL over the v1 table `table` (a validated identifier).
pub(crate) fn translate(query: &Query, table: &str) -> Result<SqlQuery> {
    let offset: usize = match &query.token {
        None => 0,
        Some(t) => t
            .trim()
            .parse()
            .map_err(|_| Error::InvalidRequest("invalid page token".into()))?,
    };
    let mut b = Builder::default();
    let prefix = b.push(QueryParam::Text(query.key_prefix.clone()));
    let mut sql = format!(
        "SELECT key, value::text, xmin::text FROM {table} WHERE starts_with(key, ${prefix}) \
         AND NOT isbinary AND (expiredate IS NULL OR expiredate > now())"
    );
    if let Some(filter) = &query.filter {
        sql.push_str(" AND ");
        b.filter(filter, &mut sql);
    }
    sql.push_str(" ORDER BY ");
    for s in &query.sort {
        let p = b.path(&s.key);
        let (dir, nulls) = if s.descending {
            ("DESC", "NULLS FIRST")
        } else {
            ("ASC", "NULLS LAST")
        };
        let _ = write!(
            sql,
            "(CASE WHEN jsonb_typeof(value #> ${p}) = 'string' THEN value #>> ${p} END) COLLATE \"C\" {dir} {nulls}, \
             (value #> ${p}) {dir} {nulls}, "
        );
    }
    sql.push_str("key COLLATE \"C\"");
    if query.limit > 0 {
        let fetch = i64::try_from(query.limit.saturating_add(1)).unwrap_or(i64::MAX);
        let n = b.push(QueryParam::Int(fetch));
        let _ = write!(sql, " LIMIT ${n}");
    }
    if offset > 0 {
        let n = b.push(QueryParam::Int(i64::try_from(offset).unwrap_or(i64::MAX)));
        let _ = write!(sql, " OFFSET ${n}");
    }
    Ok(SqlQuery {
        sql,
        params: b.params,
        limit: query.limit,
        offset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use QueryParam::*;

    fn parse(doc: &str) -> Query {
        let mut q = Query::parse(doc.as_bytes()).unwrap();
        q.key_prefix = "app||".into();
        q
    }

    fn path(p: &[&str]) -> QueryParam {
        TextArray(p.iter().map(|s| s.to_string()).collect())
    }

    const BASE: &str = "SELECT key, value::text, xmin::text FROM state WHERE starts_with(key, $1) \
                        AND NOT isbinary AND (expiredate IS NULL OR expiredate > now())";

    #[test]
    fn everything_unfiltered() {
        let q = translate(&parse("{}"), "state").unwrap();
        assert_eq!(q.sql, format!("{BASE} ORDER BY key COLLATE \"C\""));
        assert_eq!(q.params, vec![Text("app||".into())]);
        assert_eq!((q.limit, q.offset), (0, 0));
    }

    #[test]
    fn the_conformance_query() {
        let q = translate(
            &parse(
                r#"{"filter":{"AND":[{"EQ":{"state":"CA"}},{"IN":{"person.org":["A","B"]}}]},
                    "sort":[{"key":"person.id","order":"DESC"}],"page":{"limit":1,"token":"1"}}"#,
            ),
            "public.state",
        )
        .unwrap();
        assert_eq!(
            q.sql,
            "SELECT key, value::text, xmin::text FROM public.state WHERE starts_with(key, $1) \
             AND NOT isbinary AND (expiredate IS NULL OR expiredate > now()) AND \
             ((value #> $2) = $3::jsonb AND (value #> $4) = ANY($5::jsonb[])) ORDER BY \
             (CASE WHEN jsonb_typeof(value #> $6) = 'string' THEN value #>> $6 END) COLLATE \"C\" DESC NULLS FIRST, \
             (value #> $6) DESC NULLS FIRST, key COLLATE \"C\" LIMIT $7 OFFSET $8"
        );
        assert_eq!(
            q.params,
            vec![
                Text("app||".into()),
                path(&["state"]),
                Json("\"CA\"".into()),
                path(&["person", "org"]),
                JsonArray(vec!["\"A\"".into(), "\"B\"".into()]),
                path(&["person", "id"]),
                Int(2),
                Int(1),
            ]
        );
        assert_eq!((q.limit, q.offset), (1, 1));
    }

    #[test]
    fn comparisons_by_type_and_shared_paths() {
        let q = translate(
            &parse(
                r#"{"filter":{"OR":[{"GT":{"n":5}},{"LTE":{"value.s":"m"}},{"GTE":{"b":true}},
                    {"LT":{"n":[1]}},{"NEQ":{"x":null}}]},"sort":[{"key":"n"}]}"#,
            ),
            "state",
        )
        .unwrap();
        assert_eq!(
            q.sql,
            format!(
                "{BASE} AND ((jsonb_typeof(value #> $2) = 'number' AND (value #> $2) > $3::jsonb) OR \
                 (jsonb_typeof(value #> $4) = 'string' AND (value #>> $4) COLLATE \"C\" <= $5) OR \
                 (jsonb_typeof(value #> $6) = 'boolean' AND (value #> $6) >= $7::jsonb) OR FALSE OR \
                 (value #> $8) IS DISTINCT FROM $9::jsonb) ORDER BY \
                 (CASE WHEN jsonb_typeof(value #> $2) = 'string' THEN value #>> $2 END) COLLATE \"C\" ASC NULLS LAST, \
                 (value #> $2) ASC NULLS LAST, key COLLATE \"C\""
            )
        );
        assert_eq!(
            q.params,
            vec![
                Text("app||".into()),
                path(&["n"]),
                Json("5".into()),
                path(&["s"]),
                Text("m".into()),
                path(&["b"]),
                Json("true".into()),
                path(&["x"]),
                Json("null".into()),
            ]
        );
    }

    #[test]
    fn user_text_never_reaches_the_sql() {
        let evil = "x'); DROP TABLE state; --";
        let doc = serde_json::json!({
            "filter": {"EQ": {evil: evil}},
            "sort": [{"key": evil}],
        })
        .to_string();
        let mut query = Query::parse(doc.as_bytes()).unwrap();
        query.key_prefix = format!("{evil}%_||");
        let q = translate(&query, "state").unwrap();
        assert!(!q.sql.contains("DROP"), "{}", q.sql);
        assert!(!q.sql.contains('%'), "{}", q.sql);
        assert_eq!(q.params[0], Text(format!("{evil}%_||")));
    }

    #[test]
    fn bad_tokens_are_invalid_requests() {
        let mut query = parse(r#"{"page":{"limit":2}}"#);
        query.token = Some("next".into());
        assert!(matches!(
            translate(&query, "state"),
            Err(Error::InvalidRequest(_))
        ));
    }
}
