//! What every database shares: table naming, row decoding, time and generation
//! conversions, error mapping, the migration bookkeeping.

use chrono::{DateTime, Utc};
use keyrot_core::{
    AuditRecord, IdempotencyRecord, KeyOrigin, KeyRecord, KeyState, Outcome, RingName, SealedKey, StorageError,
    TriggerKind,
};
use sha2::{Digest as _, Sha256};
use sqlx::{ColumnIndex, Decode, Row, Type};

/// The table prefix used unless another is configured: tables are `keyrot_rings`,
/// `keyrot_keys`, `keyrot_audit`, `keyrot_idempotency` (and `keyrot_locks` on SQLite),
/// with applied migrations in `keyrot_migrations`.
pub const DEFAULT_TABLE_PREFIX: &str = "keyrot_";

/// A store was configured with a name the database cannot safely use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A schema name, table prefix or channel name breaks the naming rule.
    #[error("invalid {what} {value:?}: use at most {max} characters of a-z, 0-9 and _, not starting with a digit")]
    InvalidIdentifier {
        /// Which setting.
        what: &'static str,
        /// The value given (never secret).
        value: String,
        /// The longest accepted value.
        max: usize,
    },
}

/// Checks a lowercase SQL identifier (or identifier prefix, which may be empty).
pub(crate) fn check_ident(what: &'static str, value: &str, allow_empty: bool, max: usize) -> Result<(), ConfigError> {
    let ok = (allow_empty || !value.is_empty())
        && value.len() <= max
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !value.bytes().next().is_some_and(|b| b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(ConfigError::InvalidIdentifier {
            what,
            value: value.to_owned(),
            max,
        })
    }
}

/// Longest table prefix: the longest table name (`idempotency`) must stay within 63
/// characters, PostgreSQL's identifier limit.
pub(crate) const MAX_PREFIX_LEN: usize = 40;

/// Fully qualified, quoted table names.
#[derive(Debug, Clone)]
pub(crate) struct Tables {
    pub rings: String,
    pub keys: String,
    pub audit: String,
    /// MySQL only: an empty table whose foreign key references the audit ledger, so that
    /// InnoDB refuses `TRUNCATE` of the ledger.
    pub audit_guard: String,
    pub idempotency: String,
    pub locks: String,
    pub migrations: String,
    /// The unquoted prefix, for naming triggers, functions and indexes.
    pub prefix: String,
    /// The quoted schema followed by a dot, or empty.
    pub qualifier: String,
}

impl Tables {
    /// `schema` and `prefix` must have passed [`check_ident`].
    pub fn new(schema: Option<&str>, prefix: &str, quote: char) -> Self {
        let qualifier = schema.map(|s| format!("{quote}{s}{quote}.")).unwrap_or_default();
        let name = |t: &str| format!("{qualifier}{quote}{prefix}{t}{quote}");
        Self {
            rings: name("rings"),
            keys: name("keys"),
            audit: name("audit"),
            audit_guard: name("audit_guard"),
            idempotency: name("idempotency"),
            locks: name("locks"),
            migrations: name("migrations"),
            prefix: prefix.to_owned(),
            qualifier,
        }
    }

    /// Replaces `{rings}`, `{keys}`, `{audit}`, `{audit_guard}`, `{idempotency}`, `{locks}`,
    /// `{prefix}` and `{q}` (the schema qualifier) in a migration or query template.
    pub fn render(&self, template: &str) -> String {
        template
            .replace("{rings}", &self.rings)
            .replace("{keys}", &self.keys)
            .replace("{audit_guard}", &self.audit_guard)
            .replace("{audit}", &self.audit)
            .replace("{idempotency}", &self.idempotency)
            .replace("{locks}", &self.locks)
            .replace("{migrations}", &self.migrations)
            .replace("{prefix}", &self.prefix)
            .replace("{q}", &self.qualifier)
    }
}

/// The key columns, in bind order (after `ring`).
pub(crate) const KEY_COLUMNS: &str = "kid, alg, state, origin, forced, fingerprint, public_jwk, master_key_id, \
     sealed_private_key, created_at_ms, activate_at_ms, activated_at_ms, retired_at_ms, expires_at_ms, \
     expired_at_ms, revoked_at_ms, revoke_reason, purged_at_ms";
