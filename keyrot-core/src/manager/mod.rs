//! The ring manager: one per instance, for every ring of a store.
//!
//! - **One scheduler loop** ([`RingManager::run_due`]) asks the store for the rings due
//!   now through its next-due index ([`RingStorage::due_rings`]), so a pass costs one query
//!   plus the work of the due rings, whatever the number of rings. Each due ring is
//!   ticked by the ring's [`Rotator`], with bounded concurrency: exactly-once per
//!   transition stays the rotator's lock and compare-and-swap. Each commit writes the
//!   ring's next-due time ([`Commit::next_due`](crate::Commit::next_due)).
//! - **One change-feed subscription** for all rings ([`RingsFeed`]) refreshes the rings
//!   loaded here.
//! - **Snapshots loaded on first use** ([`RingManager::keyring`]), kept within a bound
//!   (least recently used out, by count and approximate bytes): signing, verifying and
//!   the JWKS of a loaded ring never touch the database.
//! - **What anonymous requests cost** ([`RingManager::existing_keyring`] and the tenant
//!   routes): a name the store does not hold costs at most one look-up per
//!   [`ManagerConfig::unknown_ring_lookup_interval`] for all names together (the known
//!   rings are kept in memory); a ring is loaded once however many requests ask for it
//!   at the same time; a tenant's JWKS and discovery document never open a sealed key;
//!   and unknown kids refresh at most [`ManagerConfig::unknown_kid_refreshes_per_second`]
//!   rings a second, across all rings.
//! - **Tenant onboarding** ([`RingManager::onboard`]): a ring is created on first use
//!   with its own policy and algorithm, from the policy source every instance shares.
//! - **Tenant offboarding** ([`RingManager::retire`]): every key of the ring revoked and
//!   destroyed, audited; the ring is never due again and never gets a key again.

mod cache;
mod known;
mod limits;
mod public;
mod schedule;
mod serve;

pub use public::{PublicView, Published};
pub use schedule::DuePass;

use crate::clock::{Clock, SystemClock};
use crate::ids::random_hex;
use crate::keyring::{KeyRing, RefreshError};
use crate::policy::Policy;
use crate::ring::RingName;
use crate::rotator::{RequestContext, RotateError, Rotator};
use crate::seal::Sealer;
use crate::storage::{Lock, RingEvent, RingStorage, RingsFeed};
use crate::token::Validation;
use cache::LoadedRings;
use known::KnownRings;
use limits::{Flights, RefreshBudget};
use public::PublicViews;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::watch;

/// How many times onboarding tries while another instance holds the ring's lock.
const ONBOARD_TRIES: usize = 500;

/// The policy (and so the algorithm) of each ring: every instance must answer the same
/// for a ring, as each may tick it.
pub type PolicySource = Arc<dyn Fn(&RingName) -> Policy + Send + Sync>;

/// The manager's bounds and timings.
#[derive(Debug, Clone, Copy)]
pub struct ManagerConfig {
    /// Time between scheduler passes (default 30 s).
    pub interval: Duration,
    /// Up to this much random delay is added to each interval (default 10 s).
    pub jitter: Duration,
    /// How many due rings a pass asks for at once (default 500); a full batch is
    /// followed by the next one at once.
    pub batch: usize,
    /// How many rings are ticked at the same time (default 4). Each takes up to two
    /// connections of a pooled store (the lock's and the commit's).
    pub concurrency: usize,
    /// At most this many rings are loaded at once (default 10,000).
    pub max_loaded_rings: usize,
    /// At most about this many bytes of snapshots are loaded at once (default 64 MiB).
    pub max_loaded_bytes: usize,
    /// A ring whose tick failed is due again after this long (default 5 min).
    pub retry_after: Duration,
    /// A ring name not known to this instance is looked up in the store at most once per
    /// this interval, for all names together (default 1 s): a flood of random names
    /// costs one query per interval. A ring created elsewhere is known at once through
    /// the change feed, or after at most this long otherwise.
    pub unknown_ring_lookup_interval: Duration,
    /// At most this many unknown-kid refreshes a second across every ring verified
    /// through the manager (default 10); beyond it an unknown kid is refused without a
    /// refresh.
    pub unknown_kid_refreshes_per_second: u32,
    /// The published keys of a ring that is not loaded, read for its tenant JWKS and
    /// discovery document, are read again after this long (default 60 s; at once when
    /// the change feed reports the ring changed).
    pub public_view_max_age: Duration,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(30),
            jitter: Duration::from_secs(10),
            batch: 500,
            concurrency: 4,
            max_loaded_rings: 10_000,
            max_loaded_bytes: 64 << 20,
            retry_after: Duration::from_secs(300),
            unknown_ring_lookup_interval: Duration::from_secs(1),
            unknown_kid_refreshes_per_second: 10,
            public_view_max_age: Duration::from_secs(60),
        }
    }
}

