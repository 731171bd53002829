//! The conformance kit (feature `test-util`): one suite every [`Storage`] + [`Lock`]
//! implementation runs, keyrot's own backends and yours alike.
//!
//! ```ignore
//! async fn setup() -> Option<keyrot_core::conformance::Backend> {
//!     let store = MyStore::connect_fresh_schema().await;          // your own setup
//!     Some(keyrot_core::conformance::Backend::new(Arc::new(store.clone()), Arc::new(store)))
//! }
//! keyrot_core::storage_conformance_tests!(setup);
//! ```
//!
//! Return `None` from the setup to skip (each case then prints one line). Cases panic on
//! failure, as tests do.

#![allow(clippy::unwrap_used, missing_docs)]

use crate::alg::{Algorithm, RsaBits};
use crate::clock::{Clock, ManualClock, to_millis};
use crate::key::PrivateKey;
use crate::planner::TriggerKind;
use crate::ring::{KeyOrigin, KeyRecord, KeyState, RingName};
use crate::rotator::{RequestContext, Rotator};
use crate::seal::{MasterKey, MasterKeySealer, SealContext, Sealer};
use crate::storage::{AuditQuery, AuditRecord, Commit, CommitOutcome, IdempotencyRecord, Lock, Outcome, Storage};
use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// A backend under test: fresh (empty) for each case.
pub struct Backend {
    /// The storage.
    pub storage: Arc<dyn Storage>,
    /// The lock.
    pub lock: Arc<dyn Lock>,
    teardown: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl Backend {
    /// A backend without teardown.
    pub fn new(storage: Arc<dyn Storage>, lock: Arc<dyn Lock>) -> Self {
        Self {
            storage,
            lock,
            teardown: None,
        }
    }

    /// Runs `teardown` after the case (drop a schema or database).
    pub fn with_teardown(mut self, teardown: impl Future<Output = ()> + Send + 'static) -> Self {
        self.teardown = Some(Box::pin(teardown));
        self
    }

    /// Runs the teardown.
    pub async fn finish(mut self) {
        if let Some(t) = self.teardown.take() {
            t.await;
        }
    }
}

/// Generates one `#[tokio::test]` per conformance case, each calling `$setup().await`
/// (an `async fn() -> Option<Backend>`) for a fresh backend.
#[macro_export]
macro_rules! storage_conformance_tests {
    ($setup:path) => {
        $crate::__conformance_cases!(
            $setup;
            empty_ring_loads_at_generation_zero,
            commit_round_trips_every_field,
            stale_generation_conflicts_and_writes_nothing,
            concurrent_commits_on_one_generation_exactly_one_wins,
            commits_replace_keys_by_kid_and_never_delete,
            record_attempt_appends_without_changing_generation,
            audit_log_is_newest_first_and_limited,
            idempotency_first_answer_wins,
            rings_are_isolated,
            lock_is_exclusive_until_released,
            locks_are_per_ring,
            rotator_lifecycle_on_backend,
            concurrent_rotators_rotate_exactly_once,
            manifest_is_stored_with_each_commit,
            audit_chain_links_every_append,
            concurrent_appends_keep_the_chain_contiguous,
            commit_refuses_records_of_another_ring,
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_cases {
    ($setup:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                match $setup().await {
                    Some(backend) => {
                        $crate::conformance::$case(&backend).await;
                        backend.finish().await;
                    }
                    None => println!("skipped {}: backend not configured", stringify!($case)),
                }
            }
        )*
    };
}

fn ring(name: &str) -> RingName {
    RingName::new(name).expect("valid ring name")
}

fn t0() -> DateTime<Utc> {
    // Millisecond precision on purpose: every store must keep it.
    Utc.timestamp_millis_opt(1_767_225_600_123)
        .single()
        .expect("valid time")
}

fn sealer() -> MasterKeySealer {
    MasterKeySealer::new(MasterKey::generate("conformance").expect("master key"), []).expect("sealer")
}

/// A realistic key record (real public JWK, real sealed bytes) with every field set.
pub fn sample_key(ring_name: &str, state: KeyState, at: DateTime<Utc>) -> KeyRecord {
    let key = PrivateKey::generate(Algorithm::EdDsa, RsaBits::B2048).expect("keygen");
    let public = key.public_key();
    let kid = public.thumbprint();
    let sealed = sealer()
        .seal(
            &key.to_secret_bytes().expect("bytes"),
            &SealContext {
                ring: ring_name,
                kid: &kid,
                alg: Algorithm::EdDsa,
            },
        )
        .expect("seal");
    KeyRecord {
        public_jwk: public.to_jwk(&kid).to_string(),
        fingerprint: kid.clone(),
        kid,
        alg: Algorithm::EdDsa,
        state,
        origin: KeyOrigin::Forced,
        forced: true,
        sealed: Some(sealed),
        created_at: at,
        activate_at: Some(at + TimeDelta::milliseconds(1)),
        activated_at: Some(at + TimeDelta::milliseconds(2)),
        retired_at: Some(at + TimeDelta::milliseconds(3)),
        expires_at: Some(at + TimeDelta::days(7)),
        expired_at: Some(at + TimeDelta::milliseconds(5)),
        revoked_at: Some(at + TimeDelta::milliseconds(6)),
        revoke_reason: Some("leaked in a log ✓ (unicode)".into()),
        purged_at: None,
    }
}

/// An audit record with every field set.
pub fn sample_audit(ring_name: &str, at: DateTime<Utc>, generation: u64, outcome: Outcome) -> AuditRecord {
    AuditRecord {
        id: format!("audit-{generation}-{}", at.timestamp_millis()),
        at,
        ring: ring_name.into(),
        actor: "client-1".into(),
        trigger: TriggerKind::ForceRotate,
        outcome,
        forced: true,
        reason: Some("incident 42".into()),
        old_kid: Some("old".into()),
        old_fingerprint: Some("old-fp".into()),
        new_kid: Some("new".into()),
        new_fingerprint: Some("new-fp".into()),
        generation,
        idempotency_key: Some("idem-1".into()),
        request_id: Some("req-1".into()),
        detail: Some("detail".into()),
        instance: "instance-a".into(),
        seq: 0,
        mac: None,
    }
}

/// The linker the kit appends with: keyrot's own, under a fixed test master key, so the
/// kit can check the chain the store built with [`crate::integrity::verify_chain`].
fn chain_sealer() -> Arc<MasterKeySealer> {
    let secret = crate::secret::SecretBytes::from_slice(&[42u8; 32]);
    Arc::new(MasterKeySealer::new(MasterKey::new("conformance-chain", secret).expect("mk"), []).expect("sealer"))
}

fn linker() -> crate::integrity::SealerLinker {
    crate::integrity::SealerLinker::new(chain_sealer())
}

/// Checks that the ring's whole ledger is one intact chain of `n` records.
async fn assert_chain(b: &Backend, r: &RingName, n: usize) {
    let all = b
        .storage
        .audit_log(r, AuditQuery { limit: usize::MAX })
        .await
        .expect("audit");
    assert_eq!(all.len(), n, "ledger length");
    let report = crate::integrity::verify_chain(&all, &*chain_sealer()).expect("the store built an intact chain");
    assert_eq!(report.records, n);
    let mut seqs: Vec<u64> = all.iter().map(|a| a.seq).collect();
    seqs.reverse();
    assert_eq!(
        seqs,
        (1..=n as u64).collect::<Vec<_>>(),
        "newest first by chain position"
    );
}

/// `a` as the store returns it after appending it at `seq` (the MAC is checked by
/// [`assert_chain`]).
fn appended(a: &AuditRecord, got: &AuditRecord, seq: u64) -> AuditRecord {
    AuditRecord {
        seq,
        mac: got.mac.clone(),
        ..a.clone()
    }
}

fn commit(r: &RingName, expected: u64, keys: Vec<KeyRecord>, at: DateTime<Utc>) -> Commit {
    Commit {
        ring: r.clone(),
        expected_generation: expected,
        keys,
        audit: sample_audit(r.as_str(), at, expected + 1, Outcome::Rotated),
        idempotency: None,
        manifest: format!("manifest of {} at generation {} ✓", r.as_str(), expected + 1),
    }
}

pub async fn empty_ring_loads_at_generation_zero(b: &Backend) {
    let r = ring("conf-empty");
    let loaded = b.storage.load(&r).await.expect("load");
    assert_eq!(loaded.generation, 0);
    assert!(loaded.keys.is_empty());
    assert_eq!(b.storage.generation(&r).await.expect("generation"), 0);
    assert!(
        b.storage
            .audit_log(&r, AuditQuery::default())
            .await
            .expect("audit")
            .is_empty()
    );
    assert!(b.storage.idempotency(&r, "nope").await.expect("idem").is_none());
}

pub async fn commit_round_trips_every_field(b: &Backend) {
    let r = ring("conf-roundtrip");
    let mut key = sample_key(r.as_str(), KeyState::Expired, t0());
    key.purged_at = Some(t0() + TimeDelta::milliseconds(7));
    let mut c = commit(&r, 0, vec![key.clone()], t0());
    c.idempotency = Some(IdempotencyRecord {
        ring: r.to_string(),
        key: "idem-1".into(),
        request_hash: "hash".into(),
        response: r#"{"outcome":"rotated"}"#.into(),
        created_at: t0(),
    });
    assert_eq!(
        b.storage.commit(&c, &linker()).await.expect("commit"),
        CommitOutcome::Committed
    );
    let loaded = b.storage.load(&r).await.expect("load");
    assert_eq!(loaded.generation, 1);
    assert_eq!(
        loaded.keys,
        vec![key],
        "every key field round-trips at millisecond precision"
    );
    assert_eq!(b.storage.generation(&r).await.expect("generation"), 1);
    let audit = b.storage.audit_log(&r, AuditQuery::default()).await.expect("audit");
    assert_eq!(audit.len(), 1);
    assert_eq!(
        audit,
        vec![appended(&c.audit, &audit[0], 1)],
        "every audit field round-trips"
    );
    assert_chain(b, &r, 1).await;
    assert_eq!(
        loaded.manifest.as_deref(),
        Some(c.manifest.as_str()),
        "the manifest round-trips"
    );
    let idem = b.storage.idempotency(&r, "idem-1").await.expect("idem");
    assert_eq!(idem, c.idempotency);
}

pub async fn stale_generation_conflicts_and_writes_nothing(b: &Backend) {
    let r = ring("conf-stale");
    let k1 = sample_key(r.as_str(), KeyState::Active, t0());
    assert_eq!(
        b.storage
            .commit(&commit(&r, 0, vec![k1.clone()], t0()), &linker())
            .await
            .expect("c1"),
        CommitOutcome::Committed
    );
    let k2 = sample_key(r.as_str(), KeyState::Pending, t0());
    let mut stale = commit(&r, 0, vec![k2], t0());
    stale.idempotency = Some(IdempotencyRecord {
        ring: r.to_string(),
        key: "stale-key".into(),
        request_hash: "h".into(),
        response: "{}".into(),
        created_at: t0(),
    });
    assert_eq!(
        b.storage.commit(&stale, &linker()).await.expect("c2"),
        CommitOutcome::Conflict { current: 1 }
    );
    let loaded = b.storage.load(&r).await.expect("load");
    assert_eq!(loaded.generation, 1);
    assert_eq!(loaded.keys, vec![k1], "a conflicting commit writes no key");
    assert_eq!(
        b.storage
            .audit_log(&r, AuditQuery::default())
            .await
            .expect("audit")
            .len(),
        1
    );
    assert!(b.storage.idempotency(&r, "stale-key").await.expect("idem").is_none());
}

pub async fn concurrent_commits_on_one_generation_exactly_one_wins(b: &Backend) {
    let r = ring("conf-race");
    let base = sample_key(r.as_str(), KeyState::Active, t0());
    assert_eq!(
        b.storage
            .commit(&commit(&r, 0, vec![base], t0()), &linker())
            .await
            .expect("base"),
        CommitOutcome::Committed
    );
    for round in 0..5u64 {
        let commits: Vec<Commit> = (0..8)
            .map(|_| {
                commit(
                    &r,
                    1 + round,
                    vec![sample_key(r.as_str(), KeyState::Pending, t0())],
                    t0(),
                )
            })
            .collect();
        let lk = linker();
        let results = futures_join_all(commits.iter().map(|c| b.storage.commit(c, &lk))).await;
        let won = results
            .iter()
            .filter(|x| matches!(x, Ok(CommitOutcome::Committed)))
            .count();
        let lost = results
            .iter()
            .filter(|x| matches!(x, Ok(CommitOutcome::Conflict { .. })))
            .count();
        assert_eq!(
            (won, lost),
            (1, 7),
            "round {round}: exactly one of 8 concurrent commits wins: {results:?}"
        );
        let loaded = b.storage.load(&r).await.expect("load");
        assert_eq!(loaded.generation, 2 + round);
        assert_eq!(loaded.keys.len() as u64, 2 + round, "only the winner's key was written");
        let audits = b
            .storage
            .audit_log(&r, AuditQuery { limit: 1000 })
            .await
            .expect("audit");
        assert_eq!(
            audits.len() as u64,
            2 + round,
            "only the winner's audit record was written"
        );
    }
}

async fn futures_join_all<F: Future>(futs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in futs {
        set.push(f);
    }
    // Poll all together (concurrently on this task), in order.
    let pinned: Vec<Pin<Box<F>>> = set.into_iter().map(Box::pin).collect();
    JoinAll {
        futs: pinned.into_iter().map(Some).collect(),
        out: Vec::new(),
    }
    .await
}

struct JoinAll<F: Future> {
    futs: Vec<Option<Pin<Box<F>>>>,
    out: Vec<Option<F::Output>>,
}

impl<F: Future> Future for JoinAll<F> {
    type Output = Vec<F::Output>;
    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        let this = self.get_mut();
        if this.out.is_empty() {
            this.out = this.futs.iter().map(|_| None).collect();
        }
        let mut pending = false;
        for (slot, out) in this.futs.iter_mut().zip(this.out.iter_mut()) {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        *out = Some(v);
                        *slot = None;
                    }
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(this.out.drain(..).flatten().collect())
        }
    }
}

