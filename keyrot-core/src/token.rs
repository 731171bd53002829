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
use std::time::Duration;

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
}

/// Why a token could not be signed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignError {
    /// The ring has no Active key (not initialised yet).
    #[error("the ring has no active signing key; initialise it first")]
    NoActiveKey,
    /// The claims could not be serialised to a JSON object.
    #[error("claims must serialise to a JSON object: {0}")]
    Claims(String),
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
}

/// What [`crate::KeyRing::verify`] checks besides the signature. Leeway defaults to 30 seconds and is
/// limited to [`MAX_LEEWAY`].
#[derive(Debug, Clone)]
pub struct Validation {
    issuers: Vec<String>,
    audiences: Vec<String>,
    any_audience: bool,
    leeway_secs: i64,
    require_exp: bool,
    max_token_bytes: usize,
    /// The required `typ`, normalised to a full lowercase media type.
    required_type: Option<String>,
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

/// A token whose signature and claims checked out.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The key that signed it.
    pub kid: String,
    /// Its algorithm.
    pub alg: Algorithm,
    /// The claims (a JSON object).
    pub claims: Map<String, Value>,
}

impl Verified {
    /// The claims as the caller's type.
    pub fn claims_as<C: DeserializeOwned>(&self) -> Result<C, TokenError> {
        C::deserialize(&Value::Object(self.claims.clone())).map_err(|_| TokenError::ClaimsShape)
    }

    /// The claims as the caller's type, consuming the token.
    pub fn into_claims<C: DeserializeOwned>(self) -> Result<C, TokenError> {
        serde_json::from_value(Value::Object(self.claims)).map_err(|_| TokenError::ClaimsShape)
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

fn json_err(e: JsonError, part: &'static str) -> TokenError {
    match e {
        JsonError::DuplicateMember => TokenError::DuplicateMember(part),
        JsonError::Syntax => TokenError::Malformed("segment is not valid JSON"),
        JsonError::NotObject => TokenError::Malformed("segment is not a JSON object"),
    }
}

/// Reads the header of a token without verifying anything else: the size cap, three
/// segments, strict JSON without duplicate or forbidden members, a string `alg`, a
/// non-empty `kid` (required), and the `typ` rule of `v`.
pub fn decode_header<'t>(token: &'t str, v: &Validation) -> Result<Unverified<'t>, TokenError> {
    decode(token, v, true)
}

/// The size cap, then exactly three non-empty dot-separated segments.
fn segments<'t>(token: &'t str, v: &Validation) -> Result<(&'t str, &'t str, &'t str), TokenError> {
    if token.len() > v.max_token_bytes {
        return Err(TokenError::TooLarge { max: v.max_token_bytes });
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(TokenError::Malformed("expected three dot-separated segments"));
    };
    if h.is_empty() || p.is_empty() || s.is_empty() {
        return Err(TokenError::Malformed("empty segment"));
    }
    Ok((h, p, s))
}

/// The header segment as a JSON object (canonical base64url, no duplicate members).
fn parse_header(h: &str) -> Result<Map<String, Value>, TokenError> {
    let header_bytes = b64::decode(h).ok_or(TokenError::Malformed("header is not base64url"))?;
    match parse_strict(&header_bytes).map_err(|e| json_err(e, "header"))? {
        Value::Object(header) => Ok(header),
        _ => Err(TokenError::Malformed("header is not a JSON object")),
    }
}

/// The `typ` rules: a string when present, and the required type when one is configured.
fn check_type(typ: Option<&Value>, v: &Validation) -> Result<(), TokenError> {
    let typ = match typ {
        None => None,
        Some(Value::String(t)) => Some(t.as_str()),
        Some(_) => return Err(TokenError::Malformed("header typ is not a string")),
    };
    match (v.required_type.as_deref(), typ) {
        (None, _) => Ok(()),
        (Some(required), Some(t)) if type_matches(required, t) => Ok(()),
        (Some(_), _) => Err(TokenError::InvalidType),
    }
}

/// Whether header `typ` names the media type `required` (full, lowercase): compared
/// case-insensitively, `application/` implied when `typ` has no `/` (RFC 7515 §4.1.9).
fn type_matches(required: &str, typ: &str) -> bool {
    if typ.contains('/') {
        required.eq_ignore_ascii_case(typ)
    } else {
        required
            .strip_prefix(MEDIA_TYPE_PREFIX)
            .is_some_and(|sub| sub.eq_ignore_ascii_case(typ))
    }
}

