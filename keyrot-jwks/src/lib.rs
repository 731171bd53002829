//! # keyrot-jwks
//!
//! Verify tokens from a remote issuer (an OpenID Connect provider, an OAuth
//! authorization server, another keyrot service) against its published JWKS, with
//! exactly keyrot's token rules: [`JwksVerifier::verify`] runs
//! [`keyrot_core::KeySet::verify`], the decoding and checking functions
//! [`keyrot_core::KeyRing::verify`] runs.
//!
//! ```no_run
//! # async fn demo() -> Result<(), keyrot_jwks::JwksError> {
//! use keyrot_core::Validation;
//! use keyrot_jwks::JwksVerifier;
//!
//! let verifier = JwksVerifier::builder()
//!     .issuer("https://id.example.com") // discovery, and the required `iss`
//!     .validation(Validation::new().with_audience("my-api"))
//!     .build()
//!     .await?;
//! # let token = "";
//! let verified = verifier.verify(token); // no I/O, no lock
//! # Ok(()) }
//! ```
//!
//! ## Caching
//!
//! * The served lifetime of a JWKS is its `Cache-Control: max-age` less `Age`, else its
//!   `Expires` less `Date` and `Age` (RFC 9111 §5.3: an invalid `Expires` has expired),
//!   else 600 s, clamped to [`JwksVerifierBuilder::min_refresh`] (floor) and
//!   [`JwksVerifierBuilder::max_refresh`] (ceiling, at most [`MAX_DURATION_SETTING`]).
//!   `no-cache`, `no-store` and a `Cache-Control` that does not follow RFC 9111 §5.2's
//!   grammar give the floor; after `no-store` no ETag is kept. Other directives are not
//!   read.
//! * Only when the configured URL (the JWKS URL, else the issuer) is on a loopback
//!   address may discovery or a redirect lead to plain `http` or to a loopback address;
//!   from a remote issuer, every request stays on `https` to hosts that are not loopback.
//! * Refreshes are conditional (`If-None-Match` with the last ETag); a `304` renews the
//!   lifetime of the set held. A background task refreshes when three quarters of the
//!   lifetime have passed, so verification never waits on the network.
//! * An unknown `kid` ([`JwksVerifier::verify_refreshing`], or the
//!   [`keyrot_core::TokenVerifier`] impl) fetches at most once per `min_refresh`;
//!   concurrent misses share that fetch; a miss within the cooldown is refused at once.
//! * A failed refresh (unreachable, an HTTP error, a timeout, an oversized or refused
//!   document) keeps the last good set, retried every `min_refresh`. Past its lifetime
//!   plus [`JwksVerifierBuilder::max_stale`] the set is no longer used: every token is
//!   refused with [`keyrot_core::TokenError::KeysUnavailable`] until a refresh succeeds.
//! * A document is applied whole or not at all ([`keyrot_core::KeySet::from_jwks`]).
//!
//! For several issuers at once, each token checked with the rules of the one its `iss`
//! names, see [`MultiIssuerVerifier`].

mod cache_control;
mod discovery;
mod error;
mod http;
mod multi;
mod refresh;
mod verifier;

pub use error::{Document, JwksError, MultiIssuerError};
pub use multi::MultiIssuerVerifier;
pub use verifier::{
    DEFAULT_MAX_REFRESH, DEFAULT_MAX_RESPONSE_BYTES, DEFAULT_MAX_STALE, DEFAULT_MIN_REFRESH, DEFAULT_TIMEOUT,
    JwksVerifier, JwksVerifierBuilder, MAX_DURATION_SETTING,
};
