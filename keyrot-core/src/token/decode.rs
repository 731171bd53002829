//! Reading a token: the structural rules, the header, and the signature check.

use super::payload::{AsMap, AsType, ReadClaims};
use super::*;
use std::borrow::Cow;

pub(super) fn json_err(e: JsonError, part: &'static str) -> TokenError {
    match e {
        JsonError::DuplicateMember => TokenError::DuplicateMember(part),
        JsonError::Syntax => TokenError::Malformed("segment is not valid JSON"),
        JsonError::NotObject => TokenError::Malformed("segment is not a JSON object"),
    }
}

/// A token that is not three dot-separated segments.
const THREE: TokenError = TokenError::Malformed("expected three dot-separated segments");

/// Reads the header of a token without verifying anything else: the size cap, three
/// segments, strict JSON without duplicate or forbidden members, a string `alg`, a
/// non-empty `kid` (required), and the `typ` rule of `v`.
pub fn decode_header<'t>(token: &'t str, v: &Validation) -> Result<Unverified<'t>, TokenError> {
    decode(token, v, true)
}

/// The size cap, then exactly three non-empty dot-separated segments.
pub(super) fn segments<'t>(token: &'t str, v: &Validation) -> Result<(&'t str, &'t str, &'t str), TokenError> {
    if token.len() > v.max_token_bytes {
        return Err(TokenError::TooLarge { max: v.max_token_bytes });
    }
    let (h, rest) = token.split_once('.').ok_or(THREE)?;
    let (p, s) = rest.split_once('.').ok_or(THREE)?;
    if s.contains('.') {
        return Err(THREE);
    }
    if h.is_empty() || p.is_empty() || s.is_empty() {
        return Err(TokenError::Malformed("empty segment"));
    }
    Ok((h, p, s))
}

/// The header segment as a JSON object (canonical base64url, no duplicate members).
pub(super) fn parse_header(h: &str) -> Result<Map<String, Value>, TokenError> {
    let header_bytes = b64::decode(h).ok_or(TokenError::Malformed("header is not base64url"))?;
    match parse_strict(&header_bytes).map_err(|e| json_err(e, "header"))? {
        Value::Object(header) => Ok(header),
        _ => Err(TokenError::Malformed("header is not a JSON object")),
    }
}

/// [`segments`] for a token whose first segment its caller has already split off:
/// `header` is the text before the token's first dot (a header keyrot wrote, which is
/// base64url and so has none), and is not searched again. Anything else is read by
/// [`segments`].
fn segments_after<'t>(token: &'t str, header: &str, v: &Validation) -> Result<(&'t str, &'t str, &'t str), TokenError> {
    debug_assert!(!header.contains('.'));
    if token.as_bytes().get(header.len()) != Some(&b'.') || token.len() > v.max_token_bytes {
        return segments(token, v);
    }
    let (h, rest) = token.split_at(header.len());
    let (p, s) = rest[1..].split_once('.').ok_or(THREE)?;
    if s.contains('.') {
        return Err(THREE);
    }
    if h.is_empty() || p.is_empty() || s.is_empty() {
        return Err(TokenError::Malformed("empty segment"));
    }
    Ok((h, p, s))
}

/// The `typ` rules: a string when present, and the required type when one is configured.
pub(super) fn check_type(typ: Option<&Value>, v: &Validation) -> Result<(), TokenError> {
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
pub(super) fn type_matches(required: &str, typ: &str) -> bool {
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
pub fn check_header_type(token: &str, v: &Validation) -> Result<(), TokenError> {
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
pub(crate) fn decode_with_known_header<'a>(
    token: &'a str,
    v: &Validation,
    kid: &'a str,
    alg: Algorithm,
) -> Result<Parts<'a>, TokenError> {
    let header = token.split('.').next().unwrap_or_default();
    decode_with_known_typed_header(token, header, v, kid, alg, None)
}

/// [`decode_with_known_header`] for a header written by [`encode_header_with_type`] with
/// `typ` (`None`: unknown). The required type, if any, is compared with `typ` without
/// decoding the header. Nothing is copied: the parts borrow `token` and `kid`.
pub(crate) fn decode_with_known_typed_header<'a>(
    token: &'a str,
    header: &str,
    v: &Validation,
    kid: &'a str,
    alg: Algorithm,
    typ: Option<&str>,
) -> Result<Parts<'a>, TokenError> {
    match (v.required_type.as_deref(), typ) {
        // The header's typ is not known here: read it.
        (Some(_), None) => return decode(token, v, true).map(Parts::from),
        (Some(required), Some(t)) if !type_matches(required, t) => return Err(TokenError::InvalidType),
        _ => {}
    }
    let (h, p, s) = segments_after(token, header, v)?;
    Ok(Parts {
        kid: Cow::Borrowed(kid),
        alg: Cow::Borrowed(alg.as_str()),
        signing_input: &token[..h.len() + 1 + p.len()],
        payload_b64: p,
        signature_b64: s,
    })
}

