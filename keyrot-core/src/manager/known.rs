//! What a request naming a ring may cost before the ring is known to exist: the rings
//! the store holds, kept in memory, and at most one look-up per interval for a name not
//! among them, whatever the number of names asked for.

use crate::ring::RingName;
use crate::storage::{ChangeCursor, RingStorage, StorageError};
use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Mutex as AsyncMutex;
use tokio::time::Instant;

/// The rings this instance knows the store holds. It grows from the store's listing of
/// changed rings ([`RingStorage::rings_changed_since`], by cursor: one query, only what is
/// new), the change feed and this instance's own loads and commits; a ring never leaves
/// the store, so it never shrinks. Its size follows the store's rings, never the names
/// clients send.
#[derive(Debug)]
pub(super) struct KnownRings {
    state: Mutex<State>,
    /// Single flight for look-ups.
    lookup: AsyncMutex<()>,
    interval: Duration,
}

#[derive(Debug, Default)]
struct State {
    names: HashSet<RingName>,
    cursor: Option<ChangeCursor>,
    /// When the last look-up started.
    last: Option<Instant>,
    /// How many look-ups of the listing have started.
    listings: u64,
}

impl KnownRings {
    /// At most one look-up per `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            state: Mutex::new(State::default()),
            lookup: AsyncMutex::new(()),
            interval,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that the store holds `ring`.
    pub fn add(&self, ring: &RingName) {
        let mut s = self.state();
        if !s.names.contains(ring) {
            s.names.insert(ring.clone());
        }
    }

    /// Whether the store holds `ring`: from memory when known; otherwise by one look-up,
    /// at most one per interval for all names together (a name asked for while the last
    /// look-up is more recent than that is answered unknown at once, without I/O).
    pub async fn exists(&self, storage: &dyn RingStorage, ring: &RingName) -> Result<bool, StorageError> {
        let arrived = {
            let s = self.state();
            if s.names.contains(ring) {
                return Ok(true);
            }
            s.listings
        };
        let _flight = self.lookup.lock().await;
        {
            let mut s = self.state();
            if s.names.contains(ring) {
                return Ok(true);
            }
            if s.listings != arrived {
                // A listing started after this request arrived, and did not find it.
                return Ok(false);
            }
            if s.last.is_some_and(|last| last.elapsed() < self.interval) {
                return Ok(false);
            }
            s.last = Some(Instant::now());
        }
        self.look_up(storage, ring).await
    }

    async fn look_up(&self, storage: &dyn RingStorage, ring: &RingName) -> Result<bool, StorageError> {
        let cursor = {
            let mut s = self.state();
            s.listings += 1;
            s.cursor
        };
        let changes = storage.rings_changed_since(cursor).await?;
        let mut s = self.state();
        s.cursor = Some(changes.cursor);
        for entry in changes.rings.into_iter().filter(|e| e.generation > 0) {
            s.names.insert(entry.name);
        }
        Ok(s.names.contains(ring))
    }
}
