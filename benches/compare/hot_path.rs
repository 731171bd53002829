//! Paired before/after of the token hot path (`benches/compare/run.sh REV`): keyrot-core
//! at REV (`old`) and the working tree (`new`) in one binary, interleaved in shuffled
//! rounds; median of per-round ratios new/old, with an A/A pair as the noise floor.
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

macro_rules! setup {
    ($k:ident, $cache:expr) => {{
        let storage = Arc::new($k::MemoryStorage::new());
        let sealer = Arc::new($k::MasterKeySealer::new($k::MasterKey::generate("mk").unwrap(), []).unwrap());
        let ring = $k::RingName::new("bench").unwrap();
        let mut b = $k::KeyRing::builder(ring.clone(), storage.clone(), sealer.clone());
        if $cache {
            b = b.with_token_cache($k::TokenCache::new($k::TokenCacheConfig::new()));
        }
        let keyring = b.build().await.unwrap();
        let rotator = $k::Rotator::builder(
            ring.clone(),
            storage.clone(),
            Arc::new($k::MemoryLock::default()),
            sealer,
        )
        .with_keyring(keyring.clone())
        .build();
        rotator.init($k::RequestContext::actor("bench")).await.unwrap();
        let mut imported = $k::PrivateKey::from_jwk_str(RFC8037, None).unwrap();
        imported.kid = Some("bench".into());
        rotator
            .import($k::RequestContext::actor("bench"), imported, $k::ImportState::Active)
            .await
            .unwrap();
        let public = $k::PublicKeyRing::builder(ring, storage).build().await.unwrap();
        (keyring, public)
    }};
}

/// RFC 8037 A.1's Ed25519 private key: every ring signs with the same key, so both
/// versions verify byte-identical tokens.
const RFC8037: &str = r#"{"kty":"OKP","crv":"Ed25519","d":"nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let exp_at = chrono_now() + 3000;
    let (old_ring, old_public) = setup!(old, false);
    let (new_ring, new_public) = setup!(new, false);
    let (old_ring2, _) = setup!(old, false);
    let t_old2 = old_ring2
        .sign(&serde_json::json!({"sub": "alice", "iss": "https://issuer.example", "exp": exp_at, "scope": "a b c"}))
        .unwrap();
    let (old_cached2, _) = setup!(old, true);
    let tc_old2 = old_cached2
        .sign(&serde_json::json!({"sub": "alice", "iss": "https://issuer.example", "exp": exp_at, "scope": "a b c"}))
        .unwrap();
    old_cached2.verify(&tc_old2).unwrap();
    let (old_cached, _) = setup!(old, true);
    let (new_cached, _) = setup!(new, true);
    let exp = serde_json::json!({"sub": "alice", "iss": "https://issuer.example", "exp": exp_at, "scope": "a b c"});

    let t_old = old_ring.sign(&exp).unwrap();
    let t_new = new_ring.sign(&exp).unwrap();
    let tc_old = old_cached.sign(&exp).unwrap();
    let tc_new = new_cached.sign(&exp).unwrap();
    old_cached.verify(&tc_old).unwrap();
    new_cached.verify(&tc_new).unwrap();
    type Job<'a> = (&'static str, Box<dyn Fn() + 'a>, usize);
    let jobs: Vec<Job> = vec![
        (
            "KeyRing::verify old",
            Box::new(|| {
                black_box(old_ring.verify(black_box(&t_old)).unwrap());
            }),
            500,
        ),
        (
            "KeyRing::verify new",
            Box::new(|| {
                black_box(new_ring.verify(black_box(&t_new)).unwrap());
            }),
            500,
        ),
        (
            "PublicKeyRing::verify old",
            Box::new(|| {
                black_box(old_public.verify(black_box(&t_old)).unwrap());
            }),
            500,
        ),
        (
            "PublicKeyRing::verify new",
            Box::new(|| {
                black_box(new_public.verify(black_box(&t_new)).unwrap());
            }),
            500,
        ),
        (
            "cache hit old",
            Box::new(|| {
                black_box(old_cached.verify(black_box(&tc_old)).unwrap());
            }),
            20_000,
        ),
        (
            "cache hit new",
            Box::new(|| {
                black_box(new_cached.verify(black_box(&tc_new)).unwrap());
            }),
            20_000,
        ),
        (
            "KeyRing::verify old (A/A)",
            Box::new(|| {
                black_box(old_ring2.verify(black_box(&t_old2)).unwrap());
            }),
            500,
        ),
        (
            "cache hit old (A/A)",
            Box::new(|| {
                black_box(old_cached2.verify(black_box(&tc_old2)).unwrap());
            }),
            20_000,
        ),
    ];
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 3 {
        let (j, n): (usize, usize) = (args[1].parse().unwrap(), args[2].parse().unwrap());
        for _ in 0..n {
            (jobs[j].1)();
        }
        return;
    }
    let rounds = 150;
    let mut order: Vec<usize> = (0..jobs.len()).collect();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut per_round: Vec<Vec<f64>> = Vec::new();
    for _ in 0..rounds {
        for i in (1..order.len()).rev() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            order.swap(i, (seed % (i as u64 + 1)) as usize);
        }
        let mut round = vec![0.0; jobs.len()];
        for &j in &order {
            let start = Instant::now();
            for _ in 0..jobs[j].2 {
                (jobs[j].1)();
            }
            round[j] = start.elapsed().as_secs_f64() * 1e6 / jobs[j].2 as f64;
        }
        per_round.push(round);
    }
    for j in 0..jobs.len() {
        let mut v: Vec<f64> = per_round.iter().map(|r| r[j]).collect();
        println!("{:<28} median {:>8.3} µs", jobs[j].0, median(&mut v));
    }
    for (name, a, b) in [
        ("KeyRing::verify", 0, 1),
        ("PublicKeyRing::verify", 2, 3),
        ("cache hit", 4, 5),
        ("A/A KeyRing::verify", 0, 6),
        ("A/A cache hit", 4, 7),
    ] {
        let mut ratios: Vec<f64> = per_round.iter().map(|r| r[b] / r[a]).collect();
        let m = median(&mut ratios);
        let lo = ratios[ratios.len() / 4];
        let hi = ratios[ratios.len() * 3 / 4];
        println!("{name:<24} new/old median per-round ratio {m:.4} (IQR {lo:.4}–{hi:.4}, {rounds} rounds)");
    }
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}
