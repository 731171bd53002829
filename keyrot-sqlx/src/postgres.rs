//! PostgreSQL (14 or newer): [`PostgresStore`] is keyrot's [`Storage`], [`Lock`] and
//! [`ChangeFeed`].
//!
//! - **Commit**: one transaction: `INSERT … ON CONFLICT DO NOTHING` creates the ring row at
//!   generation 0 if it is new (race-safe: a concurrent creator waits on the unique index),
//!   then `UPDATE … SET generation = generation + 1, manifest = … WHERE name = $2 AND
//!   generation = $3` is the compare-and-swap; key rows are upserted by (ring, kid), the
//!   audit record linked into the ring's chain and inserted, the idempotency record
//!   inserted, and `pg_notify` sent — all inside the transaction, so listeners hear of a
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

use crate::common::{
    self, ConfigError, DEFAULT_TABLE_PREFIX, IDEMPOTENCY_COLUMNS, KEY_COLUMNS, KEY_UPDATE_COLUMNS, MAX_PREFIX_LEN,
    Migration, Tables, TxError, bind_idempotency, db_err,
};
use async_trait::async_trait;
use keyrot_core::{
    AuditLinker, AuditRecord, ChangeFeed, ChangeStream, Commit, CommitOutcome, FeedEvent, IdempotencyRecord, Lock,
    LockGuard, RingName, StorageError,
};
use sqlx::AssertSqlSafe;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgListener, PgPool, Postgres};
use std::sync::Arc;
use std::time::Duration;

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "rings, keys, append-only audit ledger, idempotency records",
        sql: r#"
CREATE TABLE {rings} (
    name TEXT PRIMARY KEY,
    generation BIGINT NOT NULL CHECK (generation >= 0)
);
CREATE TABLE {keys} (
    seq BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    ring TEXT NOT NULL REFERENCES {rings} (name),
    kid TEXT NOT NULL,
    alg TEXT NOT NULL,
    state TEXT NOT NULL,
    origin TEXT NOT NULL,
    forced BOOLEAN NOT NULL,
    fingerprint TEXT NOT NULL,
    public_jwk TEXT NOT NULL,
    master_key_id TEXT,
    sealed_private_key BYTEA,
    created_at_ms BIGINT NOT NULL,
    activate_at_ms BIGINT,
    activated_at_ms BIGINT,
    retired_at_ms BIGINT,
    expires_at_ms BIGINT,
    expired_at_ms BIGINT,
    revoked_at_ms BIGINT,
    revoke_reason TEXT,
    purged_at_ms BIGINT,
    PRIMARY KEY (ring, kid),
    CHECK ((master_key_id IS NULL) = (sealed_private_key IS NULL))
);
CREATE TABLE {audit} (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
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
CREATE INDEX {prefix}audit_ring_seq ON {audit} (ring, seq DESC);
CREATE TABLE {idempotency} (
    ring TEXT NOT NULL,
    idem_key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    response TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    PRIMARY KEY (ring, idem_key)
);
CREATE FUNCTION {q}{prefix}audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'the keyrot audit ledger is append-only'; END $$;
CREATE TRIGGER {prefix}audit_no_change BEFORE UPDATE OR DELETE ON {audit} FOR EACH ROW EXECUTE FUNCTION {q}{prefix}audit_append_only();
CREATE TRIGGER {prefix}audit_no_truncate BEFORE TRUNCATE ON {audit} FOR EACH STATEMENT EXECUTE FUNCTION {q}{prefix}audit_append_only();
"#,
    },
    Migration {
        version: 2,
        description: "ring manifest; audit hash chain (chain_seq, chain_mac, unique per ring)",
        // The ledger is read by (ring, chain_seq): the (ring, seq) index has no reader left.
        sql: r#"
ALTER TABLE {rings} ADD COLUMN manifest TEXT;
ALTER TABLE {audit} ADD COLUMN chain_seq BIGINT, ADD COLUMN chain_mac TEXT;
CREATE UNIQUE INDEX {prefix}audit_ring_chain ON {audit} (ring, chain_seq DESC NULLS LAST);
DROP INDEX {q}{prefix}audit_ring_seq;
"#,
    },
    // A chain position and a MAC go together: a position without a MAC would hold the
    // ring's next slot of the unique (ring, chain_seq) index. The constraint binds every row
    // written from now on; it is validated over the rows already there only when they
    // satisfy it (legacy rows have neither, chained rows both), so that a ledger someone
    // wrote such a row into still upgrades, and the chain verifier names the row.
    Migration {
        version: 3,
        description: "audit ledger: chain_seq and chain_mac both set or both NULL",
        sql: r#"
ALTER TABLE {audit} ADD CONSTRAINT {prefix}audit_chain_link CHECK ((chain_seq IS NULL) = (chain_mac IS NULL)) NOT VALID;
DO $$ BEGIN
    IF EXISTS (SELECT 1 FROM {audit} WHERE (chain_seq IS NULL) <> (chain_mac IS NULL)) THEN
        RAISE WARNING 'keyrot: the audit ledger holds records with a chain position but no MAC, or the reverse (written outside keyrot): verify the audit chain';
    ELSE
        ALTER TABLE {audit} VALIDATE CONSTRAINT {prefix}audit_chain_link;
    END IF;
END $$;
"#,
    },
];

