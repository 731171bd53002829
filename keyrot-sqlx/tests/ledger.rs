//! The audit ledger in the database itself: every cheap way around "append-only" is
//! refused on each server (PostgreSQL `TRUNCATE` and upserts, MySQL `TRUNCATE`, `DROP`,
//! `REPLACE` and upserts, SQLite `INSERT OR REPLACE`), leaving the ledger exactly as it
//! was; `(ring, chain_seq)` is unique; and a database written before the chain (schema
//! version 1) upgrades in place: its records stay readable, last, and the chain starts
//! after them once the ring is authenticated. Concurrent first appends to a new ring build
//! one chain.

mod common;

use chrono::{TimeDelta, Utc};
use common::{TestDb, lit, ring, sealer};
use keyrot_core::clock::to_millis;
use keyrot_core::conformance::sample_audit;
use keyrot_core::integrity::SealerLinker;
use keyrot_core::{
    AuditQuery, AuditRecord, KeyRing, ManualClock, Outcome, RequestContext, RingIntegrity, RingName, Rotator,
};
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
/// left it): the ring's manifest and the ledger's chain columns are gone.
async fn downgrade_to_v1(db: &TestDb) {
    let statements: &[&str] = match db.name {
        "postgres" => &[
            "ALTER TABLE {audit} DROP COLUMN chain_seq, DROP COLUMN chain_mac",
            "CREATE INDEX keyrot_audit_ring_seq ON {audit} (ring, seq DESC)",
            "ALTER TABLE {rings} DROP COLUMN manifest",
        ],
        // As if a migration had been cut short after its first statement: the manifest
        // column is there (empty), the rest is not.
        "mysql" => &[
            "DROP TABLE {audit_guard}",
            "ALTER TABLE {audit} DROP INDEX keyrot_audit_ring_chain, DROP INDEX keyrot_audit_ring_chain_seq, \
             DROP COLUMN chain_seq, DROP COLUMN chain_mac, ADD KEY keyrot_audit_ring_seq (ring, seq)",
            "UPDATE {rings} SET manifest = NULL",
        ],
        "sqlite" => &[
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
    db.raw.must("DELETE FROM {migrations} WHERE version = 2").await;
}

async fn v1_database_upgrades_in_place_and_is_authenticated(db: &TestDb) {
    let l = ledger(db, "legacy").await;
    let legacy = all(db, &l.ring).await;
    downgrade_to_v1(db).await;
    db.migrate()
        .await
        .expect("migration 2 applies over a version 1 database");
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
    let chain = keyrot_core::integrity::verify_chain(&records, &*sealer).expect("one contiguous chain");
    assert_eq!(chain.records, 16, "{}", db.name);
    assert_eq!(db.storage.generation(&r).await.expect("generation"), 0);
}

on_every_database!(
    v1_database_upgrades_in_place_and_is_authenticated,
    concurrent_first_appends_on_a_new_ring_form_one_chain,
);