/// Columns an upsert by (ring, kid) replaces.
pub(crate) const KEY_UPDATE_COLUMNS: [&str; 17] = [
    "alg",
    "state",
    "origin",
    "forced",
    "fingerprint",
    "public_jwk",
    "master_key_id",
    "sealed_private_key",
    "created_at_ms",
    "activate_at_ms",
    "activated_at_ms",
    "retired_at_ms",
    "expires_at_ms",
    "expired_at_ms",
    "revoked_at_ms",
    "revoke_reason",
    "purged_at_ms",
];
/// The audit columns, in bind order.
pub(crate) const AUDIT_COLUMNS: &str = "audit_id, at_ms, ring, actor, trigger_kind, outcome, forced, reason, \
     old_kid, old_fingerprint, new_kid, new_fingerprint, generation, idempotency_key, request_id, detail, instance, \
     chain_seq, chain_mac";
/// How many columns [`AUDIT_COLUMNS`] names.
pub(crate) const AUDIT_COLUMN_COUNT: usize = 19;
/// The idempotency columns, in bind order.
pub(crate) const IDEMPOTENCY_COLUMNS: &str = "ring, idem_key, request_hash, response, created_at_ms";

/// `n` placeholders: `$1, $2, …` (PostgreSQL) or `?, ?, …`.
pub(crate) fn placeholders(n: usize, numbered: bool, first: usize) -> String {
    (0..n)
        .map(|i| {
            if numbered {
                format!("${}", first + i)
            } else {
                "?".to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Binds `ring` and every column of a key record, in [`KEY_COLUMNS`] order.
macro_rules! bind_key {
    ($query:expr, $ring:expr, $key:expr) => {{
        let k: &keyrot_core::KeyRecord = $key;
        let (mk, ct) = match &k.sealed {
            Some(s) => (Some(s.master_key_id.as_str()), Some(s.ciphertext.as_slice())),
            None => (None, None),
        };
        $query
            .bind($ring)
            .bind(k.kid.as_str())
            .bind(k.alg.as_str())
            .bind(k.state.as_str())
            .bind(k.origin.as_str())
            .bind(k.forced)
            .bind(k.fingerprint.as_str())
            .bind(k.public_jwk.as_str())
            .bind(mk)
            .bind(ct)
            .bind(k.created_at.timestamp_millis())
            .bind($crate::common::opt_ms(k.activate_at))
            .bind($crate::common::opt_ms(k.activated_at))
            .bind($crate::common::opt_ms(k.retired_at))
            .bind($crate::common::opt_ms(k.expires_at))
            .bind($crate::common::opt_ms(k.expired_at))
            .bind($crate::common::opt_ms(k.revoked_at))
            .bind(k.revoke_reason.as_deref())
            .bind($crate::common::opt_ms(k.purged_at))
    }};
}
pub(crate) use bind_key;

/// Binds every column of an audit record, in [`AUDIT_COLUMNS`] order. `$generation` is
/// the record's generation already converted to `i64`; `$chain_seq` (`i64`) and
/// `$chain_mac` (`&str`) are its position and MAC in the ring's chain.
macro_rules! bind_audit {
    ($query:expr, $audit:expr, $generation:expr, $chain_seq:expr, $chain_mac:expr) => {{
        let a: &keyrot_core::AuditRecord = $audit;
        $query
            .bind(a.id.as_str())
            .bind(a.at.timestamp_millis())
            .bind(a.ring.as_str())
            .bind(a.actor.as_str())
            .bind(a.trigger.as_str())
            .bind(a.outcome.as_str())
            .bind(a.forced)
            .bind(a.reason.as_deref())
            .bind(a.old_kid.as_deref())
            .bind(a.old_fingerprint.as_deref())
            .bind(a.new_kid.as_deref())
            .bind(a.new_fingerprint.as_deref())
            .bind($generation)
            .bind(a.idempotency_key.as_deref())
            .bind(a.request_id.as_deref())
            .bind(a.detail.as_deref())
            .bind(a.instance.as_str())
            .bind($chain_seq)
            .bind($chain_mac)
    }};
}
pub(crate) use bind_audit;

/// Binds every column of an idempotency record, in [`IDEMPOTENCY_COLUMNS`] order.
macro_rules! bind_idempotency {
    ($query:expr, $rec:expr) => {{
        let i: &keyrot_core::IdempotencyRecord = $rec;
        $query
            .bind(i.ring.as_str())
            .bind(i.key.as_str())
            .bind(i.request_hash.as_str())
            .bind(i.response.as_str())
            .bind(i.created_at.timestamp_millis())
    }};
}
pub(crate) use bind_idempotency;

/// A transaction step failed: the database (retried when it asks for it), or something
/// the storage checks itself (the audit linker, a corrupt chain head).
#[derive(Debug)]
pub(crate) enum TxError {
    Db(sqlx::Error),
    Storage(StorageError),
}

impl std::fmt::Display for TxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Db(e) => e.fmt(f),
            Self::Storage(e) => e.fmt(f),
        }
    }
}

impl From<sqlx::Error> for TxError {
    fn from(e: sqlx::Error) -> Self {
        Self::Db(e)
    }
}

impl From<StorageError> for TxError {
    fn from(e: StorageError) -> Self {
        Self::Storage(e)
    }
}

impl TxError {
    /// Whether the whole transaction may simply be run again.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Db(e) if is_retryable(e))
    }

    /// As a [`StorageError`]; `what` says what was being done.
    pub fn into_storage(self, what: &'static str) -> StorageError {
        match self {
            Self::Db(e) => db_err(what)(e),
            Self::Storage(e) => e,
        }
    }
}

