//! keyrot's metrics, recorded through the [`metrics`] facade: this crate installs no
//! recorder (exporter), as it installs no `tracing` subscriber. Install one in the
//! application (e.g. `metrics-exporter-prometheus`) and call [`describe_metrics`] once to
//! give every metric its help text.
//!
//! Every name, type and label set is in [`METRICS`]; the names are the constants of
//! [`metric_names`](names). Labels are bounded: a ring name (configuration, never a
//! request's), a trigger, an outcome, a reason, a status, a key state. Never a kid, a client id or
//! anything else a request chooses.
//!
//! Gauges that depend on the time (`keyrot_active_key_age_seconds`,
//! `keyrot_next_transition_seconds`, `keyrot_snapshot_refresh_age_seconds`) are computed
//! at well-defined points: whenever the snapshot changes, after every refresh attempt (the
//! refresher polls every `poll_interval`) and after every scheduler tick. Between two such
//! points they lag by at most the poll interval or the tick interval, whichever is
//! shorter; `keyrot_snapshot_last_refresh_timestamp_seconds` never lags.

use crate::planner::TriggerKind;
use crate::ring::RingName;
use crate::token::TokenError;
use chrono::{DateTime, Utc};

/// The metric names, one constant per metric (see [`crate::METRICS`] for types and labels).
pub mod names {
    /// Counter: rotation attempts by ring, trigger and outcome.
    pub const ROTATION_ATTEMPTS: &str = "keyrot_rotation_attempts_total";
    /// Gauge: seconds since the Active key was activated.
    pub const ACTIVE_KEY_AGE: &str = "keyrot_active_key_age_seconds";
    /// Gauge: seconds until the scheduler's next transition (negative: overdue).
    pub const NEXT_TRANSITION: &str = "keyrot_next_transition_seconds";
    /// Gauge: the generation of the snapshot being served.
    pub const SNAPSHOT_GENERATION: &str = "keyrot_snapshot_generation";
    /// Gauge: 1 when the last refresh from storage failed (serving the last snapshot).
    pub const SNAPSHOT_STALE: &str = "keyrot_snapshot_stale";
    /// Gauge: seconds since the last successful refresh from storage.
    pub const SNAPSHOT_REFRESH_AGE: &str = "keyrot_snapshot_refresh_age_seconds";
    /// Gauge: Unix time of the last successful refresh from storage.
    pub const SNAPSHOT_LAST_REFRESH: &str = "keyrot_snapshot_last_refresh_timestamp_seconds";
    /// Counter: refreshes from storage (change feed, poll, unknown kid).
    pub const SNAPSHOT_REFRESHES: &str = "keyrot_snapshot_refreshes_total";
    /// Counter: failed refreshes from storage, by reason.
    pub const SNAPSHOT_REFRESH_FAILURES: &str = "keyrot_snapshot_refresh_failures_total";
    /// Counter: refreshes started because a token named an unknown kid.
    pub const UNKNOWN_KID_REFRESHES: &str = "keyrot_unknown_kid_refreshes_total";
    /// Gauge: rows of the served snapshot that failed their integrity check.
    pub const TAMPERED_ROWS: &str = "keyrot_tampered_rows";
    /// Gauge: 1 when the served ring passed its integrity check as a whole.
    pub const RING_INTACT: &str = "keyrot_ring_intact";
    /// Counter: bearer tokens refused, by reason.
    pub const VERIFICATION_FAILURES: &str = "keyrot_verification_failures_total";
    /// Counter: JWKS responses by ring and status (200, 304).
    pub const JWKS_RESPONSES: &str = "keyrot_jwks_responses_total";
    /// Counter: ledger records not written one by one but counted into a summary by the
    /// refusal budget, by reason.
    pub const LEDGER_AGGREGATED: &str = "keyrot_ledger_records_aggregated_total";
    /// Counter: remote JWKS fetches (keyrot-jwks), by outcome.
    pub const REMOTE_JWKS_FETCHES: &str = "keyrot_remote_jwks_fetches_total";
    /// Gauge: remote JWKS verifiers (keyrot-jwks) serving a key set past its lifetime
    /// because refreshing it failed.
    pub const REMOTE_JWKS_STALE: &str = "keyrot_remote_jwks_stale";
    /// Counter: verified-token cache hits.
    pub const TOKEN_CACHE_HITS: &str = "keyrot_token_cache_hits_total";
    /// Counter: verified-token cache misses.
    pub const TOKEN_CACHE_MISSES: &str = "keyrot_token_cache_misses_total";
    /// Counter: verified-token cache evictions.
    pub const TOKEN_CACHE_EVICTIONS: &str = "keyrot_token_cache_evictions_total";
    /// Gauge: 1 while the master keys' custody backend (HSM or KMS) answers, 0 when it does not.
    pub const CUSTODY_UP: &str = "keyrot_custody_up";
    /// Gauge: 1 while the HSM or KMS holding a ring's signing keys answers, 0 when it does not.
    pub const SIGNING_CUSTODY_UP: &str = "keyrot_signing_custody_up";
    /// Counter: operations on an HSM or KMS holding signing keys, by backend, operation
    /// and outcome.
    pub const CUSTODY_OPERATIONS: &str = "keyrot_custody_operations_total";
    /// Histogram: how long those operations took, in seconds.
    pub const CUSTODY_OPERATION_SECONDS: &str = "keyrot_custody_operation_duration_seconds";
    /// Counter: uses of a MAC or AEAD ring's keys, by operation and the state of the key
    /// used (`refused` when none was).
    pub const SYMMETRIC_OPERATIONS: &str = "keyrot_symmetric_operations_total";
}