/// Checks only the `typ` rule of `v` on a token's header (after the size cap and the
/// segment and header-JSON rules), for callers whose verifier is not keyrot's, such as
/// an authorizer in front of another issuer's tokens.
#[cfg_attr(not(feature = "http"), allow(dead_code))]
pub(crate) fn check_header_type(token: &str, v: &Validation) -> Result<(), TokenError> {
    let (h, _, _) = segments(token, v)?;
    check_type(parse_header(h)?.get("typ"), v)
}

/// For a token whose header segment is byte-for-byte the one [`encode_header`] produced for
/// `kid` and `alg`: the header rules hold by construction (keyrot wrote it), so the header
/// is not decoded again. Everything else — size cap, segments, signature, payload, claims —
/// is checked exactly as in [`verify`].
///
/// The known header's `typ` is not passed in, so when `v` requires a type the header is
/// decoded after all and checked as in [`verify`]; callers that know the `typ` they
/// encoded use [`decode_with_known_typed_header`] to keep the fast path.
#[cfg(test)]
pub(crate) fn decode_with_known_header<'t>(
    token: &'t str,
    v: &Validation,
    kid: &str,
    alg: Algorithm,
) -> Result<Unverified<'t>, TokenError> {
    decode_with_known_typed_header(token, v, kid, alg, None)
}

/// [`decode_with_known_header`] for a header written by [`encode_header_with_type`] with
/// `typ` (`None`: unknown). The required type, if any, is compared with `typ` without
/// decoding the header.
pub(crate) fn decode_with_known_typed_header<'t>(
    token: &'t str,
    v: &Validation,
    kid: &str,
    alg: Algorithm,
    typ: Option<&str>,
) -> Result<Unverified<'t>, TokenError> {
    match (v.required_type.as_deref(), typ) {
        // The header's typ is not known here: read it.
        (Some(_), None) => return decode(token, v, true),
        (Some(required), Some(t)) if !type_matches(required, t) => return Err(TokenError::InvalidType),
        _ => {}
    }
    let (h, p, s) = segments(token, v)?;
    let signing_input = &token[..h.len() + 1 + p.len()];
    Ok(Unverified {
        kid: kid.to_owned(),
        alg: alg.as_str().to_owned(),
        signing_input,
        payload_b64: p,
        signature_b64: s,
    })
}

/// The header checks [`decode_header`] and [`verify_with_key`] share. With `require_kid`
/// false an absent `kid` reads as the empty string; a `kid` that is present must still be
/// a non-empty string.
fn decode<'t>(token: &'t str, v: &Validation, require_kid: bool) -> Result<Unverified<'t>, TokenError> {
    let (h, p, s) = segments(token, v)?;
    let header = parse_header(h)?;
    for name in FORBIDDEN_HEADER_MEMBERS {
        if header.contains_key(name) {
            return Err(TokenError::ForbiddenHeader(name));
        }
    }
    let alg = match header.get("alg") {
        Some(Value::String(a)) => a.clone(),
        Some(_) => return Err(TokenError::Malformed("header alg is not a string")),
        None => return Err(TokenError::Malformed("header has no alg")),
    };
    let kid = match header.get("kid") {
        Some(Value::String(k)) if !k.is_empty() => k.clone(),
        Some(_) => return Err(TokenError::Malformed("header kid is not a non-empty string")),
        None if require_kid => return Err(TokenError::MissingKid),
        None => String::new(),
    };
    check_type(header.get("typ"), v)?;
    let signing_input = &token[..h.len() + 1 + p.len()];
    Ok(Unverified {
        kid,
        alg,
        signing_input,
        payload_b64: p,
        signature_b64: s,
    })
}

impl Unverified<'_> {
    /// Verifies the signature with `key` (the key the ring holds for `kid`) and checks the
    /// claims as of `now` (Unix seconds).
    pub fn verify_with(&self, key: &VerifyingKey, v: &Validation, now: i64) -> Result<Verified, TokenError> {
        let expected = key.algorithm();
        if self.alg != expected.as_str() {
            return Err(TokenError::AlgorithmMismatch { expected });
        }
        let sig = b64::decode(self.signature_b64).ok_or(TokenError::Malformed("signature is not base64url"))?;
        if !key.verify(self.signing_input.as_bytes(), &sig) {
            return Err(TokenError::BadSignature);
        }
        let payload = b64::decode(self.payload_b64).ok_or(TokenError::Malformed("payload is not base64url"))?;
        let Value::Object(claims) = parse_strict(&payload).map_err(|e| json_err(e, "payload"))? else {
            return Err(TokenError::Malformed("payload is not a JSON object"));
        };
        check_claims(&claims, v, now)?;
        Ok(Verified {
            kid: self.kid.clone(),
            alg: expected,
            claims,
        })
    }
}

