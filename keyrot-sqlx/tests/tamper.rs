//! Tampering on the real databases, through SQL issued directly on the database as someone
//! with write access but without the master key would: the real `Rotator` and `KeyRing`
//! over the sqlx stores must never let a forged, swapped or resurrected key verify, must
//! report the rows, refuse a rollback, refuse to rotate on top of tampering, and find every
//! broken link of the audit chain. Each scenario runs on PostgreSQL, MySQL and SQLite
//! (`postgres::<scenario>`, …), on a fresh schema, database or file.
//!
//! Bumping the ring row's generation by hand makes instances reload. Where the manifest no
//! longer names the ring row's generation, an instance still trusts the rows the manifest
//! vouches for (the manifest's generation is the authenticated one) and reports the ring
//! as not intact.

mod common;

use chrono::{DateTime, TimeDelta, Utc};
use common::{TestDb, lit, ms, ring, sealer};
use keyrot_core::ChainBreak;
use keyrot_core::to_millis;
use keyrot_core::{
    Algorithm, AuditQuery, AuditRecord, Clock as _, KeyRecord, KeyRing, KeyState, ManualClock, MasterKeySealer,
    Outcome, PrivateKey, RefreshError, RequestContext, RingIntegrity, RingName, RotateError, Rotator, RsaBits,
};
use std::sync::Arc;

fn ctx() -> RequestContext {
    RequestContext::actor("ops")
}

/// A token and the time it was signed at (tokens of keys no longer Active are checked as
/// of then: `verify_at`).
type Token = (String, DateTime<Utc>);

/// A ring with `keys` keys made by the real rotator, served by instance A.
struct Fixture {
    ring: RingName,
    clock: ManualClock,
    sealer: Arc<MasterKeySealer>,
    /// Instance A's key ring: it served every generation so far.
    keyring: KeyRing,
    /// Instance A's rotator (with its key ring).
    rotator: Rotator,
    /// Oldest first; the last is Active, the others Retiring.
    kids: Vec<String>,
    /// One token per kid, signed while it was Active.
    tokens: Vec<Token>,
}

fn claims(now: DateTime<Utc>) -> serde_json::Value {
    serde_json::json!({ "sub": "alice", "exp": now.timestamp() + 600 })
}

fn sign(kr: &KeyRing, clock: &ManualClock) -> Token {
    let now = clock.now();
    (kr.sign(&claims(now)).expect("sign"), now)
}

/// A token the attacker signs with their own key under `kid`.
fn forge(key: &PrivateKey, kid: &str, now: DateTime<Utc>) -> String {
    let header = keyrot_core::testing::token::encode_header(key.algorithm(), kid);
    keyrot_core::testing::token::sign(&key.signing_key(), &header, &claims(now), now.timestamp(), 3_600).expect("forge")
}

fn attacker() -> PrivateKey {
    PrivateKey::generate(Algorithm::EdDsa, RsaBits::B2048).expect("keygen")
}

async fn fixture(db: &TestDb, name: &str, keys: usize) -> Fixture {
    let r = ring(name);
    let clock = ManualClock::new(to_millis(Utc::now()));
    let sealer = sealer();
    let keyring = KeyRing::builder(r.clone(), db.storage.clone(), sealer.clone())
        .with_clock(Arc::new(clock.clone()))
        .build()
        .await
        .expect("keyring");
    let rotator = Rotator::builder(r.clone(), db.storage.clone(), db.lock.clone(), sealer.clone())
        .with_clock(Arc::new(clock.clone()))
        .with_keyring(keyring.clone())
        .with_instance("a")
        .build();
    let mut fx = Fixture {
        ring: r,
        clock,
        sealer,
        keyring,
        rotator,
        kids: Vec::new(),
        tokens: Vec::new(),
    };
    let boot = fx.rotator.init(ctx()).await.expect("init");
    assert_eq!(boot.outcome, Outcome::Bootstrapped);
    fx.served(boot.new_kid).await;
    for i in 1..keys {
        fx.clock.advance(TimeDelta::minutes(61));
        let rep = fx
            .rotator
            .force_rotate(ctx(), format!("fixture {i}"), false)
            .await
            .expect("rotate");
        assert_eq!(rep.outcome, Outcome::Rotated, "{rep:?}");
        fx.served(rep.new_kid).await;
    }
    assert!(fx.keyring.snapshot().integrity().is_intact(), "{}", db.name);
    fx
}

