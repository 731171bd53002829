//! What the generic code needs from a database, and the column lists it writes.
//!
//! [`Dialect`] is the one per-database trait: implemented for `Postgres`, `MySql` and
//! `Sqlite`, it names the few facts generic code cannot (placeholder syntax, rows affected,
//! the label errors start with); its supertraits carry every sqlx bound (binding, decoding,
//! executing on a connection), so generic helpers need only `DB: Dialect`.
//!
//! Each table's columns are listed once ([`KEY_COLUMNS`], [`AUDIT_COLUMNS`],
//! [`IDEMPOTENCY_COLUMNS`]), each with the value it binds: the `INSERT` column list, its
//! placeholders, the bind order and the `SELECT` lists all come from that list. Adding a
//! column is one line there (plus its decoding in `common` and each database's migration).
//!
//! [`Dialect`] and the traits and types its bounds name are nominally `pub`: it is a
//! supertrait of the public (sealed) `SqlDatabase`. This module is private, so nothing
//! outside the crate can name them.

use crate::common::{RowExt, gen_to_db, opt_ms};
use keyrot_core::{AuditRecord, IdempotencyRecord, KeyRecord, StorageError};
use sqlx::error::BoxDynError;
use sqlx::{Arguments, AssertSqlSafe, Database, Encode, Executor, IntoArguments, Type};

