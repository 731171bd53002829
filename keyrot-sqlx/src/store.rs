//! The one store, generic over the database: [`SqlStore`] is keyrot's [`Storage`] and
//! [`RingStorage`] on every database, written once here over the generic operations of
//! `ops` and `write`. What differs between databases is named by two traits each of them
//! implements: [`Dialect`] for the words of its SQL, and [`Backend`] for what its store
//! keeps and how its write transactions begin and end. The public names
//! (`PostgresStore`, `MySqlStore`, `SqliteStore`) are this type for one database; each
//! database's module adds its builder, its migrations, its rotation lock and its change
//! feed.

use crate::common::{Tables, TxError};
use crate::dialect::{Dialect, Value};
use crate::ops::{self, Statements};
use crate::write::{self, Swap};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use keyrot_core::{
    AuditLinker, AuditQuery, AuditRecord, ChangeCursor, Commit, CommitOutcome, IdempotencyRecord, Ring, RingChanges,
    RingEntry, RingName, RingStorage, Storage, StorageError,
};
use sqlx::{Pool, Transaction};
use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;

/// A database keyrot-sqlx keeps rings in: `sqlx::Postgres` (feature `postgres`),
/// `sqlx::MySql` (`mysql`) and `sqlx::Sqlite` (`sqlite`). Sealed: what differs between
/// them is this crate's own business.
pub trait SqlDatabase: Backend {}

impl<DB: Backend> SqlDatabase for DB {}

/// What differs between databases besides the words of their SQL ([`Dialect`]): what a
/// store keeps besides what every store keeps, and how its write transactions begin and
/// end. Implemented by `sqlx::Postgres`, `sqlx::MySql` and `sqlx::Sqlite`, each in its
/// database's module.
///
/// Nominally `pub`, as the supertrait of [`SqlDatabase`]; its module is private, so
/// nothing outside this crate can name or implement it (which seals `SqlDatabase`).
pub trait Backend: Dialect {
    /// What a store of this database keeps besides its pool, tables and statements.
    type State: Debug + Send + Sync + 'static;

    /// The statement that begins every transaction that writes (and so may append to a
    /// ring's ledger).
    const BEGIN: &'static str;

    /// Whether a new ring's row is created before the first transaction that writes to
    /// the ring, outside it, instead of inside it (MySQL: concurrent creators inserting it
    /// inside theirs would deadlock upgrading their shared locks).
    const RING_ROW_FIRST: bool;

    /// Inside a commit's transaction, once everything is written: what the database sends
    /// with the change (PostgreSQL: the change feed's `NOTIFY`, so that listeners hear of
    /// it exactly when it becomes visible). Nothing by default.
    fn announce(
        tx: &mut Self::Connection,
        state: &Self::State,
        ring: &RingName,
        generation: i64,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send {
        let _ = (tx, state, ring, generation);
        async { Ok(()) }
    }
}

/// keyrot's [`Storage`], [`RingStorage`] and rotation [`Lock`](keyrot_core::Lock) on one
/// SQL database, named for each: `PostgresStore` (`SqlStore<sqlx::Postgres>`, also the
/// change feed), `MySqlStore` and `SqliteStore`, each with its cargo feature. Cheap to
/// clone; clones share the pool.
pub struct SqlStore<DB: SqlDatabase> {
    pub(crate) inner: Arc<Inner<DB>>,
}

/// What a store keeps: the same for every database but its [`Backend::State`].
pub(crate) struct Inner<DB: SqlDatabase> {
    pub pool: Pool<DB>,
    pub tables: Tables,
    pub sql: Statements,
    pub state: DB::State,
}

impl<DB: SqlDatabase> SqlStore<DB> {
    /// A store on `pool` over `tables`, running `sql`.
    pub(crate) fn from_parts(pool: Pool<DB>, tables: Tables, sql: Statements, state: DB::State) -> Self {
        Self {
            inner: Arc::new(Inner {
                pool,
                tables,
                sql,
                state,
            }),
        }
    }

    /// The pool.
    pub fn pool(&self) -> &Pool<DB> {
        &self.inner.pool
    }
}

impl<DB: SqlDatabase> Clone for SqlStore<DB> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<DB: SqlDatabase> Debug for SqlStore<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlStore")
            .field("pool", &self.inner.pool)
            .field("tables", &self.inner.tables)
            .field("state", &self.inner.state)
            .finish_non_exhaustive()
    }
}

