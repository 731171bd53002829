//! Race: 16 instances, each with its own connection pool, force a rotation of the same
//! ring at the same moment, round after round. Every round exactly one new key appears,
//! exactly one key is Active, and every attempt is in the audit ledger. Then the same 16
//! commit on one generation without the lock: the compare-and-swap alone lets one through.
//! And at scale: 4 ring managers, each with its own pool, onboard the same 40 rings at
//! once and then work them when all 40 fall due at the same moment: every transition of
//! every ring is made exactly once.

mod common;

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use common::{MySqlTest, PgTest, SqliteFile, ring, sealer};
use keyrot_core::SealerLinker;
use keyrot_core::conformance::{sample_audit, sample_key};
use keyrot_core::{
    Algorithm, AuditQuery, Clock, Commit, CommitOutcome, KeyState, Lock, ManagerConfig, ManualClock, MasterKeySealer,
    Outcome, Policy, RequestContext, RingManager, RingName, RingStorage, Rotator,
};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Barrier;
use tokio::task::JoinSet;

const INSTANCES: usize = 16;
const ROUNDS: usize = 100;
/// Rounds of the symmetric rings' race (each backend runs the signing ring's 100 too).
const SYMMETRIC_ROUNDS: usize = 25;

fn t0() -> DateTime<Utc> {
    Utc.timestamp_millis_opt(1_767_225_600_123)
        .single()
        .expect("valid time")
}

type Instance = (Arc<dyn RingStorage>, Arc<dyn Lock>);

/// The race of `rounds` rounds on a ring of `alg` keys (a signing, MAC or AEAD ring).
async fn race(name: &str, instances: Vec<Instance>, alg: Algorithm, rounds: usize) {
    assert_eq!(instances.len(), INSTANCES);
    let started = Instant::now();
    let r = ring("race");
    let clock = ManualClock::new(t0());
    let sealer = sealer();
    let rotators: Vec<Rotator> = instances
        .iter()
        .enumerate()
        .map(|(i, (storage, lock))| {
            Rotator::builder(r.clone(), storage.clone(), lock.clone(), sealer.clone())
                .with_clock(Arc::new(clock.clone()))
                .with_policy(Policy::builder().with_algorithm(alg).build().expect("policy"))
                .with_instance(format!("instance-{i}"))
                .build()
        })
        .collect();
    let check = instances[0].0.clone();
    let boot = rotators[0].init(RequestContext::actor("race")).await.expect("init");
    assert_eq!(boot.outcome, Outcome::Bootstrapped);

    let mut tally: std::collections::BTreeMap<&'static str, usize> = Default::default();
    for round in 0..rounds {
        // Past forced_min_interval (1 h): exactly one forced rotation is due.
        clock.advance(TimeDelta::minutes(61));
        let now = clock.now();
        let barrier = Arc::new(Barrier::new(INSTANCES));
        let mut set = JoinSet::new();
        for rot in rotators.clone() {
            let barrier = barrier.clone();
            set.spawn(async move {
                barrier.wait().await;
                rot.force_rotate(RequestContext::actor("race"), "race drill", false)
                    .await
            });
        }
        let reports: Vec<_> = set.join_all().await;
        let mut rotated = Vec::new();
        for rep in &reports {
            let rep = rep.as_ref().expect("no attempt fails");
            *tally.entry(rep.outcome.as_str()).or_default() += 1;
            match rep.outcome {
                Outcome::Rotated => rotated.push(rep.new_kid.clone().expect("rotated report names the new kid")),
                Outcome::LockBusy | Outcome::LostRace | Outcome::RateLimited => {}
                other => panic!("{name} round {round}: unexpected outcome {other:?}: {rep:?}"),
            }
        }
        assert_eq!(
            rotated.len(),
            1,
            "{name} round {round}: exactly one of {INSTANCES} rotates: {reports:?}"
        );

        let loaded = check.load(&r).await.expect("load");
        assert!(
            loaded.keys.iter().all(|k| k.alg == alg),
            "{name}: every key is a {alg} key"
        );
        let active: Vec<_> = loaded.in_state(KeyState::Active).collect();
        assert_eq!(active.len(), 1, "{name} round {round}: exactly one Active key");
        assert_eq!(
            Some(&active[0].kid),
            rotated.first(),
            "{name} round {round}: the winner's key is Active"
        );
        assert_eq!(
            loaded.keys.len(),
            round + 2,
            "{name} round {round}: exactly one new key per round"
        );
        assert_eq!(
            loaded.generation,
            round as u64 + 2,
            "{name} round {round}: one commit per round"
        );

        // Every attempt of this round is audited, and nothing else was.
        let audit = check
            .audit_log(&r, AuditQuery { limit: INSTANCES + 1 })
            .await
            .expect("audit");
        assert_eq!(audit.len(), INSTANCES + 1);
        assert!(
            audit[..INSTANCES].iter().all(|a| a.at == now),
            "{name} round {round}: 16 records of this round"
        );
        assert!(
            audit[INSTANCES].at < now,
            "{name} round {round}: no more than 16 records this round"
        );
        assert_eq!(
            audit[..INSTANCES]
                .iter()
                .filter(|a| a.outcome == Outcome::Rotated)
                .count(),
            1
        );
    }
    cas_race(name, &instances, sealer.clone()).await;
    let total = check.audit_log(&r, AuditQuery { limit: 100_000 }).await.expect("audit");
    assert_eq!(
        total.len(),
        1 + INSTANCES * rounds,
        "{name}: the bootstrap and every attempt are audited"
    );
    // 16 instances appending at once still build one contiguous chain.
    let chain = rotators[0]
        .verify_audit_chain()
        .await
        .expect("read the ledger")
        .expect("the chain is intact");
    assert_eq!(chain.records, 1 + INSTANCES * rounds, "{name}: every record is chained");
    assert_eq!(tally.get("rotated"), Some(&rounds));
    println!(
        "{name} ({alg}): {rounds} rounds x {INSTANCES} instances in {:.1} s ({:.1} ms per round); outcomes {tally:?}",
        started.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64() * 1000.0 / rounds as f64
    );
}

