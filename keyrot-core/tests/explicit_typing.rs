//! Explicit typing (RFC 8725 §3.11) through the key ring: a required `typ` holds on the
//! fast path for headers the ring wrote itself, and on the full path for any other.

use chrono::{DateTime, Utc};
use keyrot_core::token::{self, encode_header_with_type};
use keyrot_core::{
    Algorithm, KeyRing, ManualClock, MasterKey, MasterKeySealer, MemoryLock, MemoryStorage, PrivateKey, RequestContext,
    RingName, Rotator, RsaBits, TokenError, Validation,
};
use serde_json::json;
use std::sync::Arc;

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
    assert!(token::verify(&sign("at+jwt"), lookup, &v, 0).is_ok());
    assert!(token::verify(&sign("application/AT+JWT"), lookup, &v, 0).is_ok());
    assert_eq!(
        token::verify(&sign("JWT"), lookup, &v, 0).err(),
        Some(TokenError::InvalidType)
    );
}