impl<DB: SqlDatabase> Inner<DB> {
    async fn begin(&self) -> Result<Transaction<'static, DB>, sqlx::Error> {
        self.pool.begin_with(DB::BEGIN).await
    }

    /// One try of [`Storage::commit`]: one transaction.
    async fn commit_once(&self, c: &Commit, swap: Swap, linker: &dyn AuditLinker) -> Result<CommitOutcome, TxError> {
        let sql = &self.sql;
        if DB::RING_ROW_FIRST && swap.expected == 0 {
            // Outside the transaction, so concurrent first commits contend on an existing
            // row (the compare-and-swap) instead of on inserting it.
            ops::execute_pooled::<DB>(&self.pool, &sql.ensure_ring, &[Value::Text(c.ring.as_str())]).await?;
        }
        let mut tx = self.begin().await?;
        // The compare-and-swap locks the ring row (SQLite's `BEGIN IMMEDIATE` has locked
        // the database already): appends to its ledger are serialised.
        if let Some(conflict) = write::swap_generation::<DB>(&mut tx, sql, c, swap, !DB::RING_ROW_FIRST).await? {
            tx.rollback().await?;
            return Ok(conflict);
        }
        write::insert_keys_and_audit::<DB>(&mut tx, sql, c, linker).await?;
        DB::announce(&mut tx, &self.state, &c.ring, swap.next).await?;
        tx.commit().await?;
        Ok(CommitOutcome::Committed)
    }

    /// One try of [`Storage::record_attempt`]: one transaction.
    async fn attempt_once(
        &self,
        audit: &AuditRecord,
        idempotency: Option<&IdempotencyRecord>,
        linker: &dyn AuditLinker,
    ) -> Result<(), TxError> {
        let mut tx = self.begin().await?;
        if let Some(lock_ring) = &self.sql.lock_ring {
            tx = self.lock_ring_row(tx, lock_ring, &audit.ring).await?;
        }
        write::append_audit::<DB>(&mut tx, &self.sql, audit, linker).await?;
        if let Some(i) = idempotency {
            write::insert_idempotency::<DB>(&mut tx, &self.sql.keep_idempotency, i).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Serialises appends to the ring's ledger on its row (`lock_ring`), created at
    /// generation 0 first for a new ring: inside the transaction (a concurrent creator
    /// waits on the unique index, then finds it), or before it when
    /// [`Backend::RING_ROW_FIRST`]. The transaction to go on with.
    async fn lock_ring_row(
        &self,
        mut tx: Transaction<'static, DB>,
        lock_ring: &str,
        ring: &str,
    ) -> Result<Transaction<'static, DB>, TxError> {
        let ring = [Value::Text(ring)];
        if ops::fetch_optional::<DB>(&mut tx, lock_ring, &ring).await?.is_some() {
            return Ok(tx);
        }
        if DB::RING_ROW_FIRST {
            tx.rollback().await?;
            ops::execute_pooled::<DB>(&self.pool, &self.sql.ensure_ring, &ring).await?;
            tx = self.begin().await?;
        } else {
            ops::execute::<DB>(&mut tx, &self.sql.ensure_ring, &ring).await?;
        }
        ops::fetch_one::<DB>(&mut tx, lock_ring, &ring).await?;
        Ok(tx)
    }
}

#[async_trait]
impl<DB: SqlDatabase> Storage for SqlStore<DB> {
    async fn load(&self, ring: &RingName) -> Result<Ring, StorageError> {
        ops::load(&self.inner.pool, &self.inner.sql, ring).await
    }

    async fn load_public(&self, ring: &RingName) -> Result<Ring, StorageError> {
        ops::load_public(&self.inner.pool, &self.inner.sql, ring).await
    }

    async fn generation(&self, ring: &RingName) -> Result<u64, StorageError> {
        ops::generation(&self.inner.pool, &self.inner.sql, ring).await
    }

    async fn commit(&self, commit: &Commit, linker: &dyn AuditLinker) -> Result<CommitOutcome, StorageError> {
        write::commit::<DB, _, _>(commit, |swap| self.inner.commit_once(commit, swap, linker)).await
    }

    async fn record_attempt(
        &self,
        audit: &AuditRecord,
        idempotency: Option<&IdempotencyRecord>,
        linker: &dyn AuditLinker,
    ) -> Result<(), StorageError> {
        write::record_attempt::<DB, _, _>(audit, || self.inner.attempt_once(audit, idempotency, linker)).await
    }

    async fn audit_log(&self, ring: &RingName, query: AuditQuery) -> Result<Vec<AuditRecord>, StorageError> {
        ops::audit_log(&self.inner.pool, &self.inner.sql, ring, query.limit).await
    }

    async fn idempotency(&self, ring: &RingName, key: &str) -> Result<Option<IdempotencyRecord>, StorageError> {
        ops::idempotency(&self.inner.pool, &self.inner.sql, ring, key).await
    }
}

#[async_trait]
impl<DB: SqlDatabase> RingStorage for SqlStore<DB> {
    async fn due_rings(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<RingName>, StorageError> {
        ops::due_rings(&self.inner.pool, &self.inner.sql, now, limit).await
    }

    async fn reschedule(
        &self,
        ring: &RingName,
        generation: u64,
        next_due: Option<DateTime<Utc>>,
    ) -> Result<bool, StorageError> {
        ops::reschedule(&self.inner.pool, &self.inner.sql, ring, generation, next_due).await
    }

    async fn list_rings(&self, after: Option<&RingName>, limit: usize) -> Result<Vec<RingEntry>, StorageError> {
        ops::list_rings(&self.inner.pool, &self.inner.sql, after, limit).await
    }

    async fn rings_changed_since(&self, since: Option<ChangeCursor>) -> Result<RingChanges, StorageError> {
        ops::rings_changed_since(&self.inner.pool, &self.inner.sql, since).await
    }
}
