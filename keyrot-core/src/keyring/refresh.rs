//! How a key ring learns of changes: refresh, full reload, the refresher task.

use super::*;
use crate::ring::Ring;
use crate::storage::FeedEvent;
use tokio::sync::watch;

impl KeyRing {
    /// At most one refresh per interval, shared by every request waiting on it: a request
    /// that meets an unknown kid waits for the next refresh that starts after it arrived
    /// (at most one interval), so a real new kid is delayed by at most that, and a flood
    /// of random kids costs one generation query per interval.
    pub(super) async fn refresh_for_unknown_kid(&self, kid: &str) -> bool {
        let arrived = self.inner.unknown_kid_started.load(Ordering::Acquire);
        let mut gate = self.inner.unknown_kid_gate.lock().await;
        if self.inner.snapshot.load().public.contains(kid) {
            return true;
        }
        if self.inner.unknown_kid_started.load(Ordering::Acquire) != arrived {
            // A refresh started (and, since it ran under the gate, finished) after this
            // request arrived: storage was consulted; the kid is not there.
            return false;
        }
        if let Some(last) = *gate {
            tokio::time::sleep_until(last + self.inner.unknown_kid_interval).await;
        }
        *gate = Some(tokio::time::Instant::now());
        self.inner.unknown_kid_started.fetch_add(1, Ordering::AcqRel);
        tracing::debug!(ring = %self.inner.ring, "unknown kid: refreshing key ring");
        crate::metrics::unknown_kid_refresh(&self.inner.ring);
        match self.refresh().await {
            Ok(_) => self.inner.snapshot.load().public.contains(kid),
            Err(_) => false,
        }
    }

    /// Reloads the ring if its generation moved. Returns whether the snapshot changed.
    /// On failure the old snapshot stays and the ring reports itself stale.
    pub async fn refresh(&self) -> Result<bool, RefreshError> {
        let _g = self.inner.refresh_lock.lock().await;
        let result = self.refresh_locked().await;
        match &result {
            Ok(_) => self.inner.stale.store(false, Ordering::Relaxed),
            Err(e) => {
                self.inner.stale.store(true, Ordering::Relaxed);
                tracing::warn!(ring = %self.inner.ring, error = %crate::ErrorChain(e), "key ring refresh failed; serving the last snapshot");
            }
        }
        self.refreshed(result.as_ref().err());
        result
    }

    /// Records a refresh's end in the metrics (and the time-dependent gauges).
    fn refreshed(&self, failure: Option<&RefreshError>) {
        let now = self.inner.clock.now();
        if failure.is_none() {
            self.inner
                .last_refresh_ms
                .store(now.timestamp_millis(), Ordering::Relaxed);
        }
        let last = DateTime::<Utc>::from_timestamp_millis(self.inner.last_refresh_ms.load(Ordering::Relaxed));
        crate::metrics::refreshed(&self.inner.ring, failure.map(RefreshError::reason), last, now);
        self.record_clock_gauges();
    }

    /// Updates the gauges that move with the clock (the Active key's age, the time to the
    /// next transition) from the served snapshot, at the clock's now, and adds what the
    /// token cache counted since the last call. Called after every refresh and every
    /// scheduler tick.
    pub(crate) fn record_clock_gauges(&self) {
        let snap = self.inner.snapshot.load();
        super::gauges::clock(&self.inner.ring, &snap, &self.inner.policy, self.inner.clock.now());
        if let Some(cache) = &self.inner.token_cache {
            let (hits, misses, evictions) = cache.take_unexported();
            crate::metrics::token_cache(&self.inner.ring, hits, misses, evictions);
        }
        self.inner.symmetric_uses.flush(&self.inner.ring);
    }

    pub(super) async fn refresh_locked(&self) -> Result<bool, RefreshError> {
        let current = self.inner.snapshot.load().generation;
        let g = self.inner.storage.generation(&self.inner.ring).await?;
        if g == current {
            return Ok(false);
        }
        self.reload_locked().await
    }

    /// Reloads unconditionally (after a change-feed reconnect).
    pub async fn reload(&self) -> Result<bool, RefreshError> {
        let _g = self.inner.refresh_lock.lock().await;
        let r = self.reload_locked().await;
        self.inner.stale.store(r.is_err(), Ordering::Relaxed);
        self.refreshed(r.as_ref().err());
        r
    }

    pub(super) async fn reload_locked(&self) -> Result<bool, RefreshError> {
        let ring = self.inner.storage.load(&self.inner.ring).await?;
        match self.accept(&ring) {
            Ok(changed) => Ok(changed),
            Err(e) => {
                // Storage moved on but its state cannot be accepted: still apply what can
                // only remove trust (a revocation, an expiry), then report.
                let current = self.inner.snapshot.load_full();
                if let Some(narrowed) = current.narrowed_by(&ring, &self.inner.policy, self.inner.clock.now()) {
                    tracing::error!(
                        ring = %self.inner.ring,
                        error = %crate::ErrorChain(&e),
                        "stored ring refused; keys it no longer publishes stop verifying here"
                    );
                    super::gauges::installed(&self.inner.ring, &narrowed, &self.inner.policy, self.inner.clock.now());
                    self.inner.snapshot.store(Arc::new(narrowed));
                }
                Err(e)
            }
        }
    }

    /// The snapshot this ring would serve for `ring` now, refused when it is older than
    /// one already served.
    fn build_snapshot(&self, ring: &Ring) -> Result<Snapshot, RefreshError> {
        let snap = Snapshot::build_with_type(
            ring,
            &self.inner.policy,
            &*self.inner.sealer,
            self.inner.clock.now(),
            &self.inner.token_type,
        )?;
        self.check_not_older(&snap)?;
        Ok(snap)
    }

