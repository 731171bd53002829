//! Property tests: random sequences of ticks, time jumps, normal and forced rotations,
//! revocations and concurrent rotators, driving the planner through the in-memory
//! rotator. DESIGN invariants 1–8 are checked after every step; invariant 5 by signing
//! tokens along the way and verifying them at every later step until they expire.

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use keyrot_core::{Action, NextTransition, Refusal, TransitionAction, Trigger};
use keyrot_core::{
    Algorithm, Clock, ImportState, ImportedKey, KeyOrigin, KeyRing, KeyState, ManualClock, MasterKey, MasterKeySealer,
    MemoryLock, MemoryStorage, Outcome, Policy, PrivateKey, RequestContext, Ring, RingName, Rotator, RsaBits, Storage,
    TokenCache, TokenCacheConfig, Validation,
};
use proptest::prelude::*;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

#[derive(Debug, Clone)]
enum Op {
    Tick,
    Advance(i64),
    Rotate,
    Force {
        revoke_old: bool,
    },
    Revoke(usize),
    ConcurrentForce(usize),
    ConcurrentTick(usize),
    Sign(i64),
    /// Import a Pending key: due `publish_lead` from now, so `min_interval` may bind.
    ImportPending,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Tick),
        1 => (2usize..5).prop_map(Op::ConcurrentTick),
        10 => op_without_tick(),
    ]
}

/// Everything but the scheduler: a ring driven only by rotation requests.
fn op_without_tick() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => prop_oneof![
            Just(60i64),
            Just(3_600),
            Just(86_400),
            Just(6 * 86_400),
            Just(7 * 86_400),
            1i64..(9 * 86_400),
        ].prop_map(Op::Advance),
        2 => Just(Op::Rotate),
        1 => any::<bool>().prop_map(|revoke_old| Op::Force { revoke_old }),
        1 => (0usize..8).prop_map(Op::Revoke),
        1 => (2usize..5).prop_map(Op::ConcurrentForce),
        3 => (1i64..=3_600).prop_map(Op::Sign),
        1 => Just(Op::ImportPending),
    ]
}

struct Issued {
    token: String,
    kid: String,
    exp: i64,
}

struct World {
    clock: ManualClock,
    storage: Arc<MemoryStorage>,
    lock: Arc<MemoryLock>,
    sealer: Arc<MasterKeySealer>,
    ring: RingName,
    policy: Policy,
    /// The ring the rotator installs into, with a verified-token cache.
    keyring: KeyRing,
    /// The same ring without a cache: every answer of `keyring` must equal its answer.
    reference: KeyRing,
    rotator: Rotator,
    committed: u64,
    seen_states: HashMap<String, KeyState>,
    ever_kids: HashSet<String>,
    tokens: Vec<Issued>,
}

fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).single().expect("valid time")
}

impl World {
    async fn new() -> Self {
        let clock = ManualClock::new(start());
        let storage = Arc::new(MemoryStorage::new());
        let lock = Arc::new(MemoryLock::new(Arc::new(clock.clone())));
        let sealer =
            Arc::new(MasterKeySealer::new(MasterKey::generate("mk").expect("master key"), []).expect("sealer"));
        let ring = RingName::new("prop").expect("ring name");
        let policy = Policy::default();
        // A small cache, so evictions happen during the runs too.
        let cache = TokenCache::new(TokenCacheConfig::new().with_max_entries(8));
        let keyring = KeyRing::builder(ring.clone(), storage.clone(), sealer.clone())
            .with_clock(Arc::new(clock.clone()))
            .with_policy(policy.clone())
            .with_token_cache(cache)
            .build()
            .await
            .expect("keyring");
        let reference = KeyRing::builder(ring.clone(), storage.clone(), sealer.clone())
            .with_clock(Arc::new(clock.clone()))
            .with_policy(policy.clone())
            .build()
            .await
            .expect("keyring");
        let rotator = Self::rotator_for(&ring, &storage, &lock, &sealer, &clock, &policy, "main")
            .with_keyring(keyring.clone())
            .build();
        Self {
            clock,
            storage,
            lock,
            sealer,
            ring,
            policy,
            keyring,
            reference,
            rotator,
            committed: 0,
            seen_states: HashMap::new(),
            ever_kids: HashSet::new(),
            tokens: Vec::new(),
        }
    }

