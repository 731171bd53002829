//! The storage operations every database shares, generic over [`Dialect`]: each store's
//! `impl Storage` and transactions are written out in its own file and call these.

use crate::common::{self, RowExt as _, TxError, gen_from_db, next_link};
use crate::dialect::{
    self, AUDIT_COLUMNS, ConnExec as _, Dialect, IDEMPOTENCY_COLUMNS, KEY_COLUMNS, Link, column_list, insert_sql,
    key_update_columns, public_key_column_list, query,
};
use chrono::{DateTime, Utc};
use keyrot_core::{
    AuditLinker, AuditRecord, ChangeCursor, Commit, CommitOutcome, IdempotencyRecord, Ring, RingChanges, RingEntry,
    RingName, StorageError,
};
use sqlx::{AssertSqlSafe, Pool};
use std::future::Future;

/// The statements every store runs, built once for its tables and database. `$n` below
/// is the n-th bound value (`?` on MySQL and SQLite).
#[derive(Debug)]
pub(crate) struct Statements {
    /// The ring's generation and manifest with its keys (`$1`: ring).
    pub load: String,
    /// [`Statements::load`] without the sealed columns ([`dialect::SEALED_COLUMNS`]).
    pub load_public: String,
    /// The ring's generation (`$1`: ring).
    pub generation: String,
    /// Inserts the ring row at generation 0 unless it exists (`$1`: ring).
    pub ensure_ring: String,
    /// The compare-and-swap (`$1` new generation, `$2` manifest, `$3` next-due ms, `$4` ring,
    /// `$5` expected generation).
    pub cas: String,
    /// Inserts or replaces a key row ([`KEY_COLUMNS`]).
    pub upsert_key: String,
    /// The ring's chain head: the highest `chain_seq`, MAC or not (`$1`: ring).
    pub audit_head: String,
    /// Appends an audit record ([`AUDIT_COLUMNS`]).
    pub insert_audit: String,
    /// Inserts an idempotency record ([`IDEMPOTENCY_COLUMNS`]), as each database words it.
    pub insert_idempotency: String,
    /// A ring's audit records, newest first (`$1` ring, `$2` limit).
    pub audit_log: String,
    /// One idempotency record (`$1` ring, `$2` key).
    pub idempotency: String,
    /// The due rings, soonest first (`$1` now in ms, `$2` limit), through the next-due index.
    pub due_rings: String,
    /// Sets the next-due time at a generation (`$1` next-due ms, `$2` ring, `$3` generation).
    pub reschedule: String,
    /// A page of rings by name (`$1` after, `''` for the first page, `$2` limit).
    pub list_rings: String,
    /// The database's clock, and the rings committed to at or after `$1` (ms by that
    /// clock), through the index on `changed_ms`: always one row, with a NULL ring when
    /// none was.
    pub rings_changed_since: String,
}

/// How far back [`rings_changed_since`] reads again before the cursor it was given: a
/// commit's time is taken by its `UPDATE` and it becomes visible at `COMMIT`, so a
/// transaction open across a poll is read by the next one if it took less than this.
/// [`keyrot_core::PollingRingsFeed`] reads every ring again now and then for the rest.
pub(crate) const CHANGE_MARGIN_MS: i64 = 10_000;

/// How each database words the statements that differ: the upsert clause, `NULLS LAST`.
#[derive(Debug)]
pub(crate) struct Wording<'a> {
    /// Follows the key `INSERT`, before the `col = <new value>` list.
    pub upsert_key: &'a str,
    /// The new value of column `{c}` in an upsert (`EXCLUDED.{c}`, `VALUES({c})`).
    pub new_value: &'a str,
    /// Follows the ring row `INSERT`, so that an existing row is left as it is.
    pub ensure_ring: &'a str,
    /// Follows the idempotency `INSERT` (empty, or `ON CONFLICT … DO NOTHING`).
    pub insert_idempotency: &'a str,
    /// The order of the chain head (`chain_seq DESC`, PostgreSQL adds `NULLS LAST`).
    pub chain_desc: &'a str,
}

