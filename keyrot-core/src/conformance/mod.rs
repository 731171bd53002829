//! The conformance kit (feature `test-util`): one suite every [`Storage`] + [`Lock`]
//! implementation runs, keyrot's own backends and yours alike, and the ring cases every
//! store that holds many rings ([`RingStorage`]) runs as well.
//!
//! ```
//! use keyrot_core::conformance::{Backend, RingBackend};
//! use keyrot_core::{MemoryLock, MemoryStorage};
//! use std::sync::Arc;
//!
//! // Your setup: a store on a fresh schema, its lock, its change feed if it has one.
//! async fn setup() -> Option<Backend> {
//!     let store = MemoryStorage::new();
//!     Some(Backend::new(Arc::new(store.clone()), Arc::new(MemoryLock::default())).with_feed(Arc::new(store)))
//! }
//!
//! keyrot_core::storage_conformance_tests!(setup);
//!
//! // A store that implements `RingStorage` runs the ring cases too. A `RingBackend` is a
//! // `Backend` as well, so one setup can serve both macros.
//! mod rings {
//!     use super::*;
//!
//!     async fn setup() -> Option<RingBackend> {
//!         let store = MemoryStorage::new();
//!         Some(RingBackend::new(Arc::new(store.clone()), Arc::new(MemoryLock::default())).with_rings_feed(Arc::new(store)))
//!     }
//!
//!     keyrot_core::ring_storage_conformance_tests!(setup);
//! }
//! # fn main() {}
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
use crate::storage::{
    AuditQuery, AuditRecord, ChangeCursor, ChangeFeed, Commit, CommitOutcome, FeedEvent, IdempotencyRecord, Lock,
    Outcome, PollingFeed, PollingRingsFeed, RingEvent, RingStorage, RingsFeed, Storage,
};
use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

mod feed;
mod ledger;
mod manager;
mod master_keys;
mod rings;
mod rotation;
mod store;
mod symmetric;

pub use feed::*;
pub use ledger::*;
pub use manager::*;
pub use master_keys::*;
pub use rings::*;
pub use rotation::*;
pub use store::*;
pub use symmetric::*;

