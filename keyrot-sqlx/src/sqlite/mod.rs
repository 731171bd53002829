//! SQLite: [`SqliteStore`] is keyrot's [`Storage`] and [`Lock`] for processes on **one
//! host** sharing a database file; they learn of changes by polling
//! ([`SqliteStore::polling_feed`]).
//!
//! - **Commit**: one `BEGIN IMMEDIATE` transaction (the database's write lock is taken at
//!   the start, so no two commits interleave): insert-if-absent of the ring row, then
//!   `UPDATE … SET generation = generation + 1 WHERE name = ? AND generation = ?` as the
//!   compare-and-swap (writing the manifest), key upserts by (ring, kid), the audit record
//!   linked into the ring's chain, the idempotency record. `record_attempt` runs in the same
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

use crate::common::{
    self, ConfigError, DEFAULT_TABLE_PREFIX, IDEMPOTENCY_COLUMNS, KEY_COLUMNS, KEY_UPDATE_COLUMNS, MAX_PREFIX_LEN,
    Migration, Tables, TxError, bind_idempotency, db_err,
};
use async_trait::async_trait;
use keyrot_core::{
    AuditLinker, AuditRecord, Clock, Commit, CommitOutcome, IdempotencyRecord, Lock, LockGuard, PollingFeed, RingName,
    StorageError, SystemClock,
};
use sqlx::AssertSqlSafe;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "rings, keys, append-only audit ledger, idempotency records, lock leases",
        sql: r#"
CREATE TABLE {rings} (
    name TEXT NOT NULL PRIMARY KEY,
    generation INTEGER NOT NULL CHECK (generation >= 0)
);
CREATE TABLE {keys} (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ring TEXT NOT NULL REFERENCES {prefix}rings (name),
    kid TEXT NOT NULL,
    alg TEXT NOT NULL,
    state TEXT NOT NULL,
    origin TEXT NOT NULL,
    forced BOOLEAN NOT NULL,
    fingerprint TEXT NOT NULL,
    public_jwk TEXT NOT NULL,
    master_key_id TEXT,
    sealed_private_key BLOB,
    created_at_ms BIGINT NOT NULL,
    activate_at_ms BIGINT,
    activated_at_ms BIGINT,
    retired_at_ms BIGINT,
    expires_at_ms BIGINT,
    expired_at_ms BIGINT,
    revoked_at_ms BIGINT,
    revoke_reason TEXT,
    purged_at_ms BIGINT,
    UNIQUE (ring, kid),
    CHECK ((master_key_id IS NULL) = (sealed_private_key IS NULL))
);
CREATE TABLE {audit} (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    audit_id TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    ring TEXT NOT NULL,
    actor TEXT NOT NULL,
    trigger_kind TEXT NOT NULL,
    outcome TEXT NOT NULL,
    forced BOOLEAN NOT NULL,
    reason TEXT,
    old_kid TEXT,
    old_fingerprint TEXT,
    new_kid TEXT,
    new_fingerprint TEXT,
    generation BIGINT NOT NULL,
    idempotency_key TEXT,
    request_id TEXT,
    detail TEXT,
    instance TEXT NOT NULL
);
CREATE INDEX "{prefix}audit_ring_seq" ON {audit} (ring, seq);
CREATE TABLE {idempotency} (
    ring TEXT NOT NULL,
    idem_key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    response TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    PRIMARY KEY (ring, idem_key)
);
CREATE TABLE {locks} (
    ring TEXT NOT NULL PRIMARY KEY,
    holder TEXT NOT NULL,
    token TEXT NOT NULL,
    acquired_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL
);
CREATE TRIGGER "{prefix}audit_no_update" BEFORE UPDATE ON {audit} BEGIN SELECT RAISE(ABORT, 'the keyrot audit ledger is append-only'); END;
CREATE TRIGGER "{prefix}audit_no_delete" BEFORE DELETE ON {audit} BEGIN SELECT RAISE(ABORT, 'the keyrot audit ledger is append-only'); END;
"#,
    },
    // `INSERT OR REPLACE` (and `REPLACE`) deletes the row it conflicts with without firing
    // DELETE triggers (unless `recursive_triggers` is on): an insert that would conflict
    // with an existing row on any unique key of the ledger (`seq`, or `(ring, chain_seq)`)
    // is refused before any conflict resolution runs, so nothing can be replaced. The
    // ledger is read by (ring, chain_seq) (rowid last, as in every SQLite index): the
    // (ring, seq) index has no reader left.
    Migration {
        version: 2,
        description: "ring manifest; audit hash chain (chain_seq, chain_mac, unique per ring); no REPLACE into the ledger",
        sql: r#"
ALTER TABLE {rings} ADD COLUMN manifest TEXT;
ALTER TABLE {audit} ADD COLUMN chain_seq BIGINT;
ALTER TABLE {audit} ADD COLUMN chain_mac TEXT;
CREATE UNIQUE INDEX "{prefix}audit_ring_chain" ON {audit} (ring, chain_seq);
DROP INDEX "{prefix}audit_ring_seq";
CREATE TRIGGER "{prefix}audit_no_replace" BEFORE INSERT ON {audit}
WHEN EXISTS (SELECT 1 FROM {audit} WHERE seq = NEW.seq)
  OR EXISTS (SELECT 1 FROM {audit} WHERE ring = NEW.ring AND chain_seq = NEW.chain_seq)
BEGIN SELECT RAISE(ABORT, 'the keyrot audit ledger is append-only'); END;
"#,
    },
    // A chain position and a MAC go together: a position without a MAC would hold the
    // ring's next slot of the unique (ring, chain_seq) index. SQLite cannot add a CHECK
    // constraint to an existing table: a trigger refuses such an insert (updates are
    // refused already). Rows already there are left to the chain verifier.
    Migration {
        version: 3,
        description: "audit ledger: chain_seq and chain_mac both set or both NULL",
        sql: r#"
CREATE TRIGGER "{prefix}audit_chain_link" BEFORE INSERT ON {audit}
WHEN (NEW.chain_seq IS NULL) <> (NEW.chain_mac IS NULL)
BEGIN SELECT RAISE(ABORT, '{prefix}audit_chain_link: an audit record has both chain_seq and chain_mac, or neither'); END;
"#,
    },
];

