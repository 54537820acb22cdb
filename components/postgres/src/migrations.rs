//! Dapr's tables, created and migrated the way Dapr does it, so Tandem and daprd can share a
//! database in either order.
//!
//! Dapr keeps a migration level per layout in its metadata table (`dapr_metadata`): the key
//! `migrations` for v1 and `migrations-state-v2-<tablePrefix>` for v2, holding the number of
//! migrations applied. Its migrations are serialised across sidecars by a row lock: a `lock`
//! row is inserted if missing, then held with `SELECT … FOR UPDATE` in a transaction. Tandem
//! takes the same lock, so it never races a daprd migrating the same database, and then runs
//! the missing migrations and records the new level inside that transaction: either all of
//! them apply or none, and the level never runs ahead of the schema.
//!
//! v1 migrations (level 3):
//! 1. `CREATE TABLE <tableName> (key text NOT NULL PRIMARY KEY, value jsonb NOT NULL,
//!    isbinary boolean NOT NULL, insertdate timestamptz NOT NULL DEFAULT now(),
//!    updatedate timestamptz NULL)`;
//! 2. `ALTER TABLE … ADD expiredate timestamptz`;
//! 3. a `row_id bigint` identity column, back-filled in `(insertdate, key)` order, with a
//!    unique index `<table>_row_id_uidx` (used by Dapr's key listing).
//!
//! v2 migrations (level 2):
//! 1. `CREATE TABLE <prefix>state (key text NOT NULL PRIMARY KEY, value bytea NOT NULL,
//!    etag uuid NOT NULL DEFAULT gen_random_uuid(), created_at timestamptz NOT NULL DEFAULT
//!    now(), updated_at timestamptz, expires_at timestamptz)` and an index on `expires_at`;
//! 2. the same `row_id` column (back-filled in `(created_at, key)` order).
//!
//! Dapr's v1 level is shared by every v1 table using the same metadata table, so a second v1
//! component with another `tableName` would find the level at 3 and create nothing. Tandem
//! therefore also checks that its own table exists and, if not, runs the (idempotent) steps
//! for it without touching the recorded level.

use deadpool_postgres::Object;
use tandem_components::{Error, Result};
use tokio_postgres::error::SqlState;

use crate::db::db_err;
use crate::metadata::{Layout, PostgresMetadata};

/// Where a layout's tables live and how its migration level is recorded.
#[derive(Clone, Debug)]
pub(crate) struct Schema {
    layout: Layout,
    state: String,
    meta: String,
    level_key: String,
    cleanup_key: String,
}

impl Schema {
    pub(crate) fn from_metadata(md: &PostgresMetadata) -> Self {
        let (level_key, cleanup_key) = match md.layout {
            Layout::V1 => ("migrations".to_owned(), "last-cleanup".to_owned()),
            Layout::V2 => (
                format!("migrations-state-v2-{}", md.table_prefix),
                format!("last-cleanup-state-v2-{}", md.table_prefix),
            ),
        };
        Self {
            layout: md.layout,
            state: md.state_table(),
            meta: md.metadata_table_name.clone(),
            level_key,
            cleanup_key,
        }
    }

    /// The state table's name as written in SQL.
    pub(crate) fn state_table(&self) -> &str {
        &self.state
    }

    /// Claims the next cleanup round: updates the last-cleanup time only if the previous one is
    /// at least `$1` milliseconds old (Dapr's statement; one row changed = go ahead).
    pub(crate) fn cleanup_claim(&self) -> String {
        format!(
            "INSERT INTO {meta} (key, value) VALUES ('{key}', now()::text) \
             ON CONFLICT (key) DO UPDATE SET value = now()::text \
             WHERE (EXTRACT('epoch' FROM now() - {meta}.value::timestamp with time zone) * 1000)::bigint > $1",
            meta = self.meta,
            key = self.cleanup_key,
        )
    }

    /// Deletes the expired rows.
    pub(crate) fn cleanup_delete(&self) -> String {
        let column = match self.layout {
            Layout::V1 => "expiredate",
            Layout::V2 => "expires_at",
        };
        format!(
            "DELETE FROM {} WHERE {column} IS NOT NULL AND {column} < now()",
            self.state
        )
    }

