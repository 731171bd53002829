//! What an attempt answers: the public [`RotationReport`], and the [`Answer`] an attempt's
//! phases produce, from which the report and the audit record are both made.

use crate::planner::Refusal;
use crate::ring::Ring;
use crate::storage::Outcome;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The answer to an attempt: what happened, to which keys, at which generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotationReport {
    /// What happened.
    pub outcome: Outcome,
    /// The ring.
    pub ring: String,
    /// The generation after the attempt.
    pub generation: u64,
    /// Whether the forced path was used.
    pub forced: bool,
    /// The kid of the ring's Active key when the attempt was planned; `None` when the
    /// ring had none (bootstrap) or could not be read.
    pub old_kid: Option<String>,
    /// The RFC 7638 thumbprint of the `old_kid` key; `None` exactly when `old_kid` is (or
    /// when a quarantine could not vouch for it).
    pub old_fingerprint: Option<String>,
    /// The kid of the key the attempt added or activated (Active, or Pending when
    /// scheduled), or of the Pending key already scheduled for
    /// [`Outcome::AlreadyScheduled`]; `None` when no key was added or activated.
    pub new_kid: Option<String>,
    /// The RFC 7638 thumbprint of the `new_kid` key; `None` when `new_kid` is.
    pub new_fingerprint: Option<String>,
    /// The `new_kid` key's due activation (its `activate_at`): when a scheduled or
    /// already scheduled Pending key is due to sign; `None` when there is no `new_kid`.
    pub activates_at: Option<DateTime<Utc>>,
    /// For rate limits: how long until allowed (milliseconds).
    pub retry_after_ms: Option<i64>,
    /// The refusal, if refused.
    pub refusal: Option<Refusal>,
    /// Human-readable detail (never secrets).
    pub detail: Option<String>,
    /// When the attempt was handled: the rotator's clock, truncated to whole milliseconds;
    /// the audit record of the attempt carries the same time.
    pub at: DateTime<Utc>,
    /// Whether this answer was replayed from an earlier request with the same
    /// idempotency key.
    #[serde(default)]
    pub replayed: bool,
    /// For a forced rotation that revoked the old key: when the old key is refused
    /// everywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation: Option<BlastRadius>,
}

/// When a revoked key is refused everywhere, from the time of the revocation: by keyrot
/// instances once the change has propagated (the change feed, or at worst the poll
/// interval), and by verifiers that honour the JWKS `Cache-Control` once the largest
/// `max-age` served while the key was published has run out. Every `max-age` keyrot serves
/// is capped by the policy's `jwks_max_age`, so that cap is the figure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlastRadius {
    /// The revoked key.
    pub kid: String,
    /// Every keyrot instance refuses it by then (revocation + propagation bound).
    pub keyrot_instances_by: DateTime<Utc>,
    /// The propagation bound used, in seconds ([`crate::RotatorBuilder::with_propagation`]).
    pub propagation_secs: u64,
    /// Every verifier honouring the JWKS `max-age` refuses it by then.
    pub jwks_verifiers_by: DateTime<Utc>,
    /// The largest `max-age` (seconds) served while the key was published.
    pub max_age_secs: u64,
    /// One plain sentence for people.
    pub summary: String,
}

impl BlastRadius {
    /// The figures for `kid` revoked at `at`.
    pub(crate) fn new(
        kid: &str,
        at: DateTime<Utc>,
        propagation: std::time::Duration,
        max_age: chrono::TimeDelta,
    ) -> Self {
        let propagation_secs = propagation.as_secs();
        let max_age_secs = u64::try_from(max_age.num_seconds()).unwrap_or(0);
        let add = |secs: u64| at + chrono::TimeDelta::seconds(i64::try_from(secs).unwrap_or(i64::MAX / 1000));
        let (keyrot_instances_by, jwks_verifiers_by) = (add(propagation_secs), add(max_age_secs));
        let fmt = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let summary = format!(
            "key {kid} is refused by every keyrot instance by {} (propagation within {propagation_secs}s) and by \
             verifiers that honour the JWKS max-age by {} (largest max-age served: {max_age_secs}s); verifiers \
             that cache the JWKS longer than its max-age keep accepting it until their own cache expires",
            fmt(keyrot_instances_by),
            fmt(jwks_verifiers_by),
        );
        Self {
            kid: kid.to_owned(),
            keyrot_instances_by,
            propagation_secs,
            jwks_verifiers_by,
            max_age_secs,
            summary,
        }
    }
}

