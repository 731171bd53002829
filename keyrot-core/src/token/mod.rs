//! JWS compact tokens (JWTs): signing with a pre-parsed key and strict verification.
//!
//! Verification order: size cap → three canonical base64url segments → header JSON
//! (no duplicates) → forbidden header members → `typ` (when one is required) → `kid`
//! lookup → `alg` must equal the key's algorithm → signature → payload JSON → time and
//! audience claims. The payload is never parsed before the signature has been checked.

use crate::alg::Algorithm;
use crate::b64;
use crate::json::{JsonError, parse_strict};
use crate::key::{KeyError, SigningKey, VerifyingKey};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::Duration;

mod claims;
pub(crate) use claims::Times;
mod decode;
mod payload;
pub(crate) use payload::{AsMap, AsType, ReadClaims};
mod sign;
mod tee;
#[cfg(test)]
mod tests;

pub(crate) use decode::{HeaderHash, decode_with_known_typed_header};
pub use decode::{check_header_type, decode_header, verify_with_key, verify_with_lookup};
#[cfg(any(test, feature = "test-util"))]
pub use sign::encode_header;
pub use sign::{DEFAULT_TOKEN_TYPE, encode_header_with_type, sign};
pub(crate) use sign::{encode_header_named, finish, signing_input};

/// Default cap on a token's length before any parsing.
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Largest leeway [`Validation::with_leeway`] accepts.
pub const MAX_LEEWAY: Duration = Duration::from_secs(300);

/// What RFC 7515 §4.1.9 puts in front of a `typ` without `/`.
const MEDIA_TYPE_PREFIX: &str = "application/";

/// Header members keyrot refuses: each asks the verifier to fetch, trust or interpret
/// something chosen by the token's author.
pub const FORBIDDEN_HEADER_MEMBERS: [&str; 6] = ["crit", "jku", "x5u", "jwk", "x5c", "b64"];

