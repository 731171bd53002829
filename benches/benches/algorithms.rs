//! The cost of each algorithm keyrot signs with, for choosing one: `KeyRing::sign` and
//! `KeyRing::verify` of EdDSA, RS256, PS256, ES256 and ES384 (RSA 2048), all ten jobs
//! interleaved in shuffled rounds on the same claims, each reported as its median time
//! per call.
//!
//! Run with `cargo bench -p keyrot-benches --bench algorithms`.

mod common;
mod paired;

use common::{claims, ring, runtime};
use keyrot_core::Algorithm;
use paired::Job;
use std::hint::black_box;

const ROUNDS: usize = 40;
const ITERS: usize = 10;

fn main() {
    let rt = runtime();
    let algorithms = [
        Algorithm::EdDsa,
        Algorithm::Rs256,
        Algorithm::Ps256,
        Algorithm::Es256,
        Algorithm::Es384,
    ];
    let rings: Vec<_> = algorithms.iter().map(|alg| ring(&rt, *alg)).collect();
    let claims = claims();
    let tokens: Vec<String> = rings.iter().map(|r| r.keyring.sign(&claims).expect("sign")).collect();
    let names: Vec<(&'static str, &'static str)> = vec![
        ("sign EdDSA", "verify EdDSA"),
        ("sign RS256", "verify RS256"),
        ("sign PS256", "verify PS256"),
        ("sign ES256", "verify ES256"),
        ("sign ES384", "verify ES384"),
    ];
    let mut jobs: Vec<Job<'_>> = Vec::new();
    for (i, r) in rings.iter().enumerate() {
        let claims = &claims;
        jobs.push((
            names[i].0,
            Box::new(move || {
                black_box(r.keyring.sign(black_box(claims)).expect("sign"));
            }),
        ));
        let token = &tokens[i];
        jobs.push((
            names[i].1,
            Box::new(move || {
                black_box(r.keyring.verify(black_box(token)).expect("verify"));
            }),
        ));
    }
    let per_round = paired::rounds(&jobs, ROUNDS, ITERS);
    println!("keyrot sign and verify per algorithm, median of {ROUNDS} shuffled rounds of {ITERS} calls:");
    paired::print_medians(&jobs, &per_round);
    println!(
        "  verify ES256 / verify EdDSA, median per-round ratio: {:.2}",
        paired::median_ratio(&per_round, 7, 1)
    );
}
