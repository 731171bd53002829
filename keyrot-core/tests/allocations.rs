//! Heap allocations per token on the hot path, counted by a counting global allocator.
//! Verifying allocates only its output (the `Verified` it returns: its `kid` and its
//! claims map) and what the crypto crate allocates inside its own verification; signing
//! only the token it returns and the serialised claims, and what the crypto crate
//! allocates inside its own signing call. For every algorithm.
//!
//! This file holds a single test: the allocator counts every thread of the process, so
//! no other test may run beside it.

use chrono::{DateTime, Utc};
use keyrot_core::{
    Algorithm, ImportState, ImportedKey, KeyRing, ManualClock, MasterKey, MasterKeySealer, MemoryLock, MemoryStorage,
    Policy, PrivateKey, RequestContext, RingName, Rotator, RsaBits, Validation,
};
use serde_json::{Value, json};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use std::alloc::System;
use std::sync::Arc;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const ISSUER: &str = "https://issuer.example";

/// A ring whose Active key is `key`.
async fn ring(key: &PrivateKey, t0: DateTime<Utc>) -> KeyRing {
    let alg = key.algorithm();
    let clock = Arc::new(ManualClock::new(t0));
    let storage = Arc::new(MemoryStorage::new());
    let sealer = Arc::new(MasterKeySealer::new(MasterKey::generate("mk").expect("mk"), []).expect("sealer"));
    let name = RingName::new("allocations").expect("ring");
    let policy = Policy::builder().with_algorithm(alg).build().expect("policy");
    let keyring = KeyRing::builder(name.clone(), storage.clone(), sealer.clone())
        .with_clock(clock.clone())
        .with_policy(policy.clone())
        .with_validation(Validation::new().with_issuer(ISSUER).with_audience("api"))
        .build()
        .await
        .expect("keyring");
    Rotator::builder(name, storage, Arc::new(MemoryLock::new(clock.clone())), sealer)
        .with_clock(clock)
        .with_policy(policy)
        .with_keyring(keyring.clone())
        .build()
        .import(
            RequestContext::actor("test"),
            ImportedKey {
                key: key.clone(),
                kid: None,
            },
            ImportState::Active,
        )
        .await
        .expect("import");
    keyring
}

/// Allocations (not bytes) made by one call of `f`, averaged over `n` calls.
fn allocations<R>(n: u64, mut f: impl FnMut() -> R) -> u64 {
    // One call first, so lazily initialised state is not counted.
    drop(f());
    let region = Region::new(GLOBAL);
    for _ in 0..n {
        drop(std::hint::black_box(f()));
    }
    let change = region.change();
    (change.allocations + change.reallocations) as u64 / n
}

#[test]
fn the_hot_path_allocates_only_its_output() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let t0 = DateTime::from_timestamp(1_900_000_000, 0).expect("time");
    let claims: Value = json!({
        "sub": "user-123",
        "iss": ISSUER,
        "aud": "api",
        "iat": t0.timestamp(),
        "exp": t0.timestamp() + 600,
        "scope": "read write",
    });
    let mut report = Vec::new();
    for alg in [
        Algorithm::EdDsa,
        Algorithm::Rs256,
        Algorithm::Ps256,
        Algorithm::Es256,
        Algorithm::Es384,
    ] {
        let key = PrivateKey::generate(alg, RsaBits::B2048).expect("key");
        let keyring = rt.block_on(ring(&key, t0));
        let token = keyring.sign(&claims).expect("sign");
        let verified = keyring.verify(&token).expect("verify");
        assert_eq!(Value::Object(verified.claims.clone()), claims);
        let (signing_input, _) = token.rsplit_once('.').expect("three segments");
        let message = signing_input.as_bytes();
        let signing_key = key.signing_key();
        let signature = signing_key.sign(message).expect("sign");
        let verifying_key = key.public_key().verifying_key().expect("verifying key");
        assert!(verifying_key.verify(message, &signature));

        // The crypto crate's own verification, and the output alone (a copy of it).
        let crypto_verify = allocations(20, || verifying_key.verify(message, &signature));
        let output = allocations(20, || verified.clone());
        let verify = allocations(20, || keyring.verify(&token).expect("verify"));
        // The crypto crate's own signing call, plus the vector `SigningKey::sign` returns.
        let crypto_sign = allocations(20, || signing_key.sign(message).expect("sign"));
        let sign = allocations(20, || keyring.sign(&claims).expect("sign"));
        report.push(format!(
            "{alg}: verify {verify} (output {output}, crypto {crypto_verify}), sign {sign} (crypto {crypto_sign})"
        ));
        assert_eq!(
            verify,
            output + crypto_verify,
            "{alg}: verify allocates only its output"
        );
        // The serialised claims and the token, where `SigningKey::sign` allocates its vector.
        // RSA's blinding is random, and so is how often its arithmetic allocates: within 2 %.
        let slack = if matches!(alg, Algorithm::Rs256 | Algorithm::Ps256) {
            crypto_sign / 50
        } else {
            0
        };
        assert!(
            sign.abs_diff(crypto_sign + 1) <= slack,
            "{alg}: sign allocates {sign} times, the crypto {crypto_sign}"
        );
    }
    eprintln!("allocations per call: {}", report.join("; "));
}
