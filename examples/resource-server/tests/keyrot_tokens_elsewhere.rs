//! Tokens keyrot signs verify in independent stacks through keyrot's own JWKS: PyJWT,
//! jwcrypto and node's `jose`, for all five algorithms (EdDSA, RS256, PS256, ES256,
//! ES384). The stacks are installed from PyPI and npm into the target directory at the
//! first run; with `CI=true` a failed install fails the test.

mod support;

use keyrot_core::{
    Algorithm, KeyRing, MasterKey, MasterKeySealer, MemoryLock, MemoryStorage, Policy, RequestContext, RingName,
    Rotator,
};
use std::path::Path;
use std::process::Command;
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
    let mut cases = serde_json::Map::new();
    for alg in ALGORITHMS {
        let (jwks, token) = signed(alg).await;
        cases.insert(
            alg.as_str().to_owned(),
            serde_json::json!({ "jwks": jwks, "token": token }),
        );
    }
    let input = serde_json::json!({ "issuer": ISSUER, "audience": AUDIENCE, "cases": cases });
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let input_file = dir.join(format!("keyrot-tokens-{}.json", std::process::id()));
    std::fs::write(&input_file, input.to_string()).expect("write the input");
    let tests = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let expect_all = |stack: &str, out: &serde_json::Value| {
        for alg in ALGORITHMS {
            assert_eq!(
                out[stack][alg.as_str()],
                format!("keyrot-{}", alg.as_str()),
                "{stack} verified keyrot's {} token: {out}",
                alg.as_str()
            );
        }
    };

    if let Some(python) = support::python_with_pyjwt() {
        let out = Command::new(python)
            .arg(tests.join("verify_elsewhere.py"))
            .arg(&input_file)
            .output()
            .expect("run python");
        assert!(
            out.status.success(),
            "PyJWT/jwcrypto refused: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        expect_all("pyjwt", &out);
        expect_all("jwcrypto", &out);
    }
    if let Some(node_dir) = support::node_with_jose() {
        // ESM resolves `jose` from the script's own directory.
        let script = node_dir.join("verify_elsewhere.mjs");
        std::fs::copy(tests.join("verify_elsewhere.mjs"), &script).expect("copy the script");
        let out = Command::new("node")
            .arg(&script)
            .arg(&input_file)
            .output()
            .expect("run node");
        assert!(
            out.status.success(),
            "jose refused: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        expect_all("jose", &out);
    }
    let _ = std::fs::remove_file(&input_file);
}
