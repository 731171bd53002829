//! Who may call the rotation endpoint and the status page (DESIGN §6, seed 004).

use super::HeaderSource;
use super::bearer::{AuthRejection, has_scope};
use super::token_source::{BearerToken, bearer_token};
use async_trait::async_trait;
use keyrot_core::KeyRing;
use keyrot_core::{TokenError, Validation};
use keyrot_core::{TokenVerifier, Verifier};
use serde_json::{Map, Value};
use std::fmt::{self, Debug};
use std::sync::Arc;
use std::time::Duration;

/// The default scope for normal (scheduled) rotations.
pub const DEFAULT_ROTATE_SCOPE: &str = "service.rotate-keys";
/// The default scope for forced (emergency) rotations.
pub const DEFAULT_FORCE_SCOPE: &str = "admin.force-rotate-keys";
/// The default longest lifetime (`exp − iat`) of a rotation token.
pub const DEFAULT_MAX_ROTATION_TOKEN_LIFETIME: Duration = Duration::from_secs(15 * 60);

/// What an authorized caller may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationGrant {
    /// The caller's OAuth client id: the actor in the audit ledger.
    pub client_id: String,
    /// May request a normal rotation and read the status.
    pub normal: bool,
    /// May request a forced rotation (implies `normal`).
    pub force: bool,
}

impl RotationGrant {
    /// Whether the grant allows anything at all.
    pub fn allows_anything(&self) -> bool {
        self.normal || self.force
    }
}

/// A refused caller: the rejection to answer with, and what to audit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizationDenied {
    /// The answer (401 or 403).
    pub rejection: AuthRejection,
    /// The client id, when the token verified far enough to know it.
    pub client_id: Option<String>,
    /// Why, for the audit ledger and `tracing` (never sent to the client; never
    /// contains the token).
    pub detail: String,
}

impl AuthorizationDenied {
    fn new(rejection: AuthRejection, client_id: Option<String>, detail: impl Into<String>) -> Self {
        Self {
            rejection,
            client_id,
            detail: detail.into(),
        }
    }
}

/// Decides who may rotate. [`ScopeAuthorizer`] is the default; implement this to plug in
/// mTLS identities, an introspection endpoint, or anything else.
#[async_trait]
pub trait RotationAuthorizer: Debug + Send + Sync + 'static {
    /// Authorizes a request from its headers.
    async fn authorize(&self, headers: &dyn HeaderSource) -> Result<RotationGrant, AuthorizationDenied>;
}

/// A custom service-token rule over the verified claims.
pub type ServiceTokenFn = dyn Fn(&Map<String, Value>) -> bool + Send + Sync;

/// Which verified tokens count as service (client-credentials) tokens.
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum ServiceTokenRule {
    /// `sub` equals `client_id`: what RFC 9068 §2.2 prescribes for tokens issued to a
    /// client on its own behalf (the client credentials grant). The default.
    #[default]
    SubEqualsClientId,
    /// Any verified token with a `client_id` (use only when user tokens can never carry
    /// a rotation scope, e.g. the issuer enforces it).
    AnyToken,
    /// A rule of your own over the verified claims.
    Custom(Arc<ServiceTokenFn>),
}

impl ServiceTokenRule {
    /// A custom rule.
    pub fn custom(f: impl Fn(&Map<String, Value>) -> bool + Send + Sync + 'static) -> Self {
        Self::Custom(Arc::new(f))
    }

    /// Whether `claims` belong to a service token.
    pub fn is_service_token(&self, claims: &Map<String, Value>) -> bool {
        match self {
            ServiceTokenRule::SubEqualsClientId => match (claims.get("sub"), claims.get("client_id")) {
                (Some(Value::String(s)), Some(Value::String(c))) => !c.is_empty() && s == c,
                _ => false,
            },
            ServiceTokenRule::AnyToken => claims
                .get("client_id")
                .and_then(Value::as_str)
                .is_some_and(|c| !c.is_empty()),
            ServiceTokenRule::Custom(f) => f(claims),
        }
    }
}

impl Debug for ServiceTokenRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServiceTokenRule::SubEqualsClientId => f.write_str("SubEqualsClientId"),
            ServiceTokenRule::AnyToken => f.write_str("AnyToken"),
            ServiceTokenRule::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

/// The default [`RotationAuthorizer`]: a bearer token verified against the ring (or any
/// [`TokenVerifier`]), a rotation scope, the service-token rule, and a short lifetime.
///
/// In order: no token → 401; a token without the required `typ` (when one is required,
/// see [`ScopeAuthorizer::with_required_token_type`]) → 401; a token that does not
/// verify → 401; no rotation scope → 403; not a service token (by default
/// `sub ≠ client_id`) → 403; no `client_id` (nor, with a custom rule, `sub`) → 403; no
/// numeric `iat` or `exp`, or `exp − iat` above the maximum lifetime (default 15
/// minutes) → 403. The force scope also grants normal
/// rotations and the status page.
#[derive(Debug, Clone)]
pub struct ScopeAuthorizer {
    verifier: Verifier,
    rotate_scope: String,
    force_scope: String,
    rule: ServiceTokenRule,
    max_lifetime_secs: i64,
    /// The rules a token's header is read under when a `typ` is required.
    required_type: Option<Validation>,
}

impl ScopeAuthorizer {
    /// Verifies rotation tokens against `keyring` (the service issues its own scheduler
    /// tokens).
    pub fn new(keyring: KeyRing) -> Self {
        Self::from_verifier(Verifier::ring(keyring))
    }

