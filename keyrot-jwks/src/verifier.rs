//! [`JwksVerifier`] and its builder.

use crate::discovery;
use crate::error::{Document, JwksError};
use crate::http::{self, Limits, Scope};
use crate::refresh::{Cached, Inner, Timing};
use keyrot_core::TokenVerifier;
use keyrot_core::{KeySet, TokenCache, TokenError, Validation, Verified};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Default floor of the served lifetime, and the unknown-kid cooldown.
pub const DEFAULT_MIN_REFRESH: Duration = Duration::from_secs(30);
/// Default ceiling of the served lifetime.
pub const DEFAULT_MAX_REFRESH: Duration = Duration::from_secs(3600);
/// Default time the last good key set keeps serving after it expired, while refreshes
/// fail.
pub const DEFAULT_MAX_STALE: Duration = Duration::from_secs(3600);
/// Default limit on one request (connection, headers and body).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default limit on a JWKS or discovery document.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 256 * 1024;
/// The longest [`JwksVerifierBuilder::max_refresh`] and [`JwksVerifierBuilder::max_stale`]
/// (365 days): longer settings are lowered to it, so no served `max-age` (up to
/// 2^64 − 1 s) and no setting can overflow the verifier's time arithmetic.
pub const MAX_DURATION_SETTING: Duration = Duration::from_secs(365 * 24 * 3600);

/// Verifies tokens against a remote issuer's JWKS with keyrot's token rules (the code
/// path of [`keyrot_core::KeyRing::verify`]: [`KeySet::verify`]).
///
/// [`JwksVerifier::verify`] reads an atomically swapped, immutable key set: no I/O, no
/// lock. A background task keeps the set fresh; [`JwksVerifier::verify_refreshing`] (and
/// the [`TokenVerifier`] impl the HTTP adapters use) also fetches once on an unknown
/// `kid`, rate limited. Clones share one set and one task.
#[derive(Clone)]
pub struct JwksVerifier {
    inner: Arc<Inner>,
    token_cache: Option<TokenCache>,
}

impl fmt::Debug for JwksVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cached = self.inner.cached.load();
        f.debug_struct("JwksVerifier")
            .field("jwks_url", &self.inner.url.as_str())
            .field("keys", &cached.keys)
            .field("lifetime", &cached.lifetime)
            .finish()
    }
}

/// Builds a [`JwksVerifier`]; see each setting for its default.
#[derive(Debug, Clone)]
pub struct JwksVerifierBuilder {
    jwks_url: Option<String>,
    issuer: Option<String>,
    validation: Validation,
    client: Option<reqwest::Client>,
    timing: Timing,
    limits: Limits,
    token_cache: Option<TokenCache>,
}

impl JwksVerifier {
    /// Starts building a verifier.
    pub fn builder() -> JwksVerifierBuilder {
        JwksVerifierBuilder {
            jwks_url: None,
            issuer: None,
            validation: Validation::new(),
            client: None,
            timing: Timing {
                min_refresh: DEFAULT_MIN_REFRESH,
                max_refresh: DEFAULT_MAX_REFRESH,
                max_stale: DEFAULT_MAX_STALE,
            },
            limits: Limits {
                timeout: DEFAULT_TIMEOUT,
                max_bytes: DEFAULT_MAX_RESPONSE_BYTES,
                scope: Scope::Remote,
            },
            token_cache: None,
        }
    }

    /// Verifies `token` now against the current key set. No I/O and no lock: an unknown
    /// `kid` is refused ([`TokenError::UnknownKid`]) without fetching; once the set has
    /// been unusable for longer than `max_stale` past its lifetime, every token is refused
    /// with [`TokenError::KeysUnavailable`].
    pub fn verify(&self, token: &str) -> Result<Verified, TokenError> {
        self.verify_using(token, self.token_cache.as_ref())
    }

    fn verify_using(&self, token: &str, cache: Option<&TokenCache>) -> Result<Verified, TokenError> {
        let cached = self.inner.cached.load();
        if Instant::now() >= cached.usable_until {
            return Err(TokenError::KeysUnavailable);
        }
        let (v, now) = (&self.inner.validation, unix_now());
        match cache {
            Some(cache) => cached.keys.verify_cached(token, v, now, cache),
            None => cached.keys.verify(token, v, now),
        }
    }

