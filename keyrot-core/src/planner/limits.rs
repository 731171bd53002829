//! The rate limits of rotations: the one place their rules live.

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

pub(super) fn normal_allowed_at(policy: &Policy, active: &KeyRecord) -> DateTime<Utc> {
    active
        .activated_at
        .unwrap_or(active.created_at)
        .checked_add_signed(policy.min_interval())
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}
