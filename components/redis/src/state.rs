//! `state.redis`: the state store on Redis, in Dapr's storage layout.
//!
//! Layout (shared with Go daprd): each key is a Redis **hash** with the fields `data` (the
//! value's bytes, verbatim) and `version` (the ETag: a decimal integer that `HINCRBY` raises by
//! one on every write). Keys arrive prefixed by the runtime (`<appid>||<key>`). A key holding
//! something other than a hash (for example a plain string written by an old client) reads as
//! its bytes without an ETag and is replaced by the next write, as in Dapr. Dapr's optional
//! `first-write` marker field is left as found, and not written: concurrency is decided per
//! request, as in every Tandem store.
//!
//! Writes and deletes all go through one Lua script ([`WRITE_SCRIPT`], sent with `EVALSHA`,
//! loaded on `NOSCRIPT`) that checks ETags and applies operations atomically on the server:
//! one call per `set`/`delete`, one per transaction (every check passes before the first write,
//! or nothing is written), one per bulk write (in order, stopping at the first failed check).
//! Reads are one pipeline: `HMGET data version` plus `PTTL` per key, so a bulk get is one round
//! trip.
//!
//! ETags: an ETag that is not an integer is [`Error::ETagInvalid`]; a write or delete with an
//! ETag succeeds only when the key exists with exactly that version, otherwise
//! [`Error::ETagMismatch`]. `first-write` without an ETag only creates. An empty ETag counts as
//! none.
//!
//! TTL: request metadata `ttlInSeconds` (else the component's `ttlInSeconds`): positive ⇒
//! `EXPIRE`, zero or negative (`-1`) ⇒ `PERSIST`, not an integer ⇒ [`Error::InvalidRequest`].
//! Without either, a write keeps the key's current expiry. Reads report `ttlExpireTime`
//! (RFC 3339, whole seconds) for keys with an expiry.
//!
//! Consistency: `strong` and `eventual` are accepted and behave alike. Reads and writes go to
//! the master; a write is not followed by `WAIT` for replicas (Dapr's store issues one when
//! replicas are attached), so a failover may lose the last acknowledged writes.
//!
//! Cluster mode: a script or pipeline may only touch keys of one hash slot. Reads and bulk
//! writes are split per slot (bulk writes keep their order); a transaction whose keys span
//! several slots is refused before anything is written — put a hash tag (`{order-7}`) in keys
//! that must change together.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use redis::cluster_routing::Slot;
use redis::{Pipeline, RedisResult, Script, Value};
use tandem_components::state::{
    BulkGetItem, DeleteRequest, GetRequest, RequestMetadata, SetRequest, StateFeature, StateItem,
    StateStore, TTL_EXPIRE_TIME_KEY, TTL_METADATA_KEY, TransactionOperation, TransactionRequest,
    Transactional, format_expire_time,
};
use tandem_components::state::{Concurrency, ETag};
use tandem_components::{Error, Metadata, Result};

use crate::client::{Client, Idempotence};
use crate::metadata::{MAX_TTL_SECONDS, RedisMetadata};
use crate::reads::Reads;

/// The one write script: ETag checks and writes for a list of operations.
///
/// `KEYS[i]` is the key of operation `i`. `ARGV[1]` is `"1"` for all-or-nothing (every check
/// runs, against the versions earlier operations of the list will have produced, before the
/// first write) or `"0"` for in-order (check, write, next; stop at the first failed check,
/// earlier writes stay). Then five arguments per operation: kind (`s` set, `d` delete), ETag
/// (`""` for none, else the decimal version), first-write (`"1"`/`"0"`), TTL (`""` leave the
/// expiry alone, `"0"` `PERSIST`, else seconds to `EXPIRE`) and the value. Returns `0`, the
/// 1-based index of the operation whose check failed, or minus the index of a write that found
/// a `version` field that is not an integer (nothing of that operation, nor in all-or-nothing
/// mode of any other, is written: the checks keep the script from failing half-way).
pub const WRITE_SCRIPT: &str = r#"
local atomic = ARGV[1] == "1"
local function at(i) return 2 + (i - 1) * 5 end
local function version(key)
  local v = redis.pcall("HGET", key, "version")
  if type(v) ~= "string" then return false end
  return v
