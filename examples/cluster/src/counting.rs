//! A storage and lock that count the database statements an instance sends: one per
//! storage call (a commit counts once though it is one transaction of several), one per
//! lock taken and one per lock released.

use chrono::{DateTime, Utc};
use keyrot_core::{
    AuditLinker, AuditQuery, AuditRecord, Commit, CommitOutcome, IdempotencyRecord, Lock, LockGuard, Ring, RingEntry,
    RingName, Storage, StorageError, async_trait,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Counts the calls that reach the database.
#[derive(Debug, Clone)]
pub struct Counting<S> {
    inner: S,
    calls: Arc<AtomicU64>,
}

impl<S> Counting<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            calls: Arc::default(),
        }
    }

    /// Calls so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    fn count(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
    }
}

#[async_trait]
impl<S: Storage> Storage for Counting<S> {
    async fn load(&self, ring: &RingName) -> Result<Ring, StorageError> {
        self.count();
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
}

#[derive(Debug)]
struct CountingGuard {
    inner: Box<dyn LockGuard>,
    calls: Arc<AtomicU64>,
}

#[async_trait]
impl LockGuard for CountingGuard {
    async fn release(self: Box<Self>) -> Result<(), StorageError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.inner.release().await
    }
}

#[async_trait]
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
