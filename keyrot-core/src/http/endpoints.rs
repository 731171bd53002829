//! The rotation endpoint and the status page, behind a [`RotationAuthorizer`].

use super::authorizer::{AuthorizationDenied, RotationAuthorizer, RotationGrant, ScopeAuthorizer};
use super::status::status_body;
use super::{
    HeaderSource, HttpRequest, HttpResponse, IDEMPOTENT_REPLAYED_HEADER, REQUEST_ID_HEADER, RequestBody, Single,
    jwks_response, random_hex, request_id, single,
};
use crate::clock::to_millis;
use crate::keyring::KeyRing;
use crate::planner::{Refusal, TriggerKind};
use crate::rotator::{MAX_IDEMPOTENCY_KEY_LEN, RequestContext, RotateError, RotationReport, Rotator};
use crate::storage::{AuditRecord, Outcome};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// A configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HttpConfigError {
    /// The key ring and the rotator manage different rings.
    #[error("the key ring ({keyring}) and the rotator ({rotator}) must manage the same ring")]
    RingMismatch {
        /// The key ring's ring.
        keyring: String,
        /// The rotator's ring.
        rotator: String,
    },
    /// A body limit of zero would refuse every JSON body.
    #[error("the request body limit must be at least 64 bytes")]
    BodyLimitTooSmall,
}

/// At most this many audit records per minute (per instance) for requests that never
/// authenticated (401): every refusal is still traced, but an anonymous client cannot
/// turn the append-only ledger into an unbounded write target.
pub const ANONYMOUS_AUDIT_PER_MINUTE: u32 = 30;

#[derive(Debug, Default)]
struct AnonymousAuditBudget {
    window_start_ms: i64,
    used: u32,
    suppressed: u64,
}

struct Inner {
    anonymous_audit: std::sync::Mutex<AnonymousAuditBudget>,
    keyring: KeyRing,
    rotator: Rotator,
    authorizer: Arc<dyn RotationAuthorizer>,
    max_body_bytes: usize,
}

/// The JWKS, rotation and status endpoints of one ring. Cheap to clone.
#[derive(Clone)]
pub struct HttpEndpoints {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for HttpEndpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpEndpoints")
            .field("ring", self.inner.keyring.ring())
            .field("authorizer", &self.inner.authorizer)
            .field("max_body_bytes", &self.inner.max_body_bytes)
            .finish()
    }
}

/// Builds [`HttpEndpoints`].
#[derive(Debug)]
pub struct HttpEndpointsBuilder {
    keyring: KeyRing,
    rotator: Rotator,
    authorizer: Option<Arc<dyn RotationAuthorizer>>,
    max_body_bytes: usize,
}

impl HttpEndpointsBuilder {
    /// Who may rotate (default: a [`ScopeAuthorizer`] verifying against the key ring,
    /// with the default scopes and rules).
    pub fn with_authorizer(mut self, authorizer: Arc<dyn RotationAuthorizer>) -> Self {
        self.authorizer = Some(authorizer);
        self
    }

    /// Cap on the rotation request body (default [`super::DEFAULT_MAX_BODY_BYTES`]);
    /// larger bodies are answered `413`.
    pub fn with_max_body_bytes(mut self, max: usize) -> Self {
        self.max_body_bytes = max;
        self
    }

    /// Validates and builds.
    pub fn build(self) -> Result<HttpEndpoints, HttpConfigError> {
        if self.keyring.ring() != self.rotator.ring() {
            return Err(HttpConfigError::RingMismatch {
                keyring: self.keyring.ring().to_string(),
                rotator: self.rotator.ring().to_string(),
            });
        }
        if self.max_body_bytes < 64 {
            return Err(HttpConfigError::BodyLimitTooSmall);
        }
        let authorizer = self
            .authorizer
            .unwrap_or_else(|| Arc::new(ScopeAuthorizer::new(self.keyring.clone())));
        Ok(HttpEndpoints {
            inner: Arc::new(Inner {
                anonymous_audit: std::sync::Mutex::new(AnonymousAuditBudget::default()),
                keyring: self.keyring,
                rotator: self.rotator,
                authorizer,
                max_body_bytes: self.max_body_bytes,
            }),
        })
    }
}