/// The position and predecessor MAC the next record of a ring's chain gets, from the
/// stored head: the record with the highest `chain_seq`, whether or not it has a MAC. A
/// head without a MAC (only someone writing to the database directly can put one there)
/// is linked after as it is, with no predecessor MAC: the chain goes on, and the verifier
/// reports the MAC-less record as a break, instead of the record squatting the next
/// position and every later append failing on it.
pub(crate) fn next_link(head: Option<(i64, Option<String>)>) -> Result<(u64, i64, Option<String>), StorageError> {
    match head {
        None => Ok((1, 1, None)),
        Some((seq, mac)) => {
            let next = seq
                .checked_add(1)
                .filter(|n| *n >= 1)
                .ok_or_else(|| StorageError::Corrupt(format!("the audit chain head has an invalid position {seq}")))?;
            let next_u =
                u64::try_from(next).map_err(|_| StorageError::Corrupt(format!("audit chain position {next}")))?;
            Ok((next_u, next, mac))
        }
    }
}

/// A commit appends to the chain of the ring it locks (and moves) only: an audit record
/// naming another ring would extend that ring's chain without holding its lock.
pub(crate) fn check_commit_ring(commit: &keyrot_core::Commit) -> Result<(), StorageError> {
    if let Some(i) = &commit.idempotency
        && i.ring != commit.ring.as_str()
    {
        return Err(StorageError::Corrupt(format!(
            "commit to ring {:?}: its idempotency record belongs to another ring ({:?}); nothing was written",
            commit.ring.as_str(),
            i.ring
        )));
    }
    if commit.audit.ring == commit.ring.as_str() {
        Ok(())
    } else {
        Err(StorageError::Corrupt(format!(
            "commit to ring {:?}: its audit record {:?} belongs to another ring ({:?}); nothing was written",
            commit.ring.as_str(),
            commit.audit.id,
            commit.audit.ring
        )))
    }
}

/// Inside a transaction step (returning `Result<_, TxError>`) that has already serialised
/// appends to the ring's ledger (the ring row is locked, or the whole database is, on
/// SQLite): reads the ring's chain head (the highest `chain_seq`, MAC or not) with
/// `$sql.audit_head`, links `$audit` after it with `$linker` and inserts it with
/// `$sql.insert_audit`.
macro_rules! append_audit {
    ($tx:ident, $sql:ident, $audit:expr, $linker:expr) => {{
        use sqlx::AssertSqlSafe;
        let a: &keyrot_core::AuditRecord = $audit;
        let linker: &dyn keyrot_core::AuditLinker = $linker;
        let generation = $crate::common::gen_to_db(a.generation)?;
        let head: Option<(i64, Option<String>)> = sqlx::query_as(AssertSqlSafe($sql.audit_head.as_str()))
            .bind(a.ring.as_str())
            .fetch_optional(&mut *$tx)
            .await?;
        let (seq, seq_db, prev) = $crate::common::next_link(head)?;
        let mac = linker.link(a, seq, prev.as_deref())?;
        $crate::common::bind_audit!(
            sqlx::query(AssertSqlSafe($sql.insert_audit.as_str())),
            a,
            generation,
            seq_db,
            mac.as_str()
        )
        .execute(&mut *$tx)
        .await?;
    }};
}
pub(crate) use append_audit;

