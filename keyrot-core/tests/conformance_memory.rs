//! The conformance kit on the in-memory store.

use keyrot_core::conformance::Backend;
use keyrot_core::{MemoryLock, MemoryStorage};
use std::sync::Arc;

async fn setup() -> Option<Backend> {
    let store = MemoryStorage::new();
    // The feed over all rings is the store's own broadcast.
    Some(Backend::new(Arc::new(store.clone()), Arc::new(MemoryLock::default())).with_rings_feed(Arc::new(store)))
}

keyrot_core::storage_conformance_tests!(setup);
