//! What ring integrity costs, measured paired: the functions are interleaved in shuffled
//! rounds on the same ring, and each is reported as the median over rounds (this shared
//! VM's speed drifts, so only interleaved figures compare).
//!
//! * `snapshot_build`: `Snapshot::build` of a ring of 10 published keys (parses every
//!   key, unseals the Active one, checks the manifest and every row);
//! * `check_ring`: the integrity check alone — the time integrity added to a snapshot
//!   build;
//! * `seal_manifest` + `audit_link`: what integrity adds to a commit (the manifest MAC
//!   over the whole ring, and the audit chain MAC of one record).
//!
//! No cost lands on the per-token path: a validity window is one comparison.
//!
//! Run with `cargo bench -p keyrot-benches --bench integrity`.

mod paired;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{TimeDelta, TimeZone, Utc};
use keyrot_core::{AuditLinker, AuditQuery};
use keyrot_core::{
    Clock, KeyRing, ManualClock, MasterKey, MasterKeySealer, MemoryLock, MemoryStorage, Policy, RequestContext,
    RingName, Rotator, Snapshot, Storage,
};
use keyrot_core::{SealerLinker, check_ring, testing::seal_manifest};
use paired::Job;
use std::hint::black_box;
use std::sync::Arc;

const ROUNDS: usize = 200;
const ITERS: usize = 50;

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).single().expect("time"));
    let storage = Arc::new(MemoryStorage::new());
    let sealer = Arc::new(MasterKeySealer::new(MasterKey::generate("mk").expect("mk"), []).expect("sealer"));
    let ring_name = RingName::new("bench").expect("ring");
    let (ring, audit) = rt.block_on(async {
        let keyring = KeyRing::builder(ring_name.clone(), storage.clone(), sealer.clone())
            .with_clock(Arc::new(clock.clone()))
            .build()
            .await
            .expect("keyring");
        let rotator = Rotator::builder(
            ring_name.clone(),
            storage.clone(),
            Arc::new(MemoryLock::new(Arc::new(clock.clone()))),
            sealer.clone(),
        )
        .with_clock(Arc::new(clock.clone()))
        .with_keyring(keyring)
        .build();
        rotator.init(RequestContext::actor("bench")).await.expect("init");
        for i in 0..9 {
            clock.advance(TimeDelta::hours(2));
            rotator
                .force_rotate(RequestContext::actor("bench"), format!("r{i}"), false)
                .await
                .expect("force");
        }
        let ring = storage.load(&ring_name).await.expect("load");
        let audit = storage
            .audit_log(&ring_name, AuditQuery { limit: 1 })
            .await
            .expect("audit");
        (ring, audit)
    });
    assert_eq!(ring.published().count(), 10);
    let record = audit.first().expect("a record").clone();
    let linker = SealerLinker::new(sealer.clone());
    let policy = Policy::default();
    let now = clock.now();
    // The per-token path, beside the raw signature check it wraps: the validity window is
    // checked there now, so its cost shows in this ratio.
    let keyring = rt.block_on(async {
        KeyRing::builder(ring_name.clone(), storage.clone(), sealer.clone())
            .with_clock(Arc::new(clock.clone()))
            .build()
            .await
            .expect("keyring")
    });
    let token = keyring
        .sign(&serde_json::json!({"sub": "bench", "exp": now.timestamp() + 600}))
        .expect("sign");
    let active = ring.active().expect("active");
    let jwk: serde_json::Value = serde_json::from_str(&active.public_jwk).expect("jwk");
    let x = URL_SAFE_NO_PAD
        .decode(jwk["x"].as_str().expect("x"))
        .expect("base64url");
    let raw_key = ed25519_dalek::VerifyingKey::from_bytes(&x.try_into().expect("32 bytes")).expect("key");
    let (signing_input, sig) = token.rsplit_once('.').expect("three segments");
    let sig = ed25519_dalek::Signature::from_slice(&URL_SAFE_NO_PAD.decode(sig).expect("sig")).expect("sig");

    let jobs: Vec<Job<'_>> = vec![
        (
            "snapshot_build",
            Box::new(|| {
                black_box(Snapshot::build(black_box(&ring), &policy, &*sealer, now).expect("build"));
            }),
        ),
        (
            "check_ring",
            Box::new(|| {
                black_box(check_ring(black_box(&ring), &*sealer));
            }),
        ),
        (
            "seal_manifest",
            Box::new(|| {
                black_box(seal_manifest(black_box(&ring), &*sealer, "audit-id").expect("manifest"));
            }),
        ),
        (
            "verify_raw",
            Box::new(|| {
                black_box(raw_key.verify_strict(black_box(signing_input.as_bytes()), &sig)).expect("raw verify");
            }),
        ),
        (
            "verify_keyrot",
            Box::new(|| {
                black_box(keyring.verify(black_box(&token))).expect("verify");
            }),
        ),
        (
            "audit_link",
            Box::new(|| {
                black_box(linker.link(black_box(&record), 7, Some("prev")).expect("link"));
            }),
        ),
    ];
    let per_round = paired::rounds(&jobs, ROUNDS, ITERS);
    println!("integrity costs, median of {ROUNDS} shuffled rounds of {ITERS} calls (10 published keys):");
    paired::print_medians(&jobs, &per_round);
    println!(
        "  check_ring / snapshot_build, median per-round ratio: {:.3}",
        paired::median_ratio(&per_round, 1, 0)
    );
    println!(
        "  verify_keyrot / verify_raw, median per-round ratio: {:.3}",
        paired::median_ratio(&per_round, 4, 3)
    );
}
