//! The manager's scheduler: one loop over the due rings, found through the store's
//! next-due index.

use super::RingManager;
use crate::ring::RingName;
use crate::storage::Outcome;
use chrono::TimeDelta;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, watch};

/// What one scheduler pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DuePass {
    /// Rings the index listed as due (a ring listed again in a later batch counts again).
    pub due: usize,
    /// Rings this instance changed (committed).
    pub changed: usize,
    /// Rings another instance was working on (lock busy, or it committed first).
    pub elsewhere: usize,
    /// Rings found with nothing due, whose next-due time was corrected.
    pub rescheduled: usize,
    /// Rings whose tick failed (due again after [`ManagerConfig::retry_after`](super::ManagerConfig::retry_after)).
    pub failed: usize,
    /// Index reads that failed (the pass stopped there).
    pub index_errors: usize,
}

/// What a tick of one ring came to.
enum Worked {
    Changed,
    Elsewhere,
    Rescheduled,
    Failed,
}

impl DuePass {
    fn add(&mut self, w: &Worked) {
        match w {
            Worked::Changed => self.changed += 1,
            Worked::Elsewhere => self.elsewhere += 1,
            Worked::Rescheduled => self.rescheduled += 1,
            Worked::Failed => self.failed += 1,
        }
    }
}

/// Random bytes for shuffles and jitter (zeros if the system has none: no shuffle).
fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    u64::from_le_bytes(b)
}

/// Shuffles the due rings, so instances that list the same ones start on different rings.
fn shuffle(rings: &mut [RingName]) {
    for i in (1..rings.len()).rev() {
        let j = usize::try_from(random_u64() % (i as u64 + 1)).unwrap_or(0);
        rings.swap(i, j);
    }
}

impl RingManager {
    /// One scheduler pass: reads the rings due now from the index (in batches while
    /// batches come back full and this instance still makes progress) and ticks each,
    /// at most [`ManagerConfig::concurrency`](super::ManagerConfig::concurrency) at a time.
    pub async fn run_due(&self) -> DuePass {
        let mut pass = DuePass::default();
        let c = self.inner.config;
        loop {
            let now = self.inner.clock.now();
            let mut due = match self.inner.storage.due_rings(now, c.batch).await {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(error = %crate::ErrorChain(&e), "ring manager: could not read the due rings");
                    pass.index_errors += 1;
                    return pass;
                }
            };
            let full = due.len() >= c.batch.max(1);
            pass.due += due.len();
            shuffle(&mut due);
            let before = pass;
            self.work_all(due, &mut pass).await;
            let progress =
                pass.changed + pass.rescheduled + pass.failed > before.changed + before.rescheduled + before.failed;
            if !full || !progress {
                return pass;
            }
        }
    }

    async fn work_all(&self, due: Vec<RingName>, pass: &mut DuePass) {
        let permits = Arc::new(Semaphore::new(self.inner.config.concurrency.max(1)));
        let mut set = tokio::task::JoinSet::new();
        for ring in due {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break;
            };
            let me = self.clone();
            set.spawn(async move {
                let w = me.work(&ring).await;
                drop(permit);
                w
            });
        }
        while let Some(done) = set.join_next().await {
            match done {
                Ok(w) => pass.add(&w),
                Err(_) => pass.failed += 1,
            }
        }
    }

    /// Ticks one due ring.
    async fn work(&self, ring: &RingName) -> Worked {
        let rotator = self.rotator(ring);
        match rotator.tick().await {
            Ok(r) if r.outcome.changed_ring() => {
                self.loaded().remeasure(ring);
                Worked::Changed
            }
            Ok(r) if matches!(r.outcome, Outcome::LockBusy | Outcome::LostRace) => Worked::Elsewhere,
            Ok(_) => self.settle(ring, rotator.policy()).await,
            Err(e) => {
                tracing::warn!(%ring, error = %e.described(), "ring manager: tick failed; retrying later");
                self.retry_later(ring).await;
                Worked::Failed
            }
        }
    }

    /// A ring the index listed but whose tick found nothing due (its next-due time was
    /// written under another policy, or before this index existed): writes the time the
    /// planner gives now.
    async fn settle(&self, ring: &RingName, policy: &crate::Policy) -> Worked {
        let now = self.inner.clock.now();
        let loaded = match self.inner.storage.load(ring).await {
            Ok(r) => r,
            Err(_) => {
                self.retry_later(ring).await;
                return Worked::Failed;
            }
        };
        // A retired ring (as its authenticated manifest says) is never due again.
        let retired = crate::integrity::check_ring(&loaded, &*self.inner.sealer).retired;
        let next = crate::planner::next_due(&loaded, policy, now, retired).map(|at| {
            // Never due again at once: the tick just said nothing is.
            at.max(now + TimeDelta::seconds(1))
        });
        match self.inner.storage.reschedule(ring, loaded.generation, next).await {
            Ok(_) => Worked::Rescheduled,
            Err(_) => Worked::Failed,
        }
    }

    async fn retry_later(&self, ring: &RingName) {
        let c = self.inner.config;
        let at = self.inner.clock.now() + TimeDelta::from_std(c.retry_after).unwrap_or(TimeDelta::minutes(5));
        if let Ok(g) = self.inner.storage.generation(ring).await
            && let Err(e) = self.inner.storage.reschedule(ring, g, Some(at)).await
        {
            tracing::warn!(%ring, error = %crate::ErrorChain(&e), "ring manager: could not reschedule the failed ring");
        }
    }
}

fn jittered(interval: Duration, jitter: Duration) -> Duration {
    let ms = u64::try_from(jitter.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 {
        return interval;
    }
    interval + Duration::from_millis(random_u64() % ms)
}

/// The scheduler loop: a pass at once, then one every jittered interval.
pub(super) async fn run(manager: RingManager, mut stop: watch::Receiver<bool>) {
    let c = manager.inner.config;
    while !*stop.borrow() {
        let pass = manager.run_due().await;
        if pass.due > 0 {
            tracing::debug!(?pass, "ring manager pass");
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(jittered(c.interval, c.jitter)) => {}
        }
    }
}