/// Inside a `commit_once` (returning `Result<CommitOutcome, TxError>`) that keeps the
/// whole compare-and-swap in transaction `$tx` (PostgreSQL, SQLite): creates the ring row
/// if it is new, moves its generation on from `$expected` (writing the commit's manifest
/// with it) and inserts the idempotency record. When another commit got there first, rolls
/// back and **returns** `CommitOutcome::Conflict` from the enclosing function.
macro_rules! swap_generation_or_return {
    ($tx:ident, $sql:ident, $commit:ident, $expected:ident) => {{
        use keyrot_core::CommitOutcome;
        use sqlx::AssertSqlSafe;
        let ring = $commit.ring.as_str();
        sqlx::query(AssertSqlSafe($sql.ensure_ring.as_str()))
            .bind(ring)
            .execute(&mut *$tx)
            .await?;
        let swapped = sqlx::query(AssertSqlSafe($sql.cas.as_str()))
            .bind($commit.manifest.as_str())
            .bind(ring)
            .bind($expected)
            .execute(&mut *$tx)
            .await?;
        if swapped.rows_affected() == 0 {
            let current: i64 = sqlx::query_scalar(AssertSqlSafe($sql.generation.as_str()))
                .bind(ring)
                .fetch_one(&mut *$tx)
                .await?;
            $tx.rollback().await?;
            return Ok(CommitOutcome::Conflict {
                current: $crate::common::gen_from_db(current).unwrap_or(0),
            });
        }
        if let Some(i) = &$commit.idempotency {
            let inserted =
                $crate::common::bind_idempotency!(sqlx::query(AssertSqlSafe($sql.insert_idempotency.as_str())), i)
                    .execute(&mut *$tx)
                    .await?;
            if inserted.rows_affected() == 0 {
                // Another request with this key committed first: treat as a lost race.
                $tx.rollback().await?;
                return Ok(CommitOutcome::Conflict {
                    current: $crate::common::gen_from_db($expected).unwrap_or(0),
                });
            }
        }
    }};
}
pub(crate) use swap_generation_or_return;

/// Inside a store's `commit_once` (returning `Result<_, TxError>`), after the
/// compare-and-swap (which locked the ring row): upserts the commit's keys and appends its
/// audit record to the ring's chain in transaction `$tx`, with the store's `upsert_key`,
/// `audit_head` and `insert_audit` statements from `$sql`.
macro_rules! insert_keys_and_audit {
    ($tx:ident, $sql:ident, $commit:ident, $linker:ident) => {{
        use sqlx::AssertSqlSafe;
        use $crate::common::{append_audit, bind_key};
        for k in &$commit.keys {
            bind_key!(
                sqlx::query(AssertSqlSafe($sql.upsert_key.as_str())),
                $commit.ring.as_str(),
                k
            )
            .execute(&mut *$tx)
            .await?;
        }
        append_audit!($tx, $sql, &$commit.audit, $linker);
    }};
}
pub(crate) use insert_keys_and_audit;