/// Why a ring could not be served or onboarded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManagerError {
    /// The ring's snapshot could not be loaded.
    #[error(transparent)]
    Refresh(#[from] RefreshError),
    /// The ring's first key could not be created.
    #[error(transparent)]
    Rotate(#[from] RotateError),
    /// The ring was retired (its tenant offboarded): it takes no new key.
    #[error("ring {ring} is retired (offboarded): it takes no new keys")]
    Retired {
        /// The ring.
        ring: RingName,
    },
}

struct Inner {
    storage: Arc<dyn RingStorage>,
    lock: Arc<dyn Lock>,
    sealer: Arc<dyn Sealer>,
    clock: Arc<dyn Clock>,
    instance: String,
    policies: PolicySource,
    validation: Validation,
    feed: Option<Arc<dyn RingsFeed>>,
    config: ManagerConfig,
    loaded: Mutex<LoadedRings>,
    issuers: Option<IssuerOf>,
    known: KnownRings,
    load_flights: Flights,
    view_flights: Flights,
    public_views: Mutex<PublicViews>,
    unknown_kid_budget: RefreshBudget,
}

/// The issuer URL of each ring (the `iss` of its tokens, exactly).
pub type IssuerOf = Arc<dyn Fn(&RingName) -> String + Send + Sync>;

/// Manages every ring of a store on this instance. Cheap to clone.
#[derive(Clone)]
pub struct RingManager {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RingManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (rings, bytes) = self.loaded_usage();
        f.debug_struct("RingManager")
            .field("instance", &self.inner.instance)
            .field("loaded_rings", &rings)
            .field("loaded_bytes", &bytes)
            .finish_non_exhaustive()
    }
}

/// Builds a [`RingManager`].
pub struct RingManagerBuilder {
    storage: Arc<dyn RingStorage>,
    lock: Arc<dyn Lock>,
    sealer: Arc<dyn Sealer>,
    clock: Arc<dyn Clock>,
    instance: Option<String>,
    policies: PolicySource,
    validation: Validation,
    feed: Option<Arc<dyn RingsFeed>>,
    config: ManagerConfig,
    issuers: Option<IssuerOf>,
}

impl std::fmt::Debug for RingManagerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingManagerBuilder")
            .field("instance", &self.instance)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl RingManagerBuilder {
    /// Clock (default: system).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// This instance's name in audit records and lock holders (default: random).
    pub fn with_instance(mut self, instance: impl Into<String>) -> Self {
        self.instance = Some(instance.into());
        self
    }

    /// One policy for every ring (default: [`Policy::default`]).
    pub fn with_policy(self, policy: Policy) -> Self {
        self.with_policies(Arc::new(move |_: &RingName| policy.clone()))
    }

    /// Each ring's policy and algorithm (a tenant's settings), the same on every instance.
    pub fn with_policies(mut self, policies: PolicySource) -> Self {
        self.policies = policies;
        self
    }

    /// The token validation rules of every ring's key ring.
    pub fn with_validation(mut self, validation: Validation) -> Self {
        self.validation = validation;
        self
    }

    /// The change feed over all rings that keeps loaded rings fresh (PostgreSQL's
    /// `LISTEN`, or a [`PollingRingsFeed`](crate::PollingRingsFeed)); without one, loaded
    /// rings learn of other instances' changes only by an unknown kid.
    pub fn with_feed(mut self, feed: Arc<dyn RingsFeed>) -> Self {
        self.feed = Some(feed);
        self
    }

    /// Each ring's issuer URL: its tenant discovery document names it, and the tenant
    /// middleware accepts a ring's tokens only with exactly this `iss`.
    pub fn with_issuers(mut self, issuers: IssuerOf) -> Self {
        self.issuers = Some(issuers);
        self
    }

    /// Bounds and timings.
    pub fn with_config(mut self, config: ManagerConfig) -> Self {
        self.config = config;
        self
    }

    /// The manager (nothing runs until [`RingManager::spawn`] or [`RingManager::run_due`]).
    pub fn build(self) -> RingManager {
        let c = self.config;
        RingManager {
            inner: Arc::new(Inner {
                storage: self.storage,
                lock: self.lock,
                sealer: self.sealer,
                clock: self.clock,
                instance: self.instance.unwrap_or_else(|| format!("instance-{}", random_hex(4))),
                policies: self.policies,
                validation: self.validation,
                feed: self.feed,
                config: c,
                loaded: Mutex::new(LoadedRings::new(c.max_loaded_rings, c.max_loaded_bytes)),
                issuers: self.issuers,
                known: KnownRings::new(c.unknown_ring_lookup_interval),
                load_flights: Flights::default(),
                view_flights: Flights::default(),
                public_views: Mutex::new(PublicViews::new(c.max_loaded_rings, c.public_view_max_age)),
                unknown_kid_budget: RefreshBudget::new(c.unknown_kid_refreshes_per_second),
            }),
        }
    }
}

