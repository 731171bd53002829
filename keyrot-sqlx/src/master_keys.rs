//! Wrapped master keys ([`MasterKeyStorage`]) in `<prefix>master_keys`, beside the rings:
//! a new instance needs only its custody URI and credential. Nothing in the table is
//! secret (each blob opens only inside the HSM or KMS, under its row's id and KEK).
//!
//! In the database itself rows are never deleted and only their wrapped form (`kek`,
//! `wrapped`) is ever updated: triggers refuse the rest (and `TRUNCATE` on PostgreSQL,
//! `INSERT OR REPLACE` on SQLite). A writer who gets past them can still only deny
//! service: a substituted blob does not unwrap under its row.

use crate::common;
use crate::dialect::{Dialect, Value, placeholders};
use crate::store::{SqlDatabase, SqlStore};
use async_trait::async_trait;
use keyrot_core::StorageError;
use keyrot_core::custody::{MasterKeyStorage, StoredMasterKey, WrappedKey};
use sqlx::Pool;

/// The master key columns, in the order every statement binds and reads them.
const COLUMNS: &str = "id, backend, kek, wrapped, created_at_ms";

/// The statements on `<prefix>master_keys`. `$n` below is the n-th bound value.
#[derive(Debug)]
pub(crate) struct MasterKeyStatements {
    /// Every row, oldest first (by `created_at_ms`, then id).
    pub list: String,
    /// Inserts a row ([`COLUMNS`]); a taken id inserts no row, or fails as a unique
    /// violation.
    pub insert: String,
    /// The rewrap's compare-and-swap (`$1` new kek, `$2` new blob, `$3` id, `$4` expected
    /// kek, `$5` expected blob).
    pub replace: String,
}

/// How a database inserts a master key unless its id is taken.
#[derive(Debug, Clone, Copy)]
pub(crate) enum InsertWording {
    /// `INSERT … VALUES (…)` followed by this clause (`ON CONFLICT (id) DO NOTHING`, or
    /// nothing where a taken id fails as a unique violation).
    #[cfg_attr(not(any(feature = "postgres", feature = "mysql")), allow(dead_code))]
    Values(&'static str),
    /// `INSERT … SELECT … WHERE NOT EXISTS` (SQLite: its `no_replace` trigger refuses an
    /// insert of a taken id before any `ON CONFLICT` clause could apply; the statement
    /// holds the write lock from its start, so the check and the insert are one step).
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    SelectWhereNotExists,
}

impl MasterKeyStatements {
    pub fn new<DB: Dialect>(t: &common::Tables, insert: InsertWording) -> Self {
        let (mk, p) = (&t.master_keys, DB::placeholder);
        let insert = match insert {
            InsertWording::Values(clause) => {
                format!(
                    "INSERT INTO {mk} ({COLUMNS}) VALUES ({}){clause}",
                    placeholders::<DB>(5)
                )
            }
            InsertWording::SelectWhereNotExists => {
                let names = ["id", "backend", "kek", "wrapped", "created_at_ms"];
                let values = (1..=5).map(|n| format!("{} AS {}", p(n), names[n - 1]));
                format!(
                    "INSERT INTO {mk} ({COLUMNS}) SELECT {COLUMNS} FROM (SELECT {}) v \
                     WHERE NOT EXISTS (SELECT 1 FROM {mk} m WHERE m.id = v.id)",
                    values.collect::<Vec<_>>().join(", ")
                )
            }
        };
        Self {
            list: format!("SELECT {COLUMNS} FROM {mk} ORDER BY created_at_ms, id"),
            insert,
            replace: format!(
                "UPDATE {mk} SET kek = {}, wrapped = {} WHERE id = {} AND kek = {} AND wrapped = {}",
                p(1),
                p(2),
                p(3),
                p(4),
                p(5)
            ),
        }
    }
}

/// A stored master key from a row of [`COLUMNS`].
fn from_row(row: &impl common::RowExt) -> Result<StoredMasterKey, StorageError> {
    let id = row.text("id")?;
    let blob = row
        .opt_bytes("wrapped")?
        .ok_or_else(|| StorageError::Corrupt(format!("master key {id:?}: no wrapped key")))?;
    Ok(StoredMasterKey {
        backend: row.text("backend")?,
        wrapped: WrappedKey {
            kek: row.text("kek")?,
            blob,
        },
        created_at: row.time("created_at_ms")?,
        id,
    })
}

fn err<DB: Dialect>(what: &'static str) -> impl FnOnce(sqlx::Error) -> StorageError {
    move |e| common::db_err_at(DB::LABEL, what, e)
}

async fn list<DB: Dialect>(pool: &Pool<DB>, sql: &str) -> Result<Vec<StoredMasterKey>, StorageError> {
    let mut conn = pool.acquire().await.map_err(err::<DB>("read master keys"))?;
    let rows = crate::ops::fetch_all::<DB>(&mut conn, sql, &[])
        .await
        .map_err(err::<DB>("read master keys"))?;
    rows.iter().map(from_row).collect()
}

async fn insert<DB: Dialect>(pool: &Pool<DB>, sql: &str, key: &StoredMasterKey) -> Result<bool, StorageError> {
    let values = [
        Value::Text(&key.id),
        Value::Text(&key.backend),
        Value::Text(&key.wrapped.kek),
        Value::OptBytes(Some(&key.wrapped.blob)),
        Value::Int(key.created_at.timestamp_millis()),
    ];
    match crate::ops::execute_pooled::<DB>(pool, sql, &values).await {
        Ok(inserted) => Ok(inserted > 0),
        // MySQL's insert, or a concurrent insert of the same id elsewhere.
        Err(sqlx::Error::Database(d)) if d.is_unique_violation() => Ok(false),
        Err(e) => Err(err::<DB>("store a master key")(e)),
    }
}

async fn replace<DB: Dialect>(
    pool: &Pool<DB>,
    sql: &str,
    id: &str,
    expected: &WrappedKey,
    new: &WrappedKey,
) -> Result<bool, StorageError> {
    let values = [
        Value::Text(&new.kek),
        Value::OptBytes(Some(&new.blob)),
        Value::Text(id),
        Value::Text(&expected.kek),
        Value::OptBytes(Some(&expected.blob)),
    ];
    // Rows matched, not rows changed, on every database (sqlx connects to MySQL with
    // `CLIENT_FOUND_ROWS`): a swap to the value the row holds reports success.
    let matched = crate::ops::execute_pooled::<DB>(pool, sql, &values)
        .await
        .map_err(err::<DB>("rewrap a master key"))?;
    Ok(matched > 0)
}

#[async_trait]
impl<DB: SqlDatabase> MasterKeyStorage for SqlStore<DB> {
    async fn master_keys(&self) -> Result<Vec<StoredMasterKey>, StorageError> {
        list(&self.inner.pool, &self.inner.sql.master_keys.list).await
    }

    async fn insert_master_key(&self, key: &StoredMasterKey) -> Result<bool, StorageError> {
        insert(&self.inner.pool, &self.inner.sql.master_keys.insert, key).await
    }

    async fn replace_wrapped_master_key(
        &self,
        id: &str,
        expected: &WrappedKey,
        new: &WrappedKey,
    ) -> Result<bool, StorageError> {
        replace(&self.inner.pool, &self.inner.sql.master_keys.replace, id, expected, new).await
    }
}