/// A backend under test: fresh (empty) for each case.
pub struct Backend {
    /// The storage.
    pub storage: Arc<dyn Storage>,
    /// The lock.
    pub lock: Arc<dyn Lock>,
    feed: Option<Arc<dyn ChangeFeed>>,
    teardown: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl Backend {
    /// A backend without teardown.
    pub fn new(storage: Arc<dyn Storage>, lock: Arc<dyn Lock>) -> Self {
        Self {
            storage,
            lock,
            feed: None,
            teardown: None,
        }
    }

    /// The store's own change feed (e.g. PostgreSQL `LISTEN`/`NOTIFY`); without one the
    /// feed cases run on a [`PollingFeed`] over the storage.
    pub fn with_feed(mut self, feed: Arc<dyn ChangeFeed>) -> Self {
        self.feed = Some(feed);
        self
    }

    /// The change feed the feed cases subscribe to.
    pub fn feed(&self) -> Arc<dyn ChangeFeed> {
        self.feed
            .clone()
            .unwrap_or_else(|| Arc::new(PollingFeed::new(self.storage.clone(), Duration::from_millis(50))))
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

/// A backend whose store holds many rings ([`RingStorage`]): what the ring cases
/// ([`ring_storage_conformance_tests!`](crate::ring_storage_conformance_tests)) run on.
/// It is a [`Backend`] as well (it dereferences to one, over the same store), so one
/// setup serves both macros.
pub struct RingBackend {
    /// The storage, with its many-rings capability.
    pub storage: Arc<dyn RingStorage>,
    backend: Backend,
    rings_feed: Option<Arc<dyn RingsFeed>>,
}

impl RingBackend {
    /// A backend without teardown.
    pub fn new(storage: Arc<dyn RingStorage>, lock: Arc<dyn Lock>) -> Self {
        Self {
            backend: Backend::new(storage.clone(), lock),
            storage,
            rings_feed: None,
        }
    }

    /// The store's own change feed for one ring ([`Backend::with_feed`]).
    pub fn with_feed(mut self, feed: Arc<dyn ChangeFeed>) -> Self {
        self.backend = self.backend.with_feed(feed);
        self
    }

    /// The store's own feed over all rings (e.g. PostgreSQL's one `LISTEN` channel);
    /// without one the cases run on a [`PollingRingsFeed`] over the storage.
    pub fn with_rings_feed(mut self, feed: Arc<dyn RingsFeed>) -> Self {
        self.rings_feed = Some(feed);
        self
    }

    /// The feed over all rings the cases subscribe to.
    pub fn rings_feed(&self) -> Arc<dyn RingsFeed> {
        self.rings_feed
            .clone()
            .unwrap_or_else(|| Arc::new(PollingRingsFeed::new(self.storage.clone(), Duration::from_millis(50))))
    }

    /// Runs `teardown` after the case ([`Backend::with_teardown`]).
    pub fn with_teardown(mut self, teardown: impl Future<Output = ()> + Send + 'static) -> Self {
        self.backend = self.backend.with_teardown(teardown);
        self
    }

    /// Runs the teardown.
    pub async fn finish(self) {
        self.backend.finish().await;
    }
}

impl std::ops::Deref for RingBackend {
    type Target = Backend;

    fn deref(&self) -> &Backend {
        &self.backend
    }
}

/// Generates one `#[tokio::test]` per conformance case of every
/// [`Storage`](crate::Storage) + [`Lock`](crate::Lock), each calling `$setup().await` (an
/// `async fn() -> Option<Backend>`, or `Option<RingBackend>`) for a fresh backend.
#[macro_export]
macro_rules! storage_conformance_tests {
    ($setup:path) => {
        $crate::__conformance_cases!(
            $setup;
            empty_ring_loads_at_generation_zero,
            commit_round_trips_every_field,
            load_public_is_load_without_sealed_material,
            stale_generation_conflicts_and_writes_nothing,
            commit_moves_the_ring_to_its_audit_records_generation,
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
            symmetric_rings_rotate_exactly_once_and_keep_old_ciphertexts,
            tampered_symmetric_rows_are_refused,
            manifest_is_stored_with_each_commit,
            audit_chain_links_every_append,
            concurrent_appends_keep_the_chain_contiguous,
            commit_refuses_records_of_another_ring,
            change_feed_announces_each_commit,
            change_feed_is_per_ring,
        );
    };
}

/// Generates one `#[tokio::test]` per ring case (the next-due index, the listing of
/// rings, the feed over all rings, the ring manager), each calling `$setup().await` (an
/// `async fn() -> Option<RingBackend>`) for a fresh backend. A store that implements
/// [`RingStorage`](crate::RingStorage) runs these besides
/// [`storage_conformance_tests!`](crate::storage_conformance_tests), which the same setup
/// can serve.
#[macro_export]
macro_rules! ring_storage_conformance_tests {
    ($setup:path) => {
        $crate::__conformance_cases!(
            $setup;
            commits_keep_the_next_due_time_and_due_rings_lists_the_due,
            reschedule_applies_only_at_the_same_generation,
            list_rings_pages_by_name,
            rings_feed_announces_every_rings_commits,
            rings_changed_since_lists_the_rings_committed_after_its_cursor,
            rotator_commits_write_the_planned_next_due_time,
            manager_ticks_only_the_due_rings,
            manager_follows_many_rings_through_one_feed,
            manager_keeps_loaded_snapshots_within_bounds,
            managers_rotate_many_rings_exactly_once,
            manager_retires_a_ring_for_good,
        );
    };
}

/// Generates one `#[tokio::test]` per case of the storage of wrapped master keys
/// ([`MasterKeyStorage`](crate::custody::MasterKeyStorage)), each calling `$setup().await`
/// (an `async fn() -> Option<MasterKeyBackend>`) for a fresh, empty store.
#[macro_export]
macro_rules! master_key_storage_conformance_tests {
    ($setup:path) => {
        $crate::__conformance_cases!(
            $setup;
            master_keys_start_empty,
            master_key_insert_round_trips_every_field,
            master_key_duplicate_id_changes_nothing,
            master_keys_list_oldest_first_then_by_id,
            master_key_rewrap_is_a_compare_and_swap,
            master_key_rewrap_of_an_unknown_id_is_refused,
            master_key_large_blob_round_trips_byte_exactly,
            master_key_ids_and_keks_are_compared_byte_exactly,
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
                    None => {
                        assert!(
                            !::std::env::var("CI").is_ok_and(|v| v == "true"),
                            "CI=true: {} needs its backend, and the setup found none configured",
                            stringify!($case)
                        );
                        println!("skipped {}: backend not configured", stringify!($case))
                    }
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
        remote: None,
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
        next_due: None,
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