/// Verifies a token against the keys `lookup` finds by `kid`, as of `now` (Unix seconds):
/// every rule of [`crate::KeyRing::verify`], for a key set the caller keeps itself.
pub fn verify_with_lookup<'k>(
    token: &str,
    lookup: impl FnOnce(&str) -> Option<&'k VerifyingKey>,
    v: &Validation,
    now: i64,
) -> Result<Verified, TokenError> {
    let u = decode_header(token, v)?;
    let key = lookup(&u.kid).ok_or(TokenError::UnknownKid)?;
    u.verify_with(key, v, now)
}

/// Verifies a token against one pinned key, as of `now` (Unix seconds), for issuers that
/// do not set `kid`. Every rule of [`crate::KeyRing::verify`] applies (size cap, segments, forbidden and
/// duplicate header members, `alg` equal to the key's algorithm, signature, claims)
/// except that `kid` is not required. [`Verified::kid`] is the header's `kid`, or empty
/// when the token has none.
pub fn verify_with_key(token: &str, key: &VerifyingKey, v: &Validation, now: i64) -> Result<Verified, TokenError> {
    decode(token, v, false)?.verify_with(key, v, now)
}

/// A numeric date as whole seconds, saturating instead of overflowing.
fn numeric_date(claims: &Map<String, Value>, name: &'static str) -> Result<Option<i64>, TokenError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(i) = n.as_i64() {
                Ok(Some(i))
            } else if n.as_u64().is_some() {
                Ok(Some(i64::MAX))
            } else {
                match n.as_f64() {
                    Some(f) if f.is_finite() => Ok(Some(f.floor().clamp(i64::MIN as f64, i64::MAX as f64) as i64)),
                    _ => Err(TokenError::InvalidClaim(name)),
                }
            }
        }
        Some(_) => Err(TokenError::InvalidClaim(name)),
    }
}

fn check_claims(claims: &Map<String, Value>, v: &Validation, now: i64) -> Result<(), TokenError> {
    let leeway = v.leeway_secs;
    match numeric_date(claims, "exp")? {
        Some(exp) if now >= exp.saturating_add(leeway) => return Err(TokenError::Expired),
        Some(_) => {}
        None if v.require_exp => return Err(TokenError::MissingClaim("exp")),
        None => {}
    }
    if let Some(nbf) = numeric_date(claims, "nbf")?
        && now.saturating_add(leeway) < nbf
    {
        return Err(TokenError::NotYetValid);
    }
    if let Some(iat) = numeric_date(claims, "iat")?
        && iat > now.saturating_add(leeway)
    {
        return Err(TokenError::IssuedInFuture);
    }
    if !v.issuers.is_empty() {
        match claims.get("iss") {
            Some(Value::String(iss)) if v.issuers.iter().any(|i| i == iss) => {}
            Some(Value::String(_)) => return Err(TokenError::InvalidIssuer),
            Some(_) => return Err(TokenError::InvalidClaim("iss")),
            None => return Err(TokenError::MissingClaim("iss")),
        }
    }
    if !v.any_audience {
        let auds: Vec<&str> = match claims.get("aud") {
            None => Vec::new(),
            Some(Value::String(a)) => vec![a.as_str()],
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| i.as_str().ok_or(TokenError::InvalidClaim("aud")))
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(TokenError::InvalidClaim("aud")),
        };
        match (v.audiences.is_empty(), auds.is_empty()) {
            (true, true) => {}
            (true, false) => return Err(TokenError::InvalidAudience),
            (false, true) => return Err(TokenError::MissingClaim("aud")),
            (false, false) => {
                if !auds.iter().any(|a| v.audiences.iter().any(|x| x == a)) {
                    return Err(TokenError::InvalidAudience);
                }
            }
        }
    }
    Ok(())
}

/// The `typ` [`encode_header`] writes.
pub const DEFAULT_TOKEN_TYPE: &str = "JWT";

