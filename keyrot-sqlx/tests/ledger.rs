//! The audit ledger in the database itself: every cheap way around "append-only" is
//! refused on each server (PostgreSQL `TRUNCATE` and upserts, MySQL `TRUNCATE`, `DROP`,
//! `REPLACE` and upserts, SQLite `INSERT OR REPLACE`), leaving the ledger exactly as it
//! was; `(ring, chain_seq)` is unique; and a database written before the chain (schema
//! version 1) upgrades in place: its records stay readable, last, and the chain starts
//! after them once the ring is authenticated. Concurrent first appends to a new ring build
//! one chain. A chain position without a MAC (or a MAC without a position) is refused by
//! the database (schema version 3), and even where that guard is removed it cannot squat
//! the next position and block appends: the head is the highest position, MAC or not, and
//! the verifier names the MAC-less record. A commit whose audit record names another ring
//! is refused before anything is written. On PostgreSQL, appends keep one chain whatever
//! the database's default isolation level.

mod common;

use chrono::{TimeDelta, Utc};
use common::{TestDb, lit, ring, sealer};
use keyrot_core::SealerLinker;
use keyrot_core::conformance::sample_audit;
use keyrot_core::to_millis;
use keyrot_core::{
    AuditQuery, AuditRecord, Commit, CommitOutcome, KeyRing, KeyState, ManualClock, Outcome, RequestContext,
    RingIntegrity, RingName, Rotator, StorageError,
};
use keyrot_sqlx::sqlx::{self, AssertSqlSafe};
use std::sync::Arc;

fn ctx() -> RequestContext {
    RequestContext::actor("ledger-test")
}

struct Ledger {
    ring: RingName,
    clock: ManualClock,
    rotator: Rotator,
}

/// A ring whose ledger holds 4 records: the bootstrap and 3 rate-limited rotations.
async fn ledger(db: &TestDb, name: &str) -> Ledger {
    let r = ring(name);
    let clock = ManualClock::new(to_millis(Utc::now()));
    let rotator = Rotator::builder(r.clone(), db.storage.clone(), db.lock.clone(), sealer())
        .with_clock(Arc::new(clock.clone()))
        .with_instance("a")
        .build();
    assert_eq!(rotator.init(ctx()).await.expect("init").outcome, Outcome::Bootstrapped);
    for _ in 0..3 {
        assert_eq!(
            rotator.rotate(ctx()).await.expect("rotate").outcome,
            Outcome::RateLimited
        );
    }
    Ledger {
        ring: r,
        clock,
        rotator,
    }
}

async fn all(db: &TestDb, r: &RingName) -> Vec<AuditRecord> {
    db.storage
        .audit_log(r, AuditQuery { limit: usize::MAX })
        .await
        .expect("audit log")
}

/// A complete audit row for `ring`, as raw SQL values, after the column list
/// `(audit_id, at_ms, ring, actor, trigger_kind, outcome, forced, generation, instance,
/// chain_seq, chain_mac)`.
fn forged_values(ring: &str, chain_seq: i64) -> String {
    format!(
        "'forged', 0, {}, 'mallory', 'force_rotate', 'rotated', FALSE, 1, 'mallory', {chain_seq}, 'mk:forged'",
        lit(ring)
    )
}

const FORGED_COLUMNS: &str =
    "audit_id, at_ms, ring, actor, trigger_kind, outcome, forced, generation, instance, chain_seq, chain_mac";

/// `statement` fails with an error containing `expect` (lowercase), and the ledger is
/// unchanged: the same records, still one intact chain.
async fn refused(db: &TestDb, l: &Ledger, statement: &str, expect: &str) {
    let before = all(db, &l.ring).await;
    let err = db.raw.exec(statement).await.err();
    let msg = err.unwrap_or_default().to_lowercase();
    assert!(
        msg.contains(expect),
        "{}: {statement} must be refused ({expect:?}), got {msg:?}",
        db.name
    );
    assert_eq!(
        all(db, &l.ring).await,
        before,
        "{}: the ledger is unchanged after {statement}",
        db.name
    );
    let chain = l
        .rotator
        .verify_audit_chain()
        .await
        .expect("ledger")
        .expect("intact chain");
    assert_eq!(chain.records, before.len());
    println!("{}: refused: {statement}", db.name);
}

