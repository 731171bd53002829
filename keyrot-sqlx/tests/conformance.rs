//! The keyrot-core conformance kit, once per database: the same suite the in-memory
//! store runs, the ring cases included. Each case gets a fresh schema (PostgreSQL),
//! database (MySQL) or file (SQLite), dropped afterwards.

mod common;

use keyrot_core::conformance::RingBackend;
use keyrot_core::{Lock, RingStorage};
use keyrot_sqlx::sqlx::{Database, Pool};
use std::future::Future;
use std::sync::Arc;

/// A backend on `store` whose teardown closes `pool` (the store's), then runs `finish`
/// (which drops the schema, database or file).
fn backend<DB: Database>(
    pool: Pool<DB>,
    store: impl RingStorage + Lock + Clone + 'static,
    finish: impl Future<Output = ()> + Send + 'static,
) -> Option<RingBackend> {
    Some(
        RingBackend::new(Arc::new(store.clone()), Arc::new(store)).with_teardown(async move {
            pool.close().await;
            finish.await;
        }),
    )
}

mod postgres {
    use super::{RingBackend, backend, common::PgTest};

    async fn setup() -> Option<RingBackend> {
        let t = PgTest::new("postgres conformance", true).await?;
        let store = t.instance(5, "keyrot-conformance").await;
        // The feed cases run on PostgreSQL's own LISTEN/NOTIFY feed.
        let feed = std::sync::Arc::new(store.clone());
        backend(store.pool().clone(), store, t.finish()).map(|b| b.with_feed(feed.clone()).with_rings_feed(feed))
    }

    keyrot_core::storage_conformance_tests!(setup);
    keyrot_core::ring_storage_conformance_tests!(setup);
}

mod mysql {
    use super::{RingBackend, backend, common::MySqlTest};

    async fn setup() -> Option<RingBackend> {
        let t = MySqlTest::new("mysql conformance", true).await?;
        let store = t.instance(5).await;
        backend(store.pool().clone(), store, t.finish())
    }

    keyrot_core::storage_conformance_tests!(setup);
    keyrot_core::ring_storage_conformance_tests!(setup);
}

mod sqlite {
    use super::{RingBackend, backend, common::SqliteFile};

    async fn setup() -> Option<RingBackend> {
        let file = SqliteFile::new();
        let store = file.instance(4).await;
        backend(store.pool().clone(), store, async move { drop(file) })
    }

    keyrot_core::storage_conformance_tests!(setup);
    keyrot_core::ring_storage_conformance_tests!(setup);
}
