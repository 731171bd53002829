//! SQLite: [`SqliteStore`] is keyrot's [`Storage`] and [`Lock`] for processes on **one
//! host** sharing a database file; they learn of changes by polling
//! ([`SqliteStore::polling_feed`]).
//!
//! - **Commit**: one `BEGIN IMMEDIATE` transaction (the database's write lock is taken at
//!   the start, so no two commits interleave): insert-if-absent of the ring row, then
//!   `UPDATE … SET generation = ? WHERE name = ? AND generation = ?` (to the commit's audit
//!   record's generation) as the compare-and-swap (writing the manifest), key upserts by
//!   (ring, kid), the audit record linked into the ring's chain, the idempotency record. `record_attempt` runs in the same
//!   kind of transaction, so appends to the ledger never interleave.
//! - **Append-only ledger**: triggers refuse `UPDATE` and `DELETE`, and an insert that
//!   would conflict with an existing row (`INSERT OR REPLACE`, `REPLACE`, which delete the
//!   row they conflict with without firing DELETE triggers), and a record with a chain
//!   position but no MAC, or the reverse.
//! - **Lock**: a lease row (`<prefix>locks`) with an expiry, taken by one atomic
//!   `INSERT … ON CONFLICT DO UPDATE … WHERE expires_at_ms <= now`. A holder that crashes
//!   keeps it at most its ttl; release deletes the row; a guard dropped without release
//!   deletes it in the background. Lease time is read from the store's clock
//!   ([`SqliteStoreBuilder::with_clock`], the system clock by default), which processes on
//!   one host share.
//! - What SQLite does not give: several hosts. A database file on a network share does not
//!   make its locking reliable; use PostgreSQL or MySQL for instances on several hosts.
//!
//! [`Storage`]: keyrot_core::Storage

mod migrations;

use crate::common::{self, ConfigError, DEFAULT_TABLE_PREFIX, MAX_PREFIX_LEN, Tables, TxError, db_err};
use crate::migrate::{self, AppliedAt, Migrate};
use crate::ops::{self, Statements, Wording};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use keyrot_core::{
    AuditLinker, AuditQuery, AuditRecord, ChangeCursor, Clock, Commit, CommitOutcome, IdempotencyRecord, Lock,
    LockGuard, PollingFeed, PollingRingsFeed, Ring, RingChanges, RingEntry, RingName, Storage, StorageError,
    SystemClock,
};
use migrations::MIGRATIONS;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::{AssertSqlSafe, Sqlite, Transaction};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How SQLite words the statements that differ between databases.
const WORDING: Wording<'static> = Wording {
    upsert_key: "ON CONFLICT (ring, kid) DO UPDATE SET",
    new_value: "excluded.{c}",
    ensure_ring: "ON CONFLICT (name) DO NOTHING",
    insert_idempotency: " ON CONFLICT (ring, idem_key) DO NOTHING",
    chain_desc: "chain_seq DESC",
};

/// `BEGIN IMMEDIATE` takes the database's write lock at the start: appends to every
/// ledger are serialised, and reads inside see every earlier commit.
const BEGIN_WRITE: &str = "BEGIN IMMEDIATE";

#[derive(Debug)]
struct Sql {
    common: Statements,
    take_lease: String,
    drop_lease: String,
}

impl Sql {
    fn new(t: &Tables) -> Self {
        Self {
            common: Statements::new::<Sqlite>(t, &WORDING),
            take_lease: format!(
                "INSERT INTO {locks} (ring, holder, token, acquired_at_ms, expires_at_ms) VALUES (?, ?, ?, ?, ?) \
                 ON CONFLICT (ring) DO UPDATE SET holder = excluded.holder, token = excluded.token, \
                 acquired_at_ms = excluded.acquired_at_ms, expires_at_ms = excluded.expires_at_ms \
                 WHERE {locks}.expires_at_ms <= excluded.acquired_at_ms",
                locks = t.locks
            ),
            drop_lease: format!("DELETE FROM {} WHERE ring = ? AND token = ?", t.locks),
        }
    }
}

#[derive(Debug)]
struct Inner {
    pool: SqlitePool,
    tables: Tables,
    sql: Sql,
    clock: Arc<dyn Clock>,
}

