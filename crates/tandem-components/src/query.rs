//! The state query API (`QUERY_API`): the query document, and an evaluator for stores that
//! filter in process.
//!
//! A query is `{"filter": …, "sort": [{"key", "order"}], "page": {"limit", "token"}}` with
//! filters `EQ`, `NEQ`, `GT`, `GTE`, `LT`, `LTE`, `IN`, `AND`, `OR`. Keys are dotted paths into
//! the stored JSON value (`person.org`); a leading `value.` is accepted and ignored.

use std::cmp::Ordering;

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::state::{ETag, RequestMetadata};

/// A filter expression.
#[derive(Clone, Debug, PartialEq)]
pub enum Filter {
    /// `EQ {key: value}`.
    Eq(String, Value),
    /// `NEQ {key: value}`.
    Neq(String, Value),
    /// `GT {key: value}`.
    Gt(String, Value),
    /// `GTE {key: value}`.
    Gte(String, Value),
    /// `LT {key: value}`.
    Lt(String, Value),
    /// `LTE {key: value}`.
    Lte(String, Value),
    /// `IN {key: [values]}`.
    In(String, Vec<Value>),
    /// `AND [filters]`.
    And(Vec<Filter>),
    /// `OR [filters]`.
    Or(Vec<Filter>),
}

/// One sort key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sort {
    /// Dotted path into the value.
    pub key: String,
    /// `DESC` order.
    pub descending: bool,
}

/// A parsed query.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Query {
    /// The filter (none = everything).
    pub filter: Option<Filter>,
    /// Sort keys, most significant first.
    pub sort: Vec<Sort>,
    /// Page size (0 = unlimited).
    pub limit: usize,
    /// Continuation token from a previous page.
    pub token: Option<String>,
    /// Only keys starting with this (the app's key prefix, e.g. `myapp||`); set by the runtime.
    pub key_prefix: String,
}

/// One result.
#[derive(Clone, Debug, PartialEq)]
pub struct QueryItem {
    /// The stored key (with its prefix; the runtime strips it).
    pub key: String,
    /// The stored value.
    pub data: Bytes,
    /// Its ETag.
    pub etag: Option<ETag>,
}

/// A page of results.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueryResponse {
    /// The results.
    pub results: Vec<QueryItem>,
    /// Token for the next page, when there may be more.
    pub token: Option<String>,
}

/// State stores that answer queries.
#[async_trait]
pub trait Querier: Send + Sync {
    /// Runs a query.
    async fn query(&self, query: &Query, metadata: &RequestMetadata) -> Result<QueryResponse>;
}

fn bad(msg: impl Into<String>) -> Error {
    Error::InvalidRequest(msg.into())
}

fn path_of(key: &str) -> String {
    key.strip_prefix("value.").unwrap_or(key).to_owned()
}

fn parse_filter(v: &Value) -> Result<Filter> {
    let Value::Object(map) = v else {
        return Err(bad("a filter must be an object"));
    };
    if map.len() != 1 {
        return Err(bad("a filter must have exactly one operator"));
    }
    let (op, arg) = map.iter().next().ok_or_else(|| bad("empty filter"))?;
    let single = |arg: &Value| -> Result<(String, Value)> {
        match arg {
            Value::Object(m) if m.len() == 1 => {
                let (k, v) = m.iter().next().ok_or_else(|| bad("empty filter"))?;
                Ok((path_of(k), v.clone()))
            }
            _ => Err(bad(format!("{op} takes one key and its value"))),
        }
    };
    let list = |arg: &Value| -> Result<Vec<Filter>> {
        match arg {
            Value::Array(items) if !items.is_empty() => items.iter().map(parse_filter).collect(),
            _ => Err(bad(format!("{op} takes a non-empty list of filters"))),
        }
    };
    Ok(match op.to_ascii_uppercase().as_str() {
        "EQ" => single(arg).map(|(k, v)| Filter::Eq(k, v))?,
        "NEQ" => single(arg).map(|(k, v)| Filter::Neq(k, v))?,
        "GT" => single(arg).map(|(k, v)| Filter::Gt(k, v))?,
        "GTE" => single(arg).map(|(k, v)| Filter::Gte(k, v))?,
        "LT" => single(arg).map(|(k, v)| Filter::Lt(k, v))?,
        "LTE" => single(arg).map(|(k, v)| Filter::Lte(k, v))?,
        "IN" => {
            let (k, v) = single(arg)?;
            match v {
                Value::Array(items) => Filter::In(k, items),
                _ => return Err(bad("IN takes a list of values")),
            }
        }
        "AND" => Filter::And(list(arg)?),
        "OR" => Filter::Or(list(arg)?),
        other => return Err(bad(format!("unknown filter operator {other}"))),
    })
}