impl Statements {
    pub fn new<DB: Dialect>(t: &common::Tables, w: &Wording<'_>) -> Self {
        let p = DB::placeholder;
        let updates = key_update_columns()
            .map(|c| format!("{c} = {}", w.new_value.replace("{c}", c)))
            .collect::<Vec<_>>()
            .join(", ");
        let audit_cols = column_list(AUDIT_COLUMNS, "");
        let idem_cols = column_list(IDEMPOTENCY_COLUMNS, "");
        let (rings, keys, audit, chain_desc) = (&t.rings, &t.keys, &t.audit, w.chain_desc);
        let (p1, p2, p3, now) = (p(1), p(2), p(3), DB::NOW_MS);
        Self {
            load: load_sql(rings, keys, &column_list(KEY_COLUMNS, "k."), &p(1)),
            load_public: load_sql(rings, keys, &public_key_column_list("k."), &p(1)),
            generation: format!("SELECT generation FROM {rings} WHERE name = {}", p(1)),
            ensure_ring: format!(
                "INSERT INTO {rings} (name, generation) VALUES ({}, 0) {}",
                p(1),
                w.ensure_ring
            ),
            cas: format!(
                "UPDATE {rings} SET generation = {}, manifest = {}, next_due_ms = {}, changed_ms = {} \
                 WHERE name = {} AND generation = {}",
                p(1),
                p(2),
                p(3),
                DB::NOW_MS,
                p(4),
                p(5)
            ),
            upsert_key: format!(
                "{} {} {updates}",
                insert_sql::<DB, _, _>(keys, KEY_COLUMNS),
                w.upsert_key
            ),
            // The highest position, MAC or not (see `common::next_link`).
            audit_head: format!(
                "SELECT chain_seq, chain_mac FROM {audit} WHERE ring = {} AND chain_seq IS NOT NULL \
                 ORDER BY {chain_desc} LIMIT 1",
                p(1)
            ),
            insert_audit: insert_sql::<DB, _, _>(audit, AUDIT_COLUMNS),
            insert_idempotency: format!(
                "{}{}",
                insert_sql::<DB, _, _>(&t.idempotency, IDEMPOTENCY_COLUMNS),
                w.insert_idempotency
            ),
            // Newest first by chain position; records from before the chain (NULL) last,
            // newest first.
            audit_log: format!(
                "SELECT {audit_cols} FROM {audit} WHERE ring = {} ORDER BY {chain_desc}, seq DESC LIMIT {}",
                p(1),
                p(2)
            ),
            idempotency: format!(
                "SELECT {idem_cols} FROM {} WHERE ring = {} AND idem_key = {}",
                t.idempotency,
                p(1),
                p(2)
            ),
            due_rings: format!(
                "SELECT name FROM {rings} WHERE next_due_ms <= {p1} ORDER BY next_due_ms, name LIMIT {p2}"
            ),
            reschedule: format!("UPDATE {rings} SET next_due_ms = {p1} WHERE name = {p2} AND generation = {p3}"),
            list_rings: format!(
                "SELECT name, generation, next_due_ms FROM {rings} WHERE name > {p1} ORDER BY name LIMIT {p2}"
            ),
            rings_changed_since: format!(
                "SELECT n.now_ms AS now_ms, r.name AS name, r.generation AS generation, r.next_due_ms AS next_due_ms \
                 FROM (SELECT {now} AS now_ms) n LEFT JOIN {rings} r ON r.changed_ms >= {p1} ORDER BY r.name"
            ),
        }
    }
}