/// `impl Storage` for a store whose `inner` holds `pool` and `sql` (the statements `load`,
/// `generation`, `audit_log` and `idempotency`) and which has its own
/// `commit_once(&self, &Commit, expected: i64, &dyn AuditLinker) -> Result<CommitOutcome,
/// TxError>` and `attempt_once(&self, &AuditRecord, Option<&IdempotencyRecord>, &dyn
/// AuditLinker) -> Result<(), TxError>`, each run again while the database asks for a
/// retry.
///
/// - `label`: starts error messages (`"<label>: load ring"`) and logs.
macro_rules! impl_storage {
    ($store:ty { label: $label:literal $(,)? }) => {
        const _: () = {
            use $crate::common::{self, RowExt as _, db_err, gen_from_db, gen_to_db};
            use keyrot_core::{
                AuditLinker, AuditQuery, AuditRecord, Commit, CommitOutcome, IdempotencyRecord, Ring, RingName,
                Storage, StorageError,
            };
            use sqlx::AssertSqlSafe;

            #[async_trait::async_trait]
            impl Storage for $store {
                async fn load(&self, ring: &RingName) -> Result<Ring, StorageError> {
                    let rows = sqlx::query(AssertSqlSafe(self.inner.sql.load.as_str()))
                        .bind(ring.as_str())
                        .fetch_all(&self.inner.pool)
                        .await
                        .map_err(db_err(concat!($label, ": load ring")))?;
                    let mut out = Ring::empty(ring.clone());
                    for row in &rows {
                        out.generation = gen_from_db(row.int("ring_generation")?)?;
                        // Only the first row of the join carries the manifest.
                        if let Some(m) = row.opt_text("ring_manifest")? {
                            out.manifest = Some(m);
                        }
                        if row.opt_text("kid")?.is_some() {
                            out.keys.push(common::key_from_row(row)?);
                        }
                    }
                    Ok(out)
                }

                async fn generation(&self, ring: &RingName) -> Result<u64, StorageError> {
                    let g: Option<i64> = sqlx::query_scalar(AssertSqlSafe(self.inner.sql.generation.as_str()))
                        .bind(ring.as_str())
                        .fetch_optional(&self.inner.pool)
                        .await
                        .map_err(db_err(concat!($label, ": read generation")))?;
                    g.map_or(Ok(0), gen_from_db)
                }

                async fn commit(&self, commit: &Commit, linker: &dyn AuditLinker) -> Result<CommitOutcome, StorageError> {
                    common::check_commit_ring(commit)?;
                    let expected = gen_to_db(commit.expected_generation)?;
                    let mut tries = 0;
                    loop {
                        tries += 1;
                        match self.commit_once(commit, expected, linker).await {
                            Ok(outcome) => return Ok(outcome),
                            Err(e) if e.is_retryable() && tries < common::MAX_TRIES => {
                                tracing::debug!(ring = %commit.ring, error = %e, concat!($label, " commit retried"));
                            }
                            Err(e) => return Err(e.into_storage(concat!($label, ": commit"))),
                        }
                    }
                }

                async fn record_attempt(
                    &self,
                    audit: &AuditRecord,
                    idempotency: Option<&IdempotencyRecord>,
                    linker: &dyn AuditLinker,
                ) -> Result<(), StorageError> {
                    common::audit_ring(audit)?;
                    let mut tries = 0;
                    loop {
                        tries += 1;
                        match self.attempt_once(audit, idempotency, linker).await {
                            Ok(()) => return Ok(()),
                            Err(e) if e.is_retryable() && tries < common::MAX_TRIES => {
                                tracing::debug!(ring = %audit.ring, error = %e, concat!($label, " record attempt retried"));
                            }
                            Err(e) => return Err(e.into_storage(concat!($label, ": record attempt"))),
                        }
                    }
                }

                async fn audit_log(
                    &self,
                    ring: &RingName,
                    query: AuditQuery,
                ) -> Result<Vec<AuditRecord>, StorageError> {
                    let rows = sqlx::query(AssertSqlSafe(self.inner.sql.audit_log.as_str()))
                        .bind(ring.as_str())
                        .bind(common::limit(query.limit))
                        .fetch_all(&self.inner.pool)
                        .await
                        .map_err(db_err(concat!($label, ": read audit log")))?;
                    rows.iter().map(common::audit_from_row).collect()
                }

                async fn idempotency(
                    &self,
                    ring: &RingName,
                    key: &str,
                ) -> Result<Option<IdempotencyRecord>, StorageError> {
                    let row = sqlx::query(AssertSqlSafe(self.inner.sql.idempotency.as_str()))
                        .bind(ring.as_str())
                        .bind(key)
                        .fetch_optional(&self.inner.pool)
                        .await
                        .map_err(db_err(concat!($label, ": read idempotency record")))?;
                    row.as_ref().map(common::idempotency_from_row).transpose()
                }
            }
        };
    };
}
pub(crate) use impl_storage;

pub(crate) fn opt_ms(t: Option<DateTime<Utc>>) -> Option<i64> {
    t.map(|t| t.timestamp_millis())
}

fn from_ms(col: &str, v: i64) -> Result<DateTime<Utc>, StorageError> {
    DateTime::from_timestamp_millis(v)
        .ok_or_else(|| StorageError::Corrupt(format!("column {col}: {v} is not a valid Unix time in milliseconds")))
}

/// A generation as the database stores it (`BIGINT`).
pub(crate) fn gen_to_db(g: u64) -> Result<i64, StorageError> {
    i64::try_from(g).map_err(|_| StorageError::Corrupt(format!("generation {g} does not fit a BIGINT")))
}

/// A stored generation.
pub(crate) fn gen_from_db(v: i64) -> Result<u64, StorageError> {
    u64::try_from(v).map_err(|_| StorageError::Corrupt(format!("negative generation {v}")))
}

/// Maps a sqlx error: decoding problems are [`StorageError::Corrupt`], everything else
/// is [`StorageError::Unavailable`] with the sqlx error kept as the source.
pub(crate) fn db_err(what: &'static str) -> impl FnOnce(sqlx::Error) -> StorageError {
    move |e| match e {
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::TypeNotFound { .. } => StorageError::Corrupt(format!(
            "{what}: {e} (has migrate() run with this keyrot-sqlx version?)"
        )),
        e => StorageError::unavailable(what, e),
    }
}

/// Whether a failed transaction may simply be run again: deadlock victims,
/// serialization failures, SQLite's busy/locked.
pub(crate) fn is_retryable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => {
            matches!(
                d.code().as_deref(),
                Some("40001" | "40P01" | "5" | "6" | "261" | "262" | "517")
            )
        }
        _ => false,
    }
}

/// How many times a commit is tried when the database asks for a retry.
pub(crate) const MAX_TRIES: usize = 5;

