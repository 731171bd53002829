//! The rotation endpoint's answers: a report (or a rotator error) as status, headers
//! and JSON body, and the answer to a client over its budget.

use super::HttpEndpoints;
use super::refused::Refused;
use crate::{HttpResponse, IDEMPOTENT_REPLAYED_HEADER};
use chrono::{DateTime, Utc};
use keyrot_core::Outcome;
use keyrot_core::Refusal;
use keyrot_core::{RotateError, RotationReport};
use serde::Serialize;

/// The JSON answer of the rotation endpoint: an optional error, then the report.
#[derive(Serialize)]
struct RotationAnswer<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_description: Option<String>,
    outcome: &'static str,
    ring: &'a str,
    generation: u64,
    forced: bool,
    old_kid: Option<&'a str>,
    old_fingerprint: Option<&'a str>,
    new_kid: Option<&'a str>,
    new_fingerprint: Option<&'a str>,
    activates_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_secs: Option<u64>,
    at: DateTime<Utc>,
    /// A revocation's blast radius: when the old key is refused everywhere.
    #[serde(skip_serializing_if = "Option::is_none")]
    revocation: Option<&'a keyrot_core::BlastRadius>,
}

/// The answer to a client over its budget (see
/// [`HttpEndpointsBuilder::with_refusal_audit_limits`]).
#[derive(Serialize)]
struct OverBudgetAnswer<'a> {
    error: &'static str,
    error_description: String,
    ring: &'a str,
    forced: bool,
    retry_after_secs: u64,
}

/// Seconds a caller should wait after `lock_busy` before retrying.
const LOCK_BUSY_RETRY_AFTER_SECS: u64 = 1;

/// The status, error code and description for a report.
fn classify(report: &RotationReport) -> (u16, Option<&'static str>, Option<String>) {
    match report.outcome {
        Outcome::Bootstrapped | Outcome::Rotated => (200, None, None),
        Outcome::Scheduled | Outcome::AlreadyScheduled => (202, None, None),
        Outcome::RateLimited => {
            let secs = report.retry_after_secs().unwrap_or(1);
            let kind = if report.forced { "forced" } else { "normal" };
            (
                429,
                Some("rate_limited"),
                Some(format!("too soon since the last {kind} rotation; retry in {secs} s")),
            )
        }
        Outcome::LockBusy => (
            409,
            Some("rotation_in_progress"),
            Some("another instance is rotating this ring right now; retry shortly".to_owned()),
        ),
        Outcome::LostRace => (
            409,
            Some("lost_race"),
            Some(
                report
                    .detail
                    .clone()
                    .unwrap_or_else(|| "another instance changed the ring first".to_owned()),
            ),
        ),
        Outcome::Refused => match &report.refusal {
            Some(r @ Refusal::ReasonRequired) => (400, Some("invalid_request"), Some(r.to_string())),
            Some(r) => (409, Some("refused"), Some(r.to_string())),
            None => (409, Some("refused"), report.detail.clone()),
        },
        Outcome::Failed => (
            503,
            Some("temporarily_unavailable"),
            Some("the rotation failed; nothing was changed".to_owned()),
        ),
        // Not produced by rotate/force_rotate (nothing_due, revoked, imported, maintained,
        // rewrapped, authenticated, quarantined, retired, replayed); answered as plain
        // successes.
        _ => (200, None, None),
    }
}

/// The answer to a rotator error (an invalid idempotency key is refused by the
/// endpoint instead, as a bad request).
pub(super) fn rotate_error_response(e: &RotateError) -> HttpResponse {
    match e {
        RotateError::IdempotencyKeyReused => HttpResponse::error(
            422,
            "idempotency_key_reused",
            "this Idempotency-Key was already used for a different request",
        ),
        RotateError::Storage(_) => HttpResponse::error(
            503,
            "temporarily_unavailable",
            "the key store is unavailable; nothing was changed, retry later",
        ),
        // The HSM or KMS holding the master keys does not answer: nothing new is sealed
        // until it does, which is an outage to wait out, not a server bug.
        RotateError::Seal(keyrot_core::SealError::CustodyUnavailable { .. }) => HttpResponse::error(
            503,
            "temporarily_unavailable",
            "the master keys' custody backend does not answer; nothing was changed, retry later",
        ),
        // The HSM or KMS holding the signing keys does not answer or refuses the
        // credential: an outage too. A backend that cannot do what the ring asks (a
        // configuration error) stays a 500.
        RotateError::Custody(
            keyrot_core::custody::CustodyError::Unavailable { .. } | keyrot_core::custody::CustodyError::Denied { .. },
        ) => HttpResponse::error(
            503,
            "temporarily_unavailable",
            "the signing keys' HSM or KMS does not answer; nothing was changed, retry later",
        ),
        _ => HttpResponse::error(500, "server_error", "the rotation failed; nothing was changed"),
    }
}

/// Renders a report. The body does not depend on whether the answer is a replay, so a
/// retry with the same `Idempotency-Key` gets the same bytes (plus the
/// `Idempotent-Replayed: true` header).
pub(super) fn report_response(report: &RotationReport) -> HttpResponse {
    let (status, error, error_description) = classify(report);
    let retry_after = match report.outcome {
        Outcome::RateLimited => Some(report.retry_after_secs().unwrap_or(1)),
        Outcome::LockBusy => Some(LOCK_BUSY_RETRY_AFTER_SECS),
        _ => None,
    };
    let answer = RotationAnswer {
        error,
        error_description,
        outcome: report.outcome.as_str(),
        ring: &report.ring,
        generation: report.generation,
        forced: report.forced,
        old_kid: report.old_kid.as_deref(),
        old_fingerprint: report.old_fingerprint.as_deref(),
        new_kid: report.new_kid.as_deref(),
        new_fingerprint: report.new_fingerprint.as_deref(),
        activates_at: report.activates_at,
        retry_after_secs: retry_after,
        at: report.at,
        revocation: report.revocation.as_ref(),
    };
    let mut r = HttpResponse::json(status, &answer);
    if let Some(secs) = retry_after {
        r.headers.push(("retry-after", secs.to_string()));
    }
    if report.replayed {
        r.headers.push((IDEMPOTENT_REPLAYED_HEADER, "true".to_owned()));
    }
    r
}

impl HttpEndpoints {
    /// Answers an authorized request of a client over its budget of answers that changed
    /// nothing, without the rotator; it is counted into the client's summary.
    pub(super) fn over_budget(
        &self,
        actor: &str,
        forced: bool,
        refused: &Refused<'_>,
        retry_after_secs: u64,
    ) -> HttpResponse {
        tracing::info!(
            ring = %self.inner.keyring.ring(),
            actor,
            status = 429,
            outcome = "refused",
            forced,
            request_id = refused.request_id,
            retry_after_secs,
            audited = false,
            "key rotation request over the client's budget of requests that changed nothing; answered without the rotator"
        );
        let body = OverBudgetAnswer {
            error: "rate_limited",
            error_description: format!(
                "too many rotation requests that changed nothing from this client; retry in {retry_after_secs} s"
            ),
            ring: self.inner.keyring.ring().as_str(),
            forced,
            retry_after_secs,
        };
        HttpResponse::json(429, &body).with_header("retry-after", retry_after_secs.to_string())
    }
}
