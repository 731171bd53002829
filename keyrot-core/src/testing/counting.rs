//! A storage and lock that count what reaches them, for tests and demos that measure how
//! many database statements something costs.

use crate::ring::{Ring, RingName};
use crate::storage::{
    AuditLinker, AuditQuery, AuditRecord, ChangeCursor, Commit, CommitOutcome, IdempotencyRecord, Lock, LockGuard,
    RingChanges, RingEntry, RingStorage, Storage, StorageError,
};
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Wraps a [`Storage`] (and, when `S` is one, a [`Lock`]) and counts the calls that reach
/// it: one per storage call (a commit counts once though it is one transaction of
/// several statements), one per lock taken and one per lock released. `load` calls are
/// also counted apart, and can be made to take a while, as over a network. Every
/// [`Storage`] method is forwarded, so the inner store's own capabilities stay, and so is
/// every [`RingStorage`] method when `S` holds many rings.
#[derive(Debug, Clone)]
pub struct Counting<S> {
    inner: S,
    calls: Arc<AtomicU64>,
    loads: Arc<AtomicU64>,
    load_delay: Duration,
}

impl<S> Counting<S> {
    /// Counts the calls that reach `inner`.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            calls: Arc::default(),
            loads: Arc::default(),
            load_delay: Duration::ZERO,
        }
    }

    /// Makes every `load` wait `delay` first (concurrent loads then overlap).
    pub fn with_load_delay(mut self, delay: Duration) -> Self {
        self.load_delay = delay;
        self
    }

    /// Calls so far (storage calls, locks taken and released).
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    /// `Storage::load` calls so far.
    pub fn loads(&self) -> u64 {
        self.loads.load(Ordering::SeqCst)
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    fn count(&self) {
        self.calls.fetch_add(1, Ordering::SeqCst);
    }
}

#[async_trait::async_trait]
impl<S: Storage> Storage for Counting<S> {
    async fn load(&self, ring: &RingName) -> Result<Ring, StorageError> {
        self.count();
        self.loads.fetch_add(1, Ordering::SeqCst);
        if !self.load_delay.is_zero() {
            tokio::time::sleep(self.load_delay).await;
        }
        self.inner.load(ring).await
    }

    async fn load_public(&self, ring: &RingName) -> Result<Ring, StorageError> {
        self.count();
        self.inner.load_public(ring).await
    }

    async fn generation(&self, ring: &RingName) -> Result<u64, StorageError> {
        self.count();
        self.inner.generation(ring).await
    }

    async fn commit(&self, commit: &Commit, linker: &dyn AuditLinker) -> Result<CommitOutcome, StorageError> {
        self.count();
        self.inner.commit(commit, linker).await
    }

    async fn record_attempt(
        &self,
        audit: &AuditRecord,
        idempotency: Option<&IdempotencyRecord>,
        linker: &dyn AuditLinker,
    ) -> Result<(), StorageError> {
        self.count();
        self.inner.record_attempt(audit, idempotency, linker).await
    }

    async fn audit_log(&self, ring: &RingName, query: AuditQuery) -> Result<Vec<AuditRecord>, StorageError> {
        self.count();
        self.inner.audit_log(ring, query).await
    }

    async fn idempotency(&self, ring: &RingName, key: &str) -> Result<Option<IdempotencyRecord>, StorageError> {
        self.count();
        self.inner.idempotency(ring, key).await
    }
}

/// The inner store's many-rings capability, counted like the rest.
#[async_trait::async_trait]
impl<S: RingStorage> RingStorage for Counting<S> {
    async fn due_rings(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<RingName>, StorageError> {
        self.count();
        self.inner.due_rings(now, limit).await
    }

    async fn reschedule(
        &self,
        ring: &RingName,
        generation: u64,
        next_due: Option<DateTime<Utc>>,
    ) -> Result<bool, StorageError> {
        self.count();
        self.inner.reschedule(ring, generation, next_due).await
    }

    async fn list_rings(&self, after: Option<&RingName>, limit: usize) -> Result<Vec<RingEntry>, StorageError> {
        self.count();
        self.inner.list_rings(after, limit).await
    }

    async fn rings_changed_since(&self, since: Option<ChangeCursor>) -> Result<RingChanges, StorageError> {
        self.count();
        self.inner.rings_changed_since(since).await
    }
}

#[derive(Debug)]
struct CountingGuard {
    inner: Box<dyn LockGuard>,
    calls: Arc<AtomicU64>,
}

#[async_trait::async_trait]
impl LockGuard for CountingGuard {
    async fn release(self: Box<Self>) -> Result<(), StorageError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.release().await
    }
}

#[async_trait::async_trait]
impl<L: Lock> Lock for Counting<L> {
    async fn try_acquire(
        &self,
        ring: &RingName,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<Box<dyn LockGuard>>, StorageError> {
        self.count();
        let guard = self.inner.try_acquire(ring, holder, ttl).await?;
        Ok(guard.map(|inner| {
            Box::new(CountingGuard {
                inner,
                calls: self.calls.clone(),
            }) as Box<dyn LockGuard>
        }))
    }
}
