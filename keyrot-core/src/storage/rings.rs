//! Many rings in one store: the capability a store needs to hold them ([`RingStorage`]:
//! the next-due index, the listing of rings, what changed since a cursor), and one change
//! feed for all of them.

use super::{Storage, StorageError};
use crate::ring::RingName;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

/// One ring as [`RingStorage::list_rings`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingEntry {
    /// The ring.
    pub name: RingName,
    /// Its generation.
    pub generation: u64,
    /// When its next planned transition is due (`None`: nothing planned).
    pub next_due: Option<DateTime<Utc>>,
}

/// Where a reader of [`RingStorage::rings_changed_since`] got to. Only the store that
/// returned it knows what it means (keyrot's SQL stores: the database's clock in
/// milliseconds, less a margin; the memory store: a commit counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ChangeCursor(pub i64);

/// What [`RingStorage::rings_changed_since`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingChanges {
    /// Every ring committed to since the cursor asked about (perhaps more).
    pub rings: Vec<RingEntry>,
    /// The cursor for the next call.
    pub cursor: ChangeCursor,
}

/// A store that holds many rings: what a [`RingManager`](crate::RingManager) and a
/// [`PollingRingsFeed`] need besides [`Storage`]. Both require it, so a store without it
/// cannot be given to either: the compiler refuses it (as tower-sessions'
/// `ExpiredDeletion: SessionStore` is an optional capability of a session store).
///
/// # The rules a store follows
///
/// The ring cases of the conformance kit
/// ([`ring_storage_conformance_tests!`](crate::ring_storage_conformance_tests), feature
/// `test-util`) check each of them.
///
/// - **The next-due time is kept with the ring.** A [`Storage::commit`] stores
///   [`Commit::next_due`](crate::Commit::next_due) with the ring, in an index;
///   [`reschedule`](RingStorage::reschedule) replaces it only while the ring is at the
///   given generation, and never creates a ring.
/// - **The due rings are read through the index.** [`due_rings`](RingStorage::due_rings)
///   lists the rings due at a time (at or before it, to the millisecond), soonest first;
///   a ring with nothing planned is never due.
/// - **Every ring can be listed.** [`list_rings`](RingStorage::list_rings) pages through
///   every ring by name, with its generation and next-due time.
/// - **What changed is read by cursor.**
///   [`rings_changed_since`](RingStorage::rings_changed_since) lists at least every ring
///   committed to after the call that returned its cursor, at its current generation, and
///   its cursor never goes back.
///
/// A store that is only a [`Storage`] is refused where many rings are needed:
///
/// ```compile_fail,E0308
/// use keyrot_core::{MemoryLock, MasterKeySealer, RingManager, Storage};
/// use std::sync::Arc;
///
/// fn manager(store: Arc<dyn Storage>, sealer: Arc<MasterKeySealer>) -> RingManager {
///     RingManager::builder(store, Arc::new(MemoryLock::default()), sealer).build()
/// }
/// ```
#[async_trait]
pub trait RingStorage: Storage {
    /// The rings whose next-due time ([`Commit::next_due`](crate::Commit::next_due), or
    /// [`RingStorage::reschedule`]) is at or before `now`, soonest first, at most `limit`:
    /// read through an index, so its cost follows the due rings, not all rings.
    async fn due_rings(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<RingName>, StorageError>;

    /// Sets the ring's next-due time if and only if it is still at `generation` (a
    /// commit since then wrote its own); whether it was set.
    async fn reschedule(
        &self,
        ring: &RingName,
        generation: u64,
        next_due: Option<DateTime<Utc>>,
    ) -> Result<bool, StorageError>;

    /// One page of every ring the store holds, by name: the rings after `after` (from the
    /// first when `None`), at most `limit`.
    async fn list_rings(&self, after: Option<&RingName>, limit: usize) -> Result<Vec<RingEntry>, StorageError>;

    /// The rings committed to since the call that returned `since` (every ring when
    /// `None`), with the cursor for the next call. It lists at least every ring whose
    /// generation moved after that call, perhaps more (a store that reads by its clock
    /// lists a margin again), and reads through an index: a poll that finds nothing costs
    /// one query and no rows, whatever the number of rings. [`PollingRingsFeed`] polls it.
    async fn rings_changed_since(&self, since: Option<ChangeCursor>) -> Result<RingChanges, StorageError>;
}

/// What a feed over all rings reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RingEvent {
    /// The ring reached this generation.
    Changed {
        /// The ring.
        ring: RingName,
        /// Its new generation.
        generation: u64,
    },
    /// Events may have been lost (a reconnect): reload every ring held.
    Resync,
}