/// keyrot's storage and rotation lock on a SQLite file, for processes on one host.
/// Cheap to clone; clones share the pool.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

/// Builds a [`SqliteStore`].
#[derive(Debug)]
pub struct SqliteStoreBuilder {
    pool: SqlitePool,
    prefix: String,
    clock: Arc<dyn Clock>,
}

impl SqliteStoreBuilder {
    /// Table name prefix (default [`DEFAULT_TABLE_PREFIX`]).
    pub fn with_table_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The clock lock leases expire on and migrations are dated by (default: the system
    /// clock).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Validates the names and builds the store.
    pub fn build(self) -> Result<SqliteStore, ConfigError> {
        common::check_ident("table prefix", &self.prefix, true, MAX_PREFIX_LEN)?;
        let tables = Tables::new(None, &self.prefix, '"');
        let sql = Sql::new(&tables);
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                pool: self.pool,
                tables,
                sql,
                clock: self.clock,
            }),
        })
    }
}

impl SqliteStore {
    /// A store with the default table prefix.
    pub fn new(pool: SqlitePool) -> Self {
        Self::builder(pool)
            .build()
            .unwrap_or_else(|_| unreachable!("the default names are valid"))
    }

    /// Starts building a store on `pool`.
    pub fn builder(pool: SqlitePool) -> SqliteStoreBuilder {
        SqliteStoreBuilder {
            pool,
            prefix: DEFAULT_TABLE_PREFIX.to_owned(),
            clock: Arc::new(SystemClock),
        }
    }

    /// Opens (creating it if missing) a database file with the settings keyrot expects:
    /// WAL journal, `synchronous = FULL`, foreign keys on, a 10 s busy timeout, up to 4
    /// connections. Call [`SqliteStore::migrate`] next.
    pub async fn connect_file(path: impl AsRef<Path>) -> Result<Self, StorageError> {
        let pool = Self::open_file(path)
            .await
            .map_err(db_err("sqlite: open database file"))?;
        Ok(Self::new(pool))
    }

    /// The pool of [`SqliteStore::connect_file`].
    pub(crate) async fn open_file(path: impl AsRef<Path>) -> Result<SqlitePool, sqlx::Error> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(sqlx::sqlite::SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        SqlitePoolOptions::new().max_connections(4).connect_with(options).await
    }

    /// The pool.
    pub fn pool(&self) -> &SqlitePool {
        &self.inner.pool
    }

    /// A change feed that polls the ring's generation every `interval`.
    pub fn polling_feed(&self, interval: Duration) -> PollingFeed {
        PollingFeed::new(Arc::new(self.clone()), interval)
    }

    /// The change feed over all rings for this store: one query over every ring's
    /// generation each `interval` ([`PollingRingsFeed`]).
    pub fn polling_rings_feed(&self, interval: Duration) -> PollingRingsFeed {
        PollingRingsFeed::new(Arc::new(self.clone()), interval)
    }

    /// Creates or upgrades keyrot's tables, in one `BEGIN IMMEDIATE` transaction (so
    /// concurrent callers wait for each other). Applied versions are recorded in
    /// `<prefix>migrations`, with the time of the store's clock.
    pub async fn migrate(&self) -> Result<(), StorageError> {
        let tx = self
            .inner
            .pool
            .begin_with(BEGIN_WRITE)
            .await
            .map_err(db_err("sqlite: begin migration"))?;
        let session = SqliteMigration {
            tx,
            clock: self.inner.clock.clone(),
        };
        migrate::run(session, &self.inner.tables, MIGRATIONS).await
    }

    async fn commit_once(
        &self,
        c: &Commit,
        swap: ops::Swap,
        linker: &dyn AuditLinker,
    ) -> Result<CommitOutcome, TxError> {
        let sql = &self.inner.sql.common;
        let mut tx = self.inner.pool.begin_with(BEGIN_WRITE).await?;
        if let Some(conflict) = ops::swap_generation::<Sqlite>(&mut tx, sql, c, swap).await? {
            tx.rollback().await?;
            return Ok(conflict);
        }
        ops::insert_keys_and_audit::<Sqlite>(&mut tx, sql, c, linker).await?;
        tx.commit().await?;
        Ok(CommitOutcome::Committed)
    }

