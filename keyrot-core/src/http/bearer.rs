//! Bearer tokens (RFC 6750): reading the `Authorization` header, verifying, scopes, and
//! the 401/403 answers.

use super::token_source::TokenSource;
use super::{HeaderSource, HttpResponse, Single, single};
use crate::keyring::{KeyRing, TokenCache};
use crate::token::{TokenError, Verified};
use async_trait::async_trait;
use serde_json::{Map, Value};
use std::fmt::Debug;
use std::sync::Arc;

/// Verifies bearer tokens. [`KeyRing`] implements it (with one rate-limited refresh on
/// an unknown `kid`), and so do [`PublicKeyRing`](crate::PublicKeyRing) (the published
/// keys of a shared store, without the master key) and the remote verifier of
/// `keyrot-jwks` (an issuer's JWKS over HTTPS); implement it to accept tokens from any
/// other issuer. Any `Arc<dyn TokenVerifier>` goes into [`BearerAuth::with_verifier`],
/// and so into both adapters' middleware.
#[async_trait]
pub trait TokenVerifier: Debug + Send + Sync + 'static {
    /// Verifies `token` now.
    async fn verify(&self, token: &str) -> Result<Verified, TokenError>;

    /// Verifies `token` now through `cache` ([`BearerAuth::with_token_cache`]). keyrot's
    /// verifiers reuse a cached verification only while its key is still in their current
    /// key set (see [`TokenCache`]). The default ignores the cache and verifies in full:
    /// a cache that does not know a verifier's keys cannot tell when they are revoked.
    async fn verify_cached(&self, token: &str, cache: &TokenCache) -> Result<Verified, TokenError> {
        let _ = cache;
        self.verify(token).await
    }
}

#[async_trait]
impl TokenVerifier for KeyRing {
    async fn verify(&self, token: &str) -> Result<Verified, TokenError> {
        self.verify_refreshing(token).await
    }

    async fn verify_cached(&self, token: &str, cache: &TokenCache) -> Result<Verified, TokenError> {
        self.verify_refreshing_using(token, Some(cache)).await
    }
}

/// A verifier: the ring itself (no boxing on the hot path) or the user's.
#[derive(Debug, Clone)]
pub(crate) enum Verifier {
    Ring(KeyRing),
    Custom(Arc<dyn TokenVerifier>),
}

impl Verifier {
    pub(crate) async fn verify(&self, token: &str, cache: Option<&TokenCache>) -> Result<Verified, TokenError> {
        match (self, cache) {
            (Verifier::Ring(r), None) => r.verify_refreshing(token).await,
            (Verifier::Ring(r), Some(c)) => r.verify_refreshing_using(token, Some(c)).await,
            (Verifier::Custom(v), None) => v.verify(token).await,
            (Verifier::Custom(v), Some(c)) => v.verify_cached(token, c).await,
        }
    }
}

/// What the `Authorization` header holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BearerToken<'a> {
    /// No `Authorization` header, or one with another scheme (e.g. `Basic`).
    Absent,
    /// `Bearer <token>` with a syntactically valid token (RFC 6750 `b64token`).
    Present(&'a str),
    /// A bearer credential that cannot be a token: empty, bad characters, or more than
    /// one `Authorization` header.
    Malformed,
}

pub(super) fn is_b64token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/' | b'=')
}

/// Reads the bearer token from the `Authorization` header. The scheme is matched
/// case-insensitively.
pub fn bearer_token(headers: &dyn HeaderSource) -> BearerToken<'_> {
    let value = match single(headers, "authorization") {
        Single::Absent => return BearerToken::Absent,
        Single::Many => return BearerToken::Malformed,
        Single::One(v) => v,
    };
    let Some(scheme) = value.get(..6) else {
        return BearerToken::Absent;
    };
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return BearerToken::Absent;
    }
    let rest = &value[6..];
    if rest.is_empty() {
        return BearerToken::Malformed;
    }
    if rest[0] != b' ' {
        // "Bearerx…" is another scheme.
        return BearerToken::Absent;
    }
    let token = rest.trim_ascii_start();
    if token.is_empty() || !token.iter().copied().all(is_b64token_char) {
        return BearerToken::Malformed;
    }
    match std::str::from_utf8(token) {
        Ok(t) => BearerToken::Present(t),
        Err(_) => BearerToken::Malformed,
    }
}

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
        let (code, description) = match self {
            AuthRejection::MissingToken => ("unauthorized", "a bearer token is required"),
            AuthRejection::InvalidToken(_) => ("invalid_token", "the access token is not valid"),
            AuthRejection::InsufficientScope => (
                "insufficient_scope",
                "the access token does not grant access to this resource",
            ),
            AuthRejection::KeysUnavailable => (
                "temporarily_unavailable",
                "the token cannot be checked now; retry later",
            ),
        };
        let response = HttpResponse::error(self.status(), code, description);
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
        Self::from_verifier(Verifier::Ring(keyring))
    }

    /// Verifies tokens with any verifier: a [`PublicKeyRing`](crate::PublicKeyRing), the
    /// remote verifier of `keyrot-jwks`, or your own [`TokenVerifier`].
    pub fn with_verifier(verifier: Arc<dyn TokenVerifier>) -> Self {
        Self::from_verifier(Verifier::Custom(verifier))
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
    /// [`PublicKeyRing`](crate::PublicKeyRing) and `keyrot-jwks`'s verifiers; other
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
                crate::metrics::verification_failure(&e);
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
