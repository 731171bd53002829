//! Paired before/after of the token hot path (`benches/compare/run.sh REV`): keyrot-core
//! at REV (`old`) and the working tree (`new`) linked into one binary, interleaved in
//! shuffled rounds by the benches' paired harness (`paired.rs`, copied beside this file
//! by run.sh); the median of per-round ratios new/old, with an A/A pair (two old rings)
//! as the noise floor. Every ring signs with the same key (RFC 8037 A.1), so both
//! versions verify byte-identical tokens.
//!
//! `hot-path-compare GROUP JOB N` runs one job N times and exits, for callgrind.

mod paired;

use paired::Job;
use std::hint::black_box;
use std::sync::Arc;

const RFC8037: &str = r#"{"kty":"OKP","crv":"Ed25519","d":"nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#;
const ROUNDS: usize = 150;

/// A ring on the memory store whose Active key is RFC 8037's, with or without a token
/// cache, and a `PublicKeyRing` over the same store.
macro_rules! ring {
    ($k:ident, $cache:expr) => {{
        let storage = Arc::new($k::MemoryStorage::new());
        let sealer = Arc::new($k::MasterKeySealer::new($k::MasterKey::generate("mk").expect("mk"), []).expect("sealer"));
        let ring = $k::RingName::new("bench").expect("ring");
        let mut builder = $k::KeyRing::builder(ring.clone(), storage.clone(), sealer.clone());
        if $cache {
            builder = builder.with_token_cache($k::TokenCache::new($k::TokenCacheConfig::new()));
        }
        let keyring = builder.build().await.expect("keyring");
        let rotator = $k::Rotator::builder(ring.clone(), storage.clone(), Arc::new($k::MemoryLock::default()), sealer)
            .with_keyring(keyring.clone())
            .build();
        rotator.init($k::RequestContext::actor("bench")).await.expect("init");
        let mut imported = $k::PrivateKey::from_jwk_str(RFC8037, None).expect("jwk");
        imported.kid = Some("bench".into());
        rotator
            .import($k::RequestContext::actor("bench"), imported, $k::ImportState::Active)
            .await
            .expect("import");
        let public = $k::PublicKeyRing::builder(ring, storage).build().await.expect("public ring");
        (keyring, public)
    }};
}

fn report(title: &str, jobs: &[Job<'_>], per_round: &[Vec<f64>], pairs: &[(&str, usize, usize)]) {
    println!("{title} ({ROUNDS} rounds), median per call:");
    paired::print_medians(jobs, per_round);
    for &(name, old, new) in pairs {
        let mut ratios: Vec<f64> = per_round.iter().map(|r| r[new] / r[old]).collect();
        let m = paired::median(&mut ratios);
        let (q1, q3) = (ratios[ratios.len() / 4], ratios[ratios.len() * 3 / 4]);
        println!("  {name:<28} new/old {m:.4} (interquartile {q1:.4}–{q3:.4})");
    }
}

#[tokio::main]
async fn main() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let claims = serde_json::json!({"sub": "alice", "iss": "https://issuer.example", "exp": now + 3000, "scope": "a b c"});
    let (old_ring, old_public) = ring!(old, false);
    let (new_ring, new_public) = ring!(new, false);
    let (old_ring2, _) = ring!(old, false);
    let (old_cached, _) = ring!(old, true);
    let (new_cached, _) = ring!(new, true);
    let (old_cached2, _) = ring!(old, true);
    let token = old_ring.sign(&claims).expect("sign");
    assert_eq!(new_ring.sign(&claims).expect("sign"), token, "both versions sign the same token");
    for warm in [old_cached.verify(&token).is_ok(), new_cached.verify(&token).is_ok(), old_cached2.verify(&token).is_ok()] {
        assert!(warm, "the cached rings verify the token");
    }
    let t = token.as_str();
    let verify: Vec<Job> = vec![
        ("KeyRing::verify old", Box::new(|| drop(black_box(old_ring.verify(black_box(t))).expect("v")))),
        ("KeyRing::verify new", Box::new(|| drop(black_box(new_ring.verify(black_box(t))).expect("v")))),
        ("KeyRing::verify old'", Box::new(|| drop(black_box(old_ring2.verify(black_box(t))).expect("v")))),
        ("PublicKeyRing::verify old", Box::new(|| drop(black_box(old_public.verify(black_box(t))).expect("v")))),
        ("PublicKeyRing::verify new", Box::new(|| drop(black_box(new_public.verify(black_box(t))).expect("v")))),
    ];
    let cached: Vec<Job> = vec![
        ("cache hit old", Box::new(|| drop(black_box(old_cached.verify(black_box(t))).expect("v")))),
        ("cache hit new", Box::new(|| drop(black_box(new_cached.verify(black_box(t))).expect("v")))),
        ("cache hit old'", Box::new(|| drop(black_box(old_cached2.verify(black_box(t))).expect("v")))),
    ];
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("GROUP JOB N")).collect();
    if let [group, job, n] = args[..] {
        let jobs = if group == 0 { &verify } else { &cached };
        for _ in 0..n {
            (jobs[job].1)();
        }
        return;
    }
    let per_round = paired::rounds(&verify, ROUNDS, 500);
    report(
        "verify",
        &verify,
        &per_round,
        &[("KeyRing::verify", 0, 1), ("PublicKeyRing::verify", 3, 4), ("A/A KeyRing::verify", 0, 2)],
    );
    let per_round = paired::rounds(&cached, ROUNDS, 20_000);
    report("cache hit", &cached, &per_round, &[("cache hit", 0, 1), ("A/A cache hit", 0, 2)]);
}
