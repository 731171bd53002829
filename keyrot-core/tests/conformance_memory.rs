//! The conformance kit on the in-memory store.

use keyrot_core::conformance::Backend;
use keyrot_core::{MemoryLock, MemoryStorage};
use std::sync::Arc;

async fn setup() -> Option<Backend> {
    Some(Backend::new(
        Arc::new(MemoryStorage::new()),
        Arc::new(MemoryLock::default()),
    ))
}

keyrot_core::storage_conformance_tests!(setup);
