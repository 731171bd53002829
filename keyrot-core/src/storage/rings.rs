//! Many rings in one store: the listing of rings, and one change feed for all of them.

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
/// [`PollingRingsFeed`]: one query over all rings' generations).
#[async_trait]
pub trait RingsFeed: Debug + Send + Sync + 'static {
    /// Subscribes to every ring.
    async fn subscribe_all(&self) -> Result<Box<dyn RingsStream>, StorageError>;
}

/// A feed over all rings that polls [`Storage::list_rings`] at an interval (one pass over
/// the listing per poll, in pages) and reports each ring whose generation moved: works on
/// every store that lists its rings.
#[derive(Debug, Clone)]
pub struct PollingRingsFeed {
    storage: Arc<dyn Storage>,
    interval: Duration,
}

impl PollingRingsFeed {
    /// The rows per page of a poll.
    pub const PAGE: usize = 1000;

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

#[derive(Debug)]
struct PollingRingsStream {
    storage: Arc<dyn Storage>,
    interval: Duration,
    last: HashMap<RingName, u64>,
    /// Changes found by the last poll, not yet reported.
    queued: Vec<RingEvent>,
    failed: bool,
}

#[async_trait]
impl RingsStream for PollingRingsStream {
    async fn next(&mut self) -> Result<RingEvent, StorageError> {
        loop {
            if let Some(e) = self.queued.pop() {
                return Ok(e);
            }
            tokio::time::sleep(self.interval).await;
            let now = match generations(&*self.storage).await {
                Ok(g) => g,
                Err(e) => {
                    self.failed = true;
                    return Err(e);
                }
            };
            let recovered = std::mem::take(&mut self.failed);
            let previous = std::mem::replace(&mut self.last, now);
            if recovered {
                return Ok(RingEvent::Resync);
            }
            self.queued = self
                .last
                .iter()
                .filter(|(ring, g)| previous.get(*ring) != Some(*g))
                .map(|(ring, g)| RingEvent::Changed {
                    ring: ring.clone(),
                    generation: *g,
                })
                .collect();
        }
    }
}

#[async_trait]
impl RingsFeed for PollingRingsFeed {
    async fn subscribe_all(&self) -> Result<Box<dyn RingsStream>, StorageError> {
        let last = generations(&*self.storage).await?;
        Ok(Box::new(PollingRingsStream {
            storage: self.storage.clone(),
            interval: self.interval,
            last,
            queued: Vec::new(),
            failed: false,
        }))
    }
}
