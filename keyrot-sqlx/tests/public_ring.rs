//! The public-only verifier (`PublicKeyRing`) on the real databases: it verifies what the
//! issuer signs without a sealer, follows rotations, never names the sealed columns, and
//! makes exactly the checks its documentation promises (and no more: a self-consistent
//! row written by someone with write access is accepted). Each scenario runs on
//! PostgreSQL, MySQL and SQLite.

mod common;

use chrono::{DateTime, TimeDelta, Utc};
use common::{TestDb, lit, ms, ring};
use keyrot_core::to_millis;
use keyrot_core::{
    Algorithm, Clock as _, KeyRing, ManualClock, Outcome, PrivateKey, PublicKeyRing, RequestContext, RingName, Rotator,
    RsaBits, TokenError,
};
use std::sync::Arc;
use std::time::Duration;

struct Issuer {
    ring: RingName,
    clock: ManualClock,
    keyring: KeyRing,
    rotator: Rotator,
    sealer: Arc<keyrot_core::MasterKeySealer>,
}

fn claims(now: DateTime<Utc>) -> serde_json::Value {
    serde_json::json!({ "sub": "alice", "exp": now.timestamp() + 600 })
}

async fn issuer(db: &TestDb, name: &str) -> Issuer {
    let r = ring(name);
    let clock = ManualClock::new(to_millis(Utc::now()));
    let sealer = common::sealer();
    let keyring = KeyRing::builder(r.clone(), db.storage.clone(), sealer.clone())
        .with_clock(Arc::new(clock.clone()))
        .build()
        .await
        .expect("keyring");
    let rotator = Rotator::builder(r.clone(), db.storage.clone(), db.lock.clone(), sealer.clone())
        .with_clock(Arc::new(clock.clone()))
        .with_keyring(keyring.clone())
        .build();
    let boot = rotator.init(RequestContext::actor("test")).await.expect("init");
    assert_eq!(boot.outcome, Outcome::Bootstrapped);
    Issuer {
        ring: r,
        clock,
        keyring,
        rotator,
        sealer,
    }
}

impl Issuer {
    fn sign(&self) -> String {
        self.keyring.sign(&claims(self.clock.now())).expect("sign")
    }

    async fn public(&self, db: &TestDb) -> PublicKeyRing {
        PublicKeyRing::builder(self.ring.clone(), db.storage.clone())
            .with_clock(Arc::new(self.clock.clone()))
            .build()
            .await
            .expect("public key ring")
    }

    async fn rotate(&self) -> String {
        self.clock.advance(TimeDelta::minutes(61));
        let rep = self
            .rotator
            .force_rotate(RequestContext::actor("test"), "public ring", false)
            .await
            .expect("rotate");
        assert_eq!(rep.outcome, Outcome::Rotated);
        rep.new_kid.expect("new kid")
    }

    async fn bump_generation(&self, db: &TestDb, by: &str) {
        let sql = format!(
            "UPDATE {{rings}} SET generation = generation {by} WHERE name = {}",
            lit(self.ring.as_str())
        );
        assert_eq!(db.raw.must(&sql).await, 1);
    }

    /// Inserts a Retiring row for `key` as someone with write access would.
    async fn insert_row(&self, db: &TestDb, key: &PrivateKey, kid: &str, fingerprint: &str) {
        let jwk = key.public_key().to_jwk(kid).to_string();
        let now = self.clock.now();
        let hour_ago = Some(now - TimeDelta::hours(1));
        db.raw
            .must(&format!(
                "INSERT INTO {{keys}} (ring, kid, alg, state, origin, forced, fingerprint, public_jwk, master_key_id, \
                 sealed_private_key, created_at_ms, activate_at_ms, activated_at_ms, retired_at_ms, expires_at_ms) \
                 VALUES ({}, {}, {}, 'retiring', 'rotation', FALSE, {}, {}, NULL, NULL, {h}, {h}, {h}, {}, {})",
                lit(self.ring.as_str()),
                lit(kid),
                lit(Algorithm::EdDsa.as_str()),
                lit(fingerprint),
                lit(&jwk),
                ms(Some(now)),
                ms(Some(now + TimeDelta::days(7))),
                h = ms(hour_ago),
            ))
            .await;
    }
}

