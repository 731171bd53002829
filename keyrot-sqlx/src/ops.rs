//! The statements every database shares, the reads, and running one statement, generic
//! over [`Dialect`]: the one generic store (`store.rs`) calls these from its
//! `impl Storage`; the write path its transactions run is in `write.rs`.

use crate::common::{self, RowExt as _, gen_from_db};
use crate::dialect::{
    self, AUDIT_COLUMNS, ConnExec as _, Dialect, IDEMPOTENCY_COLUMNS, KEY_COLUMNS, column_list, insert_sql,
    key_update_columns, public_key_column_list, query,
};
use crate::master_keys::{InsertWording, MasterKeyStatements};
use chrono::{DateTime, Utc};
use keyrot_core::{AuditRecord, ChangeCursor, IdempotencyRecord, Ring, RingChanges, RingEntry, RingName, StorageError};
use sqlx::{AssertSqlSafe, Pool};

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
    /// Inserts a commit's idempotency record ([`IDEMPOTENCY_COLUMNS`]): a key already
    /// taken inserts no row, or fails as a unique violation (MySQL).
    pub insert_idempotency: String,
    /// Inserts the idempotency record of an attempt that changed nothing: a key already
    /// taken keeps its first record, without an error.
    pub keep_idempotency: String,
    /// Locks the ring row (`$1`: ring), to serialise appends to its ledger; `None` where
    /// the write transaction locks the whole database (SQLite).
    pub lock_ring: Option<String>,
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
    /// The statements on the wrapped master keys.
    pub master_keys: MasterKeyStatements,
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
    /// Follows the idempotency `INSERT` of a commit (empty, or `ON CONFLICT … DO NOTHING`).
    pub insert_idempotency: &'a str,
    /// Follows the idempotency `INSERT` of an attempt that changed nothing, so that a key
    /// already taken keeps its first record without an error.
    pub keep_idempotency: &'a str,
    /// Whether `SELECT … FOR UPDATE` locks the ring row (false on SQLite, whose write
    /// transactions lock the whole database).
    pub row_locks: bool,
    /// The order of the chain head (`chain_seq DESC`, PostgreSQL adds `NULLS LAST`).
    pub chain_desc: &'a str,
    /// How a master key is inserted unless its id is taken.
    pub insert_master_key: InsertWording,
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
                "UPDATE {rings} SET generation = {p1}, manifest = {p2}, next_due_ms = {p3}, changed_ms = {now} \
                 WHERE name = {} AND generation = {}",
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
            keep_idempotency: format!(
                "{}{}",
                insert_sql::<DB, _, _>(&t.idempotency, IDEMPOTENCY_COLUMNS),
                w.keep_idempotency
            ),
            lock_ring: w
                .row_locks
                .then(|| format!("SELECT generation FROM {rings} WHERE name = {p1} FOR UPDATE")),
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
            master_keys: MasterKeyStatements::new::<DB>(t, w.insert_master_key),
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

/// `RingStorage::due_rings`: through the next-due index.
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

/// `RingStorage::reschedule`: whether the ring was still at `generation`.
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

/// `RingStorage::list_rings`: one page by name.
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

/// `RingStorage::rings_changed_since`: one statement, through the index on `changed_ms`.
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
