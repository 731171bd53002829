//! The conformance kit on the in-memory store: every case, the ring cases included.

use keyrot_core::conformance::RingBackend;
use keyrot_core::{MemoryLock, MemoryStorage};
use std::sync::Arc;

async fn setup() -> Option<RingBackend> {
    let store = MemoryStorage::new();
    // The feed over all rings is the store's own broadcast.
    Some(RingBackend::new(Arc::new(store.clone()), Arc::new(MemoryLock::default())).with_rings_feed(Arc::new(store)))
}

keyrot_core::storage_conformance_tests!(setup);
keyrot_core::ring_storage_conformance_tests!(setup);