/// Without the lock: 16 instances commit on the same generation at once; the
/// compare-and-swap alone lets exactly one through, every round.
async fn cas_race(name: &str, instances: &[Instance], sealer: Arc<MasterKeySealer>) {
    let r = ring("cas-race");
    let linker = Arc::new(SealerLinker::new(sealer.clone()));
    for round in 0..20u64 {
        let barrier = Arc::new(Barrier::new(INSTANCES));
        let mut set = JoinSet::new();
        for (storage, _) in instances {
            let (storage, barrier, r) = (storage.clone(), barrier.clone(), r.clone());
            let commit = Commit {
                ring: r.clone(),
                expected_generation: round,
                keys: vec![sample_key(r.as_str(), KeyState::Pending, t0())],
                audit: sample_audit(r.as_str(), t0(), round + 1, Outcome::Rotated),
                idempotency: None,
                manifest: format!("manifest {round}"),
                next_due: None,
            };
            let linker = linker.clone();
            set.spawn(async move {
                barrier.wait().await;
                storage.commit(&commit, &*linker).await
            });
        }
        let results = set.join_all().await;
        let won = results
            .iter()
            .filter(|x| matches!(x, Ok(CommitOutcome::Committed)))
            .count();
        let lost = results
            .iter()
            .filter(|x| matches!(x, Ok(CommitOutcome::Conflict { current }) if *current == round + 1))
            .count();
        assert_eq!((won, lost), (1, INSTANCES - 1), "{name} CAS round {round}: {results:?}");
    }
    let loaded = instances[0].0.load(&r).await.expect("load");
    assert_eq!(
        (loaded.generation, loaded.keys.len()),
        (20, 20),
        "{name}: only the winners' keys were written"
    );
    assert_eq!(
        loaded.manifest.as_deref(),
        Some("manifest 19"),
        "{name}: the last winner's manifest"
    );
    let ledger = instances[0]
        .0
        .audit_log(&r, AuditQuery { limit: usize::MAX })
        .await
        .expect("audit");
    let chain = keyrot_core::verify_chain(&ledger, &*sealer).expect("the winners' records form one chain");
    assert_eq!(chain.records, 20, "{name}: only the winners' records were appended");
}

const MANAGERS: usize = 4;
const RINGS: usize = 40;