impl Fixture {
    /// After a rotation: A serves it (reloaded from the store, so the fixture does not
    /// depend on how the rotator installs its own commit) and signs a token with it.
    async fn served(&mut self, kid: Option<String>) {
        self.keyring.reload().await.expect("reload");
        let kid = kid.expect("new kid");
        assert_eq!(self.keyring.snapshot().active_kid(), Some(kid.as_str()));
        self.kids.push(kid);
        self.tokens.push(sign(&self.keyring, &self.clock));
    }

    /// A new instance (a fresh `KeyRing`) over the same store.
    async fn instance(&self, db: &TestDb) -> KeyRing {
        KeyRing::builder(self.ring.clone(), db.storage.clone(), self.sealer.clone())
            .with_clock(Arc::new(self.clock.clone()))
            .build()
            .await
            .expect("a new instance builds (tampered rows are reported, not fatal)")
    }

    fn r(&self) -> String {
        lit(self.ring.as_str())
    }

    async fn bump_generation(&self, db: &TestDb) {
        let n = db
            .raw
            .must(&format!(
                "UPDATE {{rings}} SET generation = generation + 1 WHERE name = {}",
                self.r()
            ))
            .await;
        assert_eq!(n, 1);
    }

    async fn swap_public_key(&self, db: &TestDb, kid: &str, key: &PrivateKey) {
        let jwk = key.public_key().to_jwk(kid).to_string();
        let n = db
            .raw
            .must(&format!(
                "UPDATE {{keys}} SET public_jwk = {} WHERE ring = {} AND kid = {}",
                lit(&jwk),
                self.r(),
                lit(kid)
            ))
            .await;
        assert_eq!(n, 1, "{}: one row altered", db.name);
    }
}

/// What an instance must show after rows were tampered with.
struct Expect {
    /// Rows that must be reported.
    tampered: Vec<String>,
    /// Tokens the attacker signed: never verify.
    forged: Vec<String>,
    /// Real tokens of the tampered rows: never verify.
    refused: Vec<Token>,
    /// Real tokens of untouched rows: verify whenever the manifest vouches for them.
    intact: Vec<Token>,
    /// Whether the ring row's generation was moved by hand.
    bumped: bool,
}

