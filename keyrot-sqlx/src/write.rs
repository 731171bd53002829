//! The write path every database shares, generic over [`Dialect`]: a commit's
//! compare-and-swap, its key rows and idempotency record, the ledger append, and the
//! retries the database asks for. The one generic store (`store.rs`) runs these inside
//! its transactions.

use crate::common::{self, RowExt as _, TxError, gen_from_db, next_link};
use crate::dialect::{self, AUDIT_COLUMNS, Dialect, IDEMPOTENCY_COLUMNS, KEY_COLUMNS, Link};
use crate::ops::{Statements, execute, fetch_optional};
use keyrot_core::{AuditLinker, AuditRecord, Commit, CommitOutcome, IdempotencyRecord, RingName, StorageError};
use std::future::Future;

/// A commit's compare-and-swap as stored: the generation it expects and the one it writes,
/// the generation of its audit record (`expected + 1`, except for a repair of an altered
/// generation, which moves the ring back to its authenticated generation + 1).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Swap {
    pub expected: i64,
    pub next: i64,
}

/// `Storage::commit`: checks the commit, then runs `once` (one transaction, given its
/// compare-and-swap as stored) again while the database asks for a retry. A generation
/// that does not fit a `BIGINT` is refused here, before any transaction, as invalid data
/// (never as a store to retry).
pub(crate) async fn commit<DB: Dialect, F, Fut>(commit: &Commit, mut once: F) -> Result<CommitOutcome, StorageError>
where
    F: FnMut(Swap) -> Fut,
    Fut: Future<Output = Result<CommitOutcome, TxError>>,
{
    common::check_commit_ring(commit)?;
    let swap = Swap {
        expected: common::gen_to_db(commit.expected_generation)?,
        next: common::gen_to_db(commit.audit.generation)?,
    };
    retrying::<DB, _, _, _>("commit", commit.ring.as_str(), || once(swap)).await
}

/// `Storage::record_attempt`: checks the record's ring, then runs `once` (one
/// transaction) again while the database asks for a retry.
pub(crate) async fn record_attempt<DB: Dialect, F, Fut>(audit: &AuditRecord, once: F) -> Result<(), StorageError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), TxError>>,
{
    common::audit_ring(audit)?;
    retrying::<DB, _, _, _>("record attempt", &audit.ring, once).await
}

/// Runs `once` again while the database asks for a retry, at most
/// [`common::MAX_TRIES`] times. `what` names it in logs and errors.
async fn retrying<DB: Dialect, T, F, Fut>(what: &str, ring: &str, mut once: F) -> Result<T, StorageError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, TxError>>,
{
    let mut tries = 0;
    loop {
        tries += 1;
        match once().await {
            Ok(outcome) => return Ok(outcome),
            Err(e) if e.is_retryable() && tries < common::MAX_TRIES => {
                tracing::debug!(ring, error = %e, "{} {what} retried", DB::LABEL);
            }
            Err(e) => return Err(e.into_storage_at(DB::LABEL, what)),
        }
    }
}

/// In a commit's transaction: creates the ring row if it is new (when `ensure_ring`; else
/// it was created before the transaction), moves its generation from `swap.expected` to
/// `swap.next` (writing the commit's manifest) and inserts the idempotency record. The
/// conflict to report when another commit got there first (the caller rolls back), `None`
/// when this one won.
pub(crate) async fn swap_generation<DB: Dialect>(
    tx: &mut DB::Connection,
    sql: &Statements,
    c: &Commit,
    swap: Swap,
    ensure_ring: bool,
) -> Result<Option<CommitOutcome>, TxError> {
    if ensure_ring {
        execute::<DB>(tx, &sql.ensure_ring, &[dialect::Value::Text(c.ring.as_str())]).await?;
    }
    if !cas::<DB>(tx, sql, c, swap).await? {
        let current = current_generation::<DB>(tx, sql, &c.ring).await?;
        return Ok(Some(CommitOutcome::Conflict { current }));
    }
    if let Some(i) = &c.idempotency
        && !claim_idempotency::<DB>(tx, &sql.insert_idempotency, i).await?
    {
        // Another request with this key committed first: treat as a lost race.
        return Ok(Some(CommitOutcome::Conflict {
            current: gen_from_db(swap.expected).unwrap_or(0),
        }));
    }
    Ok(None)
}