    /// [`JwksVerifier::verify`], and on an unknown `kid` one fetch of the JWKS (at most
    /// one per `min_refresh`, shared by concurrent misses), then once more.
    pub async fn verify_refreshing(&self, token: &str) -> Result<Verified, TokenError> {
        self.verify_refreshing_using(token, self.token_cache.as_ref()).await
    }

    async fn verify_refreshing_using(&self, token: &str, cache: Option<&TokenCache>) -> Result<Verified, TokenError> {
        match self.verify_using(token, cache) {
            Err(TokenError::UnknownKid) => {
                let kid = keyrot_core::decode_header(token, &self.inner.validation)?.kid;
                if self.inner.refresh_for_unknown_kid(&kid).await {
                    self.verify_using(token, cache)
                } else {
                    Err(TokenError::UnknownKid)
                }
            }
            other => other,
        }
    }

    /// The verified-token cache, when one is configured
    /// ([`JwksVerifierBuilder::token_cache`]).
    pub fn token_cache(&self) -> Option<&TokenCache> {
        self.token_cache.as_ref()
    }

    /// Fetches the JWKS now (conditionally), outside the schedule. On failure the
    /// current set stays.
    pub async fn refresh(&self) -> Result<(), JwksError> {
        self.inner.refresh().await
    }

    /// Whether `kid` is in the current key set.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.inner.cached.load().keys.contains(kid)
    }

    /// The current key set.
    pub fn key_set(&self) -> KeySet {
        self.inner.cached.load().keys.clone()
    }

    /// The JWKS URL (configured, or found by discovery).
    pub fn jwks_url(&self) -> &str {
        self.inner.url.as_str()
    }

    /// The validation rules tokens are checked with.
    pub fn validation(&self) -> &Validation {
        &self.inner.validation
    }

    /// Stops the background refresh (for every clone) and waits for it. Verification
    /// goes on with the current set until it is no longer usable.
    pub async fn shutdown(self) {
        self.inner.stop().await;
    }
}

#[async_trait::async_trait]
impl TokenVerifier for JwksVerifier {
    async fn verify(&self, token: &str) -> Result<Verified, TokenError> {
        self.verify_refreshing(token).await
    }

    async fn verify_cached(&self, token: &str, cache: &TokenCache) -> Result<Verified, TokenError> {
        self.verify_refreshing_using(token, Some(cache)).await
    }
}

pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl JwksVerifierBuilder {
    /// Reuses successful verifications of repeated tokens from `cache` (see
    /// [`TokenCache`]; off by default). A hit skips the signature check and is
    /// re-checked against the current key set: once a fetched JWKS no longer publishes
    /// the key, its cached tokens are refused. A new JWKS document invalidates the
    /// entries (a `304 Not Modified` keeps them).
    pub fn token_cache(mut self, cache: TokenCache) -> Self {
        self.token_cache = Some(cache);
        self
    }

    /// The JWKS URL (`https`, or `http` to a loopback address). Without it, the JWKS URL
    /// is found by discovery from [`JwksVerifierBuilder::issuer`]. Only when the
    /// configured URL (this one, else the issuer) is on a loopback address may a
    /// discovered `jwks_uri` or a redirect lead to plain `http` or to a loopback address.
    pub fn jwks_url(mut self, url: impl Into<String>) -> Self {
        self.jwks_url = Some(url.into());
        self
    }

    /// The issuer. Without a JWKS URL its `jwks_uri` is discovered: first
    /// `{issuer}/.well-known/openid-configuration`, and when that answers with an HTTP
    /// error, RFC 8414's `/.well-known/oauth-authorization-server`; the document's
    /// `issuer` must equal this one exactly. It is also the required `iss` of every token
    /// unless the [`Validation`] names issuers itself.
    pub fn issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = Some(issuer.into());
        self
    }

    /// The token rules (default [`Validation::new`]). Its algorithm allow-list
    /// ([`Validation::with_algorithms`]) also decides what a JWK without `alg` is used
    /// for: only the allowed algorithms of its key type (none when the list is empty).
    pub fn validation(mut self, v: Validation) -> Self {
        self.validation = v;
        self
    }

    /// The HTTP client (default: rustls with the platform's roots, at most three
    /// redirects, only to `https` on a host that is not loopback, or also to `http` on
    /// loopback when the configured URL is on loopback). The request timeout and size
    /// limit apply to a caller's client too, and an answer whose final URL is outside
    /// those rules is refused ([`JwksError::InsecureUrl`]).
    pub fn client(mut self, c: reqwest::Client) -> Self {
        self.client = Some(c);
        self
    }

    /// Floor of the served lifetime (`max-age`, and the lifetime of `no-cache` and
    /// `no-store` answers), and the cooldown between unknown-kid fetches (default
    /// [`DEFAULT_MIN_REFRESH`]).
    pub fn min_refresh(mut self, d: Duration) -> Self {
        self.timing.min_refresh = d;
        self
    }

    /// Ceiling of the served lifetime (default [`DEFAULT_MAX_REFRESH`], at most
    /// [`MAX_DURATION_SETTING`]: a longer one is lowered to it).
    pub fn max_refresh(mut self, d: Duration) -> Self {
        self.timing.max_refresh = d;
        self
    }

    /// How long past its lifetime the last good set keeps serving while refreshes fail
    /// (default [`DEFAULT_MAX_STALE`], at most [`MAX_DURATION_SETTING`]: a longer one is
    /// lowered to it); then verification fails closed until a refresh succeeds.
    pub fn max_stale(mut self, d: Duration) -> Self {
        self.timing.max_stale = d;
        self
    }

    /// Limit on one request: connection, headers and body (default [`DEFAULT_TIMEOUT`]).
    pub fn timeout(mut self, d: Duration) -> Self {
        self.limits.timeout = d;
        self
    }

    /// Limit on a document's size (default [`DEFAULT_MAX_RESPONSE_BYTES`]).
    pub fn max_response_bytes(mut self, n: usize) -> Self {
        self.limits.max_bytes = n;
        self
    }

    /// Discovers the JWKS URL if needed, fetches the key set (refused whole if it is
    /// bad) and starts the background refresh. Needs a tokio runtime.
    pub async fn build(self) -> Result<JwksVerifier, JwksError> {
        let mut t = self.timing;
        t.max_refresh = t.max_refresh.min(MAX_DURATION_SETTING);
        t.max_stale = t.max_stale.min(MAX_DURATION_SETTING);
        if t.min_refresh.is_zero() || t.min_refresh > t.max_refresh {
            return Err(JwksError::Config(
                "min_refresh must be positive and at most max_refresh",
            ));
        }
        if self.limits.timeout.is_zero() || self.limits.max_bytes == 0 {
            return Err(JwksError::Config("timeout and max_response_bytes must be positive"));
        }
        let mut limits = self.limits;
        let configured = match (&self.jwks_url, &self.issuer) {
            (Some(u), _) => http::parse_url(u, Document::Jwks)?,
            (None, Some(issuer)) => http::parse_url(issuer, Document::Discovery)?,
            (None, None) => return Err(JwksError::NoSource),
        };
        limits.scope = Scope::of(&configured);
        let client = match self.client {
            Some(c) => c,
            None => http::default_client(limits.scope)?,
        };
        let url = match (&self.jwks_url, &self.issuer) {
            (None, Some(issuer)) => discovery::jwks_uri(&client, issuer, limits).await?,
            _ => configured,
        };
        let mut validation = self.validation;
        if let Some(issuer) = self.issuer
            && validation.issuers().is_empty()
        {
            validation = validation.with_issuer(issuer);
        }
        // Never served: the first fetch replaces it, or the build fails.
        let placeholder = Cached::new(KeySet::default(), None, Instant::now(), Duration::ZERO, &t);
        let (inner, schedule) = Inner::new(url, client, validation, t, limits, placeholder);
        inner.refresh().await?;
        inner.spawn(schedule);
        let verifier = JwksVerifier {
            inner,
            token_cache: self.token_cache,
        };
        Ok(verifier)
    }
}