end
local function corrupt(i, current)
  return ARGV[at(i)] == "s" and current and not string.match(current, "^%-?%d+$")
end
local function allowed(i, current)
  local a = at(i)
  if ARGV[a + 1] ~= "" then return current == ARGV[a + 1] end
  if ARGV[a] == "s" and ARGV[a + 2] == "1" then return current == false end
  return true
end
local function apply(i)
  local key, a = KEYS[i], at(i)
  if ARGV[a] == "d" then
    redis.call("DEL", key)
    return
  end
  if type(redis.pcall("HSET", key, "data", ARGV[a + 4])) ~= "number" then
    redis.call("DEL", key)
    redis.call("HSET", key, "data", ARGV[a + 4])
  end
  redis.call("HINCRBY", key, "version", 1)
  local ttl = ARGV[a + 3]
  if ttl == "0" then
    redis.call("PERSIST", key)
  elseif ttl ~= "" then
    redis.call("EXPIRE", key, ttl)
  end
end
if atomic then
  local seen = {}
  for i = 1, #KEYS do
    local key = KEYS[i]
    local current = seen[key]
    if current == nil then current = version(key) end
    if corrupt(i, current) then return -i end
    if not allowed(i, current) then return i end
    if ARGV[at(i)] == "s" then
      seen[key] = tostring((tonumber(current) or 0) + 1)
    else
      seen[key] = false
    end
  end
end
for i = 1, #KEYS do
  if not atomic then
    local current = version(KEYS[i])
    if corrupt(i, current) then return -i end
    if not allowed(i, current) then return i end
  end
  apply(i)
end
return 0
"#;

/// The `state.redis` component.
///
/// Built with [`RedisStateStore::build`]; features `ETAG` and `TTL`, plus transactions. No
/// query API (Dapr's needs the RediSearch module). See the [module docs](self) for the storage
/// layout and semantics, and [`RedisMetadata`] for the settings.
pub struct RedisStateStore {
    client: Client,
    /// The connection of its own for reads, on a plain-TCP single node.
    reads: Option<Reads>,
    default_ttl: Option<i64>,
    script: Script,
}

impl fmt::Debug for RedisStateStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStateStore")
            .field("client", &self.client)
            .field("default_ttl", &self.default_ttl)
            .finish_non_exhaustive()
    }
}

impl RedisStateStore {
    /// Decodes and validates the metadata (see [`RedisMetadata`]) and prepares the connection
    /// without opening it: building succeeds while Redis is down, calls then fail with
    /// [`Error::Backend`] until it answers, and the store recovers by itself.
    pub async fn build(metadata: &Metadata) -> Result<Self> {
        let settings = RedisMetadata::from_metadata(metadata)?;
        let client = Client::new(&settings)?;
        tracing::debug!(component = %metadata.name, mode = ?settings.redis_type, sentinel = settings.failover, tls = settings.enable_tls, "state.redis ready");
        Ok(Self {
            client,
            reads: Reads::new(&settings),
            default_ttl: settings.default_ttl,
            script: Script::new(WRITE_SCRIPT),
        })
    }