/// The rotation request body. An empty body is a normal rotation.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateBody {
    #[serde(default)]
    force: Option<bool>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    revoke_old: Option<bool>,
}

impl RotateBody {
    fn forced(&self) -> bool {
        self.force == Some(true)
    }
}

fn parse_body(bytes: &[u8]) -> Result<RotateBody, &'static str> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(RotateBody::default());
    }
    const SHAPE: &str = "the body must be a JSON object with optional members force (boolean), reason (string) and revoke_old (boolean)";
    // Strict parsing (no duplicate members); only an object, never the array form serde
    // would also accept for a struct.
    match crate::json::parse_strict(bytes) {
        Ok(v @ serde_json::Value::Object(_)) => RotateBody::deserialize(v).map_err(|_| SHAPE),
        _ => Err(SHAPE),
    }
}

fn is_json_content_type(headers: &dyn HeaderSource) -> bool {
    let Single::One(v) = single(headers, "content-type") else {
        return false;
    };
    let Ok(v) = std::str::from_utf8(v) else {
        return false;
    };
    let essence = v.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
        || essence
            .get(..12)
            .is_some_and(|p| p.eq_ignore_ascii_case("application/"))
            && essence.len() > 17
            && essence
                .get(essence.len() - 5..)
                .is_some_and(|s| s.eq_ignore_ascii_case("+json"))
}

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
        // Not produced by rotate/force_rotate; answered as plain successes.
        Outcome::NothingDue
        | Outcome::Revoked
        | Outcome::Imported
        | Outcome::Maintained
        | Outcome::Rewrapped
        | Outcome::Authenticated
        | Outcome::Replayed => (200, None, None),
    }
}

/// Renders a report. The body does not depend on whether the answer is a replay, so a
/// retry with the same `Idempotency-Key` gets the same bytes (plus the
/// `Idempotent-Replayed: true` header).
fn report_response(report: &RotationReport) -> HttpResponse {
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

/// What the endpoint knows of a request it refuses before the rotator sees it.
struct Refused<'a> {
    actor: Option<String>,
    forced: bool,
    reason: Option<String>,
    idempotency_key: Option<&'a str>,
    request_id: &'a str,
    status: u16,
    detail: String,
}

impl HttpEndpoints {
    /// Starts building the endpoints of the ring `keyring` and `rotator` share.
    pub fn builder(keyring: KeyRing, rotator: Rotator) -> HttpEndpointsBuilder {
        HttpEndpointsBuilder {
            keyring,
            rotator,
            authorizer: None,
            max_body_bytes: super::DEFAULT_MAX_BODY_BYTES,
        }
    }

    /// The key ring.
    pub fn keyring(&self) -> &KeyRing {
        &self.inner.keyring
    }

    /// The rotator.
    pub fn rotator(&self) -> &Rotator {
        &self.inner.rotator
    }

    /// How many body bytes the adapter must read at most before answering
    /// [`RequestBody::TooLarge`].
    pub fn max_body_bytes(&self) -> usize {
        self.inner.max_body_bytes
    }

    /// The JWKS answer (see [`jwks_response`]).
    pub fn jwks(&self, req: &HttpRequest<'_>) -> HttpResponse {
        jwks_response(&self.inner.keyring, req)
    }