/// A value bound to a statement: the column types keyrot uses.
#[derive(Debug, Clone, Copy)]
pub enum Value<'a> {
    Text(&'a str),
    OptText(Option<&'a str>),
    Int(i64),
    OptInt(Option<i64>),
    Flag(bool),
    OptBytes(Option<&'a [u8]>),
}

/// Adds a [`Value`] to a database's arguments (every sqlx encoding bound, in one place).
pub trait PushValue {
    fn push_value(&mut self, value: Value<'_>) -> Result<(), BoxDynError>;
}

impl<A> PushValue for A
where
    A: Arguments,
    for<'a> &'a str: Encode<'a, A::Database> + Type<A::Database>,
    for<'a> Option<&'a str>: Encode<'a, A::Database>,
    for<'a> &'a [u8]: Encode<'a, A::Database> + Type<A::Database>,
    for<'a> Option<&'a [u8]>: Encode<'a, A::Database>,
    for<'a> i64: Encode<'a, A::Database> + Type<A::Database>,
    for<'a> Option<i64>: Encode<'a, A::Database>,
    for<'a> bool: Encode<'a, A::Database> + Type<A::Database>,
{
    fn push_value(&mut self, value: Value<'_>) -> Result<(), BoxDynError> {
        match value {
            Value::Text(v) => self.add(v),
            Value::OptText(v) => self.add(v),
            Value::Int(v) => self.add(v),
            Value::OptInt(v) => self.add(v),
            Value::Flag(v) => self.add(v),
            Value::OptBytes(v) => self.add(v),
        }
    }
}

/// A connection statements run on (every sqlx executor bound, in one place).
pub trait ConnExec<DB: Database>: Send {
    fn exec(&mut self) -> impl Executor<'_, Database = DB>;
}

impl<DB: Database, C: Send> ConnExec<DB> for C
where
    for<'c> &'c mut C: Executor<'c, Database = DB>,
{
    fn exec(&mut self) -> impl Executor<'_, Database = DB> {
        self
    }
}

/// One database, as the generic helpers see it.
pub trait Dialect:
    Database<Arguments: PushValue + IntoArguments<Self>, Row: RowExt, Connection: ConnExec<Self>>
{
    /// Starts error messages and log lines: `postgres`, `mysql`, `sqlite`.
    const LABEL: &'static str;

    /// The `n`-th (from 1) bind placeholder.
    fn placeholder(n: usize) -> String;

    /// An SQL expression for the database's clock now, in Unix milliseconds (per
    /// statement, not per transaction).
    const NOW_MS: &'static str;

    /// How many rows a statement changed.
    fn rows_affected(result: &Self::QueryResult) -> u64;
}

#[cfg(feature = "postgres")]
impl Dialect for sqlx::Postgres {
    const LABEL: &'static str = "postgres";
    const NOW_MS: &'static str = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint";

    fn placeholder(n: usize) -> String {
        format!("${n}")
    }

    fn rows_affected(result: &Self::QueryResult) -> u64 {
        result.rows_affected()
    }
}

#[cfg(feature = "mysql")]
impl Dialect for sqlx::MySql {
    const LABEL: &'static str = "mysql";
    const NOW_MS: &'static str = "CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED)";

    fn placeholder(_: usize) -> String {
        "?".to_owned()
    }

    fn rows_affected(result: &Self::QueryResult) -> u64 {
        result.rows_affected()
    }
}

#[cfg(feature = "sqlite")]
impl Dialect for sqlx::Sqlite {
    const LABEL: &'static str = "sqlite";
    const NOW_MS: &'static str = "CAST(ROUND((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER)";

    fn placeholder(_: usize) -> String {
        "?".to_owned()
    }

    fn rows_affected(result: &Self::QueryResult) -> u64 {
        result.rows_affected()
    }
}

/// A statement with its values bound, in order.
pub(crate) fn query<DB: Dialect>(
    sql: &str,
    values: &[Value<'_>],
) -> Result<sqlx::query::Query<'static, DB, DB::Arguments>, sqlx::Error> {
    let mut args = DB::Arguments::default();
    for v in values {
        args.push_value(*v).map_err(sqlx::Error::Encode)?;
    }
    Ok(sqlx::query_with(AssertSqlSafe(sql), args))
}

/// `n` placeholders from the first: `$1, $2, …` (PostgreSQL) or `?, ?, …`.
pub(crate) fn placeholders<DB: Dialect>(n: usize) -> String {
    (1..=n).map(DB::placeholder).collect::<Vec<_>>().join(", ")
}

/// One column of a table: its name and the value a row `T` (with context `C`: the ring
/// of a key, the chain link of an audit record) binds to it.
pub(crate) struct Column<T: ?Sized, C: ?Sized = ()> {
    pub name: &'static str,
    pub value: for<'a> fn(&'a T, &'a C) -> Value<'a>,
}

/// A [`Column`] (a function, so that the lists stay one line a column).
const fn col<T: ?Sized, C: ?Sized>(name: &'static str, value: for<'a> fn(&'a T, &'a C) -> Value<'a>) -> Column<T, C> {
    Column { name, value }
}

/// The column names, comma-separated, each after `alias` (`"k."`, or empty).
pub(crate) fn column_list<T: ?Sized, C: ?Sized>(columns: &[Column<T, C>], alias: &str) -> String {
    columns
        .iter()
        .map(|c| format!("{alias}{}", c.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `INSERT INTO table (columns) VALUES (placeholders)`.
pub(crate) fn insert_sql<DB: Dialect, T: ?Sized, C: ?Sized>(table: &str, columns: &[Column<T, C>]) -> String {
    format!(
        "INSERT INTO {table} ({}) VALUES ({})",
        column_list(columns, ""),
        placeholders::<DB>(columns.len())
    )
}

/// The values a row binds, in column order.
pub(crate) fn values<'a, T: ?Sized, C: ?Sized>(columns: &[Column<T, C>], row: &'a T, ctx: &'a C) -> Vec<Value<'a>> {
    columns.iter().map(|c| (c.value)(row, ctx)).collect()
}

/// The key columns: `ring` (the context), then every field of a [`KeyRecord`].
pub(crate) const KEY_COLUMNS: &[Column<KeyRecord, str>] = &[
    col("ring", |_, ring| Value::Text(ring)),
    col("kid", |k, _| Value::Text(&k.kid)),
    col("alg", |k, _| Value::Text(k.alg.as_str())),
    col("state", |k, _| Value::Text(k.state.as_str())),
    col("origin", |k, _| Value::Text(k.origin.as_str())),
    col("forced", |k, _| Value::Flag(k.forced)),
    col("fingerprint", |k, _| Value::Text(&k.fingerprint)),
    col("public_jwk", |k, _| Value::Text(&k.public_jwk)),
    col("master_key_id", |k, _| {
        Value::OptText(k.sealed.as_ref().map(|s| s.master_key_id.as_str()))
    }),
    col("sealed_private_key", |k, _| {
        Value::OptBytes(k.sealed.as_ref().map(|s| s.ciphertext.as_slice()))
    }),
    col("created_at_ms", |k, _| Value::Int(k.created_at.timestamp_millis())),
    col("activate_at_ms", |k, _| Value::OptInt(opt_ms(k.activate_at))),
    col("activated_at_ms", |k, _| Value::OptInt(opt_ms(k.activated_at))),
    col("retired_at_ms", |k, _| Value::OptInt(opt_ms(k.retired_at))),
    col("expires_at_ms", |k, _| Value::OptInt(opt_ms(k.expires_at))),
    col("expired_at_ms", |k, _| Value::OptInt(opt_ms(k.expired_at))),
    col("revoked_at_ms", |k, _| Value::OptInt(opt_ms(k.revoked_at))),
    col("revoke_reason", |k, _| Value::OptText(k.revoke_reason.as_deref())),
    col("purged_at_ms", |k, _| Value::OptInt(opt_ms(k.purged_at))),
    col("remote_key", |k, _| Value::OptText(k.remote.as_deref())),
];

/// The key columns that hold sealed private material: a public-only read
/// (`Storage::load_public`) never names them.
pub(crate) const SEALED_COLUMNS: &[&str] = &["master_key_id", "sealed_private_key"];

/// The key columns but the sealed ones, comma-separated, each after `alias`.
pub(crate) fn public_key_column_list(alias: &str) -> String {
    KEY_COLUMNS
        .iter()
        .filter(|c| !SEALED_COLUMNS.contains(&c.name))
        .map(|c| format!("{alias}{}", c.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The key columns an upsert by (ring, kid) replaces: all but the key.
pub(crate) fn key_update_columns() -> impl Iterator<Item = &'static str> {
    KEY_COLUMNS
        .iter()
        .map(|c| c.name)
        .filter(|n| !matches!(*n, "ring" | "kid"))
}

/// Where an audit record goes in its ring's chain, and its generation as stored.
#[derive(Debug)]
pub(crate) struct Link {
    pub generation: i64,
    pub seq: i64,
    pub mac: String,
}

impl Link {
    pub fn new(audit: &AuditRecord, seq: i64, mac: String) -> Result<Self, StorageError> {
        Ok(Self {
            generation: gen_to_db(audit.generation)?,
            seq,
            mac,
        })
    }
}

/// The audit columns: every field of an [`AuditRecord`], then its [`Link`].
pub(crate) const AUDIT_COLUMNS: &[Column<AuditRecord, Link>] = &[
    col("audit_id", |a, _| Value::Text(&a.id)),
    col("at_ms", |a, _| Value::Int(a.at.timestamp_millis())),
    col("ring", |a, _| Value::Text(&a.ring)),
    col("actor", |a, _| Value::Text(&a.actor)),
    col("trigger_kind", |a, _| Value::Text(a.trigger.as_str())),
    col("outcome", |a, _| Value::Text(a.outcome.as_str())),
    col("forced", |a, _| Value::Flag(a.forced)),
    col("reason", |a, _| Value::OptText(a.reason.as_deref())),
    col("old_kid", |a, _| Value::OptText(a.old_kid.as_deref())),
    col("old_fingerprint", |a, _| Value::OptText(a.old_fingerprint.as_deref())),
    col("new_kid", |a, _| Value::OptText(a.new_kid.as_deref())),
    col("new_fingerprint", |a, _| Value::OptText(a.new_fingerprint.as_deref())),
    col("generation", |_, l| Value::Int(l.generation)),
    col("idempotency_key", |a, _| Value::OptText(a.idempotency_key.as_deref())),
    col("request_id", |a, _| Value::OptText(a.request_id.as_deref())),
    col("detail", |a, _| Value::OptText(a.detail.as_deref())),
    col("instance", |a, _| Value::Text(&a.instance)),
    col("chain_seq", |_, l| Value::Int(l.seq)),
    col("chain_mac", |_, l| Value::Text(&l.mac)),
];

/// The idempotency columns: every field of an [`IdempotencyRecord`].
pub(crate) const IDEMPOTENCY_COLUMNS: &[Column<IdempotencyRecord>] = &[
    col("ring", |i, _| Value::Text(&i.ring)),
    col("idem_key", |i, _| Value::Text(&i.key)),
    col("request_hash", |i, _| Value::Text(&i.request_hash)),
    col("response", |i, _| Value::Text(&i.response)),
    col("created_at_ms", |i, _| Value::Int(i.created_at.timestamp_millis())),
];

#[cfg(test)]
mod tests {
    #[cfg(any(feature = "postgres", feature = "sqlite"))]
    use super::*;

    #[cfg(feature = "postgres")]
    #[test]
    fn inserts_number_their_placeholders_from_the_column_list() {
        assert_eq!(
            insert_sql::<sqlx::Postgres, _, _>("t", IDEMPOTENCY_COLUMNS),
            "INSERT INTO t (ring, idem_key, request_hash, response, created_at_ms) VALUES ($1, $2, $3, $4, $5)"
        );
        assert_eq!(
            placeholders::<sqlx::Postgres>(KEY_COLUMNS.len()).matches('$').count(),
            20
        );
    }

    #[cfg(feature = "sqlite")]
    #[test]
    fn question_mark_placeholders_follow_the_column_list() {
        let sql = insert_sql::<sqlx::Sqlite, _, _>("t", AUDIT_COLUMNS);
        assert_eq!(sql.matches('?').count(), AUDIT_COLUMNS.len());
        assert_eq!(key_update_columns().count(), KEY_COLUMNS.len() - 2);
    }
}
