//! `state.postgresql` v1: Dapr's JSONB table, `xmin` ETags and the query API.
//!
//! Rows: JSON values are stored as JSONB (`isbinary = false`); anything else (and the rare JSON
//! PostgreSQL cannot hold, such as `\u0000` escapes) as a base64 JSON string with
//! `isbinary = true`, returned as the exact bytes. JSONB normalises JSON: insignificant
//! whitespace goes, object keys are reordered (shorter keys first, then byte-wise) and
//! duplicate keys collapse to the last one; Dapr shares this. PostgreSQL prints JSONB with a
//! space after `:` and `,` (`{"a": 1}`); Tandem removes that whitespace when reading, so a
//! compact document comes back as it was written (`{"a":1}`) unless its keys were reordered.
//!
//! ETags are the row's `xmin` (the id of the transaction that wrote it) as decimal text, as
//! Dapr's; an ETag that is not a 32-bit unsigned decimal is [`Error::ETagInvalid`]. Conditional
//! writes are single statements (`UPDATE … WHERE xmin = $n`), so concurrent writers cannot
//! both win. Expired rows (`expiredate` in the past) are invisible, count as absent for ETags
//! and `first-write`, and are deleted by the background cleanup (`cleanupInterval`).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use tandem_components::query::{Querier, Query, QueryItem, QueryResponse};
use tandem_components::state::{
    BulkGetItem, Concurrency, DeleteRequest, ETag, GetRequest, RequestMetadata, SetRequest,
    StateFeature, StateItem, StateStore, TTL_EXPIRE_TIME_KEY, TransactionOperation,
    TransactionRequest, Transactional, format_expire_time, ttl_from_metadata,
};
use tandem_components::{Error, Metadata, Result};
use tokio_postgres::Row;
use tokio_postgres::types::Type;

use crate::db::{Background, Db, Session, whole_seconds};
use crate::metadata::{Layout, PostgresMetadata};
use crate::query::translate;

/// The `state.postgresql` component with `version: v1` (or no version), also registered as
/// `state.postgres`.
///
/// Built with [`PostgresStateStore::build`], which does no I/O; features `ETAG` and `TTL`,
/// plus transactions and the query API.
#[derive(Debug)]
pub struct PostgresStateStore {
    db: Arc<Db>,
    sql: Sql,
    _background: Background,
}

impl PostgresStateStore {
    /// Decodes the metadata (see [`PostgresMetadata`]) and sets up the connection pool and the
    /// cleanup task. Connecting and creating the tables happen on first use, so this succeeds
    /// while the database is down.
    pub async fn build(metadata: &Metadata) -> Result<Self> {
        let md = PostgresMetadata::from_metadata(metadata, Layout::V1)?;
        let db = Arc::new(Db::new(&metadata.name, &md)?);
        let background = Background::start(&db, &md);
        Ok(Self {
            db,
            sql: Sql::new(&md.table_name),
            _background: background,
        })
    }
}

