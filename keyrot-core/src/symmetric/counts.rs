//! The uses of a symmetric ring, counted on the hot path with one relaxed atomic add and
//! handed to the metrics recorder with the other counters a key ring flushes (after every
//! refresh and scheduler tick), so no call allocates a label set.

use crate::ring::{KeyState, RingName};
use std::sync::atomic::{AtomicU64, Ordering};

/// What a symmetric ring was used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Use {
    Encrypt = 0,
    Decrypt = 1,
    Sign = 2,
    Verify = 3,
}

const USES: [(Use, &str); 4] = [
    (Use::Encrypt, "encrypt"),
    (Use::Decrypt, "decrypt"),
    (Use::Sign, "sign"),
    (Use::Verify, "verify"),
];
/// The key states a use is counted under; the last is "no key was used" (refused).
const STATES: [&str; 4] = ["pending", "active", "retiring", "refused"];

/// One counter per use and key state.
#[derive(Debug, Default)]
pub(crate) struct Counts([AtomicU64; 16]);

impl Counts {
    /// Counts one `what` made with a key in `state`, or refused (`None`).
    pub(crate) fn add(&self, what: Use, state: Option<KeyState>) {
        let s = match state {
            Some(KeyState::Pending) => 0,
            Some(KeyState::Active) => 1,
            Some(KeyState::Retiring) => 2,
            Some(KeyState::Expired) | None => 3,
        };
        self.0[what as usize * 4 + s].fetch_add(1, Ordering::Relaxed);
    }

    /// Adds what was counted since the last call to the metrics.
    pub(crate) fn flush(&self, ring: &RingName) {
        for (what, op) in USES {
            for (s, state) in STATES.iter().enumerate() {
                let n = self.0[what as usize * 4 + s].swap(0, Ordering::Relaxed);
                if n > 0 {
                    crate::metrics::symmetric_uses(ring, op, state, n);
                }
            }
        }
    }
}