/// Decoding of the column types keyrot uses, on any sqlx row.
pub(crate) trait RowExt {
    fn text(&self, col: &str) -> Result<String, StorageError>;
    fn opt_text(&self, col: &str) -> Result<Option<String>, StorageError>;
    fn int(&self, col: &str) -> Result<i64, StorageError>;
    fn opt_int(&self, col: &str) -> Result<Option<i64>, StorageError>;
    fn flag(&self, col: &str) -> Result<bool, StorageError>;
    fn opt_bytes(&self, col: &str) -> Result<Option<Vec<u8>>, StorageError>;

    fn time(&self, col: &str) -> Result<DateTime<Utc>, StorageError> {
        from_ms(col, self.int(col)?)
    }

    fn opt_time(&self, col: &str) -> Result<Option<DateTime<Utc>>, StorageError> {
        self.opt_int(col)?.map(|v| from_ms(col, v)).transpose()
    }
}

fn decode_err(col: &str, e: sqlx::Error) -> StorageError {
    StorageError::Corrupt(format!("column {col}: {e}"))
}

fn utf8(col: &str, b: Vec<u8>) -> Result<String, StorageError> {
    String::from_utf8(b).map_err(|_| StorageError::Corrupt(format!("column {col} is not UTF-8")))
}

impl<R> RowExt for R
where
    R: Row,
    for<'c> &'c str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database>,
    String: Type<R::Database>,
    for<'r> Vec<u8>: Decode<'r, R::Database>,
    Vec<u8>: Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database>,
    i64: Type<R::Database>,
    for<'r> bool: Decode<'r, R::Database>,
    bool: Type<R::Database>,
{
    // Byte-exact identifiers (ring, kid, idempotency key) are VARBINARY on MySQL: fall
    // back to bytes when the column is not a text type.
    fn text(&self, col: &str) -> Result<String, StorageError> {
        match self.try_get::<String, _>(col) {
            Ok(s) => Ok(s),
            Err(sqlx::Error::ColumnDecode { .. }) => {
                utf8(col, self.try_get::<Vec<u8>, _>(col).map_err(|e| decode_err(col, e))?)
            }
            Err(e) => Err(decode_err(col, e)),
        }
    }

    fn opt_text(&self, col: &str) -> Result<Option<String>, StorageError> {
        match self.try_get::<Option<String>, _>(col) {
            Ok(s) => Ok(s),
            Err(sqlx::Error::ColumnDecode { .. }) => self
                .try_get::<Option<Vec<u8>>, _>(col)
                .map_err(|e| decode_err(col, e))?
                .map(|b| utf8(col, b))
                .transpose(),
            Err(e) => Err(decode_err(col, e)),
        }
    }

    fn int(&self, col: &str) -> Result<i64, StorageError> {
        self.try_get(col).map_err(|e| decode_err(col, e))
    }

    fn opt_int(&self, col: &str) -> Result<Option<i64>, StorageError> {
        self.try_get(col).map_err(|e| decode_err(col, e))
    }

    fn flag(&self, col: &str) -> Result<bool, StorageError> {
        self.try_get(col).map_err(|e| decode_err(col, e))
    }

    fn opt_bytes(&self, col: &str) -> Result<Option<Vec<u8>>, StorageError> {
        self.try_get(col).map_err(|e| decode_err(col, e))
    }
}

fn parse<T>(col: &str, v: String, f: impl FnOnce(&str) -> Option<T>) -> Result<T, StorageError> {
    f(&v).ok_or_else(|| StorageError::Corrupt(format!("column {col}: unknown value {v:?}")))
}

/// A key record from a row holding [`KEY_COLUMNS`].
pub(crate) fn key_from_row(row: &impl RowExt) -> Result<KeyRecord, StorageError> {
    let sealed = match (row.opt_text("master_key_id")?, row.opt_bytes("sealed_private_key")?) {
        (Some(master_key_id), Some(ciphertext)) => Some(SealedKey {
            master_key_id,
            ciphertext,
        }),
        (None, None) => None,
        _ => {
            return Err(StorageError::Corrupt(
                "key row has a master key id without sealed bytes, or the reverse".into(),
            ));
        }
    };
    Ok(KeyRecord {
        kid: row.text("kid")?,
        alg: parse("alg", row.text("alg")?, |s| s.parse().ok())?,
        state: parse("state", row.text("state")?, KeyState::parse)?,
        origin: parse("origin", row.text("origin")?, KeyOrigin::parse)?,
        forced: row.flag("forced")?,
        fingerprint: row.text("fingerprint")?,
        public_jwk: row.text("public_jwk")?,
        sealed,
        created_at: row.time("created_at_ms")?,
        activate_at: row.opt_time("activate_at_ms")?,
        activated_at: row.opt_time("activated_at_ms")?,
        retired_at: row.opt_time("retired_at_ms")?,
        expires_at: row.opt_time("expires_at_ms")?,
        expired_at: row.opt_time("expired_at_ms")?,
        revoked_at: row.opt_time("revoked_at_ms")?,
        revoke_reason: row.opt_text("revoke_reason")?,
        purged_at: row.opt_time("purged_at_ms")?,
    })
}