    /// A write as a script operation.
    fn set_op<'a>(&self, req: &'a SetRequest) -> Result<Op<'a>> {
        Ok(Op {
            key: &req.key,
            delete: false,
            etag: etag_arg(req.etag.as_ref())?,
            first_write: req.options.concurrency == Concurrency::FirstWrite,
            ttl: request_ttl(&req.metadata)?.or(self.default_ttl),
            data: &req.value,
        })
    }

    /// Runs operations through the write script: `atomic` all-or-nothing, else in order
    /// stopping at the first failed check.
    async fn write(&self, what: &'static str, ops: &[Op<'_>], atomic: bool) -> Result<()> {
        if ops.is_empty() {
            return Ok(());
        }
        if !self.client.is_cluster() {
            return self.write_group(what, ops, atomic).await;
        }
        let slot = |op: &Op<'_>| Slot::for_key(op.key);
        if atomic {
            let first = slot(&ops[0]);
            if ops.iter().any(|op| slot(op) != first) {
                return Err(Error::InvalidRequest(
                    "in Redis Cluster mode the keys of a transaction must share a hash slot; \
                     put the same hash tag (for example {order-7}) in every key"
                        .into(),
                ));
            }
            return self.write_group(what, ops, true).await;
        }
        // In order: one script per run of consecutive operations on the same slot.
        let mut start = 0;
        while start < ops.len() {
            let here = slot(&ops[start]);
            let end = ops[start..]
                .iter()
                .position(|op| slot(op) != here)
                .map_or(ops.len(), |n| start + n);
            self.write_group(what, &ops[start..end], false).await?;
            start = end;
        }
        Ok(())
    }

    /// One script call.
    async fn write_group(&self, what: &'static str, ops: &[Op<'_>], atomic: bool) -> Result<()> {
        let mut call = self.script.prepare_invoke();
        call.arg(if atomic { "1" } else { "0" });
        for op in ops {
            let ttl = match op.ttl {
                None => String::new(),
                Some(secs) if secs <= 0 => "0".to_owned(),
                Some(secs) => secs.to_string(),
            };
            call.key(op.key)
                .arg(if op.delete { "d" } else { "s" })
                .arg(op.etag.as_deref().unwrap_or(""))
                .arg(if op.first_write { "1" } else { "0" })
                .arg(ttl)
                .arg(op.data);
        }
        let call = &call;
        let failed: i64 = self
            .client
            .run(what, Idempotence::Write, |mut conn| async move {
                call.invoke_async(&mut conn).await
            })
            .await?;
        match failed {
            0 => Ok(()),
            n if n < 0 => Err(Error::backend(
                "the key's version field is not an integer; it was not written by a state store",
            )),
            _ => Err(Error::ETagMismatch),
        }
    }

    /// Reads keys: one pipeline per hash slot (one in all for a single node). The outer error
    /// is a failed round trip; inner errors are per key.
    async fn read(&self, what: &'static str, keys: &[&str]) -> Result<Vec<KeyRead>> {
        let mut out: Vec<KeyRead> = Vec::with_capacity(keys.len());
        if self.client.is_cluster() {
            let mut groups: HashMap<Slot, Vec<usize>> = HashMap::new();
            let mut order = Vec::new();
            for (i, key) in keys.iter().enumerate() {
                let slot = Slot::for_key(key);
                groups
                    .entry(slot)
                    .or_insert_with(|| {
                        order.push(slot);
                        Vec::new()
                    })
                    .push(i);
            }
            out.resize_with(keys.len(), || Ok(None));
            for slot in order {
                let idx = &groups[&slot];
                let group: Vec<&str> = idx.iter().map(|&i| keys[i]).collect();
                for (i, read) in idx.iter().zip(self.read_group(what, &group).await?) {
                    out[*i] = read;
                }
            }
        } else {
            let lean = match &self.reads {
                Some(reads) if !keys.is_empty() => reads.read(what, keys).await,
                _ => None,
            };
            out = match lean {
                Some(reads) => reads?,
                None => self.read_group(what, keys).await?,
            };
        }
        // Keys that are not hashes: Dapr's fallback to a plain GET (rare, so not batched).
        for (i, key) in keys.iter().enumerate() {
            if matches!(&out[i], Err(ReadError::NotAHash)) {
                out[i] = self.read_plain(what, key).await?;
            }
        }
        Ok(out)
    }

    /// One pipeline: `HMGET key data version` and `PTTL key` for each key.
    async fn read_group(&self, what: &'static str, keys: &[&str]) -> Result<Vec<KeyRead>> {
        let mut pipe = Pipeline::with_capacity(keys.len() * 2);
        pipe.ignore_errors();
        for key in keys {
            pipe.cmd("HMGET").arg(*key).arg("data").arg("version");
            pipe.cmd("PTTL").arg(*key);
        }
        let pipe = &pipe;
        let replies: Vec<RedisResult<Value>> = self
            .client
            .run(what, Idempotence::Read, |mut conn| async move {
                pipe.query_async(&mut conn).await
            })
            .await?;
        let now = SystemTime::now();
        let mut replies = replies.into_iter();
        let mut out = Vec::with_capacity(keys.len());
        for _ in keys {
            let (Some(fields), Some(pttl)) = (replies.next(), replies.next()) else {
                return Err(Error::backend("redis answered fewer replies than commands"));
            };
            out.push(match fields {
                Ok(fields) => hash_item(fields, pttl, now),
                Err(e) if e.code() == Some("WRONGTYPE") => Err(ReadError::NotAHash),
                Err(e) => Err(ReadError::Other(e.to_string())),
            });
        }
        Ok(out)
    }

    /// A key that is not a hash: its bytes (if a string) without an ETag.
    async fn read_plain(&self, what: &'static str, key: &str) -> Result<KeyRead> {
        let mut pipe = Pipeline::with_capacity(2);
        pipe.ignore_errors();
        pipe.cmd("GET").arg(key).cmd("PTTL").arg(key);
        let pipe = &pipe;
        let replies: Vec<RedisResult<Value>> = self
            .client
            .run(what, Idempotence::Read, |mut conn| async move {
                pipe.query_async(&mut conn).await
            })
            .await?;
        let mut replies = replies.into_iter();
        let (Some(value), Some(pttl)) = (replies.next(), replies.next()) else {
            return Err(Error::backend("redis answered fewer replies than commands"));
        };
        Ok(match value {
            Ok(Value::BulkString(bytes)) => Ok(Some(StateItem {
                value: Bytes::from(bytes),
                etag: None,
                metadata: expiry_metadata(pttl_ms(pttl), SystemTime::now()),
            })),
            Ok(Value::Nil) => Ok(None),
            Ok(_) => Err(ReadError::Other(
                "the key holds neither a state hash nor a string".into(),
            )),
            Err(e) => Err(ReadError::Other(e.to_string())),
        })
    }
}

