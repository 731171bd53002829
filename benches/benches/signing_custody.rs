//! What a ring whose signing keys an HSM or a KMS holds costs per token.
//!
//! Such a ring is built with `KeyRingBuilder::with_signing_custody`, its keys are created
//! in the backend by the rotator (`Rotator::init`), and it signs through the backend with
//! `KeyRing::sign_async`. On components the bench starts itself and stops at the end (a
//! SoftHSM2 token in a fresh directory, through `Pkcs11Signing`; an OpenBao dev server on
//! loopback, through `TransitSigning`; see `backends/mod.rs`; a missing one is skipped with
//! one line), it measures:
//!
//! * **sign**, for EdDSA, ES256, ES384, RS256 and PS256: `sign_async` on a ring whose key is
//!   in this process (the baseline: on such a ring `sign_async` is the code of `sign`), on a
//!   second in-process ring (the A/A pair, the noise floor), on a SoftHSM2-held and on an
//!   OpenBao-held ring, every ring with a key of its own made by `Rotator::init`,
//!   interleaved in shuffled rounds (`paired/mod.rs`) on wall time: OpenBao works in another
//!   process and SoftHSM2 on a blocking thread, which the measuring thread's CPU time would
//!   not see. Reported: every ring's median time per call and the median of the per-round
//!   ratios ring / in-process.
//! * **throughput**, EdDSA and ES256: tokens per second from [`CALLERS`] concurrent
//!   callers of `sign_async` (tasks on a tokio runtime with two workers, each yielding after
//!   every token as a request handler would) for [`BURST`], each ring in turn, in
//!   [`BURST_ROUNDS`] rounds that rotate the order. Medians of tokens/s and of the
//!   per-round ratios ring / in-process.
//! * **verify**, EdDSA: `KeyRing::verify` of each ring's own tokens ([`VERIFIED`] of them
//!   in turn), paired, on the thread's CPU time (`KEYROT_BENCH_CLOCK=wall`: on wall time).
//!   A ring whose keys a backend holds verifies with the public keys it keeps, so its ratio
//!   should be at the A/A level.
//!
//! Run with `cargo bench -p keyrot-benches --bench signing_custody` (about a minute once
//! built); a word after `--` keeps only the rows whose name contains it (`-- EdDSA`,
//! `-- throughput`). The components are found like the keyrot-kms tests find them:
//! `KEYROT_TEST_SOFTHSM2_MODULE`, `KEYROT_TEST_BAO`, else PATH.
//!
//! SoftHSM2 reads `SOFTHSM2_CONF` from the process environment, which a process may not set
//! for itself without `unsafe`: the measurements run in one child process of the bench
//! binary, started with the environment of the components and nothing else.

mod backends;
mod common;
#[allow(dead_code, reason = "the harness's printing helpers are for other bench targets")]
mod paired;

use keyrot_core::custody::SigningCustody;
use keyrot_core::{
    Algorithm, KeyRing, MasterKey, MasterKeySealer, MemoryLock, MemoryStorage, Outcome, Policy, RequestContext,
    RingName, Rotator, SignError, Validation,
};
use keyrot_kms::pkcs11::Pkcs11Signing;
use keyrot_kms::vault::TransitSigning;
use paired::{Budget, Clock, Group, Job, time};
use serde_json::Value;
use std::cell::Cell;
use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;

/// Set in the measuring child process.
const CHILD: &str = "KEYROT_BENCH_SIGNING_CHILD";
/// The components, the variable that hands the child each one's signing-keys URI, and
/// the name its column has.
const COMPONENTS: [(&str, &str, &str); 2] = [
    ("pkcs11", "KEYROT_BENCH_SIGNING_PKCS11", "SoftHSM2"),
    ("vault-transit", "KEYROT_BENCH_SIGNING_TRANSIT", "OpenBao"),
];
const ALGORITHMS: [Algorithm; 5] = [
    Algorithm::EdDsa,
    Algorithm::Es256,
    Algorithm::Es384,
    Algorithm::Rs256,
    Algorithm::Ps256,
];
/// The throughput rows' algorithms.
const BURST_ALGORITHMS: [Algorithm; 2] = [Algorithm::EdDsa, Algorithm::Es256];
/// Concurrent `sign_async` callers of a throughput burst.
const CALLERS: usize = 16;
/// How long each burst lasts.
const BURST: Duration = Duration::from_secs(2);
/// Bursts per ring and algorithm.
const BURST_ROUNDS: usize = 3;
/// The verify row's algorithm.
const VERIFY_ALGORITHM: Algorithm = Algorithm::EdDsa;
/// Tokens each ring verifies in turn in the verify row.
const VERIFIED: usize = 64;
/// The in-process ring and its A/A twin, the first two columns of every row. The twin has
/// a key of its own, as every backend's ring has: Ed25519 verification and RSA signing take
/// a time that varies a little with the key, and the floor should include that.
const LOCAL: &str = "in-process";
const TWIN: &str = "in-process'";

