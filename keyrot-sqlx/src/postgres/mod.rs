//! PostgreSQL (14 or newer): [`PostgresStore`] is keyrot's [`Storage`], [`Lock`] and
//! [`ChangeFeed`].
//!
//! - **Commit**: one transaction: `INSERT … ON CONFLICT DO NOTHING` creates the ring row at
//!   generation 0 if it is new (race-safe: a concurrent creator waits on the unique index),
//!   then `UPDATE … SET generation = $1, manifest = … WHERE name = $4 AND generation = $5`
//!   (to the commit's audit record's generation) is the compare-and-swap; key rows are
//!   upserted by (ring, kid), the audit record linked into the ring's chain and inserted,
//!   the idempotency record inserted, and `pg_notify` sent — all inside the transaction, so listeners hear of a
//!   change exactly when it becomes visible.
//! - **Audit chain**: appends to a ring's ledger are serialised on its row (the
//!   compare-and-swap, or `SELECT … FOR UPDATE` in `record_attempt`); both transactions
//!   run at `READ COMMITTED` whatever the database's default, so the chain head read next
//!   (the highest `chain_seq`) sees every earlier append. A position without a MAC, or the
//!   reverse, is refused by a `CHECK` constraint.
//! - **Append-only ledger**: row triggers refuse `UPDATE` and `DELETE` (and so
//!   `INSERT … ON CONFLICT DO UPDATE`), a statement trigger refuses `TRUNCATE`.
//! - **Lock**: a session advisory lock (`pg_try_advisory_lock`, key = SHA-256 of schema,
//!   table prefix and ring name) on a pool connection the guard holds. Release unlocks it
//!   explicitly before the connection goes back to the pool; a guard dropped without release
//!   closes its connection, and a holder that crashes loses its session: either way the
//!   server frees the lock. While held, the session's `idle_session_timeout` is set to the
//!   lock's ttl, so even a holder that vanished without closing its socket (a partitioned
//!   host) loses the lock within the ttl. The guard's connection counts against the pool:
//!   give the pool at least 2 connections (3 with the change feed).
//! - **Change feed**: `LISTEN` on one channel (`keyrot_ring_changed` by default; payload
//!   `<ring>:<generation>`) through sqlx's [`PgListener`], which takes one pool connection.
//!   After a reconnect the stream yields [`FeedEvent::Resync`]: notifications sent while
//!   disconnected are lost, so the ring is reloaded fully.
//!
//! [`Storage`]: keyrot_core::Storage

mod migrations;
mod rings;

use crate::common::{self, ConfigError, DEFAULT_TABLE_PREFIX, MAX_PREFIX_LEN, Tables, TxError, db_err};
use crate::migrate::{self, AppliedAt, Migrate};
use crate::ops::{self, Statements, Wording};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use keyrot_core::{
    AuditLinker, AuditQuery, AuditRecord, ChangeCursor, ChangeFeed, ChangeStream, Commit, CommitOutcome, FeedEvent,
    IdempotencyRecord, Lock, LockGuard, Ring, RingChanges, RingEntry, RingName, Storage, StorageError,
};
use migrations::MIGRATIONS;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnection, PgListener, PgPool, Postgres};
use sqlx::{AssertSqlSafe, Transaction};
use std::sync::Arc;
use std::time::Duration;

/// How every transaction that appends to a ledger begins. At `READ COMMITTED` each
/// statement sees what committed before it started, so the chain head read after the ring
/// row is locked sees every earlier append; at a stricter default (`REPEATABLE READ`,
/// `SERIALIZABLE`, set for the database, role or session) the snapshot could predate the
/// lock and the append would collide with, or fail to follow, the head.
const BEGIN_APPEND: &str = "BEGIN ISOLATION LEVEL READ COMMITTED";

/// PostgreSQL's longest identifier (and `LISTEN` channel).
const MAX_IDENT: usize = 63;

