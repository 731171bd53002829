//! Token signing and verification, paired: for every algorithm keyrot has, the crypto
//! crate alone (`raw`), `jsonwebtoken` and keyrot run interleaved in shuffled rounds on the
//! same key and the same token (`paired/mod.rs`), and each group reports the median of the
//! per-round ratios keyrot/raw and keyrot/jsonwebtoken, plus every job's median time.
//!
//! * `raw` signs / verifies the exact signing input (`header.payload`) of the keyrot token
//!   with the crypto crate and the call keyrot uses (ed25519-dalek `verify_strict`, rsa 0.10
//!   PKCS#1 v1.5 and PSS with SHA-256, p256/p384 0.14 ECDSA with RFC 6979 nonces). It is
//!   the floor: no JSON, no base64, no claims checks.
//! * `jsonwebtoken` encodes the same claims / decodes the keyrot token into a JSON map
//!   with the same issuer, audience and leeway rules, its keys built once outside the loop.
//! * `keyrot` is `KeyRing::sign` / `KeyRing::verify` on a ring bootstrapped with the same
//!   key through `Rotator::import(.., ImportState::Active)`.
//! * The `verify_as` groups read the claims into one struct ([`Access`]):
//!   `KeyRing::verify_as::<Access>` (no claims map) against jsonwebtoken's
//!   `decode::<Access>`, and `raw` again.
//!
//! Jobs are timed on the thread's CPU time (`KEYROT_BENCH_CLOCK=wall`: on wall time).
//!
//! Run with `cargo bench -p keyrot-benches --bench tokens` (about two minutes); a word
//! after `--` keeps only the groups whose name contains it (`-- EdDSA`, `-- verify`).
//!
//! For a profiler, `KEYROT_BENCH_PROFILE=JOB` runs one job of the groups the filter keeps
//! alone, for ten seconds or, with `KEYROT_BENCH_CALLS=N`, exactly N times inside
//! `profiled_calls` (count its instructions with `valgrind --tool=callgrind
//! --toggle-collect='*profiled_calls*'`). `KEYROT_BENCH_PROFILE=all` with a count runs
//! each job of the group in turn on the same key and token, under one function name each
//! (`profiled_job_0` raw, `_1` jsonwebtoken, `_2` keyrot: read their inclusive counts
//! with `callgrind_annotate --inclusive=yes`). Compare jobs within one run: counts of
//! different processes differ by up to about 1.5 %, since each run generates a new key
//! and the signature arithmetic is variable-time in it.

mod common;
mod jwt;
#[allow(dead_code, reason = "the harness's printing helpers are for other bench targets")]
mod paired;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::Ring;
use jwt::{Jwt, jwk_member};
use keyrot_core::Algorithm;
use paired::{Budget, Clock, Job};
use serde_json::{Map, Value};
use std::hint::black_box;
use std::time::Duration;

type Claims = Map<String, Value>;

/// The struct the `verify_as` groups read the claims of [`common::claims`] into.
#[derive(Debug, PartialEq, serde::Deserialize)]
struct Access {
    sub: String,
    iss: String,
    aud: String,
    iat: i64,
    exp: i64,
    scope: String,
}

/// Jobs are timed on the thread's CPU time: on the shared machine the process is often
/// descheduled, and wall time would count that against whichever job was running.
/// `KEYROT_BENCH_CLOCK=wall` times them on wall time instead.
fn clock() -> Clock {
    match std::env::var("KEYROT_BENCH_CLOCK").as_deref() {
        Ok("wall") => Clock::Wall,
        _ => Clock::ThreadCpu,
    }
}
type SignFn = Box<dyn Fn(&[u8])>;
type VerifyFn = Box<dyn Fn(&[u8], &[u8]) -> bool>;
type SignBytesFn = Box<dyn Fn(&[u8]) -> Vec<u8>>;

/// The crypto crate alone, on the ring's Active key: a sign and a verify of raw bytes.
struct Raw {
    sign: SignFn,
    verify: VerifyFn,
    /// Whether signing is deterministic (raw and keyrot then agree byte for byte).
    deterministic: bool,
    /// Signs like `sign`, returning the signature bytes (for the set-up checks only).
    sign_bytes: SignBytesFn,
}