/// After every refusal the store still appends, and the chain goes on.
async fn still_appends(db: &TestDb, l: &Ledger, records: usize) {
    assert_eq!(
        l.rotator.rotate(ctx()).await.expect("rotate").outcome,
        Outcome::RateLimited
    );
    let chain = l
        .rotator
        .verify_audit_chain()
        .await
        .expect("ledger")
        .expect("intact chain");
    assert_eq!(chain.records, records + 1, "{}: appended after the refusals", db.name);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_ledger_refuses_update_delete_truncate_and_upsert() {
    let Some(db) = TestDb::postgres("postgres ledger bypasses").await else {
        return;
    };
    let l = ledger(&db, "ledger").await;
    let r = l.ring.as_str();
    refused(&db, &l, "UPDATE {audit} SET detail = 'forged'", "append-only").await;
    refused(&db, &l, "DELETE FROM {audit}", "append-only").await;
    refused(&db, &l, "TRUNCATE {audit}", "append-only").await;
    refused(&db, &l, "TRUNCATE {rings}, {keys}, {audit}", "append-only").await;
    refused(
        &db,
        &l,
        &format!(
            "INSERT INTO {{audit}} (seq, {FORGED_COLUMNS}) OVERRIDING SYSTEM VALUE VALUES (1, {}) \
             ON CONFLICT (seq) DO UPDATE SET detail = 'forged'",
            forged_values(r, 99)
        ),
        "append-only",
    )
    .await;
    // (ring, chain_seq) is unique.
    refused(
        &db,
        &l,
        &format!(
            "INSERT INTO {{audit}} ({FORGED_COLUMNS}) VALUES ({})",
            forged_values(r, 2)
        ),
        "duplicate key",
    )
    .await;
    still_appends(&db, &l, 4).await;
    db.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_ledger_refuses_update_delete_truncate_drop_and_replace() {
    let Some(db) = TestDb::mysql("mysql ledger bypasses").await else {
        return;
    };
    let l = ledger(&db, "ledger").await;
    let r = l.ring.as_str();
    refused(&db, &l, "UPDATE {audit} SET detail = 'forged'", "append-only").await;
    refused(&db, &l, "DELETE FROM {audit}", "append-only").await;
    // Triggers never see TRUNCATE; the guard table's foreign key stops it (and DROP).
    refused(&db, &l, "TRUNCATE TABLE {audit}", "foreign key").await;
    refused(&db, &l, "DROP TABLE {audit}", "foreign key").await;
    // REPLACE deletes the row it conflicts with: the DELETE trigger refuses it, on the
    // primary key and on (ring, chain_seq) alike.
    refused(
        &db,
        &l,
        &format!(
            "REPLACE INTO {{audit}} (seq, {FORGED_COLUMNS}) VALUES (1, {})",
            forged_values(r, 99)
        ),
        "append-only",
    )
    .await;
    refused(
        &db,
        &l,
        &format!(
            "REPLACE INTO {{audit}} ({FORGED_COLUMNS}) VALUES ({})",
            forged_values(r, 2)
        ),
        "append-only",
    )
    .await;
    refused(
        &db,
        &l,
        &format!(
            "INSERT INTO {{audit}} (seq, {FORGED_COLUMNS}) VALUES (1, {}) ON DUPLICATE KEY UPDATE detail = 'forged'",
            forged_values(r, 99)
        ),
        "append-only",
    )
    .await;
    // (ring, chain_seq) is unique.
    refused(
        &db,
        &l,
        &format!(
            "INSERT INTO {{audit}} ({FORGED_COLUMNS}) VALUES ({})",
            forged_values(r, 2)
        ),
        "duplicate entry",
    )
    .await;
    still_appends(&db, &l, 4).await;
    db.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_ledger_refuses_update_delete_and_replace() {
    let db = TestDb::sqlite().await;
    let l = ledger(&db, "ledger").await;
    let r = l.ring.as_str();
    refused(&db, &l, "UPDATE {audit} SET detail = 'forged'", "append-only").await;
    refused(&db, &l, "DELETE FROM {audit}", "append-only").await;
    // INSERT OR REPLACE deletes the conflicting row without firing DELETE triggers: the
    // BEFORE INSERT trigger refuses it first, on the primary key and on (ring, chain_seq).
    refused(
        &db,
        &l,
        &format!(
            "INSERT OR REPLACE INTO {{audit}} (seq, {FORGED_COLUMNS}) VALUES (1, {})",
            forged_values(r, 99)
        ),
        "append-only",
    )
    .await;
    refused(
        &db,
        &l,
        &format!(
            "REPLACE INTO {{audit}} ({FORGED_COLUMNS}) VALUES ({})",
            forged_values(r, 2)
        ),
        "append-only",
    )
    .await;
    // With recursive triggers on, REPLACE would fire the DELETE trigger; either way it is
    // refused.
    refused(
        &db,
        &l,
        &format!(
            "PRAGMA recursive_triggers = ON; INSERT OR REPLACE INTO {{audit}} (seq, {FORGED_COLUMNS}) VALUES (2, {})",
            forged_values(r, 98)
        ),
        "append-only",
    )
    .await;
    refused(
        &db,
        &l,
        "UPDATE OR REPLACE {audit} SET seq = 2 WHERE seq = 1",
        "append-only",
    )
    .await;
    refused(
        &db,
        &l,
        &format!(
            "INSERT INTO {{audit}} (seq, {FORGED_COLUMNS}) VALUES (1, {}) ON CONFLICT (seq) DO UPDATE SET detail = 'forged'",
            forged_values(r, 99)
        ),
        "append-only",
    )
    .await;
    // (ring, chain_seq) is unique (the trigger answers before the index does).
    refused(
        &db,
        &l,
        &format!(
            "INSERT INTO {{audit}} ({FORGED_COLUMNS}) VALUES ({})",
            forged_values(r, 2)
        ),
        "append-only",
    )
    .await;
    still_appends(&db, &l, 4).await;
    db.finish().await;
}

/// Takes the database back to schema version 1 (as a keyrot-sqlx from before the chain
/// left it): the ring's manifest and the ledger's chain columns are gone, and so is
/// version 3's guard on them, the columns of versions 4 and 5 and version 6's table of
/// master keys (MySQL keeps them, as if those versions had been cut short: they are added
/// only if missing).
async fn downgrade_to_v1(db: &TestDb) {
    let statements: &[&str] = match db.name {
        "postgres" => &[
            "ALTER TABLE {keys} DROP COLUMN remote_key",
            "DROP TABLE {master_keys}",
            // The schema-qualified `keyrot_master_keys_guard()`.
            "DROP FUNCTION {master_keys}_guard()",
            "ALTER TABLE {rings} DROP COLUMN changed_ms",
            "ALTER TABLE {rings} DROP COLUMN next_due_ms",
            "ALTER TABLE {audit} DROP CONSTRAINT keyrot_audit_chain_link",
            "ALTER TABLE {audit} DROP COLUMN chain_seq, DROP COLUMN chain_mac",
            "CREATE INDEX keyrot_audit_ring_seq ON {audit} (ring, seq DESC)",
            "ALTER TABLE {rings} DROP COLUMN manifest",
        ],
        // As if a migration had been cut short after its first statement: the manifest
        // column is there (empty), the rest is not.
        "mysql" => &[
            "ALTER TABLE {keys} DROP COLUMN remote_key",
            "DROP TRIGGER keyrot_audit_chain_link_insert",
            "ALTER TABLE {audit} DROP CONSTRAINT keyrot_audit_chain_link",
            "DROP TABLE {audit_guard}",
            "ALTER TABLE {audit} DROP INDEX keyrot_audit_ring_chain, DROP INDEX keyrot_audit_ring_chain_seq, \
             DROP COLUMN chain_seq, DROP COLUMN chain_mac, ADD KEY keyrot_audit_ring_seq (ring, seq)",
            "UPDATE {rings} SET manifest = NULL",
        ],
        "sqlite" => &[
            "ALTER TABLE {keys} DROP COLUMN remote_key",
            "DROP TABLE {master_keys}",
            r#"DROP INDEX "keyrot_rings_changed""#,
            "ALTER TABLE {rings} DROP COLUMN changed_ms",
            r#"DROP INDEX "keyrot_rings_next_due""#,
            "ALTER TABLE {rings} DROP COLUMN next_due_ms",
            r#"DROP TRIGGER "keyrot_audit_chain_link""#,
            r#"DROP TRIGGER "keyrot_audit_no_replace""#,
            r#"DROP INDEX "keyrot_audit_ring_chain""#,
            "ALTER TABLE {audit} DROP COLUMN chain_seq",
            "ALTER TABLE {audit} DROP COLUMN chain_mac",
            r#"CREATE INDEX "keyrot_audit_ring_seq" ON {audit} (ring, seq)"#,
            "ALTER TABLE {rings} DROP COLUMN manifest",
        ],
        other => panic!("unknown database {other}"),
    };
    for s in statements {
        db.raw.must(s).await;
    }
    db.raw.must("DELETE FROM {migrations} WHERE version >= 2").await;
}

async fn v1_database_upgrades_in_place_and_is_authenticated(db: &TestDb) {
    let l = ledger(db, "legacy").await;
    let legacy = all(db, &l.ring).await;
    downgrade_to_v1(db).await;
    db.migrate()
        .await
        .expect("migrations 2 to 7 apply over a version 1 database");
    db.migrate().await.expect("and is not applied twice");

    // The ring is as a version 1 keyrot left it: keys, no manifest, an unchained ledger.
    let loaded = db.storage.load(&l.ring).await.expect("load");
    assert_eq!(loaded.manifest, None);
    assert_eq!(loaded.keys.len(), 1);
    let unchained = all(db, &l.ring).await;
    assert!(unchained.iter().all(|a| a.seq == 0 && a.mac.is_none()), "{unchained:?}");
    let ids = |v: &[AuditRecord]| v.iter().map(|a| a.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&unchained), ids(&legacy), "the old records, in their old order");
    let keyring = KeyRing::builder(l.ring.clone(), db.storage.clone(), sealer())
        .build()
        .await
        .expect("keyring");
    assert_eq!(keyring.snapshot().integrity().integrity, RingIntegrity::Unauthenticated);

    // The explicit migration writes the first manifest and starts the chain after the
    // old records, which stay last.
    l.clock.advance(TimeDelta::minutes(1));
    let rep = l.rotator.authenticate_ring(ctx()).await.expect("authenticate");
    assert_eq!(rep.outcome, Outcome::Authenticated, "{rep:?}");
    assert!(db.storage.load(&l.ring).await.expect("load").manifest.is_some());
    l.clock.advance(TimeDelta::hours(2));
    let rotated = l
        .rotator
        .force_rotate(ctx(), "after the migration", false)
        .await
        .expect("rotate");
    assert_eq!(rotated.outcome, Outcome::Rotated);
    let now = all(db, &l.ring).await;
    let outcomes: Vec<(Outcome, u64)> = now.iter().map(|a| (a.outcome, a.seq)).collect();
    assert_eq!(
        outcomes,
        vec![
            (Outcome::Rotated, 2),
            (Outcome::Authenticated, 1),
            (Outcome::RateLimited, 0),
            (Outcome::RateLimited, 0),
            (Outcome::RateLimited, 0),
            (Outcome::Bootstrapped, 0),
        ],
        "{}: newest first by chain position, the unchained records last",
        db.name
    );
    let chain = l
        .rotator
        .verify_audit_chain()
        .await
        .expect("ledger")
        .expect("intact chain");
    assert_eq!((chain.records, chain.unchained), (2, 4));
    let now = to_millis(Utc::now()).timestamp_millis();
    let e = db
        .raw
        .exec(&squatter(l.ring.as_str(), "squatter", now, "3", "NULL"))
        .await
        .err()
        .unwrap_or_default();
    assert!(
        e.contains("audit_chain_link"),
        "{}: the upgraded ledger refuses a position without a MAC: {e}",
        db.name
    );
    if db.name == "mysql" {
        let e = db.raw.exec("TRUNCATE TABLE {audit}").await.err().unwrap_or_default();
        assert!(
            e.to_lowercase().contains("foreign key"),
            "the upgraded ledger is guarded: {e}"
        );
    }
    if db.name == "sqlite" {
        let e = db
            .raw
            .exec(&format!(
                "INSERT OR REPLACE INTO {{audit}} (seq, {FORGED_COLUMNS}) VALUES (1, {})",
                forged_values(l.ring.as_str(), 99)
            ))
            .await
            .err()
            .unwrap_or_default();
        assert!(e.contains("append-only"), "the upgraded ledger refuses REPLACE: {e}");
    }
}

/// The first appends to a ring nobody committed to yet race to create its row: every one
/// lands, in one contiguous chain (the kit's race starts from an existing ring).
async fn concurrent_first_appends_on_a_new_ring_form_one_chain(db: &TestDb) {
    let sealer = sealer();
    let linker = Arc::new(SealerLinker::new(sealer.clone()));
    let r = ring("first-appends");
    let t0 = to_millis(Utc::now());
    let mut set = tokio::task::JoinSet::new();
    for i in 0..16 {
        let (storage, linker) = (db.storage.clone(), linker.clone());
        let mut a = sample_audit(r.as_str(), t0, 0, Outcome::LockBusy);
        a.id = format!("first-{i}");
        set.spawn(async move { storage.record_attempt(&a, None, &*linker).await });
    }
    for result in set.join_all().await {
        result.expect("every first append lands");
    }
    let records = all(db, &r).await;
    assert_eq!(records.len(), 16);
    let chain = keyrot_core::verify_chain(&records, &*sealer).expect("one contiguous chain");
    assert_eq!(chain.records, 16, "{}", db.name);
    assert_eq!(db.storage.generation(&r).await.expect("generation"), 0);
}

/// A record at `chain_seq` with the given MAC (SQL: a quoted literal or `NULL`), dated
/// `at_ms`.
fn squatter(ring: &str, id: &str, at_ms: i64, chain_seq: &str, chain_mac: &str) -> String {
    format!(
        "INSERT INTO {{audit}} ({FORGED_COLUMNS}) VALUES ({}, {at_ms}, {}, 'mallory', 'force_rotate', 'rotated', \
         FALSE, 1, 'mallory', {chain_seq}, {chain_mac})",
        lit(id),
        lit(ring)
    )
}

/// Removes schema version 3's guard that a chain position and a MAC go together, as the
/// table's owner could. On MySQL the CHECK constraint is checked to refuse the insert on
/// its own, once the trigger is gone.
async fn drop_chain_link_guard(db: &TestDb, l: &Ledger) {
    match db.name {
        "postgres" => {
            db.raw
                .must("ALTER TABLE {audit} DROP CONSTRAINT keyrot_audit_chain_link")
                .await;
        }
        "mysql" => {
            db.raw.must("DROP TRIGGER keyrot_audit_chain_link_insert").await;
            let now = to_millis(Utc::now()).timestamp_millis();
            refused(
                db,
                l,
                &squatter(l.ring.as_str(), "squatter", now, "6", "NULL"),
                "audit_chain_link",
            )
            .await;
            db.raw
                .must("ALTER TABLE {audit} DROP CONSTRAINT keyrot_audit_chain_link")
                .await;
        }
        "sqlite" => {
            db.raw.must(r#"DROP TRIGGER "keyrot_audit_chain_link""#).await;
        }
        other => panic!("unknown database {other}"),
    }
}

/// Someone with write access inserts a record at the next chain position without a MAC,
/// so that the head query (which once skipped MAC-less records) would never see it while
/// it holds the unique `(ring, chain_seq)` slot every later append needs. The database
/// refuses it (and a MAC without a position); with that guard dropped, the insert lands
/// but appends go on after it, and the verifier names it.
async fn a_mac_less_record_cannot_squat_the_next_chain_position(db: &TestDb) {
    let l = ledger(db, "squat").await;
    let r = l.ring.as_str();
    let now = to_millis(Utc::now()).timestamp_millis();
    refused(db, &l, &squatter(r, "squatter", now, "5", "NULL"), "audit_chain_link").await;
    refused(
        db,
        &l,
        &squatter(r, "squatter", now, "NULL", "'mk:forged'"),
        "audit_chain_link",
    )
    .await;
    if let common::RawDb::MySql { pool } = &db.raw {
        // MariaDB lets any session switch CHECK constraints off; the trigger still refuses.
        // On a connection of its own, closed after, so the setting goes with it.
        let mut conn = pool.acquire().await.expect("connection");
        let off = sqlx::raw_sql("SET SESSION check_constraint_checks = 0")
            .execute(&mut *conn)
            .await;
        if off.is_ok() {
            let e = sqlx::raw_sql(AssertSqlSafe(db.raw.render(&squatter(r, "squatter", now, "5", "NULL"))))
                .execute(&mut *conn)
                .await
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains("audit_chain_link"), "refused without CHECK constraints: {e}");
        }
        conn.close().await.expect("close");
    }
    still_appends(db, &l, 4).await;

    drop_chain_link_guard(db, &l).await;
    db.raw.must(&squatter(r, "squatter", now + 1, "6", "NULL")).await;
    // Appends go on after it: an attempt and a commit.
    l.clock.advance(TimeDelta::minutes(1));
    assert_eq!(
        l.rotator.rotate(ctx()).await.expect("rotate").outcome,
        Outcome::RateLimited
    );
    l.clock.advance(TimeDelta::hours(2));
    assert_eq!(
        l.rotator
            .force_rotate(ctx(), "after the squatter", false)
            .await
            .expect("commit")
            .outcome,
        Outcome::Rotated
    );
    let records = all(db, &l.ring).await;
    let positions: Vec<(u64, bool)> = records.iter().take(3).map(|a| (a.seq, a.mac.is_some())).collect();
    assert_eq!(
        positions,
        vec![(8, true), (7, true), (6, false)],
        "{}: linked after the squatter",
        db.name
    );
    let broken = l
        .rotator
        .verify_audit_chain()
        .await
        .expect("ledger")
        .expect_err("the squatter breaks the chain");
    assert_eq!(broken.id, "squatter", "{}: {broken}", db.name);
}

/// A commit extends the chain of the ring it locks only: an audit record naming another
/// ring is refused before anything is written, to either ring.
async fn commit_refuses_an_audit_record_of_another_ring(db: &TestDb) {
    let linker = SealerLinker::new(sealer());
    let (a, b) = (ring("commit-a"), ring("commit-b"));
    let at = to_millis(Utc::now());
    let commit = |audit_ring: &RingName| Commit {
        ring: a.clone(),
        expected_generation: 0,
        keys: vec![keyrot_core::conformance::sample_key(a.as_str(), KeyState::Active, at)],
        audit: sample_audit(audit_ring.as_str(), at, 1, Outcome::Rotated),
        idempotency: None,
        manifest: "manifest".into(),
        next_due: None,
    };
    let err = db.storage.commit(&commit(&b), &linker).await.err();
    assert!(
        matches!(&err, Some(StorageError::Corrupt(m)) if m.contains("another ring")),
        "{}: {err:?}",
        db.name
    );
    // Nor may it carry another ring's idempotency record.
    let mut foreign_idem = commit(&a);
    foreign_idem.idempotency = Some(keyrot_core::IdempotencyRecord {
        ring: b.to_string(),
        key: "k".into(),
        request_hash: "h".into(),
        response: "{}".into(),
        created_at: at,
    });
    let err = db.storage.commit(&foreign_idem, &linker).await.err();
    assert!(
        matches!(&err, Some(StorageError::Corrupt(m)) if m.contains("idempotency record belongs to another ring")),
        "{}: {err:?}",
        db.name
    );
    assert!(
        db.storage.idempotency(&b, "k").await.expect("idem").is_none(),
        "{}",
        db.name
    );
    for r in [&a, &b] {
        assert_eq!(db.storage.generation(r).await.expect("generation"), 0, "{}", db.name);
        assert!(db.storage.load(r).await.expect("load").keys.is_empty(), "{}", db.name);
        assert!(all(db, r).await.is_empty(), "{}: nothing appended to {r}", db.name);
    }
    assert_eq!(
        db.storage.commit(&commit(&a), &linker).await.expect("commit"),
        CommitOutcome::Committed
    );
    assert_eq!(all(db, &a).await.len(), 1);
}

/// Whether schema version 3's CHECK constraint is there, and validated over the rows
/// already in the ledger (`None`: absent; SQLite has a trigger instead).
async fn chain_link_check(db: &TestDb) -> Option<bool> {
    match &db.raw {
        common::RawDb::Postgres { pool, schema } => sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT convalidated FROM pg_constraint WHERE conname = 'keyrot_audit_chain_link' \
             AND conrelid = '\"{schema}\".keyrot_audit'::regclass"
        )))
        .fetch_optional(pool)
        .await
        .expect("pg_constraint"),
        common::RawDb::MySql { pool } => {
            let n: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM information_schema.TABLE_CONSTRAINTS WHERE CONSTRAINT_SCHEMA = DATABASE() \
                 AND TABLE_NAME = 'keyrot_audit' AND CONSTRAINT_NAME = 'keyrot_audit_chain_link'",
            )
            .fetch_one(pool)
            .await
            .expect("information_schema");
            (n > 0).then_some(true)
        }
        common::RawDb::Sqlite { .. } => None,
    }
}