/// The protected header keyrot writes, base64url-encoded once per key, with
/// `typ: "JWT"` (see [`encode_header_with_type`] for explicit typing).
#[cfg_attr(not(any(test, feature = "test-util")), allow(dead_code))]
pub fn encode_header(alg: Algorithm, kid: &str) -> String {
    encode_header_with_type(alg, kid, DEFAULT_TOKEN_TYPE)
}

/// The protected header with another `typ`, e.g. `"at+jwt"` for OAuth access tokens
/// (RFC 9068; explicit typing, RFC 8725 §3.11), base64url-encoded once per key.
pub fn encode_header_with_type(alg: Algorithm, kid: &str, typ: &str) -> String {
    #[derive(Serialize)]
    struct Header<'a> {
        alg: &'a str,
        kid: &'a str,
        typ: &'a str,
    }
    let json = serde_json::to_vec(&Header {
        alg: alg.as_str(),
        kid,
        typ,
    })
    .unwrap_or_default();
    b64::encode(&json)
}

#[derive(Deserialize)]
struct ExpOnly {
    exp: Option<Value>,
}

/// Signs `claims` with `key`, whose encoded header is `header_b64`
/// (see [`encode_header`]). Enforces a numeric `exp` no further than `max_ttl_secs`
/// after `now`.
pub fn sign<C: Serialize + ?Sized>(
    key: &SigningKey,
    header_b64: &str,
    claims: &C,
    now: i64,
    max_ttl_secs: i64,
) -> Result<String, SignError> {
    let payload = serde_json::to_vec(claims).map_err(|e| SignError::Claims(e.to_string()))?;
    if payload.first() != Some(&b'{') {
        return Err(SignError::Claims("not an object".into()));
    }
    let exp = serde_json::from_slice::<ExpOnly>(&payload)
        .map_err(|e| SignError::Claims(e.to_string()))?
        .exp
        .and_then(|e| e.as_i64().or_else(|| e.as_f64().map(|f| f as i64)))
        .ok_or(SignError::MissingExp)?;
    let requested = exp.saturating_sub(now);
    if requested > max_ttl_secs {
        return Err(SignError::TtlTooLong {
            requested_secs: requested,
            max_secs: max_ttl_secs,
        });
    }
    let mut token = String::with_capacity(header_b64.len() + payload.len() * 4 / 3 + 100);
    token.push_str(header_b64);
    token.push('.');
    b64::encode_into(&payload, &mut token);
    let sig = key.sign(token.as_bytes())?;
    token.push('.');
    b64::encode_into(&sig, &mut token);
    Ok(token)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alg::RsaBits;
    use crate::key::PrivateKey;
    use serde_json::json;

    struct Fixture {
        key: SigningKey,
        vk: VerifyingKey,
        header: String,
    }

    fn fixture() -> Fixture {
        let k = PrivateKey::generate(Algorithm::EdDsa, RsaBits::B2048).expect("keygen");
        Fixture {
            key: k.signing_key(),
            vk: k.public_key().verifying_key().expect("vk"),
            header: encode_header(Algorithm::EdDsa, "k1"),
        }
    }

    fn check(f: &Fixture, token: &str, v: &Validation, now: i64) -> Result<Verified, TokenError> {
        verify_with_lookup(token, |kid| (kid == "k1").then_some(&f.vk), v, now)
    }

    fn raw_token(f: &Fixture, header: &Value, payload: &[u8]) -> String {
        let h = b64::encode(&serde_json::to_vec(header).expect("json"));
        let input = format!("{h}.{}", b64::encode(payload));
        let sig = f.key.sign(input.as_bytes()).expect("sign");
        format!("{input}.{}", b64::encode(&sig))
    }

    #[test]
    fn sign_then_verify_and_exp_boundary() {
        let f = fixture();
        let t = sign(&f.key, &f.header, &json!({"sub":"a","exp":1000}), 900, 3600).expect("sign");
        let v = Validation::new().with_leeway(Duration::ZERO);
        assert_eq!(check(&f, &t, &v, 999).map(|x| x.kid).ok().as_deref(), Some("k1"));
        assert_eq!(check(&f, &t, &v, 1000).err(), Some(TokenError::Expired));
        let v = Validation::new().with_leeway(Duration::from_secs(10));
        assert!(check(&f, &t, &v, 1009).is_ok());
        assert_eq!(check(&f, &t, &v, 1010).err(), Some(TokenError::Expired));
    }

    #[test]
    fn signing_requires_bounded_exp() {
        let f = fixture();
        assert!(matches!(
            sign(&f.key, &f.header, &json!({"sub":"a"}), 0, 60),
            Err(SignError::MissingExp)
        ));
        assert!(matches!(
            sign(&f.key, &f.header, &json!({"exp":"100"}), 0, 60),
            Err(SignError::MissingExp)
        ));
        assert!(matches!(
            sign(&f.key, &f.header, &json!({"exp":61}), 0, 60),
            Err(SignError::TtlTooLong {
                requested_secs: 61,
                max_secs: 60
            })
        ));
        assert!(matches!(
            sign(&f.key, &f.header, &[1, 2], 0, 60),
            Err(SignError::Claims(_))
        ));
    }

    #[test]
    fn every_structural_rule_is_enforced() {
        let f = fixture();
        let v = Validation::new();
        let good = raw_token(&f, &json!({"alg":"EdDSA","kid":"k1"}), br#"{"exp":100}"#);
        assert!(check(&f, &good, &v, 0).is_ok());
        // size cap before parsing
        let big = "a".repeat(DEFAULT_MAX_TOKEN_BYTES + 1);
        assert_eq!(check(&f, &big, &v, 0).err(), Some(TokenError::TooLarge { max: 8192 }));
        // segments
        assert!(matches!(check(&f, "a.b", &v, 0), Err(TokenError::Malformed(_))));
        assert!(matches!(
            check(&f, &format!("{good}.x"), &v, 0),
            Err(TokenError::Malformed(_))
        ));
        // padding, whitespace
        let (h, rest) = good.split_once('.').expect("dot");
        assert!(matches!(
            check(&f, &format!("{h}=.{rest}"), &v, 0),
            Err(TokenError::Malformed(_))
        ));
        assert!(matches!(
            check(&f, &format!(" {good}"), &v, 0),
            Err(TokenError::Malformed(_))
        ));
        assert!(matches!(
            check(&f, &format!("{good}\n"), &v, 0),
            Err(TokenError::Malformed(_))
        ));
        // duplicate members in header and payload
        let dup_h = format!("{}.{}", b64::encode(br#"{"alg":"EdDSA","kid":"k1","kid":"k2"}"#), rest);
        assert_eq!(
            check(&f, &dup_h, &v, 0).err(),
            Some(TokenError::DuplicateMember("header"))
        );
        let dup_p = raw_token(&f, &json!({"alg":"EdDSA","kid":"k1"}), br#"{"exp":100,"exp":1}"#);
        assert_eq!(
            check(&f, &dup_p, &v, 0).err(),
            Some(TokenError::DuplicateMember("payload"))
        );
        // BOM in payload
        let bom = raw_token(&f, &json!({"alg":"EdDSA","kid":"k1"}), b"\xEF\xBB\xBF{\"exp\":100}");
        assert!(matches!(check(&f, &bom, &v, 0), Err(TokenError::Malformed(_))));
        // kid
        let no_kid = raw_token(&f, &json!({"alg":"EdDSA"}), br#"{"exp":100}"#);
        assert_eq!(check(&f, &no_kid, &v, 0).err(), Some(TokenError::MissingKid));
        let other = raw_token(&f, &json!({"alg":"EdDSA","kid":"k9"}), br#"{"exp":100}"#);
        assert_eq!(check(&f, &other, &v, 0).err(), Some(TokenError::UnknownKid));
        // alg must match the key
        for alg in ["none", "HS256", "RS256", "PS256", "Ed25519", "eddsa"] {
            let t = raw_token(&f, &json!({"alg":alg,"kid":"k1"}), br#"{"exp":100}"#);
            assert!(
                matches!(check(&f, &t, &v, 0), Err(TokenError::AlgorithmMismatch { .. })),
                "{alg}"
            );
        }
        // forbidden members
        for m in FORBIDDEN_HEADER_MEMBERS {
            let mut h = json!({"alg":"EdDSA","kid":"k1"});
            h[m] = json!(["x"]);
            let t = raw_token(&f, &h, br#"{"exp":100}"#);
            assert_eq!(check(&f, &t, &v, 0).err(), Some(TokenError::ForbiddenHeader(m)), "{m}");
        }
        // bad signature: flip one bit in the payload
        let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
        parts[1] = b64::encode(br#"{"exp":101}"#);
        assert_eq!(check(&f, &parts.join("."), &v, 0).err(), Some(TokenError::BadSignature));
        // payload not an object
        let arr = raw_token(&f, &json!({"alg":"EdDSA","kid":"k1"}), b"[1]");
        assert!(matches!(check(&f, &arr, &v, 0), Err(TokenError::Malformed(_))));
    }

    #[test]
    fn claims_rules() {
        let f = fixture();
        let h = json!({"alg":"EdDSA","kid":"k1"});
        let v = Validation::new().with_leeway(Duration::ZERO);
        let t = |p: Value| raw_token(&f, &h, &serde_json::to_vec(&p).expect("json"));
        assert_eq!(
            check(&f, &t(json!({})), &v, 0).err(),
            Some(TokenError::MissingClaim("exp"))
        );
        assert!(check(&f, &t(json!({})), &v.clone().allow_missing_exp(), 0).is_ok());
        assert_eq!(
            check(&f, &t(json!({"exp":"100"})), &v, 0).err(),
            Some(TokenError::InvalidClaim("exp"))
        );
        assert_eq!(
            check(&f, &t(json!({"exp":100,"nbf":50})), &v, 49).err(),
            Some(TokenError::NotYetValid)
        );
        assert!(check(&f, &t(json!({"exp":100,"nbf":50})), &v, 50).is_ok());
        assert_eq!(
            check(&f, &t(json!({"exp":100,"iat":60})), &v, 59).err(),
            Some(TokenError::IssuedInFuture)
        );
        assert_eq!(
            check(&f, &t(json!({"exp":100,"iat":true})), &v, 59).err(),
            Some(TokenError::InvalidClaim("iat"))
        );
        // overflow-safe numeric dates
        assert!(check(&f, &t(json!({"exp":u64::MAX})), &v, i64::MAX - 1).is_ok());
        assert!(check(&f, &t(json!({"exp":1e300})), &v, 0).is_ok());
        assert_eq!(
            check(&f, &t(json!({"exp":-1e300})), &v, 0).err(),
            Some(TokenError::Expired)
        );
        let lv = Validation::new().with_leeway(Duration::from_secs(60));
        assert!(check(&f, &t(json!({"exp":i64::MAX})), &lv, i64::MAX).is_err());
        // issuer
        let vi = v.clone().with_issuer("https://a");
        assert!(check(&f, &t(json!({"exp":100,"iss":"https://a"})), &vi, 0).is_ok());
        assert_eq!(
            check(&f, &t(json!({"exp":100,"iss":"https://b"})), &vi, 0).err(),
            Some(TokenError::InvalidIssuer)
        );
        assert_eq!(
            check(&f, &t(json!({"exp":100})), &vi, 0).err(),
            Some(TokenError::MissingClaim("iss"))
        );
        // audience: string or array
        let va = v.clone().with_audience("api");
        assert!(check(&f, &t(json!({"exp":100,"aud":"api"})), &va, 0).is_ok());
        assert!(check(&f, &t(json!({"exp":100,"aud":["x","api"]})), &va, 0).is_ok());
        assert_eq!(
            check(&f, &t(json!({"exp":100,"aud":["x"]})), &va, 0).err(),
            Some(TokenError::InvalidAudience)
        );
        assert_eq!(
            check(&f, &t(json!({"exp":100,"aud":[1]})), &va, 0).err(),
            Some(TokenError::InvalidClaim("aud"))
        );
        assert_eq!(
            check(&f, &t(json!({"exp":100})), &va, 0).err(),
            Some(TokenError::MissingClaim("aud"))
        );
        assert_eq!(
            check(&f, &t(json!({"exp":100,"aud":"api"})), &v, 0).err(),
            Some(TokenError::InvalidAudience)
        );
        assert!(
            check(
                &f,
                &t(json!({"exp":100,"aud":"api"})),
                &v.clone().allow_any_audience(),
                0
            )
            .is_ok()
        );
    }

    #[test]
    fn a_required_type_is_enforced() {
        let f = fixture();
        let with_typ = |typ: Option<Value>| {
            let mut h = json!({"alg":"EdDSA","kid":"k1"});
            if let Some(t) = typ {
                h["typ"] = t;
            }
            raw_token(&f, &h, br#"{"exp":100}"#)
        };
        let at = Validation::new().with_required_type("at+jwt");
        assert_eq!(at.required_type(), Some("application/at+jwt"));
        for same in ["at+jwt", "AT+JWT", "application/at+jwt", "Application/At+Jwt"] {
            assert!(check(&f, &with_typ(Some(json!(same))), &at, 0).is_ok(), "{same}");
        }
        for other in [
            "JWT",
            "jwt",
            "text/at+jwt",
            "at+jwt; charset=utf-8",
            "application/",
            "",
            "at",
        ] {
            assert_eq!(
                check(&f, &with_typ(Some(json!(other))), &at, 0).err(),
                Some(TokenError::InvalidType),
                "{other:?}"
            );
        }
        assert_eq!(
            check(&f, &with_typ(None), &at, 0).err(),
            Some(TokenError::InvalidType),
            "a missing typ is refused"
        );
        assert!(matches!(
            check(&f, &with_typ(Some(json!(5))), &at, 0),
            Err(TokenError::Malformed(_))
        ));
        // The required type may itself be written in full, in any case.
        let full = Validation::new().with_required_type("Application/AT+JWT");
        assert!(check(&f, &with_typ(Some(json!("at+jwt"))), &full, 0).is_ok());
        // Without a requirement any string typ (or none) is accepted, as before.
        let any = Validation::new();
        assert!(check(&f, &with_typ(None), &any, 0).is_ok());
        assert!(check(&f, &with_typ(Some(json!("secevent+jwt"))), &any, 0).is_ok());
        // Every entry point applies the rule.
        let jwt = with_typ(Some(json!("JWT")));
        assert_eq!(decode_header(&jwt, &at).err(), Some(TokenError::InvalidType));
        assert_eq!(
            verify_with_key(&jwt, &f.vk, &at, 0).err(),
            Some(TokenError::InvalidType)
        );
        assert_eq!(check_header_type(&jwt, &at), Err(TokenError::InvalidType));
        assert_eq!(check_header_type(&with_typ(Some(json!("at+jwt"))), &at), Ok(()));
    }

    #[test]
    fn the_known_header_fast_path_still_enforces_the_type() {
        let f = fixture();
        let claims = json!({"exp":100});
        let jwt = sign(&f.key, &f.header, &claims, 0, 3600).expect("sign");
        let at_header = encode_header_with_type(Algorithm::EdDsa, "k1", "at+jwt");
        let at_jwt = sign(&f.key, &at_header, &claims, 0, 3600).expect("sign");
        let header: Value = serde_json::from_slice(&b64::decode(&at_header).expect("b64")).expect("json");
        assert_eq!(header, json!({"alg":"EdDSA","kid":"k1","typ":"at+jwt"}));
        let header: Value = serde_json::from_slice(&b64::decode(&f.header).expect("b64")).expect("json");
        assert_eq!(header["typ"], DEFAULT_TOKEN_TYPE);

        let at = Validation::new().with_required_type("at+jwt");
        let fast = |t: &str, typ: Option<&str>| {
            decode_with_known_typed_header(t, &at, "k1", Algorithm::EdDsa, typ)
                .and_then(|u| u.verify_with(&f.vk, &at, 0))
                .map(|v| v.kid)
        };
        // The typ of the known header unknown: the header is read.
        assert_eq!(fast(&jwt, None), Err(TokenError::InvalidType));
        assert_eq!(fast(&at_jwt, None).as_deref(), Ok("k1"));
        assert_eq!(
            decode_with_known_header(&jwt, &at, "k1", Algorithm::EdDsa).err(),
            Some(TokenError::InvalidType)
        );
        // The typ known: compared without reading the header.
        assert_eq!(fast(&at_jwt, Some("at+jwt")).as_deref(), Ok("k1"));
        assert_eq!(fast(&jwt, Some("JWT")), Err(TokenError::InvalidType));
        // No requirement: the fast path as before.
        let any = Validation::new();
        assert!(
            decode_with_known_header(&jwt, &any, "k1", Algorithm::EdDsa)
                .and_then(|u| u.verify_with(&f.vk, &any, 0))
                .is_ok()
        );
    }

    #[test]
    fn errors_do_not_echo_token_contents() {
        let f = fixture();
        let t = raw_token(
            &f,
            &json!({"alg":"secret-alg-value-long","kid":"k1"}),
            br#"{"exp":100}"#,
        );
        let e = check(&f, &t, &Validation::new(), 0)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(!e.contains("secret-alg"), "{e}");
    }
}