use names::*;

/// The type of a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MetricKind {
    /// Only goes up (reset on restart); name ends in `_total`.
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// A distribution of observed values (buckets, sum and count, as the exporter renders it).
    Histogram,
}

/// One metric keyrot records: name, type, labels and meaning.
#[derive(Debug, Clone, Copy)]
pub struct MetricDef {
    /// The Prometheus name.
    pub name: &'static str,
    /// Counter or gauge.
    pub kind: MetricKind,
    /// The label names (every value bounded).
    pub labels: &'static [&'static str],
    /// What it means (the help text).
    pub help: &'static str,
}

const fn def(name: &'static str, kind: MetricKind, labels: &'static [&'static str], help: &'static str) -> MetricDef {
    MetricDef {
        name,
        kind,
        labels,
        help,
    }
}

use MetricKind::{Counter, Gauge, Histogram};

/// Every metric keyrot records.
pub const METRICS: &[MetricDef] = &[
    def(
        ROTATION_ATTEMPTS,
        Counter,
        &["ring", "trigger", "outcome"],
        "Rotation attempts by trigger and outcome.",
    ),
    def(
        ACTIVE_KEY_AGE,
        Gauge,
        &["ring"],
        "Seconds since the Active key was activated.",
    ),
    def(
        NEXT_TRANSITION,
        Gauge,
        &["ring"],
        "Seconds until the scheduler's next transition; negative when overdue.",
    ),
    def(
        SNAPSHOT_GENERATION,
        Gauge,
        &["ring"],
        "Generation of the snapshot this instance serves.",
    ),
    def(
        SNAPSHOT_STALE,
        Gauge,
        &["ring"],
        "1 when the last refresh from storage failed and the last snapshot is served.",
    ),
    def(
        SNAPSHOT_REFRESH_AGE,
        Gauge,
        &["ring"],
        "Seconds since the last successful refresh from storage.",
    ),
    def(
        SNAPSHOT_LAST_REFRESH,
        Gauge,
        &["ring"],
        "Unix time of the last successful refresh from storage.",
    ),
    def(
        SNAPSHOT_REFRESHES,
        Counter,
        &["ring"],
        "Refreshes of the snapshot from storage.",
    ),
    def(
        SNAPSHOT_REFRESH_FAILURES,
        Counter,
        &["ring", "reason"],
        "Failed refreshes from storage, by reason.",
    ),
    def(
        UNKNOWN_KID_REFRESHES,
        Counter,
        &["ring"],
        "Refreshes started by a token with an unknown kid.",
    ),
    def(
        TAMPERED_ROWS,
        Gauge,
        &["ring"],
        "Rows of the served ring that failed their integrity check (or are missing).",
    ),
    def(
        RING_INTACT,
        Gauge,
        &["ring"],
        "1 when the served ring passed its integrity check as a whole.",
    ),
    def(
        VERIFICATION_FAILURES,
        Counter,
        &["reason"],
        "Bearer tokens refused, by reason.",
    ),
    def(
        JWKS_RESPONSES,
        Counter,
        &["ring", "status"],
        "JWKS responses by status (200, 304).",
    ),
    def(
        LEDGER_AGGREGATED,
        Counter,
        &["reason"],
        "Ledger records counted into a summary by the refusal budget.",
    ),
    def(
        REMOTE_JWKS_FETCHES,
        Counter,
        &["outcome"],
        "Remote JWKS fetches by outcome (updated, not_modified, failed).",
    ),
    def(
        REMOTE_JWKS_STALE,
        Gauge,
        &[],
        "Remote JWKS verifiers serving a key set past its lifetime (refresh failing).",
    ),
    def(TOKEN_CACHE_HITS, Counter, &["ring"], "Verified-token cache hits."),
    def(TOKEN_CACHE_MISSES, Counter, &["ring"], "Verified-token cache misses."),
    def(
        TOKEN_CACHE_EVICTIONS,
        Counter,
        &["ring"],
        "Verified-token cache evictions.",
    ),
    def(
        CUSTODY_UP,
        Gauge,
        &["backend"],
        "1 while the master keys' custody backend (HSM or KMS) answers; 0 when it does not (no new seal is made).",
    ),
    def(
        SIGNING_CUSTODY_UP,
        Gauge,
        &["backend"],
        "1 while the HSM or KMS holding the signing keys answers; 0 when it does not (no token is signed, verifying goes on).",
    ),
    def(
        CUSTODY_OPERATIONS,
        Counter,
        &["backend", "operation", "outcome"],
        "Operations on the HSM or KMS holding signing keys (create, sign, disable, destroy), by outcome (ok, error).",
    ),
    def(
        CUSTODY_OPERATION_SECONDS,
        Histogram,
        &["backend", "operation"],
        "How long each operation on the HSM or KMS holding signing keys took, in seconds.",
    ),
    def(
        SYMMETRIC_OPERATIONS,
        Counter,
        &["ring", "operation", "key_state"],
        "Uses of a MAC or AEAD ring (encrypt, decrypt, sign, verify) by the state of the key used (pending, active, \
         retiring; refused when none was): decryptions under retiring keys going to zero say re-encryption is done.",
    ),
];

/// Gives every metric of [`METRICS`] its help text in the installed recorder. Call it once
/// after installing one; without a recorder it does nothing.
pub fn describe_metrics() {
    for m in METRICS {
        match m.kind {
            Counter => ::metrics::describe_counter!(m.name, m.help),
            Gauge => ::metrics::describe_gauge!(m.name, m.help),
            Histogram => ::metrics::describe_histogram!(m.name, ::metrics::Unit::Seconds, m.help),
        }
    }
}

/// An attempt's answer: `outcome` is [`crate::Outcome::as_str`], or `failed`.
pub(crate) fn rotation_attempt(ring: &RingName, trigger: TriggerKind, outcome: &'static str) {
    ::metrics::counter!(ROTATION_ATTEMPTS, "ring" => ring.to_string(), "trigger" => trigger.as_str(), "outcome" => outcome)
        .increment(1);
}

/// A snapshot was installed: its generation and integrity (rows that failed their check
/// or are missing, and whether the ring is intact).
pub(crate) fn snapshot_installed(ring: &RingName, generation: u64, tampered: usize, intact: bool) {
    let r = ring.to_string();
    ::metrics::gauge!(SNAPSHOT_GENERATION, "ring" => r.clone()).set(generation as f64);
    ::metrics::gauge!(TAMPERED_ROWS, "ring" => r.clone()).set(tampered as f64);
    ::metrics::gauge!(RING_INTACT, "ring" => r).set(if intact { 1.0 } else { 0.0 });
}

/// The gauges that move with the clock: the Active key's age (since `active_since`) and
/// the time to the next transition (`next_at`), NaN when there is none.
pub(crate) fn ring_clock(
    ring: &RingName,
    active_since: Option<DateTime<Utc>>,
    next_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) {
    let r = ring.to_string();
    let age = active_since.map_or(f64::NAN, |at| seconds_between(at, now));
    ::metrics::gauge!(ACTIVE_KEY_AGE, "ring" => r.clone()).set(age);
    let next = next_at.map_or(f64::NAN, |at| seconds_between(now, at));
    ::metrics::gauge!(NEXT_TRANSITION, "ring" => r).set(next);
}

fn seconds_between(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    to.signed_duration_since(from).num_milliseconds() as f64 / 1000.0
}

/// A refresh from storage ended, failed for `failure` (a fixed reason label) or not.
/// `last_success` is the time of the last successful one (this one, when it succeeded).
pub(crate) fn refreshed(
    ring: &RingName,
    failure: Option<&'static str>,
    last_success: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) {
    let r = ring.to_string();
    ::metrics::counter!(SNAPSHOT_REFRESHES, "ring" => r.clone()).increment(1);
    if let Some(reason) = failure {
        ::metrics::counter!(SNAPSHOT_REFRESH_FAILURES, "ring" => r.clone(), "reason" => reason).increment(1);
    }
    ::metrics::gauge!(SNAPSHOT_STALE, "ring" => r.clone()).set(if failure.is_some() { 1.0 } else { 0.0 });
    if let Some(at) = last_success {
        ::metrics::gauge!(SNAPSHOT_LAST_REFRESH, "ring" => r.clone()).set(at.timestamp_millis() as f64 / 1000.0);
        ::metrics::gauge!(SNAPSHOT_REFRESH_AGE, "ring" => r).set(seconds_between(at, now).max(0.0));
    }
}

/// A refresh was started by an unknown kid.
pub(crate) fn unknown_kid_refresh(ring: &RingName) {
    ::metrics::counter!(UNKNOWN_KID_REFRESHES, "ring" => ring.to_string()).increment(1);
}

/// A bearer token was refused.
pub fn verification_failure(e: &TokenError) {
    ::metrics::counter!(VERIFICATION_FAILURES, "reason" => token_reason(e)).increment(1);
}

/// The fixed reason label of a [`TokenError`]: its variant, in snake case.
pub(crate) fn token_reason(e: &TokenError) -> &'static str {
    use TokenError as E;
    match e {
        E::TooLarge { .. } => "too_large",
        E::Malformed(_) => "malformed",
        E::DuplicateMember(_) => "duplicate_member",
        E::ForbiddenHeader(_) => "forbidden_header",
        E::MissingKid => "missing_kid",
        E::UnknownKid => "unknown_kid",
        E::AlgorithmMismatch { .. } => "algorithm_mismatch",
        E::InvalidType => "invalid_type",
        E::KeyExpired => "key_expired",
        E::BadSignature => "bad_signature",
        E::Expired => "expired",
        E::NotYetValid => "not_yet_valid",
        E::IssuedInFuture => "issued_in_future",
        E::MissingClaim(_) => "missing_claim",
        E::InvalidClaim(_) => "invalid_claim",
        E::InvalidIssuer => "invalid_issuer",
        E::InvalidAudience => "invalid_audience",
        E::ClaimsShape => "claims_shape",
        E::AlgorithmNotAllowed { .. } => "algorithm_not_allowed",
        E::KeysUnavailable => "keys_unavailable",
    }
}

