//! In-memory `Storage`, `Lock` and change feed: for unit tests and single-process use.
//! Not durable; not shared between processes.

use crate::clock::{Clock, SystemClock};
use crate::ring::{Ring, RingName};
use crate::storage::{
    AuditLinker, AuditQuery, AuditRecord, ChangeCursor, ChangeFeed, ChangeStream, Commit, CommitOutcome, FeedEvent,
    IdempotencyRecord, Lock, LockGuard, RingChanges, RingEntry, RingEvent, RingStorage, RingsFeed, RingsStream,
    Storage, StorageError,
};
use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::broadcast;

#[derive(Debug, Default)]
struct RingData {
    generation: u64,
    keys: Vec<crate::ring::KeyRecord>,
    manifest: Option<String>,
    audit: Vec<AuditRecord>,
    /// The newest chained record's seq and MAC.
    /// The chain head: the highest position, and its MAC (none if a record there lacks
    /// one — the chain verifier then reports it).
    head: Option<(u64, Option<String>)>,
    idempotency: HashMap<String, IdempotencyRecord>,
    next_due: Option<DateTime<Utc>>,
    /// The store's commit count when the ring was last committed to.
    changed: i64,
}

#[derive(Debug)]
struct Inner {
    rings: HashMap<RingName, RingData>,
    feeds: HashMap<RingName, broadcast::Sender<u64>>,
    /// Every commit, for the feed over all rings.
    all: broadcast::Sender<(RingName, u64)>,
    /// The next-due index: (time, ring) for every ring with a next-due time.
    due: BTreeSet<(DateTime<Utc>, RingName)>,
    /// Commits so far (the cursor of `rings_changed_since`).
    commits: i64,
    /// Wrapped master keys, oldest first.
    master_keys: Vec<crate::custody::StoredMasterKey>,
}

impl Inner {
    /// Sets `ring`'s next-due time, keeping the index in step.
    fn set_next_due(&mut self, ring: &RingName, next_due: Option<DateTime<Utc>>) {
        let data = self.rings.entry(ring.clone()).or_default();
        if let Some(old) = std::mem::replace(&mut data.next_due, next_due) {
            self.due.remove(&(old, ring.clone()));
        }
        if let Some(at) = next_due {
            self.due.insert((at, ring.clone()));
        }
    }
}

/// The raw stored state of one ring, for [`MemoryStorage::tamper`].
#[cfg(feature = "test-util")]
#[derive(Debug)]
pub struct RawRing<'a> {
    /// The ring's generation.
    pub generation: &'a mut u64,
    /// Its key rows.
    pub keys: &'a mut Vec<crate::ring::KeyRecord>,
    /// Its manifest.
    pub manifest: &'a mut Option<String>,
    /// Its audit ledger, oldest first.
    pub audit: &'a mut Vec<AuditRecord>,
}

/// In-memory storage. Cheap to clone; clones share data.
#[derive(Debug, Clone)]
pub struct MemoryStorage {
    inner: Arc<Mutex<Inner>>,
}

