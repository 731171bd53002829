//! The in-process scheduler: every instance ticks (jittered); the lock and the
//! compare-and-swap make sure exactly one instance performs each transition.

use crate::rotator::Rotator;
use std::time::Duration;
use tokio::sync::watch;

/// Scheduler settings.
#[derive(Debug, Clone, Copy)]
pub struct SchedulerConfig {
    /// Base interval between ticks (default 30 s).
    pub interval: Duration,
    /// Up to this much random delay is added to each interval (default 10 s), so a fleet
    /// started together does not tick together.
    pub jitter: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(30),
            jitter: Duration::from_secs(10),
        }
    }
}

/// A running scheduler. Dropping it leaves the task running; call
/// [`SchedulerHandle::shutdown`] for a clean stop.
#[derive(Debug)]
pub struct SchedulerHandle {
    tx: watch::Sender<bool>,
    join: tokio::task::JoinHandle<u64>,
}

impl SchedulerHandle {
    /// Stops after the current tick (if one is running) and returns how many ticks ran.
    pub async fn shutdown(self) -> u64 {
        let _ = self.tx.send(true);
        self.join.await.unwrap_or(0)
    }
}

fn jittered(cfg: &SchedulerConfig) -> Duration {
    let jitter_ms = u64::try_from(cfg.jitter.as_millis()).unwrap_or(u64::MAX);
    if jitter_ms == 0 {
        return cfg.interval;
    }
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    cfg.interval + Duration::from_millis(u64::from_le_bytes(b) % jitter_ms)
}

/// Starts ticking `rotator` in the background: first tick at once (bootstraps an empty
/// ring), then every `interval + random(jitter)`.
pub fn spawn(rotator: Rotator, cfg: SchedulerConfig) -> SchedulerHandle {
    let (tx, mut rx) = watch::channel(false);
    let join = tokio::spawn(async move {
        let mut ticks = 0u64;
        loop {
            if *rx.borrow() {
                break;
            }
            ticks += 1;
            match rotator.tick().await {
                Ok(r) => tracing::debug!(
                    outcome = r.outcome.as_str(),
                    generation = r.generation,
                    "scheduler tick"
                ),
                Err(e) => tracing::warn!(error = %e.described(), "scheduler tick failed; will retry"),
            }
            tokio::select! {
                _ = rx.changed() => break,
                _ = tokio::time::sleep(jittered(&cfg)) => {}
            }
        }
        ticks
    });
    SchedulerHandle { tx, join }
}