impl RotationReport {
    /// `Retry-After` in whole seconds, rounded up, at least 1 (rate limits only).
    pub fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after_ms.map(|ms| (ms.max(1) as u64).div_ceil(1000).max(1))
    }
}

/// The key an answer names as added, activated or already scheduled.
#[derive(Debug, Clone)]
pub(super) struct NewKid {
    pub(super) kid: String,
    pub(super) fingerprint: Option<String>,
    pub(super) activates_at: Option<DateTime<Utc>>,
}

impl NewKid {
    /// The key `kid` as `ring` holds it.
    pub(super) fn in_ring(ring: &Ring, kid: &str) -> Self {
        let k = ring.key(kid);
        Self {
            kid: kid.to_owned(),
            fingerprint: k.map(|k| k.fingerprint.clone()),
            activates_at: k.and_then(|k| k.activate_at),
        }
    }
}

/// What one phase of an attempt decided, before it becomes the report and the audit
/// record ([`super::attempt::Attempt::conclude`]): everything but who asked and when.
#[derive(Debug, Clone)]
pub(super) struct Answer {
    pub(super) outcome: Outcome,
    pub(super) generation: u64,
    pub(super) old_kid: Option<String>,
    pub(super) old_fingerprint: Option<String>,
    pub(super) new: Option<NewKid>,
    pub(super) forced: bool,
    pub(super) retry_after_ms: Option<i64>,
    pub(super) refusal: Option<Refusal>,
    pub(super) detail: Option<String>,
    /// Whether the answer is kept for a retry with the same idempotency key (subject to
    /// [`super::idempotency::Idempotency::replays`]). Commits always keep theirs.
    pub(super) remembered: bool,
}

impl Answer {
    /// An answer that names no ring state (generation 0, no keys).
    pub(super) fn bare(outcome: Outcome) -> Self {
        Self {
            outcome,
            generation: 0,
            old_kid: None,
            old_fingerprint: None,
            new: None,
            forced: false,
            retry_after_ms: None,
            refusal: None,
            detail: None,
            remembered: false,
        }
    }

    /// An answer about `ring` as loaded: its generation and Active key.
    pub(super) fn on(outcome: Outcome, ring: &Ring) -> Self {
        let old = ring.active();
        Self {
            generation: ring.generation,
            old_kid: old.map(|k| k.kid.clone()),
            old_fingerprint: old.map(|k| k.fingerprint.clone()),
            ..Self::bare(outcome)
        }
    }

    /// A refusal about a ring that cannot vouch for its keys: its generation only.
    pub(super) fn refused_untrusted(ring: &Ring, detail: String) -> Self {
        Self {
            generation: ring.generation,
            detail: Some(detail),
            ..Self::bare(Outcome::Refused)
        }
    }

    /// The planner's refusal of a request on `ring`.
    pub(super) fn refusal(ring: &Ring, refusal: Refusal, forced: bool) -> Self {
        let outcome = match &refusal {
            Refusal::NothingDue => Outcome::NothingDue,
            Refusal::RateLimited { .. } => Outcome::RateLimited,
            Refusal::AlreadyScheduled { .. } => Outcome::AlreadyScheduled,
            _ => Outcome::Refused,
        };
        let new = match &refusal {
            Refusal::AlreadyScheduled { kid, activates_at } => Some(NewKid {
                activates_at: Some(*activates_at),
                ..NewKid::in_ring(ring, kid)
            }),
            _ => None,
        };
        Self {
            new,
            forced,
            retry_after_ms: refusal.retry_after().map(|d| d.num_milliseconds()),
            detail: Some(refusal.to_string()),
            refusal: Some(refusal),
            remembered: true,
            ..Self::on(outcome, ring)
        }
    }

    /// The audit view of a replayed answer, `first` as it was given at first.
    pub(super) fn replay_of(first: &RotationReport) -> Self {
        Self {
            outcome: Outcome::Replayed,
            generation: first.generation,
            old_kid: first.old_kid.clone(),
            old_fingerprint: first.old_fingerprint.clone(),
            new: first.new_kid.clone().map(|kid| NewKid {
                kid,
                fingerprint: first.new_fingerprint.clone(),
                activates_at: first.activates_at,
            }),
            forced: first.forced,
            retry_after_ms: first.retry_after_ms,
            refusal: first.refusal.clone(),
            detail: Some(format!("replay of the answer given at {}", first.at.to_rfc3339())),
            remembered: false,
        }
    }
}
