//! MySQL 8 / MariaDB 10.6 or newer: [`MySqlStore`] is keyrot's [`Storage`] and [`Lock`];
//! instances learn of changes by polling ([`MySqlStore::polling_feed`]).
//!
//! - **Commit**: one InnoDB transaction: `UPDATE … SET generation = generation + 1 WHERE
//!   name = ? AND generation = ?` is the compare-and-swap (a first commit creates the ring
//!   row at generation 0 beforehand, which changes nothing observable) and writes the
//!   manifest; then key rows are upserted by (ring, kid), the audit record is linked into
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

use crate::common::{
    self, ConfigError, DEFAULT_TABLE_PREFIX, IDEMPOTENCY_COLUMNS, KEY_COLUMNS, KEY_UPDATE_COLUMNS, MAX_PREFIX_LEN,
    Migration, Tables, TxError, bind_idempotency, db_err, gen_from_db,
};
use async_trait::async_trait;
use keyrot_core::{
    AuditLinker, AuditRecord, Commit, CommitOutcome, IdempotencyRecord, Lock, LockGuard, PollingFeed, RingName,
    StorageError,
};
use sqlx::AssertSqlSafe;
use sqlx::mysql::{MySql, MySqlPool};
use sqlx::pool::PoolConnection;
use std::sync::Arc;
use std::time::Duration;

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "rings, keys, append-only audit ledger, idempotency records",
        sql: r#"
