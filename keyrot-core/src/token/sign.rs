//! Writing a token: the protected header and the signature.

use super::*;
use crate::key::MAX_SIGNATURE_BYTES;

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

/// The top-level `exp` of `payload` (JSON that serde_json wrote, starting with `{`) as
/// whole seconds (`None`: absent or not a number), and serde's error when `exp` is
/// given twice.
fn payload_exp(payload: &[u8]) -> Result<Option<i64>, serde_json::Error> {
    let exp = match scan_exp(payload) {
        Some(None) => None,
        Some(Some(raw)) => match plain_integer(raw) {
            Some(secs) => return Ok(Some(secs)),
            None => match serde_json::from_slice::<Value>(raw) {
                Ok(exp) => Some(exp),
                Err(_) => serde_json::from_slice::<ExpOnly>(payload)?.exp,
            },
        },
        // A shape the scan does not read: serde reads it.
        None => serde_json::from_slice::<ExpOnly>(payload)?.exp,
    };
    Ok(exp.and_then(|e| e.as_i64().or_else(|| e.as_f64().map(|f| f as i64))))
}

/// `raw` as an integer when it is plain JSON digits (an optional `-`, no leading zero, at
/// most 18 digits, so it fits an `i64` and reads the same as through serde).
fn plain_integer(raw: &[u8]) -> Option<i64> {
    let (negative, digits) = match raw.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, raw),
    };
    if digits.is_empty() || digits.len() > 18 || (digits.len() > 1 && digits[0] == b'0') {
        return None;
    }
    let mut n: i64 = 0;
    for d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n * 10 + i64::from(d - b'0');
    }
    Some(if negative { -n } else { n })
}

/// The bytes of the value of the top-level member `exp` of the object `json` (`Some(None)`
/// when it has none), found without parsing the other values. `None` when the text is
/// not a shape this scan reads (a key with an escape, `exp` twice, anything unexpected):
/// the caller then parses it with serde, whose answer is the rule.
fn scan_exp(json: &[u8]) -> Option<Option<&[u8]>> {
    let mut i = skip_ws(json, json.first().filter(|b| **b == b'{').map(|_| 1)?);
    let mut found = None;
    if json.get(i) == Some(&b'}') {
        return Some(None);
    }
    loop {
        if json.get(i) != Some(&b'"') {
            return None;
        }
        let key_end = string_end(json, i)?;
        let key = &json[i + 1..key_end];
        i = skip_ws(json, key_end + 1);
        if json.get(i) != Some(&b':') || key.contains(&b'\\') {
            return None;
        }
        let start = skip_ws(json, i + 1);
        i = value_end(json, start)?;
        if key == b"exp" {
            if found.is_some() {
                return None;
            }
            found = Some(&json[start..i]);
        }
        i = skip_ws(json, i);
        match json.get(i) {
            Some(b',') => i = skip_ws(json, i + 1),
            Some(b'}') => return Some(found),
            _ => return None,
        }
    }
}

