//! The rotation endpoint and the status page, behind a [`RotationAuthorizer`]: the
//! endpoints' configuration here, the rotation endpoint in `rotate`, its answers in
//! `answer`, the audit of refused requests in `refused`, the status page in
//! `status_page`.

mod answer;
mod refused;
mod rotate;
mod status_page;

use super::authorizer::{RotationAuthorizer, ScopeAuthorizer};
use super::jwks_route::{IssuerMetadata, discovery_response, openid_configuration_response};
use super::refusal_audit::{RefusalAuditLimits, RefusalBudget};
use super::status::LedgerView;
use super::{HttpRequest, HttpResponse, jwks_response};
use keyrot_core::KeyRing;
use keyrot_core::Rotator;
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
    /// A discovery URL ([`IssuerMetadata`]) is not an `https` URL with a host and neither
    /// query nor fragment (`http` is accepted for a loopback host only), or a list of
    /// supported values is empty. Names the field.
    #[error("the discovery document's {0} is invalid")]
    InvalidIssuerMetadata(&'static str),
}

struct Inner {
    refusal_budget: std::sync::Mutex<RefusalBudget>,
    ledger_view: tokio::sync::Mutex<LedgerView>,
    keyring: KeyRing,
    rotator: Rotator,
    authorizer: Arc<dyn RotationAuthorizer>,
    max_body_bytes: usize,
    issuer: Option<IssuerMetadata>,
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
            .field("issuer", &self.inner.issuer.as_ref().map(IssuerMetadata::issuer))
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
    issuer: Option<IssuerMetadata>,
}

impl HttpEndpointsBuilder {
    /// Who may rotate (default: a [`ScopeAuthorizer`] verifying against the key ring,
    /// with the default scopes and rules).
    pub fn with_authorizer(mut self, authorizer: Arc<dyn RotationAuthorizer>) -> Self {
        self.authorizer = Some(authorizer);
        self
    }

    /// Cap on the rotation request body (default [`crate::DEFAULT_MAX_BODY_BYTES`]);
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

    /// Serves the RFC 8414 metadata ([`discovery_response`]) of the issuer at
    /// `issuer_url` (its public URL, the `iss` of its tokens), which offers no endpoint
    /// but its JWKS: the adapters then route
    /// [`OAUTH_AUTHORIZATION_SERVER_PATH`](crate::OAUTH_AUTHORIZATION_SERVER_PATH), and
    /// [`OPENID_CONFIGURATION_PATH`](crate::OPENID_CONFIGURATION_PATH) only for metadata
    /// that makes the OpenID document valid ([`IssuerMetadata::serves_openid_configuration`]).
    /// Mount the routes at the issuer URL's path. Shorthand for
    /// [`HttpEndpointsBuilder::with_issuer`] with [`IssuerMetadata::new`].
    pub fn with_issuer_url(self, issuer_url: impl Into<String>) -> Self {
        self.with_issuer(IssuerMetadata::new(issuer_url))
    }

    /// Serves the discovery documents of the issuer `metadata` describes (see
    /// [`HttpEndpointsBuilder::with_issuer_url`]); [`HttpEndpointsBuilder::build`] refuses
    /// metadata whose members disagree.
    pub fn with_issuer(mut self, metadata: IssuerMetadata) -> Self {
        self.issuer = Some(metadata);
        self
    }

    /// Validates and builds.
    pub fn build(self) -> Result<HttpEndpoints, HttpConfigError> {
        if let Some(m) = &self.issuer {
            m.validate()?;
        }
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
                issuer: self.issuer,
            }),
        })
    }
}

impl HttpEndpoints {
    /// Starts building the endpoints of the ring `keyring` and `rotator` share.
    pub fn builder(keyring: KeyRing, rotator: Rotator) -> HttpEndpointsBuilder {
        HttpEndpointsBuilder {
            keyring,
            rotator,
            authorizer: None,
            max_body_bytes: crate::DEFAULT_MAX_BODY_BYTES,
            refusal_audit: RefusalAuditLimits::default(),
            issuer: None,
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
    /// [`RequestBody::TooLarge`](crate::RequestBody::TooLarge).
    pub fn max_body_bytes(&self) -> usize {
        self.inner.max_body_bytes
    }

    /// The JWKS answer (see [`jwks_response`]).
    pub fn jwks(&self, req: &HttpRequest<'_>) -> HttpResponse {
        jwks_response(&self.inner.keyring, req)
    }

    /// The issuer's discovery metadata, when configured
    /// ([`HttpEndpointsBuilder::with_issuer_url`]): the adapters route the discovery
    /// paths only then.
    pub fn issuer(&self) -> Option<&IssuerMetadata> {
        self.inner.issuer.as_ref()
    }

    /// The RFC 8414 metadata ([`discovery_response`]); `404` when no issuer URL is
    /// configured.
    pub fn discovery(&self, req: &HttpRequest<'_>) -> HttpResponse {
        match &self.inner.issuer {
            Some(m) => discovery_response(&self.inner.keyring, m, req),
            None => HttpResponse::error(404, "not_found", "no discovery document is configured"),
        }
    }

    /// The OpenID Connect document ([`openid_configuration_response`]); `404` when no
    /// issuer URL is configured or its metadata cannot make the document valid.
    pub fn openid_configuration(&self, req: &HttpRequest<'_>) -> HttpResponse {
        match &self.inner.issuer {
            Some(m) => openid_configuration_response(&self.inner.keyring, m, req),
            None => HttpResponse::error(404, "not_found", "no discovery document is configured"),
        }
    }

    /// Whether the adapters route [`OPENID_CONFIGURATION_PATH`](crate::OPENID_CONFIGURATION_PATH).
    pub fn serves_openid_configuration(&self) -> bool {
        self.inner
            .issuer
            .as_ref()
            .is_some_and(IssuerMetadata::serves_openid_configuration)
    }

    fn budget(&self) -> std::sync::MutexGuard<'_, RefusalBudget> {
        // The budget is plain counters: a panic elsewhere cannot leave it inconsistent.
        self.inner.refusal_budget.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
pub(crate) fn report_response_for_tests(report: &keyrot_core::RotationReport) -> HttpResponse {
    answer::report_response(report)
}
