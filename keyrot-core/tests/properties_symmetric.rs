//! Property tests of symmetric rings (MAC and AEAD): random sequences of ticks, time jumps,
//! normal and forced rotations, revocations and concurrent rotators. After every step: at
//! most one Active key and every row of the ring's one algorithm; every ciphertext and MAC
//! made at t under key K is accepted exactly while K is inside its window (Pending, Active,
//! or Retiring before `retired_at + retire_grace`), never once K was revoked or expired,
//! and never again once refused; the planner's next transition is the tick's.

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use keyrot_core::{
    AeadRing, Algorithm, Clock, KeyRing, KeyState, MacRing, MacTag, ManualClock, MasterKey, MasterKeySealer,
    MemoryLock, MemoryStorage, Outcome, Policy, Refusal, RequestContext, Ring, RingName, Rotator, Storage, Trigger,
};
use proptest::prelude::*;
use std::sync::Arc;

#[derive(Debug, Clone)]
enum Op {
    Tick,
    Advance(i64),
    Rotate,
    Force { revoke_old: bool },
    Revoke(usize),
    ConcurrentForce(usize),
    Use,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::Tick),
        4 => prop_oneof![
            Just(3_600i64),
            Just(86_400),
            Just(6 * 86_400),
            Just(7 * 86_400),
            1i64..(9 * 86_400),
        ].prop_map(Op::Advance),
        1 => Just(Op::Rotate),
        1 => any::<bool>().prop_map(|revoke_old| Op::Force { revoke_old }),
        1 => (0usize..6).prop_map(Op::Revoke),
        1 => (2usize..4).prop_map(Op::ConcurrentForce),
        3 => Just(Op::Use),
    ]
}

/// A ciphertext (AEAD ring) or a MAC (MAC ring) made under `kid`.
struct Made {
    kid: String,
    ciphertext: Vec<u8>,
    tag: Option<MacTag>,
    refused_once: bool,
}

struct World {
    alg: Algorithm,
    clock: ManualClock,
    storage: Arc<MemoryStorage>,
    lock: Arc<MemoryLock>,
    sealer: Arc<MasterKeySealer>,
    ring: RingName,
    policy: Policy,
    keyring: KeyRing,
    rotator: Rotator,
    made: Vec<Made>,
}

fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).single().expect("valid time")
}

impl World {
    async fn new(alg: Algorithm) -> Self {
        let clock = ManualClock::new(start());
        let storage = Arc::new(MemoryStorage::new());
        let lock = Arc::new(MemoryLock::new(Arc::new(clock.clone())));
        let sealer = Arc::new(MasterKeySealer::new(MasterKey::generate("mk").expect("mk"), []).expect("sealer"));
        let ring = RingName::new("prop-sym").expect("ring");
        let policy = Policy::builder().with_algorithm(alg).build().expect("policy");
        let keyring = KeyRing::builder(ring.clone(), storage.clone(), sealer.clone())
            .with_clock(Arc::new(clock.clone()))
            .with_policy(policy.clone())
            .build()
            .await
            .expect("keyring");
        let rotator = Rotator::builder(ring.clone(), storage.clone(), lock.clone(), sealer.clone())
            .with_clock(Arc::new(clock.clone()))
            .with_policy(policy.clone())
            .with_instance("main")
            .with_keyring(keyring.clone())
            .build();
        Self {
            alg,
            clock,
            storage,
            lock,
            sealer,
            ring,
            policy,
            keyring,
            rotator,
            made: Vec::new(),
        }
    }

    fn other_rotator(&self, name: &str) -> Rotator {
        Rotator::builder(
            self.ring.clone(),
            self.storage.clone(),
            self.lock.clone(),
            self.sealer.clone(),
        )
        .with_clock(Arc::new(self.clock.clone()))
        .with_policy(self.policy.clone())
        .with_instance(name)
        .build()
    }

    async fn apply(&mut self, op: &Op) {
        let ctx = || RequestContext::actor("prop");
        match op {
            Op::Tick => {
                self.rotator.tick().await.expect("tick");
            }
            Op::Advance(secs) => self.clock.advance(TimeDelta::seconds(*secs)),
            Op::Rotate => {
                self.rotator.rotate(ctx()).await.expect("rotate");
            }
            Op::Force { revoke_old } => {
                self.rotator
                    .force_rotate(ctx(), "drill", *revoke_old)
                    .await
                    .expect("force");
            }
            Op::Revoke(i) => {
                let ring = self.storage.load(&self.ring).await.expect("load");
                if let Some(k) = ring.keys.get(*i) {
                    self.rotator.revoke(ctx(), k.kid.clone(), "test").await.expect("revoke");
                }
            }
            Op::ConcurrentForce(n) => {
                let handles: Vec<_> = (0..*n)
                    .map(|i| {
                        let r = self.other_rotator(&format!("c{i}"));
                        tokio::spawn(async move { r.force_rotate(RequestContext::actor("p"), "race", false).await })
                    })
                    .collect();
                let mut changed = 0;
                for h in handles {
                    if h.await.expect("join").expect("attempt").outcome.changed_ring() {
                        changed += 1;
                    }
                }
                assert!(changed <= 1, "at most one of {n} concurrent rotations changes the ring");
                self.keyring.refresh().await.expect("refresh");
            }
            Op::Use => self.make().await,
        }
    }

