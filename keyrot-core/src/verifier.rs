//! Verifying tokens from anywhere: the [`TokenVerifier`] trait every verifier implements
//! ([`KeyRing`], [`PublicKeyRing`](crate::PublicKeyRing), `keyrot-jwks`'s remote
//! verifier, or the user's), and [`Verifier`], the one a middleware holds. No HTTP here:
//! the web and gRPC adapters call these.

use crate::keyring::{KeyRing, TokenCache};
use crate::token::{TokenError, Verified};
use async_trait::async_trait;
use std::fmt::Debug;
use std::sync::Arc;

/// Verifies tokens. [`KeyRing`] implements it (with one rate-limited refresh on an
/// unknown `kid`), and so do [`PublicKeyRing`](crate::PublicKeyRing) (the published keys
/// of a shared store, without the master key) and the remote verifier of `keyrot-jwks`
/// (an issuer's JWKS over HTTPS); implement it to accept tokens from any other issuer.
/// Any `Arc<dyn TokenVerifier>` goes into a [`Verifier`], and so into every adapter's
/// middleware.
#[async_trait]
pub trait TokenVerifier: Debug + Send + Sync + 'static {
    /// Verifies `token` now.
    async fn verify(&self, token: &str) -> Result<Verified, TokenError>;

    /// Verifies `token` now through `cache`. keyrot's verifiers reuse a cached
    /// verification only while its key is still in their current key set (see
    /// [`TokenCache`]). The default ignores the cache and verifies in full: a cache that
    /// does not know a verifier's keys cannot tell when they are revoked.
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

/// The verifier a middleware holds: a [`KeyRing`] (called directly, no boxed future on
/// the hot path) or any [`TokenVerifier`].
#[derive(Debug, Clone)]
pub struct Verifier(Kind);

#[derive(Debug, Clone)]
enum Kind {
    Ring(KeyRing),
    Custom(Arc<dyn TokenVerifier>),
}

impl Verifier {
    /// Verifies with `keyring`, refreshing it once on an unknown kid.
    pub fn ring(keyring: KeyRing) -> Self {
        Self(Kind::Ring(keyring))
    }

    /// Verifies with any verifier.
    pub fn custom(verifier: Arc<dyn TokenVerifier>) -> Self {
        Self(Kind::Custom(verifier))
    }

    /// The ring, when this verifier is one.
    pub fn keyring(&self) -> Option<&KeyRing> {
        match &self.0 {
            Kind::Ring(r) => Some(r),
            Kind::Custom(_) => None,
        }
    }

    /// Verifies `token` now, through `cache` when one is given.
    pub async fn verify(&self, token: &str, cache: Option<&TokenCache>) -> Result<Verified, TokenError> {
        match (&self.0, cache) {
            (Kind::Ring(r), None) => r.verify_refreshing(token).await,
            (Kind::Ring(r), Some(c)) => r.verify_refreshing_using(token, Some(c)).await,
            (Kind::Custom(v), None) => v.verify(token).await,
            (Kind::Custom(v), Some(c)) => v.verify_cached(token, c).await,
        }
    }
}

impl From<KeyRing> for Verifier {
    fn from(keyring: KeyRing) -> Self {
        Self::ring(keyring)
    }
}

impl From<Arc<dyn TokenVerifier>> for Verifier {
    fn from(verifier: Arc<dyn TokenVerifier>) -> Self {
        Self::custom(verifier)
    }
}