impl<F: Future> Unpin for JoinAll<F> {}

pub async fn commits_replace_keys_by_kid_and_never_delete(b: &Backend) {
    let r = ring("conf-replace");
    let mut a = sample_key(r.as_str(), KeyState::Pending, t0());
    let other = sample_key(r.as_str(), KeyState::Active, t0());
    b.storage
        .commit(&commit(&r, 0, vec![a.clone(), other.clone()], t0()), &linker())
        .await
        .expect("c1");
    a.state = KeyState::Expired;
    a.sealed = None;
    a.purged_at = Some(t0() + TimeDelta::days(30));
    assert_eq!(
        b.storage
            .commit(&commit(&r, 1, vec![a.clone()], t0()), &linker())
            .await
            .expect("c2"),
        CommitOutcome::Committed
    );
    let mut loaded = b.storage.load(&r).await.expect("load").keys;
    loaded.sort_by(|x, y| x.kid.cmp(&y.kid));
    let mut want = vec![a, other];
    want.sort_by(|x, y| x.kid.cmp(&y.kid));
    assert_eq!(
        loaded, want,
        "updated by kid; the untouched key is still there; purged material is gone"
    );
}

pub async fn record_attempt_appends_without_changing_generation(b: &Backend) {
    let r = ring("conf-attempt");
    let a = sample_audit(r.as_str(), t0(), 0, Outcome::RateLimited);
    let idem = IdempotencyRecord {
        ring: r.to_string(),
        key: "k-attempt".into(),
        request_hash: "h".into(),
        response: r#"{"outcome":"rate_limited"}"#.into(),
        created_at: t0(),
    };
    b.storage
        .record_attempt(&a, Some(&idem), &linker())
        .await
        .expect("record");
    assert_eq!(b.storage.generation(&r).await.expect("generation"), 0);
    let got = b.storage.audit_log(&r, AuditQuery::default()).await.expect("audit");
    assert_eq!(got.len(), 1);
    assert_eq!(got, vec![appended(&a, &got[0], 1)]);
    assert_chain(b, &r, 1).await;
    assert_eq!(b.storage.idempotency(&r, "k-attempt").await.expect("idem"), Some(idem));
}