fn raw(ring: &Ring) -> Raw {
    use rsa::pkcs8::DecodePrivateKey as _;
    use rsa::signature::{SignatureEncoding as _, Signer as _, Verifier as _};

    let secret = ring.key.to_secret_bytes().expect("secret bytes");
    match ring.key.algorithm() {
        Algorithm::EdDsa => {
            let seed: [u8; 32] = secret.expose().try_into().expect("Ed25519 seed is 32 bytes");
            let sk = ed25519_dalek::SigningKey::from_bytes(&seed);
            let vk = sk.verifying_key();
            assert_eq!(URL_SAFE_NO_PAD.encode(vk.as_bytes()), jwk_member(ring, "x"));
            let sk2 = sk.clone();
            Raw {
                sign: Box::new(move |m| {
                    black_box(ed25519_dalek::Signer::sign(&sk, m));
                }),
                verify: Box::new(move |m, s| {
                    ed25519_dalek::Signature::from_slice(s).is_ok_and(|sig| vk.verify_strict(m, &sig).is_ok())
                }),
                deterministic: true,
                sign_bytes: Box::new(move |m| ed25519_dalek::Signer::sign(&sk2, m).to_vec()),
            }
        }
        alg @ (Algorithm::Rs256 | Algorithm::Ps256) => {
            let private = rsa::PrivateKey::from_pkcs8_der(secret.expose()).expect("rsa parses PKCS#8");
            let public = private.to_public_key();
            if alg == Algorithm::Rs256 {
                let sk = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(private);
                let vk = rsa::pkcs1v15::VerifyingKey::<sha2::Sha256>::new(public);
                let sk2 = sk.clone();
                Raw {
                    sign: Box::new(move |m| {
                        black_box(sk.sign(m));
                    }),
                    verify: Box::new(move |m, s| {
                        rsa::pkcs1v15::Signature::try_from(s).is_ok_and(|sig| vk.verify(m, &sig).is_ok())
                    }),
                    deterministic: true,
                    sign_bytes: Box::new(move |m| sk2.sign(m).to_vec()),
                }
            } else {
                let sk = rsa::pss::SigningKey::<sha2::Sha256>::new(private);
                let vk = rsa::pss::VerifyingKey::<sha2::Sha256>::new(public);
                let sk2 = sk.clone();
                Raw {
                    sign: Box::new(move |m| {
                        black_box(sk.sign(m));
                    }),
                    verify: Box::new(move |m, s| {
                        rsa::pss::Signature::try_from(s).is_ok_and(|sig| vk.verify(m, &sig).is_ok())
                    }),
                    deterministic: false,
                    sign_bytes: Box::new(move |m| sk2.sign(m).to_vec()),
                }
            }
        }
        Algorithm::Es256 => {
            use p256::ecdsa::{Signature, SigningKey, signature::Signer as _, signature::Verifier as _};
            let sk = SigningKey::from_slice(secret.expose()).expect("P-256 scalar");
            let vk = *sk.verifying_key();
            assert_eq!(
                URL_SAFE_NO_PAD.encode(vk.to_sec1_point(false).x().expect("x")),
                jwk_member(ring, "x")
            );
            let sk2 = sk.clone();
            Raw {
                sign: Box::new(move |m| {
                    black_box::<Signature>(sk.sign(m));
                }),
                verify: Box::new(move |m, s| Signature::from_slice(s).is_ok_and(|sig| vk.verify(m, &sig).is_ok())),
                deterministic: true,
                sign_bytes: Box::new(move |m| {
                    let sig: Signature = sk2.sign(m);
                    sig.to_bytes().to_vec()
                }),
            }
        }
        Algorithm::Es384 => {
            use p384::ecdsa::{Signature, SigningKey, signature::Signer as _, signature::Verifier as _};
            let sk = SigningKey::from_slice(secret.expose()).expect("P-384 scalar");
            let vk = *sk.verifying_key();
            let sk2 = sk.clone();
            Raw {
                sign: Box::new(move |m| {
                    black_box::<Signature>(sk.sign(m));
                }),
                verify: Box::new(move |m, s| Signature::from_slice(s).is_ok_and(|sig| vk.verify(m, &sig).is_ok())),
                deterministic: true,
                sign_bytes: Box::new(move |m| {
                    let sig: Signature = sk2.sign(m);
                    sig.to_bytes().to_vec()
                }),
            }
        }
        other => panic!("no raw baseline for {other}"),
    }
}

