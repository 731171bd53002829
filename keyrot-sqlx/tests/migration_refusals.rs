//! Issue 20 §2 and §3 on the real databases, through SQL issued as someone with write
//! access but without the master key would.
//!
//! §2: the integrity migration (`Rotator::authenticate_ring_reviewed`) on a ring written
//! before authentication refuses rows keyrot could not have written: a published row
//! without a sealed private key, a Retiring window longer than the policy's
//! `retire_grace`, a past event dated in the future. Each refusal names the row and what
//! is wrong, carries no key material, and authenticates nothing.
//!
//! §3: a generation column set to the largest `BIGINT` is reported as altered by every
//! integrity check, and `quarantine_tampered` (repair) works from the manifest's
//! authenticated generation: it succeeds, says what it found, and the ring serves and
//! rotates afterwards.
//!
//! Each scenario runs on PostgreSQL, MySQL and SQLite (`postgres::<scenario>`, …).

mod common;

use chrono::{DateTime, TimeDelta, Utc};
use common::{TestDb, lit, ms, ring, sealer};
use keyrot_core::{
    Algorithm, Clock as _, KeyRing, ManualClock, MasterKeySealer, Outcome, PrivateKey, RequestContext, RingName,
    RotationReport, Rotator, RsaBits, to_millis,
};
use std::sync::Arc;

fn ctx() -> RequestContext {
    RequestContext::actor("ops")
}

/// A ring with a Retiring and an Active key made by the real rotator, then taken back to
/// how keyrot wrote rings before authentication: no manifest, an unchained ledger.
struct Legacy {
    ring: RingName,
    clock: ManualClock,
    sealer: Arc<MasterKeySealer>,
    /// An operator's rotator, as keyrotctl builds it (no key ring that served the ring).
    operator: Rotator,
    /// The Retiring key, then the Active one.
    kids: [String; 2],
    /// A token of the Active key.
    token: String,
}

impl Legacy {
    async fn new(db: &TestDb, name: &str) -> Self {
        let r = ring(name);
        let clock = ManualClock::new(to_millis(Utc::now()));
        let sealer = sealer();
        let rotator = |with_keyring: Option<KeyRing>| {
            let b = Rotator::builder(r.clone(), db.storage.clone(), db.lock.clone(), sealer.clone())
                .with_clock(Arc::new(clock.clone()));
            match with_keyring {
                Some(kr) => b.with_keyring(kr).build(),
                None => b.build(),
            }
        };
        let writer = rotator(None);
        let first = writer.init(ctx()).await.expect("init").new_kid.expect("kid");
        clock.advance(TimeDelta::minutes(61));
        let rotated = writer.force_rotate(ctx(), "fixture", false).await.expect("rotate");
        let second = rotated.new_kid.expect("kid");
        let kr = keyring(db, &r, &sealer, &clock).await;
        let token = kr
            .sign(&serde_json::json!({ "sub": "alice", "exp": clock.now().timestamp() + 600 }))
            .expect("sign");
        let n = db
            .raw
            .must(&format!(
                "UPDATE {{rings}} SET manifest = NULL WHERE name = {}",
                lit(r.as_str())
            ))
            .await;
        assert_eq!(n, 1);
        db.raw
            .exec_without_triggers(&format!(
                "UPDATE {{audit}} SET chain_seq = NULL, chain_mac = NULL WHERE ring = {}",
                lit(r.as_str())
            ))
            .await;
        Legacy {
            operator: rotator(None),
            ring: r,
            clock,
            sealer,
            kids: [first, second],
            token,
        }
    }

    fn r(&self) -> String {
        lit(self.ring.as_str())
    }

    /// The migration, bound to the rows as they are now (as reviewed).
    async fn authenticate(&self, db: &TestDb) -> RotationReport {
        let rows = db.storage.load(&self.ring).await.expect("load");
        assert!(rows.manifest.is_none(), "{}: a legacy ring", db.name);
        let digest = keyrot_core::rows_digest(&rows);
        self.operator
            .authenticate_ring_reviewed(ctx(), Some(&digest))
            .await
            .expect("an answer")
    }