    pub(super) fn accept(&self, ring: &Ring) -> Result<bool, RefreshError> {
        let current = self.inner.snapshot.load().generation;
        let snap = self.build_snapshot(ring)?;
        let changed = snap.generation != current;
        self.store(snap);
        if changed {
            tracing::info!(ring = %self.inner.ring, generation = ring.generation, "key ring snapshot updated");
        }
        Ok(changed)
    }

    /// Installs a snapshot of `ring` directly if it is newer (the rotator does this after
    /// committing, so the committing instance serves the change at once).
    pub(crate) async fn install(&self, ring: &Ring) -> Result<(), RefreshError> {
        let _g = self.inner.refresh_lock.lock().await;
        // Compared with the authenticated generation: the served snapshot's stored one may
        // be an altered column that this commit (a repair) has just corrected downwards.
        if ring.name != self.inner.ring || ring.generation <= self.inner.snapshot.load().authenticated_generation() {
            return Ok(());
        }
        let snap = self.build_snapshot(ring)?;
        self.store(snap);
        Ok(())
    }

    /// Refuses a snapshot whose authenticated generation is older than one this handle
    /// served (a rollback of the store, which could resurrect revoked keys).
    pub(super) fn check_not_older(&self, snap: &Snapshot) -> Result<(), RefreshError> {
        let served = self.highest_generation();
        let found = snap.authenticated_generation();
        if found < served {
            tracing::error!(
                ring = %self.inner.ring,
                found,
                served,
                "storage went back to an older generation (a database rollback?): keeping the snapshot"
            );
            return Err(RefreshError::Rollback { found, served });
        }
        Ok(())
    }

    pub(super) fn store(&self, snap: Snapshot) {
        self.inner
            .highest_generation
            .fetch_max(snap.authenticated_generation(), Ordering::AcqRel);
        super::gauges::installed(&self.inner.ring, &snap, &self.inner.policy, self.inner.clock.now());
        self.inner.snapshot.store(Arc::new(snap));
    }

    /// Starts a task that keeps the snapshot fresh: it follows `feed` (if any), polls the
    /// generation every `poll_interval` as a fallback, and reloads fully after a feed
    /// reconnect. Stop it with [`RefresherHandle::shutdown`].
    pub fn spawn_refresher(&self, feed: Option<Arc<dyn ChangeFeed>>, poll_interval: Duration) -> RefresherHandle {
        spawn_follower(self.clone(), feed, poll_interval)
    }
}

#[async_trait::async_trait]
impl Follows for KeyRing {
    fn followed_ring(&self) -> &RingName {
        self.ring()
    }

    fn served_generation(&self) -> u64 {
        self.snapshot().generation()
    }

    async fn refresh_now(&self) {
        let _ = self.refresh().await;
    }

    async fn reload_now(&self) {
        let _ = self.reload().await;
    }
}

/// A handle a refresher task keeps fresh ([`KeyRing`], [`crate::PublicKeyRing`]). A failed
/// refresh is reported by the handle itself (it is then stale).
#[async_trait::async_trait]
pub(crate) trait Follows: Clone + Send + Sync + 'static {
    /// The ring it serves.
    fn followed_ring(&self) -> &RingName;
    /// The generation of the view it serves.
    fn served_generation(&self) -> u64;
    /// Reloads if the stored generation moved.
    async fn refresh_now(&self);
    /// Reloads unconditionally.
    async fn reload_now(&self);
}

/// The refresher task: follows `feed` (if any), polls every `poll_interval` as a
/// fallback, and reloads fully after a feed (re)subscribe.
pub(crate) fn spawn_follower<F: Follows>(
    ring: F,
    feed: Option<Arc<dyn ChangeFeed>>,
    poll_interval: Duration,
) -> RefresherHandle {
    let (tx, mut rx) = watch::channel(false);
    let join = tokio::spawn(async move {
        let mut stream = None;
        let mut poll = tokio::time::interval(poll_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if stream.is_none()
                && let Some(f) = &feed
            {
                match f.subscribe(ring.followed_ring()).await {
                    Ok(s) => {
                        stream = Some(s);
                        // Anything sent while we were not listening is lost.
                        ring.reload_now().await;
                    }
                    Err(e) => tracing::warn!(error = %e, "change feed subscribe failed; polling"),
                }
            }
            tokio::select! {
                _ = rx.changed() => break,
                _ = poll.tick() => ring.refresh_now().await,
                ev = async {
                    match stream.as_mut() {
                        Some(s) => s.next().await,
                        None => std::future::pending().await,
                    }
                } => {
                    match ev {
                        // Any other generation, lower too: the column is not authenticated (a repair
                        // moves a ring whose column was altered back down).
                        Ok(FeedEvent::Changed(g)) if g != ring.served_generation() => ring.refresh_now().await,
                        Ok(FeedEvent::Changed(_)) => {}
                        Ok(FeedEvent::Resync) => ring.reload_now().await,
                        Err(e) => {
                            tracing::warn!(error = %e, "change feed failed; resubscribing");
                            stream = None;
                        }
                    }
                }
            }
        }
    });
    RefresherHandle { tx, join }
}

/// Stops a refresher task.
#[derive(Debug)]
pub struct RefresherHandle {
    tx: watch::Sender<bool>,
    join: tokio::task::JoinHandle<()>,
}

impl RefresherHandle {
    /// Asks the task to stop and waits for it.
    pub async fn shutdown(self) {
        let _ = self.tx.send(true);
        let _ = self.join.await;
    }
}