    fn migrations(&self) -> usize {
        match self.layout {
            Layout::V1 => 3,
            Layout::V2 => 2,
        }
    }
}

/// Brings the tables to the current level; see the module documentation.
pub(crate) async fn run(conn: &mut Object, schema: &Schema) -> Result<()> {
    ensure_metadata_table(conn, schema).await?;
    // Parameterless statements go through the simple protocol: nothing is prepared, which
    // also suits connection poolers (`queryExecMode: exec`).
    conn.batch_execute(&format!(
        "INSERT INTO {} (key, value) VALUES ('lock', 'lock') ON CONFLICT (key) DO NOTHING",
        schema.meta
    ))
    .await
    .map_err(db_err)?;

    let tx = conn.transaction().await.map_err(db_err)?;
    tx.query_one(
        &format!(
            "SELECT value FROM {} WHERE key = 'lock' FOR UPDATE",
            schema.meta
        ),
        &[],
    )
    .await
    .map_err(db_err)?;
    let level_row = tx
        .query_opt(
            &format!("SELECT value FROM {} WHERE key = $1", schema.meta),
            &[&schema.level_key],
        )
        .await
        .map_err(db_err)?;
    let level: usize =
        match level_row {
            None => 0,
            Some(row) => row.get::<_, String>(0).trim().parse().map_err(|_| {
                Error::backend("invalid migration level found in the metadata table")
            })?,
        };
    let exists: bool = tx
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&schema.state])
        .await
        .map_err(db_err)?
        .get(0);
    // A level recorded for another table of the same layout (see the module docs) does not
    // count for ours.
    let from = if exists { level } else { 0 };
    let total = schema.migrations();
    for step in from..total {
        tracing::info!(table = %schema.state, step = step + 1, "state.postgresql: migrating");
        migrate(&tx, schema, step).await?;
    }
    if level < total {
        tx.execute(
            &format!(
                "INSERT INTO {} (key, value) VALUES ($1, $2) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                schema.meta
            ),
            &[&schema.level_key, &total.to_string()],
        )
        .await
        .map_err(db_err)?;
    }
    tx.commit().await.map_err(db_err)
}

/// `CREATE TABLE IF NOT EXISTS` can still fail with a unique violation when several sidecars
/// create the same table at once; like Dapr, try again a few times.
async fn ensure_metadata_table(conn: &Object, schema: &Schema) -> Result<()> {
    let sql = format!(
        "CREATE TABLE IF NOT EXISTS {} (key text NOT NULL PRIMARY KEY, value text NOT NULL)",
        schema.meta
    );
    let mut attempt = 0;
    loop {
        match conn.batch_execute(&sql).await {
            Ok(()) => return Ok(()),
            Err(err) if attempt < 3 && is_duplicate(&err) => {
                attempt += 1;
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(err) => return Err(db_err(err)),
        }
    }
}

fn is_duplicate(err: &tokio_postgres::Error) -> bool {
    matches!(
        err.code(),
        Some(c) if *c == SqlState::UNIQUE_VIOLATION || *c == SqlState::DUPLICATE_TABLE
    )
}

async fn migrate(
    tx: &deadpool_postgres::Transaction<'_>,
    schema: &Schema,
    step: usize,
) -> Result<()> {
    let table = &schema.state;
    match (schema.layout, step) {
        (Layout::V1, 0) => {
            tx.batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {table} (
                    key text NOT NULL PRIMARY KEY,
                    value jsonb NOT NULL,
                    isbinary boolean NOT NULL,
                    insertdate TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
                    updatedate TIMESTAMP WITH TIME ZONE NULL
                )"
            ))
            .await
        }
        (Layout::V1, 1) => {
            tx.batch_execute(&format!(
                "ALTER TABLE {table} ADD COLUMN IF NOT EXISTS expiredate TIMESTAMP WITH TIME ZONE"
            ))
            .await
        }
        (Layout::V2, 0) => {
            // Dapr creates an unnamed index; a named one with IF NOT EXISTS keeps a re-run (see
            // the module docs) from adding duplicates. PostgreSQL would name Dapr's the same way.
            let (_, bare) = split_schema(table);
            tx.batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {table} (
                    key text NOT NULL PRIMARY KEY,
                    value bytea NOT NULL,
                    etag uuid NOT NULL DEFAULT gen_random_uuid(),
                    created_at timestamp with time zone NOT NULL DEFAULT now(),
                    updated_at timestamp with time zone,
                    expires_at timestamp with time zone
                );
                CREATE INDEX IF NOT EXISTS {bare}_expires_at_idx ON {table} (expires_at);"
            ))
            .await
        }
        (Layout::V1, 2) => return add_row_id(tx, table, "insertdate").await,
        (Layout::V2, 1) => return add_row_id(tx, table, "created_at").await,
        _ => return Ok(()),
    }
    .map_err(db_err)
}