/// Checks `kr`'s snapshot against `e`. The forged tokens and the tampered rows' tokens
/// never verify and the rows are reported (integrity report and key status) and not
/// published; the untouched rows verify.
fn check(db: &TestDb, what: &str, kr: &KeyRing, e: &Expect) {
    let name = db.name;
    let snap = kr.snapshot();
    let report = snap.integrity();
    for t in &e.forged {
        assert!(kr.verify(t).is_err(), "{name} {what}: a forged token verified");
    }
    for (t, at) in &e.refused {
        assert!(
            kr.verify_at(t, *at).is_err(),
            "{name} {what}: a token of a tampered row verified"
        );
    }
    assert!(!report.is_intact(), "{name} {what}: {}", report.summary());
    let jwks = String::from_utf8_lossy(snap.jwks().body()).into_owned();
    for kid in &e.tampered {
        assert!(
            report.tampered.iter().any(|t| &t.kid == kid),
            "{name} {what}: {kid} is reported: {}",
            report.summary()
        );
        let status = snap.keys().iter().find(|k| &k.kid == kid);
        assert!(
            status.is_some_and(|k| k.tampered.is_some()),
            "{name} {what}: the status of {kid} shows it tampered: {status:?}"
        );
        assert!(!jwks.contains(kid.as_str()), "{name} {what}: {kid} is not published");
    }
    match &report.integrity {
        RingIntegrity::Authenticated => {
            let mut got: Vec<&str> = report.tampered.iter().map(|t| t.kid.as_str()).collect();
            let mut want: Vec<&str> = e.tampered.iter().map(String::as_str).collect();
            got.sort_unstable();
            want.sort_unstable();
            assert_eq!(got, want, "{name} {what}: exactly the tampered rows are reported");
            assert_eq!(
                report.manifest_generation != Some(report.ring_generation),
                e.bumped,
                "{name} {what}: a generation moved by hand is reported: {}",
                report.summary()
            );
            for k in snap.keys() {
                assert_eq!(
                    k.tampered.is_some(),
                    e.tampered.contains(&k.kid),
                    "{name} {what}: {k:?}"
                );
            }
            for (t, at) in &e.intact {
                if let Err(err) = kr.verify_at(t, *at) {
                    panic!("{name} {what}: a token of an untouched row is refused: {err}");
                }
            }
        }
        other => panic!(
            "{name} {what}: unexpected ring integrity {other:?}: {}",
            report.summary()
        ),
    }
}

/// 1. `UPDATE keys SET public_jwk = <attacker's key, same kid>` on a published (Retiring)
///    row, then on the Active row.
async fn a_swapped_public_key_never_verifies(db: &TestDb) {
    let fx = fixture(db, "swap", 3).await;
    let victim = fx.kids[0].clone();
    let mallory = attacker();
    fx.swap_public_key(db, &victim, &mallory).await;
    let forged = vec![forge(&mallory, &victim, fx.clock.now())];
    let expect = |bumped| Expect {
        tampered: vec![victim.clone()],
        forged: forged.clone(),
        refused: vec![fx.tokens[0].clone()],
        intact: vec![fx.tokens[1].clone(), fx.tokens[2].clone()],
        bumped,
    };
    // Same generation: a running instance keeps its (authentic) snapshot until it
    // reloads; a new instance, and a reload, see the row.
    assert_eq!(fx.keyring.refresh().await.ok(), Some(false));
    assert!(fx.keyring.snapshot().integrity().is_intact());
    let b = fx.instance(db).await;
    check(db, "swapped public key, new instance", &b, &expect(false));
    let own = b
        .sign(&claims(fx.clock.now()))
        .expect("the untouched Active key still signs");
    assert!(b.verify(&own).is_ok());
    fx.keyring.reload().await.expect("reload");
    check(db, "swapped public key, reloaded", &fx.keyring, &expect(false));
    // The generation bumped: every instance reloads on its next refresh.
    fx.bump_generation(db).await;
    assert_eq!(fx.keyring.refresh().await.ok(), Some(true));
    check(db, "swapped public key, generation bumped", &fx.keyring, &expect(true));
    check(
        db,
        "swapped public key, generation bumped, new instance",
        &fx.instance(db).await,
        &expect(true),
    );

    // The Active row: it no longer signs, and the attacker's tokens under its kid fail.
    let fx = fixture(db, "swap-active", 2).await;
    let victim = fx.kids[1].clone();
    fx.swap_public_key(db, &victim, &mallory).await;
    let forged = vec![forge(&mallory, &victim, fx.clock.now())];
    let b = fx.instance(db).await;
    check(
        db,
        "swapped public key of the Active row",
        &b,
        &Expect {
            tampered: vec![victim.clone()],
            forged,
            refused: vec![fx.tokens[1].clone()],
            intact: vec![fx.tokens[0].clone()],
            bumped: false,
        },
    );
    assert!(
        b.sign(&claims(fx.clock.now())).is_err(),
        "{}: the altered Active row does not sign",
        db.name
    );
}