CREATE TABLE IF NOT EXISTS {rings} (
    name VARBINARY(64) NOT NULL PRIMARY KEY,
    generation BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
CREATE TABLE IF NOT EXISTS {keys} (
    seq BIGINT NOT NULL AUTO_INCREMENT,
    ring VARBINARY(64) NOT NULL,
    kid VARBINARY(1024) NOT NULL,
    alg VARCHAR(16) NOT NULL,
    state VARCHAR(16) NOT NULL,
    origin VARCHAR(16) NOT NULL,
    forced BOOLEAN NOT NULL,
    fingerprint VARCHAR(255) NOT NULL,
    public_jwk TEXT NOT NULL,
    master_key_id VARCHAR(64) NULL,
    sealed_private_key BLOB NULL,
    created_at_ms BIGINT NOT NULL,
    activate_at_ms BIGINT NULL,
    activated_at_ms BIGINT NULL,
    retired_at_ms BIGINT NULL,
    expires_at_ms BIGINT NULL,
    expired_at_ms BIGINT NULL,
    revoked_at_ms BIGINT NULL,
    revoke_reason TEXT NULL,
    purged_at_ms BIGINT NULL,
    PRIMARY KEY (ring, kid),
    UNIQUE KEY {prefix}keys_seq (seq)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
CREATE TABLE IF NOT EXISTS {audit} (
    seq BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    audit_id VARCHAR(255) NOT NULL,
    at_ms BIGINT NOT NULL,
    ring VARBINARY(64) NOT NULL,
    actor TEXT NOT NULL,
    trigger_kind VARCHAR(32) NOT NULL,
    outcome VARCHAR(32) NOT NULL,
    forced BOOLEAN NOT NULL,
    reason TEXT NULL,
    old_kid TEXT NULL,
    old_fingerprint TEXT NULL,
    new_kid TEXT NULL,
    new_fingerprint TEXT NULL,
    generation BIGINT NOT NULL,
    idempotency_key TEXT NULL,
    request_id TEXT NULL,
    detail TEXT NULL,
    instance TEXT NOT NULL,
    KEY {prefix}audit_ring_seq (ring, seq)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
CREATE TABLE IF NOT EXISTS {idempotency} (
    ring VARBINARY(64) NOT NULL,
    idem_key VARBINARY(255) NOT NULL,
    request_hash TEXT NOT NULL,
    response MEDIUMTEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    PRIMARY KEY (ring, idem_key)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
DROP TRIGGER IF EXISTS {prefix}audit_no_update;
CREATE TRIGGER {prefix}audit_no_update BEFORE UPDATE ON {audit} FOR EACH ROW SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'the keyrot audit ledger is append-only';
DROP TRIGGER IF EXISTS {prefix}audit_no_delete;
CREATE TRIGGER {prefix}audit_no_delete BEFORE DELETE ON {audit} FOR EACH ROW SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'the keyrot audit ledger is append-only'
"#,
    },
    // Every statement is idempotent (DDL commits implicitly, so a migration cut short is
    // run again from the start): a column is added only if missing, through a prepared
    // statement (MySQL 8 has no ADD COLUMN IF NOT EXISTS). The ledger is read in
    // (chain_seq, seq) order, which MariaDB sorts by hand unless an index has both columns:
    // (ring, chain_seq, seq) replaces (ring, seq), which nothing reads by any more.
    Migration {
        version: 2,
        description: "ring manifest; audit hash chain (chain_seq, chain_mac, unique per ring); TRUNCATE guard",
        sql: r#"
SET @keyrot_ddl = (SELECT IF(COUNT(*) = 0, 'ALTER TABLE {rings} ADD COLUMN manifest MEDIUMTEXT NULL', 'DO 0') FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = '{prefix}rings' AND COLUMN_NAME = 'manifest');
PREPARE keyrot_ddl FROM @keyrot_ddl;
EXECUTE keyrot_ddl;
DEALLOCATE PREPARE keyrot_ddl;
SET @keyrot_ddl = (SELECT IF(COUNT(*) = 0, 'ALTER TABLE {audit} ADD COLUMN chain_seq BIGINT NULL, ADD COLUMN chain_mac TEXT NULL, ADD UNIQUE KEY {prefix}audit_ring_chain (ring, chain_seq), ADD KEY {prefix}audit_ring_chain_seq (ring, chain_seq, seq), DROP KEY {prefix}audit_ring_seq', 'DO 0') FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = '{prefix}audit' AND COLUMN_NAME = 'chain_seq');
PREPARE keyrot_ddl FROM @keyrot_ddl;
EXECUTE keyrot_ddl;
DEALLOCATE PREPARE keyrot_ddl;
CREATE TABLE IF NOT EXISTS {audit_guard} (
    audit_seq BIGINT NULL,
    CONSTRAINT {prefix}audit_no_truncate FOREIGN KEY (audit_seq) REFERENCES {audit} (seq)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COMMENT='keyrot: keep empty; its foreign key makes InnoDB refuse TRUNCATE of the audit ledger'
"#,
    },
    // A chain position and a MAC go together: a position without a MAC would hold the
    // ring's next slot of the unique (ring, chain_seq) key. A trigger refuses such an insert
    // on every server (MySQL before 8.0.16 parses CHECK constraints but ignores them, and a
    // MariaDB session can switch them off with `check_constraint_checks = 0`); the CHECK
    // constraint states the rule in the schema, and is added only if the rows already there
    // satisfy it (legacy rows have neither, chained rows both), so that a ledger someone
    // wrote such a row into still upgrades and the chain verifier names the row. Idempotent,
    // as DDL commits implicitly.
    Migration {
        version: 3,
        description: "audit ledger: chain_seq and chain_mac both set or both NULL",
        sql: r#"
DROP TRIGGER IF EXISTS {prefix}audit_chain_link_insert;
CREATE TRIGGER {prefix}audit_chain_link_insert BEFORE INSERT ON {audit} FOR EACH ROW BEGIN IF (NEW.chain_seq IS NULL) <> (NEW.chain_mac IS NULL) THEN SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'keyrot audit_chain_link: an audit record has both chain_seq and chain_mac, or neither'; END IF; END;
SET @keyrot_ddl = (SELECT IF(COUNT(*) = 0 AND NOT EXISTS (SELECT 1 FROM {audit} WHERE (chain_seq IS NULL) <> (chain_mac IS NULL)), 'ALTER TABLE {audit} ADD CONSTRAINT {prefix}audit_chain_link CHECK ((chain_seq IS NULL) = (chain_mac IS NULL))', 'DO 0') FROM information_schema.TABLE_CONSTRAINTS WHERE CONSTRAINT_SCHEMA = DATABASE() AND TABLE_NAME = '{prefix}audit' AND CONSTRAINT_NAME = '{prefix}audit_chain_link');
PREPARE keyrot_ddl FROM @keyrot_ddl;
EXECUTE keyrot_ddl;
DEALLOCATE PREPARE keyrot_ddl
"#,
    },
];

/// MySQL's longest identifier.
const MAX_IDENT: usize = 64;

/// A lock name for `(database, prefix, ring)`, at most 64 characters (MySQL's limit).
const LOCK_NAME: &str = "CONCAT('keyrot:', LEFT(SHA2(CONCAT_WS(':', DATABASE(), ?, ?), 256), 56))";

#[derive(Debug)]
struct Sql {
    load: String,
    generation: String,
    ensure_ring: String,
    lock_ring: String,
    cas: String,
    upsert_key: String,
    audit_head: String,
    insert_audit: String,
    insert_idempotency: String,
    insert_idempotency_first_wins: String,
    audit_log: String,
    idempotency: String,
}

impl Sql {
    fn new(t: &Tables) -> Self {
        let key_cols = KEY_COLUMNS
            .split(", ")
            .map(|c| format!("k.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let updates = KEY_UPDATE_COLUMNS
            .iter()
            .map(|c| format!("{c} = VALUES({c})"))
            .collect::<Vec<_>>()
            .join(", ");
        let audit_cols = common::AUDIT_COLUMNS;
        let insert_idempotency = format!(
            "INSERT INTO {} ({IDEMPOTENCY_COLUMNS}) VALUES ({})",
            t.idempotency,
            common::placeholders(5, false, 1)
        );
        Self {
            // One statement (one consistent read): the manifest matches the key rows. Only
            // the first row carries it, so a ring of many keys does not repeat it on each.
            load: format!(
                "SELECT r.generation AS ring_generation, \
                 CASE WHEN ROW_NUMBER() OVER (ORDER BY k.seq) = 1 THEN r.manifest END AS ring_manifest, \
                 {key_cols} FROM {rings} r LEFT JOIN {keys} k ON k.ring = r.name WHERE r.name = ? ORDER BY k.seq",
                rings = t.rings,
                keys = t.keys
            ),
            generation: format!("SELECT generation FROM {} WHERE name = ?", t.rings),
            ensure_ring: format!(
                "INSERT INTO {} (name, generation) VALUES (?, 0) ON DUPLICATE KEY UPDATE name = name",
                t.rings
            ),
            lock_ring: format!("SELECT generation FROM {} WHERE name = ? FOR UPDATE", t.rings),
            cas: format!(
                "UPDATE {} SET generation = generation + 1, manifest = ? WHERE name = ? AND generation = ?",
                t.rings
            ),
            upsert_key: format!(
                "INSERT INTO {} (ring, {KEY_COLUMNS}) VALUES ({}) ON DUPLICATE KEY UPDATE {updates}",
                t.keys,
                common::placeholders(19, false, 1)
            ),
            // The highest position, MAC or not (see `common::next_link`). A consistent
            // (non-locking) read: it is the transaction's first, made after the ring row is
            // locked, so it sees every append committed before.
            audit_head: format!(
                "SELECT chain_seq, chain_mac FROM {} WHERE ring = ? AND chain_seq IS NOT NULL \
                 ORDER BY chain_seq DESC LIMIT 1",
                t.audit
            ),
            insert_audit: format!(
                "INSERT INTO {} ({audit_cols}) VALUES ({})",
                t.audit,
                common::placeholders(common::AUDIT_COLUMN_COUNT, false, 1)
            ),
            insert_idempotency_first_wins: format!("{insert_idempotency} ON DUPLICATE KEY UPDATE ring = ring"),
            insert_idempotency,
            // Newest first by chain position; records from before the chain (NULL, which
            // sorts last descending) last, newest first.
            audit_log: format!(
                "SELECT {audit_cols} FROM {} WHERE ring = ? ORDER BY chain_seq DESC, seq DESC LIMIT ?",
                t.audit
            ),
            idempotency: format!(
                "SELECT {IDEMPOTENCY_COLUMNS} FROM {} WHERE ring = ? AND idem_key = ?",
                t.idempotency
            ),
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

    /// Creates or upgrades keyrot's tables. Safe to call from every instance at start-up:
    /// concurrent calls wait for each other (`GET_LOCK`, up to 60 s). MySQL commits DDL
    /// implicitly, so every statement is idempotent and a version is recorded in
    /// `<prefix>migrations` only once all its statements ran.
    pub async fn migrate(&self) -> Result<(), StorageError> {
        let mut conn = self
            .inner
            .pool
            .acquire()
            .await
            .map_err(db_err("mysql: acquire migration connection"))?;
        let name: Option<(Option<i64>, String)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT GET_LOCK(x.n, 60), x.n FROM (SELECT {LOCK_NAME} AS n) x"
        )))
        .bind(format!("migrate:{}", self.inner.tables.prefix))
        .bind("")
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_err("mysql: migration lock"))?;
        let lock_name = match name {
            Some((Some(1), n)) => n,
            _ => {
                return Err(StorageError::Unavailable {
                    message: "mysql: another instance has been migrating for 60 s; retry".into(),
                    source: None,
                });
            }
        };
        let result = self.migrate_locked(&mut conn).await;
        let released = sqlx::query("SELECT RELEASE_LOCK(?)")
            .bind(&lock_name)
            .execute(&mut *conn)
            .await;
        if released.is_err() {
            conn.close_on_drop();
        }
        result
    }

    async fn migrate_locked(&self, conn: &mut PoolConnection<MySql>) -> Result<(), StorageError> {
        let t = &self.inner.tables;
        sqlx::raw_sql(AssertSqlSafe(t.render(
            "CREATE TABLE IF NOT EXISTS {migrations} (version BIGINT NOT NULL PRIMARY KEY, \
             description TEXT NOT NULL, checksum VARCHAR(64) NOT NULL, applied_at_ms BIGINT NOT NULL) \
             ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
        )))
        .execute(&mut **conn)
        .await
        .map_err(db_err("mysql: create migrations table"))?;
        let applied: Vec<(i64, String)> =
            sqlx::query_as(AssertSqlSafe(t.render("SELECT version, checksum FROM {migrations}")))
                .fetch_all(&mut **conn)
                .await
                .map_err(db_err("mysql: read applied migrations"))?;
        for m in common::pending(MIGRATIONS, &applied)? {
            for statement in t.render(m.sql).split(";\n").map(str::trim).filter(|s| !s.is_empty()) {
                sqlx::raw_sql(AssertSqlSafe(statement.to_owned()))
                    .execute(&mut **conn)
                    .await
                    .map_err(db_err("mysql: apply migration"))?;
            }
            sqlx::query(AssertSqlSafe(t.render(
                "INSERT INTO {migrations} (version, description, checksum, applied_at_ms) \
                 VALUES (?, ?, ?, CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED))",
            )))
            .bind(m.version)
            .bind(m.description)
            .bind(m.checksum())
            .execute(&mut **conn)
            .await
            .map_err(db_err("mysql: record migration"))?;
            tracing::info!(
                version = m.version,
                description = m.description,
                "keyrot migration applied (mysql)"
            );
        }
        Ok(())
    }

    async fn commit_once(&self, c: &Commit, expected: i64, linker: &dyn AuditLinker) -> Result<CommitOutcome, TxError> {
        let sql = &self.inner.sql;
        let ring = c.ring.as_str();
        if expected == 0 {
            // Outside the transaction, so concurrent first commits contend on an existing
            // row (the compare-and-swap below) instead of on inserting it.
            sqlx::query(AssertSqlSafe(sql.ensure_ring.as_str()))
                .bind(ring)
                .execute(&self.inner.pool)
                .await?;
        }
        let mut tx = self.inner.pool.begin().await?;
        // The compare-and-swap locks the ring row: appends to its ledger are serialised.
        let swapped = sqlx::query(AssertSqlSafe(sql.cas.as_str()))
            .bind(c.manifest.as_str())
            .bind(ring)
            .bind(expected)
            .execute(&mut *tx)
            .await?;
        if swapped.rows_affected() == 0 {
            let current: Option<i64> = sqlx::query_scalar(AssertSqlSafe(sql.generation.as_str()))
                .bind(ring)
                .fetch_optional(&mut *tx)
                .await?;
            tx.rollback().await?;
            return Ok(CommitOutcome::Conflict {
                current: current.and_then(|g| gen_from_db(g).ok()).unwrap_or(0),
            });
        }
        if let Some(i) = &c.idempotency {
            let inserted = bind_idempotency!(sqlx::query(AssertSqlSafe(sql.insert_idempotency.as_str())), i)
                .execute(&mut *tx)
                .await;
            match inserted {
                Ok(_) => {}
                Err(sqlx::Error::Database(d)) if d.is_unique_violation() => {
                    // Another request with this key committed first: treat as a lost race.
                    tx.rollback().await?;
                    return Ok(CommitOutcome::Conflict {
                        current: gen_from_db(expected).unwrap_or(0),
                    });
                }
                Err(e) => return Err(e.into()),
            }
        }
        common::insert_keys_and_audit!(tx, sql, c, linker);
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
        let ring = audit.ring.as_str();
        let mut tx = self.inner.pool.begin().await?;
        // Serialise appends to the ring's ledger on its row.
        let locked: Option<i64> = sqlx::query_scalar(AssertSqlSafe(sql.lock_ring.as_str()))
            .bind(ring)
            .fetch_optional(&mut *tx)
            .await?;
        if locked.is_none() {
            // A new ring: its row is created outside the transaction (concurrent creators
            // inserting it inside theirs would deadlock upgrading their shared locks), then
            // locked.
            tx.rollback().await?;
            sqlx::query(AssertSqlSafe(sql.ensure_ring.as_str()))
                .bind(ring)
                .execute(&self.inner.pool)
                .await?;
            tx = self.inner.pool.begin().await?;
            let _: i64 = sqlx::query_scalar(AssertSqlSafe(sql.lock_ring.as_str()))
                .bind(ring)
                .fetch_one(&mut *tx)
                .await?;
        }
        common::append_audit!(tx, sql, audit, linker);
        if let Some(i) = idempotency {
            bind_idempotency!(
                sqlx::query(AssertSqlSafe(sql.insert_idempotency_first_wins.as_str())),
                i
            )
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

common::impl_storage!(MySqlStore { label: "mysql" });

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
                tracing::info!(ring = %self.ring, holder = %self.holder, lock = %self.name, "mysql rotation lock released");
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
                tracing::info!(ring = %ring, holder, lock = %name, ttl_s = secs, "mysql rotation lock acquired (GET_LOCK)");
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A migration, once released, is never edited: databases that applied it refuse a
    /// keyrot-sqlx whose copy differs (and would never run the change). Add a version.
    #[test]
    fn released_migrations_are_unchanged() {
        crate::common::assert_released(
            MIGRATIONS,
            &[
                "4d2cd5384f3e7d332088d5f83027474c68b1bef8bdfac642fc3125b7c187f036",
                "f4d829f970aff27c4276435a361264c4c883dce4383138c7ca74f63925c4b6b8",
                "5803c23e0f01031a18e83620eb5a2baa2e66ad8ea9fc2b344291874e12e55d20",
            ],
        );
    }
}
