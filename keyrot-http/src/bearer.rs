//! Bearer tokens (RFC 6750): reading the `Authorization` header, verifying, scopes, and
//! the 401/403 answers.

use super::token_source::{BearerToken, TokenSource};
use super::{HeaderSource, HttpResponse};
use keyrot_core::{KeyRing, TokenCache};
use keyrot_core::{TokenError, Verified};
use keyrot_core::{TokenVerifier, Verifier};
use serde_json::{Map, Value};
use std::fmt::Debug;
use std::sync::Arc;

/// The `Retry-After` (seconds) of a [`AuthRejection::KeysUnavailable`] answer.
const KEYS_UNAVAILABLE_RETRY_AFTER: &str = "5";

/// Why a request was not let through. Answered per RFC 6750: the client learns only the
/// error code; the detail goes to `tracing`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthRejection {
    /// No bearer token was sent: `401`, `WWW-Authenticate: Bearer`.
    #[error("no bearer token")]
    MissingToken,
    /// A token was sent but is malformed, expired, badly signed or from an unknown key:
    /// `401`, `WWW-Authenticate: Bearer error="invalid_token"`. `None` when the header
    /// itself was malformed.
    #[error("invalid bearer token{}", .0.as_ref().map(|e| format!(": {e}")).unwrap_or_default())]
    InvalidToken(Option<TokenError>),
    /// The token is valid but not allowed here (a scope is missing, a user token asks
    /// for a service operation, a rotation token lives too long): `403`,
    /// `WWW-Authenticate: Bearer error="insufficient_scope"`.
    #[error("insufficient scope")]
    InsufficientScope,
    /// The verifier cannot tell: its keys are unavailable (a remote issuer that has failed
    /// for longer than the verifier may serve its last keys). `503` with `Retry-After`:
    /// the token may well be valid, so the client is not told it is not.
    #[error("the keys that verify tokens are unavailable")]
    KeysUnavailable,
}

impl AuthRejection {
    /// The status code.
    pub fn status(&self) -> u16 {
        match self {
            AuthRejection::MissingToken | AuthRejection::InvalidToken(_) => 401,
            AuthRejection::InsufficientScope => 403,
            AuthRejection::KeysUnavailable => 503,
        }
    }

    /// What the response's `error_description` says (and keyrot-tonic's status message):
    /// why, without token contents.
    pub fn description(&self) -> &'static str {
        match self {
            AuthRejection::MissingToken => "a bearer token is required",
            AuthRejection::InvalidToken(_) => "the access token is not valid",
            AuthRejection::InsufficientScope => "the access token does not grant access to this resource",
            AuthRejection::KeysUnavailable => "the token cannot be checked now; retry later",
        }
    }

    /// The RFC 6750 error code, if any (none when no token was sent).
    pub fn error_code(&self) -> Option<&'static str> {
        match self {
            AuthRejection::MissingToken => None,
            AuthRejection::InvalidToken(_) => Some("invalid_token"),
            AuthRejection::InsufficientScope => Some("insufficient_scope"),
            AuthRejection::KeysUnavailable => Some("temporarily_unavailable"),
        }
    }

    /// The `WWW-Authenticate` challenge.
    pub fn www_authenticate(&self) -> &'static str {
        match self {
            AuthRejection::MissingToken | AuthRejection::KeysUnavailable => "Bearer",
            AuthRejection::InvalidToken(_) => "Bearer error=\"invalid_token\"",
            AuthRejection::InsufficientScope => "Bearer error=\"insufficient_scope\"",
        }
    }

    /// The full response: status, challenge and a JSON body that names only the code.
    pub fn to_response(&self) -> HttpResponse {
        let code = match self {
            AuthRejection::MissingToken => "unauthorized",
            AuthRejection::InvalidToken(_) => "invalid_token",
            AuthRejection::InsufficientScope => "insufficient_scope",
            AuthRejection::KeysUnavailable => "temporarily_unavailable",
        };
        let response = HttpResponse::error(self.status(), code, self.description());
        match self {
            AuthRejection::KeysUnavailable => response.with_header("retry-after", KEYS_UNAVAILABLE_RETRY_AFTER),
            AuthRejection::MissingToken | AuthRejection::InvalidToken(_) | AuthRejection::InsufficientScope => {
                response.with_header("www-authenticate", self.www_authenticate())
            }
        }
    }
}

/// Whether the claims grant `scope`: the space-separated `scope` claim (RFC 8693,
/// RFC 9068). Other conventions (`scp`) are deliberately not read: an issuer that polices
/// `scope` at issuance may not police them.
pub fn has_scope(claims: &Map<String, Value>, scope: &str) -> bool {
    claims
        .get("scope")
        .and_then(Value::as_str)
        .is_some_and(|s| s.split(' ').any(|x| x == scope))
}

/// `Ok` when the token grants every scope in `required`, else
/// [`AuthRejection::InsufficientScope`].
pub fn require_scopes<S: AsRef<str>>(token: &Verified, required: &[S]) -> Result<(), AuthRejection> {
    match required.iter().find(|s| !has_scope(&token.claims, s.as_ref())) {
        None => Ok(()),
        Some(missing) => {
            tracing::debug!(kid = %token.kid, missing = missing.as_ref(), "bearer token lacks a required scope");
            Err(AuthRejection::InsufficientScope)
        }
    }
}