/// The compare-and-swap alone (the ring row exists): whether this commit won it.
async fn cas<DB: Dialect>(
    tx: &mut DB::Connection,
    sql: &Statements,
    c: &Commit,
    swap: Swap,
) -> Result<bool, sqlx::Error> {
    let values = [
        dialect::Value::Int(swap.next),
        dialect::Value::Text(c.manifest.as_str()),
        dialect::Value::OptInt(common::opt_ms(c.next_due)),
        dialect::Value::Text(c.ring.as_str()),
        dialect::Value::Int(swap.expected),
    ];
    Ok(execute::<DB>(tx, &sql.cas, &values).await? > 0)
}

/// Inserts a commit's idempotency record: whether it was inserted (not when the key was
/// taken: the insert inserted no row, or failed as a unique violation).
async fn claim_idempotency<DB: Dialect>(
    tx: &mut DB::Connection,
    sql: &str,
    record: &IdempotencyRecord,
) -> Result<bool, sqlx::Error> {
    match insert_idempotency::<DB>(tx, sql, record).await {
        Ok(inserted) => Ok(inserted > 0),
        Err(sqlx::Error::Database(d)) if d.is_unique_violation() => Ok(false),
        Err(e) => Err(e),
    }
}

/// The ring's current generation, read in the transaction that lost the
/// compare-and-swap (0 for a missing row or a negative value: a conflict either way).
async fn current_generation<DB: Dialect>(
    tx: &mut DB::Connection,
    sql: &Statements,
    ring: &RingName,
) -> Result<u64, TxError> {
    match fetch_optional::<DB>(tx, &sql.generation, &[dialect::Value::Text(ring.as_str())]).await? {
        Some(row) => Ok(gen_from_db(row.int("generation")?).unwrap_or(0)),
        None => Ok(0),
    }
}

/// Inserts an idempotency record with the store's `insert_idempotency` wording; the rows
/// it inserted (0 when the key was taken and the wording ignores conflicts).
pub(crate) async fn insert_idempotency<DB: Dialect>(
    tx: &mut DB::Connection,
    sql: &str,
    record: &IdempotencyRecord,
) -> Result<u64, sqlx::Error> {
    execute::<DB>(tx, sql, &dialect::values(IDEMPOTENCY_COLUMNS, record, &())).await
}

/// After the compare-and-swap (which locked the ring row): upserts the commit's keys and
/// appends its audit record to the ring's chain.
pub(crate) async fn insert_keys_and_audit<DB: Dialect>(
    tx: &mut DB::Connection,
    sql: &Statements,
    c: &Commit,
    linker: &dyn AuditLinker,
) -> Result<(), TxError> {
    for k in &c.keys {
        execute::<DB>(tx, &sql.upsert_key, &dialect::values(KEY_COLUMNS, k, c.ring.as_str())).await?;
    }
    append_audit::<DB>(tx, sql, &c.audit, linker).await
}

/// In a transaction that has serialised appends to the ring's ledger (the ring row is
/// locked, or the whole database is, on SQLite): reads the ring's chain head, links
/// `audit` after it with `linker` and inserts it.
pub(crate) async fn append_audit<DB: Dialect>(
    tx: &mut DB::Connection,
    sql: &Statements,
    audit: &AuditRecord,
    linker: &dyn AuditLinker,
) -> Result<(), TxError> {
    let head = match fetch_optional::<DB>(tx, &sql.audit_head, &[dialect::Value::Text(&audit.ring)]).await? {
        Some(row) => Some((row.int("chain_seq")?, row.opt_text("chain_mac")?)),
        None => None,
    };
    let (seq, seq_db, prev) = next_link(head)?;
    let mac = linker.link(audit, seq, prev.as_deref())?;
    let link = Link::new(audit, seq_db, mac)?;
    execute::<DB>(tx, &sql.insert_audit, &dialect::values(AUDIT_COLUMNS, audit, &link)).await?;
    Ok(())
}
