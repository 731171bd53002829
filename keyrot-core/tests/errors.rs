//! keyrot's errors print each cause once: an error's own message never repeats the text
//! of a cause it also returns from `source()`, so `ErrorChain` (and any reporter that
//! walks the chain) shows every cause exactly once.

use keyrot_core::{
    Algorithm, ErrorChain, KeyError, KeyRing, MasterKey, MasterKeySealer, MemoryLock, MemoryStorage, Policy,
    PrivateKey, RefreshError, RequestContext, RingName, Rotator, RsaBits, SealError, SignError,
};
use std::collections::BTreeMap;
use std::error::Error;
use std::sync::Arc;

/// Every message along the chain, outermost first.
fn chain(e: &(dyn Error + 'static)) -> Vec<String> {
    let mut out = vec![e.to_string()];
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push(c.to_string());
        cause = c.source();
    }
    out
}

/// No message in the chain contains the message of a cause below it.
fn assert_each_cause_once(e: &(dyn Error + 'static)) {
    let messages = chain(e);
    for (i, outer) in messages.iter().enumerate() {
        for inner in &messages[i + 1..] {
            assert!(
                !outer.contains(inner.as_str()),
                "{outer:?} repeats its cause {inner:?} (chain: {messages:?})"
            );
        }
    }
    let shown = ErrorChain(e).to_string();
    for m in &messages {
        assert_eq!(shown.matches(m.as_str()).count(), 1, "{m:?} shown once in {shown:?}");
    }
}

#[test]
fn sign_errors_print_their_cause_once() {
    let key = PrivateKey::generate(Algorithm::EdDsa, RsaBits::B2048).expect("key");
    let sk = key.signing_key();
    let header = keyrot_core::testing::token::encode_header(Algorithm::EdDsa, "k1");
    // A map with non-string keys cannot be serialised to a JSON object.
    let bad: BTreeMap<(u8, u8), u8> = [((1, 2), 3)].into();
    let e = keyrot_core::testing::token::sign(&sk, &header, &bad, 0, 60).expect_err("not serialisable");
    assert!(
        matches!(e, SignError::Claims(keyrot_core::ClaimsError::Serialize(_))),
        "{e:?}"
    );
    assert!(
        e.source().and_then(|c| c.source()).is_some(),
        "the serde error is kept as the source"
    );
    assert_each_cause_once(&e);
    let e = keyrot_core::testing::token::sign(&sk, &header, &[1, 2], 0, 60).expect_err("not an object");
    assert!(
        matches!(e, SignError::Claims(keyrot_core::ClaimsError::NotAnObject)),
        "{e:?}"
    );
    assert_each_cause_once(&e);
}

#[test]
fn key_and_policy_errors_name_the_rule() {
    let mut jwk = PrivateKey::generate(Algorithm::EdDsa, RsaBits::B2048)
        .expect("key")
        .public_key()
        .to_jwk("k");
    jwk["use"] = "enc".into();
    let e = keyrot_core::PublicKey::from_jwk(&jwk, None).expect_err("use enc");
    assert!(
        matches!(e, KeyError::Invalid(keyrot_core::InvalidKey::NotForSignatures)),
        "{e:?}"
    );
    assert_each_cause_once(&e);
    let e = Policy::builder()
        .with_lock_ttl(std::time::Duration::ZERO)
        .build()
        .expect_err("zero lock ttl");
    assert!(
        matches!(e, keyrot_core::PolicyError::NotPositive { setting: "lock_ttl" }),
        "{e:?}"
    );
    assert_each_cause_once(&e);
}

#[tokio::test]
async fn refresh_errors_keep_the_seal_error_as_their_source() {
    let storage = Arc::new(MemoryStorage::new());
    let ring = RingName::new("errors").expect("ring");
    let sealer = Arc::new(MasterKeySealer::new(MasterKey::generate("mk1").expect("mk"), []).expect("sealer"));
    let rotator = Rotator::builder(ring.clone(), storage.clone(), Arc::new(MemoryLock::default()), sealer).build();
    rotator.init(RequestContext::actor("test")).await.expect("init");
    let other = Arc::new(MasterKeySealer::new(MasterKey::generate("mk2").expect("mk"), []).expect("sealer"));
    let e = KeyRing::builder(ring, storage, other)
        .build()
        .await
        .expect_err("unknown master key");
    let RefreshError::Seal { source, .. } = &e else {
        panic!("expected a seal error, got {e:?}");
    };
    assert!(matches!(source, SealError::UnknownMasterKey(id) if id == "mk1"));
    assert_each_cause_once(&e);
    assert!(
        ErrorChain(&e).to_string().contains("unknown master key id \"mk1\""),
        "the chain names the cause: {}",
        ErrorChain(&e)
    );
}