/// How PostgreSQL words the statements that differ between databases.
const WORDING: Wording<'static> = Wording {
    upsert_key: "ON CONFLICT (ring, kid) DO UPDATE SET",
    new_value: "EXCLUDED.{c}",
    ensure_ring: "ON CONFLICT (name) DO NOTHING",
    insert_idempotency: " ON CONFLICT (ring, idem_key) DO NOTHING",
    chain_desc: "chain_seq DESC NULLS LAST",
};

#[derive(Debug)]
struct Sql {
    common: Statements,
    /// Locks the ring row (`$1`: ring).
    lock_ring: String,
}

impl Sql {
    fn new(t: &Tables) -> Self {
        Self {
            common: Statements::new::<Postgres>(t, &WORDING),
            lock_ring: format!("SELECT generation FROM {} WHERE name = $1 FOR UPDATE", t.rings),
        }
    }
}

#[derive(Debug)]
struct Inner {
    pool: PgPool,
    schema: Option<String>,
    tables: Tables,
    namespace: String,
    channel: String,
    sql: Sql,
}

/// keyrot's storage, rotation lock and change feed on PostgreSQL 14 or newer. Cheap to
/// clone; clones share the pool.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use keyrot_sqlx::sqlx::postgres::PgPoolOptions;
/// let pool = PgPoolOptions::new().max_connections(5).connect("postgres://keyrot@db/keyrot").await?;
/// let store = keyrot_sqlx::PostgresStore::builder(pool).with_schema("keyrot").build()?;
/// store.migrate().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

/// Builds a [`PostgresStore`].
#[derive(Debug)]
pub struct PostgresStoreBuilder {
    pool: PgPool,
    schema: Option<String>,
    prefix: String,
    channel: Option<String>,
}

impl PostgresStoreBuilder {
    /// Keeps keyrot's tables in this schema (created by [`PostgresStore::migrate`] if
    /// missing) instead of the connection's `search_path`.
    pub fn with_schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = Some(schema.into());
        self
    }

    /// Table name prefix (default [`DEFAULT_TABLE_PREFIX`]).
    pub fn with_table_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The `NOTIFY` channel. Default: `<prefix>ring_changed` (so `keyrot_ring_changed`),
    /// preceded by `<schema>.` when a schema is set, so stores in different schemas of one
    /// database do not hear each other.
    pub fn with_channel(mut self, channel: impl Into<String>) -> Self {
        self.channel = Some(channel.into());
        self
    }

    /// Validates the names and builds the store.
    pub fn build(self) -> Result<PostgresStore, ConfigError> {
        if let Some(s) = &self.schema {
            common::check_ident("schema", s, false, MAX_IDENT)?;
        }
        common::check_ident("table prefix", &self.prefix, true, MAX_PREFIX_LEN)?;
        let namespace = format!("{}.{}", self.schema.as_deref().unwrap_or(""), self.prefix);
        let channel = match self.channel {
            Some(c) => {
                common::check_ident("channel", &c, false, MAX_IDENT)?;
                c
            }
            None => {
                let c = match &self.schema {
                    Some(s) => format!("{s}.{}ring_changed", self.prefix),
                    None => format!("{}ring_changed", self.prefix),
                };
                if c.len() <= MAX_IDENT {
                    c
                } else {
                    format!("keyrot_ring_changed_{}", &common::digest_hex(&namespace)[..32])
                }
            }
        };
        let tables = Tables::new(self.schema.as_deref(), &self.prefix, '"');
        let sql = Sql::new(&tables);
        if self.pool.options().get_max_connections() < 2 {
            tracing::warn!(
                "keyrot PostgresStore pool has fewer than 2 connections: the rotation lock holds one while the commit needs another"
            );
        }
        Ok(PostgresStore {
            inner: Arc::new(Inner {
                pool: self.pool,
                schema: self.schema,
                tables,
                namespace,
                channel,
                sql,
            }),
        })
    }
}