/// Every manager onboards every ring, behind a barrier; then, twice, every ring falls
/// due at once and every manager runs its pass at the same moment.
async fn manager_race(name: &str, instances: Vec<Instance>) {
    assert_eq!(instances.len(), MANAGERS);
    let started = Instant::now();
    let clock = ManualClock::new(t0());
    let sealer = sealer();
    // One ring at a time per manager: a tick holds the lock's connection while it commits.
    let config = ManagerConfig {
        concurrency: 1,
        ..ManagerConfig::default()
    };
    let managers: Vec<RingManager> = instances
        .iter()
        .enumerate()
        .map(|(i, (storage, lock))| {
            RingManager::builder(storage.clone(), lock.clone(), sealer.clone())
                .with_clock(Arc::new(clock.clone()))
                .with_instance(format!("manager-{i}"))
                .with_config(config)
                .build()
        })
        .collect();
    let rings: Vec<RingName> = (0..RINGS).map(|i| ring(&format!("tenant-{i:03}"))).collect();
    let barrier = Arc::new(Barrier::new(MANAGERS));
    let mut set = JoinSet::new();
    for m in managers.clone() {
        let (barrier, rings) = (barrier.clone(), rings.clone());
        set.spawn(async move {
            barrier.wait().await;
            for r in &rings {
                m.onboard(r, RequestContext::actor("race")).await.expect("onboard");
            }
        });
    }
    set.join_all().await;
    let policy = managers[0].policy(&rings[0]);
    let mut changed = 0;
    for step in [
        policy.rotation_interval() - policy.publish_lead(),
        policy.publish_lead(),
    ] {
        clock.advance(step);
        let barrier = Arc::new(Barrier::new(MANAGERS));
        let mut set = JoinSet::new();
        for m in managers.clone() {
            let barrier = barrier.clone();
            set.spawn(async move {
                barrier.wait().await;
                m.run_due().await
            });
        }
        for pass in set.join_all().await {
            assert_eq!((pass.failed, pass.index_errors), (0, 0), "{name}: {pass:?}");
            changed += pass.changed;
        }
    }
    assert_eq!(changed, 2 * RINGS, "{name}: every due transition made once");
    let check = &instances[0].0;
    for r in &rings {
        let audit = check.audit_log(r, AuditQuery { limit: 1000 }).await.expect("audit");
        let committed = keyrot_core::AuditRecord::committed_changes(&audit);
        assert_eq!(
            committed,
            [
                (1, Outcome::Bootstrapped),
                (2, Outcome::Scheduled),
                (3, Outcome::Rotated)
            ],
            "{name} {r}: each transition exactly once"
        );
        assert_eq!(check.generation(r).await.expect("generation"), 3);
    }
    assert!(
        check.due_rings(clock.now(), 10).await.expect("due").is_empty(),
        "{name}: nothing is left due"
    );
    println!(
        "{name}: {MANAGERS} managers, {RINGS} rings, {changed} transitions in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_4_managers_work_40_due_rings_exactly_once() {
    let Some(t) = PgTest::new("postgres manager race", false).await else {
        return;
    };
    let mut instances: Vec<Instance> = Vec::new();
    for i in 0..MANAGERS {
        let store = t.instance(3, &format!("keyrot-manager-race-{i}")).await;
        instances.push((Arc::new(store.clone()), Arc::new(store)));
    }
    manager_race("postgres", instances).await;
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_4_managers_work_40_due_rings_exactly_once() {
    let Some(t) = MySqlTest::new("mysql manager race", false).await else {
        return;
    };
    let mut instances: Vec<Instance> = Vec::new();
    for _ in 0..MANAGERS {
        let store = t.instance(3).await;
        instances.push((Arc::new(store.clone()), Arc::new(store)));
    }
    manager_race("mysql", instances).await;
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_4_managers_work_40_due_rings_exactly_once() {
    let file = SqliteFile::new();
    let mut instances: Vec<Instance> = Vec::new();
    for _ in 0..MANAGERS {
        let store = file.instance(3).await;
        instances.push((Arc::new(store.clone()), Arc::new(store)));
    }
    manager_race("sqlite", instances).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_16_instances_rotate_exactly_once_per_round() {
    let Some(t) = PgTest::new("postgres race", false).await else {
        return;
    };
    let mut instances: Vec<Instance> = Vec::new();
    for i in 0..INSTANCES {
        let store = t.instance(2, &format!("keyrot-race-{i}")).await;
        instances.push((Arc::new(store.clone()), Arc::new(store)));
    }
    race("postgres", instances, Algorithm::EdDsa, ROUNDS).await;
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_16_instances_rotate_exactly_once_per_round() {
    let Some(t) = MySqlTest::new("mysql race", false).await else {
        return;
    };
    let mut instances: Vec<Instance> = Vec::new();
    for _ in 0..INSTANCES {
        let store = t.instance(2).await;
        instances.push((Arc::new(store.clone()), Arc::new(store)));
    }
    race("mysql", instances, Algorithm::EdDsa, ROUNDS).await;
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_16_instances_rotate_exactly_once_per_round() {
    let file = SqliteFile::new();
    let mut instances: Vec<Instance> = Vec::new();
    for _ in 0..INSTANCES {
        let store = file.instance(2).await;
        instances.push((Arc::new(store.clone()), Arc::new(store)));
    }
    race("sqlite", instances, Algorithm::EdDsa, ROUNDS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_16_instances_rotate_an_aead_ring_exactly_once_per_round() {
    let Some(t) = PgTest::new("postgres aead race", false).await else {
        return;
    };
    let mut instances: Vec<Instance> = Vec::new();
    for i in 0..INSTANCES {
        let store = t.instance(2, &format!("keyrot-aead-race-{i}")).await;
        instances.push((Arc::new(store.clone()), Arc::new(store)));
    }
    race("postgres", instances, Algorithm::XChaCha20Poly1305, SYMMETRIC_ROUNDS).await;
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_16_instances_rotate_a_mac_ring_exactly_once_per_round() {
    let Some(t) = MySqlTest::new("mysql mac race", false).await else {
        return;
    };
    let mut instances: Vec<Instance> = Vec::new();
    for _ in 0..INSTANCES {
        let store = t.instance(2).await;
        instances.push((Arc::new(store.clone()), Arc::new(store)));
    }
    race("mysql", instances, Algorithm::HmacSha256, SYMMETRIC_ROUNDS).await;
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_16_instances_rotate_a_mac_ring_exactly_once_per_round() {
    let file = SqliteFile::new();
    let mut instances: Vec<Instance> = Vec::new();
    for _ in 0..INSTANCES {
        let store = file.instance(2).await;
        instances.push((Arc::new(store.clone()), Arc::new(store)));
    }
    race("sqlite", instances, Algorithm::HmacSha256, SYMMETRIC_ROUNDS).await;
}
