//! `application/x-www-form-urlencoded` bodies and HTTP Basic client credentials, as the
//! OAuth 2.0 token endpoint reads them (RFC 6749 §2.3.1, §3.1).

/// Decodes `application/x-www-form-urlencoded`. Duplicate parameters are refused
/// (RFC 6749 §3.1).
pub fn parse_form(body: &[u8]) -> Result<Vec<(String, String)>, &'static str> {
    let text = std::str::from_utf8(body).map_err(|_| "the body is not UTF-8")?;
    let mut out: Vec<(String, String)> = Vec::new();
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (k, v) = (percent_decode(k)?, percent_decode(v)?);
        if out.iter().any(|(x, _)| *x == k) {
            return Err("a parameter is repeated");
        }
        out.push((k, v));
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Result<String, &'static str> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or("bad percent-encoding")?;
                let hex = std::str::from_utf8(hex).map_err(|_| "bad percent-encoding")?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| "bad percent-encoding")?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| "a parameter is not UTF-8")
}

/// `client_id:client_secret` from HTTP Basic (each part form-urlencoded, RFC 6749 §2.3.1).
pub(crate) fn basic_credentials(authorization: &str) -> Option<(String, String)> {
    let (scheme, value) = authorization.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, value.trim()).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((percent_decode(id).ok()?, percent_decode(secret).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding_is_strict() {
        assert_eq!(
            parse_form(b"grant_type=client_credentials&scope=a+b%20c"),
            Ok(vec![
                ("grant_type".into(), "client_credentials".into()),
                ("scope".into(), "a b c".into())
            ])
        );
        assert!(parse_form(b"a=1&a=2").is_err());
        assert!(parse_form(b"a=%zz").is_err());
        assert!(parse_form(b"a=%4").is_err());
    }

    #[test]
    fn basic_credentials_are_form_decoded() {
        let header = format!(
            "Basic {}",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "sched%3Aa:s%2Bx")
        );
        assert_eq!(basic_credentials(&header), Some(("sched:a".into(), "s+x".into())));
        assert_eq!(basic_credentials("Bearer abc"), None);
    }
}
