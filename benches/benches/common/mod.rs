//! Shared set-up for the benchmarks: a real keyrot ring (memory storage, master-key
//! sealer, memory lock, rotator) bootstrapped with a key the benchmark generated itself,
//! so the raw crypto crates and jsonwebtoken can be handed the very same key.

#![allow(dead_code, reason = "shared by several bench targets; each uses a subset")]

use keyrot_core::{
    Algorithm, ImportState, ImportedKey, KeyRing, MasterKey, MasterKeySealer, MemoryLock, MemoryStorage, Outcome,
    Policy, PrivateKey, RequestContext, RingName, Rotator, RsaBits, Validation,
};
use std::sync::Arc;

/// The issuer every benchmark token carries and every verifier requires.
pub const ISSUER: &str = "https://issuer.example";
/// The audience every benchmark token carries and every verifier requires.
pub const AUDIENCE: &str = "api";

/// A keyrot ring whose Active key is `key`.
pub struct Ring {
    /// The handle that signs and verifies.
    pub keyring: KeyRing,
    /// The rotator (kept for adding further keys).
    pub rotator: Rotator,
    /// The Active key, as generated.
    pub key: PrivateKey,
    /// The sealer of the ring's store (for further handles on the same ring).
    pub sealer: Arc<MasterKeySealer>,
    /// Its kid as keyrot publishes it.
    pub kid: String,
}

/// Builds a current-thread runtime for the async set-up (never used inside a timing loop).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Generates a key for `alg` and bootstraps an empty ring with it via
/// `Rotator::import(.., ImportState::Active)`.
pub fn ring(rt: &tokio::runtime::Runtime, alg: Algorithm) -> Ring {
    let key = PrivateKey::generate(alg, RsaBits::B2048).expect("key generation");
    let policy = Policy::builder().with_algorithm(alg).build().expect("valid policy");
    let storage = Arc::new(MemoryStorage::new());
    let sealer =
        Arc::new(MasterKeySealer::new(MasterKey::generate("bench-mk").expect("master key"), []).expect("sealer"));
    let name = RingName::new(format!("bench-{}", alg.as_str().to_ascii_lowercase())).expect("ring name");
    let validation = Validation::new().with_issuer(ISSUER).with_audience(AUDIENCE);
    rt.block_on(async {
        let keyring = KeyRing::builder(name.clone(), storage.clone(), sealer.clone())
            .with_policy(policy.clone())
            .with_validation(validation)
            .build()
            .await
            .expect("keyring");
        let rotator = Rotator::builder(name, storage, Arc::new(MemoryLock::default()), sealer.clone())
            .with_policy(policy)
            .with_keyring(keyring.clone())
            .build();
        let report = rotator
            .import(
                RequestContext::actor("bench"),
                ImportedKey {
                    key: key.clone(),
                    kid: None,
                },
                ImportState::Active,
            )
            .await
            .expect("import");
        assert_eq!(report.outcome, Outcome::Imported, "{report:?}");
        let kid = report.new_kid.clone().expect("imported kid");
        assert_eq!(
            keyring.snapshot().active_kid(),
            Some(kid.as_str()),
            "keyring serves the imported key"
        );
        Ring {
            keyring,
            rotator,
            key,
            sealer,
            kid,
        }
    })
}

/// Typical access-token claims, valid for ten minutes from now.
pub fn claims() -> serde_json::Value {
    let now = unix_now();
    serde_json::json!({
        "sub": "user-123",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 600,
        "scope": "read write",
    })
}

/// Unix seconds now, from the standard library (the benches do not depend on chrono).
pub fn unix_now() -> i64 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    i64::try_from(secs).expect("seconds fit in i64")
}
