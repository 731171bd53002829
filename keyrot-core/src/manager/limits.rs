//! Bounds on what requests can make the manager do: one load per ring at a time
//! (single flight), and one budget of unknown-kid refreshes for all its rings.

use crate::ring::RingName;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Mutex as AsyncMutex;
use tokio::time::Instant;

/// One gate per ring being loaded: concurrent first requests for a ring wait for the one
/// load. A gate lives only while its ring is being loaded.
#[derive(Debug, Default)]
pub(super) struct Flights {
    gates: Mutex<HashMap<RingName, Arc<AsyncMutex<()>>>>,
}

impl Flights {
    /// The ring's gate (shared with every request loading it now).
    pub fn gate(&self, ring: &RingName) -> Arc<AsyncMutex<()>> {
        let mut gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        gates.entry(ring.clone()).or_default().clone()
    }

    /// Forgets the ring's gate once its load is done (those already waiting keep theirs
    /// and find the ring loaded).
    pub fn done(&self, ring: &RingName) {
        let mut gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        gates.remove(ring);
    }
}

/// At most `per_window` unknown-kid refreshes per second across every ring of the
/// manager: tokens naming random kids on many rings cost at most that many generation
/// reads a second, whatever the number of rings.
#[derive(Debug)]
pub(super) struct RefreshBudget {
    per_window: u32,
    window: Duration,
    used: Mutex<(Option<Instant>, u32)>,
}

impl RefreshBudget {
    pub fn new(per_second: u32) -> Self {
        Self {
            per_window: per_second,
            window: Duration::from_secs(1),
            used: Mutex::new((None, 0)),
        }
    }

    /// Takes one refresh from the budget, if any is left in this window.
    pub fn take(&self) -> bool {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if used.0.is_none_or(|start| now.duration_since(start) >= self.window) {
            *used = (Some(now), 0);
        }
        if used.1 >= self.per_window {
            return false;
        }
        used.1 += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_spent_then_refused_within_a_window() {
        let b = RefreshBudget::new(3);
        assert_eq!((0..10).filter(|_| b.take()).count(), 3);
        assert!(!RefreshBudget::new(0).take(), "a zero budget never refreshes");
    }
}