/// One operation for [`WRITE_SCRIPT`].
struct Op<'a> {
    key: &'a str,
    delete: bool,
    /// The normalised decimal version, when the request had an ETag.
    etag: Option<String>,
    first_write: bool,
    /// Seconds; `None` leaves the key's expiry as it is.
    ttl: Option<i64>,
    data: &'a [u8],
}

fn delete_op(req: &DeleteRequest) -> Result<Op<'_>> {
    Ok(Op {
        key: &req.key,
        delete: true,
        etag: etag_arg(req.etag.as_ref())?,
        first_write: false,
        ttl: None,
        data: &[],
    })
}

/// An ETag must be the integer version; empty means none.
fn etag_arg(etag: Option<&ETag>) -> Result<Option<String>> {
    match etag.map(ETag::as_str).filter(|e| !e.is_empty()) {
        None => Ok(None),
        Some(text) => text
            .parse::<i64>()
            .map(|v| Some(v.to_string()))
            .map_err(|_| Error::ETagInvalid("state.redis etags are integer versions".into())),
    }
}

/// `ttlInSeconds` from request metadata: any integer (positive expires, zero or negative
/// persists); empty means unset.
fn request_ttl(metadata: &RequestMetadata) -> Result<Option<i64>> {
    let Some(raw) = metadata
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(TTL_METADATA_KEY))
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
    else {
        return Ok(None);
    };
    let secs: i64 = raw.parse().map_err(|_| {
        Error::InvalidRequest(format!(
            "incorrect value for metadata '{TTL_METADATA_KEY}': expected an integer number of seconds"
        ))
    })?;
    check_ttl(secs).map(Some)
}

fn check_ttl(secs: i64) -> Result<i64> {
    if secs > MAX_TTL_SECONDS {
        return Err(Error::InvalidRequest(format!(
            "incorrect value for metadata '{TTL_METADATA_KEY}': at most {MAX_TTL_SECONDS} seconds"
        )));
    }
    Ok(secs)
}

/// What reading one key gave.
pub(crate) type KeyRead = std::result::Result<Option<StateItem>, ReadError>;

/// Why one key of a read failed.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// `WRONGTYPE`: the key is not a hash (answered by a plain `GET`).
    NotAHash,
    /// Anything else, reported for that key.
    Other(String),
}

impl ReadError {
    fn into_error(self) -> Error {
        match self {
            ReadError::NotAHash => Error::backend("the key is not a state hash"),
            ReadError::Other(text) => Error::backend(text),
        }
    }

    fn into_message(self) -> String {
        self.into_error().to_string()
    }
}

