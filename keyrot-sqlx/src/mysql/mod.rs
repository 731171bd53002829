//! MySQL 8 / MariaDB 10.6 or newer: [`MySqlStore`] is keyrot's [`Storage`] and [`Lock`];
//! instances learn of changes by polling ([`MySqlStore::polling_feed`]).
//!
//! - **Commit**: one InnoDB transaction: `UPDATE … SET generation = ? WHERE name = ? AND
//!   generation = ?` (to the commit's audit record's generation) is the compare-and-swap
//!   (a first commit creates the ring row at generation 0 beforehand, which changes
//!   nothing observable) and writes the manifest; then key rows are upserted by (ring, kid), the audit record is linked into
//!   the ring's chain and inserted, and the idempotency record inserted. Deadlock victims
//!   are retried.
//! - **Audit chain**: appends to a ring's ledger are serialised on its row (the
//!   compare-and-swap, or `SELECT … FOR UPDATE` in `record_attempt`); the chain head (the
//!   highest `chain_seq`) is then read by the transaction's first consistent read, so it
//!   sees every earlier append. A position without a MAC, or the reverse, is refused by a
//!   trigger (and a `CHECK` constraint).
//! - **Append-only ledger**: triggers refuse `UPDATE` and `DELETE` (and so `REPLACE` and
//!   `INSERT … ON DUPLICATE KEY UPDATE`, which fire them). Triggers never see `TRUNCATE`:
//!   an empty `<prefix>audit_guard` table has a foreign key to the ledger, and InnoDB
//!   refuses to truncate (or drop) a table another table references. A session that sets
//!   `foreign_key_checks = 0` gets past it, as one that drops the triggers gets past them:
//!   the chain shows what it did.
//! - **Lock**: `GET_LOCK(name, 0)` on a pool connection the guard holds (the name is
//!   derived from the database, the table prefix and the ring, since MySQL lock names are
//!   server-wide). Release calls `RELEASE_LOCK` before the connection goes back to the
//!   pool; a guard dropped without release closes its connection, which frees the lock, as
//!   does a holder's crash. While held, the session's `wait_timeout` is the lock's ttl, so a
//!   holder that vanished without closing its socket loses the lock within the ttl. The
//!   guard's connection counts against the pool: give it at least 2 connections.
//! - Identifiers that must compare byte for byte (ring, kid, idempotency key) are
//!   `VARBINARY`; other text is `utf8mb4`.
//!
//! [`Storage`]: keyrot_core::Storage

mod migrations;

use crate::common::{self, ConfigError, DEFAULT_TABLE_PREFIX, MAX_PREFIX_LEN, Tables, TxError, db_err, gen_from_db};
use crate::dialect::Value;
use crate::migrate::{self, AppliedAt, Migrate};
use crate::ops::{self, Statements, Wording};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use keyrot_core::{
    AuditLinker, AuditQuery, AuditRecord, ChangeCursor, Commit, CommitOutcome, IdempotencyRecord, Lock, LockGuard,
    PollingFeed, PollingRingsFeed, Ring, RingChanges, RingEntry, RingName, Storage, StorageError,
};
use migrations::MIGRATIONS;
use sqlx::AssertSqlSafe;
use sqlx::mysql::{MySql, MySqlConnection, MySqlPool};
use sqlx::pool::PoolConnection;
use std::sync::Arc;
use std::time::Duration;

/// MySQL's longest identifier.
const MAX_IDENT: usize = 64;

/// A lock name for `(database, prefix, ring)`, at most 64 characters (MySQL's limit).
const LOCK_NAME: &str = "CONCAT('keyrot:', LEFT(SHA2(CONCAT_WS(':', DATABASE(), ?, ?), 256), 56))";

/// How MySQL words the statements that differ between databases. A duplicate
/// idempotency key fails the insert (a unique violation): the commit reports a conflict.
const WORDING: Wording<'static> = Wording {
    upsert_key: "ON DUPLICATE KEY UPDATE",
    new_value: "VALUES({c})",
    ensure_ring: "ON DUPLICATE KEY UPDATE name = name",
    insert_idempotency: "",
    chain_desc: "chain_seq DESC",
};

#[derive(Debug)]
struct Sql {
    common: Statements,
    /// Locks the ring row (`?`: ring).
    lock_ring: String,
    /// The idempotency insert of `record_attempt`: the first record of a key stays.
    insert_idempotency_first_wins: String,
}