/// The parent: starts the components, runs the child in their environment, stops them.
fn main() {
    if std::env::var_os(CHILD).is_some() {
        return measure();
    }
    let started = Instant::now();
    let mut env: BTreeMap<String, String> = ["PATH", "KEYROT_BENCH_CLOCK"]
        .into_iter()
        .filter_map(|k| Some((k.to_owned(), std::env::var(k).ok()?)))
        .collect();
    let mut running = Vec::new();
    for (name, var, _) in COMPONENTS {
        match backends::start(name) {
            Ok(backend) => {
                env.extend(backend.env.iter().cloned());
                let uri = backend.signing_uri.clone().expect("the component holds signing keys");
                env.insert(var.to_owned(), uri);
                running.push(backend);
            }
            Err(why) => println!("skipped {name}: {why}"),
        }
    }
    let status = std::process::Command::new(std::env::current_exe().expect("the bench binary"))
        .args(std::env::args_os().skip(1))
        .env_clear()
        .envs(&env)
        .env(CHILD, "1")
        .status()
        .expect("the measuring process runs");
    drop(running);
    assert!(status.success(), "the measuring process failed: {status}");
    println!("({:.0} s)", started.elapsed().as_secs_f64());
}

/// The rings of one algorithm, each with its column name and a key of its own: the
/// in-process ring, its A/A twin (another in-process ring), then one per backend.
struct Rings {
    alg: Algorithm,
    all: Vec<(&'static str, KeyRing)>,
}

/// The child: opens the backends, builds the rings, runs the rows the filter keeps.
fn measure() {
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let wanted = |row: &str| filter.as_ref().is_none_or(|f| row.contains(f.as_str()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let backends = rt.block_on(open_backends());
    let claims = common::claims();
    let mut built = Vec::new();
    println!(
        "sign_async, wall time: median per call; after each ring but the first, the median of the per-round ratios ring / {LOCAL} (after {TWIN}: the A/A floor)"
    );
    for alg in ALGORITHMS {
        let sign = format!("sign {alg}");
        let mut rows = vec![sign.clone()];
        if BURST_ALGORITHMS.contains(&alg) {
            rows.push(format!("throughput {alg}"));
        }
        if alg == VERIFY_ALGORITHM {
            rows.push(format!("verify {alg}"));
        }
        if !rows.iter().any(|r| wanted(r)) {
            continue;
        }
        let rings = rings(&rt, alg, &backends, &claims);
        if wanted(&sign) {
            let jobs = sign_jobs(&rt, &rings, &claims);
            let group = paired::run_group(Clock::Wall, Budget::DEFAULT, &jobs);
            print_row(&sign, &jobs, &group, built.is_empty());
        }
        built.push(rings);
    }
    println!();
    println!(
        "throughput: tokens/s from {CALLERS} concurrent sign_async callers for {} s, median of {BURST_ROUNDS} rounds; ratio to {LOCAL}",
        BURST.as_secs()
    );
    let mut header = true;
    for rings in built.iter().filter(|r| BURST_ALGORITHMS.contains(&r.alg)) {
        let row = format!("throughput {}", rings.alg);
        if wanted(&row) {
            throughput(&rt, &row, rings, &claims, header);
            header = false;
        }
    }
    println!();
    let clock = match std::env::var("KEYROT_BENCH_CLOCK").as_deref() {
        Ok("wall") => Clock::Wall,
        _ => Clock::ThreadCpu,
    };
    println!("verify, {clock:?}: each ring's own {VERIFIED} tokens in turn; ratios as above");
    for rings in built.iter().filter(|r| r.alg == VERIFY_ALGORITHM) {
        let row = format!("verify {}", rings.alg);
        if wanted(&row) {
            let tokens = own_tokens(&rt, rings, &claims);
            let jobs = verify_jobs(rings, &tokens);
            let group = paired::run_group(clock, Budget::DEFAULT, &jobs);
            print_row(&row, &jobs, &group, true);
        }
    }
}

/// The backends the parent started, opened from the URIs it handed down, each with its
/// column name.
async fn open_backends() -> Vec<(&'static str, Arc<dyn SigningCustody>)> {
    let mut open = Vec::new();
    for (name, var, column) in COMPONENTS {
        let Ok(uri) = std::env::var(var) else { continue };
        let custody: Arc<dyn SigningCustody> = match name {
            "pkcs11" => Arc::new(
                Pkcs11Signing::open(&uri)
                    .await
                    .unwrap_or_else(|e| panic!("{column}: {e}")),
            ),
            _ => Arc::new(
                TransitSigning::open(&uri)
                    .await
                    .unwrap_or_else(|e| panic!("{column}: {e}")),
            ),
        };
        open.push((column, custody));
    }
    open
}

/// A ring of `alg` named `name`, its first key made by `Rotator::init`: in this process, or
/// in `custody`.
fn ring(rt: &Runtime, name: &str, alg: Algorithm, custody: Option<&Arc<dyn SigningCustody>>) -> KeyRing {
    let policy = Policy::builder().with_algorithm(alg).build().expect("valid policy");
    let storage = Arc::new(MemoryStorage::new());
    let sealer =
        Arc::new(MasterKeySealer::new(MasterKey::generate("bench-mk").expect("master key"), []).expect("sealer"));
    let name = RingName::new(name).expect("ring name");
    let validation = Validation::new()
        .with_issuer(common::ISSUER)
        .with_audience(common::AUDIENCE);
    rt.block_on(async {
        let mut builder = KeyRing::builder(name.clone(), storage.clone(), sealer.clone())
            .with_policy(policy.clone())
            .with_validation(validation);
        if let Some(custody) = custody {
            builder = builder.with_signing_custody(Arc::clone(custody));
        }
        let keyring = builder.build().await.expect("keyring");
        let rotator = Rotator::builder(name.clone(), storage, Arc::new(MemoryLock::default()), sealer)
            .with_policy(policy)
            .with_keyring(keyring.clone())
            .build();
        let report = rotator
            .init(RequestContext::actor("bench"))
            .await
            .unwrap_or_else(|e| panic!("{name:?}: {e}"));
        assert_eq!(report.outcome, Outcome::Bootstrapped, "{name:?}: {report:?}");
        assert!(keyring.snapshot().active_kid().is_some(), "{name:?}: {report:?}");
        keyring
    })
}

/// Every ring of `alg`, checked: each signs a token it verifies, and a ring whose key a
/// backend holds refuses the synchronous `sign` (its key is not in this process).
fn rings(rt: &Runtime, alg: Algorithm, backends: &[(&'static str, Arc<dyn SigningCustody>)], claims: &Value) -> Rings {
    let slug = alg.as_str().to_ascii_lowercase();
    let mut all = vec![
        (LOCAL, ring(rt, &format!("bench-local-{slug}"), alg, None)),
        (TWIN, ring(rt, &format!("bench-twin-{slug}"), alg, None)),
    ];
    for &(column, ref custody) in backends {
        let name = format!("bench-{}-{slug}", column.to_ascii_lowercase());
        all.push((column, ring(rt, &name, alg, Some(custody))));
    }
    for (column, keyring) in &all {
        let token = rt
            .block_on(keyring.sign_async(claims))
            .unwrap_or_else(|e| panic!("{column} {alg}: {e}"));
        keyring
            .verify(&token)
            .unwrap_or_else(|e| panic!("{column} {alg}: its own token: {e}"));
        let remote = ![LOCAL, TWIN].contains(column);
        assert_eq!(
            matches!(keyring.sign(claims), Err(SignError::RemoteKey)),
            remote,
            "{column} {alg}: the key is held where the ring says"
        );
    }
    Rings { alg, all }
}

fn sign_jobs<'a>(rt: &'a Runtime, rings: &'a Rings, claims: &'a Value) -> Vec<Job<'a>> {
    rings
        .all
        .iter()
        .map(|&(column, ref keyring)| -> Job<'a> {
            let alg = rings.alg;
            (
                column,
                Box::new(move || {
                    let token = rt.block_on(keyring.sign_async(black_box(claims)));
                    black_box(token.unwrap_or_else(|e| panic!("{column} {alg}: {e}")));
                }),
            )
        })
        .collect()
}

/// [`VERIFIED`] tokens of each ring, signed by its own key, for claims that differ in `sub`.
fn own_tokens(rt: &Runtime, rings: &Rings, claims: &Value) -> Vec<Vec<String>> {
    let claims: Vec<Value> = (0..VERIFIED)
        .map(|i| {
            let mut c = claims.clone();
            c["sub"] = Value::from(format!("user-{i}"));
            c
        })
        .collect();
    rings
        .all
        .iter()
        .map(|(column, keyring)| {
            claims
                .iter()
                .map(|c| {
                    rt.block_on(keyring.sign_async(c))
                        .unwrap_or_else(|e| panic!("{column}: {e}"))
                })
                .collect()
        })
        .collect()
}

/// Each ring verifying its own tokens in turn: Ed25519 verification takes a time that
/// varies with the signature, which one token per ring would read as a difference between
/// the rings.
fn verify_jobs<'a>(rings: &'a Rings, tokens: &'a [Vec<String>]) -> Vec<Job<'a>> {
    rings
        .all
        .iter()
        .zip(tokens)
        .map(|(&(column, ref keyring), tokens)| -> Job<'a> {
            let next = Cell::new(0);
            (
                column,
                Box::new(move || {
                    let i = next.get();
                    next.set((i + 1) % tokens.len());
                    drop(black_box(keyring.verify(black_box(&tokens[i])).expect("verifies")));
                }),
            )
        })
        .collect()
}

/// `row`, then each job's median time per call and, after the first, its median per-round
/// ratio to the first. With `header`, the column names first.
fn print_row(row: &str, jobs: &[Job<'_>], group: &Group, header: bool) {
    if header {
        let mut line = format!("{:<16} {:>11}", "", jobs[0].0);
        for (name, _) in &jobs[1..] {
            line.push_str(&format!(" {name:>11} {:>7}", "ratio"));
        }
        println!("{line}");
    }
    let mut line = format!("{row:<16} {:>11}", time(group.median_of(0) * 1e-6));
    for j in 1..jobs.len() {
        line.push_str(&format!(
            " {:>11} {:>7.3}",
            time(group.median_of(j) * 1e-6),
            group.ratio(j, 0)
        ));
    }
    println!("{line}   ({} rounds × {})", group.rounds, group.iters);
}

/// Tokens per second from [`CALLERS`] tasks calling `sign_async` on `keyring` for [`BURST`].
async fn burst(keyring: &KeyRing, claims: &Arc<Value>) -> f64 {
    let started = Instant::now();
    let deadline = started + BURST;
    let callers: Vec<_> = (0..CALLERS)
        .map(|_| {
            let (keyring, claims) = (keyring.clone(), Arc::clone(claims));
            tokio::spawn(async move {
                let mut signed = 0u64;
                while Instant::now() < deadline {
                    let token = keyring.sign_async(&*claims).await;
                    black_box(token.unwrap_or_else(|e| panic!("a throughput caller: {e}")));
                    signed += 1;
                    // One token per request: the handler returns and the runtime moves on.
                    tokio::task::yield_now().await;
                }
                signed
            })
        })
        .collect();
    let mut signed = 0u64;
    for caller in callers {
        signed += caller.await.expect("a caller finishes");
    }
    signed as f64 / started.elapsed().as_secs_f64()
}

/// The throughput row of `rings` (without the A/A twin): every ring's bursts, the order
/// rotated each round, then the medians; with `header`, the column names first.
fn throughput(rt: &Runtime, row: &str, rings: &Rings, claims: &Value, header: bool) {
    let measured: Vec<&(&'static str, KeyRing)> = rings.all.iter().filter(|(c, _)| *c != TWIN).collect();
    let claims = Arc::new(claims.clone());
    let mut per_round = Vec::with_capacity(BURST_ROUNDS);
    for round in 0..BURST_ROUNDS {
        let mut rates = vec![0.0; measured.len()];
        for k in 0..measured.len() {
            let j = (round + k) % measured.len();
            rates[j] = rt.block_on(burst(&measured[j].1, &claims));
        }
        per_round.push(rates);
    }
    if header {
        let mut line = format!("{:<16} {:>11}", "", measured[0].0);
        for (column, _) in &measured[1..] {
            line.push_str(&format!(" {column:>11} {:>7}", "ratio"));
        }
        println!("{line}");
    }
    let rate = |j: usize| {
        let mut rates: Vec<f64> = per_round.iter().map(|r| r[j]).collect();
        format!("{:.0}/s", paired::median(&mut rates))
    };
    let mut line = format!("{row:<16} {:>11}", rate(0));
    for j in 1..measured.len() {
        line.push_str(&format!(
            " {:>11} {:>7.3}",
            rate(j),
            paired::median_ratio(&per_round, j, 0)
        ));
    }
    println!("{line}");
}
