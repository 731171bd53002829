//! `Idempotency-Key`s: the one validity check (shared with the HTTP endpoint), the
//! actor-scoped storage key, the request hash, and which answers are kept for replay.

use super::report::RotationReport;
use crate::b64;
use crate::planner::Trigger;
use crate::ring::RingName;
use crate::storage::{IdempotencyRecord, Outcome};
use sha2::Digest as _;

/// Longest accepted `Idempotency-Key`.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;

/// `key` as an idempotency key if it is one: 1–[`MAX_IDEMPOTENCY_KEY_LEN`] printable
/// ASCII characters. The one check, used by the rotator and the HTTP endpoint alike.
pub fn checked_idempotency_key(key: &[u8]) -> Option<&str> {
    let valid = !key.is_empty() && key.len() <= MAX_IDEMPOTENCY_KEY_LEN && key.iter().all(u8::is_ascii_graphic);
    valid.then(|| std::str::from_utf8(key).ok()).flatten()
}

/// An attempt's idempotency key, as stored: scoped by actor, with the hash of what was
/// asked.
#[derive(Debug)]
pub(super) struct Idempotency {
    pub(super) key: String,
    pub(super) request_hash: String,
}

impl Idempotency {
    /// `None` when `key` is not a valid idempotency key.
    pub(super) fn new(key: &str, trigger: &Trigger, actor: &str) -> Option<Self> {
        let key = checked_idempotency_key(key.as_bytes())?;
        Some(Self {
            key: storage_key(actor, key),
            request_hash: request_hash(trigger, actor),
        })
    }

    /// The record that replays `report` for this key.
    pub(super) fn record(&self, ring: &RingName, report: &RotationReport) -> IdempotencyRecord {
        IdempotencyRecord {
            ring: ring.to_string(),
            key: self.key.clone(),
            request_hash: self.request_hash.clone(),
            response: serde_json::to_string(report).unwrap_or_default(),
            created_at: report.at,
        }
    }

    /// Whether an answer with `outcome` is kept for replay. Transient answers are not: a
    /// retry should try again. Neither is a rate limit: replayed later, its Retry-After
    /// would be stale.
    pub(super) fn replays(outcome: Outcome) -> bool {
        !matches!(
            outcome,
            Outcome::LockBusy | Outcome::LostRace | Outcome::Failed | Outcome::RateLimited
        )
    }
}

/// Idempotency keys are scoped by actor: another client cannot claim (or read) the
/// answer stored under your key.
fn storage_key(actor: &str, key: &str) -> String {
    let mut h = sha2::Sha256::new();
    h.update(actor.as_bytes());
    h.update([0]);
    h.update(key.as_bytes());
    b64::encode(&h.finalize())
}

fn request_hash(trigger: &Trigger, actor: &str) -> String {
    let mut h = sha2::Sha256::new();
    let desc = match trigger {
        Trigger::ForceRotate { reason, revoke_old } => format!("force|{reason}|{revoke_old}"),
        Trigger::Revoke { kid, reason } => format!("revoke|{kid}|{reason}"),
        Trigger::Import { kid, state, .. } => format!("import|{kid}|{state:?}"),
        other => other.kind().as_str().to_owned(),
    };
    h.update(desc.as_bytes());
    h.update([0]);
    h.update(actor.as_bytes());
    b64::encode(&h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_one_validity_check() {
        assert_eq!(checked_idempotency_key(b"k-1"), Some("k-1"));
        assert_eq!(
            checked_idempotency_key(&[b'a'; MAX_IDEMPOTENCY_KEY_LEN]).map(str::len),
            Some(128)
        );
        for bad in [
            &b""[..],
            &[b'a'; MAX_IDEMPOTENCY_KEY_LEN + 1],
            b"with space",
            b"tab\t",
            "é".as_bytes(),
            b"\xff",
        ] {
            assert_eq!(checked_idempotency_key(bad), None, "{bad:?}");
        }
    }
}
