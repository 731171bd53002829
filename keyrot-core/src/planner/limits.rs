//! The rate limits of rotations: the one place their rules live.

use super::timing::KeyTimes;
use super::*;

pub(super) fn forced_limit(ring: &Ring, policy: &Policy, now: DateTime<Utc>) -> Result<(), Refusal> {
    if let Some(last) = ring.last_forced_activation() {
        let allowed = last
            .checked_add_signed(policy.forced_min_interval())
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        if now < allowed {
            return Err(Refusal::RateLimited {
                retry_after_ms: (allowed - now).num_milliseconds(),
                forced: true,
            });
        }
    }
    Ok(())
}

/// When the Active key started signing (its `activated_at`, else its `created_at`): what
/// `min_interval` counts from.
pub(super) fn active_since(active: &impl KeyTimes) -> DateTime<Utc> {
    active.activated_at().unwrap_or(active.created_at())
}

/// The earliest a normal rotation may activate a new key when the Active key started
/// signing at `since`: `min_interval` later. `None` when not representable (never).
pub(super) fn normal_rotation_from(since: DateTime<Utc>, policy: &Policy) -> Option<DateTime<Utc>> {
    since.checked_add_signed(policy.min_interval())
}

/// [`normal_rotation_from`] the Active key `active`, the end of time when not representable.
pub(super) fn normal_allowed_at(policy: &Policy, active: &impl KeyTimes) -> DateTime<Utc> {
    normal_rotation_from(active_since(active), policy).unwrap_or(DateTime::<Utc>::MAX_UTC)
}