    /// Verifies rotation tokens with another verifier (tokens from an external
    /// authorization server).
    pub fn with_verifier(verifier: Arc<dyn TokenVerifier>) -> Self {
        Self::from_verifier(Verifier::custom(verifier))
    }

    fn from_verifier(verifier: Verifier) -> Self {
        Self {
            verifier,
            rotate_scope: DEFAULT_ROTATE_SCOPE.to_owned(),
            force_scope: DEFAULT_FORCE_SCOPE.to_owned(),
            rule: ServiceTokenRule::default(),
            max_lifetime_secs: DEFAULT_MAX_ROTATION_TOKEN_LIFETIME.as_secs() as i64,
            required_type: None,
        }
    }

    /// The scope for normal rotations (default [`DEFAULT_ROTATE_SCOPE`]).
    pub fn with_rotate_scope(mut self, scope: impl Into<String>) -> Self {
        self.rotate_scope = scope.into();
        self
    }

    /// The scope for forced rotations (default [`DEFAULT_FORCE_SCOPE`]).
    pub fn with_force_scope(mut self, scope: impl Into<String>) -> Self {
        self.force_scope = scope.into();
        self
    }

    /// Which tokens are service tokens (default [`ServiceTokenRule::SubEqualsClientId`]).
    pub fn with_service_token_rule(mut self, rule: ServiceTokenRule) -> Self {
        self.rule = rule;
        self
    }

    /// Require rotation tokens to carry header `typ` `typ` (explicit typing, RFC 8725
    /// §3.11), e.g. `"at+jwt"` for access tokens of an authorization server (RFC 9068), so
    /// that no other kind of token the same keys sign (an ID token, a session token) can
    /// rotate. Compared as [`Validation::with_required_type`] says (case-insensitive,
    /// `application/` optional). A token without `typ` or with another one is refused
    /// like any other invalid token: 401 `invalid_token`, audited by the endpoint. Default:
    /// any `typ`.
    pub fn with_required_token_type(mut self, typ: impl AsRef<str>) -> Self {
        // The header is read under the ring's own size cap, or the default one in front of
        // another verifier.
        let base = match self.verifier.keyring() {
            Some(keyring) => keyring.validation().clone(),
            None => Validation::new(),
        };
        self.required_type = Some(base.with_required_type(typ));
        self
    }

    /// Longest accepted `exp − iat` (default 15 minutes).
    pub fn with_max_token_lifetime(mut self, lifetime: Duration) -> Self {
        self.max_lifetime_secs = i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX);
        self
    }
}

fn str_claim<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    claims.get(name).and_then(Value::as_str).filter(|s| !s.is_empty())
}

#[async_trait]
impl RotationAuthorizer for ScopeAuthorizer {
    async fn authorize(&self, headers: &dyn HeaderSource) -> Result<RotationGrant, AuthorizationDenied> {
        let token = match bearer_token(headers) {
            BearerToken::Present(t) => t,
            BearerToken::Absent => {
                return Err(AuthorizationDenied::new(
                    AuthRejection::MissingToken,
                    None,
                    "no bearer token",
                ));
            }
            BearerToken::Malformed => {
                return Err(AuthorizationDenied::new(
                    AuthRejection::InvalidToken(None),
                    None,
                    "malformed Authorization header",
                ));
            }
        };
        let invalid = |e: TokenError| {
            let detail = format!("token rejected: {e}");
            AuthorizationDenied::new(AuthRejection::InvalidToken(Some(e)), None, detail)
        };
        if let Some(v) = &self.required_type {
            keyrot_core::check_header_type(token, v).map_err(invalid)?;
        }
        let verified = self.verifier.verify(token, None).await.map_err(invalid)?;
        let claims = &verified.claims;
        let client_id = str_claim(claims, "client_id");
        let actor = client_id.or_else(|| str_claim(claims, "sub")).map(str::to_owned);
        let deny = |detail: String| AuthorizationDenied::new(AuthRejection::InsufficientScope, actor.clone(), detail);
        let force = has_scope(claims, &self.force_scope);
        let normal = force || has_scope(claims, &self.rotate_scope);
        if !normal {
            return Err(deny(format!(
                "token (kid {}) grants neither {:?} nor {:?}",
                verified.kid, self.rotate_scope, self.force_scope
            )));
        }
        if !self.rule.is_service_token(claims) {
            return Err(deny(format!(
                "token (kid {}) carries a rotation scope but is not a service token (service-token rule {:?})",
                verified.kid, self.rule
            )));
        }
        let Some(client_id) = client_id.or_else(|| str_claim(claims, "sub")) else {
            return Err(deny("rotation token names no client_id".to_owned()));
        };
        let (Some(iat), Some(exp)) = (
            claims.get("iat").and_then(Value::as_i64),
            claims.get("exp").and_then(Value::as_i64),
        ) else {
            return Err(deny("rotation tokens must carry numeric iat and exp".to_owned()));
        };
        let lifetime = exp.saturating_sub(iat);
        if lifetime > self.max_lifetime_secs {
            return Err(deny(format!(
                "rotation token lives {lifetime}s (exp - iat), more than the {}s allowed",
                self.max_lifetime_secs
            )));
        }
        Ok(RotationGrant {
            client_id: client_id.to_owned(),
            normal,
            force,
        })
    }
}