pub async fn audit_log_is_newest_first_and_limited(b: &Backend) {
    let r = ring("conf-audit");
    for i in 0..5 {
        let a = sample_audit(r.as_str(), t0() + TimeDelta::seconds(i), 0, Outcome::LockBusy);
        b.storage.record_attempt(&a, None, &linker()).await.expect("record");
    }
    let got = b.storage.audit_log(&r, AuditQuery { limit: 3 }).await.expect("audit");
    let times: Vec<_> = got.iter().map(|a| a.at).collect();
    assert_eq!(
        times,
        vec![
            t0() + TimeDelta::seconds(4),
            t0() + TimeDelta::seconds(3),
            t0() + TimeDelta::seconds(2)
        ]
    );
}

pub async fn idempotency_first_answer_wins(b: &Backend) {
    let r = ring("conf-idem");
    let first = IdempotencyRecord {
        ring: r.to_string(),
        key: "same".into(),
        request_hash: "h1".into(),
        response: "first".into(),
        created_at: t0(),
    };
    let second = IdempotencyRecord {
        response: "second".into(),
        ..first.clone()
    };
    b.storage
        .record_attempt(
            &sample_audit(r.as_str(), t0(), 0, Outcome::Refused),
            Some(&first),
            &linker(),
        )
        .await
        .expect("1");
    let _ = b
        .storage
        .record_attempt(
            &sample_audit(r.as_str(), t0(), 0, Outcome::Refused),
            Some(&second),
            &linker(),
        )
        .await;
    assert_eq!(
        b.storage
            .idempotency(&r, "same")
            .await
            .expect("idem")
            .map(|i| i.response)
            .as_deref(),
        Some("first")
    );
}