/// Why a token was refused. Carries neither key material nor token contents.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Longer than the configured cap.
    #[error("token exceeds the {max}-byte limit")]
    TooLarge {
        /// The cap.
        max: usize,
    },
    /// Not three segments of canonical base64url, or a segment is not a JSON object.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The header or payload has the same member twice.
    #[error("malformed token: duplicate JSON member in the {0}")]
    DuplicateMember(&'static str),
    /// A header member keyrot never honours (`crit`, `jku`, `x5u`, `jwk`, `x5c`, `b64`).
    #[error("token header member {0:?} is not accepted")]
    ForbiddenHeader(&'static str),
    /// No `kid` in the header.
    #[error("token header has no kid")]
    MissingKid,
    /// The `kid` is not a verifying key of this ring (after any refresh).
    #[error("token kid is not a key of this ring")]
    UnknownKid,
    /// The header `alg` is not the algorithm of the key named by `kid`.
    #[error("token alg does not match the key's algorithm {expected}")]
    AlgorithmMismatch {
        /// The key's algorithm.
        expected: Algorithm,
    },
    /// The header `typ` is absent or not the type [`Validation::with_required_type`]
    /// requires (explicit typing, RFC 8725 §3.11).
    #[error("token type (typ) is not the one required here")]
    InvalidType,
    /// The key named by `kid` is no longer valid at the verification time (a Retiring
    /// key past its `expires_at`).
    #[error("token key is no longer valid")]
    KeyExpired,
    /// The signature does not verify.
    #[error("token signature is invalid")]
    BadSignature,
    /// `now ≥ exp + leeway`.
    #[error("token has expired")]
    Expired,
    /// `now + leeway < nbf`.
    #[error("token is not yet valid")]
    NotYetValid,
    /// `iat` is later than `now + leeway`.
    #[error("token was issued in the future")]
    IssuedInFuture,
    /// A required claim is missing.
    #[error("token has no {0:?} claim")]
    MissingClaim(&'static str),
    /// A claim has the wrong type (numeric dates must be numbers).
    #[error("token claim {0:?} has an invalid value")]
    InvalidClaim(&'static str),
    /// `iss` is not one of the accepted issuers.
    #[error("token issuer is not accepted")]
    InvalidIssuer,
    /// `aud` does not name an accepted audience.
    #[error("token audience is not accepted")]
    InvalidAudience,
    /// The claims do not fit the caller's claims type.
    #[error("token claims do not match the expected shape")]
    ClaimsShape,
    /// The key's algorithm is not in the allow-list of [`Validation::with_algorithms`].
    #[error("token algorithm {alg} is not allowed here")]
    AlgorithmNotAllowed {
        /// The key's (and the header's) algorithm.
        alg: Algorithm,
    },
    /// The verifier has no key set it may use: a remote key set that could not be
    /// refreshed for longer than its configured staleness limit (verification fails
    /// closed).
    #[error("the verifier's key set is unavailable")]
    KeysUnavailable,
}

/// Why a token could not be signed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignError {
    /// The ring has no Active key (not initialised yet).
    #[error("the ring has no active signing key; initialise it first")]
    NoActiveKey,
    /// The ring holds MAC or AEAD keys, which never sign a token.
    #[error("the ring holds {0} keys, which never sign a token")]
    NotASigningRing(crate::KeyKind),
    /// The claims are not a JSON object (the source says why).
    #[error("the claims cannot be signed")]
    Claims(#[source] ClaimsError),
    /// Tokens must carry a numeric `exp`.
    #[error("claims must contain a numeric \"exp\" (tokens that never expire outlive key rotation)")]
    MissingExp,
    /// `exp` lies further ahead than the policy's `max_token_ttl` allows.
    #[error("token lifetime {requested_secs}s exceeds the ring's max_token_ttl of {max_secs}s")]
    TtlTooLong {
        /// Requested lifetime in seconds.
        requested_secs: i64,
        /// Allowed lifetime in seconds.
        max_secs: i64,
    },
    /// The signature operation failed.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The Active key is held by an HSM or KMS: signing is a network or HSM call, so
    /// the ring signs only through `KeyRing::sign_async`.
    #[error("the active key is held by an HSM or KMS: sign with KeyRing::sign_async")]
    RemoteKey,
    /// The HSM or KMS holding the Active key did not sign (unreachable, refused). The
    /// token endpoint answers 503; verification is unaffected.
    #[error("the HSM or KMS holding the signing key did not sign")]
    Custody(#[source] crate::custody::CustodyError),
    /// An [`AccessToken`](crate::AccessToken) that cannot be issued as asked (the
    /// message says which member and why).
    #[error("the access token cannot be issued: {0}")]
    InvalidAccessToken(String),
}

/// Why claims cannot be signed (the source of [`SignError::Claims`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClaimsError {
    /// Serialising them failed (e.g. a map with non-string keys).
    #[error("they cannot be serialised to JSON")]
    Serialize(#[source] serde_json::Error),
    /// They serialise to JSON that is not an object (an array, a string, …).
    #[error("they must serialise to a JSON object (a struct or a map)")]
    NotAnObject,
}

/// What [`crate::KeyRing::verify`] checks besides the signature. Leeway defaults to 30 seconds and is
/// limited to [`MAX_LEEWAY`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validation {
    issuers: Vec<String>,
    audiences: Vec<String>,
    any_audience: bool,
    leeway_secs: i64,
    require_exp: bool,
    max_token_bytes: usize,
    /// The required `typ`, normalised to a full lowercase media type.
    required_type: Option<String>,
    /// The allowed algorithms (empty: any algorithm keyrot supports).
    algorithms: Vec<Algorithm>,
    /// Whether the access-token profile's claims are required (RFC 9068 §2.2).
    access_token_profile: bool,
}

impl Default for Validation {
    fn default() -> Self {
        Self {
            issuers: Vec::new(),
            audiences: Vec::new(),
            any_audience: false,
            leeway_secs: 30,
            require_exp: true,
            max_token_bytes: DEFAULT_MAX_TOKEN_BYTES,
            required_type: None,
            algorithms: Vec::new(),
            access_token_profile: false,
        }
    }
}

impl Validation {
    /// Defaults: `exp` required, 30 s leeway, no issuer or audience configured (a token
    /// that carries `aud` is then refused unless [`Validation::allow_any_audience`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// Accept tokens whose `iss` equals `issuer` (call again to accept several).
    pub fn with_issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuers.push(issuer.into());
        self
    }

    /// Accept tokens whose `aud` names `audience` (call again to accept several).
    pub fn with_audience(mut self, audience: impl Into<String>) -> Self {
        self.audiences.push(audience.into());
        self
    }

    /// Do not check `aud` at all.
    pub fn allow_any_audience(mut self) -> Self {
        self.any_audience = true;
        self
    }

    /// Clock-skew leeway for `exp`, `nbf` and `iat`, capped at [`MAX_LEEWAY`].
    pub fn with_leeway(mut self, leeway: Duration) -> Self {
        let capped = leeway.min(MAX_LEEWAY);
        self.leeway_secs = i64::try_from(capped.as_secs()).unwrap_or(300);
        self
    }

    /// Accept tokens without `exp` (not recommended; still checked when present).
    pub fn allow_missing_exp(mut self) -> Self {
        self.require_exp = false;
        self
    }

    /// Cap on token size before parsing.
    pub fn with_max_token_bytes(mut self, max: usize) -> Self {
        self.max_token_bytes = max;
        self
    }

    /// Require the header `typ` to be `typ` (explicit typing, RFC 8725 §3.11), e.g.
    /// `"at+jwt"` for OAuth access tokens (RFC 9068). Media types compare
    /// case-insensitively and, as RFC 7515 §4.1.9 says, a value without `/` is read with
    /// `application/` in front: `at+jwt`, `AT+JWT` and `application/at+jwt` are the same
    /// type. A token without `typ` or with another one is refused with
    /// [`TokenError::InvalidType`].
    pub fn with_required_type(mut self, typ: impl AsRef<str>) -> Self {
        let typ = typ.as_ref();
        let full = if typ.contains('/') {
            typ.to_ascii_lowercase()
        } else {
            format!("{MEDIA_TYPE_PREFIX}{}", typ.to_ascii_lowercase())
        };
        self.required_type = Some(full);
        self
    }

    /// Require OAuth access tokens in the JWT profile (RFC 9068 §2 and §4): the header
    /// `typ` must be `at+jwt` (as [`Validation::with_required_type`] compares it) and the
    /// token must carry `iss`, `sub`, `aud`, `exp`, `iat`, `jti` and `client_id`
    /// (strings, `aud` a string or a non-empty array of strings; refused with
    /// [`TokenError::MissingClaim`] or [`TokenError::InvalidClaim`] naming the member).
    /// The issuer and audience are still compared only with those configured here, and
    /// a token missing `exp` is refused even after [`Validation::allow_missing_exp`].
    /// [`KeyRing::issue_access_token`](crate::KeyRing::issue_access_token) issues such
    /// tokens.
    pub fn require_access_token_profile(mut self) -> Self {
        self = self.with_required_type(crate::access_token::ACCESS_TOKEN_TYPE);
        self.access_token_profile = true;
        self
    }

    /// Whether [`Validation::require_access_token_profile`] was asked for.
    pub fn requires_access_token_profile(&self) -> bool {
        self.access_token_profile
    }

    /// Accept only tokens signed with one of `algs` (call again to add more); without it
    /// any algorithm keyrot supports is accepted. A token whose key has another
    /// algorithm is refused with [`TokenError::AlgorithmNotAllowed`]. A remote key set
    /// (`keyrot_core::KeySet`) uses a JWK that declares no `alg` only for the algorithms
    /// listed here that fit its key type.
    pub fn with_algorithms(mut self, algs: impl IntoIterator<Item = Algorithm>) -> Self {
        for alg in algs {
            if !self.algorithms.contains(&alg) {
                self.algorithms.push(alg);
            }
        }
        self
    }

    /// The allowed algorithms (empty: every algorithm keyrot supports).
    pub fn algorithms(&self) -> &[Algorithm] {
        &self.algorithms
    }

    /// The accepted issuers (empty: `iss` is not checked).
    pub fn issuers(&self) -> &[String] {
        &self.issuers
    }

    /// The required `typ`, if any, as a full lowercase media type (`application/at+jwt`).
    pub fn required_type(&self) -> Option<&str> {
        self.required_type.as_deref()
    }

    /// The configured leeway in seconds.
    pub fn leeway_secs(&self) -> i64 {
        self.leeway_secs
    }

    /// The configured size cap.
    pub fn max_token_bytes(&self) -> usize {
        self.max_token_bytes
    }
}

/// A token whose signature and claims checked out. Its claims are a JSON object
/// ([`crate::KeyRing::verify`]), or the caller's type `C` when read straight into it
/// ([`crate::KeyRing::verify_as`]).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Verified<C = Map<String, Value>> {
    /// The key that signed it.
    pub kid: String,
    /// Its algorithm.
    pub alg: Algorithm,
    /// The claims (a JSON object, or the caller's type).
    pub claims: C,
    /// Which ring or issuer accepted it, when a verifier chose among several. One
    /// pointer, `None` on the common path, so that a verified-token cache hit (a clone)
    /// costs what it did before this was recorded.
    source: Option<Arc<Source>>,
}

/// Which of several rings or issuers accepted a token.
#[derive(Debug)]
struct Source {
    ring: Option<crate::ring::RingName>,
    issuer: Option<String>,
}

impl<C> Verified<C> {
    /// A verified token with no ring or issuer recorded.
    pub(crate) fn new(kid: String, alg: Algorithm, claims: C) -> Self {
        Self {
            kid,
            alg,
            claims,
            source: None,
        }
    }

    /// The ring whose keys and rules accepted it, when a verifier chose among several
    /// rings (tenant routing); `None` from a verifier that serves one ring.
    pub fn ring(&self) -> Option<&crate::ring::RingName> {
        self.source.as_ref().and_then(|s| s.ring.as_ref())
    }

    /// The issuer whose verifier and rules accepted it, when a verifier chose among
    /// several issuers (`MultiIssuerVerifier`); `None` otherwise. It says whose rules
    /// accepted the token, not who minted it.
    pub fn issuer(&self) -> Option<&str> {
        self.source.as_ref().and_then(|s| s.issuer.as_deref())
    }

    /// Records the ring that verified it.
    pub fn with_ring(mut self, ring: crate::ring::RingName) -> Self {
        let issuer = self.issuer().map(str::to_owned);
        self.source = Some(Arc::new(Source {
            ring: Some(ring),
            issuer,
        }));
        self
    }

    /// Records the issuer whose rules accepted it.
    pub fn with_issuer(mut self, issuer: impl Into<String>) -> Self {
        let ring = self.ring().cloned();
        self.source = Some(Arc::new(Source {
            ring,
            issuer: Some(issuer.into()),
        }));
        self
    }
}

impl Verified {
    /// The claims as the caller's type, read from the claims map by reference (nothing
    /// is copied but what `C` keeps). To skip the map altogether, verify with
    /// [`crate::KeyRing::verify_as`].
    pub fn claims_as<C: DeserializeOwned>(&self) -> Result<C, TokenError> {
        C::deserialize(&self.claims).map_err(|_| TokenError::ClaimsShape)
    }

    /// The claims as the caller's type, consuming the token (the map's strings are moved,
    /// not copied).
    pub fn into_claims<C: DeserializeOwned>(self) -> Result<C, TokenError> {
        serde_json::from_value(Value::Object(self.claims)).map_err(|_| TokenError::ClaimsShape)
    }

    /// The same verified token with its claims as the caller's type.
    pub(crate) fn into_typed<C: DeserializeOwned>(self) -> Result<Verified<C>, TokenError> {
        let claims = serde_json::from_value(Value::Object(self.claims)).map_err(|_| TokenError::ClaimsShape)?;
        Ok(Verified {
            kid: self.kid,
            alg: self.alg,
            claims,
            source: self.source,
        })
    }
}

/// The parts of a token that can be read before its key is known.
#[derive(Debug)]
pub struct Unverified<'t> {
    /// The `kid` from the header.
    pub kid: String,
    /// The header `alg` string.
    pub alg: String,
    signing_input: &'t str,
    payload_b64: &'t str,
    signature_b64: &'t str,
}

/// Claims most services use, with everything else kept in `extra`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StandardClaims {
    /// Subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// Issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Audience (string or array).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Value>,
    /// Expiry (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    /// Issued at (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    /// Not before (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    /// OAuth client id (RFC 9068).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Space-separated scopes (RFC 9068 / RFC 8693).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// JWT id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// Any other claims.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl StandardClaims {
    /// The scopes, split on spaces.
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.scope.as_deref().unwrap_or("").split(' ').filter(|s| !s.is_empty())
    }
}