/// A JWKS response (`200` or `304`).
pub fn jwks_response(ring: &RingName, status: u16) {
    let status = match status {
        200 => "200",
        304 => "304",
        _ => "other",
    };
    ::metrics::counter!(JWKS_RESPONSES, "ring" => ring.to_string(), "status" => status).increment(1);
}

/// A ledger record counted into a summary instead of written: `refused` (a refusal over
/// the per-actor or global budget) or `over_budget` (an authorized request answered 429).
pub fn ledger_aggregated(reason: &'static str) {
    ::metrics::counter!(LEDGER_AGGREGATED, "reason" => reason).increment(1);
}

/// The verified-token cache's counts since the last call, added to its counters.
pub(crate) fn token_cache(ring: &RingName, hits: u64, misses: u64, evictions: u64) {
    let r = ring.to_string();
    ::metrics::counter!(TOKEN_CACHE_HITS, "ring" => r.clone()).increment(hits);
    ::metrics::counter!(TOKEN_CACHE_MISSES, "ring" => r.clone()).increment(misses);
    ::metrics::counter!(TOKEN_CACHE_EVICTIONS, "ring" => r).increment(evictions);
}

/// The custody backend's health, as a probe found it.
pub(crate) fn custody_up(backend: &'static str, up: bool) {
    ::metrics::gauge!(CUSTODY_UP, "backend" => backend).set(if up { 1.0 } else { 0.0 });
}