    /// Asserts the migration refused, naming `kid` and every `needle`, and vouched for
    /// nothing: the ring still has no manifest.
    async fn refused(&self, db: &TestDb, kid: &str, needles: &[&str], secrets: &[&str]) -> String {
        let r = self.authenticate(db).await;
        assert_eq!(r.outcome, Outcome::Refused, "{}: {r:?}", db.name);
        let detail = r.detail.unwrap_or_default();
        assert!(detail.contains(kid), "{}: names the row: {detail}", db.name);
        for n in needles {
            assert!(detail.contains(n), "{}: says {n:?}: {detail}", db.name);
        }
        for s in secrets {
            assert!(!detail.contains(s), "{}: no key material: {detail}", db.name);
        }
        let rows = db.storage.load(&self.ring).await.expect("load");
        assert!(rows.manifest.is_none(), "{}: nothing was authenticated", db.name);
        detail
    }

    async fn set(&self, db: &TestDb, kid: &str, assignments: &str) {
        let n = db
            .raw
            .must(&format!(
                "UPDATE {{keys}} SET {assignments} WHERE ring = {} AND kid = {}",
                self.r(),
                lit(kid)
            ))
            .await;
        assert_eq!(n, 1, "{}: one row altered", db.name);
    }
}

async fn keyring(db: &TestDb, r: &RingName, sealer: &Arc<MasterKeySealer>, clock: &ManualClock) -> KeyRing {
    KeyRing::builder(r.clone(), db.storage.clone(), sealer.clone())
        .with_clock(Arc::new(clock.clone()))
        .build()
        .await
        .expect("key ring")
}

/// The attacker's Ed25519 key, its kid (the RFC 7638 thumbprint) and its public JWK.
fn attacker() -> (PrivateKey, String, String) {
    let key = PrivateKey::generate(Algorithm::EdDsa, RsaBits::B2048).expect("keygen");
    let kid = key.public_key().thumbprint();
    let jwk = key.public_key().to_jwk(&kid).to_string();
    (key, kid, jwk)
}

/// The public JWK's `x` member: key material that must not appear in a refusal.
fn jwk_x(jwk: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(jwk).expect("jwk");
    v["x"].as_str().expect("x").to_owned()
}

/// Inserts a Retiring row with the attacker's key, origin `rotation`, no sealed material,
/// retired an hour ago and expiring at `expires`.
async fn insert_attacker_row(db: &TestDb, l: &Legacy, kid: &str, jwk: &str, expires: DateTime<Utc>) {
    let hour_ago = Some(l.clock.now() - TimeDelta::hours(1));
    db.raw
        .must(&format!(
            "INSERT INTO {{keys}} (ring, kid, alg, state, origin, forced, fingerprint, public_jwk, master_key_id, \
             sealed_private_key, created_at_ms, activate_at_ms, activated_at_ms, retired_at_ms, expires_at_ms) \
             VALUES ({}, {k}, {}, 'retiring', 'rotation', FALSE, {k}, {}, NULL, NULL, {h}, {h}, {h}, {h}, {})",
            l.r(),
            lit(Algorithm::EdDsa.as_str()),
            lit(jwk),
            ms(Some(expires)),
            k = lit(kid),
            h = ms(hour_ago),
        ))
        .await;
}

fn forge(key: &PrivateKey, kid: &str, now: DateTime<Utc>) -> String {
    let header = keyrot_core::testing::token::encode_header(key.algorithm(), kid);
    keyrot_core::testing::token::sign(
        &key.signing_key(),
        &header,
        &serde_json::json!({ "sub": "mallory", "exp": now.timestamp() + 600 }),
        now.timestamp(),
        3_600,
    )
    .expect("forge")
}

