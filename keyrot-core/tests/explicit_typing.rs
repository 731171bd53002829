//! Explicit typing (RFC 8725 §3.11) through the key ring: a required `typ` holds on the
//! fast path for headers the ring wrote itself, and on the full path for any other.

use chrono::{DateTime, Utc};
use keyrot_core::testing::token;
use keyrot_core::{
    Algorithm, KeyRing, ManualClock, MasterKey, MasterKeySealer, MemoryLock, MemoryStorage, PrivateKey, RequestContext,
    RingName, Rotator, RsaBits, TokenError, Validation,
};
use serde_json::json;
use std::sync::Arc;
use token::encode_header_with_type;

async fn ring(validation: Validation) -> (KeyRing, DateTime<Utc>) {
    let t0 = DateTime::from_timestamp(1_900_000_000, 0).expect("time");
    let clock = Arc::new(ManualClock::new(t0));
    let storage = Arc::new(MemoryStorage::new());
    let sealer = Arc::new(MasterKeySealer::new(MasterKey::generate("mk").expect("mk"), []).expect("sealer"));
    let name = RingName::new("typing").expect("ring");
    let keyring = KeyRing::builder(name.clone(), storage.clone(), sealer.clone())
        .with_clock(clock.clone())
        .with_validation(validation)
        .build()
        .await
        .expect("keyring");
    Rotator::builder(name, storage, Arc::new(MemoryLock::new(clock.clone())), sealer)
        .with_clock(clock)
        .with_keyring(keyring.clone())
        .build()
        .init(RequestContext::actor("test"))
        .await
        .expect("init");
    (keyring, t0)
}

#[tokio::test]
async fn a_required_type_is_enforced_for_tokens_the_ring_signed() {
    let (keyring, t0) = ring(Validation::new()).await;
    let token = keyring
        .sign(&json!({"sub": "a", "exp": t0.timestamp() + 60}))
        .expect("sign");
    // The ring writes typ "JWT": the header is one it knows, so verification takes the
    // fast path that does not decode it. The required type must hold there too.
    assert!(keyring.verify_with(&token, &Validation::new(), t0).is_ok());
    for other in ["at+jwt", "application/at+jwt", "secevent+jwt"] {
        let v = Validation::new().with_required_type(other);
        assert_eq!(
            keyring.verify_with(&token, &v, t0).err(),
            Some(TokenError::InvalidType),
            "{other}"
        );
    }
    for same in ["JWT", "jwt", "application/jwt"] {
        let v = Validation::new().with_required_type(same);
        assert!(keyring.verify_with(&token, &v, t0).is_ok(), "{same}");
    }
}

#[tokio::test]
async fn the_ring_validation_can_require_a_type() {
    let (keyring, t0) = ring(Validation::new().with_required_type("at+jwt")).await;
    let token = keyring
        .sign(&json!({"sub": "a", "exp": t0.timestamp() + 60}))
        .expect("sign");
    assert_eq!(keyring.verify(&token).err(), Some(TokenError::InvalidType));
    assert_eq!(
        keyring.verify_refreshing(&token).await.err(),
        Some(TokenError::InvalidType)
    );
}

#[test]
fn tokens_of_another_issuer_are_checked_on_the_full_path() {
    let key = PrivateKey::generate(Algorithm::EdDsa, RsaBits::B2048).expect("keygen");
    let vk = key.public_key().verifying_key().expect("vk");
    let claims = json!({"sub": "a", "exp": 100});
    let sign = |typ: &str| {
        token::sign(
            &key.signing_key(),
            &encode_header_with_type(Algorithm::EdDsa, "ext", typ),
            &claims,
            0,
            600,
        )
        .expect("sign")
    };
    let v = Validation::new().with_required_type("at+jwt");
    let lookup = |kid: &str| (kid == "ext").then_some(&vk);
    assert!(keyrot_core::verify_with_lookup(&sign("at+jwt"), lookup, &v, 0).is_ok());
    assert!(keyrot_core::verify_with_lookup(&sign("application/AT+JWT"), lookup, &v, 0).is_ok());
    assert_eq!(
        keyrot_core::verify_with_lookup(&sign("JWT"), lookup, &v, 0).err(),
        Some(TokenError::InvalidType)
    );
}

/// A ring told to sign `at+jwt` writes that `typ`, and verifiers requiring it accept its
/// tokens on the fast path and the slow path alike, while a `JWT` ring's are refused.
#[tokio::test]
async fn a_ring_signs_the_configured_type() {
    use keyrot_core::{
        KeyRing, MasterKey, MasterKeySealer, MemoryLock, MemoryStorage, RequestContext, RingName, Rotator,
    };
    use std::sync::Arc;
    let storage = Arc::new(MemoryStorage::new());
    let sealer = Arc::new(MasterKeySealer::new(MasterKey::generate("mk").expect("mk"), []).expect("sealer"));
    let ring = RingName::new("typed").expect("ring");
    let typed = KeyRing::builder(ring.clone(), storage.clone(), sealer.clone())
        .with_token_type("at+jwt")
        .build()
        .await
        .expect("keyring");
    let rotator = Rotator::builder(
        ring.clone(),
        storage.clone(),
        Arc::new(MemoryLock::default()),
        sealer.clone(),
    )
    .with_keyring(typed.clone())
    .build();
    rotator.init(RequestContext::actor("t")).await.expect("init");
    let plain = KeyRing::builder(ring, storage, sealer).build().await.expect("plain");
    let exp = chrono::Utc::now().timestamp() + 60;
    let claims = serde_json::json!({"sub": "s", "exp": exp});
    let at_jwt = typed.sign(&claims).expect("sign");
    let jwt = plain.sign(&claims).expect("sign");
    let header = keyrot_core::decode_header(&at_jwt, &keyrot_core::Validation::new()).map(|u| u.alg);
    assert!(header.is_ok());
    let require = keyrot_core::Validation::new().with_required_type("application/at+jwt");
    let now = chrono::Utc::now();
    assert!(typed.verify_with(&at_jwt, &require, now).is_ok(), "fast path");
    assert!(plain.verify_with(&at_jwt, &require, now).is_ok(), "slow path");
    assert_eq!(
        typed.verify_with(&jwt, &require, now).err(),
        Some(keyrot_core::TokenError::InvalidType)
    );
    assert_eq!(
        plain.verify_with(&jwt, &require, now).err(),
        Some(keyrot_core::TokenError::InvalidType)
    );
    let bad = KeyRing::builder(
        RingName::new("x").expect("ring"),
        Arc::new(MemoryStorage::new()),
        Arc::new(MasterKeySealer::new(MasterKey::generate("mk").expect("mk"), []).expect("sealer")),
    )
    .with_token_type("")
    .build()
    .await;
    assert!(matches!(bad, Err(keyrot_core::RefreshError::InvalidTokenType)));
}