/// A ledger someone already wrote a MAC-less record at the next position into (so that,
/// before the fix, its ring could append nothing more) still upgrades to schema version
/// 3: new such records are refused, appends go on after the one there, and the verifier
/// names it. On MySQL, where DDL commits implicitly, the migration also runs again over
/// itself (as after a cut-short run).
async fn version_3_upgrades_a_ledger_holding_a_mac_less_record(db: &TestDb) {
    let l = ledger(db, "squatted").await;
    let r = l.ring.as_str();
    let healthy = chain_link_check(db).await;
    match db.name {
        "postgres" | "mysql" => assert_eq!(healthy, Some(true), "{}: validated over a sound ledger", db.name),
        _ => assert_eq!(healthy, None),
    }
    drop_chain_link_guard(db, &l).await;
    db.raw.must("DELETE FROM {migrations} WHERE version = 3").await;
    let now = to_millis(Utc::now()).timestamp_millis();
    db.raw.must(&squatter(r, "squatter", now, "5", "NULL")).await;
    db.migrate()
        .await
        .expect("migration 3 applies over a ledger holding a MAC-less record");
    match db.name {
        "postgres" => assert_eq!(chain_link_check(db).await, Some(false), "binds new rows only"),
        "mysql" => assert_eq!(chain_link_check(db).await, None, "the trigger alone guards"),
        _ => {}
    }
    let e = db
        .raw
        .exec(&squatter(r, "squatter-2", now + 1, "6", "NULL"))
        .await
        .err()
        .unwrap_or_default();
    assert!(e.contains("audit_chain_link"), "{}: new ones are refused: {e}", db.name);
    if db.name == "mysql" {
        db.raw.must("DELETE FROM {migrations} WHERE version = 3").await;
        db.migrate().await.expect("migration 3 runs again over itself");
    }
    l.clock.advance(TimeDelta::minutes(1));
    assert_eq!(
        l.rotator.rotate(ctx()).await.expect("rotate").outcome,
        Outcome::RateLimited
    );
    let records = all(db, &l.ring).await;
    assert_eq!((records[0].seq, records[1].id.as_str()), (6, "squatter"), "{}", db.name);
    let broken = l
        .rotator
        .verify_audit_chain()
        .await
        .expect("ledger")
        .expect_err("the squatter breaks the chain");
    assert_eq!(broken.id, "squatter", "{}: {broken}", db.name);
}