pub async fn rings_are_isolated(b: &Backend) {
    let (r1, r2) = (ring("conf-iso-a"), ring("conf-iso-b"));
    let k = sample_key(r1.as_str(), KeyState::Active, t0());
    b.storage
        .commit(&commit(&r1, 0, vec![k.clone()], t0()), &linker())
        .await
        .expect("c1");
    assert_eq!(b.storage.generation(&r2).await.expect("g"), 0);
    assert!(b.storage.load(&r2).await.expect("load").keys.is_empty());
    // The same kid may exist in two rings.
    assert_eq!(
        b.storage
            .commit(&commit(&r2, 0, vec![k], t0()), &linker())
            .await
            .expect("c2"),
        CommitOutcome::Committed
    );
    assert_eq!(
        b.storage.audit_log(&r1, AuditQuery::default()).await.expect("a").len(),
        1
    );
}

pub async fn lock_is_exclusive_until_released(b: &Backend) {
    let r = ring("conf-lock");
    let ttl = Duration::from_secs(30);
    let g1 = b
        .lock
        .try_acquire(&r, "a", ttl)
        .await
        .expect("acquire")
        .expect("free lock is granted");
    assert!(
        b.lock.try_acquire(&r, "b", ttl).await.expect("acquire").is_none(),
        "held lock is refused"
    );
    g1.release().await.expect("release");
    let g2 = b
        .lock
        .try_acquire(&r, "b", ttl)
        .await
        .expect("acquire")
        .expect("released lock is granted");
    g2.release().await.expect("release");
}