impl Sql {
    fn new(t: &Tables) -> Self {
        let common = Statements::new::<MySql>(t, &WORDING);
        Self {
            lock_ring: format!("SELECT generation FROM {} WHERE name = ? FOR UPDATE", t.rings),
            insert_idempotency_first_wins: format!("{} ON DUPLICATE KEY UPDATE ring = ring", common.insert_idempotency),
            common,
        }
    }
}

#[derive(Debug)]
struct Inner {
    pool: MySqlPool,
    tables: Tables,
    sql: Sql,
}

/// keyrot's storage and rotation lock on MySQL 8 or MariaDB 10.6+. Cheap to clone;
/// clones share the pool.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use keyrot_sqlx::sqlx::mysql::MySqlPoolOptions;
/// let pool = MySqlPoolOptions::new().max_connections(5).connect("mysql://keyrot@db/keyrot").await?;
/// let store = keyrot_sqlx::MySqlStore::new(pool);
/// store.migrate().await?;
/// let feed = store.polling_feed(std::time::Duration::from_secs(2));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct MySqlStore {
    inner: Arc<Inner>,
}

/// Builds a [`MySqlStore`].
#[derive(Debug)]
pub struct MySqlStoreBuilder {
    pool: MySqlPool,
    prefix: String,
}

impl MySqlStoreBuilder {
    /// Table name prefix (default [`DEFAULT_TABLE_PREFIX`]). Tables live in the
    /// connection's database.
    pub fn with_table_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Validates the names and builds the store.
    pub fn build(self) -> Result<MySqlStore, ConfigError> {
        common::check_ident("table prefix", &self.prefix, true, MAX_PREFIX_LEN.min(MAX_IDENT))?;
        let tables = Tables::new(None, &self.prefix, '`');
        let sql = Sql::new(&tables);
        if self.pool.options().get_max_connections() < 2 {
            tracing::warn!(
                "keyrot MySqlStore pool has fewer than 2 connections: the rotation lock holds one while the commit needs another"
            );
        }
        Ok(MySqlStore {
            inner: Arc::new(Inner {
                pool: self.pool,
                tables,
                sql,
            }),
        })
    }
}

impl MySqlStore {
    /// A store with the default table prefix in the connection's database.
    pub fn new(pool: MySqlPool) -> Self {
        Self::builder(pool)
            .build()
            .unwrap_or_else(|_| unreachable!("the default names are valid"))
    }

    /// Starts building a store on `pool`.
    pub fn builder(pool: MySqlPool) -> MySqlStoreBuilder {
        MySqlStoreBuilder {
            pool,
            prefix: DEFAULT_TABLE_PREFIX.to_owned(),
        }
    }

    /// The pool.
    pub fn pool(&self) -> &MySqlPool {
        &self.inner.pool
    }

    /// A change feed that polls the ring's generation every `interval` (MySQL has no
    /// notifications).
    pub fn polling_feed(&self, interval: Duration) -> PollingFeed {
        PollingFeed::new(Arc::new(self.clone()), interval)
    }

    /// The change feed over all rings for this store: one query over every ring's
    /// generation each `interval` ([`PollingRingsFeed`]).
    pub fn polling_rings_feed(&self, interval: Duration) -> PollingRingsFeed {
        PollingRingsFeed::new(Arc::new(self.clone()), interval)
    }

    /// Creates or upgrades keyrot's tables. Safe to call from every instance at start-up:
    /// concurrent calls wait for each other (`GET_LOCK`, up to 60 s). MySQL commits DDL
    /// implicitly, so every statement is idempotent and a version is recorded in
    /// `<prefix>migrations` only once all its statements ran.
    pub async fn migrate(&self) -> Result<(), StorageError> {
        let session = MySqlMigration::begin(self).await?;
        migrate::run(session, &self.inner.tables, MIGRATIONS).await
    }