/// A state item from the `HMGET data version` and `PTTL` replies.
fn hash_item(fields: Value, pttl: RedisResult<Value>, now: SystemTime) -> KeyRead {
    let Value::Array(fields) = fields else {
        return Err(ReadError::Other("unexpected reply to HMGET".into()));
    };
    let field = |v: Option<Value>| match v {
        Some(Value::Nil) => Ok(None),
        Some(Value::BulkString(bytes)) => Ok(Some(bytes)),
        _ => Err(ReadError::Other(MISSING_FIELD.into())),
    };
    let mut fields = fields.into_iter();
    let (data, version) = (field(fields.next())?, field(fields.next())?);
    state_item(
        data.map(Bytes::from),
        version.as_deref(),
        pttl_ms(pttl),
        now,
    )
}

const MISSING_FIELD: &str = "required hash field 'data' or 'version' was not found";

/// The item of a state hash from its `data` and `version` fields (each nil or bytes) and its
/// `PTTL` (milliseconds): none when both are nil, an error when only one is.
pub(crate) fn state_item(
    data: Option<Bytes>,
    version: Option<&[u8]>,
    pttl: Option<i64>,
    now: SystemTime,
) -> KeyRead {
    match (data, version) {
        (None, None) => Ok(None),
        (Some(data), Some(version)) => {
            let version = std::str::from_utf8(version)
                .map_err(|_| ReadError::Other("the version field is not text".into()))?;
            Ok(Some(StateItem {
                value: data,
                etag: Some(ETag::from(version.to_owned())),
                metadata: expiry_metadata(pttl, now),
            }))
        }
        _ => Err(ReadError::Other(MISSING_FIELD.into())),
    }
}

/// The milliseconds of a `PTTL` reply, if it is a number.
fn pttl_ms(pttl: RedisResult<Value>) -> Option<i64> {
    match pttl {
        Ok(Value::Int(ms)) => Some(ms),
        _ => None,
    }
}

/// `ttlExpireTime` when `PTTL` reported an expiry (`pttl` milliseconds, negative for none);
/// whole seconds, as Dapr formats it.
pub(crate) fn expiry_metadata(pttl: Option<i64>, now: SystemTime) -> HashMap<String, String> {
    let mut metadata = HashMap::new();
    if let Some(ms) = pttl
        && let Ok(ms) = u64::try_from(ms)
    {
        let at = now + Duration::from_millis(ms);
        let secs = at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        metadata.insert(
            TTL_EXPIRE_TIME_KEY.to_owned(),
            format_expire_time(UNIX_EPOCH + Duration::from_secs(secs)),
        );
    }
    metadata
}

#[async_trait]
impl StateStore for RedisStateStore {
    fn features(&self) -> &'static [StateFeature] {
        &[StateFeature::ETag, StateFeature::Ttl]
    }

    async fn get(&self, req: GetRequest<'_>) -> Result<Option<StateItem>> {
        let mut reads = self.read("get", &[req.key]).await?;
        reads
            .pop()
            .unwrap_or(Ok(None))
            .map_err(ReadError::into_error)
    }

    async fn set(&self, req: SetRequest) -> Result<()> {
        let op = self.set_op(&req)?;
        self.write("set", &[op], true).await
    }

    async fn delete(&self, req: DeleteRequest) -> Result<()> {
        let op = delete_op(&req)?;
        self.write("delete", &[op], true).await
    }

    /// One pipelined round trip (per hash slot in cluster mode).
    async fn bulk_get(
        &self,
        keys: &[String],
        _metadata: &RequestMetadata,
    ) -> Result<Vec<BulkGetItem>> {
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let reads = self.read("bulk get", &refs).await?;
        Ok(keys
            .iter()
            .zip(reads)
            .map(|(key, read)| {
                let (item, error) = match read {
                    Ok(item) => (item, None),
                    Err(e) => (None, Some(e.into_message())),
                };
                BulkGetItem {
                    key: key.clone(),
                    item,
                    error,
                }
            })
            .collect())
    }

    /// One script call: writes apply in order and stop at the first failed check, the ones
    /// before it stay (the contract's semantics). Malformed ETags or TTLs are reported before
    /// anything is sent.
    async fn bulk_set(&self, reqs: Vec<SetRequest>) -> Result<()> {
        let ops = reqs
            .iter()
            .map(|r| self.set_op(r))
            .collect::<Result<Vec<_>>>()?;
        self.write("bulk set", &ops, false).await
    }

    /// Like [`Self::bulk_set`].
    async fn bulk_delete(&self, reqs: Vec<DeleteRequest>) -> Result<()> {
        let ops = reqs.iter().map(delete_op).collect::<Result<Vec<_>>>()?;
        self.write("bulk delete", &ops, false).await
    }

    fn transactional(&self) -> Option<&dyn Transactional> {
        Some(self)
    }

    /// Sends `PING`.
    async fn ping(&self) -> Result<()> {
        let _: String = self
            .client
            .run("ping", Idempotence::Read, |mut conn| async move {
                redis::cmd("PING").query_async(&mut conn).await
            })
            .await?;
        Ok(())
    }
}