/// Everything one algorithm's two groups need, checked to be the same key three ways.
struct Setup {
    ring: Ring,
    raw: Raw,
    jwt: Jwt,
    claims: Value,
    token: String,
    signing_input: String,
    signature: Vec<u8>,
}

fn setup(rt: &tokio::runtime::Runtime, alg: Algorithm) -> Setup {
    let ring = common::ring(rt, alg);
    let claims = common::claims();
    let token = ring.keyring.sign(&claims).expect("keyrot signs");
    let (signing_input, sig_b64) = token.rsplit_once('.').expect("compact token");
    let signature = URL_SAFE_NO_PAD.decode(sig_b64).expect("signature is base64url");
    let raw = raw(&ring);
    assert!(
        (raw.verify)(signing_input.as_bytes(), &signature),
        "raw verifies keyrot's token"
    );
    if raw.deterministic {
        assert_eq!(
            (raw.sign_bytes)(signing_input.as_bytes()),
            signature,
            "raw key is keyrot's key"
        );
    } else {
        let again = URL_SAFE_NO_PAD.encode((raw.sign_bytes)(signing_input.as_bytes()));
        ring.keyring
            .verify(&format!("{signing_input}.{again}"))
            .expect("keyrot verifies raw's signature");
    }
    let jwt = jwt::jwt(&ring);
    let decoded =
        jsonwebtoken::decode::<Claims>(&token, &jwt.decoding, &jwt.validation).expect("jsonwebtoken verifies");
    let verified = ring.keyring.verify(&token).expect("keyrot verifies");
    assert_eq!(decoded.claims, verified.claims, "same claims either way");
    let typed = ring
        .keyring
        .verify_as::<Access>(&token)
        .expect("keyrot verifies into a type");
    let decoded =
        jsonwebtoken::decode::<Access>(&token, &jwt.decoding, &jwt.validation).expect("jsonwebtoken verifies");
    assert_eq!(decoded.claims, typed.claims, "same typed claims either way");
    let theirs = jsonwebtoken::encode(&jwt.header, &claims, &jwt.encoding).expect("jsonwebtoken signs");
    ring.keyring
        .verify(&theirs)
        .expect("keyrot verifies jsonwebtoken's token");
    Setup {
        signing_input: signing_input.to_owned(),
        signature,
        ring,
        raw,
        jwt,
        claims,
        token,
    }
}