/// Verifies the bearer token of a request and, optionally, required scopes. Cheap to
/// clone; this is what the adapters' middleware runs. The token is read from
/// `Authorization: Bearer` unless other [`TokenSource`]s are configured.
#[derive(Debug, Clone)]
pub struct BearerAuth {
    verifier: Verifier,
    required_scopes: Arc<[String]>,
    sources: Arc<[TokenSource]>,
    token_cache: Option<TokenCache>,
}

impl BearerAuth {
    /// Verifies tokens against `keyring` (an unknown `kid` triggers one rate-limited
    /// refresh, so a key activated on another instance a moment ago is accepted).
    pub fn new(keyring: KeyRing) -> Self {
        Self::from_verifier(Verifier::ring(keyring))
    }

    /// Verifies tokens with any verifier: a [`PublicKeyRing`](keyrot_core::PublicKeyRing), the
    /// remote verifier of `keyrot-jwks`, or your own [`TokenVerifier`].
    pub fn with_verifier(verifier: Arc<dyn TokenVerifier>) -> Self {
        Self::from_verifier(Verifier::custom(verifier))
    }

    fn from_verifier(verifier: Verifier) -> Self {
        Self {
            verifier,
            required_scopes: Arc::new([]),
            sources: Arc::new([TokenSource::authorization_header()]),
            token_cache: None,
        }
    }

    /// Reuses successful verifications of repeated tokens from `cache` (see
    /// [`TokenCache`]): a hit skips the signature check, and is refused at once when the
    /// token expires or its key is revoked or expires. Works with [`KeyRing`],
    /// [`PublicKeyRing`](keyrot_core::PublicKeyRing) and `keyrot-jwks`'s verifiers; other
    /// [`TokenVerifier`]s verify in full unless they implement
    /// [`TokenVerifier::verify_cached`]. A ring built with its own cache uses that one
    /// when this is not set.
    pub fn with_token_cache(mut self, cache: TokenCache) -> Self {
        self.token_cache = Some(cache);
        self
    }

    /// The cache [`BearerAuth::with_token_cache`] set.
    pub fn token_cache(&self) -> Option<&TokenCache> {
        self.token_cache.as_ref()
    }

    /// Also requires `scope` (every required scope must be granted; `403` otherwise).
    pub fn with_required_scope(mut self, scope: impl Into<String>) -> Self {
        let mut v = self.required_scopes.to_vec();
        v.push(scope.into());
        self.required_scopes = v.into();
        self
    }

    /// Reads the token from `source` only (instead of `Authorization: Bearer`).
    pub fn with_token_source(self, source: TokenSource) -> Self {
        self.with_token_sources([source])
    }

    /// Reads the token from any of `sources` (e.g. the `Authorization` header or a
    /// cookie). Exactly one may hold a credential: a request carrying two (even the
    /// same token twice), or a malformed one in any source, is `401 invalid_token`. No
    /// source at all refuses every request.
    pub fn with_token_sources(mut self, sources: impl IntoIterator<Item = TokenSource>) -> Self {
        self.sources = sources.into_iter().collect();
        self
    }

    /// Where the token is read from.
    pub fn token_sources(&self) -> &[TokenSource] {
        &self.sources
    }

    /// The scopes every request must carry.
    pub fn required_scopes(&self) -> &[String] {
        &self.required_scopes
    }

    /// This verification for routes that serve anonymous users too: a request without
    /// any token goes on as anonymous; one with a token is verified exactly as here
    /// (an invalid token is still `401`, never anonymous).
    pub fn optional(self) -> OptionalBearerAuth {
        OptionalBearerAuth(self)
    }

    /// Verifies the request's bearer token. The detail of a failure goes to `tracing`
    /// (at debug level); the rejection converts into the response to send.
    pub async fn authenticate(&self, headers: &dyn HeaderSource) -> Result<Verified, AuthRejection> {
        let token = match TokenSource::read_all(&self.sources, headers) {
            BearerToken::Present(t) => t,
            BearerToken::Absent => {
                tracing::debug!("request without a bearer token");
                return Err(AuthRejection::MissingToken);
            }
            BearerToken::Malformed => {
                tracing::debug!("malformed or ambiguous token credential");
                return Err(AuthRejection::InvalidToken(None));
            }
        };
        match self.verifier.verify(token, self.token_cache.as_ref()).await {
            Ok(v) => {
                require_scopes(&v, &self.required_scopes)?;
                Ok(v)
            }
            Err(e) => {
                tracing::debug!(reason = %e, "bearer token rejected");
                keyrot_core::adapter::record_verification_failure(&e);
                Err(match e {
                    TokenError::KeysUnavailable => AuthRejection::KeysUnavailable,
                    e => AuthRejection::InvalidToken(Some(e)),
                })
            }
        }
    }
}

/// [`BearerAuth`] for routes that serve anonymous users too ([`BearerAuth::optional`]):
/// the adapters' optional-auth middleware runs it, and their `MaybeClaims` extractor
/// gives `None` for a request that sent no token.
#[derive(Debug, Clone)]
pub struct OptionalBearerAuth(pub BearerAuth);

impl OptionalBearerAuth {
    /// `Ok(None)` when the request carries no token at all; otherwise
    /// [`BearerAuth::authenticate`].
    pub async fn authenticate(&self, headers: &dyn HeaderSource) -> Result<Option<Verified>, AuthRejection> {
        match self.0.authenticate(headers).await {
            Ok(v) => Ok(Some(v)),
            Err(AuthRejection::MissingToken) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