/// A transaction is one script call: every ETag check passes before the first write, or
/// nothing is written.
#[async_trait]
impl Transactional for RedisStateStore {
    async fn multi(&self, req: TransactionRequest) -> Result<()> {
        let ops = req
            .operations
            .iter()
            .map(|op| match op {
                TransactionOperation::Upsert(set) => self.set_op(set),
                TransactionOperation::Delete(del) => delete_op(del),
            })
            .collect::<Result<Vec<_>>>()?;
        self.write("transaction", &ops, true).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_are_integers() {
        assert_eq!(etag_arg(None).unwrap(), None);
        assert_eq!(etag_arg(Some(&ETag::from(""))).unwrap(), None);
        assert_eq!(
            etag_arg(Some(&ETag::from("7"))).unwrap().as_deref(),
            Some("7")
        );
        assert_eq!(
            etag_arg(Some(&ETag::from("+07"))).unwrap().as_deref(),
            Some("7")
        );
        assert!(matches!(
            etag_arg(Some(&ETag::from("a1b2"))),
            Err(Error::ETagInvalid(_))
        ));
    }

    #[test]
    fn request_ttls() {
        let mut m = RequestMetadata::new();
        assert_eq!(request_ttl(&m).unwrap(), None);
        m.insert("TTLInSeconds".into(), " 30 ".into());
        assert_eq!(request_ttl(&m).unwrap(), Some(30));
        m.insert("TTLInSeconds".into(), "-1".into());
        assert_eq!(request_ttl(&m).unwrap(), Some(-1));
        m.insert("TTLInSeconds".into(), "".into());
        assert_eq!(request_ttl(&m).unwrap(), None);
        m.insert("TTLInSeconds".into(), "1.5".into());
        assert!(matches!(request_ttl(&m), Err(Error::InvalidRequest(_))));
        m.insert("TTLInSeconds".into(), i64::MAX.to_string());
        assert!(matches!(request_ttl(&m), Err(Error::InvalidRequest(_))));
    }

    #[test]
    fn items_from_replies() {
        let now = UNIX_EPOCH + Duration::from_millis(1_700_000_000_250);
        let fields = |d: Value, v: Value| Value::Array(vec![d, v]);
        let none = hash_item(fields(Value::Nil, Value::Nil), Ok(Value::Int(-2)), now);
        assert!(matches!(none, Ok(None)));
        let item = hash_item(
            fields(
                Value::BulkString(b"{\"a\":1}".to_vec()),
                Value::BulkString(b"3".to_vec()),
            ),
            Ok(Value::Int(1_500)),
            now,
        )
        .ok()
        .flatten()
        .expect("an item");
        assert_eq!(item.value.as_ref(), b"{\"a\":1}");
        assert_eq!(item.etag, Some(ETag::from("3")));
        assert_eq!(
            item.metadata.get(TTL_EXPIRE_TIME_KEY).map(String::as_str),
            Some("2023-11-14T22:13:21Z")
        );
        let persistent = hash_item(
            fields(
                Value::BulkString(b"1".to_vec()),
                Value::BulkString(b"1".to_vec()),
            ),
            Ok(Value::Int(-1)),
            now,
        )
        .ok()
        .flatten()
        .unwrap();
        assert!(persistent.metadata.is_empty());
        let half = hash_item(
            fields(Value::BulkString(b"1".to_vec()), Value::Nil),
            Ok(Value::Int(-1)),
            now,
        );
        assert!(matches!(half, Err(ReadError::Other(_))));
    }
}