on_every_database!(
    version_3_upgrades_a_ledger_holding_a_mac_less_record,
    v1_database_upgrades_in_place_and_is_authenticated,
    concurrent_first_appends_on_a_new_ring_form_one_chain,
    a_mac_less_record_cannot_squat_the_next_chain_position,
    commit_refuses_an_audit_record_of_another_ring,
);

/// A database whose sessions default to `REPEATABLE READ` (or `SERIALIZABLE`): appends
/// still lock the ring row and then read the chain head as it is, not as a snapshot taken
/// before the lock was granted, so 12 concurrent attempts and racing commits build one
/// contiguous chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_appends_keep_one_chain_under_a_stricter_default_isolation() {
    let Some(t) = common::PgTest::new("postgres stricter default isolation", false).await else {
        return;
    };
    for level in ["repeatable read", "serializable"] {
        let options = t.options().options([("default_transaction_isolation", level)]);
        let pool = t.pool_with(options, 8, "keyrot-test-isolation").await;
        let shown: String = keyrot_sqlx::sqlx::query_scalar("SHOW default_transaction_isolation")
            .fetch_one(&pool)
            .await
            .expect("show isolation");
        assert_eq!(shown, level);
        let store = t.store(pool);
        store.migrate().await.expect("migrate");
        let sealer = sealer();
        let linker = SealerLinker::new(sealer.clone());
        let r = ring(&format!("iso-{}", level.replace(' ', "-")));
        let at = to_millis(Utc::now());
        let base = Commit {
            ring: r.clone(),
            expected_generation: 0,
            keys: vec![keyrot_core::conformance::sample_key(r.as_str(), KeyState::Active, at)],
            audit: sample_audit(r.as_str(), at, 1, Outcome::Rotated),
            idempotency: None,
            manifest: "manifest 1".into(),
            next_due: None,
        };
        assert_eq!(
            keyrot_core::Storage::commit(&store, &base, &linker)
                .await
                .expect("base"),
            CommitOutcome::Committed
        );
        let attempts: Vec<AuditRecord> = (0..12)
            .map(|i| {
                let mut a = sample_audit(r.as_str(), at + TimeDelta::milliseconds(i), 1, Outcome::LockBusy);
                a.id = format!("attempt-{i}");
                a
            })
            .collect();
        let commits: Vec<Commit> = (0..4)
            .map(|i| {
                let mut audit = sample_audit(r.as_str(), at, 2, Outcome::Rotated);
                audit.id = format!("commit-{i}");
                Commit {
                    expected_generation: 1,
                    keys: Vec::new(),
                    audit,
                    manifest: "manifest 2".into(),
                    next_due: None,
                    ..base.clone()
                }
            })
            .collect();
        let mut set = tokio::task::JoinSet::new();
        for a in attempts {
            let (store, linker) = (store.clone(), linker.clone());
            set.spawn(async move {
                keyrot_core::Storage::record_attempt(&store, &a, None, &linker)
                    .await
                    .map(|()| None)
            });
        }
        for c in commits {
            let (store, linker) = (store.clone(), linker.clone());
            set.spawn(async move { keyrot_core::Storage::commit(&store, &c, &linker).await.map(Some) });
        }
        let results = set.join_all().await;
        let won = results
            .iter()
            .filter(|x| matches!(x, Ok(Some(CommitOutcome::Committed))))
            .count();
        assert!(results.iter().all(Result::is_ok), "{level}: {results:?}");
        assert_eq!(won, 1, "{level}: {results:?}");
        let records = keyrot_core::Storage::audit_log(&store, &r, AuditQuery { limit: usize::MAX })
            .await
            .expect("audit log");
        let chain = keyrot_core::verify_chain(&records, &*sealer).expect("one contiguous chain");
        assert_eq!(chain.records, 1 + 12 + 1, "{level}");
        store.pool().close().await;
    }
    t.finish().await;
}