    fn rotator_for(
        ring: &RingName,
        storage: &Arc<MemoryStorage>,
        lock: &Arc<MemoryLock>,
        sealer: &Arc<MasterKeySealer>,
        clock: &ManualClock,
        policy: &Policy,
        instance: &str,
    ) -> keyrot_core::RotatorBuilder {
        Rotator::builder(ring.clone(), storage.clone(), lock.clone(), sealer.clone())
            .with_clock(Arc::new(clock.clone()))
            .with_policy(policy.clone())
            .with_instance(instance)
    }

    fn count(&mut self, outcome: Outcome) {
        if outcome.changed_ring() {
            self.committed += 1;
        }
    }

    /// Every commit carries the maintenance due at its time: right after one, no Retiring
    /// key is past its expiry and no Expired key still has material past `purge_after`.
    async fn check_tidy_after_commit(&self) {
        let ring = self.storage.load(&self.ring).await.expect("load");
        let now = self.clock.now();
        for k in &ring.keys {
            assert!(
                !(k.state == KeyState::Retiring && k.expires_at.is_some_and(|t| t <= now)),
                "{} is Retiring past its expiry after a commit",
                k.kid
            );
            assert!(
                !(k.state == KeyState::Expired
                    && k.sealed.is_some()
                    && k.expired_at.is_some_and(|t| t + self.policy.purge_after() <= now)),
                "{} kept its material past purge_after after a commit",
                k.kid
            );
        }
    }

    async fn apply(&mut self, op: &Op) {
        let before = self.committed;
        self.apply_op(op).await;
        if self.committed != before {
            self.check_tidy_after_commit().await;
        }
    }

    async fn apply_op(&mut self, op: &Op) {
        let ctx = || RequestContext::actor("prop");
        match op {
            Op::Tick => {
                let r = self.rotator.tick().await.expect("tick");
                self.count(r.outcome);
            }
            Op::Advance(secs) => self.clock.advance(TimeDelta::seconds(*secs)),
            Op::Rotate => {
                let r = self.rotator.rotate(ctx()).await.expect("rotate");
                self.count(r.outcome);
            }
            Op::Force { revoke_old } => {
                let r = self
                    .rotator
                    .force_rotate(ctx(), "drill", *revoke_old)
                    .await
                    .expect("force");
                self.count(r.outcome);
            }
            Op::Revoke(i) => {
                let ring = self.storage.load(&self.ring).await.expect("load");
                if let Some(k) = ring.keys.get(*i) {
                    let r = self.rotator.revoke(ctx(), k.kid.clone(), "test").await.expect("revoke");
                    self.count(r.outcome);
                }
            }
            Op::ConcurrentForce(n) | Op::ConcurrentTick(n) => {
                let force = matches!(op, Op::ConcurrentForce(_));
                let rotators: Vec<Rotator> = (0..*n)
                    .map(|i| {
                        Self::rotator_for(
                            &self.ring,
                            &self.storage,
                            &self.lock,
                            &self.sealer,
                            &self.clock,
                            &self.policy,
                            &format!("c{i}"),
                        )
                        .build()
                    })
                    .collect();
                let handles: Vec<_> = rotators
                    .into_iter()
                    .map(|r| {
                        tokio::spawn(async move {
                            if force {
                                r.force_rotate(RequestContext::actor("p"), "race", false).await
                            } else {
                                r.tick().await
                            }
                        })
                    })
                    .collect();
                let mut changed = 0;
                for h in handles {
                    let rep = h.await.expect("join").expect("attempt");
                    if rep.outcome.changed_ring() {
                        changed += 1;
                    }
                    self.count(rep.outcome);
                }
                assert!(changed <= 1, "at most one of {n} concurrent rotators changes the ring");
                self.keyring.refresh().await.expect("refresh");
            }
            Op::ImportPending => {
                let key = ImportedKey {
                    key: PrivateKey::generate(Algorithm::EdDsa, RsaBits::B2048).expect("key"),
                    kid: None,
                };
                let r = self
                    .rotator
                    .import(ctx(), key, ImportState::Pending)
                    .await
                    .expect("import");
                self.count(r.outcome);
            }
            Op::Sign(ttl) => {
                let now = self.clock.now().timestamp();
                let exp = now + ttl;
                if let Some(kid) = self.keyring.snapshot().active_kid().map(str::to_owned) {
                    let token = self
                        .keyring
                        .sign(&serde_json::json!({"sub": "p", "iat": now, "exp": exp}))
                        .expect("sign");
                    self.tokens.push(Issued { token, kid, exp });
                }
            }
        }
    }