/// The load statement over `columns` of the key table: one statement (one snapshot), so
/// the manifest matches the key rows. Only the first row carries it, so a ring of many
/// keys does not repeat it on each.
fn load_sql(rings: &str, keys: &str, columns: &str, ring: &str) -> String {
    format!(
        "SELECT r.generation AS ring_generation, \
         CASE WHEN row_number() OVER (ORDER BY k.seq) = 1 THEN r.manifest END AS ring_manifest, {columns} \
         FROM {rings} r LEFT JOIN {keys} k ON k.ring = r.name WHERE r.name = {ring} ORDER BY k.seq"
    )
}

/// A failed read, as a [`StorageError`] starting with the database's label.
fn read_err<DB: Dialect>(what: &str) -> impl FnOnce(sqlx::Error) -> StorageError {
    move |e| common::db_err_at(DB::LABEL, what, e)
}

/// `Storage::load`: the ring, its manifest and keys, in one statement.
pub(crate) async fn load<DB: Dialect>(
    pool: &Pool<DB>,
    sql: &Statements,
    ring: &RingName,
) -> Result<Ring, StorageError> {
    load_with::<DB>(pool, &sql.load, ring, common::key_from_row).await
}

/// `Storage::load_public`: [`load`] by a statement that does not name the sealed columns.
pub(crate) async fn load_public<DB: Dialect>(
    pool: &Pool<DB>,
    sql: &Statements,
    ring: &RingName,
) -> Result<Ring, StorageError> {
    load_with::<DB>(pool, &sql.load_public, ring, |row| {
        common::public_key_from_row(row, None)
    })
    .await
}

async fn load_with<DB: Dialect>(
    pool: &Pool<DB>,
    statement: &str,
    ring: &RingName,
    key: fn(&<DB as sqlx::Database>::Row) -> Result<keyrot_core::KeyRecord, StorageError>,
) -> Result<Ring, StorageError> {
    let rows = read::<DB>(pool, statement, &[dialect::Value::Text(ring.as_str())])
        .await
        .map_err(read_err::<DB>("load ring"))?;
    let mut out = Ring::empty(ring.clone());
    for row in &rows {
        out.generation = gen_from_db(row.int("ring_generation")?)?;
        // Only the first row of the join carries the manifest.
        if let Some(m) = row.opt_text("ring_manifest")? {
            out.manifest = Some(m);
        }
        if row.opt_text("kid")?.is_some() {
            out.keys.push(key(row)?);
        }
    }
    Ok(out)
}

/// `Storage::generation`: 0 for a ring never committed.
pub(crate) async fn generation<DB: Dialect>(
    pool: &Pool<DB>,
    sql: &Statements,
    ring: &RingName,
) -> Result<u64, StorageError> {
    let rows = read::<DB>(pool, &sql.generation, &[dialect::Value::Text(ring.as_str())])
        .await
        .map_err(read_err::<DB>("read generation"))?;
    rows.first().map_or(Ok(0), |r| gen_from_db(r.int("generation")?))
}

/// `Storage::audit_log`: newest first.
pub(crate) async fn audit_log<DB: Dialect>(
    pool: &Pool<DB>,
    sql: &Statements,
    ring: &RingName,
    limit: usize,
) -> Result<Vec<AuditRecord>, StorageError> {
    let values = [
        dialect::Value::Text(ring.as_str()),
        dialect::Value::Int(common::limit(limit)),
    ];
    let rows = read::<DB>(pool, &sql.audit_log, &values)
        .await
        .map_err(read_err::<DB>("read audit log"))?;
    rows.iter().map(common::audit_from_row).collect()
}

/// `Storage::idempotency`.
pub(crate) async fn idempotency<DB: Dialect>(
    pool: &Pool<DB>,
    sql: &Statements,
    ring: &RingName,
    key: &str,
) -> Result<Option<IdempotencyRecord>, StorageError> {
    let values = [dialect::Value::Text(ring.as_str()), dialect::Value::Text(key)];
    let rows = read::<DB>(pool, &sql.idempotency, &values)
        .await
        .map_err(read_err::<DB>("read idempotency record"))?;
    rows.first().map(common::idempotency_from_row).transpose()
}

