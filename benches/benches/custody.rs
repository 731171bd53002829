//! What keeping the master keys in an HSM or a KMS costs (issue 23).
//!
//! **Start-up.** An instance under custody builds its sealer by unwrapping every stored
//! master key (`CustodySealer::open`, i.e. `CustodyKeys::sealer`); one configured by
//! `KEYROT_MASTER_KEY` parses it (`MasterKeySealer::from_spec`, the baseline). For each
//! backend, on a component the bench starts itself and stops at the end (a SoftHSM2 token
//! in a fresh directory, an OpenBao dev server, a moto_server; see `backends/mod.rs`; a
//! missing one is skipped with one line), it reports the median and p90 wall time over
//! [`REPS`] repetitions of:
//!
//! * `unwrap`: one `KeyCustody::unwrap` of a stored master key;
//! * `sealer 1` / `sealer 4`: `CustodySealer::open` over a store holding 1 or 4 wrapped
//!   master keys (the store is `MemoryStorage`: the database read is not measured);
//! * `per key`: (`sealer 4` − `sealer 1`) / 3, what each further stored master key adds;
//! * `open`: `keyrot_kms::from_uri`, once per process (module load and login for PKCS#11,
//!   `lookup-self` for Transit, configuration and a credential check for AWS), over
//!   [`OPENS`] processes.
//!
//! `soft` is the same on `keyrot_core::testing::SoftCustody`, a KEK in this process: what
//! keyrot itself adds around the backend's calls.
//!
//! **Per token.** The sealer is not on the token path: `KeyRing::sign` and `KeyRing::verify`
//! (EdDSA) on a ring sealed by a `MasterKeySealer` and on one sealed by a `CustodySealer`
//! (over `SoftCustody`), same key, run interleaved in shuffled rounds (`paired/mod.rs`) with a
//! second `MasterKeySealer` ring as an A/A pair: the median of the per-round ratios
//! custody/master should be as close to 1 as the A/A one. Timed on the thread's CPU time
//! (`KEYROT_BENCH_CLOCK=wall`: on wall time).
//!
//! Run with `cargo bench -p keyrot-benches --features aws --bench custody` (about ten
//! seconds once built; without `--features aws` the AWS SDK is not built and the aws-kms
//! row is skipped). The components are found like the keyrot-kms tests find them:
//! `KEYROT_TEST_SOFTHSM2_MODULE`, `KEYROT_TEST_BAO`, `KEYROT_TEST_MOTO_SERVER`, else PATH.

mod backends;
mod common;
#[allow(dead_code, reason = "the harness's printing helpers are for other bench targets")]
mod paired;

use keyrot_core::custody::{CustodyKeys, CustodySealer, KeyCustody};
use keyrot_core::testing::SoftCustody;
use keyrot_core::{
    Algorithm, ImportState, ImportedKey, KeyRing, MasterKey, MasterKeySealer, MemoryLock, MemoryStorage, Policy,
    PrivateKey, RequestContext, RingName, Rotator, RsaBits, Sealer, Validation,
};
use paired::{Budget, Clock, Job, time};
use std::collections::HashMap;
use std::future::Future;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

/// Repetitions of each start-up measurement.
const REPS: usize = 30;
/// Repetitions before those, not counted (connections, caches, the allocator).
const WARM: usize = 3;
/// Processes each timing one cold `from_uri`.
const OPENS: usize = 10;
/// Set in a child process: `open` or `sealer`.
const CHILD: &str = "KEYROT_BENCH_CUSTODY_CHILD";
/// The custody URI a child opens.
const CHILD_URI: &str = "KEYROT_BENCH_CUSTODY_URI";

/// Start-up samples by name (`open`, `unwrap`, `sealer1`, `sealer4`), in seconds.
type Samples = HashMap<String, Vec<f64>>;

async fn timed<T>(f: impl Future<Output = T>) -> (T, f64) {
    let start = Instant::now();
    let out = f.await;
    (out, start.elapsed().as_secs_f64())
}