#[async_trait]
impl StateStore for PostgresStateStore {
    fn features(&self) -> &'static [StateFeature] {
        &[StateFeature::ETag, StateFeature::Ttl]
    }

    async fn get(&self, req: GetRequest<'_>) -> Result<Option<StateItem>> {
        self.db
            .timed("get", async {
                let conn = self.db.conn().await?;
                let rows = conn.query(&self.sql.get, &[(&req.key, Type::TEXT)]).await?;
                rows.first().map(|row| read_item(row, 0)).transpose()
            })
            .await
    }

    async fn set(&self, req: SetRequest) -> Result<()> {
        let args = SetArgs::new(&req)?;
        self.db
            .timed("set", async {
                // One statement, atomic by itself: no transaction needed.
                let conn = self.db.conn().await?;
                args.apply(conn.session(), &self.sql).await
            })
            .await
    }

    async fn delete(&self, req: DeleteRequest) -> Result<()> {
        let args = DeleteArgs::new(&req)?;
        self.db
            .timed("delete", async {
                let conn = self.db.conn().await?;
                args.apply(conn.session(), &self.sql).await
            })
            .await
    }

    /// One query for all keys (`key = ANY($1)`), answered in request order.
    async fn bulk_get(
        &self,
        keys: &[String],
        _metadata: &RequestMetadata,
    ) -> Result<Vec<BulkGetItem>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        self.db
            .timed("bulk get", async {
                let conn = self.db.conn().await?;
                let rows = conn
                    .query(&self.sql.bulk_get, &[(&keys, Type::TEXT_ARRAY)])
                    .await?;
                let found: HashMap<String, std::result::Result<StateItem, String>> = rows
                    .iter()
                    .map(|row| {
                        let key: String = row.get(0);
                        (key, read_item(row, 1).map_err(|e| e.to_string()))
                    })
                    .collect();
                Ok(in_request_order(keys, &found))
            })
            .await
    }

    /// One transaction for the batch, with the contract's semantics: writes apply in order and
    /// stop at the first error; the ones before it stay (unless the database itself failed,
    /// when the outcome of the whole batch is unknown anyway and it is rolled back).
    async fn bulk_set(&self, reqs: Vec<SetRequest>) -> Result<()> {
        self.db
            .timed("bulk set", async {
                let mut conn = self.db.conn().await?;
                let tx = conn.transaction().await?;
                for req in &reqs {
                    let outcome = match SetArgs::new(req) {
                        Ok(args) => args.apply(tx.session(), &self.sql).await,
                        Err(e) => Err(e),
                    };
                    if let Err(err) = outcome {
                        if !matches!(err, Error::Backend(_)) {
                            tx.commit().await?;
                        }
                        return Err(err);
                    }
                }
                tx.commit().await
            })
            .await
    }

    /// Like [`Self::bulk_set`].
    async fn bulk_delete(&self, reqs: Vec<DeleteRequest>) -> Result<()> {
        self.db
            .timed("bulk delete", async {
                let mut conn = self.db.conn().await?;
                let tx = conn.transaction().await?;
                for req in &reqs {
                    let outcome = match DeleteArgs::new(req) {
                        Ok(args) => args.apply(tx.session(), &self.sql).await,
                        Err(e) => Err(e),
                    };
                    if let Err(err) = outcome {
                        if !matches!(err, Error::Backend(_)) {
                            tx.commit().await?;
                        }
                        return Err(err);
                    }
                }
                tx.commit().await
            })
            .await
    }

    fn transactional(&self) -> Option<&dyn Transactional> {
        Some(self)
    }

    fn querier(&self) -> Option<&dyn Querier> {
        Some(self)
    }

    async fn ping(&self) -> Result<()> {
        self.db
            .timed("ping", async {
                let conn = self.db.conn().await?;
                conn.query("SELECT 1", &[]).await.map(drop)
            })
            .await
    }
}

#[async_trait]
impl Transactional for PostgresStateStore {
    /// Every operation in one SQL transaction: all apply or none. Requests are checked before
    /// the transaction starts.
    async fn multi(&self, req: TransactionRequest) -> Result<()> {
        let ops = req
            .operations
            .iter()
            .map(|op| match op {
                TransactionOperation::Upsert(set) => SetArgs::new(set).map(Op::Set),
                TransactionOperation::Delete(del) => DeleteArgs::new(del).map(Op::Delete),
            })
            .collect::<Result<Vec<_>>>()?;
        if ops.is_empty() {
            return Ok(());
        }
        self.db
            .timed("transaction", async {
                let mut conn = self.db.conn().await?;
                // Dropping `tx` on an error rolls everything back.
                let tx = conn.transaction().await?;
                for op in &ops {
                    match op {
                        Op::Set(args) => args.apply(tx.session(), &self.sql).await?,
                        Op::Delete(args) => args.apply(tx.session(), &self.sql).await?,
                    }
                }
                tx.commit().await
            })
            .await
    }
}

/// The query is translated to SQL (see [`crate::query`]) and runs in the database.
#[async_trait]
impl Querier for PostgresStateStore {
    async fn query(&self, query: &Query, _metadata: &RequestMetadata) -> Result<QueryResponse> {
        let sql = translate(query, &self.sql.table)?;
        let params: Vec<_> = sql.params.iter().map(|p| p.as_param()).collect();
        let rows = self
            .db
            .timed("query", async {
                let conn = self.db.conn().await?;
                conn.query_shaped(&sql.sql, &params).await
            })
            .await?;
        let mut results = rows
            .iter()
            .map(|row| QueryItem {
                key: row.get(0),
                data: compact_json(row.get(1)),
                etag: Some(ETag::from(row.get::<_, String>(2))),
            })
            .collect::<Vec<_>>();
        let mut token = None;
        if sql.limit > 0 && results.len() > sql.limit {
            results.truncate(sql.limit);
            token = Some((sql.offset + sql.limit).to_string());
        }
        Ok(QueryResponse { results, token })
    }
}

enum Op {
    Set(SetArgs),
    Delete(DeleteArgs),
}

/// A write, checked and encoded before any I/O.
struct SetArgs {
    key: String,
    json: String,
    binary: bool,
    ttl_secs: Option<f64>,
    etag: Option<String>,
    first_write: bool,
}

impl SetArgs {
    fn new(req: &SetRequest) -> Result<Self> {
        let ttl_secs = ttl_from_metadata(&req.metadata)?.map(|d| d.as_secs_f64());
        let etag = req_etag(req.etag.as_ref()).map(xmin_etag).transpose()?;
        let (json, binary) = encode(&req.value);
        Ok(Self {
            key: req.key.clone(),
            json: json.into_owned(),
            binary,
            ttl_secs,
            etag,
            first_write: req.options.concurrency == Concurrency::FirstWrite,
        })
    }