    async fn check(&mut self) {
        let ring = self.storage.load(&self.ring).await.expect("load");
        let now = self.clock.now();
        // 1. An initialised ring has exactly one Active key.
        if !ring.keys.is_empty() {
            assert_eq!(ring.in_state(KeyState::Active).count(), 1, "exactly one Active key");
        }
        // 2. States only move forward; keys are never deleted.
        for (kid, old) in &self.seen_states {
            let k = ring.key(kid).expect("keys are never deleted");
            assert!(
                k.state.rank() >= old.rank(),
                "{kid} moved back from {old:?} to {:?}",
                k.state
            );
        }
        // 7. No kid is reused: kids are unique, and only new kids appear.
        let kids: HashSet<_> = ring.keys.iter().map(|k| k.kid.clone()).collect();
        assert_eq!(kids.len(), ring.keys.len(), "kids are unique");
        for k in &ring.keys {
            if !self.seen_states.contains_key(&k.kid) {
                assert!(self.ever_kids.insert(k.kid.clone()), "kid {} reused", k.kid);
            }
            self.seen_states.insert(k.kid.clone(), k.state);
        }
        // 6. Every committed change incremented the generation by exactly one.
        assert_eq!(ring.generation, self.committed, "generation counts committed changes");
        // 3. Published = verifying = Pending ∪ Active ∪ Retiring (snapshot of this ring).
        self.keyring.refresh().await.expect("refresh");
        let snap = self.keyring.snapshot();
        assert_eq!(snap.generation(), ring.generation);
        let jwks: serde_json::Value = serde_json::from_slice(snap.jwks().body()).expect("jwks json");
        let published: HashSet<String> = jwks["keys"]
            .as_array()
            .expect("keys array")
            .iter()
            .filter_map(|k| k["kid"].as_str().map(str::to_owned))
            .collect();
        let expected: HashSet<String> = ring.published().map(|k| k.kid.clone()).collect();
        assert_eq!(
            published, expected,
            "JWKS publishes exactly Pending ∪ Active ∪ Retiring"
        );
        for k in &ring.keys {
            assert_eq!(
                snap.verifies(&k.kid),
                k.state.is_published(),
                "{} is a verifying key iff published",
                k.kid
            );
            // A Retiring key verifies only until its expires_at, whatever ticks ran.
            let past_expiry = k.state == KeyState::Retiring && k.expires_at.is_some_and(|t| t <= now);
            assert_eq!(
                snap.verifies_at(&k.kid, now),
                k.state.is_published() && !past_expiry,
                "{} verifies at {now} iff published and within its window",
                k.kid
            );
        }
        // 4. A normally rotated key is published at least publish_lead before it signs.
        for k in &ring.keys {
            if matches!(k.origin, KeyOrigin::Scheduled | KeyOrigin::Rotation)
                && let Some(at) = k.activated_at
            {
                assert!(
                    at - k.created_at >= self.policy.publish_lead(),
                    "{} published too briefly",
                    k.kid
                );
            }
        }
        // 8. Normal rotations at least min_interval apart; forced at least forced_min_interval.
        let mut activations: Vec<_> = ring
            .keys
            .iter()
            .filter_map(|k| k.activated_at.map(|a| (a, k.forced)))
            .collect();
        activations.sort();
        for w in activations.windows(2) {
            let ((prev, _), (at, forced)) = (w[0], w[1]);
            if !forced {
                assert!(
                    at - prev >= self.policy.min_interval(),
                    "normal rotations too close: {prev} → {at}"
                );
            }
        }
        let forced: Vec<_> = activations.iter().filter(|(_, f)| *f).map(|(a, _)| *a).collect();
        for w in forced.windows(2) {
            assert!(
                w[1] - w[0] >= self.policy.forced_min_interval(),
                "forced rotations too close"
            );
        }
        // 5. A token verifies until its own expiry unless its key was revoked.
        let strict = Validation::new().with_leeway(std::time::Duration::ZERO);
        for t in &self.tokens {
            let revoked = ring.key(&t.kid).is_some_and(|k| k.revoked_at.is_some());
            if now.timestamp() < t.exp && !revoked {
                let r = self.keyring.verify_with(&t.token, &strict, now);
                assert!(r.is_ok(), "token of {} (exp {}) refused at {now}: {r:?}", t.kid, t.exp);
            }
            if now.timestamp() >= t.exp {
                assert!(
                    self.keyring.verify_with(&t.token, &strict, now).is_err(),
                    "expired token accepted"
                );
            }
        }
        // 10. The verified-token cache changes no answer: each token, twice (a miss, then
        // a hit when it verifies), under the ring's rules and strict ones, gives exactly
        // the uncached ring's answer, revoked and expired keys included.
        self.reference.refresh().await.expect("refresh");
        for t in &self.tokens {
            for _ in 0..2 {
                let cached = self.keyring.verify(&t.token).map(|v| (v.kid, v.claims));
                let plain = self.reference.verify(&t.token).map(|v| (v.kid, v.claims));
                assert_eq!(
                    cached, plain,
                    "cached and uncached answers differ for {} at {now}",
                    t.kid
                );
                let cached = self.keyring.verify_with(&t.token, &strict, now).map(|v| v.kid);
                let plain = self.reference.verify_with(&t.token, &strict, now).map(|v| v.kid);
                assert_eq!(cached, plain, "cached and uncached strict answers differ for {}", t.kid);
            }
        }
        self.tokens.retain(|t| now.timestamp() < t.exp);
        // The planner is a pure function: the same inputs give the same answer.
        let a = keyrot_core::plan(&ring, &self.policy, now, &Trigger::Tick);
        let b = keyrot_core::plan(&ring, &self.policy, now, &Trigger::Tick);
        assert_eq!(a, b);
        // 9. `next_transition` tells what the tick does, and when.
        let next = ring.next_transition(&self.policy);
        assert_eq!(
            next,
            keyrot_core::next_transition(snap.keys(), &self.policy),
            "the status page's view of the keys gives the planner's answer"
        );
        check_next_transition_predicts_the_tick(&ring, &self.policy, now, next.as_ref());
    }

