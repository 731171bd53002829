//! The claim rules checked after the signature: time claims, issuer, audience.

use super::*;

/// A numeric date as whole seconds, saturating instead of overflowing.
pub(super) fn numeric_date(claims: &Map<String, Value>, name: &'static str) -> Result<Option<i64>, TokenError> {
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

pub(super) fn check_claims(claims: &Map<String, Value>, v: &Validation, now: i64) -> Result<(), TokenError> {
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