#[derive(Debug)]
struct Sql {
    load: String,
    generation: String,
    ensure_ring: String,
    cas: String,
    upsert_key: String,
    audit_head: String,
    insert_audit: String,
    insert_idempotency: String,
    audit_log: String,
    idempotency: String,
    take_lease: String,
    drop_lease: String,
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
            .map(|c| format!("{c} = excluded.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let audit_cols = common::AUDIT_COLUMNS;
        Self {
            // One statement (one read transaction): the manifest matches the key rows.
            // Only the first row carries it, so a ring of many keys does not repeat it on
            // each.
            load: format!(
                "SELECT r.generation AS ring_generation, \
                 CASE WHEN row_number() OVER (ORDER BY k.seq) = 1 THEN r.manifest END AS ring_manifest, \
                 {key_cols} FROM {rings} r LEFT JOIN {keys} k ON k.ring = r.name WHERE r.name = ? ORDER BY k.seq",
                rings = t.rings,
                keys = t.keys
            ),
            generation: format!("SELECT generation FROM {} WHERE name = ?", t.rings),
            ensure_ring: format!(
                "INSERT INTO {} (name, generation) VALUES (?, 0) ON CONFLICT (name) DO NOTHING",
                t.rings
            ),
            cas: format!(
                "UPDATE {} SET generation = generation + 1, manifest = ? WHERE name = ? AND generation = ?",
                t.rings
            ),
            upsert_key: format!(
                "INSERT INTO {} (ring, {KEY_COLUMNS}) VALUES ({}) ON CONFLICT (ring, kid) DO UPDATE SET {updates}",
                t.keys,
                common::placeholders(19, false, 1)
            ),
            // The highest position, MAC or not (see `common::next_link`).
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
            insert_idempotency: format!(
                "INSERT INTO {} ({IDEMPOTENCY_COLUMNS}) VALUES ({}) ON CONFLICT (ring, idem_key) DO NOTHING",
                t.idempotency,
                common::placeholders(5, false, 1)
            ),
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

    /// The clock lock leases expire on (default: the system clock).
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
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(sqlx::sqlite::SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(db_err("sqlite: open database file"))?;
        Ok(Self::new(pool))
    }

    /// The pool.
    pub fn pool(&self) -> &SqlitePool {
        &self.inner.pool
    }

    /// A change feed that polls the ring's generation every `interval`.
    pub fn polling_feed(&self, interval: Duration) -> PollingFeed {
        PollingFeed::new(Arc::new(self.clone()), interval)
    }

    /// Creates or upgrades keyrot's tables, in one `BEGIN IMMEDIATE` transaction (so
    /// concurrent callers wait for each other). Applied versions are recorded in
    /// `<prefix>migrations`.
    pub async fn migrate(&self) -> Result<(), StorageError> {
        let t = &self.inner.tables;
        let mut tx = self
            .inner
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db_err("sqlite: begin migration"))?;
        sqlx::raw_sql(AssertSqlSafe(t.render(
            "CREATE TABLE IF NOT EXISTS {migrations} (version INTEGER NOT NULL PRIMARY KEY, \
             description TEXT NOT NULL, checksum TEXT NOT NULL, applied_at_ms BIGINT NOT NULL)",
        )))
        .execute(&mut *tx)
        .await
        .map_err(db_err("sqlite: create migrations table"))?;
        let applied: Vec<(i64, String)> =
            sqlx::query_as(AssertSqlSafe(t.render("SELECT version, checksum FROM {migrations}")))
                .fetch_all(&mut *tx)
                .await
                .map_err(db_err("sqlite: read applied migrations"))?;
        for m in common::pending(MIGRATIONS, &applied)? {
            sqlx::raw_sql(AssertSqlSafe(t.render(m.sql)))
                .execute(&mut *tx)
                .await
                .map_err(db_err("sqlite: apply migration"))?;
            sqlx::query(AssertSqlSafe(t.render(
                "INSERT INTO {migrations} (version, description, checksum, applied_at_ms) VALUES (?, ?, ?, ?)",
            )))
            .bind(m.version)
            .bind(m.description)
            .bind(m.checksum())
            .bind(chrono::Utc::now().timestamp_millis())
            .execute(&mut *tx)
            .await
            .map_err(db_err("sqlite: record migration"))?;
            tracing::info!(
                version = m.version,
                description = m.description,
                "keyrot migration applied (sqlite)"
            );
        }
        tx.commit().await.map_err(db_err("sqlite: commit migration"))
    }

    // `BEGIN IMMEDIATE` takes the database's write lock at the start: appends to every
    // ledger are serialised, and reads inside see every earlier commit.
    async fn commit_once(&self, c: &Commit, expected: i64, linker: &dyn AuditLinker) -> Result<CommitOutcome, TxError> {
        let sql = &self.inner.sql;
        let mut tx = self.inner.pool.begin_with("BEGIN IMMEDIATE").await?;
        common::swap_generation_or_return!(tx, sql, c, expected);
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
        let mut tx = self.inner.pool.begin_with("BEGIN IMMEDIATE").await?;
        common::append_audit!(tx, sql, audit, linker);
        if let Some(i) = idempotency {
            bind_idempotency!(sqlx::query(AssertSqlSafe(sql.insert_idempotency.as_str())), i)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

common::impl_storage!(SqliteStore { label: "sqlite" });

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
                tracing::info!(ring = %self.ring, holder = %self.holder, "sqlite rotation lock released (lease deleted)");
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
            tracing::info!(ring = %ring, holder, ttl_ms = ttl.as_millis() as u64, "sqlite rotation lock acquired (lease)");
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

    /// A migration, once released, is never edited: databases that applied it refuse a
    /// keyrot-sqlx whose copy differs (and would never run the change). Add a version.
    #[test]
    fn released_migrations_are_unchanged() {
        crate::common::assert_released(
            MIGRATIONS,
            &[
                "06f3c42f070abb8dc258946724905c5e50f2423c4c7c498c1dfba83f1a9e5cd8",
                "1084d1b168d37d18efe4782799474d17ad9484cf2d837012c33cd3e0143d520e",
                "7368e4124393431f5d518266e7df01fb5caa6e8152552bef4b925594ef27c124",
            ],
        );
    }
}