/// The header checks [`decode_header`] and [`verify_with_key`] share. With `require_kid`
/// false an absent `kid` reads as the empty string; a `kid` that is present must still be
/// a non-empty string.
pub(super) fn decode<'t>(token: &'t str, v: &Validation, require_kid: bool) -> Result<Unverified<'t>, TokenError> {
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

/// Where the decoded signature goes when it fits (RSA 4096 is 512 bytes): no allocation.
const SIGNATURE_STACK_BYTES: usize = 512;
/// Where the decoded payload goes when it fits (typical access tokens do).
const PAYLOAD_STACK_BYTES: usize = 1024;

/// A token's parts ready for the signature check: the header's `kid` and `alg`
/// (borrowed when the header is one keyrot wrote) and the segments, borrowed from the token.
pub(crate) struct Parts<'a> {
    kid: Cow<'a, str>,
    alg: Cow<'a, str>,
    signing_input: &'a str,
    payload_b64: &'a str,
    signature_b64: &'a str,
}

impl<'t> From<Unverified<'t>> for Parts<'t> {
    fn from(u: Unverified<'t>) -> Self {
        Parts {
            kid: Cow::Owned(u.kid),
            alg: Cow::Owned(u.alg),
            signing_input: u.signing_input,
            payload_b64: u.payload_b64,
            signature_b64: u.signature_b64,
        }
    }
}

impl Parts<'_> {
    /// Verifies the signature with `key` and checks the claims as of `now` (Unix
    /// seconds), the claims read by `R` (into the map, or straight into a type).
    /// Allocates only the [`Verified`] it returns: the signature and the payload are
    /// decoded on the stack when they fit.
    pub(crate) fn verify_into<R: ReadClaims>(
        &self,
        key: &VerifyingKey,
        v: &Validation,
        now: i64,
    ) -> Result<Verified<R::Claims>, TokenError> {
        let expected = key.algorithm();
        // The key decides the family; RFC 9864's `Ed25519` names an EdDSA key too.
        if !expected.accepts_name(&self.alg) {
            return Err(TokenError::AlgorithmMismatch { expected });
        }
        if !v.algorithms.is_empty() && !v.algorithms.contains(&expected) {
            return Err(TokenError::AlgorithmNotAllowed { alg: expected });
        }
        let mut sig_buf = [0u8; SIGNATURE_STACK_BYTES];
        let good = b64::with_decoded(self.signature_b64, &mut sig_buf, |sig| {
            key.verify(self.signing_input.as_bytes(), sig)
        })
        .ok_or(TokenError::Malformed("signature is not base64url"))?;
        if !good {
            return Err(TokenError::BadSignature);
        }
        let mut payload_buf = [0u8; PAYLOAD_STACK_BYTES];
        let claims = b64::with_decoded(self.payload_b64, &mut payload_buf, |payload| R::read(payload, v, now))
            .ok_or(TokenError::Malformed("payload is not base64url"))??;
        Ok(Verified::new(self.kid.as_ref().to_owned(), expected, claims))
    }
}

impl Unverified<'_> {
    pub(crate) fn parts(&self) -> Parts<'_> {
        Parts {
            kid: Cow::Borrowed(&self.kid),
            alg: Cow::Borrowed(&self.alg),
            signing_input: self.signing_input,
            payload_b64: self.payload_b64,
            signature_b64: self.signature_b64,
        }
    }

    /// Verifies the signature with `key` (the key the ring holds for `kid`) and checks the
    /// claims as of `now` (Unix seconds).
    pub fn verify_with(&self, key: &VerifyingKey, v: &Validation, now: i64) -> Result<Verified, TokenError> {
        self.parts().verify_into::<AsMap>(key, v, now)
    }

    /// [`Unverified::verify_with`], reading the claims straight into `T` (no claims map):
    /// the same header, signature and claim rules, duplicate members refused at any
    /// depth. Claims that do not fit `T` are refused with [`TokenError::ClaimsShape`],
    /// after every other rule.
    pub fn verify_as<T: DeserializeOwned>(
        &self,
        key: &VerifyingKey,
        v: &Validation,
        now: i64,
    ) -> Result<Verified<T>, TokenError> {
        self.parts().verify_into::<AsType<T>>(key, v, now)
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

/// The hash of the maps of header segments keyrot wrote (a key ring's and a
/// [`crate::KeySet`]'s): every verification looks its token's header segment up, about a
/// hundred bytes, which SipHash takes about four instructions a byte over. These maps
/// only ever hold headers keyrot wrote for its own keys, and a token only looks one up,
/// so a fast hash without a secret key is enough: a crafted header can at worst probe
/// the few entries whose hash it shares, each compared in full.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct HeaderHash;

impl std::hash::BuildHasher for HeaderHash {
    type Hasher = HeaderHasher;

    fn build_hasher(&self) -> HeaderHasher {
        HeaderHasher(0)
    }
}

/// A multiply-rotate hash over eight-byte words (FxHash's step).
pub(crate) struct HeaderHasher(u64);

impl std::hash::Hasher for HeaderHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}