/// 2. `INSERT` of a Retiring row with the attacker's public key and no sealed material.
async fn an_inserted_row_never_verifies(db: &TestDb) {
    let fx = fixture(db, "insert", 2).await;
    let mallory = attacker();
    let kid = mallory.public_key().thumbprint();
    let jwk = mallory.public_key().to_jwk(&kid).to_string();
    let now = fx.clock.now();
    let hour_ago = Some(now - TimeDelta::hours(1));
    db.raw
        .must(&format!(
            "INSERT INTO {{keys}} (ring, kid, alg, state, origin, forced, fingerprint, public_jwk, master_key_id, \
             sealed_private_key, created_at_ms, activate_at_ms, activated_at_ms, retired_at_ms, expires_at_ms) \
             VALUES ({}, {k}, {}, 'retiring', 'rotation', FALSE, {k}, {}, NULL, NULL, {h}, {h}, {h}, {}, {})",
            fx.r(),
            lit(Algorithm::EdDsa.as_str()),
            lit(&jwk),
            ms(Some(now)),
            ms(Some(now + TimeDelta::days(7))),
            k = lit(&kid),
            h = ms(hour_ago),
        ))
        .await;
    let loaded = db.storage.load(&fx.ring).await.expect("load");
    assert_eq!(loaded.key(&kid).map(|k| k.state), Some(KeyState::Retiring));
    let forged = vec![forge(&mallory, &kid, now)];
    let expect = |bumped| Expect {
        tampered: vec![kid.clone()],
        forged: forged.clone(),
        refused: Vec::new(),
        intact: vec![fx.tokens[0].clone(), fx.tokens[1].clone()],
        bumped,
    };
    check(db, "inserted row, new instance", &fx.instance(db).await, &expect(false));
    fx.bump_generation(db).await;
    assert_eq!(fx.keyring.refresh().await.ok(), Some(true));
    check(db, "inserted row, generation bumped", &fx.keyring, &expect(true));
}

/// The SQL `SET` list that writes every metadata column of `k` (not its sealed bytes).
fn row_image(k: &KeyRecord) -> String {
    format!(
        "alg = {}, state = {}, origin = {}, forced = {}, fingerprint = {}, public_jwk = {}, created_at_ms = {}, \
         activate_at_ms = {}, activated_at_ms = {}, retired_at_ms = {}, expires_at_ms = {}, expired_at_ms = {}, \
         revoked_at_ms = {}, revoke_reason = {}, purged_at_ms = {}",
        lit(k.alg.as_str()),
        lit(k.state.as_str()),
        lit(k.origin.as_str()),
        if k.forced { "TRUE" } else { "FALSE" },
        lit(&k.fingerprint),
        lit(&k.public_jwk),
        ms(Some(k.created_at)),
        ms(k.activate_at),
        ms(k.activated_at),
        ms(k.retired_at),
        ms(k.expires_at),
        ms(k.expired_at),
        ms(k.revoked_at),
        k.revoke_reason.as_deref().map_or_else(|| "NULL".to_owned(), lit),
        ms(k.purged_at),
    )
}