/// An audit record from a row holding [`AUDIT_COLUMNS`].
pub(crate) fn audit_from_row(row: &impl RowExt) -> Result<AuditRecord, StorageError> {
    let id = row.text("audit_id")?;
    let seq = match row.opt_int("chain_seq")? {
        Some(v) => u64::try_from(v).map_err(|_| {
            StorageError::Corrupt(format!(
                "audit record {id:?}: column chain_seq holds a negative position {v}"
            ))
        })?,
        None => 0,
    };
    Ok(AuditRecord {
        id,
        at: row.time("at_ms")?,
        ring: row.text("ring")?,
        actor: row.text("actor")?,
        trigger: parse("trigger_kind", row.text("trigger_kind")?, TriggerKind::parse)?,
        outcome: parse("outcome", row.text("outcome")?, Outcome::parse)?,
        forced: row.flag("forced")?,
        reason: row.opt_text("reason")?,
        old_kid: row.opt_text("old_kid")?,
        old_fingerprint: row.opt_text("old_fingerprint")?,
        new_kid: row.opt_text("new_kid")?,
        new_fingerprint: row.opt_text("new_fingerprint")?,
        generation: gen_from_db(row.int("generation")?)?,
        idempotency_key: row.opt_text("idempotency_key")?,
        request_id: row.opt_text("request_id")?,
        detail: row.opt_text("detail")?,
        instance: row.text("instance")?,
        seq,
        mac: row.opt_text("chain_mac")?,
    })
}

/// An idempotency record from a row holding [`IDEMPOTENCY_COLUMNS`].
pub(crate) fn idempotency_from_row(row: &impl RowExt) -> Result<IdempotencyRecord, StorageError> {
    Ok(IdempotencyRecord {
        ring: row.text("ring")?,
        key: row.text("idem_key")?,
        request_hash: row.text("request_hash")?,
        response: row.text("response")?,
        created_at: row.time("created_at_ms")?,
    })
}

/// The ring an audit record belongs to, validated.
pub(crate) fn audit_ring(audit: &AuditRecord) -> Result<RingName, StorageError> {
    RingName::new(audit.ring.clone()).map_err(|e| StorageError::Corrupt(format!("audit record ring: {e}")))
}

/// The number of rows an audit query may return, as a bind value.
pub(crate) fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A 64-bit lock key (PostgreSQL advisory locks) or lock name digest (MySQL) for a
/// ring within a namespace (schema + table prefix), so stores sharing a database never
/// contend on each other's rings.
pub(crate) fn lock_digest(namespace: &str, ring: &RingName) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"keyrot/lock/v1\0");
    h.update(namespace.as_bytes());
    h.update([0]);
    h.update(ring.as_str().as_bytes());
    h.finalize().into()
}

/// Hex of the SHA-256 of `s`.
pub(crate) fn digest_hex(s: &str) -> String {
    hex(&Sha256::digest(s.as_bytes()))
}

/// Lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One schema migration. The SQL is a template rendered with [`Tables::render`]; its
/// checksum (of the template) detects a migration edited after it was applied.
#[derive(Debug)]
pub(crate) struct Migration {
    pub version: i64,
    pub description: &'static str,
    pub sql: &'static str,
}

impl Migration {
    pub fn checksum(&self) -> String {
        hex(&Sha256::digest(self.sql.as_bytes()))
    }
}

/// Which migrations still need to run, given the applied `(version, checksum)` pairs.
/// Fails when the database was migrated by a newer keyrot or a migration changed.
pub(crate) fn pending<'m>(
    known: &'m [Migration],
    applied: &[(i64, String)],
) -> Result<Vec<&'m Migration>, StorageError> {
    let newest = known.iter().map(|m| m.version).max().unwrap_or(0);
    if let Some((v, _)) = applied.iter().find(|(v, _)| *v > newest) {
        return Err(StorageError::Corrupt(format!(
            "the keyrot schema is at version {v}, newer than this keyrot-sqlx knows ({newest}): upgrade keyrot-sqlx"
        )));
    }
    for (v, sum) in applied {
        if let Some(m) = known.iter().find(|m| m.version == *v)
            && &m.checksum() != sum
        {
            return Err(StorageError::Corrupt(format!(
                "keyrot migration {v} ({}) differs from the one applied to this database",
                m.description
            )));
        }
    }
    Ok(known
        .iter()
        .filter(|m| !applied.iter().any(|(v, _)| *v == m.version))
        .collect())
}

