//! `state.postgresql` v2: Dapr's BYTEA table with random UUID ETags.
//!
//! Values are stored as they are (no JSON handling), so every byte string round-trips exactly.
//! Each write sets a fresh random UUID as the row's ETag, chosen by Tandem so no extra round
//! trip reads it back; an ETag that is not a UUID can match no row, so it is an
//! [`Error::ETagMismatch`], as in Dapr (and as in every other UUID-ETag store, so an app sees
//! the same 409 whichever store it runs on). Expiry, `first-write` and the cleanup are as in v1. There is no query
//! API in this layout, as in Dapr.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use tandem_components::state::{
    BulkGetItem, Concurrency, DeleteRequest, ETag, GetRequest, RequestMetadata, SetRequest,
    StateFeature, StateItem, StateStore, TTL_EXPIRE_TIME_KEY, TransactionOperation,
    TransactionRequest, Transactional, format_expire_time, ttl_from_metadata,
};
use tandem_components::{Error, Metadata, Result};
use tokio_postgres::Row;
use tokio_postgres::types::Type;
use uuid::Uuid;

use crate::db::{Background, Db, Session, whole_seconds};
use crate::metadata::{Layout, PostgresMetadata};
use crate::state::{in_request_order, req_etag};

/// The `state.postgresql` component with `version: v2` (alias `state.postgres`).
///
/// Built with [`PostgresStateStoreV2::build`], which does no I/O; features `ETAG` and `TTL`,
/// plus transactions.
#[derive(Debug)]
pub struct PostgresStateStoreV2 {
    db: Arc<Db>,
    sql: Sql,
    _background: Background,
}

impl PostgresStateStoreV2 {
    /// Decodes the metadata (see [`PostgresMetadata`]) and sets up the connection pool and the
    /// cleanup task. Connecting and creating the tables happen on first use, so this succeeds
    /// while the database is down.
    pub async fn build(metadata: &Metadata) -> Result<Self> {
        let md = PostgresMetadata::from_metadata(metadata, Layout::V2)?;
        let db = Arc::new(Db::new(&metadata.name, &md)?);
        let background = Background::start(&db, &md);
        Ok(Self {
            db,
            sql: Sql::new(&md.state_table()),
            _background: background,
        })
    }
}

#[async_trait]
impl StateStore for PostgresStateStoreV2 {
    fn features(&self) -> &'static [StateFeature] {
        &[StateFeature::ETag, StateFeature::Ttl]
    }

    async fn get(&self, req: GetRequest<'_>) -> Result<Option<StateItem>> {
        self.db
            .timed("get", async {
                let conn = self.db.conn().await?;
                let rows = conn.query(&self.sql.get, &[(&req.key, Type::TEXT)]).await?;
                Ok(rows.first().map(|row| read_item(row, 0)))
            })
            .await
    }

    async fn set(&self, req: SetRequest) -> Result<()> {
        let args = SetArgs::new(&req)?;
        self.db
            .timed("set", async {
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
                    .map(|row| (row.get(0), Ok(read_item(row, 1))))
                    .collect();
                Ok(in_request_order(keys, &found))
            })
            .await
    }

    /// One transaction for the batch; writes apply in order and stop at the first error, the
    /// ones before it stay (unless the database itself failed: then it is rolled back).
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
impl Transactional for PostgresStateStoreV2 {
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

enum Op {
    Set(SetArgs),
    Delete(DeleteArgs),
}

/// A write, checked before any I/O.
struct SetArgs {
    key: String,
    value: Bytes,
    ttl_secs: Option<f64>,
    etag: Option<Uuid>,
    first_write: bool,
}

impl SetArgs {
    fn new(req: &SetRequest) -> Result<Self> {
        Ok(Self {
            key: req.key.clone(),
            value: req.value.clone(),
            ttl_secs: ttl_from_metadata(&req.metadata)?.map(|d| d.as_secs_f64()),
            etag: req_etag(req.etag.as_ref()).map(uuid_etag).transpose()?,
            first_write: req.options.concurrency == Concurrency::FirstWrite,
        })
    }