/// 3. Resurrection: a key revoked through the rotator is written back as Retiring (state
///    and revocation columns reset), another by replaying its exact row image from before
///    its revocation.
async fn a_revoked_key_is_not_resurrected(db: &TestDb) {
    let mut fx = fixture(db, "resurrect", 3).await;
    let (k1, k2) = (fx.kids[1].clone(), fx.kids[2].clone());
    let before = db.storage.load(&fx.ring).await.expect("load");
    let k1_image = before.key(&k1).cloned().expect("k1");
    fx.clock.advance(TimeDelta::minutes(61));
    let rep = fx
        .rotator
        .force_rotate(ctx(), "k2 leaked", true)
        .await
        .expect("force and revoke");
    assert_eq!(rep.outcome, Outcome::Rotated);
    fx.served(rep.new_kid).await;
    let rep = fx.rotator.revoke(ctx(), &k1, "k1 leaked too").await.expect("revoke");
    assert_eq!(rep.outcome, Outcome::Revoked, "{rep:?}");
    fx.keyring.reload().await.expect("reload");
    let revoked = db.storage.load(&fx.ring).await.expect("load");
    for kid in [&k1, &k2] {
        let k = revoked.key(kid).expect("row");
        assert!(k.state == KeyState::Expired && k.revoked_at.is_some(), "{k:?}");
    }
    assert!(fx.keyring.verify_at(&fx.tokens[1].0, fx.tokens[1].1).is_err());
    assert!(fx.keyring.verify_at(&fx.tokens[2].0, fx.tokens[2].1).is_err());

    let now = fx.clock.now();
    db.raw
        .must(&format!(
            "UPDATE {{keys}} SET state = 'retiring', expired_at_ms = NULL, revoked_at_ms = NULL, revoke_reason = NULL, \
             retired_at_ms = {}, expires_at_ms = {} WHERE ring = {} AND kid = {}",
            ms(Some(now)),
            ms(Some(now + TimeDelta::days(7))),
            fx.r(),
            lit(&k2)
        ))
        .await;
    db.raw
        .must(&format!(
            "UPDATE {{keys}} SET {} WHERE ring = {} AND kid = {}",
            row_image(&k1_image),
            fx.r(),
            lit(&k1)
        ))
        .await;
    let loaded = db.storage.load(&fx.ring).await.expect("load");
    assert_eq!(loaded.key(&k1), Some(&k1_image), "{}: the replay is exact", db.name);
    assert_eq!(loaded.key(&k2).map(|k| k.state), Some(KeyState::Retiring));

    let expect = |bumped| Expect {
        tampered: vec![k1.clone(), k2.clone()],
        forged: Vec::new(),
        refused: vec![fx.tokens[1].clone(), fx.tokens[2].clone()],
        intact: vec![fx.tokens[0].clone(), fx.tokens[3].clone()],
        bumped,
    };
    check(
        db,
        "resurrected rows, new instance",
        &fx.instance(db).await,
        &expect(false),
    );
    fx.keyring.reload().await.expect("reload");
    check(db, "resurrected rows, reloaded", &fx.keyring, &expect(false));
    fx.bump_generation(db).await;
    assert_eq!(fx.keyring.refresh().await.ok(), Some(true));
    check(db, "resurrected rows, generation bumped", &fx.keyring, &expect(true));
}

