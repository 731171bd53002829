//! The keyrot-core conformance kit, once per database: the same suite the in-memory
//! store runs, the ring and master-key cases included. Each case gets a fresh schema (PostgreSQL),
//! database (MySQL) or file (SQLite), dropped afterwards.

mod common;

use keyrot_core::conformance::{MasterKeyBackend, RingBackend};
use keyrot_core::custody::MasterKeyStorage;
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

/// A master-key backend on `store` whose teardown closes `pool`, then runs `finish`.
fn master_keys<DB: Database>(
    pool: Pool<DB>,
    store: impl MasterKeyStorage,
    finish: impl Future<Output = ()> + Send + 'static,
) -> Option<MasterKeyBackend> {
    Some(MasterKeyBackend::new(Arc::new(store)).with_teardown(async move {
        pool.close().await;
        finish.await;
    }))
}

mod postgres {
    use super::{MasterKeyBackend, RingBackend, backend, common::PgTest, master_keys};

    async fn setup() -> Option<RingBackend> {
        let t = PgTest::new("postgres conformance", true).await?;
        let store = t.instance(5, "keyrot-conformance").await;
        // The feed cases run on PostgreSQL's own LISTEN/NOTIFY feed.
        let feed = std::sync::Arc::new(store.clone());
        backend(store.pool().clone(), store, t.finish()).map(|b| b.with_feed(feed.clone()).with_rings_feed(feed))
    }

    async fn master_key_setup() -> Option<MasterKeyBackend> {
        let t = PgTest::new("postgres conformance", true).await?;
        let store = t.instance(2, "keyrot-conformance").await;
        master_keys(store.pool().clone(), store, t.finish())
    }

    keyrot_core::master_key_storage_conformance_tests!(master_key_setup);

    keyrot_core::storage_conformance_tests!(setup);
    keyrot_core::ring_storage_conformance_tests!(setup);
}

mod mysql {
    use super::{MasterKeyBackend, RingBackend, backend, common::MySqlTest, master_keys};

    async fn setup() -> Option<RingBackend> {
        let t = MySqlTest::new("mysql conformance", true).await?;
        let store = t.instance(5).await;
        backend(store.pool().clone(), store, t.finish())
    }

    async fn master_key_setup() -> Option<MasterKeyBackend> {
        let t = MySqlTest::new("mysql conformance", true).await?;
        let store = t.instance(2).await;
        master_keys(store.pool().clone(), store, t.finish())
    }

    keyrot_core::master_key_storage_conformance_tests!(master_key_setup);

    keyrot_core::storage_conformance_tests!(setup);
    keyrot_core::ring_storage_conformance_tests!(setup);
}

mod sqlite {
    use super::{MasterKeyBackend, RingBackend, backend, common::SqliteFile, master_keys};

    async fn setup() -> Option<RingBackend> {
        let file = SqliteFile::new();
        let store = file.instance(4).await;
        backend(store.pool().clone(), store, async move { drop(file) })
    }

    async fn master_key_setup() -> Option<MasterKeyBackend> {
        let file = SqliteFile::new();
        let store = file.instance(2).await;
        master_keys(store.pool().clone(), store, async move { drop(file) })
    }

    keyrot_core::master_key_storage_conformance_tests!(master_key_setup);

    keyrot_core::storage_conformance_tests!(setup);
    keyrot_core::ring_storage_conformance_tests!(setup);
}
