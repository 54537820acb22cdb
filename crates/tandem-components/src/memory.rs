//! `state.in-memory`: a process-local state store with ETags, TTL and transactions.
//!
//! Keys are spread over independently locked shards, so readers of different keys never
//! contend and no lock is global. Locks are held only for map operations, never across an
//! `.await`. Expired items are invisible at once and are removed lazily: when read, and by a
//! sweep of one shard every few thousand writes (no timer, so an idle sidecar stays idle).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{RwLock, RwLockWriteGuard};
use std::time::{Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::{Error, Result};
use crate::metadata::Metadata;
use crate::query::{Querier, Query, QueryResponse, evaluate};
use crate::state::{
    DeleteRequest, ETag, GetRequest, RequestMetadata, SetRequest, StateFeature, StateItem,
    StateStore, TTL_EXPIRE_TIME_KEY, TransactionOperation, TransactionRequest, Transactional,
    check_etag, format_expire_time, ttl_from_metadata,
};

const SHARDS: usize = 32;
const SWEEP_EVERY_WRITES: u64 = 4096;

#[derive(Clone)]
struct Entry {
    value: Bytes,
    etag: ETag,
    expires: Option<(Instant, SystemTime)>,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|(at, _)| at > now)
    }
}

type Shard = HashMap<String, Entry>;

/// The `state.in-memory` component.
pub struct InMemoryStateStore {
    shards: Box<[RwLock<Shard>]>,
    hasher: RandomState,
    writes: AtomicU64,
}

impl Default for InMemoryStateStore {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            writes: AtomicU64::new(0),
        }
    }
}

impl InMemoryStateStore {
    /// Builds the store. It takes no metadata.
    pub async fn build(_metadata: &Metadata) -> Result<Self> {
        Ok(Self::default())
    }

    fn shard_of(&self, key: &str) -> usize {
        (self.hasher.hash_one(key) as usize) % SHARDS
    }

    fn write_shard(&self, idx: usize) -> RwLockWriteGuard<'_, Shard> {
        // A poisoned lock only means a panic elsewhere; the map itself is still consistent
        // because every mutation is a single insert/remove.
        self.shards[idx]
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn after_write(&self) {
        let n = self.writes.fetch_add(1, Ordering::Relaxed);
        if n % SWEEP_EVERY_WRITES == SWEEP_EVERY_WRITES - 1 {
            let idx = (n / SWEEP_EVERY_WRITES) as usize % SHARDS;
            let now = Instant::now();
            self.write_shard(idx).retain(|_, e| e.live(now));
        }
    }

    fn new_entry(req: &SetRequest) -> Result<Entry> {
        let expires = ttl_from_metadata(&req.metadata)?
            .map(|ttl| (Instant::now() + ttl, SystemTime::now() + ttl));
        Ok(Entry {
            value: req.value.clone(),
            etag: ETag::random(),
            expires,
        })
    }

    fn apply_set(shard: &mut Shard, req: &SetRequest, now: Instant) -> Result<()> {
        let current = shard.get(&req.key).filter(|e| e.live(now));
        check_etag(
            current.map(|e| &e.etag),
            req.etag.as_ref(),
            req.options.concurrency,
        )?;
        let entry = Self::new_entry(req)?;
        shard.insert(req.key.clone(), entry);
        Ok(())
    }

    fn apply_delete(shard: &mut Shard, req: &DeleteRequest, now: Instant) -> Result<()> {
        if req.etag.is_some() {
            let current = shard.get(&req.key).filter(|e| e.live(now));
            check_etag(
                current.map(|e| &e.etag),
                req.etag.as_ref(),
                req.options.concurrency,
            )?;
        }
        shard.remove(&req.key);
        Ok(())
    }
}

#[async_trait]
impl StateStore for InMemoryStateStore {
    fn features(&self) -> &'static [StateFeature] {
        &[StateFeature::ETag, StateFeature::Ttl]
    }

    async fn get(&self, req: GetRequest<'_>) -> Result<Option<StateItem>> {
        let shard = self.shards[self.shard_of(req.key)]
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(entry) = shard.get(req.key) else {
            return Ok(None);
        };
        if !entry.live(Instant::now()) {
            return Ok(None);
        }
        let mut metadata = HashMap::new();
        if let Some((_, at)) = entry.expires {
            metadata.insert(TTL_EXPIRE_TIME_KEY.to_owned(), format_expire_time(at));
        }
        Ok(Some(StateItem {
            value: entry.value.clone(),
            etag: Some(entry.etag.clone()),
            metadata,
        }))
    }

    async fn set(&self, req: SetRequest) -> Result<()> {
        let idx = self.shard_of(&req.key);
        Self::apply_set(&mut self.write_shard(idx), &req, Instant::now())?;
        self.after_write();
        Ok(())
    }

    async fn delete(&self, req: DeleteRequest) -> Result<()> {
        let idx = self.shard_of(&req.key);
        Self::apply_delete(&mut self.write_shard(idx), &req, Instant::now())?;
        self.after_write();
        Ok(())
    }

    fn transactional(&self) -> Option<&dyn Transactional> {
        Some(self)
    }

    fn querier(&self) -> Option<&dyn Querier> {
        Some(self)
    }
}

#[async_trait]
impl Querier for InMemoryStateStore {
    async fn query(&self, query: &Query, _metadata: &RequestMetadata) -> Result<QueryResponse> {
        let now = Instant::now();
        let mut rows = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            rows.extend(
                shard
                    .iter()
                    .filter(|(k, e)| k.starts_with(&query.key_prefix) && e.live(now))
                    .map(|(k, e)| (k.clone(), e.value.clone(), Some(e.etag.clone()))),
            );
        }
        evaluate(query, rows)
    }
}

#[async_trait]
impl Transactional for InMemoryStateStore {
    async fn multi(&self, req: TransactionRequest) -> Result<()> {
        // Lock every shard the transaction touches, in index order (no deadlocks), validate
        // against a scratch copy of the touched entries, then publish all at once.
        let mut idxs: Vec<usize> = req
            .operations
            .iter()
            .map(|op| self.shard_of(op.key()))
            .collect();
        idxs.sort_unstable();
        idxs.dedup();
        let mut guards: Vec<(usize, RwLockWriteGuard<'_, Shard>)> =
            idxs.iter().map(|&i| (i, self.write_shard(i))).collect();
        let now = Instant::now();

        let mut scratch: Shard = HashMap::new();
        for op in &req.operations {
            let key = op.key();
            if !scratch.contains_key(key) {
                let idx = self.shard_of(key);
                let (_, guard) = guards
                    .iter()
                    .find(|(i, _)| *i == idx)
                    .ok_or_else(|| Error::backend("transaction shard not locked"))?;
                if let Some(e) = guard.get(key).filter(|e| e.live(now)) {
                    scratch.insert(key.to_owned(), e.clone());
                }
            }
        }
        let mut touched: Vec<String> = Vec::with_capacity(req.operations.len());
        for op in &req.operations {
            match op {
                TransactionOperation::Upsert(set) => Self::apply_set(&mut scratch, set, now)?,
                TransactionOperation::Delete(del) => Self::apply_delete(&mut scratch, del, now)?,
            }
            touched.push(op.key().to_owned());
        }
        for key in touched {
            let idx = self.shard_of(&key);
            let Some((_, guard)) = guards.iter_mut().find(|(i, _)| *i == idx) else {
                continue;
            };
            match scratch.get(&key) {
                Some(entry) => {
                    guard.insert(key, entry.clone());
                }
                None => {
                    guard.remove(&key);
                }
            }
        }
        drop(guards);
        self.after_write();
        Ok(())
    }
}
