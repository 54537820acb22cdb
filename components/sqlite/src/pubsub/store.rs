//! The tables of `pubsub.sqlite` and the blocking operations on them.
//!
//! ```sql
//! pubsub_messages   (id INTEGER PRIMARY KEY AUTOINCREMENT, topic, data BLOB, content_type,
//!                    metadata JSON, published_at, expires_at, remaining)
//! pubsub_groups     (topic, consumer_group, created_at)          PRIMARY KEY (topic, consumer_group)
//! pubsub_deliveries (topic, consumer_group, message_id, visible_at, attempts)
//!                                                                PRIMARY KEY (topic, consumer_group, message_id)
//! ```
//!
//! - A message is stored once; publishing also inserts one *delivery* row for every group that
//!   exists for the topic at that moment (recorded in `pubsub_groups` when the group first
//!   subscribed), in the same transaction. `remaining` counts the deliveries still open; the
//!   message row goes with the last one. A publish to a topic without groups stores nothing.
//! - A delivery is visible when `visible_at <= now` (unix milliseconds; `0` for a fresh one).
//!   Leasing sets `visible_at` to the lease's end and increments `attempts`, which doubles as
//!   the lease's token; Retry moves `visible_at` to the end of the backoff; Ack deletes the row.
//! - Leasing scans a group's rows in `message_id` order (the primary key), so delivery is FIFO
//!   by publish order; rows that are leased or waiting for a retry are skipped. When nothing is
//!   visible the same scan yields the earliest `visible_at`: the only time to wake up for.
//! - Ids are `AUTOINCREMENT`, never reused, so a late Ack of a lost lease cannot hit a newer
//!   message.
//!
//! The functions run inside a `BEGIN IMMEDIATE` transaction opened by the writer (see
//! [`super::writer`]): the write lock is taken first, so two processes leasing from the same
//! group serialise and never lease one row twice.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, params};
use tandem_components::pubsub::{Message, PublishRequest};
use tandem_components::state::ttl_from_metadata;
use tandem_components::{BoxError, Error, Result};

