//! Many rings in one store: the listing of rings, what changed since a cursor, and one
//! change feed for all of them.

use super::{Storage, StorageError};
use crate::ring::RingName;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

/// One ring as [`Storage::list_rings`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingEntry {
    /// The ring.
    pub name: RingName,
    /// Its generation.
    pub generation: u64,
    /// When its next planned transition is due (`None`: nothing planned).
    pub next_due: Option<DateTime<Utc>>,
}

/// Where a reader of [`Storage::rings_changed_since`] got to. Only the store that returned
/// it knows what it means (keyrot's SQL stores: the database's clock in milliseconds, less
/// a margin; the memory store: a commit counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ChangeCursor(pub i64);

/// What [`Storage::rings_changed_since`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingChanges {
    /// Every ring committed to since the cursor asked about (perhaps more).
    pub rings: Vec<RingEntry>,
    /// The cursor for the next call.
    pub cursor: ChangeCursor,
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
/// generation moved. Each poll is one [`Storage::rings_changed_since`] query, whose rows
/// are the rings committed to since the last poll (none when idle), and every
/// [`PollingRingsFeed::FULL_READ_EVERY`] it reads every ring's generation once more, a
/// safety net for a commit the cursor could miss (a transaction open longer than the
/// store's margin, a clock stepped back). A store without `rings_changed_since` is read
/// whole ([`Storage::list_rings`], in pages) at every poll.
#[derive(Debug, Clone)]
pub struct PollingRingsFeed {
    storage: Arc<dyn Storage>,
    interval: Duration,
}

impl PollingRingsFeed {
    /// The rows per page of a whole listing.
    pub const PAGE: usize = 1000;
    /// How often every ring is read again, when the store reads by cursor.
    pub const FULL_READ_EVERY: Duration = Duration::from_secs(300);

    /// Polls `storage` every `interval`.
    pub fn new(storage: Arc<dyn Storage>, interval: Duration) -> Self {
        Self { storage, interval }
    }
}

/// Every ring's generation, read page by page.
async fn generations(storage: &dyn Storage) -> Result<HashMap<RingName, u64>, StorageError> {
    let mut out = HashMap::new();
    let mut after: Option<RingName> = None;
    loop {
        let page = storage.list_rings(after.as_ref(), PollingRingsFeed::PAGE).await?;
        let full = page.len() == PollingRingsFeed::PAGE;
        after = page.last().map(|e| e.name.clone());
        out.extend(page.into_iter().map(|e| (e.name, e.generation)));
        if !full {
            return Ok(out);
        }
    }
}

/// How the stream reads the store.
#[derive(Debug, Clone, Copy)]
enum Reading {
    /// By cursor, with the time of the last whole read.
    Cursor(ChangeCursor, tokio::time::Instant),
    /// The whole listing at every poll.
    Whole,
}

/// The generations known now, and how to read next (the first read of a subscription).
async fn first_read(storage: &dyn Storage) -> Result<(HashMap<RingName, u64>, Reading), StorageError> {
    match storage.rings_changed_since(None).await {
        Ok(all) => {
            let known = all.rings.into_iter().map(|e| (e.name, e.generation)).collect();
            Ok((known, Reading::Cursor(all.cursor, tokio::time::Instant::now())))
        }
        Err(StorageError::Unsupported { .. }) => Ok((generations(storage).await?, Reading::Whole)),
        Err(e) => Err(e),
    }
}

#[derive(Debug)]
struct PollingRingsStream {
    storage: Arc<dyn Storage>,
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
        let storage = &*self.storage;
        match self.reading {
            Reading::Whole => Ok(generations(storage).await?.into_iter().collect()),
            Reading::Cursor(cursor, last_full) => {
                let whole = last_full.elapsed() >= PollingRingsFeed::FULL_READ_EVERY;
                let read = storage
                    .rings_changed_since(if whole { None } else { Some(cursor) })
                    .await?;
                let last_full = if whole { tokio::time::Instant::now() } else { last_full };
                self.reading = Reading::Cursor(read.cursor, last_full);
                Ok(read.rings.into_iter().map(|e| (e.name, e.generation)).collect())
            }
        }
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
