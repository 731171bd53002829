//! Rings that mix families during an algorithm migration (issue 11): EdDSA → ES256 → EdDSA
//! (and ES384), with the tokens of both families verifying during the overlap, through the
//! public API and real storage round trips (sealed keys, stored JWKs, a second instance).

use chrono::{TimeDelta, TimeZone, Utc};
use keyrot_core::testing::b64;
use keyrot_core::{
    Algorithm, Clock, EdDsaName, KeyRing, KeyState, ManualClock, MasterKey, MasterKeySealer, MemoryLock, MemoryStorage,
    Outcome, Policy, RequestContext, RingName, Rotator, Storage, TokenError,
};
use keyrot_core::{PublicKey, Validation};
use serde_json::Value;
use std::sync::Arc;

struct Setup {
    clock: ManualClock,
    storage: Arc<MemoryStorage>,
    sealer: Arc<MasterKeySealer>,
    lock: Arc<MemoryLock>,
    ring: RingName,
    keyring: KeyRing,
}

async fn setup() -> Setup {
    setup_named(None).await
}

async fn setup_named(name: Option<EdDsaName>) -> Setup {
    let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).single().expect("time"));
    let storage = Arc::new(MemoryStorage::new());
    let sealer = Arc::new(MasterKeySealer::new(MasterKey::generate("mk1").expect("mk"), []).expect("sealer"));
    let ring = RingName::new("migrating").expect("ring");
    let mut builder =
        KeyRing::builder(ring.clone(), storage.clone(), sealer.clone()).with_clock(Arc::new(clock.clone()));
    if let Some(name) = name {
        builder = builder.with_eddsa_name(name);
    }
    let keyring = builder.build().await.expect("keyring");
    let lock = Arc::new(MemoryLock::new(Arc::new(clock.clone())));
    Setup {
        clock,
        storage,
        sealer,
        lock,
        ring,
        keyring,
    }
}

impl Setup {
    /// The rotator as configured after the operator changed the policy's algorithm.
    fn rotator(&self, alg: Algorithm) -> Rotator {
        let policy = Policy::builder().with_algorithm(alg).build().expect("policy");
        Rotator::builder(
            self.ring.clone(),
            self.storage.clone(),
            self.lock.clone(),
            self.sealer.clone(),
        )
        .with_clock(Arc::new(self.clock.clone()))
        .with_policy(policy)
        .with_instance("a")
        .with_keyring(self.keyring.clone())
        .build()
    }

    fn sign(&self) -> String {
        let now = self.clock.now().timestamp();
        self.keyring
            .sign(&serde_json::json!({"sub": "u", "iat": now, "exp": now + 3600}))
            .expect("sign")
    }

    fn jwks_families(&self) -> Vec<(String, String)> {
        let jwks: Value = serde_json::from_slice(self.keyring.snapshot().jwks().body()).expect("json");
        let mut out: Vec<(String, String)> = jwks["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .map(|k| {
                (
                    k["kty"].as_str().expect("kty").into(),
                    k["alg"].as_str().expect("alg").into(),
                )
            })
            .collect();
        out.sort();
        out
    }

    /// A second instance that only reads the ring from storage.
    async fn other_instance(&self) -> KeyRing {
        KeyRing::builder(self.ring.clone(), self.storage.clone(), self.sealer.clone())
            .with_clock(Arc::new(self.clock.clone()))
            .build()
            .await
            .expect("second keyring")
    }
}

fn ctx() -> RequestContext {
    RequestContext::actor("operator")
}

#[tokio::test]
async fn eddsa_to_es256_and_back_verifies_both_families_during_the_overlap() {
    let s = setup().await;
    let r = s.rotator(Algorithm::EdDsa).init(ctx()).await.expect("init");
    assert_eq!(r.outcome, Outcome::Bootstrapped);
    let ed_token = s.sign();
    assert_eq!(s.keyring.verify(&ed_token).expect("verify").alg, Algorithm::EdDsa);

    // EdDSA → ES256: the new key is ES256, the EdDSA key keeps verifying while it retires.
    let to_es = s
        .rotator(Algorithm::Es256)
        .force_rotate(ctx(), "migrate to ES256", false)
        .await
        .expect("rotate");
    assert_eq!(to_es.outcome, Outcome::Rotated, "{to_es:?}");
    s.clock.advance(TimeDelta::minutes(30));
    let es_token = s.sign();
    assert_eq!(
        s.keyring.verify(&es_token).expect("ES256 verifies").alg,
        Algorithm::Es256
    );
    assert_eq!(
        s.keyring.verify(&ed_token).expect("EdDSA still verifies").alg,
        Algorithm::EdDsa
    );
    assert_eq!(
        s.jwks_families(),
        [("EC".into(), "ES256".into()), ("OKP".into(), "EdDSA".into())]
    );
    let ring = s.storage.load(&s.ring).await.expect("load");
    let old = ring.key(to_es.old_kid.as_deref().expect("old kid")).expect("old key");
    assert_eq!((old.alg, old.state), (Algorithm::EdDsa, KeyState::Retiring));
    let new = ring.key(to_es.new_kid.as_deref().expect("new kid")).expect("new key");
    assert_eq!((new.alg, new.state), (Algorithm::Es256, KeyState::Active));

    // A second instance loads both families from storage (sealed private key, stored JWKs).
    let other = s.other_instance().await;
    assert!(other.verify(&ed_token).is_ok() && other.verify(&es_token).is_ok());
    assert_eq!(
        other
            .verify(
                &other
                    .sign(&serde_json::json!({"exp": s.clock.now().timestamp() + 60}))
                    .expect("sign")
            )
            .expect("verify")
            .alg,
        Algorithm::Es256
    );

    // The header decides nothing: the ES256 token's signature under the EdDSA kid is refused.
    let (_, es_sig) = es_token.rsplit_once('.').expect("segments");
    let (ed_input, _) = ed_token.rsplit_once('.').expect("segments");
    assert_eq!(
        s.keyring.verify(&format!("{ed_input}.{es_sig}")).err(),
        Some(TokenError::BadSignature)
    );

    // ES256 → EdDSA (rolled back), an hour later: the ES256 tokens keep verifying.
    s.clock.advance(TimeDelta::minutes(31));
    let back = s
        .rotator(Algorithm::EdDsa)
        .force_rotate(ctx(), "roll back to EdDSA", false)
        .await
        .expect("rotate back");
    assert_eq!(back.outcome, Outcome::Rotated, "{back:?}");
    let ed2 = s.sign();
    assert_eq!(s.keyring.verify(&ed2).expect("EdDSA again").alg, Algorithm::EdDsa);
    assert_eq!(
        s.keyring.verify(&es_token).expect("ES256 still verifies").alg,
        Algorithm::Es256
    );
    let families = s.jwks_families();
    assert!(families.contains(&("EC".into(), "ES256".into())), "{families:?}");
    assert!(families.contains(&("OKP".into(), "EdDSA".into())), "{families:?}");
    let other = s.other_instance().await;
    assert!(other.verify(&ed2).is_ok() && other.verify(&es_token).is_ok());
}