fn forge(key: &PrivateKey, kid: &str, now: DateTime<Utc>) -> String {
    let header = keyrot_core::testing::token::encode_header(key.algorithm(), kid);
    keyrot_core::testing::token::sign(&key.signing_key(), &header, &claims(now), now.timestamp(), 3_600).expect("forge")
}

fn attacker() -> PrivateKey {
    PrivateKey::generate(Algorithm::EdDsa, RsaBits::B2048).expect("keygen")
}

async fn public_ring_verifies_and_follows_the_issuer(db: &TestDb) {
    let iss = issuer(db, "public-follow").await;
    let first = iss.sign();
    let signed_at = iss.clock.now();
    let public = iss.public(db).await;
    assert_eq!(public.generation(), 1, "{}", db.name);
    assert_eq!(public.verify(&first).expect("verifies").claims["sub"], "alice");
    assert_eq!(
        public.jwks().body(),
        iss.keyring.snapshot().jwks().body(),
        "{}: the same JWKS as the issuer's",
        db.name
    );
    let refresher = public.spawn_refresher(None, Duration::from_millis(50));
    let new_kid = iss.rotate().await;
    tokio::time::timeout(Duration::from_secs(10), async {
        while !public.verifies(&new_kid) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the refresher picks up the rotation");
    refresher.shutdown().await;
    assert_eq!(public.generation(), 2);
    let second = iss.sign();
    assert_eq!(public.verify(&second).expect("the new key verifies").kid, new_kid);
    assert!(
        public.verify_at(&first, signed_at).is_ok(),
        "{}: the Retiring key still verifies",
        db.name
    );
    let expires_at = iss
        .keyring
        .snapshot()
        .keys()
        .iter()
        .find(|k| k.kid != new_kid)
        .and_then(|k| k.expires_at)
        .expect("the retiring key's expires_at");
    assert!(matches!(
        public.verify_at(&first, expires_at),
        Err(TokenError::KeyExpired)
    ));
    // A moment before, the key is still in its window: the token's own `exp` decides.
    assert!(matches!(
        public.verify_at(&first, expires_at - TimeDelta::seconds(1)),
        Err(TokenError::Expired)
    ));
    assert_eq!(public.jwks().body(), iss.keyring.snapshot().jwks().body());
    assert!(public.rejected().is_empty());
}

async fn public_ring_never_names_the_sealed_columns(db: &TestDb) {
    let iss = issuer(db, "public-unsealed").await;
    let token = iss.sign();
    // Renamed away (a DROP would trip SQLite's references to them): a statement that
    // names them fails.
    for column in ["sealed_private_key", "master_key_id"] {
        db.raw
            .must(&format!("ALTER TABLE {{keys}} RENAME COLUMN {column} TO gone_{column}"))
            .await;
    }
    assert!(
        db.storage.load(&iss.ring).await.is_err(),
        "{}: load reads them",
        db.name
    );
    let loaded = db.storage.load_public(&iss.ring).await.expect("load_public does not");
    assert_eq!(loaded.keys.len(), 1);
    assert!(loaded.keys.iter().all(|k| k.sealed.is_none()));
    let public = iss.public(db).await;
    assert!(public.verify(&token).is_ok(), "{}", db.name);
}

async fn public_ring_makes_the_checks_it_documents(db: &TestDb) {
    let iss = issuer(db, "public-trust").await;
    let token = iss.sign();
    let public = iss.public(db).await;

    // A row whose fingerprint is not its key's thumbprint never verifies.
    let bad = attacker();
    let bad_kid = bad.public_key().thumbprint();
    iss.insert_row(db, &bad, &bad_kid, "not-the-thumbprint").await;
    iss.bump_generation(db, "+ 1").await;
    assert_eq!(public.refresh().await.ok(), Some(true), "{}", db.name);
    assert!(!public.verifies(&bad_kid));
    assert_eq!(
        public.rejected().iter().map(|t| t.kid.as_str()).collect::<Vec<_>>(),
        [bad_kid.as_str()]
    );
    let now = iss.clock.now();
    assert!(matches!(
        public.verify(&forge(&bad, &bad_kid, now)),
        Err(TokenError::UnknownKid)
    ));

    // A generated key's kid must be its thumbprint.
    let renamed = attacker();
    let fp = renamed.public_key().thumbprint();
    iss.insert_row(db, &renamed, "renamed", &fp).await;
    iss.bump_generation(db, "+ 1").await;
    assert_eq!(public.refresh().await.ok(), Some(true));
    assert!(!public.verifies("renamed"));

    // What it cannot tell: a self-consistent row written with database access verifies
    // here (the issuer's KeyRing, holding the master key, refuses it).
    let mallory = attacker();
    let kid = mallory.public_key().thumbprint();
    iss.insert_row(db, &mallory, &kid, &kid).await;
    iss.bump_generation(db, "+ 1").await;
    assert_eq!(public.refresh().await.ok(), Some(true));
    let forged = forge(&mallory, &kid, now);
    assert!(public.verify(&forged).is_ok(), "{}: documented limitation", db.name);
    iss.keyring.refresh().await.expect("issuer refresh");
    assert!(
        iss.keyring.verify(&forged).is_err(),
        "{}: the issuer refuses it",
        db.name
    );

    // The generation column is not authenticated: a lower one is applied (not refused),
    // and what this handle saw removed stays removed.
    let served = public.generation();
    iss.bump_generation(db, "- 2").await;
    assert_eq!(public.refresh().await.ok(), Some(true), "{}", db.name);
    assert!(!public.is_stale());
    assert_eq!(public.generation(), served - 2);
    assert!(public.verify(&token).is_ok());
}

/// Issue 20 item 1, exactly as reproduced: the generation column set to 1000 for one
/// poll, then set back; the key leaks and is force-rotated with `revoke_old`. One refresh
/// later the revoked key's tokens are refused and the new key's accepted.
async fn public_ring_cannot_be_pinned_by_the_generation_column(db: &TestDb) {
    let iss = issuer(db, "public-pinned").await;
    let leaked = iss.sign();
    let public = iss.public(db).await;
    let real = public.generation();
    let set_generation = |g: u64| {
        format!(
            "UPDATE {{rings}} SET generation = {g} WHERE name = {}",
            lit(iss.ring.as_str())
        )
    };
    assert_eq!(db.raw.must(&set_generation(1000)).await, 1);
    assert_eq!(public.refresh().await.ok(), Some(true), "{}: one poll at 1000", db.name);
    assert_eq!(db.raw.must(&set_generation(real)).await, 1);
    public.refresh().await.expect("the real generation is applied");
    assert_eq!(public.generation(), real, "{}: back to the real state", db.name);

    // The database looks clean afterwards.
    let fresh = KeyRing::builder(iss.ring.clone(), db.storage.clone(), iss.sealer.clone())
        .with_clock(Arc::new(iss.clock.clone()))
        .build()
        .await
        .expect("a fresh keyring");
    assert!(
        fresh.snapshot().integrity().is_intact(),
        "{}: {:?}",
        db.name,
        fresh.snapshot().integrity()
    );

    iss.clock.advance(TimeDelta::minutes(61));
    let rep = iss
        .rotator
        .force_rotate(RequestContext::actor("test"), "the key leaked", true)
        .await
        .expect("forced rotation");
    assert_eq!(rep.outcome, Outcome::Rotated);
    let new_kid = rep.new_kid.expect("new kid");
    public.refresh().await.expect("one refresh");
    assert!(
        matches!(public.verify(&leaked), Err(TokenError::UnknownKid)),
        "{}: the revoked key's token is refused",
        db.name
    );
    assert_eq!(public.verify(&iss.sign()).expect("the new key verifies").kid, new_kid);
    assert!(!public.is_stale());

    // Whatever the column does: pinned high again while the Active row is made Expired
    // behind a *lower* generation, the removal still applies within one refresh.
    assert_eq!(db.raw.must(&set_generation(1000)).await, 1);
    public.refresh().await.expect("refresh at 1000");
    db.raw
        .must(&format!(
            "UPDATE {{keys}} SET state = 'expired' WHERE ring = {} AND kid = {}",
            lit(iss.ring.as_str()),
            lit(&new_kid)
        ))
        .await;
    assert_eq!(db.raw.must(&set_generation(real)).await, 1);
    public.refresh().await.expect("refresh at a lower generation");
    assert!(!public.verifies(&new_kid), "{}: the removal applies", db.name);
}

/// A stored Retiring window moved 30 days later never lengthens what a running verifier
/// accepts, nor does setting the row back to Active: on a `KeyRing` (the ring's manifest
/// is replaced by an older, authentic one, so the state is refused and only removals
/// apply) and on a `PublicKeyRing` (it remembers the earliest end it saw).
async fn a_retiring_window_only_shrinks_on_a_running_verifier(db: &TestDb) {
    let iss = issuer(db, "window-shrinks").await;
    let first = iss.sign();
    let old_kid = iss.keyring.snapshot().active_kid().expect("active").to_owned();
    let old_manifest = db
        .storage
        .load(&iss.ring)
        .await
        .expect("load")
        .manifest
        .expect("manifest");
    iss.rotate().await;
    let other = KeyRing::builder(iss.ring.clone(), db.storage.clone(), iss.sealer.clone())
        .with_clock(Arc::new(iss.clock.clone()))
        .build()
        .await
        .expect("another instance");
    let public = iss.public(db).await;
    let expires_at = other
        .snapshot()
        .keys()
        .iter()
        .find(|k| k.kid == old_kid)
        .and_then(|k| k.expires_at)
        .expect("the retiring key's expires_at");
    let day_after = expires_at + TimeDelta::days(1);
    // Within the window the token's own `exp` decides; after it, the key does.
    assert_eq!(other.verify_at(&first, day_after).err(), Some(TokenError::KeyExpired));
    assert_eq!(public.verify_at(&first, day_after).err(), Some(TokenError::KeyExpired));
    for (change, what) in [
        (
            format!("expires_at_ms = {}", ms(Some(expires_at + TimeDelta::days(30)))),
            "moved 30 days later",
        ),
        (
            "state = 'active', expires_at_ms = NULL".to_owned(),
            "set back to Active",
        ),
    ] {
        db.raw
            .must(&format!(
                "UPDATE {{keys}} SET {change} WHERE ring = {} AND kid = {}",
                lit(iss.ring.as_str()),
                lit(&old_kid)
            ))
            .await;
        db.raw
            .must(&format!(
                "UPDATE {{rings}} SET generation = generation + 1, manifest = {} WHERE name = {}",
                lit(&old_manifest),
                lit(iss.ring.as_str())
            ))
            .await;
        assert!(
            other.refresh().await.is_err(),
            "{}: the KeyRing refuses the state",
            db.name
        );
        public.refresh().await.expect("public refresh");
        for (verifier, answer) in [
            ("KeyRing", other.verify_at(&first, day_after)),
            ("PublicKeyRing", public.verify_at(&first, day_after)),
        ] {
            assert_eq!(
                answer.err(),
                Some(TokenError::KeyExpired),
                "{}: {verifier}, window {what}",
                db.name
            );
        }
    }
}

on_every_database!(
    public_ring_verifies_and_follows_the_issuer,
    public_ring_never_names_the_sealed_columns,
    public_ring_makes_the_checks_it_documents,
    public_ring_cannot_be_pinned_by_the_generation_column,
    a_retiring_window_only_shrinks_on_a_running_verifier,
);
