//! The loaded rings: a least-recently-used set of key rings, bounded by count and by
//! approximate bytes.

use crate::keyring::{KeyRing, Snapshot};
use crate::ring::RingName;
use crate::rotator::Rotator;
use std::collections::{BTreeMap, HashMap};

/// A ring held in memory: its key ring (the snapshot that signs and verifies) and the
/// rotator that installs its commits there.
#[derive(Debug, Clone)]
pub(super) struct Loaded {
    pub keyring: KeyRing,
    pub rotator: Rotator,
}

#[derive(Debug)]
struct Slot {
    loaded: Loaded,
    stamp: u64,
    bytes: usize,
}

/// The loaded rings, least recently used first out.
#[derive(Debug)]
pub(super) struct LoadedRings {
    slots: HashMap<RingName, Slot>,
    /// Use stamp → ring: the oldest stamp is the least recently used.
    order: BTreeMap<u64, RingName>,
    next_stamp: u64,
    bytes: usize,
    max_rings: usize,
    max_bytes: usize,
}

/// A snapshot's approximate size in memory: a fixed part (the handle, the rotator, the
/// parsed Active signer, the maps) plus what grows with its keys (each key's verifier and
/// status, and the rendered JWKS).
pub(super) fn approx_bytes(s: &Snapshot) -> usize {
    const BASE: usize = 4096;
    const PER_KEY: usize = 1024;
    BASE + PER_KEY * s.keys().len() + 2 * s.jwks().body().len()
}

impl LoadedRings {
    pub fn new(max_rings: usize, max_bytes: usize) -> Self {
        Self {
            slots: HashMap::new(),
            order: BTreeMap::new(),
            next_stamp: 0,
            bytes: 0,
            max_rings: max_rings.max(1),
            max_bytes,
        }
    }

    fn stamp(&mut self) -> u64 {
        self.next_stamp += 1;
        self.next_stamp
    }

    /// The ring, if loaded, marked as just used.
    pub fn get(&mut self, ring: &RingName) -> Option<Loaded> {
        let stamp = self.stamp();
        let slot = self.slots.get_mut(ring)?;
        self.order.remove(&slot.stamp);
        slot.stamp = stamp;
        self.order.insert(stamp, ring.clone());
        Some(slot.loaded.clone())
    }

    /// The ring, if loaded, without marking it used (the change feed's look-up).
    pub fn peek(&self, ring: &RingName) -> Option<Loaded> {
        self.slots.get(ring).map(|s| s.loaded.clone())
    }

    /// Every loaded ring.
    pub fn all(&self) -> Vec<Loaded> {
        self.slots.values().map(|s| s.loaded.clone()).collect()
    }

    /// Adds a ring (unless one was added meanwhile: that one is kept and returned), then
    /// evicts the least recently used until both bounds hold again. The ring just added
    /// stays even if it alone exceeds the byte bound.
    pub fn insert(&mut self, ring: &RingName, loaded: Loaded) -> Loaded {
        if let Some(existing) = self.get(ring) {
            return existing;
        }
        let stamp = self.stamp();
        let bytes = approx_bytes(&loaded.keyring.snapshot());
        self.bytes += bytes;
        self.order.insert(stamp, ring.clone());
        self.slots.insert(
            ring.clone(),
            Slot {
                loaded: loaded.clone(),
                stamp,
                bytes,
            },
        );
        while self.slots.len() > 1 && (self.slots.len() > self.max_rings || self.bytes > self.max_bytes) {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            if let Some(slot) = self.slots.remove(&oldest) {
                self.bytes -= slot.bytes;
                tracing::debug!(ring = %oldest, "ring snapshot evicted (least recently used)");
            }
        }
        loaded
    }

    /// Re-measures a ring after its snapshot changed.
    pub fn remeasure(&mut self, ring: &RingName) {
        if let Some(slot) = self.slots.get_mut(ring) {
            let bytes = approx_bytes(&slot.loaded.keyring.snapshot());
            self.bytes = self.bytes - slot.bytes + bytes;
            slot.bytes = bytes;
        }
    }

    /// How many rings are loaded, and their approximate bytes.
    pub fn usage(&self) -> (usize, usize) {
        (self.slots.len(), self.bytes)
    }
}