    async fn attempt_once(
        &self,
        audit: &AuditRecord,
        idempotency: Option<&IdempotencyRecord>,
        linker: &dyn AuditLinker,
    ) -> Result<(), TxError> {
        let sql = &self.inner.sql.common;
        let mut tx = self.inner.pool.begin_with(BEGIN_WRITE).await?;
        ops::append_audit::<Sqlite>(&mut tx, sql, audit, linker).await?;
        if let Some(i) = idempotency {
            ops::insert_idempotency::<Sqlite>(&mut tx, &sql.insert_idempotency, i).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// A migration: one `BEGIN IMMEDIATE` transaction (the database's write lock).
struct SqliteMigration {
    tx: Transaction<'static, Sqlite>,
    clock: Arc<dyn Clock>,
}

impl Migrate for SqliteMigration {
    type Db = Sqlite;

    const VERSION_TABLE: &'static str = "CREATE TABLE IF NOT EXISTS {migrations} (version INTEGER NOT NULL PRIMARY KEY, \
        description TEXT NOT NULL, checksum TEXT NOT NULL, applied_at_ms BIGINT NOT NULL)";

    fn conn(&mut self) -> &mut SqliteConnection {
        &mut self.tx
    }

    async fn apply(&mut self, sql: &str) -> Result<(), StorageError> {
        ops::raw::<Sqlite>(&mut self.tx, sql)
            .await
            .map_err(db_err("sqlite: apply migration"))
    }

    fn applied_at(&self) -> AppliedAt {
        AppliedAt::Clock(self.clock.now().timestamp_millis())
    }

    async fn finish(self, result: Result<(), StorageError>) -> Result<(), StorageError> {
        result?;
        self.tx.commit().await.map_err(db_err("sqlite: commit migration"))
    }
}

#[async_trait]
impl Storage for SqliteStore {
    async fn load(&self, ring: &RingName) -> Result<Ring, StorageError> {
        ops::load(&self.inner.pool, &self.inner.sql.common, ring).await
    }

    async fn load_public(&self, ring: &RingName) -> Result<Ring, StorageError> {
        ops::load_public(&self.inner.pool, &self.inner.sql.common, ring).await
    }

    async fn generation(&self, ring: &RingName) -> Result<u64, StorageError> {
        ops::generation(&self.inner.pool, &self.inner.sql.common, ring).await
    }

    async fn commit(&self, commit: &Commit, linker: &dyn AuditLinker) -> Result<CommitOutcome, StorageError> {
        ops::commit::<Sqlite, _, _>(commit, |swap| self.commit_once(commit, swap, linker)).await
    }

    async fn record_attempt(
        &self,
        audit: &AuditRecord,
        idempotency: Option<&IdempotencyRecord>,
        linker: &dyn AuditLinker,
    ) -> Result<(), StorageError> {
        ops::record_attempt::<Sqlite, _, _>(audit, || self.attempt_once(audit, idempotency, linker)).await
    }

    async fn audit_log(&self, ring: &RingName, query: AuditQuery) -> Result<Vec<AuditRecord>, StorageError> {
        ops::audit_log(&self.inner.pool, &self.inner.sql.common, ring, query.limit).await
    }

    async fn idempotency(&self, ring: &RingName, key: &str) -> Result<Option<IdempotencyRecord>, StorageError> {
        ops::idempotency(&self.inner.pool, &self.inner.sql.common, ring, key).await
    }

    async fn due_rings(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<RingName>, StorageError> {
        ops::due_rings(&self.inner.pool, &self.inner.sql.common, now, limit).await
    }

    async fn reschedule(
        &self,
        ring: &RingName,
        generation: u64,
        next_due: Option<DateTime<Utc>>,
    ) -> Result<bool, StorageError> {
        ops::reschedule(&self.inner.pool, &self.inner.sql.common, ring, generation, next_due).await
    }

    async fn list_rings(&self, after: Option<&RingName>, limit: usize) -> Result<Vec<RingEntry>, StorageError> {
        ops::list_rings(&self.inner.pool, &self.inner.sql.common, after, limit).await
    }

    async fn rings_changed_since(&self, since: Option<ChangeCursor>) -> Result<RingChanges, StorageError> {
        ops::rings_changed_since(&self.inner.pool, &self.inner.sql.common, since).await
    }
}

/// A held lease row.
#[derive(Debug)]
struct SqliteLockGuard {
    store: Option<SqliteStore>,
    ring: RingName,
    holder: String,
    token: String,
}

impl SqliteLockGuard {
    async fn delete(store: &SqliteStore, ring: &RingName, token: &str) -> Result<bool, sqlx::Error> {
        let r = sqlx::query(AssertSqlSafe(store.inner.sql.drop_lease.as_str()))
            .bind(ring.as_str())
            .bind(token)
            .execute(&store.inner.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }
}

impl Drop for SqliteLockGuard {
    fn drop(&mut self) {
        let Some(store) = self.store.take() else { return };
        tracing::warn!(ring = %self.ring, holder = %self.holder,
            "sqlite rotation lock guard dropped without release: deleting its lease in the background");
        let (ring, token) = (self.ring.clone(), std::mem::take(&mut self.token));
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    if let Err(e) = Self::delete(&store, &ring, &token).await {
                        tracing::warn!(ring = %ring, error = %e, "sqlite lease not deleted; it expires with its ttl");
                    }
                });
            }
            Err(_) => {
                tracing::warn!(ring = %self.ring, "no runtime to delete the sqlite lease; it expires with its ttl")
            }
        }
    }
}

#[async_trait]
impl LockGuard for SqliteLockGuard {
    async fn release(mut self: Box<Self>) -> Result<(), StorageError> {
        let Some(store) = self.store.take() else { return Ok(()) };
        match Self::delete(&store, &self.ring, &self.token).await {
            Ok(true) => {
                tracing::debug!(ring = %self.ring, holder = %self.holder, "sqlite rotation lock released (lease deleted)");
                Ok(())
            }
            Ok(false) => {
                tracing::warn!(ring = %self.ring, holder = %self.holder,
                    "sqlite rotation lease had expired and was taken over before release");
                Ok(())
            }
            Err(e) => Err(db_err("sqlite: release rotation lock (the lease expires with its ttl)")(e)),
        }
    }
}

static LEASE_COUNTER: AtomicU64 = AtomicU64::new(0);

fn lease_token(holder: &str) -> String {
    let n = LEASE_COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    common::digest_hex(&format!("{holder}\0{}\0{n}\0{nanos}", std::process::id()))
}

#[async_trait]
impl Lock for SqliteStore {
    async fn try_acquire(
        &self,
        ring: &RingName,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<Box<dyn LockGuard>>, StorageError> {
        let now = self.inner.clock.now().timestamp_millis();
        let until = now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
        let token = lease_token(holder);
        let taken = sqlx::query(AssertSqlSafe(self.inner.sql.take_lease.as_str()))
            .bind(ring.as_str())
            .bind(holder)
            .bind(&token)
            .bind(now)
            .bind(until)
            .execute(&self.inner.pool)
            .await
            .map_err(db_err("sqlite: take rotation lock"))?;
        if taken.rows_affected() == 1 {
            tracing::debug!(ring = %ring, holder, ttl_ms = ttl.as_millis() as u64, "sqlite rotation lock acquired (lease)");
            Ok(Some(Box::new(SqliteLockGuard {
                store: Some(self.clone()),
                ring: ring.clone(),
                holder: holder.to_owned(),
                token,
            })))
        } else {
            tracing::debug!(ring = %ring, holder, "sqlite rotation lock busy");
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyrot_core::ManualClock;

    /// Migrations are dated by the store's clock, as lock leases are.
    #[tokio::test]
    async fn migrations_are_dated_by_the_store_clock() -> Result<(), Box<dyn std::error::Error>> {
        let at = chrono::DateTime::from_timestamp_millis(1_234_567_890_123).ok_or("time")?;
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect("sqlite::memory:")
            .await?;
        let store = SqliteStore::builder(pool.clone())
            .with_clock(Arc::new(ManualClock::new(at)))
            .build()?;
        store.migrate().await?;
        let dates: Vec<i64> = sqlx::query_scalar("SELECT applied_at_ms FROM keyrot_migrations")
            .fetch_all(&pool)
            .await?;
        assert_eq!(dates.len(), MIGRATIONS.len());
        assert!(dates.iter().all(|d| *d == at.timestamp_millis()), "{dates:?}");
        Ok(())
    }
}
