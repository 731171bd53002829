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

use crate::common::{self, ConfigError, DEFAULT_TABLE_PREFIX, MAX_PREFIX_LEN, Tables, db_err};
use crate::lock::{Hold, SqlLockGuard};
use crate::master_keys::InsertWording;
use crate::migrate::{self, AppliedAt, Migrate};
use crate::ops::{self, Statements, Wording};
use crate::store::{Backend, SqlStore};
use async_trait::async_trait;
use keyrot_core::{Clock, Lock, LockGuard, PollingFeed, PollingRingsFeed, RingName, StorageError, SystemClock};
use migrations::MIGRATIONS;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::{AssertSqlSafe, Sqlite, Transaction};
use state::SqliteState;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How SQLite words the statements that differ between databases. Its write transactions
/// lock the whole database, so no statement locks a ring row.
const WORDING: Wording<'static> = Wording {
    upsert_key: "ON CONFLICT (ring, kid) DO UPDATE SET",
    new_value: "excluded.{c}",
    ensure_ring: "ON CONFLICT (name) DO NOTHING",
    insert_idempotency: " ON CONFLICT (ring, idem_key) DO NOTHING",
    keep_idempotency: " ON CONFLICT (ring, idem_key) DO NOTHING",
    chain_desc: "chain_seq DESC",
    row_locks: false,
    insert_master_key: InsertWording::SelectWhereNotExists,
};

/// `BEGIN IMMEDIATE` takes the database's write lock at the start: appends to every
/// ledger are serialised, and reads inside see every earlier commit.
const BEGIN_WRITE: &str = "BEGIN IMMEDIATE";

/// What a SQLite store keeps besides what every store keeps. (`SqliteState` is nominally
/// `pub`, as the state of the public `SqlStore<Sqlite>`; this module is private.)
mod state {
    use keyrot_core::Clock;
    use std::sync::Arc;

    #[derive(Debug)]
    pub struct SqliteState {
        /// The clock lock leases expire on and migrations are dated by.
        pub(super) clock: Arc<dyn Clock>,
        /// Takes a lease row (ring, holder, token, acquired, expires) unless a live one holds it.
        pub(super) take_lease: String,
        /// Deletes a lease row (ring, token).
        pub(super) drop_lease: String,
    }
}

impl SqliteState {
    fn new(t: &Tables, clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
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

impl Backend for Sqlite {
    type State = SqliteState;
    const BEGIN: &'static str = BEGIN_WRITE;
    const RING_ROW_FIRST: bool = false;
}

/// keyrot's storage and rotation lock on a SQLite file, for processes on one host.
/// Cheap to clone; clones share the pool.
pub type SqliteStore = SqlStore<Sqlite>;

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
        let sql = Statements::new::<Sqlite>(&tables, &WORDING);
        let state = SqliteState::new(&tables, self.clock);
        Ok(SqlStore::from_parts(self.pool, tables, sql, state))
    }
}

impl SqlStore<Sqlite> {
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
            clock: self.inner.state.clock.clone(),
        };
        migrate::run(session, &self.inner.tables, MIGRATIONS).await
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

/// A held lease row: released by deleting it (by its token, so never another holder's).
#[derive(Debug)]
struct Lease {
    store: SqliteStore,
    token: String,
}

impl Lease {
    async fn delete(store: &SqliteStore, ring: &RingName, token: &str) -> Result<bool, sqlx::Error> {
        let r = sqlx::query(AssertSqlSafe(store.inner.state.drop_lease.as_str()))
            .bind(ring.as_str())
            .bind(token)
            .execute(&store.inner.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }
}

impl Hold for Lease {
    type Db = Sqlite;
    const ENDS: &'static str = "the lease expires with its ttl";
    const ON_DROP: &'static str = "deleting its lease in the background";
    const LOST: &'static str = "the lease had expired and was taken over";

    async fn release(&mut self, ring: &RingName) -> Result<bool, sqlx::Error> {
        Self::delete(&self.store, ring, &self.token).await
    }

    fn abandon(self, ring: &RingName) {
        let ring = ring.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    if let Err(e) = Self::delete(&self.store, &ring, &self.token).await {
                        tracing::warn!(ring = %ring, error = %e, "sqlite lease not deleted; it expires with its ttl");
                    }
                });
            }
            Err(_) => tracing::warn!(ring = %ring, "no runtime to delete the sqlite lease; it expires with its ttl"),
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
impl Lock for SqlStore<Sqlite> {
    async fn try_acquire(
        &self,
        ring: &RingName,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<Box<dyn LockGuard>>, StorageError> {
        let now = self.inner.state.clock.now().timestamp_millis();
        let until = now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
        let token = lease_token(holder);
        let taken = sqlx::query(AssertSqlSafe(self.inner.state.take_lease.as_str()))
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
            let lease = Lease {
                store: self.clone(),
                token,
            };
            Ok(Some(SqlLockGuard::boxed(lease, ring, holder)))
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
