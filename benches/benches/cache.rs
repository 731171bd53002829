//! What a repeated token costs with the verified-token cache, paired (the jobs interleaved
//! in shuffled rounds; medians over rounds and per-round ratios), on one EdDSA key and one
//! token:
//!
//! * **verify**: the raw Ed25519 check (`ed25519-dalek` `verify_strict` of the token's
//!   signing input), `KeyRing::verify` without a cache, and `KeyRing::verify` with a warm
//!   cache (a hit: the time claims and the key re-checked, the claims cloned).
//! * **middleware** (axum in process, one request through the router, no sockets): the
//!   route without the layer, with the layer, and with the layer over a cached ring. The
//!   middleware's cost per request is the per-round difference to the route without it.
//!
//! Run with `cargo bench -p keyrot-benches --bench cache`.

mod common;
mod paired;

use axum::Router;
use axum::routing::get;
use keyrot_axum::{BearerAuthLayer, Token};
use keyrot_core::{Algorithm, KeyRing, TokenCache, TokenCacheConfig};
use keyrot_http::BearerAuth;
use paired::Job;
use std::hint::black_box;
use tower::ServiceExt as _;

const ROUNDS: usize = 200;

/// The median over rounds of `job a − job b`, in microseconds.
fn median_difference(per_round: &[Vec<f64>], a: usize, b: usize) -> f64 {
    let mut d: Vec<f64> = per_round.iter().map(|r| r[a] - r[b]).collect();
    paired::median(&mut d)
}

async fn me(Token(verified): Token) -> String {
    verified.kid
}

fn protected(auth: BearerAuth) -> Router {
    Router::new()
        .route("/api/me", get(me))
        .layer(BearerAuthLayer::new(auth))
}

fn request(bearer: Option<&str>) -> axum::http::Request<axum::body::Body> {
    let mut b = axum::http::Request::get("/api/me");
    if let Some(t) = bearer {
        b = b.header("authorization", t);
    }
    b.body(axum::body::Body::empty()).expect("request")
}

fn main() {
    let rt = common::runtime();
    let ring = common::ring(&rt, Algorithm::EdDsa);
    let cache = TokenCache::new(TokenCacheConfig::new());
    let cached = rt
        .block_on(
            KeyRing::builder(
                ring.keyring.ring().clone(),
                ring.keyring.storage().clone(),
                ring.sealer.clone(),
            )
            .with_policy(ring.keyring.policy().clone())
            .with_validation(ring.keyring.validation().clone())
            .with_token_cache(cache.clone())
            .build(),
        )
        .expect("cached ring");
    let token = ring.keyring.sign(&common::claims()).expect("sign");
    let (signing_input, sig_b64) = token.rsplit_once('.').expect("three segments");
    let sig = keyrot_core::testing::b64::decode(sig_b64).expect("signature");
    let sig = ed25519_dalek::Signature::from_slice(&sig).expect("64-byte signature");
    let seed: [u8; 32] = ring
        .key
        .to_secret_bytes()
        .expect("seed")
        .expose()
        .try_into()
        .expect("Ed25519 secret is a 32-byte seed");
    let vk = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key();
    assert!(vk.verify_strict(signing_input.as_bytes(), &sig).is_ok());
    let plain = ring.keyring.verify(&token).expect("verifies");
    assert_eq!(cached.verify(&token).expect("verifies").claims, plain.claims);
    assert_eq!(cached.verify(&token).expect("hit").claims, plain.claims);
    assert_eq!(cache.stats().hits, 1, "the cached ring answers repeats from the cache");

    let iters = 200;
    let jobs: Vec<Job<'_>> = vec![
        (
            "raw ed25519 verify",
            Box::new(|| {
                assert!(
                    black_box(&vk)
                        .verify_strict(black_box(signing_input.as_bytes()), &sig)
                        .is_ok()
                )
            }),
        ),
        (
            "keyrot verify",
            Box::new(|| assert!(black_box(&ring.keyring).verify(black_box(&token)).is_ok())),
        ),
        (
            "keyrot verify (cache hit)",
            Box::new(|| assert!(black_box(&cached).verify(black_box(&token)).is_ok())),
        ),
    ];
    let per_round = paired::rounds(&jobs, ROUNDS, iters);
    println!("verify, one EdDSA token ({ROUNDS} shuffled rounds of {iters} calls each; medians):");
    paired::print_medians(&jobs, &per_round);
    println!(
        "  raw / cache hit         {:>9.1}×",
        paired::median_ratio(&per_round, 0, 2)
    );
    println!(
        "  keyrot / raw            {:>9.3}",
        paired::median_ratio(&per_round, 1, 0)
    );

    let bearer = format!("Bearer {token}");
    let without = Router::new().route("/api/me", get(|| async { "kid" }));
    let with = protected(BearerAuth::new(ring.keyring.clone()));
    let with_cache = protected(BearerAuth::new(cached.clone()));
    for (router, bearer) in [(&without, None), (&with, Some(&bearer)), (&with_cache, Some(&bearer))] {
        let resp = rt
            .block_on(router.clone().oneshot(request(bearer.map(String::as_str))))
            .expect("response");
        assert_eq!(resp.status(), 200);
    }
    let call = |router: &Router, bearer: Option<&str>| {
        let resp = rt.block_on(router.clone().oneshot(request(bearer))).expect("response");
        assert_eq!(resp.status(), 200);
    };
    let iters = 100;
    let jobs: Vec<Job<'_>> = vec![
        ("route, no middleware", Box::new(|| call(&without, None))),
        ("middleware", Box::new(|| call(&with, Some(&bearer)))),
        ("middleware, cache hit", Box::new(|| call(&with_cache, Some(&bearer)))),
    ];
    let per_round = paired::rounds(&jobs, ROUNDS, iters);
    println!("axum in process, GET /api/me ({ROUNDS} shuffled rounds of {iters} requests each; medians):");
    paired::print_medians(&jobs, &per_round);
    println!(
        "  middleware cost         {:>9.2} µs",
        median_difference(&per_round, 1, 0)
    );
    println!(
        "  middleware cost, hit    {:>9.2} µs",
        median_difference(&per_round, 2, 0)
    );
    let stats = cache.stats();
    println!(
        "cache: {} hits, {} misses, {} entries",
        stats.hits, stats.misses, stats.entries
    );
}