impl Query {
    /// Parses a query document.
    pub fn parse(doc: &[u8]) -> Result<Self> {
        let v: Value =
            serde_json::from_slice(doc).map_err(|e| bad(format!("invalid query: {e}")))?;
        let Value::Object(obj) = v else {
            return Err(bad("a query must be a JSON object"));
        };
        let mut q = Query::default();
        if let Some(f) = obj
            .get("filter")
            .filter(|f| f.as_object().is_some_and(|m| !m.is_empty()))
        {
            q.filter = Some(parse_filter(f)?);
        }
        if let Some(Value::Array(sorts)) = obj.get("sort") {
            for s in sorts {
                let key = s
                    .get("key")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad("sort needs a key"))?;
                let order = s.get("order").and_then(Value::as_str).unwrap_or("ASC");
                let descending = match order.to_ascii_uppercase().as_str() {
                    "ASC" => false,
                    "DESC" => true,
                    other => return Err(bad(format!("unknown sort order {other}"))),
                };
                q.sort.push(Sort {
                    key: path_of(key),
                    descending,
                });
            }
        }
        if let Some(page) = obj.get("page") {
            q.limit = match page.get("limit") {
                None | Some(Value::Null) => 0,
                Some(v) => v
                    .as_u64()
                    .ok_or_else(|| bad("page.limit must be a non-negative integer"))?
                    as usize,
            };
            q.token = page
                .get("token")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
                .map(str::to_owned);
        }
        Ok(q)
    }
}

/// The value at a dotted path.
pub fn lookup<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(value, |v, part| v.get(part))
}

/// Orders two JSON values: numbers numerically, strings lexically, otherwise by type.
pub fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        (Value::Null, Value::Null) => Some(Ordering::Equal),
        _ => None,
    }
}

fn equal(a: &Value, b: &Value) -> bool {
    compare(a, b).map_or(a == b, |o| o == Ordering::Equal)
}

impl Filter {
    /// Whether a stored JSON value passes the filter.
    pub fn matches(&self, value: &Value) -> bool {
        let cmp = |k: &str, v: &Value, ok: fn(Ordering) -> bool| {
            lookup(value, k).and_then(|x| compare(x, v)).is_some_and(ok)
        };
        match self {
            Filter::Eq(k, v) => lookup(value, k).is_some_and(|x| equal(x, v)),
            Filter::Neq(k, v) => !lookup(value, k).is_some_and(|x| equal(x, v)),
            Filter::Gt(k, v) => cmp(k, v, |o| o == Ordering::Greater),
            Filter::Gte(k, v) => cmp(k, v, |o| o != Ordering::Less),
            Filter::Lt(k, v) => cmp(k, v, |o| o == Ordering::Less),
            Filter::Lte(k, v) => cmp(k, v, |o| o != Ordering::Greater),
            Filter::In(k, vs) => lookup(value, k).is_some_and(|x| vs.iter().any(|v| equal(x, v))),
            Filter::And(fs) => fs.iter().all(|f| f.matches(value)),
            Filter::Or(fs) => fs.iter().any(|f| f.matches(value)),
        }
    }
}

