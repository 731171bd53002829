//! Writing a token: the protected header and the signature.

use super::*;

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
    encode_header_named(alg.as_str(), kid, typ)
}

/// [`encode_header_with_type`] with the `alg` name spelled out (e.g. RFC 9864's `Ed25519`
/// for an EdDSA key; see [`Algorithm::name_with`]).
pub(crate) fn encode_header_named(alg: &str, kid: &str, typ: &str) -> String {
    #[derive(Serialize)]
    struct Header<'a> {
        alg: &'a str,
        kid: &'a str,
        typ: &'a str,
    }
    let json = serde_json::to_vec(&Header { alg, kid, typ }).unwrap_or_default();
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
    let payload = serde_json::to_vec(claims).map_err(|e| SignError::Claims(ClaimsError::Serialize(e)))?;
    if payload.first() != Some(&b'{') {
        return Err(SignError::Claims(ClaimsError::NotAnObject));
    }
    let exp = serde_json::from_slice::<ExpOnly>(&payload)
        .map_err(|e| SignError::Claims(ClaimsError::Serialize(e)))?
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
