//! The verifier of a service that holds no key material (the HTTP and gRPC resource
//! servers): an issuer's JWKS, from the environment.
//!
//! * `KEYROT_JWKS_URL`: the issuer's JWKS. When unset, `KEYROT_ISSUER` alone is used for
//!   discovery (`/.well-known/openid-configuration`, then RFC 8414).
//! * `KEYROT_ISSUER`: the required `iss` when set.
//! * `KEYROT_AUDIENCE`: the required `aud`; when unset, `KEYROT_ISSUER` is (the quickstart's
//!   access tokens name its issuer URL as their audience unless told otherwise).
//! * `KEYROT_JWKS_MIN_REFRESH_MS`: the floor of the JWKS cache lifetime, which is also the
//!   cooldown of unknown-kid refreshes (default: keyrot-jwks's).
//! * `KEYROT_TOKEN_CACHE_ENTRIES`: the verified-token cache's size (default 0: no cache),
//!   as in the quickstarts.
//! * `KEYROT_LISTEN`: the listen address ([`listen_address`]).

use keyrot_core::{TokenCache, TokenCacheConfig, Validation};
use keyrot_jwks::{JwksError, JwksVerifier};
use std::net::SocketAddr;
use std::time::Duration;

/// Why a resource server cannot start (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum RemoteSetupError {
    /// Neither source is configured.
    #[error("set KEYROT_JWKS_URL (the issuer's JWKS) or KEYROT_ISSUER (discovery)")]
    NoSource,
    /// `KEYROT_LISTEN` does not parse.
    #[error("KEYROT_LISTEN={value:?} is not an address: set it to HOST:PORT, like {default}")]
    Listen {
        /// The value given.
        value: String,
        /// The server's default, as an example.
        default: &'static str,
        /// Why it does not parse.
        #[source]
        source: std::net::AddrParseError,
    },
    /// `KEYROT_JWKS_MIN_REFRESH_MS` is not a number.
    #[error("KEYROT_JWKS_MIN_REFRESH_MS={value:?} is not a number of milliseconds")]
    MinRefresh {
        /// The value given.
        value: String,
        /// Why it does not parse.
        #[source]
        source: std::num::ParseIntError,
    },
    /// `KEYROT_TOKEN_CACHE_ENTRIES` is not a whole number.
    #[error(
        "KEYROT_TOKEN_CACHE_ENTRIES={value:?} is not a number of tokens: set a whole number (0 turns the cache off), or unset it"
    )]
    TokenCacheEntries {
        /// The value given.
        value: String,
    },
    /// The issuer's keys could not be fetched at start.
    #[error("cannot load the issuer's keys")]
    Jwks(#[source] JwksError),
    /// The listener could not be bound, or serving failed.
    #[error("cannot serve on {listen}")]
    Serve {
        /// The address.
        listen: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// `KEYROT_LISTEN`, or `default` when unset.
pub fn listen_address(default: &'static str) -> Result<SocketAddr, RemoteSetupError> {
    let value = env("KEYROT_LISTEN").unwrap_or_else(|| default.into());
    value
        .parse()
        .map_err(|source| RemoteSetupError::Listen { value, default, source })
}

/// The verifier the environment describes (its keys fetched once before it returns).
pub async fn remote_verifier_from_env() -> Result<JwksVerifier, RemoteSetupError> {
    let issuer = env("KEYROT_ISSUER");
    let mut validation = Validation::new();
    if let Some(iss) = &issuer {
        validation = validation.with_issuer(iss.clone());
    }
    if let Some(aud) = env("KEYROT_AUDIENCE").or_else(|| issuer.clone()) {
        validation = validation.with_audience(aud);
    }
    let mut builder = JwksVerifier::builder().validation(validation);
    builder = match (env("KEYROT_JWKS_URL"), issuer) {
        (Some(url), Some(iss)) => builder.jwks_url(url).issuer(iss),
        (Some(url), None) => builder.jwks_url(url),
        (None, Some(iss)) => builder.issuer(iss),
        (None, None) => return Err(RemoteSetupError::NoSource),
    };
    if let Some(value) = env("KEYROT_JWKS_MIN_REFRESH_MS") {
        let ms: u64 = value
            .trim()
            .parse()
            .map_err(|source| RemoteSetupError::MinRefresh { value, source })?;
        builder = builder.min_refresh(Duration::from_millis(ms));
    }
    if let Some(value) = env("KEYROT_TOKEN_CACHE_ENTRIES") {
        let entries: usize = value
            .trim()
            .parse()
            .map_err(|_| RemoteSetupError::TokenCacheEntries { value })?;
        if entries > 0 {
            builder = builder.token_cache(TokenCache::new(TokenCacheConfig::new().with_max_entries(entries)));
        }
    }
    builder.build().await.map_err(RemoteSetupError::Jwks)
}