    async fn apply(&self, on: Session<'_>, sql: &Sql) -> Result<()> {
        let base: [crate::db::Param<'_>; 4] = [
            (&self.key, Type::TEXT),
            (&self.json, Type::TEXT),
            (&self.binary, Type::BOOL),
            (&self.ttl_secs, Type::FLOAT8),
        ];
        let changed = match &self.etag {
            Some(etag) => {
                let [a, b, c, d] = base;
                on.execute(&sql.update_if, &[a, b, c, d, (etag, Type::TEXT)])
                    .await?
            }
            None if self.first_write => on.execute(&sql.insert_first, &base).await?,
            None => on.execute(&sql.upsert, &base).await?,
        };
        if changed == 0 {
            return Err(Error::ETagMismatch);
        }
        Ok(())
    }
}

/// A delete, checked before any I/O.
struct DeleteArgs {
    key: String,
    etag: Option<String>,
}

impl DeleteArgs {
    fn new(req: &DeleteRequest) -> Result<Self> {
        Ok(Self {
            key: req.key.clone(),
            etag: req_etag(req.etag.as_ref()).map(xmin_etag).transpose()?,
        })
    }

    async fn apply(&self, on: Session<'_>, sql: &Sql) -> Result<()> {
        match &self.etag {
            Some(etag) => {
                let n = on
                    .execute(
                        &sql.delete_if,
                        &[(&self.key, Type::TEXT), (etag, Type::TEXT)],
                    )
                    .await?;
                if n == 0 {
                    return Err(Error::ETagMismatch);
                }
            }
            None => {
                on.execute(&sql.delete, &[(&self.key, Type::TEXT)]).await?;
            }
        }
        Ok(())
    }
}

/// Answers a bulk read in request order from the rows found (missing keys without a value).
pub(crate) fn in_request_order(
    keys: &[String],
    found: &HashMap<String, std::result::Result<StateItem, String>>,
) -> Vec<BulkGetItem> {
    keys.iter()
        .map(|key| {
            let (item, error) = match found.get(key) {
                None => (None, None),
                Some(Ok(item)) => (Some(item.clone()), None),
                Some(Err(e)) => (None, Some(e.clone())),
            };
            BulkGetItem {
                key: key.clone(),
                item,
                error,
            }
        })
        .collect()
}

/// The request's ETag; an empty one means none, as in Dapr.
pub(crate) fn req_etag(etag: Option<&ETag>) -> Option<&str> {
    etag.map(ETag::as_str).filter(|e| !e.is_empty())
}

/// An `xmin` ETag: a 32-bit unsigned decimal.
fn xmin_etag(etag: &str) -> Result<String> {
    if etag.is_empty() || !etag.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::ETagInvalid(
            "the etag of a postgresql v1 item is a decimal number".into(),
        ));
    }
    etag.parse::<u32>().map(|n| n.to_string()).map_err(|_| {
        Error::ETagInvalid("the etag of a postgresql v1 item is a 32-bit number".into())
    })
}

/// JSON stays JSON (for JSONB), anything else becomes a base64 JSON string.
fn encode(value: &[u8]) -> (Cow<'_, str>, bool) {
    if let Ok(text) = std::str::from_utf8(value)
        && serde_json::from_str::<&serde_json::value::RawValue>(text).is_ok()
        && jsonb_can_hold(text)
    {
        return (Cow::Borrowed(text), false);
    }
    (Cow::Owned(format!("\"{}\"", BASE64.encode(value))), true)
}

/// JSONB rejects `\u0000` and unpaired surrogate escapes that JSON parsers accept; such
/// documents (rare) are stored as binary instead, which still round-trips exactly.
fn jsonb_can_hold(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = bytes[i..].windows(2).position(|w| w == b"\\u") {
        let start = i + pos + 2;
        let hex = text.get(start..start + 4).unwrap_or_default();
        if let Ok(code) = u16::from_str_radix(hex, 16)
            && (code == 0 || (0xD800..=0xDFFF).contains(&code))
        {
            return false;
        }
        i = start;
    }
    true
}

/// JSONB's text form without the whitespace PostgreSQL prints after `:` and `,`.
pub(crate) fn compact_json(text: String) -> Bytes {
    if !text.contains([' ', '\n', '\t', '\r']) {
        return Bytes::from(text);
    }
    let mut out = Vec::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    for &c in text.as_bytes() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == b'\\' {
                escaped = true;
            } else if c == b'"' {
                in_string = false;
            }
        } else if !matches!(c, b' ' | b'\n' | b'\t' | b'\r') {
            in_string = c == b'"';
            out.push(c);
        }
    }
    Bytes::from(out)
}

