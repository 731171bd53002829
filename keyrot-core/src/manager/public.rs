//! What a tenant's JWKS and discovery document serve for a ring that is not loaded: its
//! published keys, authenticated by the ring manifest's MAC, without opening any sealed
//! key. An anonymous request never unseals a signing key.

use super::RingManager;
use crate::alg::Algorithm;
use crate::jwks::Jwks;
use crate::keyring::{KeyRing, RefreshError, trusted_rows};
use crate::ring::{Ring, RingName};
use crate::seal::{SealError, Sealer};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// A ring's published keys, as a tenant's JWKS and discovery document serve them.
#[derive(Debug)]
pub struct PublicView {
    /// The generation the manifest authenticates (never lower than one served before).
    pub generation: u64,
    /// The JWKS of the authenticated published keys.
    pub jwks: Jwks,
    /// The algorithms of the ring's policy and of its published keys.
    pub algs: Vec<Algorithm>,
    /// The authenticated manifest says the ring is retired.
    pub retired: bool,
    built: Instant,
}

impl PublicView {
    /// The view of `ring` as loaded: only rows its manifest authenticates are published.
    /// The sealer checks the manifest's MAC; no sealed key is opened.
    fn build(ring: &Ring, policy: &crate::Policy, sealer: &dyn Sealer) -> Result<Self, RefreshError> {
        let integrity = crate::integrity::check_ring(ring, sealer);
        if let crate::integrity::RingIntegrity::UnknownMasterKey(id) = &integrity.integrity {
            return Err(RefreshError::Seal {
                kid: "manifest".into(),
                source: SealError::UnknownMasterKey(id.clone()),
            });
        }
        let (trusted, jwks) = trusted_rows(ring, policy, |kid| integrity.trusts(kid));
        let mut algs = vec![policy.algorithm()];
        for k in trusted.iter().filter(|k| k.state.is_published()) {
            if !algs.contains(&k.alg) {
                algs.push(k.alg);
            }
        }
        Ok(Self {
            generation: integrity.authenticated_generation().unwrap_or(0),
            jwks,
            algs,
            retired: integrity.retired,
            built: Instant::now(),
        })
    }
}

/// What a tenant's public routes serve a ring from.
#[derive(Debug, Clone)]
pub enum Published {
    /// The loaded ring (its snapshot is already in memory).
    Loaded(KeyRing),
    /// The ring's published keys, read for the public routes only.
    Public(Arc<PublicView>),
}

/// The public views of rings that are not loaded, bounded by count (oldest out).
#[derive(Debug)]
pub(super) struct PublicViews {
    views: HashMap<RingName, Arc<PublicView>>,
    order: VecDeque<RingName>,
    max: usize,
    max_age: Duration,
}

impl PublicViews {
    pub fn new(max: usize, max_age: Duration) -> Self {
        Self {
            views: HashMap::new(),
            order: VecDeque::new(),
            max: max.max(1),
            max_age,
        }
    }

    /// The ring's view, unless it is older than the maximum age.
    pub fn fresh(&self, ring: &RingName) -> Option<Arc<PublicView>> {
        self.views
            .get(ring)
            .filter(|v| v.built.elapsed() < self.max_age)
            .cloned()
    }

    /// Keeps `view` (or the one held, if `view` is older: a store going back to an
    /// older state is not served) and returns what is served.
    fn keep(&mut self, ring: &RingName, view: PublicView) -> Arc<PublicView> {
        if let Some(held) = self.views.get(ring)
            && held.generation > view.generation
        {
            tracing::error!(%ring, found = view.generation, served = held.generation, "storage went back to an older generation: the tenant's JWKS keeps the newer one");
            return held.clone();
        }
        let view = Arc::new(view);
        if self.views.insert(ring.clone(), view.clone()).is_none() {
            self.order.push_back(ring.clone());
        }
        while self.views.len() > self.max {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            self.views.remove(&oldest);
        }
        view
    }

    /// Drops the ring's view (the change feed saw it change).
    pub fn forget(&mut self, ring: &RingName) {
        if self.views.remove(ring).is_some() {
            self.order.retain(|r| r != ring);
        }
    }

    /// Drops every view (the change feed reconnected).
    pub fn clear(&mut self) {
        self.views.clear();
        self.order.clear();
    }
}

impl RingManager {
    /// What the ring's public routes serve, if the store holds it (and it is not
    /// retired): the loaded ring's snapshot, or else its published keys read without
    /// opening any sealed key. An unknown name costs nothing beyond the manager's
    /// known-ring look-up ([`ManagerConfig::unknown_ring_lookup_interval`](super::ManagerConfig::unknown_ring_lookup_interval)).
    pub async fn published(&self, ring: &RingName) -> Result<Option<Published>, RefreshError> {
        if let Some(l) = self.loaded().get(ring) {
            let retired = l.keyring.snapshot().is_retired();
            return Ok(Some(Published::Loaded(l.keyring)).filter(|_| !retired));
        }
        if !self.inner.known.exists(&*self.inner.storage, ring).await? {
            return Ok(None);
        }
        let fresh = self.public_views().fresh(ring);
        let view = match fresh {
            Some(v) => v,
            None => self.build_view(ring).await?,
        };
        Ok((!view.retired).then_some(Published::Public(view)))
    }

    async fn build_view(&self, ring: &RingName) -> Result<Arc<PublicView>, RefreshError> {
        let gate = self.inner.view_flights.gate(ring);
        let _flight = gate.lock().await;
        if let Some(v) = self.public_views().fresh(ring) {
            return Ok(v);
        }
        let built = async {
            let stored = self.inner.storage.load(ring).await?;
            PublicView::build(&stored, &self.policy(ring), &*self.inner.sealer)
        }
        .await;
        self.inner.view_flights.done(ring);
        Ok(self.public_views().keep(ring, built?))
    }
}