fn skip_ws(json: &[u8], mut i: usize) -> usize {
    while json.get(i).is_some_and(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// The index of the quote that closes the string opening at `i`.
fn string_end(json: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    loop {
        j += json.get(j..)?.iter().position(|b| matches!(b, b'"' | b'\\'))?;
        match json[j] {
            b'"' => return Some(j),
            _ => j += 2,
        }
    }
}

/// The index just past the value starting at `i`.
fn value_end(json: &[u8], i: usize) -> Option<usize> {
    match json.get(i)? {
        b'"' => string_end(json, i).map(|j| j + 1),
        b'{' | b'[' => {
            let (mut depth, mut j) = (0usize, i);
            loop {
                match json.get(j)? {
                    b'"' => j = string_end(json, j)?,
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        _ => {
            let len = json[i..]
                .iter()
                .position(|b| matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))?;
            (len > 0).then_some(i + len)
        }
    }
}

/// Signs `claims` with `key`, whose encoded header is `header_b64`
/// (see [`encode_header`]). Enforces a numeric `exp` no further than `max_ttl_secs`
/// after `now`. Allocates the token it returns and the serialised claims, nothing else
/// (besides what the crypto crate allocates inside its signing call).
pub fn sign<C: Serialize + ?Sized>(
    key: &SigningKey,
    header_b64: &str,
    claims: &C,
    now: i64,
    max_ttl_secs: i64,
) -> Result<String, SignError> {
    let payload = checked_payload(claims, now, max_ttl_secs)?;
    let len = header_b64.len() + 1 + b64::encoded_len(payload.len()) + 1 + b64::encoded_len(key.signature_len());
    let mut token = Vec::with_capacity(len);
    token.extend_from_slice(header_b64.as_bytes());
    token.push(b'.');
    b64::encode_into_vec(&payload, &mut token);
    let mut sig = [0u8; MAX_SIGNATURE_BYTES];
    let n = key.sign_into(&token, &mut sig)?;
    finish(token, &sig[..n])
}

/// The JWS signing input (`header.payload`) of `claims`, checked as [`sign`] checks them,
/// for a signer elsewhere (an HSM or KMS); [`finish`] appends its signature.
pub(crate) fn signing_input<C: Serialize + ?Sized>(
    header_b64: &str,
    claims: &C,
    now: i64,
    max_ttl_secs: i64,
) -> Result<Vec<u8>, SignError> {
    let payload = checked_payload(claims, now, max_ttl_secs)?;
    let mut input = Vec::with_capacity(header_b64.len() + 1 + b64::encoded_len(payload.len()) + 1 + 700);
    input.extend_from_slice(header_b64.as_bytes());
    input.push(b'.');
    b64::encode_into_vec(&payload, &mut input);
    Ok(input)
}

/// The compact token: the signing input, `.`, the signature.
pub(crate) fn finish(mut input: Vec<u8>, signature: &[u8]) -> Result<String, SignError> {
    input.push(b'.');
    b64::encode_into_vec(signature, &mut input);
    // ASCII throughout: the header is base64url text, the rest keyrot just encoded.
    String::from_utf8(input)
        .map_err(|_| SignError::Key(KeyError::Invalid(crate::key::InvalidKey::Rule("header is not text"))))
}

/// The serialised claims: an object with a numeric `exp` within `max_ttl_secs` of `now`.
fn checked_payload<C: Serialize + ?Sized>(claims: &C, now: i64, max_ttl_secs: i64) -> Result<Vec<u8>, SignError> {
    let mut payload = Vec::with_capacity(256);
    serde_json::to_writer(&mut payload, claims).map_err(|e| SignError::Claims(ClaimsError::Serialize(e)))?;
    if payload.first() != Some(&b'{') {
        return Err(SignError::Claims(ClaimsError::NotAnObject));
    }
    let exp = payload_exp(&payload)
        .map_err(|e| SignError::Claims(ClaimsError::Serialize(e)))?
        .ok_or(SignError::MissingExp)?;
    let requested = exp.saturating_sub(now);
    if requested > max_ttl_secs {
        return Err(SignError::TtlTooLong {
            requested_secs: requested,
            max_secs: max_ttl_secs,
        });
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rule before the scan: serde reads `exp` out of the whole payload.
    fn by_serde(payload: &[u8]) -> Result<Option<i64>, String> {
        serde_json::from_slice::<ExpOnly>(payload)
            .map(|e| e.exp.and_then(|e| e.as_i64().or_else(|| e.as_f64().map(|f| f as i64))))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn the_exp_scan_answers_what_serde_answers() {
        let cases: &[&[u8]] = &[
            br#"{"exp":100}"#,
            br#"{}"#,
            br#"{ }"#,
            br#"{"sub":"a","exp":1900000600,"scope":"read write"}"#,
            br#"{"a":{"exp":1},"exp":2}"#,
            br#"{"a":[1,{"exp":"x"}],"b":"}\"exp\":9,","exp":3}"#,
            br#"{"a":{"exp":1}}"#,
            br#"{"exp":1,"exp":2}"#,
            br#"{"exp":1,"a":{"b":[{}]},"exp":2}"#,
            br#"{"\u0065xp":5}"#,
            br#"{"e\"xp":5,"exp":6}"#,
            br#"{"exp":1.9}"#,
            br#"{"exp":-1.5}"#,
            br#"{"exp":-1}"#,
            br#"{"exp":18446744073709551615}"#,
            br#"{"exp":1e3}"#,
            br#"{"exp":0}"#,
            br#"{"exp":-0}"#,
            br#"{"exp":007}"#,
            br#"{"exp":999999999999999999}"#,
            br#"{"exp":9223372036854775807}"#,
            br#"{"exp":-9223372036854775808}"#,
            br#"{"exp":1e400}"#,
            br#"{"exp":"100"}"#,
            br#"{"exp":null}"#,
            br#"{"exp":true}"#,
            br#"{"exp":[1]}"#,
            br#"{"exp":{"a":1}}"#,
            b"{ \"exp\" : 7 , \"a\" : [ ] }",
            b"{\n\t\"a\": \"x\",\r\n \"exp\": 8\n}",
            br#"{"a":"\\","exp":9}"#,
            br#"{"exp":}"#,
            br#"{"exp":1"#,
            br#"{"exp""#,
        ];
        for case in cases {
            assert_eq!(
                payload_exp(case).map_err(|e| e.to_string()),
                by_serde(case),
                "{}",
                String::from_utf8_lossy(case)
            );
        }
        // The scan itself reads the plain shapes (no fallback to serde there).
        assert_eq!(scan_exp(br#"{"a":[1,{"exp":2}],"exp":3}"#), Some(Some(&b"3"[..])));
        assert_eq!(scan_exp(br#"{"a":1}"#), Some(None));
        assert_eq!(scan_exp(br#"{"exp":1,"exp":2}"#), None);
        assert_eq!(scan_exp(br#"{"\u0065xp":5}"#), None);
        for (raw, n) in [
            (&b"0"[..], Some(0)),
            (b"-7", Some(-7)),
            (b"1900000600", Some(1_900_000_600)),
        ] {
            assert_eq!(plain_integer(raw), n);
        }
        for raw in [
            &b""[..],
            b"-",
            b"01",
            b"1.5",
            b"1e3",
            b"1234567890123456789",
            b"+1",
            b"-0x1",
        ] {
            assert_eq!(plain_integer(raw), None, "{}", String::from_utf8_lossy(raw));
        }
    }
}