/// How every transaction that appends to a ledger begins. At `READ COMMITTED` each
/// statement sees what committed before it started, so the chain head read after the ring
/// row is locked sees every earlier append; at a stricter default (`REPEATABLE READ`,
/// `SERIALIZABLE`, set for the database, role or session) the snapshot could predate the
/// lock and the append would collide with, or fail to follow, the head.
const BEGIN_APPEND: &str = "BEGIN ISOLATION LEVEL READ COMMITTED";

/// PostgreSQL's longest identifier (and `LISTEN` channel).
const MAX_IDENT: usize = 63;

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
            .map(|c| format!("{c} = EXCLUDED.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let audit_cols = common::AUDIT_COLUMNS;
        Self {
            // One statement (one snapshot): the manifest matches the key rows. Only the
            // first row carries it, so a ring of many keys does not repeat it on each.
            load: format!(
                "SELECT r.generation AS ring_generation, \
                 CASE WHEN row_number() OVER (ORDER BY k.seq) = 1 THEN r.manifest END AS ring_manifest, \
                 {key_cols} FROM {rings} r LEFT JOIN {keys} k ON k.ring = r.name WHERE r.name = $1 ORDER BY k.seq",
                rings = t.rings,
                keys = t.keys
            ),
            generation: format!("SELECT generation FROM {} WHERE name = $1", t.rings),
            ensure_ring: format!(
                "INSERT INTO {} (name, generation) VALUES ($1, 0) ON CONFLICT (name) DO NOTHING",
                t.rings
            ),
            lock_ring: format!("SELECT generation FROM {} WHERE name = $1 FOR UPDATE", t.rings),
            cas: format!(
                "UPDATE {} SET generation = generation + 1, manifest = $1 WHERE name = $2 AND generation = $3",
                t.rings
            ),
            upsert_key: format!(
                "INSERT INTO {} (ring, {KEY_COLUMNS}) VALUES ({}) ON CONFLICT (ring, kid) DO UPDATE SET {updates}",
                t.keys,
                common::placeholders(19, true, 1)
            ),
            // The highest position, MAC or not (see `common::next_link`).
            audit_head: format!(
                "SELECT chain_seq, chain_mac FROM {} WHERE ring = $1 AND chain_seq IS NOT NULL \
                 ORDER BY chain_seq DESC NULLS LAST LIMIT 1",
                t.audit
            ),
            insert_audit: format!(
                "INSERT INTO {} ({audit_cols}) VALUES ({})",
                t.audit,
                common::placeholders(common::AUDIT_COLUMN_COUNT, true, 1)
            ),
            insert_idempotency: format!(
                "INSERT INTO {} ({IDEMPOTENCY_COLUMNS}) VALUES ({}) ON CONFLICT (ring, idem_key) DO NOTHING",
                t.idempotency,
                common::placeholders(5, true, 1)
            ),
            // Newest first by chain position; records from before the chain last, newest
            // first.
            audit_log: format!(
                "SELECT {audit_cols} FROM {} WHERE ring = $1 ORDER BY chain_seq DESC NULLS LAST, seq DESC LIMIT $2",
                t.audit
            ),
            idempotency: format!(
                "SELECT {IDEMPOTENCY_COLUMNS} FROM {} WHERE ring = $1 AND idem_key = $2",
                t.idempotency
            ),
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
        let t = &self.inner.tables;
        let mut tx = self
            .inner
            .pool
            .begin()
            .await
            .map_err(db_err("postgres: begin migration"))?;
        let key = advisory_key(&common::lock_digest(
            &format!("migrate:{}", self.inner.namespace),
            &migrate_ring(),
        ));
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(key)
            .execute(&mut *tx)
            .await
            .map_err(db_err("postgres: migration lock"))?;
        if let Some(schema) = &self.inner.schema {
            sqlx::raw_sql(AssertSqlSafe(format!(r#"CREATE SCHEMA IF NOT EXISTS "{schema}""#)))
                .execute(&mut *tx)
                .await
                .map_err(db_err("postgres: create schema"))?;
        }
        sqlx::raw_sql(AssertSqlSafe(t.render(
            "CREATE TABLE IF NOT EXISTS {migrations} (version BIGINT PRIMARY KEY, description TEXT NOT NULL, \
             checksum TEXT NOT NULL, applied_at_ms BIGINT NOT NULL)",
        )))
        .execute(&mut *tx)
        .await
        .map_err(db_err("postgres: create migrations table"))?;
        let applied: Vec<(i64, String)> =
            sqlx::query_as(AssertSqlSafe(t.render("SELECT version, checksum FROM {migrations}")))
                .fetch_all(&mut *tx)
                .await
                .map_err(db_err("postgres: read applied migrations"))?;
        for m in common::pending(MIGRATIONS, &applied)? {
            sqlx::raw_sql(AssertSqlSafe(t.render(m.sql)))
                .execute(&mut *tx)
                .await
                .map_err(db_err("postgres: apply migration"))?;
            sqlx::query(AssertSqlSafe(t.render(
                "INSERT INTO {migrations} (version, description, checksum, applied_at_ms) \
                 VALUES ($1, $2, $3, (extract(epoch FROM clock_timestamp()) * 1000)::bigint)",
            )))
            .bind(m.version)
            .bind(m.description)
            .bind(m.checksum())
            .execute(&mut *tx)
            .await
            .map_err(db_err("postgres: record migration"))?;
            tracing::info!(
                version = m.version,
                description = m.description,
                "keyrot migration applied (postgres)"
            );
        }
        tx.commit().await.map_err(db_err("postgres: commit migration"))
    }

    async fn commit_once(&self, c: &Commit, expected: i64, linker: &dyn AuditLinker) -> Result<CommitOutcome, TxError> {
        let sql = &self.inner.sql;
        let mut tx = self.inner.pool.begin_with(BEGIN_APPEND).await?;
        // The compare-and-swap locks the ring row: appends to its ledger are serialised.
        common::swap_generation_or_return!(tx, sql, c, expected);
        common::insert_keys_and_audit!(tx, sql, c, linker);
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(self.inner.channel.as_str())
            .bind(format!("{}:{}", c.ring.as_str(), expected + 1))
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
        let mut tx = self.inner.pool.begin_with(BEGIN_APPEND).await?;
        // Serialise appends to the ring's ledger on its row.
        let locked: Option<i64> = sqlx::query_scalar(AssertSqlSafe(sql.lock_ring.as_str()))
            .bind(audit.ring.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        if locked.is_none() {
            // A new ring: its row is created at generation 0 (a concurrent creator waits
            // on the unique index, then finds it), then locked.
            sqlx::query(AssertSqlSafe(sql.ensure_ring.as_str()))
                .bind(audit.ring.as_str())
                .execute(&mut *tx)
                .await?;
            let _: i64 = sqlx::query_scalar(AssertSqlSafe(sql.lock_ring.as_str()))
                .bind(audit.ring.as_str())
                .fetch_one(&mut *tx)
                .await?;
        }
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

fn migrate_ring() -> RingName {
    RingName::new("migrate").unwrap_or_else(|_| unreachable!("valid ring name"))
}

fn advisory_key(digest: &[u8; 32]) -> i64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(b)
}

common::impl_storage!(PostgresStore { label: "postgres" });

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
                tracing::info!(ring = %self.ring, holder = %self.holder, lock_key = self.key, "postgres rotation lock released");
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
                tracing::info!(ring = %ring, holder, lock_key = key, ttl_ms = ttl.as_millis() as u64,
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

    /// A migration, once released, is never edited: databases that applied it refuse a
    /// keyrot-sqlx whose copy differs (and would never run the change). Add a version.
    #[test]
    fn released_migrations_are_unchanged() {
        crate::common::assert_released(
            MIGRATIONS,
            &[
                "bbe6a0e1433a5482da0a347361da24039edb097d5729cc759372047f2f1b7737",
                "31a65fa6682c981eccd9bbb63ce5115b695c918e0b31cfee46cefbd7a8439c32",
                "c13beb659bd4800bdd1ed1f1b08f556d6427efa66fdf3a626381a683e0607e19",
            ],
        );
    }

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