/// `(value::text, isbinary, xmin::text, expiredate)` from column `first` on.
fn read_item(row: &Row, first: usize) -> Result<StateItem> {
    let text: String = row.get(first);
    let binary: bool = row.get(first + 1);
    let etag: String = row.get(first + 2);
    let expires: Option<SystemTime> = row.get(first + 3);
    let value = if binary {
        let b64: String = serde_json::from_str(&text)
            .map_err(|_| Error::backend("a binary value is not stored as a JSON string"))?;
        Bytes::from(
            BASE64
                .decode(b64.as_bytes())
                .map_err(|_| Error::backend("a binary value is not valid base64"))?,
        )
    } else {
        compact_json(text)
    };
    let mut metadata = HashMap::new();
    if let Some(at) = expires {
        metadata.insert(
            TTL_EXPIRE_TIME_KEY.to_owned(),
            format_expire_time(whole_seconds(at)),
        );
    }
    Ok(StateItem {
        value,
        etag: Some(ETag::from(etag)),
        metadata,
    })
}

/// The statements, with the (validated) table name interpolated once. Parameters:
/// `$1` key, `$2` JSON text, `$3` isbinary, `$4` TTL seconds (NULL = none), `$5` ETag.
#[derive(Debug)]
struct Sql {
    table: String,
    get: String,
    bulk_get: String,
    upsert: String,
    insert_first: String,
    update_if: String,
    delete: String,
    delete_if: String,
}

impl Sql {
    fn new(table: &str) -> Self {
        const LIVE: &str = "(expiredate IS NULL OR expiredate > now())";
        let upsert = format!(
            "INSERT INTO {table} AS t (key, value, isbinary, expiredate) \
             VALUES ($1, $2::jsonb, $3, now() + $4 * interval '1 second') \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value, \
             isbinary = excluded.isbinary, updatedate = now(), expiredate = excluded.expiredate"
        );
        Self {
            table: table.to_owned(),
            get: format!(
                "SELECT value::text, isbinary, xmin::text, expiredate FROM {table} \
                 WHERE key = $1 AND {LIVE}"
            ),
            bulk_get: format!(
                "SELECT key, value::text, isbinary, xmin::text, expiredate FROM {table} \
                 WHERE key = ANY($1) AND {LIVE}"
            ),
            // first-write: take over the row only when it has expired.
            insert_first: format!(
                "{upsert} WHERE t.expiredate IS NOT NULL AND t.expiredate <= now()"
            ),
            upsert,
            update_if: format!(
                "UPDATE {table} SET value = $2::jsonb, isbinary = $3, updatedate = now(), \
                 expiredate = now() + $4 * interval '1 second' \
                 WHERE key = $1 AND xmin = $5::xid AND {LIVE}"
            ),
            delete: format!("DELETE FROM {table} WHERE key = $1"),
            delete_if: format!("DELETE FROM {table} WHERE key = $1 AND xmin = $2::xid AND {LIVE}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_kept_everything_else_base64() {
        assert_eq!(encode(br#"{"a":1}"#), (Cow::Borrowed(r#"{"a":1}"#), false));
        assert_eq!(encode(b" 42 "), (Cow::Borrowed(" 42 "), false));
        assert!(encode(b"hello").1);
        assert_eq!(encode(b"").0, "\"\"");
        assert_eq!(encode(&[0xff, 0]).0, "\"/wA=\"");
        assert!(encode(br#""a\u0000b""#).1, "NUL escapes cannot be JSONB");
        assert!(encode(br#""\ud800""#).1);
        assert!(!encode(br#""\u00e9\\u""#).1);
    }

    #[test]
    fn compaction_keeps_strings() {
        assert_eq!(
            compact_json(r#"{"a": 1, "b c": [1, "x, y: \" z"]}"#.into()),
            Bytes::from_static(br#"{"a":1,"b c":[1,"x, y: \" z"]}"#)
        );
        assert_eq!(
            compact_json(r#""back\\" "#.into()),
            Bytes::from_static(br#""back\\""#)
        );
        assert_eq!(compact_json("5".into()), Bytes::from_static(b"5"));
    }

    #[test]
    fn xmin_etags() {
        assert_eq!(xmin_etag("123").unwrap(), "123");
        assert_eq!(xmin_etag("0042").unwrap(), "42");
        for bad in [
            "",
            "-1",
            "+1",
            "4294967296",
            "1.5",
            "00000000-0000-0000-0000-000000000000",
        ] {
            assert!(
                matches!(xmin_etag(bad), Err(Error::ETagInvalid(_))),
                "{bad}"
            );
        }
    }
}