    async fn make(&mut self) {
        let Some(kid) = self.keyring.snapshot().active_kid().map(str::to_owned) else {
            return;
        };
        let made = if self.alg == Algorithm::HmacSha256 {
            let tag = MacRing::new(self.keyring.clone())
                .expect("mac")
                .sign(b"m")
                .expect("sign");
            assert_eq!(tag.kid(), kid, "the Active key signs");
            Made {
                kid,
                ciphertext: Vec::new(),
                tag: Some(tag),
                refused_once: false,
            }
        } else {
            let ct = AeadRing::new(self.keyring.clone())
                .expect("aead")
                .encrypt(b"p", b"a")
                .expect("encrypt");
            assert_eq!(
                AeadRing::key_id(&ct).ok().as_deref(),
                Some(kid.as_str()),
                "the Active key encrypts"
            );
            Made {
                kid,
                ciphertext: ct,
                tag: None,
                refused_once: false,
            }
        };
        self.made.push(made);
    }

    fn accepted(&self, m: &Made) -> bool {
        match &m.tag {
            Some(tag) => MacRing::new(self.keyring.clone())
                .expect("mac")
                .verify(b"m", tag)
                .is_ok(),
            None => AeadRing::new(self.keyring.clone())
                .expect("aead")
                .decrypt(&m.ciphertext, b"a")
                .is_ok_and(|p| p == b"p"),
        }
    }

    async fn check(&mut self) {
        self.keyring.refresh().await.expect("refresh");
        let ring = self.storage.load(&self.ring).await.expect("load");
        let now = self.clock.now();
        assert!(ring.in_state(KeyState::Active).count() <= 1, "at most one Active key");
        if !ring.keys.is_empty() {
            assert_eq!(
                ring.in_state(KeyState::Active).count(),
                1,
                "an initialised ring has its Active key"
            );
        }
        assert!(ring.keys.iter().all(|k| k.alg == self.alg), "one algorithm, one kind");
        assert_eq!(self.keyring.snapshot().jwks().body(), br#"{"keys":[]}"#);
        assert!(
            self.keyring.snapshot().integrity().is_intact(),
            "every symmetric row is trusted"
        );
        let grace = self.policy.retire_grace();
        let mut made = std::mem::take(&mut self.made);
        for m in &mut made {
            let row = ring.key(&m.kid).expect("the key stays in the ring");
            let inside = match row.state {
                KeyState::Pending | KeyState::Active => true,
                KeyState::Retiring => now < row.retired_at.expect("retired_at") + grace,
                KeyState::Expired => false,
            };
            let expected = inside && row.revoked_at.is_none() && !m.refused_once;
            assert_eq!(
                self.accepted(m),
                expected,
                "key {} in state {:?} at {now} (retired {:?}, revoked {:?}, refused before {})",
                m.kid,
                row.state,
                row.retired_at,
                row.revoked_at,
                m.refused_once
            );
            m.refused_once |= !expected;
        }
        self.made = made;
        check_next_transition(&ring, &self.policy, now, &self.keyring);
    }
}

/// The planner's timing for symmetric rings is the signing rings': what `next_transition`
/// announces is what a tick at that time plans, and nothing is due before it.
fn check_next_transition(ring: &Ring, policy: &Policy, now: DateTime<Utc>, keyring: &KeyRing) {
    let Some(next) = keyrot_core::next_transition(keyring.snapshot().keys(), policy) else {
        assert_eq!(
            keyrot_core::plan(ring, policy, now, &Trigger::Tick),
            Err(Refusal::NothingDue)
        );
        return;
    };
    let at = next.at.max(now);
    assert!(
        keyrot_core::plan(ring, policy, at, &Trigger::Tick).is_ok(),
        "{next:?} is due, yet a tick at {at} plans nothing"
    );
    if next.at > now {
        assert_eq!(
            keyrot_core::plan(ring, policy, next.at - TimeDelta::nanoseconds(1), &Trigger::Tick),
            Err(Refusal::NothingDue),
            "{next:?} is the earliest change"
        );
    }
}

fn run(alg: Algorithm, ops: &[Op]) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut w = World::new(alg).await;
        let r = w.rotator.tick().await.expect("bootstrap");
        assert_eq!(r.outcome, Outcome::Bootstrapped);
        w.check().await;
        for op in ops {
            w.apply(op).await;
            w.check().await;
        }
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn aead_ciphertexts_are_accepted_exactly_inside_their_keys_window(ops in proptest::collection::vec(op(), 1..40)) {
        run(Algorithm::XChaCha20Poly1305, &ops);
    }

    #[test]
    fn macs_are_accepted_exactly_inside_their_keys_window(ops in proptest::collection::vec(op(), 1..40)) {
        run(Algorithm::HmacSha256, &ops);
    }
}
