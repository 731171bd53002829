//! Requests the endpoint refuses before the rotator sees them: traced, written to the
//! ledger within the [`RefusalAuditLimits`](crate::RefusalAuditLimits), summarised
//! beyond them.

use super::HttpEndpoints;
use crate::HttpResponse;
use crate::authorizer::AuthorizationDenied;
use crate::refusal_audit::{ANONYMOUS_ACTOR, RefusalSummary};
use keyrot_core::Snapshot;
use keyrot_core::{MAX_IDEMPOTENCY_KEY_LEN, RefusedRequest, RequestContext};

/// What the endpoint knows of a request it refuses before the rotator sees it.
pub(super) struct Refused<'a> {
    pub(super) actor: Option<String>,
    pub(super) forced: bool,
    pub(super) reason: Option<String>,
    pub(super) idempotency_key: Option<&'a str>,
    pub(super) request_id: &'a str,
    pub(super) status: u16,
    pub(super) detail: String,
}

/// The Active key of `snapshot` (what this instance last saw): its kid and fingerprint.
pub(super) fn seen_active(snapshot: &Snapshot) -> (Option<String>, Option<String>) {
    let kid = snapshot.active_kid();
    let fingerprint = kid
        .and_then(|kid| snapshot.keys().iter().find(|k| k.kid == kid))
        .map(|k| k.fingerprint.clone());
    (kid.map(str::to_owned), fingerprint)
}

impl HttpEndpoints {
    pub(super) async fn invalid_idempotency_key(&self, mut refused: Refused<'_>) -> HttpResponse {
        refused.idempotency_key = None;
        let detail = format!("Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY_LEN} printable ASCII characters");
        self.refuse(refused, 400, "invalid_request", detail).await
    }

    /// Audits an authorization failure and answers with its rejection.
    pub(super) async fn deny(&self, denied: AuthorizationDenied, mut refused: Refused<'_>) -> HttpResponse {
        let status = denied.rejection.status();
        let code = denied.rejection.error_code().unwrap_or("unauthorized");
        refused.actor = denied.client_id;
        refused.status = status;
        refused.detail = format!("{status} {code}: {}", denied.detail);
        self.audit_refusal(&refused).await;
        denied.rejection.to_response()
    }

    /// Audits a request refused by the endpoint and answers with a JSON error.
    pub(super) async fn refuse(
        &self,
        mut refused: Refused<'_>,
        status: u16,
        code: &str,
        description: String,
    ) -> HttpResponse {
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
            let ctx = RequestContext {
                actor: actor.to_owned(),
                idempotency_key: r.idempotency_key.map(str::to_owned),
                request_id: Some(r.request_id.to_owned()),
            };
            let refused = RefusedRequest::new(r.forced, r.detail.clone()).with_reason(r.reason.clone());
            self.record_refused(ctx, refused).await;
        }
    }

    /// Records a refusal through the rotator (the ledger's one write path); a failure is
    /// traced (the refusal stands either way).
    async fn record_refused(&self, ctx: RequestContext, refused: RefusedRequest) -> bool {
        let seen = self.inner.keyring.snapshot();
        match self.inner.rotator.record_refused(ctx, refused, &seen).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(ring = %self.inner.keyring.ring(), error = %e, "could not audit a refused rotation request");
                false
            }
        }
    }

    /// Writes the summaries of an interval that is over (on every request, so a flood's
    /// count is in the ledger one interval after it).
    pub(super) async fn write_due_refusal_summaries(&self) {
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
            let refused = RefusedRequest::new(s.forced, detail);
            written += usize::from(self.record_refused(RequestContext::actor(s.actor), refused).await);
        }
        written
    }
}