impl Default for MemoryStorage {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStorage {
    /// An empty store.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                rings: HashMap::new(),
                feeds: HashMap::new(),
                all: broadcast::channel(1024).0,
                due: BTreeSet::new(),
                commits: 0,
                master_keys: Vec::new(),
            })),
        }
    }

    /// Edits the stored rows of `ring` directly, as someone with write access to the
    /// database but without the master key could: for tests of the integrity checks.
    /// No change is announced on the change feed.
    #[cfg(feature = "test-util")]
    pub fn tamper<T>(&self, ring: &RingName, f: impl FnOnce(RawRing<'_>) -> T) -> T {
        let mut g = self.lock();
        let data = g.rings.entry(ring.clone()).or_default();
        let out = f(RawRing {
            generation: &mut data.generation,
            keys: &mut data.keys,
            manifest: &mut data.manifest,
            audit: &mut data.audit,
        });
        data.head = data
            .audit
            .iter()
            .filter(|r| r.seq > 0)
            .map(|r| (r.seq, r.mac.clone()))
            .max_by_key(|(s, _)| *s);
        out
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Appends `audit` to the ring's chain.
fn append_audit(data: &mut RingData, audit: &AuditRecord, linker: &dyn AuditLinker) -> Result<(), StorageError> {
    let (seq, prev) = data.head.as_ref().map_or((1, None), |(s, m)| (s + 1, m.as_deref()));
    let mut rec = audit.clone();
    let mac = linker.link(&rec, seq, prev)?;
    rec.mac = Some(mac.clone());
    rec.seq = seq;
    data.audit.push(rec);
    data.head = Some((seq, Some(mac)));
    Ok(())
}

fn insert_idempotency(data: &mut RingData, idem: Option<&IdempotencyRecord>) {
    if let Some(i) = idem {
        data.idempotency.entry(i.key.clone()).or_insert_with(|| i.clone());
    }
}

#[async_trait]
impl Storage for MemoryStorage {
    async fn load(&self, ring: &RingName) -> Result<Ring, StorageError> {
        let g = self.lock();
        Ok(match g.rings.get(ring) {
            Some(d) => Ring {
                name: ring.clone(),
                generation: d.generation,
                keys: d.keys.clone(),
                manifest: d.manifest.clone(),
            },
            None => Ring::empty(ring.clone()),
        })
    }

    async fn load_public(&self, ring: &RingName) -> Result<Ring, StorageError> {
        let g = self.lock();
        Ok(match g.rings.get(ring) {
            Some(d) => Ring {
                name: ring.clone(),
                generation: d.generation,
                keys: d
                    .keys
                    .iter()
                    .map(|k| crate::ring::KeyRecord {
                        kid: k.kid.clone(),
                        alg: k.alg,
                        state: k.state,
                        origin: k.origin,
                        forced: k.forced,
                        fingerprint: k.fingerprint.clone(),
                        public_jwk: k.public_jwk.clone(),
                        // The sealed blob is never copied out.
                        sealed: None,
                        remote: k.remote.clone(),
                        created_at: k.created_at,
                        activate_at: k.activate_at,
                        activated_at: k.activated_at,
                        retired_at: k.retired_at,
                        expires_at: k.expires_at,
                        expired_at: k.expired_at,
                        revoked_at: k.revoked_at,
                        revoke_reason: k.revoke_reason.clone(),
                        purged_at: k.purged_at,
                    })
                    .collect(),
                manifest: d.manifest.clone(),
            },
            None => Ring::empty(ring.clone()),
        })
    }

    async fn generation(&self, ring: &RingName) -> Result<u64, StorageError> {
        Ok(self.lock().rings.get(ring).map_or(0, |d| d.generation))
    }

    async fn commit(&self, commit: &Commit, linker: &dyn AuditLinker) -> Result<CommitOutcome, StorageError> {
        let foreign = commit.audit.ring != commit.ring.as_str()
            || commit
                .idempotency
                .as_ref()
                .is_some_and(|i| i.ring != commit.ring.as_str());
        if foreign {
            return Err(StorageError::Corrupt(format!(
                "commit to ring {:?} carries a record of another ring; nothing was written",
                commit.ring.as_str()
            )));
        }
        let mut g = self.lock();
        let data = g.rings.entry(commit.ring.clone()).or_default();
        if data.generation != commit.expected_generation {
            return Ok(CommitOutcome::Conflict {
                current: data.generation,
            });
        }
        if let Some(i) = &commit.idempotency
            && data.idempotency.contains_key(&i.key)
        {
            // Another request with this key committed first: treat as a lost race.
            return Ok(CommitOutcome::Conflict {
                current: data.generation,
            });
        }
        append_audit(data, &commit.audit, linker)?;
        for k in &commit.keys {
            match data.keys.iter_mut().find(|e| e.kid == k.kid) {
                Some(existing) => *existing = k.clone(),
                None => data.keys.push(k.clone()),
            }
        }
        data.generation = commit.audit.generation;
        data.manifest = Some(commit.manifest.clone());
        let generation = data.generation;
        insert_idempotency(data, commit.idempotency.as_ref());
        g.set_next_due(&commit.ring, commit.next_due);
        g.commits += 1;
        let commits = g.commits;
        g.rings.entry(commit.ring.clone()).or_default().changed = commits;
        if let Some(tx) = g.feeds.get(&commit.ring) {
            let _ = tx.send(generation);
        }
        let _ = g.all.send((commit.ring.clone(), generation));
        Ok(CommitOutcome::Committed)
    }

    async fn record_attempt(
        &self,
        audit: &AuditRecord,
        idempotency: Option<&IdempotencyRecord>,
        linker: &dyn AuditLinker,
    ) -> Result<(), StorageError> {
        let ring = RingName::new(audit.ring.clone()).map_err(|e| StorageError::Corrupt(e.to_string()))?;
        let mut g = self.lock();
        let data = g.rings.entry(ring).or_default();
        append_audit(data, audit, linker)?;
        insert_idempotency(data, idempotency);
        Ok(())
    }

    async fn audit_log(&self, ring: &RingName, query: AuditQuery) -> Result<Vec<AuditRecord>, StorageError> {
        let g = self.lock();
        Ok(g.rings
            .get(ring)
            .map(|d| d.audit.iter().rev().take(query.limit).cloned().collect())
            .unwrap_or_default())
    }

    async fn idempotency(&self, ring: &RingName, key: &str) -> Result<Option<IdempotencyRecord>, StorageError> {
        Ok(self
            .lock()
            .rings
            .get(ring)
            .and_then(|d| d.idempotency.get(key).cloned()))
    }
}

#[async_trait]
impl RingStorage for MemoryStorage {
    async fn due_rings(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<RingName>, StorageError> {
        let g = self.lock();
        Ok(g.due
            .iter()
            .take_while(|(at, _)| *at <= now)
            .take(limit)
            .map(|(_, r)| r.clone())
            .collect())
    }

    async fn reschedule(
        &self,
        ring: &RingName,
        generation: u64,
        next_due: Option<DateTime<Utc>>,
    ) -> Result<bool, StorageError> {
        let mut g = self.lock();
        if g.rings.get(ring).is_none_or(|d| d.generation != generation) {
            return Ok(false);
        }
        g.set_next_due(ring, next_due);
        Ok(true)
    }

    async fn list_rings(&self, after: Option<&RingName>, limit: usize) -> Result<Vec<RingEntry>, StorageError> {
        let g = self.lock();
        let mut out: Vec<RingEntry> = g
            .rings
            .iter()
            .filter(|(name, _)| after.is_none_or(|a| name.as_str() > a.as_str()))
            .map(|(name, d)| RingEntry {
                name: name.clone(),
                generation: d.generation,
                next_due: d.next_due,
            })
            .collect();
        out.sort_by(|a, b| a.name.as_str().cmp(b.name.as_str()));
        out.truncate(limit);
        Ok(out)
    }

    async fn rings_changed_since(&self, since: Option<ChangeCursor>) -> Result<RingChanges, StorageError> {
        let g = self.lock();
        let after = since.map_or(i64::MIN, |c| c.0);
        let rings = g
            .rings
            .iter()
            .filter(|(_, d)| d.changed > after)
            .map(|(name, d)| RingEntry {
                name: name.clone(),
                generation: d.generation,
                next_due: d.next_due,
            })
            .collect();
        Ok(RingChanges {
            rings,
            cursor: ChangeCursor(g.commits),
        })
    }
}

#[derive(Debug)]
struct MemoryRingsStream {
    rx: broadcast::Receiver<(RingName, u64)>,
}

#[async_trait]
impl RingsStream for MemoryRingsStream {
    async fn next(&mut self) -> Result<RingEvent, StorageError> {
        match self.rx.recv().await {
            Ok((ring, generation)) => Ok(RingEvent::Changed { ring, generation }),
            Err(broadcast::error::RecvError::Lagged(_)) => Ok(RingEvent::Resync),
            Err(broadcast::error::RecvError::Closed) => Err(StorageError::Unavailable {
                message: "memory feed closed".into(),
                source: None,
            }),
        }
    }
}

#[async_trait]
impl RingsFeed for MemoryStorage {
    async fn subscribe_all(&self) -> Result<Box<dyn RingsStream>, StorageError> {
        Ok(Box::new(MemoryRingsStream {
            rx: self.lock().all.subscribe(),
        }))
    }
}

#[derive(Debug)]
struct MemoryStream {
    rx: broadcast::Receiver<u64>,
}

#[async_trait]
impl ChangeStream for MemoryStream {
    async fn next(&mut self) -> Result<FeedEvent, StorageError> {
        match self.rx.recv().await {
            Ok(g) => Ok(FeedEvent::Changed(g)),
            Err(broadcast::error::RecvError::Lagged(_)) => Ok(FeedEvent::Resync),
            Err(broadcast::error::RecvError::Closed) => Err(StorageError::Unavailable {
                message: "memory feed closed".into(),
                source: None,
            }),
        }
    }
}

#[async_trait]
impl ChangeFeed for MemoryStorage {
    async fn subscribe(&self, ring: &RingName) -> Result<Box<dyn ChangeStream>, StorageError> {
        let mut g = self.lock();
        let tx = g.feeds.entry(ring.clone()).or_insert_with(|| broadcast::channel(64).0);
        Ok(Box::new(MemoryStream { rx: tx.subscribe() }))
    }
}

/// Held leases: ring → (guard token, lease end).
type Leases = Arc<Mutex<HashMap<RingName, (u64, DateTime<Utc>)>>>;

/// In-memory rotation lock with a lease: a holder that never releases loses it after
/// its ttl, measured on the injected clock.
#[derive(Debug, Clone)]
pub struct MemoryLock {
    held: Leases,
    clock: Arc<dyn Clock>,
    next_token: Arc<std::sync::atomic::AtomicU64>,
}

impl Default for MemoryLock {
    fn default() -> Self {
        Self::new(Arc::new(SystemClock))
    }
}

impl MemoryLock {
    /// A lock whose leases expire on `clock`.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            held: Arc::default(),
            clock,
            next_token: Arc::default(),
        }
    }
}

#[derive(Debug)]
struct MemoryGuard {
    held: Leases,
    ring: RingName,
    token: u64,
}

impl MemoryGuard {
    fn release_now(&self) {
        let mut g = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if g.get(&self.ring).is_some_and(|(t, _)| *t == self.token) {
            g.remove(&self.ring);
        }
    }
}

impl Drop for MemoryGuard {
    fn drop(&mut self) {
        self.release_now();
    }
}

#[async_trait]
impl LockGuard for MemoryGuard {
    async fn release(self: Box<Self>) -> Result<(), StorageError> {
        self.release_now();
        Ok(())
    }
}

#[async_trait]
impl Lock for MemoryLock {
    async fn try_acquire(
        &self,
        ring: &RingName,
        _holder: &str,
        ttl: std::time::Duration,
    ) -> Result<Option<Box<dyn LockGuard>>, StorageError> {
        let now = self.clock.now();
        let mut g = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, until)) = g.get(ring)
            && *until > now
        {
            return Ok(None);
        }
        let token = self.next_token.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let until = now + TimeDelta::from_std(ttl).unwrap_or(TimeDelta::MAX);
        g.insert(ring.clone(), (token, until));
        Ok(Some(Box::new(MemoryGuard {
            held: self.held.clone(),
            ring: ring.clone(),
            token,
        })))
    }
}

#[async_trait]
impl crate::custody::MasterKeyStorage for MemoryStorage {
    async fn master_keys(&self) -> Result<Vec<crate::custody::StoredMasterKey>, StorageError> {
        let mut keys = self.lock().master_keys.clone();
        keys.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(keys)
    }

    async fn insert_master_key(&self, key: &crate::custody::StoredMasterKey) -> Result<bool, StorageError> {
        let mut g = self.lock();
        if g.master_keys.iter().any(|k| k.id == key.id) {
            return Ok(false);
        }
        g.master_keys.push(key.clone());
        Ok(true)
    }

    async fn replace_wrapped_master_key(
        &self,
        id: &str,
        expected: &crate::custody::WrappedKey,
        new: &crate::custody::WrappedKey,
    ) -> Result<bool, StorageError> {
        let mut g = self.lock();
        match g.master_keys.iter_mut().find(|k| k.id == id && &k.wrapped == expected) {
            Some(k) => {
                k.wrapped = new.clone();
                Ok(true)
            }
            None => Ok(false),
        }
    }
}