    async fn commit_once(
        &self,
        c: &Commit,
        swap: ops::Swap,
        linker: &dyn AuditLinker,
    ) -> Result<CommitOutcome, TxError> {
        let sql = &self.inner.sql.common;
        if swap.expected == 0 {
            // Outside the transaction, so concurrent first commits contend on an existing
            // row (the compare-and-swap below) instead of on inserting it.
            ops::execute_pooled(&self.inner.pool, &sql.ensure_ring, &[Value::Text(c.ring.as_str())]).await?;
        }
        let mut tx = self.inner.pool.begin().await?;
        // The compare-and-swap locks the ring row: appends to its ledger are serialised.
        if !ops::cas::<MySql>(&mut tx, sql, c, swap).await? {
            let current = ops::current_generation::<MySql>(&mut tx, sql, &c.ring).await?;
            tx.rollback().await?;
            return Ok(CommitOutcome::Conflict { current });
        }
        if let Some(i) = &c.idempotency {
            match ops::insert_idempotency::<MySql>(&mut tx, &sql.insert_idempotency, i).await {
                Ok(_) => {}
                Err(sqlx::Error::Database(d)) if d.is_unique_violation() => {
                    // Another request with this key committed first: treat as a lost race.
                    tx.rollback().await?;
                    return Ok(CommitOutcome::Conflict {
                        current: gen_from_db(swap.expected).unwrap_or(0),
                    });
                }
                Err(e) => return Err(e.into()),
            }
        }
        ops::insert_keys_and_audit::<MySql>(&mut tx, sql, c, linker).await?;
        tx.commit().await?;
        Ok(CommitOutcome::Committed)
    }

    async fn attempt_once(
        &self,
        audit: &AuditRecord,
        idempotency: Option<&IdempotencyRecord>,
        linker: &dyn AuditLinker,
    ) -> Result<(), TxError> {
        let sql = &self.inner.sql;
        let ring = [Value::Text(&audit.ring)];
        let mut tx = self.inner.pool.begin().await?;
        // Serialise appends to the ring's ledger on its row.
        if ops::fetch_optional::<MySql>(&mut tx, &sql.lock_ring, &ring)
            .await?
            .is_none()
        {
            // A new ring: its row is created outside the transaction (concurrent creators
            // inserting it inside theirs would deadlock upgrading their shared locks), then
            // locked.
            tx.rollback().await?;
            ops::execute_pooled(&self.inner.pool, &sql.common.ensure_ring, &ring).await?;
            tx = self.inner.pool.begin().await?;
            ops::fetch_one::<MySql>(&mut tx, &sql.lock_ring, &ring).await?;
        }
        ops::append_audit::<MySql>(&mut tx, &sql.common, audit, linker).await?;
        if let Some(i) = idempotency {
            ops::insert_idempotency::<MySql>(&mut tx, &sql.insert_idempotency_first_wins, i).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// A migration: statements on one connection, serialised by `GET_LOCK` (DDL commits
/// implicitly, so there is no transaction to hold).
struct MySqlMigration {
    conn: PoolConnection<MySql>,
    lock_name: String,
}

impl MySqlMigration {
    /// Takes a connection and the migration lock on it (waiting up to 60 s).
    async fn begin(store: &MySqlStore) -> Result<Self, StorageError> {
        let mut conn = store
            .inner
            .pool
            .acquire()
            .await
            .map_err(db_err("mysql: acquire migration connection"))?;
        let name: Option<(Option<i64>, String)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT GET_LOCK(x.n, 60), x.n FROM (SELECT {LOCK_NAME} AS n) x"
        )))
        .bind(format!("migrate:{}", store.inner.tables.prefix))
        .bind("")
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_err("mysql: migration lock"))?;
        match name {
            Some((Some(1), lock_name)) => Ok(Self { conn, lock_name }),
            _ => Err(StorageError::Unavailable {
                message: "mysql: another instance has been migrating for 60 s; retry".into(),
                source: None,
            }),
        }
    }
}

impl Migrate for MySqlMigration {
    type Db = MySql;

    const VERSION_TABLE: &'static str = "CREATE TABLE IF NOT EXISTS {migrations} (version BIGINT NOT NULL PRIMARY KEY, \
        description TEXT NOT NULL, checksum VARCHAR(64) NOT NULL, applied_at_ms BIGINT NOT NULL) \
        ENGINE=InnoDB DEFAULT CHARSET=utf8mb4";

    fn conn(&mut self) -> &mut MySqlConnection {
        &mut self.conn
    }

    /// One statement at a time: MySQL runs a multi-statement text only as a script.
    async fn apply(&mut self, sql: &str) -> Result<(), StorageError> {
        for statement in sql.split(";\n").map(str::trim).filter(|s| !s.is_empty()) {
            ops::raw::<MySql>(&mut self.conn, statement)
                .await
                .map_err(db_err("mysql: apply migration"))?;
        }
        Ok(())
    }

    fn applied_at(&self) -> AppliedAt {
        AppliedAt::Server(<sqlx::MySql as crate::dialect::Dialect>::NOW_MS)
    }

    /// Releases the lock (closing the connection if that fails, which frees it too).
    async fn finish(mut self, result: Result<(), StorageError>) -> Result<(), StorageError> {
        let released = sqlx::query("SELECT RELEASE_LOCK(?)")
            .bind(&self.lock_name)
            .execute(&mut *self.conn)
            .await;
        if released.is_err() {
            self.conn.close_on_drop();
        }
        result
    }
}

