//! The status page endpoint (the body is [`crate::status`]'s).

use super::HttpEndpoints;
use crate::status::status_body;
use crate::{AuthRejection, HttpRequest, HttpResponse, REQUEST_ID_HEADER, request_id};

impl HttpEndpoints {
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
            Ok(_) => return AuthRejection::InsufficientScope.to_response(),
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
