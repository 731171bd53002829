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

use crate::common::{self, ConfigError, DEFAULT_TABLE_PREFIX, MAX_PREFIX_LEN, Tables, db_err};
use crate::lock::{Hold, SqlLockGuard};
use crate::master_keys::InsertWording;
use crate::migrate::{self, AppliedAt, Migrate};
use crate::ops::{self, Statements, Wording};
use crate::store::{Backend, SqlStore};
use async_trait::async_trait;
use keyrot_core::{Lock, LockGuard, PollingFeed, PollingRingsFeed, RingName, StorageError};
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
/// idempotency key fails a commit's insert (a unique violation): the commit reports a
/// conflict. An attempt that changed nothing keeps the first record of a key. A master
/// key's taken id fails its insert as a unique violation too (not `INSERT IGNORE`, which
/// would turn every other error into a warning): the store answers `Ok(false)`.
const WORDING: Wording<'static> = Wording {
    upsert_key: "ON DUPLICATE KEY UPDATE",
    new_value: "VALUES({c})",
    ensure_ring: "ON DUPLICATE KEY UPDATE name = name",
    insert_idempotency: "",
    keep_idempotency: " ON DUPLICATE KEY UPDATE ring = ring",
    chain_desc: "chain_seq DESC",
    row_locks: true,
    insert_master_key: InsertWording::Values(""),
};

impl Backend for MySql {
    /// Nothing besides what every store keeps.
    type State = ();

    const BEGIN: &'static str = "BEGIN";

    const RING_ROW_FIRST: bool = true;
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
pub type MySqlStore = SqlStore<MySql>;

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
        let sql = Statements::new::<MySql>(&tables, &WORDING);
        if self.pool.options().get_max_connections() < 2 {
            tracing::warn!(
                "keyrot MySqlStore pool has fewer than 2 connections: the rotation lock holds one while the commit needs another"
            );
        }
        Ok(SqlStore::from_parts(self.pool, tables, sql, ()))
    }
}

impl SqlStore<MySql> {
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

/// A held `GET_LOCK`: the session (pool connection) that holds it.
struct MySqlSession {
    conn: PoolConnection<MySql>,
    name: String,
}

impl std::fmt::Debug for MySqlSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MySqlSession").field("name", &self.name).finish()
    }
}

impl Hold for MySqlSession {
    type Db = MySql;
    const ENDS: &'static str = "the lock ends with its session";
    const ON_DROP: &'static str = "closing its connection frees the lock";
    const LOST: &'static str = "its session had lost it";

    async fn release(&mut self, _: &RingName) -> Result<bool, sqlx::Error> {
        let released: Result<Option<i64>, _> = sqlx::query_scalar("SELECT RELEASE_LOCK(?)")
            .bind(&self.name)
            .fetch_one(&mut *self.conn)
            .await;
        let restored = match &released {
            Ok(_) => sqlx::query("SET SESSION wait_timeout = @@GLOBAL.wait_timeout")
                .execute(&mut *self.conn)
                .await
                .is_ok(),
            Err(_) => false,
        };
        let released = released.map(|r| r == Some(1));
        if !restored || !matches!(released, Ok(true)) {
            // The session may be gone, or keep its ttl: never reuse it.
            self.conn.close_on_drop();
        }
        released
    }

    fn abandon(mut self, _: &RingName) {
        self.conn.close_on_drop();
    }
}

#[async_trait]
impl Lock for SqlStore<MySql> {
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
                Ok(Some(SqlLockGuard::boxed(MySqlSession { conn, name }, ring, holder)))
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
