//! The rotation endpoint and the status page, behind a [`RotationAuthorizer`].

use super::authorizer::{AuthorizationDenied, RotationAuthorizer, RotationGrant, ScopeAuthorizer};
use super::refusal_audit::{ANONYMOUS_ACTOR, Gate, RefusalAuditLimits, RefusalBudget, RefusalSummary};
use super::status::{LedgerView, status_body};
use super::{
    HeaderSource, HttpRequest, HttpResponse, IDEMPOTENT_REPLAYED_HEADER, REQUEST_ID_HEADER, RequestBody, Single,
    jwks_response, random_hex, request_id, single,
};
use crate::clock::to_millis;
use crate::keyring::KeyRing;
use crate::planner::{Refusal, TriggerKind};
use crate::rotator::{
    MAX_IDEMPOTENCY_KEY_LEN, RequestContext, RotateError, RotationReport, Rotator, checked_idempotency_key,
};
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
    /// The interval of [`RefusalAuditLimits`] is out of range.
    #[error("the refusal audit interval must be between 1 second and 1 day")]
    RefusalAuditInterval,
}

struct Inner {
    refusal_budget: std::sync::Mutex<RefusalBudget>,
    ledger_view: tokio::sync::Mutex<LedgerView>,
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
    refusal_audit: RefusalAuditLimits,
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