#[tokio::test]
async fn es384_rings_rotate_sign_and_verify() {
    let s = setup().await;
    let r = s.rotator(Algorithm::Es384).init(ctx()).await.expect("init");
    assert_eq!(r.outcome, Outcome::Bootstrapped);
    let t = s.sign();
    assert_eq!(s.keyring.verify(&t).expect("verify").alg, Algorithm::Es384);
    assert_eq!(s.jwks_families(), [("EC".into(), "ES384".into())]);
    // ES384 → ES256, both P-curves in one ring.
    let r = s
        .rotator(Algorithm::Es256)
        .force_rotate(ctx(), "curve change", false)
        .await
        .expect("rotate");
    assert_eq!(r.outcome, Outcome::Rotated);
    let t2 = s.sign();
    assert_eq!(s.keyring.verify(&t2).expect("verify").alg, Algorithm::Es256);
    assert_eq!(s.keyring.verify(&t).expect("verify").alg, Algorithm::Es384);
    assert_eq!(
        s.jwks_families(),
        [("EC".into(), "ES256".into()), ("EC".into(), "ES384".into())]
    );
}

fn header_alg(token: &str) -> String {
    let header = b64::decode(token.split('.').next().expect("header")).expect("b64");
    let header: Value = serde_json::from_slice(&header).expect("json");
    header["alg"].as_str().expect("alg").to_owned()
}

/// RFC 9864: a ring told to use `Ed25519` signs and publishes it; `EdDSA` stays the
/// default, and either instance verifies the other's tokens (the key decides the family).
#[tokio::test]
async fn a_ring_can_sign_and_publish_the_rfc9864_ed25519_name() {
    let named = setup_named(Some(EdDsaName::Ed25519)).await;
    named.rotator(Algorithm::EdDsa).init(ctx()).await.expect("init");
    let t = named.sign();
    assert_eq!(header_alg(&t), "Ed25519");
    assert_eq!(named.keyring.verify(&t).expect("verifies").alg, Algorithm::EdDsa);
    assert_eq!(named.jwks_families(), [("OKP".into(), "Ed25519".into())]);
    let jwks: Value = serde_json::from_slice(named.keyring.snapshot().jwks().body()).expect("json");
    let published = PublicKey::from_jwk(&jwks["keys"][0], None).expect("the published JWK imports");
    assert_eq!(published.algorithm(), Algorithm::EdDsa);
    let vk = published.verifying_key().expect("vk");
    assert!(keyrot_core::verify_with_key(&t, &vk, &Validation::new(), named.clock.now().timestamp()).is_ok());

    // A default instance of the same ring writes EdDSA, and verifies the Ed25519 token.
    let default = named.other_instance().await;
    let d = default
        .sign(&serde_json::json!({"exp": named.clock.now().timestamp() + 60}))
        .expect("sign");
    assert_eq!(header_alg(&d), "EdDSA");
    assert!(default.verify(&t).is_ok() && named.keyring.verify(&d).is_ok());
    let jwks: Value = serde_json::from_slice(default.snapshot().jwks().body()).expect("json");
    assert_eq!(jwks["keys"][0]["alg"], "EdDSA");

    // The name applies to Ed25519 keys only: ES256 keys stay ES256.
    named
        .rotator(Algorithm::Es256)
        .force_rotate(ctx(), "to ES256", false)
        .await
        .expect("rotate");
    let e = named.sign();
    assert_eq!(header_alg(&e), "ES256");
    assert_eq!(
        named.jwks_families(),
        [("EC".into(), "ES256".into()), ("OKP".into(), "Ed25519".into())]
    );
    assert!(named.keyring.verify(&t).is_ok() && named.keyring.verify(&e).is_ok());
}