/// 4. Rollback: the ring row set back to an older generation with that generation's
///    manifest (then the key rows too). The instance that served the newer generation
///    refuses to reload and keeps serving; its rotator refuses to rotate.
async fn a_rollback_is_refused(db: &TestDb) {
    let mut fx = fixture(db, "rollback", 2).await;
    let old = db.storage.load(&fx.ring).await.expect("load");
    assert_eq!(old.generation, 2);
    let old_manifest = old.manifest.clone().expect("manifest");
    fx.clock.advance(TimeDelta::minutes(61));
    let rep = fx.rotator.force_rotate(ctx(), "newer", false).await.expect("rotate");
    assert_eq!(rep.generation, 3);
    fx.served(rep.new_kid).await;
    assert_eq!(fx.keyring.highest_generation(), 3);
    let newest = fx.kids[2].clone();

    db.raw
        .must(&format!(
            "UPDATE {{rings}} SET generation = 2, manifest = {} WHERE name = {}",
            lit(&old_manifest),
            fx.r()
        ))
        .await;
    assert_eq!(db.storage.generation(&fx.ring).await.expect("generation"), 2);
    let refused = |what: &str, r: Result<bool, RefreshError>| match r {
        Err(RefreshError::Rollback { found: 2, served: 3 }) => {}
        other => panic!("{} {what}: the rollback must be refused: {other:?}", db.name),
    };
    refused("refresh", fx.keyring.refresh().await);
    refused("reload", fx.keyring.reload().await);
    // It keeps serving generation 3.
    let snap = fx.keyring.snapshot();
    assert_eq!(snap.generation(), 3);
    assert_eq!(snap.active_kid(), Some(newest.as_str()));
    let t = fx.keyring.sign(&claims(fx.clock.now())).expect("still signs");
    assert!(fx.keyring.verify(&t).is_ok());
    assert!(fx.keyring.verify(&fx.tokens[2].0).is_ok());
    // Its rotator refuses to build on the older state; nothing is written.
    fx.clock.advance(TimeDelta::minutes(61));
    match fx.rotator.force_rotate(ctx(), "on the rollback", false).await {
        Err(RotateError::Rollback { found: 2, served: 3 }) => {}
        other => panic!("{}: the rotator must refuse the rollback: {other:?}", db.name),
    }
    let after = db.storage.load(&fx.ring).await.expect("load");
    assert_eq!(
        (after.generation, after.manifest.as_deref()),
        (2, Some(old_manifest.as_str()))
    );
    // A new instance, which never served generation 3, sees rows the replayed manifest
    // does not vouch for: the newest key (inserted since) and the previous one (retired
    // since).
    let b = fx.instance(db).await;
    let report = b.snapshot().integrity().clone();
    for kid in [&newest, &fx.kids[1]] {
        assert!(
            report.tampered.iter().any(|t| &t.kid == kid),
            "{}: {kid}: {}",
            db.name,
            report.summary()
        );
    }
    assert!(b.verify(&fx.tokens[2].0).is_err());

    // The key rows rolled back as well: generation 2 exactly as it was. An instance that
    // never saw generation 3 cannot tell; the one that did still refuses.
    db.raw
        .must(&format!(
            "DELETE FROM {{keys}} WHERE ring = {} AND kid = {}",
            fx.r(),
            lit(&newest)
        ))
        .await;
    let k1_before = old.key(&fx.kids[1]).expect("k1");
    db.raw
        .must(&format!(
            "UPDATE {{keys}} SET {} WHERE ring = {} AND kid = {}",
            row_image(k1_before),
            fx.r(),
            lit(&fx.kids[1])
        ))
        .await;
    let restored = db.storage.load(&fx.ring).await.expect("load");
    assert_eq!(restored, old, "{}: generation 2 restored exactly", db.name);
    refused("reload after a full restore", fx.keyring.reload().await);
    match fx.rotator.force_rotate(ctx(), "on the full restore", false).await {
        Err(RotateError::Rollback { found: 2, served: 3 }) => {}
        other => panic!("{}: the rotator must refuse the rollback: {other:?}", db.name),
    }
    assert!(
        fx.instance(db).await.snapshot().integrity().is_intact(),
        "{}: a consistent older state looks authentic to an instance that never served newer",
        db.name
    );
}

