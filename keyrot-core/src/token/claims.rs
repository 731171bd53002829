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
        check_audience(claims.get("aud"), &v.audiences)?;
    }
    Ok(())
}

/// `aud` (a string or an array of strings) against the accepted audiences: with none
/// configured a token must carry no audience, with some it must name one of them.
fn check_audience(aud: Option<&Value>, accepted: &[String]) -> Result<(), TokenError> {
    let accepts = |a: &str| accepted.iter().any(|x| x == a);
    let (empty, named) = match aud {
        None => (true, false),
        Some(Value::String(a)) => (false, accepts(a)),
        Some(Value::Array(items)) => {
            let mut named = false;
            for item in items {
                named |= accepts(item.as_str().ok_or(TokenError::InvalidClaim("aud"))?);
            }
            (items.is_empty(), named)
        }
        Some(_) => return Err(TokenError::InvalidClaim("aud")),
    };
    match (accepted.is_empty(), empty) {
        (true, true) => Ok(()),
        (true, false) => Err(TokenError::InvalidAudience),
        (false, true) => Err(TokenError::MissingClaim("aud")),
        (false, false) if named => Ok(()),
        (false, false) => Err(TokenError::InvalidAudience),
    }
}
