//! Tokens keyrot signs verify in independent stacks through keyrot's own JWKS: PyJWT,
//! jwcrypto, node's `jose` and the `jsonwebtoken` crate, for all five algorithms (EdDSA,
//! RS256, PS256, ES256, ES384), and each refuses the token with a signature byte changed.
//! The stacks are installed from PyPI and npm into the target directory at the
//! first run; with `CI=true` a failed install fails the test.

mod support;

use keyrot_core::{
    Algorithm, KeyRing, MasterKey, MasterKeySealer, MemoryLock, MemoryStorage, Policy, RequestContext, RingName,
    Rotator,
};
use std::sync::Arc;

const ISSUER: &str = "https://keyrot.issuer.test";
const AUDIENCE: &str = "other-stacks";
const ALGORITHMS: [Algorithm; 5] = [
    Algorithm::EdDsa,
    Algorithm::Rs256,
    Algorithm::Ps256,
    Algorithm::Es256,
    Algorithm::Es384,
];

/// A ring of `alg`: its JWKS and a token it signed.
async fn signed(alg: Algorithm) -> (serde_json::Value, String) {
    let storage = Arc::new(MemoryStorage::new());
    let sealer = Arc::new(MasterKeySealer::new(MasterKey::generate("mk").expect("mk"), []).expect("sealer"));
    let ring = RingName::new(format!("stacks-{}", alg.as_str().to_lowercase())).expect("ring");
    let policy = Policy::builder().with_algorithm(alg).build().expect("policy");
    let keyring = KeyRing::builder(ring.clone(), storage.clone(), sealer.clone())
        .with_policy(policy.clone())
        .build()
        .await
        .expect("keyring");
    Rotator::builder(ring, storage, Arc::new(MemoryLock::default()), sealer)
        .with_policy(policy)
        .with_keyring(keyring.clone())
        .build()
        .init(RequestContext::actor("interop"))
        .await
        .expect("init");
    let now = chrono::Utc::now().timestamp();
    let claims = serde_json::json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": format!("keyrot-{}", alg.as_str()), "iat": now, "exp": now + 600,
    });
    let token = keyring.sign(&claims).expect("sign");
    let jwks = serde_json::from_slice(keyring.snapshot().jwks().body()).expect("JWKS json");
    (jwks, token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyrot_tokens_verify_in_pyjwt_jwcrypto_and_node_jose() {
    let mut cases = Vec::new();
    for alg in ALGORITHMS {
        let (jwks, token) = signed(alg).await;
        cases.push(support::Case {
            name: alg.as_str().to_owned(),
            alg: alg.as_str(),
            jwks,
            tampered: Some(support::tamper(&token)),
            token,
            sub: format!("keyrot-{}", alg.as_str()),
        });
    }
    support::verify_elsewhere("keyrot-tokens", ISSUER, AUDIENCE, &cases);
}