/// The schema, created when missing.
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS pubsub_messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    data BLOB NOT NULL,
    content_type TEXT,
    metadata TEXT,
    published_at INTEGER NOT NULL,
    expires_at INTEGER,
    remaining INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS pubsub_groups (
    topic TEXT NOT NULL,
    consumer_group TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (topic, consumer_group)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pubsub_deliveries (
    topic TEXT NOT NULL,
    consumer_group TEXT NOT NULL,
    message_id INTEGER NOT NULL,
    visible_at INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (topic, consumer_group, message_id)
) WITHOUT ROWID;
";

const COUNT_GROUPS: &str = "SELECT count(*) FROM pubsub_groups WHERE topic = ?1";
const INSERT_MESSAGE: &str = "INSERT INTO pubsub_messages \
     (topic, data, content_type, metadata, published_at, expires_at, remaining) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";
const INSERT_DELIVERIES: &str = "INSERT INTO pubsub_deliveries \
     (topic, consumer_group, message_id, visible_at, attempts) \
     SELECT topic, consumer_group, ?2, 0, 0 FROM pubsub_groups WHERE topic = ?1";
const INSERT_GROUP: &str =
    "INSERT OR IGNORE INTO pubsub_groups (topic, consumer_group, created_at) VALUES (?1, ?2, ?3)";
/// `CROSS JOIN` keeps the deliveries as the outer loop, scanned in primary-key order.
const CANDIDATES: &str = "SELECT d.message_id, d.attempts, m.expires_at, m.data, m.content_type, m.metadata \
     FROM pubsub_deliveries AS d CROSS JOIN pubsub_messages AS m ON m.id = d.message_id \
     WHERE d.topic = ?1 AND d.consumer_group = ?2 AND d.visible_at <= ?3 AND d.message_id > ?4 \
     ORDER BY d.message_id LIMIT ?5";
const NEXT_VISIBLE: &str = "SELECT min(visible_at) FROM pubsub_deliveries \
     WHERE topic = ?1 AND consumer_group = ?2";
const LEASE: &str = "UPDATE pubsub_deliveries SET visible_at = ?4, attempts = attempts + 1 \
     WHERE topic = ?1 AND consumer_group = ?2 AND message_id = ?3";
const DELETE_DELIVERY: &str = "DELETE FROM pubsub_deliveries \
     WHERE topic = ?1 AND consumer_group = ?2 AND message_id = ?3";
const RELEASE_MESSAGE: &str =
    "UPDATE pubsub_messages SET remaining = remaining - 1 WHERE id = ?1 RETURNING remaining";
const DELETE_MESSAGE: &str = "DELETE FROM pubsub_messages WHERE id = ?1";
/// Moves a lease's end (renewal) or makes it visible later (retry); only the lease holder can.
const SET_VISIBLE: &str = "UPDATE pubsub_deliveries SET visible_at = ?5 \
     WHERE topic = ?1 AND consumer_group = ?2 AND message_id = ?3 AND attempts = ?4";

/// Rows looked at per query while leasing; expired ones are deleted on the way.
const SCAN_BATCH: usize = 64;

/// Milliseconds since the Unix epoch.
pub(super) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// `now + d` in milliseconds, saturating.
pub(super) fn after_ms(now: i64, d: Duration) -> i64 {
    now.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// One message leased to a subscriber.
pub(super) struct Leased {
    pub(super) id: i64,
    /// The lease's token: the attempt number of this delivery (1 for the first).
    pub(super) attempt: i64,
    pub(super) message: Message,
}

/// The outcome of a lease attempt.
pub(super) struct LeaseBatch {
    pub(super) leased: Vec<Leased>,
    /// When nothing was leased: the earliest time (unix ms) a row of the group becomes visible,
    /// `None` when the group has no rows at all.
    pub(super) next_visible: Option<i64>,
}

/// A message as stored, validated before any I/O.
pub(super) struct NewMessage {
    topic: String,
    data: Bytes,
    content_type: Option<String>,
    metadata: Option<String>,
    expires_in: Option<Duration>,
}

impl NewMessage {
    /// Checks `ttlInSeconds` and encodes the metadata.
    pub(super) fn new(req: PublishRequest) -> Result<Self> {
        let expires_in = ttl_from_metadata(&req.metadata)?;
        let metadata = if req.metadata.is_empty() {
            None
        } else {
            Some(serde_json::to_string(&req.metadata).db()?)
        };
        Ok(Self {
            topic: req.topic,
            data: req.data,
            content_type: req.content_type,
            metadata,
            expires_in,
        })
    }

    pub(super) fn topic(&self) -> &str {
        &self.topic
    }
}

/// Stores a message for every group of its topic.
pub(super) fn publish(conn: &Connection, msg: &NewMessage, now: i64) -> Result<()> {
    let groups: i64 = conn
        .prepare_cached(COUNT_GROUPS)
        .db()?
        .query_row(params![msg.topic], |row| row.get(0))
        .db()?;
    if groups == 0 {
        return Ok(());
    }
    let expires_at = msg.expires_in.map(|ttl| after_ms(now, ttl));
    conn.prepare_cached(INSERT_MESSAGE)
        .db()?
        .execute(params![
            msg.topic,
            msg.data.as_ref(),
            msg.content_type,
            msg.metadata,
            now,
            expires_at,
            groups
        ])
        .db()?;
    let id = conn.last_insert_rowid();
    conn.prepare_cached(INSERT_DELIVERIES)
        .db()?
        .execute(params![msg.topic, id])
        .db()?;
    Ok(())
}

/// Records that `group` subscribes to `topic` (from now on it receives every message).
pub(super) fn register_group(conn: &Connection, topic: &str, group: &str) -> Result<()> {
    conn.prepare_cached(INSERT_GROUP)
        .db()?
        .execute(params![topic, group, now_ms()])
        .db()?;
    Ok(())
}

/// Leases up to `max` visible messages of a group for `lease_for`, oldest first, deleting
/// expired ones on the way.
pub(super) fn lease(
    conn: &Connection,
    topic: &str,
    group: &str,
    max: usize,
    lease_for: Duration,
) -> Result<LeaseBatch> {
    let now = now_ms();
    let lease_end = after_ms(now, lease_for);
    let mut leased = Vec::new();
    let mut after_id = 0i64;
    loop {
        let mut rows = Vec::new();
        let mut live = leased.len();
        {
            let mut stmt = conn.prepare_cached(CANDIDATES).db()?;
            let mut query = stmt
                .query(params![topic, group, now, after_id, SCAN_BATCH as i64])
                .db()?;
            while let Some(row) = query.next().db()? {
                let id: i64 = row.get(0).db()?;
                let attempts: i64 = row.get(1).db()?;
                let expires_at: Option<i64> = row.get(2).db()?;
                let expired = expires_at.is_some_and(|at| at <= now);
                let message = if expired {
                    None
                } else {
                    let data = Bytes::copy_from_slice(row.get_ref(3).db()?.as_blob().db()?);
                    let content_type: Option<String> = row.get(4).db()?;
                    let metadata: Option<String> = row.get(5).db()?;
                    let metadata: HashMap<String, String> = match metadata {
                        Some(json) => serde_json::from_str(&json).db()?,
                        None => HashMap::new(),
                    };
                    Some(Message {
                        topic: topic.to_owned(),
                        data,
                        content_type,
                        metadata,
                    })
                };
                live += usize::from(message.is_some());
                rows.push((id, attempts, message));
                if live >= max {
                    break;
                }
            }
        }
        let scanned = rows.len();
        for (id, attempts, message) in rows {
            after_id = id;
            match message {
                None => {
                    finish(conn, topic, group, id)?;
                }
                Some(message) => {
                    conn.prepare_cached(LEASE)
                        .db()?
                        .execute(params![topic, group, id, lease_end])
                        .db()?;
                    leased.push(Leased {
                        id,
                        attempt: attempts + 1,
                        message,
                    });
                }
            }
        }
        if leased.len() >= max || scanned < SCAN_BATCH {
            break;
        }
    }
    let next_visible = if leased.is_empty() {
        conn.prepare_cached(NEXT_VISIBLE)
            .db()?
            .query_row(params![topic, group], |row| row.get(0))
            .optional()
            .db()?
            .flatten()
    } else {
        None
    };
    Ok(LeaseBatch {
        leased,
        next_visible,
    })
}

/// Removes a group's delivery of a message, and the message with its last delivery. Returns
/// whether the delivery existed.
fn finish(conn: &Connection, topic: &str, group: &str, id: i64) -> Result<bool> {
    let deleted = conn
        .prepare_cached(DELETE_DELIVERY)
        .db()?
        .execute(params![topic, group, id])
        .db()?;
    if deleted == 0 {
        return Ok(false);
    }
    let remaining: Option<i64> = conn
        .prepare_cached(RELEASE_MESSAGE)
        .db()?
        .query_row(params![id], |row| row.get(0))
        .optional()
        .db()?;
    if remaining.is_some_and(|n| n <= 0) {
        conn.prepare_cached(DELETE_MESSAGE)
            .db()?
            .execute(params![id])
            .db()?;
    }
    Ok(true)
}

/// Acknowledges a delivery: gone for this group, whoever holds the lease now (the work is done).
pub(super) fn ack(conn: &Connection, topic: &str, group: &str, id: i64) -> Result<()> {
    finish(conn, topic, group, id).map(drop)
}

/// Sets when a leased delivery becomes visible (a renewal or a retry), if `attempt` still holds
/// the lease. Returns whether it did.
pub(super) fn set_visible(
    conn: &Connection,
    topic: &str,
    group: &str,
    id: i64,
    attempt: i64,
    visible_at: i64,
) -> Result<bool> {
    let changed = conn
        .prepare_cached(SET_VISIBLE)
        .db()?
        .execute(params![topic, group, id, attempt, visible_at])
        .db()?;
    Ok(changed > 0)
}

/// Converts backend errors into [`Error::Backend`].
pub(super) trait Db<T> {
    fn db(self) -> Result<T>;
}

impl<T, E: Into<BoxError>> Db<T> for std::result::Result<T, E> {
    fn db(self) -> Result<T> {
        self.map_err(Error::backend)
    }
}
