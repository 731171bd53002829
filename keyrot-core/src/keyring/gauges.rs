//! What a ring's snapshot tells the metrics ([`crate::metrics`] names them): read here,
//! so the metrics module knows nothing of snapshots.

use super::{RefreshError, Snapshot};
use crate::policy::Policy;
use crate::ring::{KeyState, RingName};
use chrono::{DateTime, Utc};

/// `snap` was installed: its generation and integrity, and the clock gauges.
pub(super) fn installed(ring: &RingName, snap: &Snapshot, policy: &Policy, now: DateTime<Utc>) {
    let report = snap.integrity();
    let tampered = report.tampered.len() + report.missing.len();
    crate::metrics::snapshot_installed(ring, snap.generation(), tampered, report.is_intact());
    clock(ring, snap, policy, now);
}

/// The gauges that move with the clock: the Active key's age and the time to the next
/// transition.
pub(super) fn clock(ring: &RingName, snap: &Snapshot, policy: &Policy, now: DateTime<Utc>) {
    let active_since = snap
        .keys()
        .iter()
        .find(|k| k.state == KeyState::Active)
        .and_then(|k| k.activated_at.or(k.activate_at));
    let next = crate::planner::next_transition_of(snap.keys(), policy).map(|t| t.at);
    crate::metrics::ring_clock(ring, active_since, next, now);
}

impl RefreshError {
    /// The fixed reason label of a refresh failure.
    pub(super) fn reason(&self) -> &'static str {
        match self {
            RefreshError::Storage(_) => "storage",
            RefreshError::Seal { .. } => "seal",
            RefreshError::Key { .. } => "key",
            RefreshError::InvalidTokenType => "token_type",
            RefreshError::Rollback { .. } => "rollback",
        }
    }
}
