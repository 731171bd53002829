//! The rotation endpoint: method, authorization, body and headers are checked here
//! (refusals audited through `refused`), then the rotator is called within the client's
//! budget.

use super::HttpEndpoints;
use super::answer::{report_response, rotate_error_response};
use super::refused::{Refused, seen_active};
use crate::authorizer::{AuthorizationDenied, RotationGrant};
use crate::refusal_audit::Gate;
use crate::{HeaderSource, HttpRequest, HttpResponse, REQUEST_ID_HEADER, RequestBody, Single, request_id, single};
use keyrot_core::Outcome;
use keyrot_core::{RequestContext, RotateError, checked_idempotency_key};
use serde::Deserialize;

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
    match keyrot_core::adapter::parse_strict(bytes) {
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

impl HttpEndpoints {
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
    /// one within the [`RefusalAuditLimits`](crate::RefusalAuditLimits) and summarised beyond them. Authorized
    /// requests whose answers changed nothing are bounded by the same per-actor budget
    /// (see [`HttpEndpointsBuilder::with_refusal_audit_limits`](super::HttpEndpointsBuilder::with_refusal_audit_limits)).
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
                    rejection: crate::AuthRejection::InsufficientScope,
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

    /// The checks of an authorized request: the force scope, the members that apply to
    /// forced rotations only, one Idempotency-Key header at most.
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
                rejection: crate::AuthRejection::InsufficientScope,
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
        self.call_rotator(grant, request, idempotency_key, refused).await
    }

    /// Calls the rotator within the client's budget of answers that changed nothing.
    async fn call_rotator(
        &self,
        grant: &RotationGrant,
        request: RotateBody,
        idempotency_key: Option<String>,
        refused: Refused<'_>,
    ) -> HttpResponse {
        let forced = request.forced();
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
            let reason = request.reason.unwrap_or_default();
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
                    (report.old_kid, report.old_fingerprint) = seen_active(&snapshot);
                }
                report_response(&report)
            }
            Err(RotateError::InvalidIdempotencyKey) => self.invalid_idempotency_key(refused).await,
            Err(e) => rotate_error_response(&e),
        }
    }
}