impl PostgresStore {
    /// A store with the default table prefix in the connection's `search_path`.
    pub fn new(pool: PgPool) -> Self {
        Self::builder(pool)
            .build()
            .unwrap_or_else(|_| unreachable!("the default names are valid"))
    }

    /// Starts building a store on `pool`.
    pub fn builder(pool: PgPool) -> PostgresStoreBuilder {
        PostgresStoreBuilder {
            pool,
            schema: None,
            prefix: DEFAULT_TABLE_PREFIX.to_owned(),
            channel: None,
        }
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// The `NOTIFY` channel.
    pub fn channel(&self) -> &str {
        &self.inner.channel
    }

    /// Creates or upgrades keyrot's tables (and the schema, if one is set). Safe to call
    /// from every instance at start-up: concurrent calls wait for each other (transaction
    /// advisory lock) and everything runs in one transaction. Applied versions are recorded
    /// in `<prefix>migrations`.
    pub async fn migrate(&self) -> Result<(), StorageError> {
        let session = PgMigration::begin(self).await?;
        migrate::run(session, &self.inner.tables, MIGRATIONS).await
    }

    async fn commit_once(
        &self,
        c: &Commit,
        swap: ops::Swap,
        linker: &dyn AuditLinker,
    ) -> Result<CommitOutcome, TxError> {
        let sql = &self.inner.sql.common;
        let mut tx = self.inner.pool.begin_with(BEGIN_APPEND).await?;
        // The compare-and-swap locks the ring row: appends to its ledger are serialised.
        if let Some(conflict) = ops::swap_generation::<Postgres>(&mut tx, sql, c, swap).await? {
            tx.rollback().await?;
            return Ok(conflict);
        }
        ops::insert_keys_and_audit::<Postgres>(&mut tx, sql, c, linker).await?;
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(self.inner.channel.as_str())
            .bind(format!("{}:{}", c.ring.as_str(), swap.next))
            .execute(&mut *tx)
            .await?;
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
        let ring = [crate::dialect::Value::Text(&audit.ring)];
        let mut tx = self.inner.pool.begin_with(BEGIN_APPEND).await?;
        // Serialise appends to the ring's ledger on its row.
        if ops::fetch_optional::<Postgres>(&mut tx, &sql.lock_ring, &ring)
            .await?
            .is_none()
        {
            // A new ring: its row is created at generation 0 (a concurrent creator waits
            // on the unique index, then finds it), then locked.
            ops::execute::<Postgres>(&mut tx, &sql.common.ensure_ring, &ring).await?;
            ops::fetch_one::<Postgres>(&mut tx, &sql.lock_ring, &ring).await?;
        }
        ops::append_audit::<Postgres>(&mut tx, &sql.common, audit, linker).await?;
        if let Some(i) = idempotency {
            ops::insert_idempotency::<Postgres>(&mut tx, &sql.common.insert_idempotency, i).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// A migration: one transaction, serialised by a transaction advisory lock.
struct PgMigration {
    tx: Transaction<'static, Postgres>,
}

impl PgMigration {
    /// Begins the transaction, takes the lock and creates the schema if one is set.
    async fn begin(store: &PostgresStore) -> Result<Self, StorageError> {
        let inner = &store.inner;
        let mut tx = inner.pool.begin().await.map_err(db_err("postgres: begin migration"))?;
        let key = advisory_key(&common::lock_digest(
            &format!("migrate:{}", inner.namespace),
            &migrate_ring(),
        ));
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(key)
            .execute(&mut *tx)
            .await
            .map_err(db_err("postgres: migration lock"))?;
        if let Some(schema) = &inner.schema {
            sqlx::raw_sql(AssertSqlSafe(format!(r#"CREATE SCHEMA IF NOT EXISTS "{schema}""#)))
                .execute(&mut *tx)
                .await
                .map_err(db_err("postgres: create schema"))?;
        }
        Ok(Self { tx })
    }
}

impl Migrate for PgMigration {
    type Db = Postgres;

    const VERSION_TABLE: &'static str = "CREATE TABLE IF NOT EXISTS {migrations} (version BIGINT PRIMARY KEY, \
        description TEXT NOT NULL, checksum TEXT NOT NULL, applied_at_ms BIGINT NOT NULL)";

    fn conn(&mut self) -> &mut PgConnection {
        &mut self.tx
    }

    async fn apply(&mut self, sql: &str) -> Result<(), StorageError> {
        ops::raw::<Postgres>(&mut self.tx, sql)
            .await
            .map_err(db_err("postgres: apply migration"))
    }

    fn applied_at(&self) -> AppliedAt {
        AppliedAt::Server(<sqlx::Postgres as crate::dialect::Dialect>::NOW_MS)
    }

    async fn finish(self, result: Result<(), StorageError>) -> Result<(), StorageError> {
        result?;
        self.tx.commit().await.map_err(db_err("postgres: commit migration"))
    }
}

fn migrate_ring() -> RingName {
    RingName::new("migrate").unwrap_or_else(|_| unreachable!("valid ring name"))
}

fn advisory_key(digest: &[u8; 32]) -> i64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(b)
}

#[async_trait]
impl Storage for PostgresStore {
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
        ops::commit::<Postgres, _, _>(commit, |swap| self.commit_once(commit, swap, linker)).await
    }

    async fn record_attempt(
        &self,
        audit: &AuditRecord,
        idempotency: Option<&IdempotencyRecord>,
        linker: &dyn AuditLinker,
    ) -> Result<(), StorageError> {
        ops::record_attempt::<Postgres, _, _>(audit, || self.attempt_once(audit, idempotency, linker)).await
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

/// A held advisory lock: the session (pool connection) that holds it.
struct PgLockGuard {
    conn: Option<PoolConnection<Postgres>>,
    key: i64,
    ring: RingName,
    holder: String,
}

impl std::fmt::Debug for PgLockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgLockGuard")
            .field("ring", &self.ring)
            .field("holder", &self.holder)
            .field("key", &self.key)
            .finish()
    }
}

impl Drop for PgLockGuard {
    fn drop(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            // Closing the session is what frees a session lock; never return it to the pool.
            conn.close_on_drop();
            tracing::warn!(ring = %self.ring, holder = %self.holder, lock_key = self.key,
                "postgres rotation lock guard dropped without release: closing its connection frees the lock");
        }
    }
}

#[async_trait]
impl LockGuard for PgLockGuard {
    async fn release(mut self: Box<Self>) -> Result<(), StorageError> {
        let Some(mut conn) = self.conn.take() else {
            return Ok(());
        };
        let released: Result<bool, _> = sqlx::query_scalar(
            "SELECT pg_advisory_unlock($1) AS released, set_config('idle_session_timeout', \
             (SELECT reset_val FROM pg_settings WHERE name = 'idle_session_timeout'), false)",
        )
        .bind(self.key)
        .fetch_one(&mut *conn)
        .await;
        match released {
            Ok(true) => {
                tracing::debug!(ring = %self.ring, holder = %self.holder, lock_key = self.key, "postgres rotation lock released");
                Ok(())
            }
            Ok(false) => {
                conn.close_on_drop();
                tracing::warn!(ring = %self.ring, holder = %self.holder, lock_key = self.key,
                    "postgres rotation lock was no longer held by its session at release");
                Ok(())
            }
            Err(e) => {
                // The session may be gone (and the lock with it); never reuse it.
                conn.close_on_drop();
                Err(db_err(
                    "postgres: release rotation lock (the lock ends with its session)",
                )(e))
            }
        }
    }
}

#[async_trait]
impl Lock for PostgresStore {
    async fn try_acquire(
        &self,
        ring: &RingName,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<Box<dyn LockGuard>>, StorageError> {
        let key = advisory_key(&common::lock_digest(&self.inner.namespace, ring));
        let mut conn = self
            .inner
            .pool
            .acquire()
            .await
            .map_err(db_err("postgres: acquire lock connection"))?;
        let ttl_ms = ttl.as_millis().clamp(1_000, i32::MAX as u128).to_string();
        // One round trip: take the lock and, if taken, bound how long an idle holder keeps
        // its session (and so the lock).
        let got: Result<bool, _> = sqlx::query_scalar(
            "WITH l AS MATERIALIZED (SELECT pg_try_advisory_lock($1) AS got) \
             SELECT l.got, CASE WHEN l.got THEN set_config('idle_session_timeout', $2, false) END FROM l",
        )
        .bind(key)
        .bind(ttl_ms)
        .fetch_one(&mut *conn)
        .await;
        match got {
            Ok(true) => {
                tracing::debug!(ring = %ring, holder, lock_key = key, ttl_ms = ttl.as_millis() as u64,
                    "postgres rotation lock acquired (advisory lock)");
                Ok(Some(Box::new(PgLockGuard {
                    conn: Some(conn),
                    key,
                    ring: ring.clone(),
                    holder: holder.to_owned(),
                })))
            }
            Ok(false) => {
                tracing::debug!(ring = %ring, holder, lock_key = key, "postgres rotation lock busy");
                Ok(None)
            }
            Err(e) => {
                // The statement may have taken the lock before failing: drop the session.
                conn.close_on_drop();
                Err(db_err("postgres: take rotation lock")(e))
            }
        }
    }
}

/// A `LISTEN` subscription for one ring.
struct PgChangeStream {
    listener: PgListener,
    ring: RingName,
    channel: String,
}

impl std::fmt::Debug for PgChangeStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgChangeStream")
            .field("ring", &self.ring)
            .field("channel", &self.channel)
            .finish()
    }
}

/// Parses a `<ring>:<generation>` payload for `ring`.
fn parse_payload(payload: &str, ring: &RingName) -> Option<u64> {
    let (name, generation) = payload.rsplit_once(':')?;
    if name == ring.as_str() {
        generation.parse().ok()
    } else {
        None
    }
}

#[async_trait]
impl ChangeStream for PgChangeStream {
    async fn next(&mut self) -> Result<FeedEvent, StorageError> {
        loop {
            match self.listener.try_recv().await {
                Ok(Some(n)) => {
                    if let Some(g) = parse_payload(n.payload(), &self.ring) {
                        return Ok(FeedEvent::Changed(g));
                    }
                }
                Ok(None) => {
                    tracing::info!(ring = %self.ring, channel = %self.channel,
                        "postgres change feed reconnected; notifications may have been lost: resync");
                    return Ok(FeedEvent::Resync);
                }
                Err(e) => return Err(db_err("postgres: change feed (LISTEN)")(e)),
            }
        }
    }
}

#[async_trait]
impl ChangeFeed for PostgresStore {
    async fn subscribe(&self, ring: &RingName) -> Result<Box<dyn ChangeStream>, StorageError> {
        let mut listener = PgListener::connect_with(&self.inner.pool)
            .await
            .map_err(db_err("postgres: change feed connection"))?;
        listener
            .listen(&self.inner.channel)
            .await
            .map_err(db_err("postgres: LISTEN"))?;
        tracing::debug!(ring = %ring, channel = %self.inner.channel, "postgres change feed listening");
        Ok(Box::new(PgChangeStream {
            listener,
            ring: ring.clone(),
            channel: self.inner.channel.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_filtered_by_ring() -> Result<(), keyrot_core::InvalidRingName> {
        let r = RingName::new("default")?;
        assert_eq!(parse_payload("default:42", &r), Some(42));
        assert_eq!(parse_payload("other:42", &r), None);
        assert_eq!(parse_payload("default:x", &r), None);
        assert_eq!(parse_payload("default", &r), None);
        Ok(())
    }
}