/// Unwraps and sealers over 1 and 4 stored master keys, interleaved (the first job of
/// a round rotates), on a KEK `ensure_kek` creates when missing.
async fn measure(custody: Arc<dyn KeyCustody>) -> Samples {
    custody.ensure_kek().await.expect("the KEK");
    let one = CustodyKeys::new(Arc::clone(&custody), Arc::new(MemoryStorage::new()));
    let stored = one.create().await.expect("a master key under custody");
    let four = CustodyKeys::new(Arc::clone(&custody), Arc::new(MemoryStorage::new()));
    for _ in 0..4 {
        four.create().await.expect("a master key under custody");
    }
    let newest = four.list().await.expect("the stored keys");
    assert_eq!(newest.len(), 4);
    let newest = newest.last().expect("four keys").id.clone();
    let mut samples = Samples::new();
    for round in 0..WARM + REPS {
        for k in 0..3 {
            let (name, secs) = match (round + k) % 3 {
                0 => {
                    let (key, secs) = timed(custody.unwrap(&stored.id, &stored.wrapped)).await;
                    assert_eq!(key.expect("unwraps").len(), 32);
                    ("unwrap", secs)
                }
                1 => {
                    let (sealer, secs) = timed(CustodySealer::open(one.clone(), false)).await;
                    assert_eq!(sealer.expect("a sealer").primary_key_id(), stored.id);
                    ("sealer1", secs)
                }
                _ => {
                    let (sealer, secs) = timed(CustodySealer::open(four.clone(), false)).await;
                    assert_eq!(sealer.expect("a sealer").primary_key_id(), newest);
                    ("sealer4", secs)
                }
            };
            if round >= WARM {
                samples.entry(name.to_owned()).or_default().push(secs);
            }
        }
    }
    samples
}

/// A child process: times one cold `from_uri`, or [`measure`]s, and prints its samples.
fn child(mode: &str) {
    let uri = std::env::var(CHILD_URI).expect("the parent names the URI");
    common::runtime().block_on(async {
        let (custody, open) = timed(keyrot_kms::from_uri(&uri)).await;
        let custody = custody.unwrap_or_else(|e| panic!("from_uri: {e}"));
        let samples = if mode == "open" {
            Samples::from([("open".to_owned(), vec![open])])
        } else {
            measure(custody).await
        };
        for (name, v) in samples {
            let v: Vec<String> = v.iter().map(f64::to_string).collect();
            println!("{name} {}", v.join(" "));
        }
    });
}

/// Runs a child process on `backend`'s component and collects what it printed.
fn in_child(backend: &backends::Backend, mode: &str, into: &mut Samples) {
    let exe = std::env::current_exe().expect("the bench binary");
    let out = std::process::Command::new(exe)
        .env_clear()
        .envs(backend.env.iter().map(|(k, v)| (k, v)))
        .env(CHILD, mode)
        .env(CHILD_URI, &backend.uri)
        .output()
        .expect("the child runs");
    assert!(
        out.status.success(),
        "{} ({mode}) failed: {}",
        backend.name,
        String::from_utf8_lossy(&out.stderr)
    );
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut words = line.split_whitespace();
        let Some(name) = words.next() else { continue };
        let v = words.map(|w| w.parse::<f64>().expect("a sample"));
        into.entry(name.to_owned()).or_default().extend(v);
    }
}

/// The configuration baseline: `MasterKeySealer::from_spec` on 1 and 4 keys.
fn baseline() -> Samples {
    let spec = |n: usize| {
        let keys: Vec<String> = (0..n)
            .map(|i| {
                let key = MasterKey::generate(format!("mk-{i}")).expect("a master key");
                String::from_utf8(key.to_spec().expose().to_vec()).expect("ASCII")
            })
            .collect();
        keys.join(",")
    };
    let specs = [("sealer1", spec(1)), ("sealer4", spec(4))];
    let mut samples = Samples::new();
    for round in 0..WARM + REPS {
        for k in 0..2 {
            let (name, spec) = &specs[(round + k) % 2];
            let start = Instant::now();
            black_box(MasterKeySealer::from_spec(black_box(spec)).expect("parses"));
            let secs = start.elapsed().as_secs_f64();
            if round >= WARM {
                samples.entry((*name).to_owned()).or_default().push(secs);
            }
        }
    }
    samples
}

/// Median and p90 (nearest rank) of `v`.
fn quantiles(v: &[f64]) -> (f64, f64) {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let p90 = v[(v.len() * 9).div_ceil(10) - 1];
    (v[v.len() / 2], p90)
}

fn cell(samples: &Samples, name: &str) -> String {
    samples.get(name).map_or_else(
        || "—".to_owned(),
        |v| {
            let (median, p90) = quantiles(v);
            format!("{} / {}", time(median), time(p90))
        },
    )
}

fn row(backend: &str, s: &Samples) {
    let median = |n: &str| s.get(n).map(|v| quantiles(v).0);
    let per_key = match (median("sealer1"), median("sealer4")) {
        (Some(one), Some(four)) => time((four - one) / 3.0),
        _ => "—".to_owned(),
    };
    println!(
        "{backend:<13} {:>21} {:>21} {:>21} {:>21} {per_key:>10}",
        cell(s, "open"),
        cell(s, "unwrap"),
        cell(s, "sealer1"),
        cell(s, "sealer4"),
    );
}