impl RingManager {
    /// Starts building a manager over `storage`, a store that holds many rings
    /// ([`RingStorage`]: its next-due index, its listing of rings).
    pub fn builder(storage: Arc<dyn RingStorage>, lock: Arc<dyn Lock>, sealer: Arc<dyn Sealer>) -> RingManagerBuilder {
        RingManagerBuilder {
            storage,
            lock,
            sealer,
            clock: Arc::new(SystemClock),
            instance: None,
            policies: Arc::new(|_: &RingName| Policy::default()),
            validation: Validation::default(),
            feed: None,
            config: ManagerConfig::default(),
            issuers: None,
        }
    }

    /// This instance's name.
    pub fn instance(&self) -> &str {
        &self.inner.instance
    }

    /// The storage.
    pub fn storage(&self) -> &Arc<dyn RingStorage> {
        &self.inner.storage
    }

    /// The ring's policy, from the policy source.
    pub fn policy(&self, ring: &RingName) -> Policy {
        (self.inner.policies)(ring)
    }

    fn loaded(&self) -> MutexGuard<'_, LoadedRings> {
        self.inner.loaded.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn public_views(&self) -> MutexGuard<'_, PublicViews> {
        self.inner.public_views.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The ring's issuer URL, when the manager was given them ([`RingManagerBuilder::with_issuers`]).
    pub fn issuer(&self, ring: &RingName) -> Option<String> {
        self.inner.issuers.as_ref().map(|f| f(ring))
    }

    /// Whether the manager was given the rings' issuer URLs ([`RingManagerBuilder::with_issuers`]).
    pub fn has_issuers(&self) -> bool {
        self.inner.issuers.is_some()
    }

    /// How many rings are loaded, and about how many bytes their snapshots take.
    pub fn loaded_usage(&self) -> (usize, usize) {
        self.loaded().usage()
    }

    /// Whether the ring is loaded (without marking it used).
    pub fn is_loaded(&self, ring: &RingName) -> bool {
        self.loaded().peek(ring).is_some()
    }

    fn rotator_for(&self, ring: &RingName, policy: Policy, keyring: Option<KeyRing>) -> Rotator {
        let b = Rotator::builder(
            ring.clone(),
            self.inner.storage.clone(),
            self.inner.lock.clone(),
            self.inner.sealer.clone(),
        )
        .with_clock(self.inner.clock.clone())
        .with_policy(policy)
        .with_instance(self.inner.instance.clone());
        match keyring {
            Some(k) => b.with_keyring(k).build(),
            None => b.build(),
        }
    }

    /// The ring's key ring, loaded on first use (one read) and served from memory after
    /// that; kept fresh by the change feed while it stays loaded. A ring not used for a
    /// while may be evicted to keep the bound: a handle kept by the caller still works,
    /// but is no longer refreshed by the manager.
    pub async fn keyring(&self, ring: &RingName) -> Result<KeyRing, RefreshError> {
        Ok(self.load(ring).await?.keyring)
    }

    /// The ring's rotator (the loaded ring's, which updates its snapshot at each commit).
    pub fn rotator(&self, ring: &RingName) -> Rotator {
        match self.loaded().get(ring) {
            Some(l) => l.rotator,
            None => self.rotator_for(ring, self.policy(ring), None),
        }
    }