/// Runs a query over `(key, value, etag)` rows in process: filter, sort (then by key, for a
/// stable order), and paginate with an offset token. For stores without native querying.
pub fn evaluate(
    query: &Query,
    rows: impl IntoIterator<Item = (String, Bytes, Option<ETag>)>,
) -> Result<QueryResponse> {
    let mut hits: Vec<(Value, QueryItem)> = rows
        .into_iter()
        .filter(|(k, _, _)| k.starts_with(&query.key_prefix))
        .filter_map(|(key, data, etag)| {
            let v: Value = serde_json::from_slice(&data).ok()?;
            let keep = query.filter.as_ref().is_none_or(|f| f.matches(&v));
            keep.then_some((v, QueryItem { key, data, etag }))
        })
        .collect();
    hits.sort_by(|(va, a), (vb, b)| {
        for s in &query.sort {
            let ord = match (lookup(va, &s.key), lookup(vb, &s.key)) {
                (Some(x), Some(y)) => compare(x, y).unwrap_or(Ordering::Equal),
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (None, None) => Ordering::Equal,
            };
            let ord = if s.descending { ord.reverse() } else { ord };
            if ord != Ordering::Equal {
                return ord;
            }
        }
        a.key.cmp(&b.key)
    });
    let start: usize = match &query.token {
        None => 0,
        Some(t) => t.parse().map_err(|_| bad("invalid page token"))?,
    };
    let total = hits.len();
    let mut results: Vec<QueryItem> = hits.into_iter().skip(start).map(|(_, item)| item).collect();
    let mut token = None;
    if query.limit > 0 && results.len() > query.limit {
        results.truncate(query.limit);
        token = Some((start + query.limit).to_string());
    } else if query.limit > 0 && start + results.len() < total {
        token = Some((start + results.len()).to_string());
    }
    Ok(QueryResponse { results, token })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rows() -> Vec<(String, Bytes, Option<ETag>)> {
        [
            (
                "app||1",
                json!({"state": "CA", "person": {"org": "A", "id": 3}}),
            ),
            (
                "app||2",
                json!({"state": "WA", "person": {"org": "B", "id": 1}}),
            ),
            (
                "app||3",
                json!({"state": "CA", "person": {"org": "C", "id": 2}}),
            ),
            (
                "app||4",
                json!({"state": "CA", "person": {"org": "B", "id": 5}}),
            ),
            (
                "other||5",
                json!({"state": "CA", "person": {"org": "B", "id": 9}}),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), Bytes::from(v.to_string()), None))
        .collect()
    }

    #[test]
    fn filter_sort_and_pages() {
        let mut q = Query::parse(br#"{"filter":{"AND":[{"EQ":{"state":"CA"}},{"IN":{"person.org":["A","B"]}}]},"sort":[{"key":"person.id","order":"DESC"}],"page":{"limit":1}}"#).unwrap();
        q.key_prefix = "app||".into();
        let page1 = evaluate(&q, rows()).unwrap();
        assert_eq!(
            page1
                .results
                .iter()
                .map(|r| r.key.as_str())
                .collect::<Vec<_>>(),
            vec!["app||4"]
        );
        q.token = page1.token.clone();
        let page2 = evaluate(&q, rows()).unwrap();
        assert_eq!(
            page2
                .results
                .iter()
                .map(|r| r.key.as_str())
                .collect::<Vec<_>>(),
            vec!["app||1"]
        );
        assert!(page2.token.is_none());
        let mut or = Query::parse(
            br#"{"filter":{"OR":[{"EQ":{"value.state":"WA"}},{"GT":{"person.id":4}}]}}"#,
        )
        .unwrap();
        or.key_prefix = "app||".into();
        let keys: Vec<String> = evaluate(&or, rows())
            .unwrap()
            .results
            .into_iter()
            .map(|r| r.key)
            .collect();
        assert_eq!(keys, vec!["app||2", "app||4"]);
    }

    #[test]
    fn bad_queries() {
        assert!(Query::parse(b"[]").is_err());
        assert!(Query::parse(br#"{"filter":{"LIKE":{"a":1}}}"#).is_err());
        assert!(Query::parse(br#"{"filter":{"EQ":{"a":1,"b":2}}}"#).is_err());
        assert!(Query::parse(br#"{"sort":[{"key":"a","order":"UP"}]}"#).is_err());
        assert!(Query::parse(br#"{}"#).unwrap().filter.is_none());
    }
}
