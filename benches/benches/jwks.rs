//! JWKS serving from the snapshot: what a JWKS handler does per request (load the
//! snapshot, take the shared body, the ETag and the `Cache-Control` value for now), and
//! the conditional-request check (`If-None-Match`).
//!
//! The ring publishes two keys (the Active one and an imported Pending one), as it does
//! for most of its life.
//!
//! Run with `cargo bench -p keyrot-benches --bench jwks`.

mod common;

use criterion::{Criterion, criterion_group, criterion_main};
use keyrot_core::{Algorithm, ImportState, ImportedKey, Outcome, PrivateKey, RequestContext, RsaBits};
use std::hint::black_box;
use std::time::Duration;

fn jwks(c: &mut Criterion) {
    let rt = common::runtime();
    let ring = common::ring(&rt, Algorithm::EdDsa);
    let next = PrivateKey::generate(Algorithm::EdDsa, RsaBits::B2048).expect("key generation");
    let report = rt
        .block_on(ring.rotator.import(
            RequestContext::actor("bench"),
            ImportedKey { key: next, kid: None },
            ImportState::Pending,
        ))
        .expect("import pending");
    assert_eq!(report.outcome, Outcome::Imported, "{report:?}");
    let keyring = ring.keyring;
    let snap = keyring.snapshot();
    assert_eq!(snap.keys().len(), 2, "Active and Pending are published");
    let etag = snap.jwks().etag().to_owned();
    let miss = "\"not-this-one\", W/\"nor-this\", \"nor-that\"";
    let hit_in_list = format!("\"not-this-one\", {etag}");
    assert!(snap.jwks().matches_if_none_match(&etag));
    assert!(snap.jwks().matches_if_none_match(&hit_in_list));
    assert!(!snap.jwks().matches_if_none_match(miss));
    drop(snap);

    let mut g = c.benchmark_group("jwks");
    g.sample_size(60)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    g.bench_function("serve", |b| {
        b.iter(|| {
            let snap = keyring.snapshot();
            let jwks = snap.jwks();
            let body = jwks.body_arc();
            let etag = jwks.etag().to_owned();
            let cache_control = jwks.cache_control(keyring.clock().now());
            black_box((body, etag, cache_control))
        })
    });
    g.bench_function("if_none_match_hit", |b| {
        let snap = keyring.snapshot();
        b.iter(|| snap.jwks().matches_if_none_match(black_box(&etag)))
    });
    g.bench_function("if_none_match_hit_in_list", |b| {
        let snap = keyring.snapshot();
        b.iter(|| snap.jwks().matches_if_none_match(black_box(&hit_in_list)))
    });
    g.bench_function("if_none_match_miss", |b| {
        let snap = keyring.snapshot();
        b.iter(|| snap.jwks().matches_if_none_match(black_box(miss)))
    });
    g.finish();
}

criterion_group!(benches, jwks);
criterion_main!(benches);