/// The repro: a Retiring row with the attacker's key, kid = its thumbprint, origin
/// `rotation`, no sealed private key, expiring five years out. Refused (both reasons);
/// once the row is gone the migration goes through and the attacker's tokens never verify.
async fn an_attackers_key_without_private_material_is_not_vouched_for(db: &TestDb) {
    let l = Legacy::new(db, "attacker").await;
    let (mallory, kid, jwk) = attacker();
    insert_attacker_row(db, &l, &kid, &jwk, l.clock.now() + TimeDelta::days(5 * 365)).await;
    let detail = l
        .refused(db, &kid, &["no sealed private key", "retire_grace"], &[&jwk_x(&jwk)])
        .await;
    assert!(!detail.contains(&l.kids[0]) && !detail.contains(&l.kids[1]), "{detail}");
    let n = db
        .raw
        .must(&format!(
            "DELETE FROM {{keys}} WHERE ring = {} AND kid = {}",
            l.r(),
            lit(&kid)
        ))
        .await;
    assert_eq!(n, 1);
    let ok = l.authenticate(db).await;
    assert_eq!(ok.outcome, Outcome::Authenticated, "{}: {ok:?}", db.name);
    let kr = keyring(db, &l.ring, &l.sealer, &l.clock).await;
    assert!(kr.snapshot().integrity().is_intact(), "{}", db.name);
    assert!(kr.verify(&l.token).is_ok(), "{}: the real key verifies", db.name);
    assert!(
        kr.verify(&forge(&mallory, &kid, l.clock.now())).is_err(),
        "{}: the attacker's key never does",
        db.name
    );
}

/// (a) A published row without sealed material, with a window the policy could produce and
/// no time in the future: refused for the missing private key alone.
async fn a_published_row_without_a_private_key_is_refused(db: &TestDb) {
    let l = Legacy::new(db, "unsealed").await;
    let (_, kid, jwk) = attacker();
    insert_attacker_row(db, &l, &kid, &jwk, l.clock.now() + TimeDelta::days(6)).await;
    let detail = l
        .refused(db, &kid, &["no sealed private key", "delete"], &[&jwk_x(&jwk)])
        .await;
    assert!(
        !detail.contains("retire_grace") && !detail.contains("future"),
        "{detail}"
    );
    // A real row whose sealed material was dropped is refused the same way.
    let l = Legacy::new(db, "unsealed-real").await;
    l.set(db, &l.kids[0], "master_key_id = NULL, sealed_private_key = NULL")
        .await;
    l.refused(db, &l.kids[0], &["no sealed private key"], &[]).await;
}

/// (b) A real Retiring row whose `expires_at` was moved five years out: a window longer than
/// the policy's `retire_grace` (7 days by default) is refused.
async fn a_retiring_window_longer_than_the_policy_is_refused(db: &TestDb) {
    let l = Legacy::new(db, "window").await;
    let later = l.clock.now() + TimeDelta::days(5 * 365);
    l.set(db, &l.kids[0], &format!("expires_at_ms = {}", ms(Some(later))))
        .await;
    let detail = l.refused(db, &l.kids[0], &["retire_grace", "7d"], &[]).await;
    assert!(!detail.contains("no sealed private key"), "{detail}");
}

/// (b) Past events dated in the future (beyond the policy's clock skew): a creation time
/// and a retirement time a day ahead are refused, each named.
async fn past_events_in_the_future_are_refused(db: &TestDb) {
    let l = Legacy::new(db, "future").await;
    let tomorrow = Some(l.clock.now() + TimeDelta::days(1));
    l.set(db, &l.kids[1], &format!("created_at_ms = {}", ms(tomorrow)))
        .await;
    let detail = l.refused(db, &l.kids[1], &["created_at", "in the future"], &[]).await;
    assert!(!detail.contains(&l.kids[0]), "{detail}");
    let l = Legacy::new(db, "future-retired").await;
    let retired = l.clock.now() + TimeDelta::days(1);
    l.set(
        db,
        &l.kids[0],
        &format!(
            "retired_at_ms = {}, expires_at_ms = {}",
            ms(Some(retired)),
            ms(Some(retired + TimeDelta::days(7)))
        ),
    )
    .await;
    l.refused(db, &l.kids[0], &["retired_at", "in the future"], &[]).await;
}