    /// Tenant onboarding: the ring's key ring, with its first Active key created (with
    /// the ring's policy and algorithm) if it has none yet. Exactly one instance creates
    /// it when several onboard the same ring at once; every one gets the ring.
    pub async fn onboard(&self, ring: &RingName, ctx: RequestContext) -> Result<KeyRing, ManagerError> {
        let loaded = self.load(ring).await?;
        let retired = || ManagerError::Retired { ring: ring.clone() };
        // Another instance onboarding it at the same time holds the lock: wait for its
        // commit (bounded), then read it.
        for _ in 0..ONBOARD_TRIES {
            let snapshot = loaded.keyring.snapshot();
            if snapshot.is_retired() {
                return Err(retired());
            }
            if snapshot.active_kid().is_some() {
                break;
            }
            let report = loaded.rotator.init(ctx.clone()).await?;
            tracing::info!(%ring, outcome = report.outcome.as_str(), "ring onboarding");
            if report.refusal == Some(crate::planner::Refusal::RingRetired) {
                let _ = loaded.keyring.reload().await;
                return Err(retired());
            }
            if loaded.keyring.snapshot().active_kid().is_none() {
                if report.outcome == crate::storage::Outcome::LockBusy {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                loaded.keyring.reload().await?;
            }
        }
        self.loaded().remeasure(ring);
        self.inner.known.add(ring);
        self.public_views().forget(ring);
        Ok(loaded.keyring)
    }

    /// Tenant offboarding: retires the ring ([`Rotator::retire_ring`], audited with
    /// `reason`, required): every key revoked and its private material destroyed, the
    /// ring never due again. Once the change has reached an instance (at once here, by
    /// the change feed elsewhere) it serves the ring as unknown
    /// ([`RingManager::existing_keyring`] is `None`: its tenant JWKS is `404`), and
    /// onboarding it again fails with [`ManagerError::Retired`].
    pub async fn retire(
        &self,
        ring: &RingName,
        ctx: RequestContext,
        reason: impl Into<String>,
    ) -> Result<crate::RotationReport, RotateError> {
        let report = self.rotator(ring).retire_ring(ctx, reason).await?;
        self.loaded().remeasure(ring);
        self.public_views().forget(ring);
        Ok(report)
    }

    /// Applies one change-feed event to the loaded rings.
    async fn follow(&self, event: RingEvent) {
        match event {
            RingEvent::Changed { ring, generation } => {
                self.inner.known.add(&ring);
                self.public_views().forget(&ring);
                let Some(l) = self.loaded().peek(&ring) else {
                    return;
                };
                if l.keyring.snapshot().generation() < generation {
                    // The refresh logs its own failure and keeps the last snapshot.
                    let _ = l.keyring.reload().await;
                    self.loaded().remeasure(&ring);
                }
            }
            _ => self.refresh_all().await,
        }
    }

    /// Refreshes every loaded ring (after the feed reconnected).
    async fn refresh_all(&self) {
        self.public_views().clear();
        let all = self.loaded().all();
        for l in all {
            let _ = l.keyring.refresh().await;
            self.loaded().remeasure(l.keyring.ring());
        }
    }

    /// Starts the scheduler loop and the change-feed subscription in the background.
    pub fn spawn(&self) -> ManagerHandle {
        let (tx, rx) = watch::channel(false);
        let mut tasks = vec![tokio::spawn(schedule::run(self.clone(), rx.clone()))];
        if let Some(feed) = self.inner.feed.clone() {
            tasks.push(tokio::spawn(follow_feed(self.clone(), feed, rx)));
        }
        ManagerHandle { tx, tasks }
    }
}

/// The one subscription to all rings: resubscribes (and refreshes every loaded ring)
/// after the feed fails.
async fn follow_feed(manager: RingManager, feed: Arc<dyn RingsFeed>, mut stop: watch::Receiver<bool>) {
    while !*stop.borrow() {
        let mut stream = match feed.subscribe_all().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %crate::ErrorChain(&e), "ring manager: change feed unavailable; retrying");
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        // What changed before the subscription (or while it was down) is read now.
        manager.refresh_all().await;
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                event = stream.next() => match event {
                    Ok(e) => manager.follow(e).await,
                    Err(e) => {
                        tracing::warn!(error = %crate::ErrorChain(&e), "ring manager: change feed failed; resubscribing");
                        break;
                    }
                },
            }
        }
    }
}

/// The manager's background tasks. Dropping it leaves them running; call
/// [`ManagerHandle::shutdown`] for a clean stop.
#[derive(Debug)]
pub struct ManagerHandle {
    tx: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl ManagerHandle {
    /// Stops the tasks (after the current pass) and waits for them.
    pub async fn shutdown(self) {
        let _ = self.tx.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