fn start_up(rt: &tokio::runtime::Runtime) {
    println!("start-up, wall time, median / p90 of {REPS} (open: of {OPENS} processes, the first from_uri of each)");
    println!(
        "{:<13} {:>21} {:>21} {:>21} {:>21} {:>10}",
        "backend", "open", "unwrap", "sealer 1 key", "sealer 4 keys", "per key"
    );
    row("from_spec", &baseline());
    let soft: Arc<dyn KeyCustody> = Arc::new(SoftCustody::new("bench-kek"));
    row("soft", &rt.block_on(measure(soft)));
    backends::each(|backend| {
        let mut samples = Samples::new();
        in_child(backend, "sealer", &mut samples);
        for _ in 0..OPENS {
            in_child(backend, "open", &mut samples);
        }
        row(backend.name, &samples);
    });
}

/// A ring whose Active key is `key`, sealed by `sealer`.
fn ring(rt: &tokio::runtime::Runtime, name: &str, key: &PrivateKey, sealer: Arc<dyn Sealer>) -> KeyRing {
    let policy = Policy::builder()
        .with_algorithm(Algorithm::EdDsa)
        .build()
        .expect("valid policy");
    let storage = Arc::new(MemoryStorage::new());
    let name = RingName::new(name).expect("ring name");
    let validation = Validation::new()
        .with_issuer(common::ISSUER)
        .with_audience(common::AUDIENCE);
    rt.block_on(async {
        let keyring = KeyRing::builder(name.clone(), storage.clone(), Arc::clone(&sealer))
            .with_policy(policy.clone())
            .with_validation(validation)
            .build()
            .await
            .expect("keyring");
        let rotator = Rotator::builder(name, storage, Arc::new(MemoryLock::default()), sealer)
            .with_policy(policy)
            .with_keyring(keyring.clone())
            .build();
        let imported = ImportedKey {
            key: key.clone(),
            kid: None,
        };
        rotator
            .import(RequestContext::actor("bench"), imported, ImportState::Active)
            .await
            .expect("import");
        keyring
    })
}

/// Runs one group and prints its line.
fn run_group(clock: Clock, name: &str, jobs: &[Job<'_>]) {
    let g = paired::run_group(clock, Budget::DEFAULT, jobs);
    println!(
        "{name:<7} custody/master {:>6.3}   A/A {:>6.3}   master {:>7.2} µs  custody {:>7.2} µs  master' {:>7.2} µs   ({} rounds × {})",
        g.ratio(1, 0),
        g.ratio(2, 0),
        g.median_of(0),
        g.median_of(1),
        g.median_of(2),
        g.rounds,
        g.iters,
    );
}

fn per_token(rt: &tokio::runtime::Runtime) {
    let clock = match std::env::var("KEYROT_BENCH_CLOCK").as_deref() {
        Ok("wall") => Clock::Wall,
        _ => Clock::ThreadCpu,
    };
    let key = PrivateKey::generate(Algorithm::EdDsa, RsaBits::B2048).expect("key generation");
    let master =
        || Arc::new(MasterKeySealer::new(MasterKey::generate("bench-mk").expect("master key"), []).expect("sealer"));
    let custody_keys = CustodyKeys::new(Arc::new(SoftCustody::new("bench-kek")), Arc::new(MemoryStorage::new()));
    let custody = rt
        .block_on(CustodySealer::open(custody_keys, true))
        .expect("a custody sealer");
    let rings = [
        ring(rt, "bench-master", &key, master()),
        ring(rt, "bench-custody", &key, custody),
        ring(rt, "bench-master-again", &key, master()),
    ];
    let claims = common::claims();
    let token = rings[0].sign(&claims).expect("signs");
    for r in &rings {
        assert_eq!(
            r.sign(&claims).expect("signs"),
            token,
            "the same key signs the same token"
        );
        r.verify(&token).expect("verifies");
    }
    println!(
        "per token, EdDSA, {clock:?}: jobs interleaved in shuffled rounds, medians of the per-round ratios and of the times per call"
    );
    let sign: Vec<Job<'_>> = ["master", "custody", "master'"]
        .into_iter()
        .zip(&rings)
        .map(|(name, r)| -> Job<'_> {
            let claims = &claims;
            (
                name,
                Box::new(move || drop(black_box(r.sign(black_box(claims)).expect("signs")))),
            )
        })
        .collect();
    run_group(clock, "sign", &sign);
    let verify: Vec<Job<'_>> = ["master", "custody", "master'"]
        .into_iter()
        .zip(&rings)
        .map(|(name, r)| -> Job<'_> {
            let token = &token;
            (
                name,
                Box::new(move || drop(black_box(r.verify(black_box(token)).expect("verifies")))),
            )
        })
        .collect();
    run_group(clock, "verify", &verify);
}

fn main() {
    if let Ok(mode) = std::env::var(CHILD) {
        return child(&mode);
    }
    let started = Instant::now();
    let rt = common::runtime();
    start_up(&rt);
    println!();
    per_token(&rt);
    println!("({:.0} s)", started.elapsed().as_secs_f64());
}