/// Checks that every released migration is unchanged (by checksum: `released[i]` is
/// version `i + 1`'s), that none is missing and versions are contiguous: each store's unit
/// test calls this on its own list.
#[cfg(test)]
pub(crate) fn assert_released(migrations: &[Migration], released: &[&str]) {
    assert_eq!(migrations.len(), released.len(), "pin the checksum of every migration");
    for (m, (i, sum)) in migrations.iter().zip(released.iter().enumerate()) {
        assert_eq!(m.version, i as i64 + 1, "versions are contiguous from 1");
        assert_eq!(
            &m.checksum(),
            sum,
            "migration {} ({}) was edited",
            m.version,
            m.description
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_checked() {
        assert!(check_ident("schema", "keyrot_t_01", false, 63).is_ok());
        assert!(check_ident("prefix", "", true, 40).is_ok());
        assert!(check_ident("schema", "", false, 63).is_err());
        for bad in ["Upper", "1abc", "a-b", "a\"b", "a;drop", "a b"] {
            assert!(check_ident("schema", bad, false, 63).is_err(), "{bad}");
        }
        assert!(check_ident("prefix", &"a".repeat(41), true, 40).is_err());
        let msg = check_ident("schema", "A", false, 63)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(msg.contains("schema") && msg.contains("a-z"), "{msg}");
    }

    #[test]
    fn tables_are_qualified_and_quoted() {
        let t = Tables::new(Some("s1"), "kr_", '"');
        assert_eq!(t.rings, r#""s1"."kr_rings""#);
        assert_eq!(
            t.render("SELECT 1 FROM {keys} -- {prefix}"),
            r#"SELECT 1 FROM "s1"."kr_keys" -- kr_"#
        );
        let t = Tables::new(None, "keyrot_", '`');
        assert_eq!(t.audit, "`keyrot_audit`");
    }

    #[test]
    fn generations_and_times_convert_or_fail_as_corrupt() {
        assert_eq!(gen_to_db(7).ok(), Some(7));
        assert!(gen_to_db(u64::MAX).is_err());
        assert!(matches!(gen_from_db(-1), Err(StorageError::Corrupt(_))));
        assert!(matches!(from_ms("x", i64::MAX), Err(StorageError::Corrupt(_))));
        let t = DateTime::from_timestamp_millis(1_767_225_600_123);
        assert_eq!(t.map(|t| from_ms("x", t.timestamp_millis()).ok()), Some(t));
    }

    #[test]
    fn the_next_link_follows_the_chain_head_or_fails_as_corrupt() {
        assert_eq!(next_link(None).ok(), Some((1, 1, None)));
        assert_eq!(
            next_link(Some((41, Some("mk:tag".into())))).ok(),
            Some((42, 42, Some("mk:tag".to_owned())))
        );
        // A head without a MAC is linked after, not skipped (it would squat position 42).
        assert_eq!(next_link(Some((41, None))).ok(), Some((42, 42, None)));
        for bad in [i64::MAX, -5, -1] {
            assert!(
                matches!(next_link(Some((bad, None))), Err(StorageError::Corrupt(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn pending_migrations_refuse_newer_or_changed_schemas() {
        const M: [Migration; 2] = [
            Migration {
                version: 1,
                description: "one",
                sql: "CREATE TABLE a (x INT)",
            },
            Migration {
                version: 2,
                description: "two",
                sql: "CREATE TABLE b (x INT)",
            },
        ];
        let all = pending(&M, &[]).map(|v| v.len()).ok();
        assert_eq!(all, Some(2));
        let rest = pending(&M, &[(1, M[0].checksum())]).map(|v| v.iter().map(|m| m.version).collect::<Vec<_>>());
        assert_eq!(rest.ok(), Some(vec![2]));
        assert!(matches!(
            pending(&M, &[(3, String::new())]),
            Err(StorageError::Corrupt(_))
        ));
        assert!(matches!(
            pending(&M, &[(1, "changed".into())]),
            Err(StorageError::Corrupt(_))
        ));
    }

    #[test]
    fn lock_digests_depend_on_namespace_and_ring() -> Result<(), keyrot_core::InvalidRingName> {
        let (a, b) = (RingName::new("a")?, RingName::new("b")?);
        assert_ne!(lock_digest("public.keyrot_", &a), lock_digest("public.keyrot_", &b));
        assert_ne!(lock_digest("s1.keyrot_", &a), lock_digest("s2.keyrot_", &a));
        assert_eq!(lock_digest("s1.keyrot_", &a), lock_digest("s1.keyrot_", &a));
        assert_eq!(hex(&[0, 255, 16]), "00ff10");
        Ok(())
    }
}
