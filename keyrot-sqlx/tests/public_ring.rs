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
    Algorithm, Clock as _, KeyRing, ManualClock, Outcome, PrivateKey, PublicKeyRing, RefreshError, RequestContext,
    RingName, Rotator, RsaBits, TokenError,
};
use std::sync::Arc;
use std::time::Duration;

struct Issuer {
    ring: RingName,
    clock: ManualClock,
    keyring: KeyRing,
    rotator: Rotator,
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
    let rotator = Rotator::builder(r.clone(), db.storage.clone(), db.lock.clone(), sealer)
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

    // Never back to a lower generation than one served.
    let served = public.generation();
    iss.bump_generation(db, "- 2").await;
    assert!(matches!(
        public.refresh().await,
        Err(RefreshError::Rollback { found, served: s }) if found == served - 2 && s == served
    ));
    assert!(public.is_stale());
    assert_eq!(public.generation(), served, "the served view stays");
    assert!(public.verify(&token).is_ok());
}

on_every_database!(
    public_ring_verifies_and_follows_the_issuer,
    public_ring_never_names_the_sealed_columns,
    public_ring_makes_the_checks_it_documents,
);