pub async fn locks_are_per_ring(b: &Backend) {
    let ttl = Duration::from_secs(30);
    let g1 = b
        .lock
        .try_acquire(&ring("conf-lock-a"), "a", ttl)
        .await
        .expect("a")
        .expect("granted");
    let g2 = b
        .lock
        .try_acquire(&ring("conf-lock-b"), "a", ttl)
        .await
        .expect("b")
        .expect("other ring is independent");
    g1.release().await.expect("release");
    g2.release().await.expect("release");
}

fn rotator(b: &Backend, r: &RingName, clock: &ManualClock, sealer: Arc<MasterKeySealer>, instance: &str) -> Rotator {
    Rotator::builder(r.clone(), b.storage.clone(), b.lock.clone(), sealer)
        .with_clock(Arc::new(clock.clone()))
        .with_instance(instance)
        .build()
}

pub async fn rotator_lifecycle_on_backend(b: &Backend) {
    let r = ring("conf-lifecycle");
    let clock = ManualClock::new(t0());
    let sealer = Arc::new(sealer());
    let rot = rotator(b, &r, &clock, sealer, "a");
    let boot = rot.init(RequestContext::actor("conformance")).await.expect("init");
    assert_eq!(boot.outcome, Outcome::Bootstrapped);
    let first = boot.new_kid.clone().expect("new kid");
    // Within min_interval a normal rotation is refused with the exact retry-after.
    clock.advance(TimeDelta::days(1));
    let limited = rot.rotate(RequestContext::actor("svc")).await.expect("rotate");
    assert_eq!(limited.outcome, Outcome::RateLimited);
    assert_eq!(limited.retry_after_ms, Some(TimeDelta::days(5).num_milliseconds()));
    // After rotation_interval − publish_lead the scheduler publishes a Pending key …
    clock.advance(TimeDelta::days(5));
    let sched = rot.tick().await.expect("tick");
    assert_eq!(sched.outcome, Outcome::Scheduled);
    let next = sched.new_kid.clone().expect("pending kid");
    // … which activates after publish_lead.
    clock.advance(TimeDelta::days(1));
    let rotated = rot.tick().await.expect("tick");
    assert_eq!(rotated.outcome, Outcome::Rotated);
    assert_eq!(rotated.old_kid.as_deref(), Some(first.as_str()));
    assert_eq!(rotated.new_kid.as_deref(), Some(next.as_str()));
    let ring_now = b.storage.load(&r).await.expect("load");
    assert_eq!(ring_now.active().map(|k| k.kid.as_str()), Some(next.as_str()));
    assert_eq!(ring_now.key(&first).map(|k| k.state), Some(KeyState::Retiring));
    assert_eq!(ring_now.generation, 3);
    let audit = b.storage.audit_log(&r, AuditQuery { limit: 100 }).await.expect("audit");
    let outcomes: Vec<_> = audit.iter().rev().map(|a| a.outcome).collect();
    assert_eq!(
        outcomes,
        vec![
            Outcome::Bootstrapped,
            Outcome::RateLimited,
            Outcome::Scheduled,
            Outcome::Rotated
        ]
    );
    assert!(to_millis(clock.now()) == clock.now());
}