/// `schema.table` → (`Some(schema)`, `table`).
fn split_schema(name: &str) -> (Option<&str>, &str) {
    match name.split_once('.') {
        Some((schema, table)) => (Some(schema), table),
        None => (None, name),
    }
}

/// Dapr's `row_id` migration: an identity column numbering the rows, back-filled in a stable
/// order, with its sequence moved past the largest value and a unique index.
async fn add_row_id(
    tx: &deadpool_postgres::Transaction<'_>,
    table: &str,
    order_column: &str,
) -> Result<()> {
    let row = tx
        .query_one(
            "SELECT n.nspname::text, c.relname::text, format('%I.%I', n.nspname, c.relname), \
             n.nspname || '.' || c.relname \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.oid = to_regclass($1)",
            &[&table],
        )
        .await
        .map_err(db_err)?;
    let (schema, bare, quoted, reg): (String, String, String, String) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    let has_column: bool = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass($1) \
             AND attname = 'row_id' AND NOT attisdropped)",
            &[&table],
        )
        .await
        .map_err(db_err)?
        .get(0);
    if !has_column {
        tx.batch_execute(&format!("ALTER TABLE {quoted} ADD COLUMN row_id BIGINT"))
            .await
            .map_err(db_err)?;
    }
    tx.batch_execute(&format!(
        "WITH ranked AS (
            SELECT key, ROW_NUMBER() OVER (ORDER BY {order_column} ASC, key ASC) AS rn
            FROM {quoted} WHERE row_id IS NULL
        )
        UPDATE {quoted} AS t SET row_id = r.rn FROM ranked r WHERE r.key = t.key;
        ALTER TABLE {quoted} ALTER COLUMN row_id SET NOT NULL;"
    ))
    .await
    .map_err(db_err)?;
    let is_identity: bool = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = $1 \
             AND table_name = $2 AND column_name = 'row_id' AND is_identity = 'YES')",
            &[&schema, &bare],
        )
        .await
        .map_err(db_err)?
        .get(0);
    if !is_identity {
        tx.batch_execute(&format!(
            "ALTER TABLE {quoted} ALTER COLUMN row_id ADD GENERATED BY DEFAULT AS IDENTITY"
        ))
        .await
        .map_err(db_err)?;
    }
    let sequence: Option<String> = tx
        .query_one("SELECT pg_get_serial_sequence($1, 'row_id')", &[&reg])
        .await
        .map_err(db_err)?
        .get(0);
    if let Some(sequence) = sequence.filter(|s| !s.is_empty()) {
        tx.execute(
            &format!(
                "SELECT setval($1::text::regclass, COALESCE((SELECT MAX(row_id) FROM {quoted}), 0) + 1, false)"
            ),
            &[&sequence],
        )
        .await
        .map_err(db_err)?;
    }
    let index = quote_ident(&format!("{bare}_row_id_uidx"));
    tx.batch_execute(&format!(
        "CREATE UNIQUE INDEX IF NOT EXISTS {index} ON {quoted} (row_id)"
    ))
    .await
    .map_err(db_err)
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}
