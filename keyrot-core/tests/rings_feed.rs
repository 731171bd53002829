//! `PollingRingsFeed`: one query per poll, by cursor, whatever the number of rings, and
//! every ring read again now and then. (A store that cannot read by cursor does not
//! implement `RingStorage`, and the compiler refuses it to the feed.)

use chrono::{DateTime, Utc};
use keyrot_core::{
    AuditLinker, AuditQuery, AuditRecord, ChangeCursor, Commit, CommitOutcome, IdempotencyRecord, MemoryStorage,
    PollingRingsFeed, Ring, RingChanges, RingEntry, RingEvent, RingName, RingStorage, RingsFeed as _, Storage,
    StorageError, async_trait,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// A memory store that counts the feed's reads.
#[derive(Debug, Default)]
struct Counted {
    inner: MemoryStorage,
    cursor_reads: AtomicUsize,
    rows_read: AtomicUsize,
    list_reads: AtomicUsize,
}

#[async_trait]
impl Storage for Counted {
    async fn load(&self, ring: &RingName) -> Result<Ring, StorageError> {
        self.inner.load(ring).await
    }
    async fn generation(&self, ring: &RingName) -> Result<u64, StorageError> {
        self.inner.generation(ring).await
    }
    async fn commit(&self, commit: &Commit, linker: &dyn AuditLinker) -> Result<CommitOutcome, StorageError> {
        self.inner.commit(commit, linker).await
    }
    async fn record_attempt(
        &self,
        audit: &AuditRecord,
        idempotency: Option<&IdempotencyRecord>,
        linker: &dyn AuditLinker,
    ) -> Result<(), StorageError> {
        self.inner.record_attempt(audit, idempotency, linker).await
    }
    async fn audit_log(&self, ring: &RingName, query: AuditQuery) -> Result<Vec<AuditRecord>, StorageError> {
        self.inner.audit_log(ring, query).await
    }
    async fn idempotency(&self, ring: &RingName, key: &str) -> Result<Option<IdempotencyRecord>, StorageError> {
        self.inner.idempotency(ring, key).await
    }
}

#[async_trait]
impl RingStorage for Counted {
    async fn due_rings(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<RingName>, StorageError> {
        self.inner.due_rings(now, limit).await
    }
    async fn reschedule(
        &self,
        ring: &RingName,
        generation: u64,
        next_due: Option<DateTime<Utc>>,
    ) -> Result<bool, StorageError> {
        self.inner.reschedule(ring, generation, next_due).await
    }
    async fn list_rings(&self, after: Option<&RingName>, limit: usize) -> Result<Vec<RingEntry>, StorageError> {
        self.list_reads.fetch_add(1, Ordering::SeqCst);
        self.inner.list_rings(after, limit).await
    }
    async fn rings_changed_since(&self, since: Option<ChangeCursor>) -> Result<RingChanges, StorageError> {
        self.cursor_reads.fetch_add(1, Ordering::SeqCst);
        let out = self.inner.rings_changed_since(since).await?;
        self.rows_read.fetch_add(out.rings.len(), Ordering::SeqCst);
        Ok(out)
    }
}

/// `n` rings with a first key each, committed through a real rotator.
async fn rings(store: &Arc<Counted>, n: usize) -> Vec<keyrot_core::Rotator> {
    let sealer = Arc::new(
        keyrot_core::MasterKeySealer::new(keyrot_core::MasterKey::generate("mk1").expect("mk"), []).expect("sealer"),
    );
    let mut out = Vec::new();
    for i in 0..n {
        let r = keyrot_core::Rotator::builder(
            RingName::new(format!("feed-{i:04}")).expect("ring"),
            store.clone(),
            Arc::new(keyrot_core::MemoryLock::default()),
            sealer.clone(),
        )
        .build();
        r.init(keyrot_core::RequestContext::actor("test")).await.expect("init");
        out.push(r);
    }
    out
}

#[tokio::test(start_paused = true)]
async fn an_idle_poll_is_one_query_and_reads_no_row_whatever_the_number_of_rings() {
    let store = Arc::new(Counted::default());
    let rotators = rings(&store, 2500).await;
    let feed = PollingRingsFeed::new(store.clone(), Duration::from_secs(1));
    let mut stream = feed.subscribe_all().await.expect("subscribe");
    assert_eq!(
        store.rows_read.load(Ordering::SeqCst),
        2500,
        "the subscription reads every ring once"
    );
    store.rows_read.store(0, Ordering::SeqCst);
    store.cursor_reads.store(0, Ordering::SeqCst);

    // A change: one query, one row. Then ten idle polls: a query each, no row, no listing.
    rotators[1234]
        .force_rotate(keyrot_core::RequestContext::actor("test"), "feed", false)
        .await
        .expect("force");
    let polled = tokio::spawn(async move {
        let event = stream.next().await.expect("event");
        (event, stream)
    });
    let (event, mut stream) = polled.await.expect("join");
    assert_eq!(
        event,
        RingEvent::Changed {
            ring: RingName::new("feed-1234").expect("ring"),
            generation: 2
        }
    );
    assert_eq!(store.cursor_reads.load(Ordering::SeqCst), 1, "one query");
    assert_eq!(
        store.rows_read.load(Ordering::SeqCst),
        1,
        "one row: the ring that changed"
    );
    let idle = tokio::time::timeout(Duration::from_millis(10_500), stream.next()).await;
    assert!(idle.is_err(), "nothing changed: no event");
    assert_eq!(
        store.cursor_reads.load(Ordering::SeqCst),
        11,
        "ten idle polls, one query each"
    );
    assert_eq!(store.rows_read.load(Ordering::SeqCst), 1, "and no row");
    assert_eq!(store.list_reads.load(Ordering::SeqCst), 0, "the listing is never read");
}

#[tokio::test(start_paused = true)]
async fn every_ring_is_read_again_now_and_then() {
    let store = Arc::new(Counted::default());
    rings(&store, 3).await;
    let mut stream = PollingRingsFeed::new(store.clone(), Duration::from_secs(60))
        .subscribe_all()
        .await
        .expect("subscribe");
    store.rows_read.store(0, Ordering::SeqCst);
    let _ = tokio::time::timeout(
        PollingRingsFeed::FULL_READ_EVERY + Duration::from_secs(30),
        stream.next(),
    )
    .await;
    assert_eq!(
        store.rows_read.load(Ordering::SeqCst),
        3,
        "the safety net read every ring once"
    );
}