#[async_trait]
impl Storage for MySqlStore {
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
        ops::commit::<MySql, _, _>(commit, |swap| self.commit_once(commit, swap, linker)).await
    }

    async fn record_attempt(
        &self,
        audit: &AuditRecord,
        idempotency: Option<&IdempotencyRecord>,
        linker: &dyn AuditLinker,
    ) -> Result<(), StorageError> {
        ops::record_attempt::<MySql, _, _>(audit, || self.attempt_once(audit, idempotency, linker)).await
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

/// A held `GET_LOCK`: the session (pool connection) that holds it.
struct MySqlLockGuard {
    conn: Option<PoolConnection<MySql>>,
    name: String,
    ring: RingName,
    holder: String,
}

impl std::fmt::Debug for MySqlLockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MySqlLockGuard")
            .field("ring", &self.ring)
            .field("holder", &self.holder)
            .field("name", &self.name)
            .finish()
    }
}

impl Drop for MySqlLockGuard {
    fn drop(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            conn.close_on_drop();
            tracing::warn!(ring = %self.ring, holder = %self.holder, lock = %self.name,
                "mysql rotation lock guard dropped without release: closing its connection frees the lock");
        }
    }
}

#[async_trait]
impl LockGuard for MySqlLockGuard {
    async fn release(mut self: Box<Self>) -> Result<(), StorageError> {
        let Some(mut conn) = self.conn.take() else {
            return Ok(());
        };
        let released: Result<Option<i64>, _> = sqlx::query_scalar("SELECT RELEASE_LOCK(?)")
            .bind(&self.name)
            .fetch_one(&mut *conn)
            .await;
        let restored = match &released {
            Ok(_) => sqlx::query("SET SESSION wait_timeout = @@GLOBAL.wait_timeout")
                .execute(&mut *conn)
                .await
                .is_ok(),
            Err(_) => false,
        };
        if !restored {
            conn.close_on_drop();
        }
        match released {
            Ok(Some(1)) => {
                tracing::debug!(ring = %self.ring, holder = %self.holder, lock = %self.name, "mysql rotation lock released");
                Ok(())
            }
            Ok(_) => {
                conn.close_on_drop();
                tracing::warn!(ring = %self.ring, holder = %self.holder, lock = %self.name,
                    "mysql rotation lock was no longer held by its session at release");
                Ok(())
            }
            Err(e) => Err(db_err("mysql: release rotation lock (the lock ends with its session)")(
                e,
            )),
        }
    }
}

#[async_trait]
impl Lock for MySqlStore {
    async fn try_acquire(
        &self,
        ring: &RingName,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<Box<dyn LockGuard>>, StorageError> {
        let mut conn = self
            .inner
            .pool
            .acquire()
            .await
            .map_err(db_err("mysql: acquire lock connection"))?;
        let got: Result<(Option<i64>, String), _> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT GET_LOCK(x.n, 0), x.n FROM (SELECT {LOCK_NAME} AS n) x"
        )))
        .bind(self.inner.tables.prefix.as_str())
        .bind(ring.as_str())
        .fetch_one(&mut *conn)
        .await;
        match got {
            Ok((Some(1), name)) => {
                // Bound how long a holder that vanished keeps its session (and so the lock).
                let secs = ttl.as_secs().max(1);
                if let Err(e) = sqlx::query("SET SESSION wait_timeout = ?")
                    .bind(secs)
                    .execute(&mut *conn)
                    .await
                {
                    conn.close_on_drop();
                    return Err(db_err("mysql: bound rotation lock session")(e));
                }
                tracing::debug!(ring = %ring, holder, lock = %name, ttl_s = secs, "mysql rotation lock acquired (GET_LOCK)");
                Ok(Some(Box::new(MySqlLockGuard {
                    conn: Some(conn),
                    name,
                    ring: ring.clone(),
                    holder: holder.to_owned(),
                })))
            }
            Ok((Some(0), name)) => {
                tracing::debug!(ring = %ring, holder, lock = %name, "mysql rotation lock busy");
                Ok(None)
            }
            Ok((other, _)) => {
                conn.close_on_drop();
                Err(StorageError::Unavailable {
                    message: format!("mysql: GET_LOCK returned {other:?}"),
                    source: None,
                })
            }
            Err(e) => {
                conn.close_on_drop();
                Err(db_err("mysql: take rotation lock")(e))
            }
        }
    }
}