/// The three verify jobs, the three typed verify jobs, then the three sign jobs, each in
/// the order raw, jsonwebtoken, keyrot.
fn jobs(s: &Setup) -> [[Job<'_>; 3]; 3] {
    let msg = s.signing_input.as_bytes();
    let raw_verify = move || assert!((s.raw.verify)(black_box(msg), black_box(&s.signature)));
    let verify: [Job<'_>; 3] = [
        ("raw", Box::new(raw_verify)),
        (
            "jsonwebtoken",
            Box::new(move || {
                black_box(
                    jsonwebtoken::decode::<Claims>(black_box(&s.token), &s.jwt.decoding, &s.jwt.validation)
                        .expect("verifies"),
                );
            }),
        ),
        (
            "keyrot",
            Box::new(move || {
                black_box(s.ring.keyring.verify(black_box(&s.token)).expect("verifies"));
            }),
        ),
    ];
    let verify_as: [Job<'_>; 3] = [
        ("raw", Box::new(raw_verify)),
        (
            "jsonwebtoken",
            Box::new(move || {
                black_box(
                    jsonwebtoken::decode::<Access>(black_box(&s.token), &s.jwt.decoding, &s.jwt.validation)
                        .expect("verifies"),
                );
            }),
        ),
        (
            "keyrot",
            Box::new(move || {
                black_box(
                    s.ring
                        .keyring
                        .verify_as::<Access>(black_box(&s.token))
                        .expect("verifies"),
                );
            }),
        ),
    ];
    let sign: [Job<'_>; 3] = [
        ("raw", Box::new(move || (s.raw.sign)(black_box(msg)))),
        (
            "jsonwebtoken",
            Box::new(move || {
                black_box(jsonwebtoken::encode(&s.jwt.header, black_box(&s.claims), &s.jwt.encoding).expect("signs"));
            }),
        ),
        (
            "keyrot",
            Box::new(move || {
                black_box(s.ring.keyring.sign(black_box(&s.claims)).expect("signs"));
            }),
        ),
    ];
    [verify, verify_as, sign]
}

/// Runs `f` `n` times: the only frames a `--toggle-collect='*profiled_calls*'` callgrind
/// run counts.
#[inline(never)]
fn profiled_calls(f: &dyn Fn(), n: u64) {
    for _ in 0..n {
        f();
    }
}

/// A run of one job's calls under its own name.
type Profiled = fn(&dyn Fn(), u64);

/// [`profiled_calls`] under one name per job, so that one callgrind run on one key and
/// token tells the jobs apart (`callgrind_annotate --inclusive=yes`: `profiled_job_0`
/// raw, `_1` jsonwebtoken, `_2` keyrot).
#[inline(never)]
fn profiled_job_0(f: &dyn Fn(), n: u64) {
    // A body of its own, so that the linker does not fold the three into one.
    black_box(0u8);
    profiled_calls(f, n);
}
#[inline(never)]
fn profiled_job_1(f: &dyn Fn(), n: u64) {
    // A body of its own, so that the linker does not fold the three into one.
    black_box(1u8);
    profiled_calls(f, n);
}
#[inline(never)]
fn profiled_job_2(f: &dyn Fn(), n: u64) {
    // A body of its own, so that the linker does not fold the three into one.
    black_box(2u8);
    profiled_calls(f, n);
}

/// Runs one group and prints its line.
fn run_group(clock: Clock, name: &str, jobs: &[Job<'_>]) {
    let g = paired::run_group(clock, Budget::DEFAULT, jobs);
    println!(
        "{name:<13} keyrot/raw {:>6.3}  keyrot/jsonwebtoken {:>6.3}   raw {:>9.2} µs  jsonwebtoken {:>9.2} µs  keyrot {:>9.2} µs   ({} rounds × {})",
        g.ratio(2, 0),
        g.ratio(2, 1),
        g.median_of(0),
        g.median_of(1),
        g.median_of(2),
        g.rounds,
        g.iters,
    );
}

fn main() {
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let clock = clock();
    let profile = std::env::var("KEYROT_BENCH_PROFILE").ok();
    let calls: Option<u64> = std::env::var("KEYROT_BENCH_CALLS")
        .ok()
        .map(|n| n.parse().expect("a count"));
    let rt = common::runtime();
    println!(
        "raw / jsonwebtoken / keyrot in shuffled rounds: median of the per-round ratios, and of each job's time per call ({clock:?})"
    );
    let algorithms = [
        Algorithm::EdDsa,
        Algorithm::Rs256,
        Algorithm::Ps256,
        Algorithm::Es256,
        Algorithm::Es384,
    ];
    for alg in algorithms {
        let names = [
            format!("verify {alg}"),
            format!("verify_as {alg}"),
            format!("sign {alg}"),
        ];
        if let Some(f) = &filter
            && !names.iter().any(|n| n.contains(f.as_str()))
        {
            continue;
        }
        let s = setup(&rt, alg);
        for (name, group) in names.iter().zip(jobs(&s)) {
            if let Some(job) = &profile {
                // One job alone for a profiler: `KEYROT_BENCH_PROFILE=keyrot -- "verify EdDSA"`.
                if filter.as_ref().is_some_and(|f| name.contains(f.as_str())) {
                    if let Some(n) = calls {
                        if job == "all" {
                            // Every job of the group in turn, on the same key and token.
                            let by_job: [Profiled; 3] = [profiled_job_0, profiled_job_1, profiled_job_2];
                            for ((_, f), run) in group.iter().zip(by_job) {
                                run(f.as_ref(), n);
                            }
                        } else {
                            let (_, f) = group.iter().find(|(n, _)| n == job).expect("a job of the group");
                            profiled_calls(f, n);
                        }
                        continue;
                    }
                    let (_, f) = group.iter().find(|(n, _)| n == job).expect("a job of the group");
                    let start = std::time::Instant::now();
                    while start.elapsed() < Duration::from_secs(10) {
                        f();
                    }
                }
            } else if filter.as_ref().is_none_or(|f| name.contains(f.as_str())) {
                run_group(clock, name, &group);
            }
        }
    }
}