    async fn apply(&self, on: Session<'_>, sql: &Sql) -> Result<()> {
        let new_etag = Uuid::new_v4();
        let value: &[u8] = &self.value;
        let base: [crate::db::Param<'_>; 4] = [
            (&self.key, Type::TEXT),
            (&value, Type::BYTEA),
            (&new_etag, Type::UUID),
            (&self.ttl_secs, Type::FLOAT8),
        ];
        let changed = match &self.etag {
            Some(etag) => {
                let [a, b, c, d] = base;
                on.execute(&sql.update_if, &[a, b, c, d, (etag, Type::UUID)])
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
    etag: Option<Uuid>,
}

impl DeleteArgs {
    fn new(req: &DeleteRequest) -> Result<Self> {
        Ok(Self {
            key: req.key.clone(),
            etag: req_etag(req.etag.as_ref()).map(uuid_etag).transpose()?,
        })
    }

    async fn apply(&self, on: Session<'_>, sql: &Sql) -> Result<()> {
        match &self.etag {
            Some(etag) => {
                let n = on
                    .execute(
                        &sql.delete_if,
                        &[(&self.key, Type::TEXT), (etag, Type::UUID)],
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

fn uuid_etag(etag: &str) -> Result<Uuid> {
    Uuid::parse_str(etag).map_err(|_| Error::ETagMismatch)
}

/// `(value, etag::text, expires_at)` from column `first` on.
fn read_item(row: &Row, first: usize) -> StateItem {
    let value: Vec<u8> = row.get(first);
    let etag: String = row.get(first + 1);
    let expires: Option<SystemTime> = row.get(first + 2);
    let mut metadata = HashMap::new();
    if let Some(at) = expires {
        metadata.insert(
            TTL_EXPIRE_TIME_KEY.to_owned(),
            format_expire_time(whole_seconds(at)),
        );
    }
    StateItem {
        value: Bytes::from(value),
        etag: Some(ETag::from(etag)),
        metadata,
    }
}

/// The statements, with the (validated) table name interpolated once. Parameters:
/// `$1` key, `$2` value, `$3` new ETag, `$4` TTL seconds (NULL = none), `$5` expected ETag.
#[derive(Debug)]
struct Sql {
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
        const LIVE: &str = "(expires_at IS NULL OR expires_at > now())";
        let upsert = format!(
            "INSERT INTO {table} AS t (key, value, etag, expires_at) \
             VALUES ($1, $2, $3, now() + $4 * interval '1 second') \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = now(), \
             etag = excluded.etag, expires_at = excluded.expires_at"
        );
        Self {
            get: format!(
                "SELECT value, etag::text, expires_at FROM {table} WHERE key = $1 AND {LIVE}"
            ),
            bulk_get: format!(
                "SELECT key, value, etag::text, expires_at FROM {table} \
                 WHERE key = ANY($1) AND {LIVE}"
            ),
            // first-write: take over the row only when it has expired.
            insert_first: format!(
                "{upsert} WHERE t.expires_at IS NOT NULL AND t.expires_at <= now()"
            ),
            upsert,
            update_if: format!(
                "UPDATE {table} SET value = $2, updated_at = now(), etag = $3, \
                 expires_at = now() + $4 * interval '1 second' \
                 WHERE key = $1 AND etag = $5 AND {LIVE}"
            ),
            delete: format!("DELETE FROM {table} WHERE key = $1"),
            delete_if: format!("DELETE FROM {table} WHERE key = $1 AND etag = $2 AND {LIVE}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_etags() {
        assert!(uuid_etag("6f1c1b2e-1a52-4a8f-9d55-2c3c1c1f0a11").is_ok());
        for bad in ["1", "not-an-etag", "6f1c1b2e-1a52-4a8f-9d55"] {
            assert!(matches!(uuid_etag(bad), Err(Error::ETagMismatch)), "{bad}");
        }
    }
}