    /// Moves the clock to `next.at` (if it is ahead) by scheduler ticks: one a millisecond
    /// before finds nothing due, one at `next.at` makes the change announced. Returns
    /// whether it did (false when nothing is next).
    async fn tick_to_next_transition(&mut self) -> bool {
        self.keyring.refresh().await.expect("refresh");
        let Some(next) = keyrot_core::next_transition(self.keyring.snapshot().keys(), &self.policy) else {
            return false;
        };
        let now = self.clock.now();
        if next.at > now {
            let before = next.at - TimeDelta::milliseconds(1);
            if before > now {
                self.clock.set(before);
                let r = self.rotator.tick().await.expect("tick");
                assert_eq!(
                    r.outcome,
                    Outcome::NothingDue,
                    "a tick at {before} changed the ring before {next:?} (detail {:?})",
                    r.detail
                );
                self.check().await;
            }
            self.clock.set(next.at);
        }
        let ring_before = self.storage.load(&self.ring).await.expect("load");
        let r = self.rotator.tick().await.expect("tick");
        assert!(
            r.outcome.changed_ring(),
            "a tick at {} made no change for {next:?}: {:?}",
            self.clock.now(),
            r.outcome
        );
        self.count(r.outcome);
        let ring = self.storage.load(&self.ring).await.expect("load");
        let kid_state = |ring: &Ring, kid: &Option<String>| {
            kid.as_deref()
                .and_then(|k| ring.key(k))
                .map(|k| (k.state, k.sealed.is_some()))
        };
        match next.action {
            TransitionAction::PublishNext => assert!(
                ring.pending().len() > ring_before.pending().len(),
                "a tick at {} published no key",
                next.at
            ),
            TransitionAction::Activate => {
                assert_eq!(kid_state(&ring, &next.kid), Some((KeyState::Active, true)))
            }
            TransitionAction::Expire => {
                assert_eq!(kid_state(&ring, &next.kid).map(|(s, _)| s), Some(KeyState::Expired))
            }
            TransitionAction::Purge => assert_eq!(kid_state(&ring, &next.kid), Some((KeyState::Expired, false))),
            other => panic!("unexpected action {other:?}"),
        }
        self.check_tidy_after_commit().await;
        self.check().await;
        true
    }
}

