//! keyrot's schema migrations: one driver ([`run`]) over a few per-database primitives
//! ([`Migrate`]), after sqlx's own `Migrate` trait. A store's `migrate()` opens a
//! [`Migrate`] session (which takes the migration lock, and begins the transaction where
//! the database has transactional DDL) and hands it to [`run`], which creates the version
//! table, reads what is applied, and applies and records each pending migration in order.
//! Applied versions live in `<prefix>migrations`, never in sqlx's `_sqlx_migrations`.

use crate::common::{RowExt as _, Tables, hex};
use crate::dialect::{Dialect, Value, placeholders};
use crate::ops;
use keyrot_core::StorageError;
use sha2::{Digest as _, Sha256};
use sqlx::Database;

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

/// When a migration was applied, in Unix milliseconds.
#[derive(Debug)]
pub(crate) enum AppliedAt {
    /// An SQL expression reading the server's clock.
    #[cfg(any(feature = "postgres", feature = "mysql"))]
    Server(&'static str),
    /// The store's clock, bound as a value.
    #[cfg(feature = "sqlite")]
    Clock(i64),
}

/// A migration session on one database: holds the migration lock (and the transaction,
/// where DDL is transactional) from the store's `migrate()` until [`Migrate::finish`].
pub(crate) trait Migrate: Send {
    type Db: Dialect;

    /// `CREATE TABLE IF NOT EXISTS {migrations} …`, a template for [`Tables::render`].
    const VERSION_TABLE: &'static str;

    /// The session's connection (inside its transaction, where it has one).
    fn conn(&mut self) -> &mut <Self::Db as Database>::Connection;

    /// Runs one migration's statements (rendered).
    async fn apply(&mut self, sql: &str) -> Result<(), StorageError>;

    /// The time recorded for a migration applied now.
    fn applied_at(&self) -> AppliedAt;

    /// Ends the session after the migrations ran (`result`): commits (or rolls back after
    /// an error) and releases the lock. Returns `result`, or the error of committing.
    async fn finish(self, result: Result<(), StorageError>) -> Result<(), StorageError>;
}

/// Applies every pending migration of `migrations` in `session`, then finishes it.
pub(crate) async fn run<M: Migrate>(
    mut session: M,
    tables: &Tables,
    migrations: &[Migration],
) -> Result<(), StorageError> {
    let result = apply_pending(&mut session, tables, migrations).await;
    session.finish(result).await
}

async fn apply_pending<M: Migrate>(s: &mut M, t: &Tables, migrations: &[Migration]) -> Result<(), StorageError> {
    let label = <M::Db as Dialect>::LABEL;
    let fail = |what: &'static str| move |e| crate::common::db_err_at(label, what, e);
    ops::raw::<M::Db>(s.conn(), &t.render(M::VERSION_TABLE))
        .await
        .map_err(fail("create migrations table"))?;
    let rows = ops::fetch_all::<M::Db>(s.conn(), &t.render("SELECT version, checksum FROM {migrations}"), &[])
        .await
        .map_err(fail("read applied migrations"))?;
    let applied = rows
        .iter()
        .map(|r| Ok((r.int("version")?, r.text("checksum")?)))
        .collect::<Result<Vec<_>, StorageError>>()?;
    for m in pending(migrations, &applied)? {
        s.apply(&t.render(m.sql)).await?;
        record(s, t, m).await.map_err(fail("record migration"))?;
        tracing::info!(
            version = m.version,
            description = m.description,
            "keyrot migration applied ({label})"
        );
    }
    Ok(())
}

/// Records `m` in `{migrations}`, applied now.
async fn record<M: Migrate>(s: &mut M, t: &Tables, m: &Migration) -> Result<u64, sqlx::Error> {
    let checksum = m.checksum();
    // The time: the server's clock, or the store's, bound as the fourth value.
    let (at, clock) = match s.applied_at() {
        #[cfg(any(feature = "postgres", feature = "mysql"))]
        AppliedAt::Server(expr) => (expr.to_owned(), None::<Value<'_>>),
        #[cfg(feature = "sqlite")]
        AppliedAt::Clock(ms) => (<M::Db as Dialect>::placeholder(4), Some(Value::Int(ms))),
    };
    let mut values = vec![
        Value::Int(m.version),
        Value::Text(m.description),
        Value::Text(&checksum),
    ];
    values.extend(clock);
    let sql = t.render(&format!(
        "INSERT INTO {{migrations}} (version, description, checksum, applied_at_ms) VALUES ({}, {at})",
        placeholders::<M::Db>(3)
    ));
    ops::execute::<M::Db>(s.conn(), &sql, &values).await
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
