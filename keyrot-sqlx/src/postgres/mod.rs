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

use crate::common::{self, ConfigError, DEFAULT_TABLE_PREFIX, MAX_PREFIX_LEN, Tables, db_err};
use crate::lock::{Hold, SqlLockGuard};
use crate::master_keys::InsertWording;
use crate::migrate::{self, AppliedAt, Migrate};
use crate::ops::{self, Statements, Wording};
use crate::store::{Backend, SqlStore};
use async_trait::async_trait;
use keyrot_core::{ChangeFeed, ChangeStream, FeedEvent, Lock, LockGuard, RingName, StorageError};
use migrations::MIGRATIONS;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnection, PgListener, PgPool, Postgres};
use sqlx::{AssertSqlSafe, Transaction};
use state::PgState;
use std::time::Duration;

/// PostgreSQL's longest identifier (and `LISTEN` channel).
const MAX_IDENT: usize = 63;

/// How PostgreSQL words the statements that differ between databases.
const WORDING: Wording<'static> = Wording {
    upsert_key: "ON CONFLICT (ring, kid) DO UPDATE SET",
    new_value: "EXCLUDED.{c}",
    ensure_ring: "ON CONFLICT (name) DO NOTHING",
    insert_idempotency: " ON CONFLICT (ring, idem_key) DO NOTHING",
    keep_idempotency: " ON CONFLICT (ring, idem_key) DO NOTHING",
    chain_desc: "chain_seq DESC NULLS LAST",
    row_locks: true,
    insert_master_key: InsertWording::Values(" ON CONFLICT (id) DO NOTHING"),
};

/// What a PostgreSQL store keeps besides what every store keeps. (`PgState` is nominally
/// `pub`, as the state of the public `SqlStore<Postgres>`; this module is private.)
mod state {
    #[derive(Debug)]
    pub struct PgState {
        pub(super) schema: Option<String>,
        /// Schema and table prefix: what the lock keys are derived from.
        pub(super) namespace: String,
        /// The `NOTIFY` channel.
        pub(super) channel: String,
    }
}

impl Backend for Postgres {
    type State = PgState;

    /// At `READ COMMITTED` each statement sees what committed before it started, so the
    /// chain head read after the ring row is locked sees every earlier append; at a
    /// stricter default (`REPEATABLE READ`, `SERIALIZABLE`, set for the database, role or
    /// session) the snapshot could predate the lock and the append would collide with, or
    /// fail to follow, the head.
    const BEGIN: &'static str = "BEGIN ISOLATION LEVEL READ COMMITTED";

    const RING_ROW_FIRST: bool = false;

    /// The change feed's `NOTIFY` (`<ring>:<generation>`), sent inside the transaction.
    async fn announce(
        tx: &mut PgConnection,
        state: &PgState,
        ring: &RingName,
        generation: i64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(state.channel.as_str())
            .bind(format!("{}:{generation}", ring.as_str()))
            .execute(tx)
            .await?;
        Ok(())
    }
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
pub type PostgresStore = SqlStore<Postgres>;

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
        let sql = Statements::new::<Postgres>(&tables, &WORDING);
        if self.pool.options().get_max_connections() < 2 {
            tracing::warn!(
                "keyrot PostgresStore pool has fewer than 2 connections: the rotation lock holds one while the commit needs another"
            );
        }
        let state = PgState {
            schema: self.schema,
            namespace,
            channel,
        };
        Ok(SqlStore::from_parts(self.pool, tables, sql, state))
    }
}

impl SqlStore<Postgres> {
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

    /// The `NOTIFY` channel.
    pub fn channel(&self) -> &str {
        &self.inner.state.channel
    }

    /// Creates or upgrades keyrot's tables (and the schema, if one is set). Safe to call
    /// from every instance at start-up: concurrent calls wait for each other (transaction
    /// advisory lock) and everything runs in one transaction. Applied versions are recorded
    /// in `<prefix>migrations`.
    pub async fn migrate(&self) -> Result<(), StorageError> {
        let session = PgMigration::begin(self).await?;
        migrate::run(session, &self.inner.tables, MIGRATIONS).await
    }
}

/// A migration: one transaction, serialised by a transaction advisory lock.
struct PgMigration {
    tx: Transaction<'static, Postgres>,
}

impl PgMigration {
    /// Begins the transaction, takes the lock and creates the schema if one is set.
    async fn begin(store: &PostgresStore) -> Result<Self, StorageError> {
        let (pool, state) = (&store.inner.pool, &store.inner.state);
        let mut tx = pool.begin().await.map_err(db_err("postgres: begin migration"))?;
        let key = advisory_key(&common::lock_digest(
            &format!("migrate:{}", state.namespace),
            &migrate_ring(),
        ));
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(key)
            .execute(&mut *tx)
            .await
            .map_err(db_err("postgres: migration lock"))?;
        if let Some(schema) = &state.schema {
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

/// A held advisory lock: the session (pool connection) that holds it.
struct PgSession {
    conn: PoolConnection<Postgres>,
    key: i64,
}

impl std::fmt::Debug for PgSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSession").field("key", &self.key).finish()
    }
}

impl Hold for PgSession {
    type Db = Postgres;
    const ENDS: &'static str = "the lock ends with its session";
    // Closing the session is what frees a session lock; it never goes back to the pool.
    const ON_DROP: &'static str = "closing its connection frees the lock";
    const LOST: &'static str = "its session had lost it";

    async fn release(&mut self, _: &RingName) -> Result<bool, sqlx::Error> {
        let released: Result<bool, _> = sqlx::query_scalar(
            "SELECT pg_advisory_unlock($1) AS released, set_config('idle_session_timeout', \
             (SELECT reset_val FROM pg_settings WHERE name = 'idle_session_timeout'), false)",
        )
        .bind(self.key)
        .fetch_one(&mut *self.conn)
        .await;
        if !matches!(released, Ok(true)) {
            // The session may be gone (and the lock with it): never reuse it.
            self.conn.close_on_drop();
        }
        released
    }

    fn abandon(mut self, _: &RingName) {
        self.conn.close_on_drop();
    }
}

#[async_trait]
impl Lock for SqlStore<Postgres> {
    async fn try_acquire(
        &self,
        ring: &RingName,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<Box<dyn LockGuard>>, StorageError> {
        let key = advisory_key(&common::lock_digest(&self.inner.state.namespace, ring));
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
                Ok(Some(SqlLockGuard::boxed(PgSession { conn, key }, ring, holder)))
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
impl ChangeFeed for SqlStore<Postgres> {
    async fn subscribe(&self, ring: &RingName) -> Result<Box<dyn ChangeStream>, StorageError> {
        let mut listener = PgListener::connect_with(&self.inner.pool)
            .await
            .map_err(db_err("postgres: change feed connection"))?;
        listener
            .listen(&self.inner.state.channel)
            .await
            .map_err(db_err("postgres: LISTEN"))?;
        tracing::debug!(ring = %ring, channel = %self.inner.state.channel, "postgres change feed listening");
        Ok(Box::new(PgChangeStream {
            listener,
            ring: ring.clone(),
            channel: self.inner.state.channel.clone(),
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