/// A ring whose ledger holds 5 chained records, and its rotator.
async fn ledger(db: &TestDb, name: &str) -> (Rotator, RingName, Vec<AuditRecord>) {
    let r = ring(name);
    let clock = ManualClock::new(to_millis(Utc::now()));
    let rot = Rotator::builder(r.clone(), db.storage.clone(), db.lock.clone(), sealer())
        .with_clock(Arc::new(clock.clone()))
        .with_instance("a")
        .build();
    rot.init(ctx()).await.expect("init");
    for _ in 0..4 {
        clock.advance(TimeDelta::seconds(1));
        assert_eq!(rot.rotate(ctx()).await.expect("rotate").outcome, Outcome::RateLimited);
    }
    let report = rot
        .verify_audit_chain()
        .await
        .expect("ledger")
        .expect("the intact ledger checks out");
    assert_eq!(report.records, 5, "{}", db.name);
    let mut records = db
        .storage
        .audit_log(&r, AuditQuery { limit: usize::MAX })
        .await
        .expect("audit");
    records.reverse();
    assert_eq!(records.iter().map(|a| a.seq).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
    (rot, r, records)
}

async fn broken_at(db: &TestDb, what: &str, rot: &Rotator, id: &str, seq: u64) -> ChainBreak {
    match rot.verify_audit_chain().await.expect("the ledger is readable") {
        Err(b) if b.id == id && b.seq == seq => {
            println!("{} {what}: {b}", db.name);
            b
        }
        other => panic!(
            "{} {what}: the chain must break at {id} (seq {seq}): {other:?}",
            db.name
        ),
    }
}

/// 5. The ledger: one record deleted, one altered, one forged and inserted, two swapped —
///    with the triggers out of the way, as a superuser would. The chain names the first
///    broken record each time; an untouched ring's ledger still checks out.
async fn ledger_tampering_breaks_the_chain(db: &TestDb) {
    let (intact, _, _) = ledger(db, "ledger-intact").await;

    let (rot, r, recs) = ledger(db, "ledger-delete").await;
    let n = db
        .raw
        .exec_without_triggers(&format!(
            "DELETE FROM {{audit}} WHERE ring = {} AND chain_seq = 3",
            lit(r.as_str())
        ))
        .await;
    assert_eq!(n, 1);
    let b = broken_at(db, "deleted record", &rot, &recs[3].id, 4).await;
    assert!(b.reason.contains("missing"), "{b}");

    let (rot, r, recs) = ledger(db, "ledger-alter").await;
    db.raw
        .exec_without_triggers(&format!(
            "UPDATE {{audit}} SET detail = 'nothing happened' WHERE ring = {} AND chain_seq = 3",
            lit(r.as_str())
        ))
        .await;
    broken_at(db, "altered record", &rot, &recs[2].id, 3).await;

    let (rot, r, recs) = ledger(db, "ledger-insert").await;
    let head_mac = recs[4].mac.clone().expect("mac");
    db.raw
        .exec_without_triggers(&format!(
            "INSERT INTO {{audit}} (audit_id, at_ms, ring, actor, trigger_kind, outcome, forced, generation, instance, \
             chain_seq, chain_mac) VALUES ('forged-record', {}, {}, 'ops', 'force_rotate', 'rotated', FALSE, 2, 'a', 6, {})",
            ms(Some(recs[4].at)),
            lit(r.as_str()),
            lit(&head_mac)
        ))
        .await;
    broken_at(db, "inserted record", &rot, "forged-record", 6).await;

    let (rot, r, recs) = ledger(db, "ledger-swap").await;
    for (from, to) in [(2, 1_000_000), (4, 2), (1_000_000, 4)] {
        db.raw
            .exec_without_triggers(&format!(
                "UPDATE {{audit}} SET chain_seq = {to} WHERE ring = {} AND chain_seq = {from}",
                lit(r.as_str())
            ))
            .await;
    }
    broken_at(db, "swapped records", &rot, &recs[3].id, 2).await;

    let report = intact
        .verify_audit_chain()
        .await
        .expect("ledger")
        .expect("an untouched ledger still checks out");
    assert_eq!(report.records, 5);
}

/// 6. The rotator never builds on a tampered ring: nothing is committed.
async fn the_rotator_refuses_to_build_on_a_tampered_ring(db: &TestDb) {
    let fx = fixture(db, "refuse", 2).await;
    let victim = fx.kids[0].clone();
    fx.swap_public_key(db, &victim, &attacker()).await;
    let before = db.storage.load(&fx.ring).await.expect("load");
    let ledger_before = db
        .storage
        .audit_log(&fx.ring, AuditQuery { limit: usize::MAX })
        .await
        .expect("audit")
        .len();
    fx.clock.advance(TimeDelta::minutes(61));
    let without_keyring = Rotator::builder(fx.ring.clone(), db.storage.clone(), db.lock.clone(), fx.sealer.clone())
        .with_clock(Arc::new(fx.clock.clone()))
        .with_instance("b")
        .build();
    for (who, rot) in [
        ("with its key ring", &fx.rotator),
        ("without a key ring", &without_keyring),
    ] {
        match rot.force_rotate(ctx(), "on top of tampering", false).await {
            Err(RotateError::Integrity(msg)) => assert!(msg.contains(&victim), "{}: {msg}", db.name),
            other => panic!("{} {who}: must refuse a tampered ring: {other:?}", db.name),
        }
        match rot.rotate(ctx()).await {
            Err(RotateError::Integrity(_)) => {}
            other => panic!("{} {who}: must refuse a tampered ring: {other:?}", db.name),
        }
    }
    assert_eq!(
        db.storage.load(&fx.ring).await.expect("load"),
        before,
        "{}: nothing committed",
        db.name
    );
    let ledger = db
        .storage
        .audit_log(&fx.ring, AuditQuery { limit: usize::MAX })
        .await
        .expect("audit");
    assert!(
        ledger[..ledger.len() - ledger_before]
            .iter()
            .all(|a| a.outcome == Outcome::Failed),
        "{}: only the failed attempts were recorded: {ledger:?}",
        db.name
    );
    // With the generation bumped as well: still refused, still nothing committed.
    fx.bump_generation(db).await;
    let bumped = db.storage.load(&fx.ring).await.expect("load");
    match fx.rotator.force_rotate(ctx(), "on top of tampering", false).await {
        Err(RotateError::Integrity(_)) => {}
        other => panic!("{}: must refuse a tampered ring: {other:?}", db.name),
    }
    assert_eq!(db.storage.load(&fx.ring).await.expect("load"), bumped);
    let chain = fx
        .rotator
        .verify_audit_chain()
        .await
        .expect("ledger")
        .expect("the refusals are chained too");
    assert!(chain.records > ledger_before);
}

/// 7. The way back: after a swapped public key, `quarantine_tampered` makes the ring
///    intact again; the forged token and the altered row's real token stay refused, the
///    rest verifies, and rotation works again.
async fn repair_quarantines_the_tampered_rows(db: &TestDb) {
    let fx = fixture(db, "repair", 3).await;
    let victim = fx.kids[0].clone();
    let mallory = attacker();
    fx.swap_public_key(db, &victim, &mallory).await;
    fx.bump_generation(db).await;
    let r = fx
        .rotator
        .quarantine_tampered(ctx(), "tamper drill")
        .await
        .expect("repair");
    assert_eq!(r.outcome, Outcome::Quarantined, "{}: {r:?}", db.name);
    let b = fx.instance(db).await;
    assert!(
        b.snapshot().integrity().is_intact(),
        "{}: {}",
        db.name,
        b.snapshot().integrity().summary()
    );
    let now = fx.clock.now();
    assert!(b.verify(&forge(&mallory, &victim, now)).is_err(), "{}", db.name);
    let (victim_token, at) = &fx.tokens[0];
    assert!(
        b.verify_at(victim_token, *at).is_err(),
        "{}: quarantined for good",
        db.name
    );
    let (active_token, at) = &fx.tokens[2];
    assert!(b.verify_at(active_token, *at).is_ok(), "{}: the rest verifies", db.name);
    fx.clock.advance(TimeDelta::minutes(61));
    let rotated = fx
        .rotator
        .force_rotate(ctx(), "after the repair", false)
        .await
        .expect("rotate");
    assert_eq!(rotated.outcome, Outcome::Rotated, "{}", db.name);
}

on_every_database!(
    a_swapped_public_key_never_verifies,
    an_inserted_row_never_verifies,
    a_revoked_key_is_not_resurrected,
    a_rollback_is_refused,
    ledger_tampering_breaks_the_chain,
    the_rotator_refuses_to_build_on_a_tampered_ring,
    repair_quarantines_the_tampered_rows,
);