    /// How many refused attempts are written to the audit ledger one by one, per actor
    /// and in all, per interval (default [`RefusalAuditLimits::default`]: 10 per actor,
    /// 60 in all, per minute); the rest are summarised, in at most `global` (at least 1)
    /// summary records per interval (further actors folded into the `(untracked actors)`
    /// one).
    ///
    /// The per-actor budget also applies to callers that *are* authorized: each rotator
    /// answer that did not change the ring (`rate_limited`, `already_scheduled`,
    /// `lock_busy`, `lost_race`, a replay, a reused `Idempotency-Key`, `failed`, storage
    /// errors) writes a record and takes one of that client's budget of the interval (a
    /// count apart from refusals naming the same client, at least 1). Once it is used,
    /// the endpoint answers the client's further rotation requests itself until the
    /// interval ends — `429 rate_limited` with `Retry-After` (seconds to the end of the
    /// interval) — without calling the rotator, and counts them into the client's summary
    /// record. A client looping on a rate-limited rotation thus writes at most
    /// `per_actor` records and one summary per interval. Rotations that change the ring
    /// never use the budget; an over-budget client's next rotation waits at most until
    /// the interval ends (its first request after that reaches the rotator again). A
    /// legitimate client retrying within its budget (a few `lock_busy` or replayed
    /// answers) is not affected.
    pub fn with_refusal_audit_limits(mut self, limits: RefusalAuditLimits) -> Self {
        self.refusal_audit = limits;
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
        let interval = self
            .refusal_audit
            .checked_interval()
            .ok_or(HttpConfigError::RefusalAuditInterval)?;
        let authorizer = self
            .authorizer
            .unwrap_or_else(|| Arc::new(ScopeAuthorizer::new(self.keyring.clone())));
        Ok(HttpEndpoints {
            inner: Arc::new(Inner {
                refusal_budget: std::sync::Mutex::new(RefusalBudget::new(self.refusal_audit, interval)),
                ledger_view: tokio::sync::Mutex::new(LedgerView::default()),
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
        // Not produced by rotate/force_rotate; answered as plain successes.
        Outcome::NothingDue
        | Outcome::Revoked
        | Outcome::Imported
        | Outcome::Maintained
        | Outcome::Rewrapped
        | Outcome::Authenticated
        | Outcome::Quarantined
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
            refusal_audit: RefusalAuditLimits::default(),
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
    /// | over the client's budget of answers that changed nothing | 429 | `rate_limited`, `Retry-After` to the end of the interval; the rotator is not called |
    ///
    /// Every answer carries a JSON body and `X-Request-Id`; every attempt is audited,
    /// including those refused here before reaching the rotator, which are written one by
    /// one within the [`RefusalAuditLimits`] and summarised beyond them. Authorized
    /// requests whose answers changed nothing are bounded by the same per-actor budget
    /// (see [`HttpEndpointsBuilder::with_refusal_audit_limits`]).
    pub async fn rotate(&self, req: &HttpRequest<'_>, body: RequestBody<'_>) -> HttpResponse {
        self.write_due_refusal_summaries().await;
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
            Single::One(v) => checked_idempotency_key(v),
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
        let reservation = match self
            .budget()
            .reserve(&grant.client_id, forced, self.inner.keyring.clock().now())
        {
            Gate::Pass(r) => r,
            Gate::OverBudget { retry_after_secs } => {
                return self.over_budget(&grant.client_id, forced, &refused, retry_after_secs);
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
        if matches!(&result, Ok(report) if report.outcome.changed_ring() && !report.replayed) {
            self.budget().release(reservation);
        }
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

    /// Answers an authorized request of a client over its budget of answers that changed
    /// nothing, without the rotator; it is counted into the client's summary.
    fn over_budget(&self, actor: &str, forced: bool, refused: &Refused<'_>, retry_after_secs: u64) -> HttpResponse {
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
        self.audit_refusal(&refused).await;
        denied.rejection.to_response()
    }

    /// Audits a request refused by the endpoint and answers with a JSON error.
    async fn refuse(&self, mut refused: Refused<'_>, status: u16, code: &str, description: String) -> HttpResponse {
        refused.status = status;
        refused.detail = format!("{status} {code}: {description}");
        self.audit_refusal(&refused).await;
        HttpResponse::error(status, code, &description)
    }

    /// Traces a refusal and writes it to the ledger if the budget allows; otherwise it is
    /// counted into its actor's summary.
    async fn audit_refusal(&self, r: &Refused<'_>) {
        let actor = r.actor.as_deref().unwrap_or(ANONYMOUS_ACTOR);
        let audited = self.budget().admit(actor, r.forced, self.inner.keyring.clock().now());
        tracing::info!(
            ring = %self.inner.keyring.ring(),
            actor,
            status = r.status,
            outcome = "refused",
            forced = r.forced,
            request_id = r.request_id,
            detail = %r.detail,
            audited,
            "key rotation request refused at the endpoint"
        );
        if audited {
            let record = AuditRecord {
                reason: r.reason.clone(),
                idempotency_key: r.idempotency_key.map(str::to_owned),
                request_id: Some(r.request_id.to_owned()),
                ..self.refusal_record(actor, r.forced, r.detail.clone())
            };
            self.append_audit(&record).await;
        }
    }

    /// A `refused` record of the current ring as this instance sees it, at now.
    fn refusal_record(&self, actor: &str, forced: bool, detail: String) -> AuditRecord {
        let keyring = &self.inner.keyring;
        let snapshot = keyring.snapshot();
        let old_kid = snapshot.active_kid().map(str::to_owned);
        let old_fingerprint = old_kid
            .as_deref()
            .and_then(|kid| snapshot.keys().iter().find(|k| k.kid == kid))
            .map(|k| k.fingerprint.clone());
        AuditRecord {
            id: random_hex(16),
            at: to_millis(keyring.clock().now()),
            ring: keyring.ring().to_string(),
            actor: actor.to_owned(),
            trigger: if forced {
                TriggerKind::ForceRotate
            } else {
                TriggerKind::Rotate
            },
            outcome: Outcome::Refused,
            forced,
            reason: None,
            old_kid,
            old_fingerprint,
            new_kid: None,
            new_fingerprint: None,
            generation: snapshot.generation(),
            idempotency_key: None,
            request_id: None,
            detail: Some(detail),
            instance: self.inner.rotator.instance().to_owned(),
            seq: 0,
            mac: None,
        }
    }

    /// Appends a record through the rotator (the ledger's one write path); a failure is
    /// traced (the refusal stands either way).
    async fn append_audit(&self, record: &AuditRecord) -> bool {
        match self.inner.rotator.append_audit(record).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(ring = %self.inner.keyring.ring(), error = %e, "could not audit a refused rotation request");
                false
            }
        }
    }

    fn budget(&self) -> std::sync::MutexGuard<'_, RefusalBudget> {
        // The budget is plain counters: a panic elsewhere cannot leave it inconsistent.
        self.inner.refusal_budget.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes the summaries of an interval that is over (on every request, so a flood's
    /// count is in the ledger one interval after it).
    async fn write_due_refusal_summaries(&self) {
        let due = self.budget().roll(self.inner.keyring.clock().now());
        self.write_refusal_summaries(due).await;
    }

    /// Writes the summaries of refused attempts counted but not yet written — those of
    /// the current interval included — and answers how many records were written. The
    /// budgets of the current interval stay as they are, so calling this often writes
    /// more summaries but no more single refusals. Call it on shutdown (and, if you like,
    /// on a timer); requests to the endpoints write the summaries of a finished interval
    /// on their own.
    pub async fn flush_refusal_summaries(&self) -> usize {
        let summaries = self.budget().flush(self.inner.keyring.clock().now());
        self.write_refusal_summaries(summaries).await
    }

    async fn write_refusal_summaries(&self, summaries: Vec<RefusalSummary>) -> usize {
        let mut written = 0;
        for s in summaries {
            let detail = s.detail();
            tracing::info!(
                ring = %self.inner.keyring.ring(),
                actor = %s.actor,
                count = s.count,
                outcome = "refused",
                detail = %detail,
                "refused key rotation requests over the audit budget, summarised"
            );
            let record = self.refusal_record(&s.actor, s.forced, detail);
            written += usize::from(self.append_audit(&record).await);
        }
        written
    }

    /// `GET` status page: kids, states, times, generation, the next transition and the
    /// last rotation from the audit log. No key material. Needs a grant of the
    /// authorizer (normal or force scope); refusals here are traced, not audited (it
    /// changes nothing).
    pub async fn status(&self, req: &HttpRequest<'_>) -> HttpResponse {
        self.write_due_refusal_summaries().await;
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
        let mut view = self.inner.ledger_view.lock().await;
        HttpResponse::json(200, &status_body(&self.inner.keyring, &mut view).await)
    }
}

#[cfg(test)]
pub(crate) fn report_response_for_tests(report: &RotationReport) -> HttpResponse {
    report_response(report)
}