/// The signing keys' backend's health, as a probe or a signing call found it.
pub(crate) fn signing_custody_up(backend: &'static str, up: bool) {
    ::metrics::gauge!(SIGNING_CUSTODY_UP, "backend" => backend).set(if up { 1.0 } else { 0.0 });
}

/// `n` uses of a symmetric ring since the last call, by operation and key state.
pub(crate) fn symmetric_uses(ring: &RingName, operation: &'static str, key_state: &'static str, n: u64) {
    ::metrics::counter!(SYMMETRIC_OPERATIONS, "ring" => ring.to_string(), "operation" => operation, "key_state" => key_state)
        .increment(n);
}

/// One operation on the HSM or KMS holding signing keys: counted by outcome, timed.
pub(crate) fn custody_operation(backend: &'static str, operation: &'static str, ok: bool, took: std::time::Duration) {
    let outcome = if ok { "ok" } else { "error" };
    ::metrics::counter!(CUSTODY_OPERATIONS, "backend" => backend, "operation" => operation, "outcome" => outcome)
        .increment(1);
    ::metrics::histogram!(CUSTODY_OPERATION_SECONDS, "backend" => backend, "operation" => operation)
        .record(took.as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        let mut seen = std::collections::HashSet::new();
        for m in METRICS {
            assert!(seen.insert(m.name), "{} listed twice", m.name);
            assert!(m.name.starts_with("keyrot_"), "{}", m.name);
            assert!(
                m.name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{}",
                m.name
            );
            assert_eq!(m.kind == Counter, m.name.ends_with("_total"), "{}", m.name);
            for l in m.labels {
                assert!(
                    [
                        "ring",
                        "trigger",
                        "outcome",
                        "reason",
                        "status",
                        "backend",
                        "operation",
                        "key_state"
                    ]
                    .contains(l),
                    "{}: {l}",
                    m.name
                );
            }
        }
    }

    #[test]
    fn token_reasons_are_fixed_labels() {
        assert_eq!(token_reason(&TokenError::BadSignature), "bad_signature");
        assert_eq!(token_reason(&TokenError::TooLarge { max: 8 }), "too_large");
        assert_eq!(
            token_reason(&TokenError::Malformed("a secret-looking detail")),
            "malformed"
        );
    }
}
