//! The conformance kit on the in-memory store: every case, the ring and master-key cases
//! included.

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

/// The master-key cases on the in-memory store.
mod master_keys {
    use keyrot_core::MemoryStorage;
    use keyrot_core::conformance::MasterKeyBackend;
    use std::sync::Arc;

    async fn setup() -> Option<MasterKeyBackend> {
        Some(MasterKeyBackend::new(Arc::new(MemoryStorage::new())))
    }

    keyrot_core::master_key_storage_conformance_tests!(setup);
}
