//! The keyrot-core conformance kit, once per database: the same suite the in-memory
//! store runs. Each case gets a fresh schema (PostgreSQL), database (MySQL) or file
//! (SQLite), dropped afterwards.

mod common;

mod postgres {
    use super::common::PgTest;
    use keyrot_core::conformance::Backend;
    use std::sync::Arc;

    async fn setup() -> Option<Backend> {
        let t = PgTest::new("postgres conformance", true).await?;
        let store = t.instance(5, "keyrot-conformance").await;
        let pool = store.pool().clone();
        Some(
            Backend::new(Arc::new(store.clone()), Arc::new(store)).with_teardown(async move {
                pool.close().await;
                t.finish().await;
            }),
        )
    }

    keyrot_core::storage_conformance_tests!(setup);
}

mod mysql {
    use super::common::MySqlTest;
    use keyrot_core::conformance::Backend;
    use std::sync::Arc;

    async fn setup() -> Option<Backend> {
        let t = MySqlTest::new("mysql conformance", true).await?;
        let store = t.instance(5).await;
        let pool = store.pool().clone();
        Some(
            Backend::new(Arc::new(store.clone()), Arc::new(store)).with_teardown(async move {
                pool.close().await;
                t.finish().await;
            }),
        )
    }

    keyrot_core::storage_conformance_tests!(setup);
}

mod sqlite {
    use super::common::SqliteFile;
    use keyrot_core::conformance::Backend;
    use std::sync::Arc;

    async fn setup() -> Option<Backend> {
        let file = SqliteFile::new();
        let store = file.instance(4).await;
        let pool = store.pool().clone();
        Some(
            Backend::new(Arc::new(store.clone()), Arc::new(store)).with_teardown(async move {
                pool.close().await;
                drop(file);
            }),
        )
    }

    keyrot_core::storage_conformance_tests!(setup);
}