/// `Storage::due_rings`: through the next-due index.
pub(crate) async fn due_rings<DB: Dialect>(
    pool: &Pool<DB>,
    sql: &Statements,
    now: DateTime<Utc>,
    limit: usize,
) -> Result<Vec<RingName>, StorageError> {
    let values = [
        dialect::Value::Int(now.timestamp_millis()),
        dialect::Value::Int(common::limit(limit)),
    ];
    let rows = read::<DB>(pool, &sql.due_rings, &values)
        .await
        .map_err(read_err::<DB>("read due rings"))?;
    rows.iter().map(ring_name).collect()
}

fn ring_name(row: &impl common::RowExt) -> Result<RingName, StorageError> {
    let name = row.text("name")?;
    RingName::new(name).map_err(|e| StorageError::Corrupt(format!("stored ring name: {e}")))
}

/// `Storage::reschedule`: whether the ring was still at `generation`.
pub(crate) async fn reschedule<DB: Dialect>(
    pool: &Pool<DB>,
    sql: &Statements,
    ring: &RingName,
    generation: u64,
    next_due: Option<DateTime<Utc>>,
) -> Result<bool, StorageError> {
    let values = [
        dialect::Value::OptInt(common::opt_ms(next_due)),
        dialect::Value::Text(ring.as_str()),
        dialect::Value::Int(common::gen_to_db(generation)?),
    ];
    let changed = execute_pooled::<DB>(pool, &sql.reschedule, &values)
        .await
        .map_err(read_err::<DB>("reschedule ring"))?;
    Ok(changed > 0)
}

/// `Storage::list_rings`: one page by name.
pub(crate) async fn list_rings<DB: Dialect>(
    pool: &Pool<DB>,
    sql: &Statements,
    after: Option<&RingName>,
    limit: usize,
) -> Result<Vec<RingEntry>, StorageError> {
    let values = [
        dialect::Value::Text(after.map_or("", RingName::as_str)),
        dialect::Value::Int(common::limit(limit)),
    ];
    let rows = read::<DB>(pool, &sql.list_rings, &values)
        .await
        .map_err(read_err::<DB>("list rings"))?;
    rows.iter()
        .map(|row| {
            Ok(RingEntry {
                name: ring_name(row)?,
                generation: gen_from_db(row.int("generation")?)?,
                next_due: row.opt_time("next_due_ms")?,
            })
        })
        .collect()
}

/// `Storage::rings_changed_since`: one statement, through the index on `changed_ms`.
pub(crate) async fn rings_changed_since<DB: Dialect>(
    pool: &Pool<DB>,
    sql: &Statements,
    since: Option<ChangeCursor>,
) -> Result<RingChanges, StorageError> {
    let values = [dialect::Value::Int(since.map_or(i64::MIN, |c| c.0))];
    let rows = read::<DB>(pool, &sql.rings_changed_since, &values)
        .await
        .map_err(read_err::<DB>("read the rings changed"))?;
    let now = match rows.first() {
        Some(row) => row.int("now_ms")?,
        None => return Err(StorageError::Corrupt("the database returned no clock".into())),
    };
    let mut rings = Vec::with_capacity(rows.len());
    for row in &rows {
        let Some(name) = row.opt_text("name")? else {
            continue;
        };
        rings.push(RingEntry {
            name: RingName::new(name).map_err(|e| StorageError::Corrupt(format!("stored ring name: {e}")))?,
            generation: gen_from_db(row.int("generation")?)?,
            next_due: row.opt_time("next_due_ms")?,
        });
    }
    Ok(RingChanges {
        rings,
        cursor: ChangeCursor(now.saturating_sub(CHANGE_MARGIN_MS)),
    })
}