pub async fn concurrent_rotators_rotate_exactly_once(b: &Backend) {
    let r = ring("conf-rotators");
    let clock = ManualClock::new(t0());
    let sealer = Arc::new(sealer());
    let first = rotator(b, &r, &clock, sealer.clone(), "boot");
    first.init(RequestContext::actor("conformance")).await.expect("init");
    clock.advance(TimeDelta::hours(2));
    let rotators: Vec<Rotator> = (0..8)
        .map(|i| rotator(b, &r, &clock, sealer.clone(), &format!("i{i}")))
        .collect();
    let reports = futures_join_all(
        rotators
            .iter()
            .map(|rot| rot.force_rotate(RequestContext::actor("breakglass"), "leak drill", false)),
    )
    .await;
    let rotated = reports
        .iter()
        .filter(|x| matches!(x, Ok(rep) if rep.outcome == Outcome::Rotated))
        .count();
    assert_eq!(rotated, 1, "exactly one forced rotation happens: {reports:?}");
    for rep in &reports {
        let rep = rep.as_ref().expect("no attempt fails");
        assert!(
            matches!(
                rep.outcome,
                Outcome::Rotated | Outcome::LockBusy | Outcome::LostRace | Outcome::RateLimited
            ),
            "{rep:?}"
        );
    }
    let loaded = b.storage.load(&r).await.expect("load");
    assert_eq!(loaded.in_state(KeyState::Active).count(), 1);
    assert_eq!(loaded.keys.len(), 2);
    assert_eq!(loaded.generation, 2);
    let audit = b.storage.audit_log(&r, AuditQuery { limit: 100 }).await.expect("audit");
    assert_eq!(
        audit.len(),
        1 + 8,
        "the bootstrap and every one of the 8 attempts is audited"
    );
}

pub async fn manifest_is_stored_with_each_commit(b: &Backend) {
    let r = ring("conf-manifest");
    assert_eq!(b.storage.load(&r).await.expect("load").manifest, None);
    let k = sample_key(r.as_str(), KeyState::Active, t0());
    b.storage
        .commit(&commit(&r, 0, vec![k], t0()), &linker())
        .await
        .expect("c1");
    let mut c2 = commit(&r, 1, Vec::new(), t0());
    c2.manifest = "second manifest".into();
    assert_eq!(
        b.storage.commit(&c2, &linker()).await.expect("c2"),
        CommitOutcome::Committed
    );
    let mut stale = commit(&r, 1, Vec::new(), t0());
    stale.manifest = "stale manifest".into();
    assert_eq!(
        b.storage.commit(&stale, &linker()).await.expect("c3"),
        CommitOutcome::Conflict { current: 2 }
    );
    let loaded = b.storage.load(&r).await.expect("load");
    assert_eq!(loaded.generation, 2);
    assert_eq!(
        loaded.manifest.as_deref(),
        Some("second manifest"),
        "the manifest moves with the generation; a conflicting commit writes none"
    );
}

