//! Why a remote key set could not be set up or refreshed.

use keyrot_core::KeySetError;
use std::fmt;
use std::time::Duration;

/// Which document a request was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Document {
    /// The issuer's JWKS (`jwks_uri`).
    Jwks,
    /// The issuer's metadata (`/.well-known/openid-configuration` or RFC 8414).
    Discovery,
}

impl fmt::Display for Document {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Document::Jwks => "the JWKS endpoint",
            Document::Discovery => "the discovery endpoint",
        })
    }
}

/// Why a [`crate::JwksVerifier`] could not be built, or a refresh failed (the last good
/// key set then keeps serving, up to `max_stale`). Carries no key material and no token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JwksError {
    /// Neither a JWKS URL nor an issuer was configured.
    #[error("no key source: set a JWKS URL or an issuer")]
    NoSource,
    /// A builder setting is out of range.
    #[error("invalid configuration: {0}")]
    Config(&'static str),
    /// A URL does not parse.
    #[error("the URL of {what} is not a valid absolute URL")]
    InvalidUrl {
        /// Which document.
        what: Document,
        /// The parser's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A URL is neither `https` nor plain `http` to a loopback address.
    #[error("the URL of {what} must use https (plain http only to a loopback address)")]
    InsecureUrl {
        /// Which document.
        what: Document,
    },
    /// The default HTTP client could not be built.
    #[error("the HTTP client could not be built")]
    Client(#[source] reqwest::Error),
    /// The request failed (connection refused, TLS, a redirect refused, a broken body).
    #[error("the request to {what} failed")]
    Request {
        /// Which document.
        what: Document,
        /// The client's error.
        #[source]
        source: reqwest::Error,
    },
    /// The answer was not `200 OK` (or `304 Not Modified` to a conditional request).
    #[error("{what} answered HTTP {status}")]
    Status {
        /// Which document.
        what: Document,
        /// The status code.
        status: u16,
    },
    /// The whole exchange took longer than the configured timeout.
    #[error("{what} did not answer within {timeout:?}")]
    Timeout {
        /// Which document.
        what: Document,
        /// The limit.
        timeout: Duration,
    },
    /// The body is larger than the configured limit.
    #[error("the answer of {what} exceeds {max} bytes")]
    TooLarge {
        /// Which document.
        what: Document,
        /// The limit.
        max: usize,
    },
    /// The JWKS document was refused whole.
    #[error("the JWKS document is refused")]
    KeySet(#[source] KeySetError),
    /// The discovery document is not the JSON object of OpenID Connect Discovery / RFC
    /// 8414 with string `issuer` and `jwks_uri`.
    #[error("the discovery document is malformed")]
    Discovery(#[source] serde_json::Error),
    /// The discovery document's `issuer` is not the configured issuer.
    #[error("the discovery document names another issuer")]
    IssuerMismatch,
}

/// Why a [`crate::MultiIssuerVerifier`] could not be built. Names configured issuers
/// only, never a token's contents.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MultiIssuerError {
    /// No verifier was given.
    #[error("a multi-issuer verifier needs at least one verifier")]
    Empty,
    /// A verifier among several requires no `iss` (neither
    /// [`crate::JwksVerifierBuilder::issuer`] nor [`keyrot_core::Validation::with_issuer`]):
    /// tokens could not be routed to it, and it would accept any issuer's.
    #[error("verifier #{index} requires no issuer; among several verifiers each must require its own")]
    MissingIssuer {
        /// Its position in the list given.
        index: usize,
    },
    /// Two verifiers accept the same issuer: which rules apply would be ambiguous.
    #[error("two verifiers accept the issuer {issuer:?}")]
    DuplicateIssuer {
        /// The issuer.
        issuer: String,
    },
}