    /// `POST` rotation endpoint (DESIGN §6). Body: empty (normal rotation) or
    /// `{"force": bool?, "reason": str?, "revoke_old": bool?}` as `application/json`.
    ///
    /// | outcome                           | status | notes                                  |
    /// |-----------------------------------|--------|----------------------------------------|
    /// | rotated, bootstrapped             | 200    |                                        |
    /// | scheduled, already_scheduled      | 202    | `activates_at` says when               |
    /// | rate_limited                      | 429    | `Retry-After` whole seconds, ≥ 1       |
    /// | lock_busy (another instance now)  | 409    | `rotation_in_progress`, `Retry-After: 1` |
    /// | lost_race (another committed first) | 409  | `lost_race`; its change stands         |
    /// | forced without reason, bad body   | 400    | `invalid_request`                      |
    /// | other refusals                    | 409    | `refused`                              |
    /// | no/invalid token                  | 401    | `WWW-Authenticate: Bearer …`           |
    /// | no scope, user token, long-lived token, force without force scope | 403 | `insufficient_scope` |
    /// | Idempotency-Key reused for another request | 422 |                                |
    /// | body over the limit               | 413    |                                        |
    /// | non-JSON content type             | 415    |                                        |
    /// | storage down                      | 503    | nothing changed                        |
    ///
    /// Every answer carries a JSON body and `X-Request-Id`; every attempt is audited,
    /// including those refused here before reaching the rotator.
    pub async fn rotate(&self, req: &HttpRequest<'_>, body: RequestBody<'_>) -> HttpResponse {
        let rid = request_id(req.headers);
        let resp = self.rotate_inner(req, body, &rid).await;
        resp.with_header(REQUEST_ID_HEADER, rid)
    }

    async fn rotate_inner(&self, req: &HttpRequest<'_>, body: RequestBody<'_>, rid: &str) -> HttpResponse {
        if req.method != "POST" {
            return HttpResponse::method_not_allowed("POST");
        }
        let parsed = match body {
            RequestBody::Complete(b) => Some(parse_body(b)),
            _ => None,
        };
        let intent_forced = matches!(&parsed, Some(Ok(b)) if b.forced());
        let idem_header = single(req.headers, "idempotency-key");
        let idem_valid = match idem_header {
            Single::One(v)
                if !v.is_empty() && v.len() <= MAX_IDEMPOTENCY_KEY_LEN && v.iter().all(u8::is_ascii_graphic) =>
            {
                std::str::from_utf8(v).ok()
            }
            _ => None,
        };
        let mut refused = Refused {
            actor: None,
            forced: intent_forced,
            reason: None,
            idempotency_key: idem_valid,
            request_id: rid,
            status: 0,
            detail: String::new(),
        };

        let grant = match self.inner.authorizer.authorize(req.headers).await {
            Ok(g) if g.allows_anything() => g,
            Ok(g) => {
                let denied = AuthorizationDenied {
                    rejection: super::AuthRejection::InsufficientScope,
                    client_id: Some(g.client_id),
                    detail: "the authorizer granted no rotation right".to_owned(),
                };
                return self.deny(denied, refused).await;
            }
            Err(denied) => return self.deny(denied, refused).await,
        };
        refused.actor = Some(grant.client_id.clone());

        let request = match (body, parsed) {
            (RequestBody::TooLarge, _) => {
                let detail = format!("request body exceeds {} bytes", self.inner.max_body_bytes);
                return self.refuse(refused, 413, "payload_too_large", detail).await;
            }
            (RequestBody::Unreadable, _) | (_, None) => {
                return self
                    .refuse(
                        refused,
                        400,
                        "invalid_request",
                        "the request body could not be read".to_owned(),
                    )
                    .await;
            }
            (RequestBody::Complete(b), Some(parsed)) => {
                if !b.iter().all(u8::is_ascii_whitespace) && !is_json_content_type(req.headers) {
                    return self
                        .refuse(
                            refused,
                            415,
                            "unsupported_media_type",
                            "the body must be application/json".to_owned(),
                        )
                        .await;
                }
                match parsed {
                    Ok(p) => p,
                    Err(msg) => return self.refuse(refused, 400, "invalid_request", msg.to_owned()).await,
                }
            }
        };
        self.rotate_authorized(&grant, request, idem_header, refused).await
    }

