//! Refusals: the answers a plan gives instead of a change.

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

/// Why nothing is to be done. Refusals are answers, not failures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "refusal", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Refusal {
    /// Nothing is due.
    #[error("nothing is due")]
    NothingDue,
    /// Too soon since the last rotation of this kind.
    #[error(
        "rate limited: the next {} rotation is allowed in {}",
        if *forced { "forced" } else { "normal" },
        human_wait(*retry_after_ms)
    )]
    RateLimited {
        /// How long until it would be allowed (milliseconds).
        retry_after_ms: i64,
        /// Whether the forced limit applied.
        forced: bool,
    },
    /// A normal rotation is already scheduled.
    #[error("a rotation is already scheduled: key {kid} activates at {activates_at}")]
    AlreadyScheduled {
        /// The kid of the Pending key already published.
        kid: String,
        /// Its due activation (`activate_at`, or `publish_lead` after it was published
        /// when it has none); a rotation request activates it once `publish_lead` has
        /// passed since it was published.
        activates_at: DateTime<Utc>,
    },
    /// Forced rotations and revocations need a non-empty reason.
    #[error("a non-empty reason (at most 500 characters) is required")]
    ReasonRequired,
    /// No such key in the ring.
    #[error("no key {kid} in this ring")]
    UnknownKid {
        /// The kid asked for.
        kid: String,
    },
    /// The key is already Expired.
    #[error("key {kid} is already expired")]
    AlreadyExpired {
        /// The kid asked to be revoked.
        kid: String,
    },
    /// The Active key can only be replaced, not revoked on its own.
    #[error("key {kid} is the Active key: use a forced rotation with revoke_old to replace and revoke it")]
    CannotRevokeActive {
        /// The kid of the Active key asked to be revoked.
        kid: String,
    },
    /// The kid or key is already in the ring (kids are never reused).
    #[error("key {kid} is already in this ring (kids are never reused)")]
    DuplicateKey {
        /// The kid of the key being imported (its kid, or its thumbprint, matches a key
        /// the ring has or had).
        kid: String,
    },
    /// The ring has no Active key yet.
    #[error("the ring is not initialised")]
    NotInitialised,
    /// The ring was retired (its tenant offboarded, every key revoked): it takes no new
    /// key, ever; a returning tenant gets a ring under a new name.
    #[error("the ring is retired (offboarded): it takes no new keys")]
    RingRetired,
}

impl Refusal {
    /// `retry_after` as a duration, for rate limits.
    pub fn retry_after(&self) -> Option<TimeDelta> {
        match self {
            Refusal::RateLimited { retry_after_ms, .. } => Some(TimeDelta::milliseconds(*retry_after_ms)),
            _ => None,
        }
    }
}

/// `90061000` ms → `1d 1h 1m 1s`, `90060001` ms → `1d 1h 1m 1s` (rounded up to the
/// second; zero units are left out, `0s` for nothing).
pub(super) fn human_wait(ms: i64) -> String {
    let mut secs = u64::try_from(ms.max(0)).unwrap_or(0).div_ceil(1000);
    let mut out = Vec::new();
    for (unit, len) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if secs >= len {
            out.push(format!("{}{unit}", secs / len));
            secs %= len;
        }
    }
    if secs > 0 || out.is_empty() {
        out.push(format!("{secs}s"));
    }
    out.join(" ")
}