/// §3: `UPDATE … SET generation = 9223372036854775807`. Every integrity check reports the
/// stored generation as altered; repair succeeds from the manifest's generation and says
/// what it found; the ring serves and rotates afterwards, intact, its chain whole.
async fn repair_recovers_from_a_generation_at_the_column_maximum(db: &TestDb) {
    let r = ring("maxgen");
    let clock = ManualClock::new(to_millis(Utc::now()));
    let sealer = sealer();
    let served = keyring(db, &r, &sealer, &clock).await;
    let operator = Rotator::builder(r.clone(), db.storage.clone(), db.lock.clone(), sealer.clone())
        .with_clock(Arc::new(clock.clone()))
        .build();
    operator.init(ctx()).await.expect("init");
    clock.advance(TimeDelta::minutes(61));
    operator.force_rotate(ctx(), "fixture", false).await.expect("rotate");
    served.refresh().await.expect("refresh");
    let token = served
        .sign(&serde_json::json!({ "sub": "alice", "exp": clock.now().timestamp() + 600 }))
        .expect("sign");
    let n = db
        .raw
        .must(&format!(
            "UPDATE {{rings}} SET generation = {} WHERE name = {}",
            i64::MAX,
            lit(r.as_str())
        ))
        .await;
    assert_eq!(n, 1);
    let seen = keyring(db, &r, &sealer, &clock).await;
    let summary = seen.snapshot().integrity().summary();
    assert!(!seen.snapshot().integrity().is_intact(), "{}", db.name);
    assert!(
        summary.contains("the stored generation was altered"),
        "{}: {summary}",
        db.name
    );
    assert!(
        seen.verify(&token).is_ok(),
        "{}: the authenticated rows still verify",
        db.name
    );

    let repaired = operator
        .quarantine_tampered(ctx(), "generation drill")
        .await
        .unwrap_or_else(|e| panic!("{}: repair: {}", db.name, keyrot_core::ErrorChain(&e)));
    assert_eq!(repaired.outcome, Outcome::Quarantined, "{}: {repaired:?}", db.name);
    let detail = repaired.detail.clone().unwrap_or_default();
    assert!(
        detail.contains("the stored generation was altered"),
        "{}: {detail}",
        db.name
    );
    assert_eq!(repaired.generation, 3, "{}: the manifest's generation + 1", db.name);
    assert_eq!(db.storage.generation(&r).await.expect("generation"), 3, "{}", db.name);

    let fresh = keyring(db, &r, &sealer, &clock).await;
    let snap = fresh.snapshot();
    assert!(
        snap.integrity().is_intact(),
        "{}: {}",
        db.name,
        snap.integrity().summary()
    );
    assert!(fresh.verify(&token).is_ok(), "{}", db.name);
    assert!(
        served.refresh().await.expect("refresh"),
        "{}: the serving instance moves on",
        db.name
    );
    assert!(served.snapshot().integrity().is_intact(), "{}", db.name);
    clock.advance(TimeDelta::minutes(61));
    let rotated = operator
        .force_rotate(ctx(), "after the repair", false)
        .await
        .expect("rotate");
    assert_eq!(rotated.outcome, Outcome::Rotated, "{}: {rotated:?}", db.name);
    assert_eq!(rotated.generation, 4, "{}", db.name);
    fresh.refresh().await.expect("refresh");
    assert!(fresh.snapshot().integrity().is_intact(), "{}", db.name);
    assert!(
        fresh
            .sign(&serde_json::json!({ "sub": "bob", "exp": clock.now().timestamp() + 600 }))
            .is_ok()
    );
    assert!(
        operator.verify_audit_chain().await.expect("ledger").is_ok(),
        "{}: the chain is whole",
        db.name
    );
}

on_every_database!(
    an_attackers_key_without_private_material_is_not_vouched_for,
    a_published_row_without_a_private_key_is_refused,
    a_retiring_window_longer_than_the_policy_is_refused,
    past_events_in_the_future_are_refused,
    repair_recovers_from_a_generation_at_the_column_maximum,
);