pub async fn audit_chain_links_every_append(b: &Backend) {
    let r = ring("conf-chain");
    let lk = linker();
    b.storage
        .record_attempt(&sample_audit(r.as_str(), t0(), 0, Outcome::Refused), None, &lk)
        .await
        .expect("a1");
    b.storage
        .commit(
            &commit(&r, 0, vec![sample_key(r.as_str(), KeyState::Active, t0())], t0()),
            &lk,
        )
        .await
        .expect("c1");
    // A conflicting commit appends nothing.
    let _ = b
        .storage
        .commit(&commit(&r, 0, Vec::new(), t0()), &lk)
        .await
        .expect("c2");
    b.storage
        .record_attempt(&sample_audit(r.as_str(), t0(), 1, Outcome::LockBusy), None, &lk)
        .await
        .expect("a2");
    assert_chain(b, &r, 3).await;
    // Chains are per ring.
    let other = ring("conf-chain-other");
    b.storage
        .record_attempt(&sample_audit(other.as_str(), t0(), 0, Outcome::Refused), None, &lk)
        .await
        .expect("other");
    assert_chain(b, &other, 1).await;
    assert_chain(b, &r, 3).await;
}

pub async fn concurrent_appends_keep_the_chain_contiguous(b: &Backend) {
    let r = ring("conf-chain-race");
    let lk = linker();
    b.storage
        .commit(
            &commit(&r, 0, vec![sample_key(r.as_str(), KeyState::Active, t0())], t0()),
            &lk,
        )
        .await
        .expect("base");
    let audits: Vec<AuditRecord> = (0..12)
        .map(|i| {
            let mut a = sample_audit(r.as_str(), t0() + TimeDelta::milliseconds(i), 1, Outcome::LockBusy);
            a.id = format!("attempt-{i}");
            a
        })
        .collect();
    let commits: Vec<Commit> = (0..4).map(|_| commit(&r, 1, Vec::new(), t0())).collect();
    let attempts = futures_join_all(audits.iter().map(|a| b.storage.record_attempt(a, None, &lk)));
    let races = futures_join_all(commits.iter().map(|c| b.storage.commit(c, &lk)));
    let (attempts, races) = tokio::join!(attempts, races);
    assert!(attempts.iter().all(Result::is_ok), "{attempts:?}");
    let won = races
        .iter()
        .filter(|x| matches!(x, Ok(CommitOutcome::Committed)))
        .count();
    assert_eq!(won, 1, "{races:?}");
    assert_chain(b, &r, 1 + 12 + 1).await;
}

pub async fn commit_refuses_records_of_another_ring(b: &Backend) {
    let (r, other) = (ring("conf-foreign-a"), ring("conf-foreign-b"));
    let mut c = commit(&r, 0, vec![sample_key(r.as_str(), KeyState::Active, t0())], t0());
    c.audit = sample_audit(other.as_str(), t0(), 1, Outcome::Rotated);
    assert!(
        b.storage.commit(&c, &linker()).await.is_err(),
        "an audit record of another ring is refused"
    );
    let mut c = commit(&r, 0, vec![sample_key(r.as_str(), KeyState::Active, t0())], t0());
    c.idempotency = Some(IdempotencyRecord {
        ring: other.to_string(),
        key: "foreign".into(),
        request_hash: "h".into(),
        response: "{}".into(),
        created_at: t0(),
    });
    assert!(
        b.storage.commit(&c, &linker()).await.is_err(),
        "an idempotency record of another ring is refused"
    );
    for x in [&r, &other] {
        assert_eq!(b.storage.generation(x).await.expect("generation"), 0);
        assert!(
            b.storage
                .audit_log(x, AuditQuery::default())
                .await
                .expect("audit")
                .is_empty()
        );
    }
    assert!(b.storage.idempotency(&other, "foreign").await.expect("idem").is_none());
}
