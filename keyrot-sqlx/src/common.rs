//! What every database shares: table naming, row decoding, time and generation
//! conversions, error mapping, the audit chain's next link.

use chrono::{DateTime, Utc};
use keyrot_core::{
    AuditRecord, IdempotencyRecord, KeyOrigin, KeyRecord, KeyState, Outcome, RingName, SealedKey, StorageError,
    TriggerKind,
};
#[cfg(any(feature = "postgres", feature = "sqlite"))]
use sha2::{Digest as _, Sha256};
use sqlx::{ColumnIndex, Decode, Row, Type};

/// The table prefix used unless another is configured: tables are `keyrot_rings`,
/// `keyrot_keys`, `keyrot_audit`, `keyrot_idempotency`, `keyrot_master_keys` (and
/// `keyrot_locks` on SQLite), with applied migrations in `keyrot_migrations`.
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

/// Longest table prefix: the longest table, trigger and function names
/// (`master_keys_rewrap_only`, 23 characters) must stay within 63 characters, PostgreSQL's
/// identifier limit.
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
    /// Wrapped master keys (`keyrot_core::custody::MasterKeyStorage`).
    pub master_keys: String,
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
            master_keys: name("master_keys"),
            locks: name("locks"),
            migrations: name("migrations"),
            prefix: prefix.to_owned(),
            qualifier,
        }
    }

    /// Replaces `{rings}`, `{keys}`, `{audit}`, `{audit_guard}`, `{idempotency}`,
    /// `{master_keys}`, `{locks}`, `{prefix}` and `{q}` (the schema qualifier) in a migration
    /// or query template.
    pub fn render(&self, template: &str) -> String {
        template
            .replace("{rings}", &self.rings)
            .replace("{keys}", &self.keys)
            .replace("{audit_guard}", &self.audit_guard)
            .replace("{audit}", &self.audit)
            .replace("{idempotency}", &self.idempotency)
            .replace("{master_keys}", &self.master_keys)
            .replace("{locks}", &self.locks)
            .replace("{migrations}", &self.migrations)
            .replace("{prefix}", &self.prefix)
            .replace("{q}", &self.qualifier)
    }
}

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

    /// As a [`StorageError`]; `label: what` says what was being done.
    pub fn into_storage_at(self, label: &str, what: &str) -> StorageError {
        match self {
            Self::Db(e) => db_err_at(label, what, e),
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
    move |e| db_err_at("", what, e)
}

/// [`db_err`] for `label: what` (`label` empty: `what` alone).
pub(crate) fn db_err_at(label: &str, what: &str, e: sqlx::Error) -> StorageError {
    let what = if label.is_empty() {
        what.to_owned()
    } else {
        format!("{label}: {what}")
    };
    match e {
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

/// Decoding of the column types keyrot uses, on any sqlx row. (Nominally `pub`: a bound
/// of `dialect::Dialect`; this module is private.)
pub trait RowExt {
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

/// A key record from a row holding the key columns (`dialect::KEY_COLUMNS`).
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
    public_key_from_row(row, sealed)
}

/// A key record from a row holding the key columns but the sealed ones
/// (`dialect::SEALED_COLUMNS`), with `sealed` as its sealed material.
pub(crate) fn public_key_from_row(row: &impl RowExt, sealed: Option<SealedKey>) -> Result<KeyRecord, StorageError> {
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
        remote: row.opt_text("remote_key")?,
    })
}

/// An audit record from a row holding the audit columns (`dialect::AUDIT_COLUMNS`).
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

/// An idempotency record from a row holding the idempotency columns
/// (`dialect::IDEMPOTENCY_COLUMNS`).
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

/// The digest a PostgreSQL advisory lock key is taken from, for a ring within a namespace
/// (schema + table prefix), so stores sharing a database never contend on each other's
/// rings. (MySQL derives its lock names in SQL.)
#[cfg(feature = "postgres")]
pub(crate) fn lock_digest(namespace: &str, ring: &RingName) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"keyrot/lock/v1\0");
    h.update(namespace.as_bytes());
    h.update([0]);
    h.update(ring.as_str().as_bytes());
    h.finalize().into()
}

/// Hex of the SHA-256 of `s`.
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub(crate) fn digest_hex(s: &str) -> String {
    hex(&Sha256::digest(s.as_bytes()))
}

/// Lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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
        assert_eq!(t.render("{master_keys}"), "`keyrot_master_keys`");
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

    #[cfg(feature = "postgres")]
    #[test]
    fn lock_digests_depend_on_namespace_and_ring() -> Result<(), keyrot_core::InvalidRingName> {
        let (a, b) = (RingName::new("a")?, RingName::new("b")?);
        assert_ne!(lock_digest("public.keyrot_", &a), lock_digest("public.keyrot_", &b));
        assert_ne!(lock_digest("s1.keyrot_", &a), lock_digest("s2.keyrot_", &a));
        assert_eq!(lock_digest("s1.keyrot_", &a), lock_digest("s1.keyrot_", &a));
        Ok(())
    }

    #[test]
    fn hex_is_lowercase_two_digits_a_byte() {
        assert_eq!(hex(&[0, 255, 16]), "00ff10");
    }
}