/// A subscription to the changes of every ring of a store.
#[async_trait]
pub trait RingsStream: Send + Debug {
    /// Waits for the next event.
    async fn next(&mut self) -> Result<RingEvent, StorageError>;
}

/// How an instance learns that any of a store's rings changed, through one subscription
/// (PostgreSQL: one `LISTEN` channel whose payload names the ring; elsewhere
/// [`PollingRingsFeed`]: one query per poll for the rings changed since the last).
#[async_trait]
pub trait RingsFeed: Debug + Send + Sync + 'static {
    /// Subscribes to every ring.
    async fn subscribe_all(&self) -> Result<Box<dyn RingsStream>, StorageError>;
}

/// A feed over all rings that polls the store at an interval and reports each ring whose
/// generation moved. Each poll is one [`RingStorage::rings_changed_since`] query, whose
/// rows are the rings committed to since the last poll (none when idle), and every
/// [`PollingRingsFeed::FULL_READ_EVERY`] it reads every ring's generation once more, a
/// safety net for a commit the cursor could miss (a transaction open longer than the
/// store's margin, a clock stepped back).
#[derive(Debug, Clone)]
pub struct PollingRingsFeed {
    storage: Arc<dyn RingStorage>,
    interval: Duration,
}

impl PollingRingsFeed {
    /// How often every ring is read again.
    pub const FULL_READ_EVERY: Duration = Duration::from_secs(300);

    /// Polls `storage` every `interval`.
    pub fn new(storage: Arc<dyn RingStorage>, interval: Duration) -> Self {
        Self { storage, interval }
    }
}

/// Where the stream got to: the cursor, and when every ring was last read.
#[derive(Debug, Clone, Copy)]
struct Reading {
    cursor: ChangeCursor,
    last_full: tokio::time::Instant,
}

/// The generations known now, and where the reading starts (the first read of a
/// subscription).
async fn first_read(storage: &dyn RingStorage) -> Result<(HashMap<RingName, u64>, Reading), StorageError> {
    let all = storage.rings_changed_since(None).await?;
    let known = all.rings.into_iter().map(|e| (e.name, e.generation)).collect();
    let reading = Reading {
        cursor: all.cursor,
        last_full: tokio::time::Instant::now(),
    };
    Ok((known, reading))
}

#[derive(Debug)]
struct PollingRingsStream {
    storage: Arc<dyn RingStorage>,
    interval: Duration,
    known: HashMap<RingName, u64>,
    reading: Reading,
    /// Changes found by the last poll, not yet reported.
    queued: Vec<RingEvent>,
    failed: bool,
}

impl PollingRingsStream {
    /// One poll: the rings it read, with their generations (a ring not read is unchanged).
    async fn poll(&mut self) -> Result<Vec<(RingName, u64)>, StorageError> {
        let Reading { cursor, last_full } = self.reading;
        let whole = last_full.elapsed() >= PollingRingsFeed::FULL_READ_EVERY;
        let read = self
            .storage
            .rings_changed_since(if whole { None } else { Some(cursor) })
            .await?;
        self.reading = Reading {
            cursor: read.cursor,
            last_full: if whole { tokio::time::Instant::now() } else { last_full },
        };
        Ok(read.rings.into_iter().map(|e| (e.name, e.generation)).collect())
    }
}

#[async_trait]
impl RingsStream for PollingRingsStream {
    async fn next(&mut self) -> Result<RingEvent, StorageError> {
        loop {
            if let Some(e) = self.queued.pop() {
                return Ok(e);
            }
            tokio::time::sleep(self.interval).await;
            if self.failed {
                // Whatever changed while the store was unreachable is read again whole.
                let (known, reading) = first_read(&*self.storage).await?;
                (self.known, self.reading, self.failed) = (known, reading, false);
                return Ok(RingEvent::Resync);
            }
            let read = match self.poll().await {
                Ok(r) => r,
                Err(e) => {
                    self.failed = true;
                    return Err(e);
                }
            };
            for (ring, generation) in read {
                if self.known.insert(ring.clone(), generation) != Some(generation) {
                    self.queued.push(RingEvent::Changed { ring, generation });
                }
            }
        }
    }
}

#[async_trait]
impl RingsFeed for PollingRingsFeed {
    async fn subscribe_all(&self) -> Result<Box<dyn RingsStream>, StorageError> {
        let (known, reading) = first_read(&*self.storage).await?;
        Ok(Box::new(PollingRingsStream {
            storage: self.storage.clone(),
            interval: self.interval,
            known,
            reading,
            queued: Vec::new(),
            failed: false,
        }))
    }
}
