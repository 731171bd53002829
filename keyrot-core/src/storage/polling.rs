//! The change feed that works on every backend: polling the generation.

use super::{ChangeFeed, ChangeStream, FeedEvent, Storage, StorageError};
use crate::ring::RingName;
use async_trait::async_trait;
use std::sync::Arc;

/// A change feed that polls [`Storage::generation`] at an interval: works on every
/// backend, and is the fallback where notifications exist.
#[derive(Debug, Clone)]
pub struct PollingFeed {
    storage: Arc<dyn Storage>,
    interval: std::time::Duration,
}

impl PollingFeed {
    /// Polls `storage` every `interval`.
    pub fn new(storage: Arc<dyn Storage>, interval: std::time::Duration) -> Self {
        Self { storage, interval }
    }
}

#[derive(Debug)]
struct PollingStream {
    storage: Arc<dyn Storage>,
    ring: RingName,
    interval: std::time::Duration,
    last: Option<u64>,
    failed: bool,
}

#[async_trait]
impl ChangeStream for PollingStream {
    async fn next(&mut self) -> Result<FeedEvent, StorageError> {
        loop {
            tokio::time::sleep(self.interval).await;
            match self.storage.generation(&self.ring).await {
                Ok(g) => {
                    let recovered = std::mem::take(&mut self.failed);
                    if recovered {
                        self.last = Some(g);
                        return Ok(FeedEvent::Resync);
                    }
                    if self.last != Some(g) {
                        self.last = Some(g);
                        return Ok(FeedEvent::Changed(g));
                    }
                }
                Err(e) => {
                    self.failed = true;
                    return Err(e);
                }
            }
        }
    }
}

#[async_trait]
impl ChangeFeed for PollingFeed {
    async fn subscribe(&self, ring: &RingName) -> Result<Box<dyn ChangeStream>, StorageError> {
        let last = self.storage.generation(ring).await?;
        Ok(Box::new(PollingStream {
            storage: self.storage.clone(),
            ring: ring.clone(),
            interval: self.interval,
            last: Some(last),
            failed: false,
        }))
    }
}