/// Whatever `next_transition` says is due at `T`, the planner's tick plan at `T` (or now,
/// if `T` has passed) contains that action; and if `T` is ahead, a tick plan at any time
/// before it (now, or one nanosecond before `T`) is `NothingDue`: `T` is the earliest
/// change, so nothing at all is due before it.
fn check_next_transition_predicts_the_tick(
    ring: &Ring,
    policy: &Policy,
    now: DateTime<Utc>,
    next: Option<&NextTransition>,
) {
    let Some(next) = next else {
        // Nothing is next: no tick changes the ring now, nor a year from now.
        for t in [now, now + TimeDelta::days(365)] {
            assert_eq!(
                keyrot_core::plan(ring, policy, t, &Trigger::Tick),
                Err(Refusal::NothingDue),
                "no next transition, yet a tick at {t} plans one"
            );
        }
        return;
    };
    let at = next.at.max(now);
    let plan = keyrot_core::plan(ring, policy, at, &Trigger::Tick)
        .unwrap_or_else(|r| panic!("{next:?} is due, yet a tick at {at} is refused: {r:?}"));
    let kid = next.kid.as_deref();
    let performed = plan.actions.iter().any(|a| match (next.action, a) {
        (TransitionAction::PublishNext, Action::NewKey { .. }) => true,
        (TransitionAction::Activate, Action::Activate { kid: k })
        | (TransitionAction::Expire, Action::Expire { kid: k })
        | (TransitionAction::Purge, Action::Purge { kid: k }) => Some(k.as_str()) == kid,
        _ => false,
    });
    assert!(performed, "{next:?} is due, yet the tick at {at} plans {plan:?}");
    if next.at > now {
        for t in [now, next.at - TimeDelta::nanoseconds(1)] {
            assert_eq!(
                keyrot_core::plan(ring, policy, t, &Trigger::Tick),
                Err(Refusal::NothingDue),
                "{next:?} is the earliest change, yet a tick at {t} plans one"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// The ring driven only by rotation requests (the external-scheduler deployment):
    /// the scheduler never ticks, and every invariant still holds.
    #[test]
    fn invariants_hold_with_the_scheduler_never_ticking(ops in proptest::collection::vec(op_without_tick(), 1..40)) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        rt.block_on(async {
            let mut w = World::new().await;
            let r = w.rotator.init(RequestContext::actor("prop")).await.expect("init");
            assert_eq!(r.outcome, Outcome::Bootstrapped);
            w.count(r.outcome);
            w.check().await;
            for op in &ops {
                assert!(!matches!(op, Op::Tick | Op::ConcurrentTick(_)));
                w.apply(op).await;
                w.check().await;
            }
        });
    }

    #[test]
    fn invariants_hold_after_every_step(ops in proptest::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        rt.block_on(async {
            let mut w = World::new().await;
            // Start like a service: the first tick bootstraps.
            let r = w.rotator.tick().await.expect("bootstrap");
            assert_eq!(r.outcome, Outcome::Bootstrapped);
            w.count(r.outcome);
            w.check().await;
            for op in &ops {
                w.apply(op).await;
                w.check().await;
            }
        });
    }

    /// After any random sequence, the scheduler follows `next_transition`: ticking the
    /// clock from one announced time to the next, a tick just before finds nothing due and
    /// the tick at the time makes the change announced.
    #[test]
    fn the_tick_makes_the_next_transition_when_announced(
        ops in proptest::collection::vec(op(), 0..25),
        steps in 1usize..8,
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        rt.block_on(async {
            let mut w = World::new().await;
            let r = w.rotator.tick().await.expect("bootstrap");
            assert_eq!(r.outcome, Outcome::Bootstrapped);
            w.count(r.outcome);
            w.check().await;
            for op in &ops {
                w.apply(op).await;
                w.check().await;
            }
            for _ in 0..steps {
                assert!(w.tick_to_next_transition().await, "an initialised ring always has a next transition");
            }
        });
    }
}