    async fn rotate_authorized(
        &self,
        grant: &RotationGrant,
        request: RotateBody,
        idem_header: Single<'_>,
        mut refused: Refused<'_>,
    ) -> HttpResponse {
        let forced = request.forced();
        if forced {
            refused.reason = request.reason.clone();
        }
        if forced && !grant.force {
            let denied = AuthorizationDenied {
                rejection: super::AuthRejection::InsufficientScope,
                client_id: Some(grant.client_id.clone()),
                detail: "a forced rotation needs the force scope".to_owned(),
            };
            return self.deny(denied, refused).await;
        }
        if !forced && (request.reason.is_some() || request.revoke_old.is_some()) {
            let detail = "reason and revoke_old apply only to forced rotations (\"force\": true)".to_owned();
            return self.refuse(refused, 400, "invalid_request", detail).await;
        }
        let idempotency_key = match idem_header {
            Single::Absent => None,
            Single::One(v) => match std::str::from_utf8(v) {
                Ok(s) => Some(s.to_owned()),
                Err(_) => return self.invalid_idempotency_key(refused).await,
            },
            Single::Many => {
                let detail = "more than one Idempotency-Key header".to_owned();
                return self.refuse(refused, 400, "invalid_request", detail).await;
            }
        };
        let ctx = RequestContext {
            actor: grant.client_id.clone(),
            idempotency_key,
            request_id: Some(refused.request_id.to_owned()),
        };
        let result = if forced {
            let reason = request.reason.clone().unwrap_or_default();
            self.inner
                .rotator
                .force_rotate(ctx, reason, request.revoke_old.unwrap_or(false))
                .await
        } else {
            self.inner.rotator.rotate(ctx).await
        };
        match result {
            Ok(mut report) => {
                if report.outcome == Outcome::LockBusy && report.old_kid.is_none() {
                    // The rotator answers lock_busy without loading the ring; name what
                    // this instance last saw.
                    let snapshot = self.inner.keyring.snapshot();
                    report.generation = snapshot.generation();
                    report.old_kid = snapshot.active_kid().map(str::to_owned);
                    report.old_fingerprint = report
                        .old_kid
                        .as_deref()
                        .and_then(|kid| snapshot.keys().iter().find(|k| k.kid == kid))
                        .map(|k| k.fingerprint.clone());
                }
                report_response(&report)
            }
            Err(RotateError::IdempotencyKeyReused) => HttpResponse::error(
                422,
                "idempotency_key_reused",
                "this Idempotency-Key was already used for a different request",
            ),
            Err(RotateError::InvalidIdempotencyKey) => self.invalid_idempotency_key(refused).await,
            Err(RotateError::Storage(_)) => HttpResponse::error(
                503,
                "temporarily_unavailable",
                "the key store is unavailable; nothing was changed, retry later",
            ),
            Err(_) => HttpResponse::error(500, "server_error", "the rotation failed; nothing was changed"),
        }
    }

    async fn invalid_idempotency_key(&self, mut refused: Refused<'_>) -> HttpResponse {
        refused.idempotency_key = None;
        let detail = format!("Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY_LEN} printable ASCII characters");
        self.refuse(refused, 400, "invalid_request", detail).await
    }

    /// Audits an authorization failure and answers with its rejection.
    async fn deny(&self, denied: AuthorizationDenied, mut refused: Refused<'_>) -> HttpResponse {
        let status = denied.rejection.status();
        let code = denied.rejection.error_code().unwrap_or("unauthorized");
        refused.actor = denied.client_id;
        refused.status = status;
        refused.detail = format!("{status} {code}: {}", denied.detail);
        if refused.actor.is_some() || self.anonymous_audit_allowed() {
            self.audit_refusal(&refused).await;
        } else {
            tracing::info!(
                ring = %self.inner.keyring.ring(),
                status,
                request_id = refused.request_id,
                detail = %refused.detail,
                "unauthenticated rotation request refused (audit budget for anonymous requests used up; traced only)"
            );
        }
        denied.rejection.to_response()
    }

