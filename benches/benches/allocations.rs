//! Heap allocations per call of keyrot's and jsonwebtoken's sign and verify, for every
//! algorithm, on the claims and keys of `--bench tokens`, counted by a counting global
//! allocator (calls, not bytes; reallocations count as calls). The same rule is asserted
//! by `keyrot-core/tests/allocations.rs`; this prints the numbers side by side.
//!
//! Run with `cargo bench -p keyrot-benches --bench allocations`.

mod common;
mod jwt;

use keyrot_core::Algorithm;
use serde_json::{Map, Value};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use std::alloc::System;
use std::hint::black_box;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const CALLS: usize = 50;

/// Allocations of one call of `f`, averaged over [`CALLS`] calls after one warm-up call.
fn per_call<R>(mut f: impl FnMut() -> R) -> f64 {
    drop(f());
    let region = Region::new(GLOBAL);
    for _ in 0..CALLS {
        drop(black_box(f()));
    }
    let c = region.change();
    (c.allocations + c.reallocations) as f64 / CALLS as f64
}

fn main() {
    let rt = common::runtime();
    let claims = common::claims();
    println!("heap allocations per call (keyrot / jsonwebtoken):");
    for alg in [
        Algorithm::EdDsa,
        Algorithm::Rs256,
        Algorithm::Ps256,
        Algorithm::Es256,
        Algorithm::Es384,
    ] {
        let ring = common::ring(&rt, alg);
        let token = ring.keyring.sign(&claims).expect("keyrot signs");
        let verified = ring.keyring.verify(&token).expect("keyrot verifies");
        let jwt = jwt::jwt(&ring);
        let keyrot_verify = per_call(|| ring.keyring.verify(&token).expect("verifies"));
        let output = per_call(|| verified.clone());
        let jwt_verify = per_call(|| {
            jsonwebtoken::decode::<Map<String, Value>>(&token, &jwt.decoding, &jwt.validation).expect("verifies")
        });
        let keyrot_sign = per_call(|| ring.keyring.sign(&claims).expect("signs"));
        let jwt_sign = per_call(|| jsonwebtoken::encode(&jwt.header, &claims, &jwt.encoding).expect("signs"));
        println!(
            "  {alg:<6} verify {keyrot_verify:>6.1} / {jwt_verify:>6.1} (the Verified output alone: {output:.1})   sign {keyrot_sign:>6.1} / {jwt_sign:>6.1}"
        );
    }
}