/// Runs a read on a pool connection.
async fn read<DB: Dialect>(
    pool: &Pool<DB>,
    sql: &str,
    values: &[dialect::Value<'_>],
) -> Result<Vec<DB::Row>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    fetch_all::<DB>(&mut conn, sql, values).await
}

/// Runs a query in a transaction (or on a connection); returns its rows.
pub(crate) async fn fetch_all<DB: Dialect>(
    conn: &mut DB::Connection,
    sql: &str,
    values: &[dialect::Value<'_>],
) -> Result<Vec<DB::Row>, sqlx::Error> {
    query::<DB>(sql, values)?.fetch_all(conn.exec()).await
}

/// Runs SQL text as it is (several statements, no values): DDL, migrations.
pub(crate) async fn raw<DB: Dialect>(conn: &mut DB::Connection, sql: &str) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
        .execute(conn.exec())
        .await?;
    Ok(())
}

/// Runs a statement in a transaction (or on a connection); returns the rows it changed.
pub(crate) async fn execute<DB: Dialect>(
    conn: &mut DB::Connection,
    sql: &str,
    values: &[dialect::Value<'_>],
) -> Result<u64, sqlx::Error> {
    let done = query::<DB>(sql, values)?.execute(conn.exec()).await?;
    Ok(DB::rows_affected(&done))
}

/// Runs a statement on a pool connection, outside any transaction; returns the rows it
/// changed.
pub(crate) async fn execute_pooled<DB: Dialect>(
    pool: &Pool<DB>,
    sql: &str,
    values: &[dialect::Value<'_>],
) -> Result<u64, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    execute::<DB>(&mut conn, sql, values).await
}

/// Runs a query in a transaction (or on a connection); returns its first row, which
/// must exist.
pub(crate) async fn fetch_one<DB: Dialect>(
    conn: &mut DB::Connection,
    sql: &str,
    values: &[dialect::Value<'_>],
) -> Result<DB::Row, sqlx::Error> {
    query::<DB>(sql, values)?.fetch_one(conn.exec()).await
}

/// Runs a query in a transaction (or on a connection); returns its first row.
pub(crate) async fn fetch_optional<DB: Dialect>(
    conn: &mut DB::Connection,
    sql: &str,
    values: &[dialect::Value<'_>],
) -> Result<Option<DB::Row>, sqlx::Error> {
    query::<DB>(sql, values)?.fetch_optional(conn.exec()).await
}

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

/// In a transaction that keeps the whole compare-and-swap (PostgreSQL, SQLite): creates
/// the ring row if it is new, moves its generation from `swap.expected` to `swap.next`
/// (writing the commit's manifest) and inserts the idempotency record. The conflict to
/// report when another commit got there first (the caller rolls back), `None` when this
/// one won.
pub(crate) async fn swap_generation<DB: Dialect>(
    tx: &mut DB::Connection,
    sql: &Statements,
    c: &Commit,
    swap: Swap,
) -> Result<Option<CommitOutcome>, TxError> {
    execute::<DB>(tx, &sql.ensure_ring, &[dialect::Value::Text(c.ring.as_str())]).await?;
    if !cas::<DB>(tx, sql, c, swap).await? {
        let current = current_generation::<DB>(tx, sql, &c.ring).await?;
        return Ok(Some(CommitOutcome::Conflict { current }));
    }
    if let Some(i) = &c.idempotency
        && insert_idempotency::<DB>(tx, &sql.insert_idempotency, i).await? == 0
    {
        // Another request with this key committed first: treat as a lost race.
        return Ok(Some(CommitOutcome::Conflict {
            current: gen_from_db(swap.expected).unwrap_or(0),
        }));
    }
    Ok(None)
}

/// The compare-and-swap alone (the ring row exists): whether this commit won it.
pub(crate) async fn cas<DB: Dialect>(
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

/// The ring's current generation, read in the transaction that lost the
/// compare-and-swap (0 for a missing row or a negative value: a conflict either way).
pub(crate) async fn current_generation<DB: Dialect>(
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