    /// Whether an anonymous refusal may still be written to the ledger this minute.
    fn anonymous_audit_allowed(&self) -> bool {
        let now_ms = self.inner.keyring.clock().now().timestamp_millis();
        let mut b = self.inner.anonymous_audit.lock().unwrap_or_else(|p| p.into_inner());
        if now_ms.saturating_sub(b.window_start_ms) >= 60_000 {
            if b.suppressed > 0 {
                tracing::warn!(
                    suppressed = b.suppressed,
                    "anonymous rotation requests were traced but not audited"
                );
            }
            *b = AnonymousAuditBudget {
                window_start_ms: now_ms,
                used: 0,
                suppressed: 0,
            };
        }
        if b.used < ANONYMOUS_AUDIT_PER_MINUTE {
            b.used += 1;
            true
        } else {
            b.suppressed += 1;
            false
        }
    }

    /// Audits a request refused by the endpoint and answers with a JSON error.
    async fn refuse(&self, mut refused: Refused<'_>, status: u16, code: &str, description: String) -> HttpResponse {
        refused.status = status;
        refused.detail = format!("{status} {code}: {description}");
        self.audit_refusal(&refused).await;
        HttpResponse::error(status, code, &description)
    }

    async fn audit_refusal(&self, r: &Refused<'_>) {
        let keyring = &self.inner.keyring;
        let snapshot = keyring.snapshot();
        let old_kid = snapshot.active_kid().map(str::to_owned);
        let old_fingerprint = old_kid
            .as_deref()
            .and_then(|kid| snapshot.keys().iter().find(|k| k.kid == kid))
            .map(|k| k.fingerprint.clone());
        let actor = r.actor.as_deref().unwrap_or("anonymous");
        let record = AuditRecord {
            id: random_hex(16),
            at: to_millis(keyring.clock().now()),
            ring: keyring.ring().to_string(),
            actor: actor.to_owned(),
            trigger: if r.forced {
                TriggerKind::ForceRotate
            } else {
                TriggerKind::Rotate
            },
            outcome: Outcome::Refused,
            forced: r.forced,
            reason: r.reason.clone(),
            old_kid,
            old_fingerprint,
            new_kid: None,
            new_fingerprint: None,
            generation: snapshot.generation(),
            idempotency_key: r.idempotency_key.map(str::to_owned),
            request_id: Some(r.request_id.to_owned()),
            detail: Some(r.detail.clone()),
            instance: self.inner.rotator.instance().to_owned(),
            seq: 0,
            mac: None,
        };
        tracing::info!(
            ring = %keyring.ring(),
            actor,
            status = r.status,
            outcome = "refused",
            forced = r.forced,
            request_id = r.request_id,
            detail = %r.detail,
            "key rotation request refused at the endpoint"
        );
        if let Err(e) = self.inner.rotator.append_audit(&record).await {
            tracing::warn!(ring = %keyring.ring(), error = %e, "could not audit a refused rotation request");
        }
    }

    /// `GET` status page: kids, states, times, generation, the next transition and the
    /// last rotation from the audit log. No key material. Needs a grant of the
    /// authorizer (normal or force scope); refusals here are traced, not audited (it
    /// changes nothing).
    pub async fn status(&self, req: &HttpRequest<'_>) -> HttpResponse {
        let rid = request_id(req.headers);
        let resp = self.status_inner(req).await;
        resp.with_header(REQUEST_ID_HEADER, rid)
    }

    async fn status_inner(&self, req: &HttpRequest<'_>) -> HttpResponse {
        if req.method != "GET" && req.method != "HEAD" {
            return HttpResponse::method_not_allowed("GET, HEAD");
        }
        match self.inner.authorizer.authorize(req.headers).await {
            Ok(g) if g.allows_anything() => {}
            Ok(_) => return super::AuthRejection::InsufficientScope.to_response(),
            Err(denied) => {
                tracing::info!(
                    ring = %self.inner.keyring.ring(),
                    actor = denied.client_id.as_deref().unwrap_or("anonymous"),
                    detail = %denied.detail,
                    "key status request refused"
                );
                return denied.rejection.to_response();
            }
        }
        HttpResponse::json(200, &status_body(&self.inner.keyring).await)
    }
}

#[cfg(test)]
pub(crate) fn report_response_for_tests(report: &RotationReport) -> HttpResponse {
    report_response(report)
}
