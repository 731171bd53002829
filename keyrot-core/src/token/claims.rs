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

/// A token's time claims (`exp`, `nbf`, `iat`) as whole seconds: what may change its
/// verdict as time passes, once everything else has been checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Times {
    exp: Option<i64>,
    nbf: Option<i64>,
    iat: Option<i64>,
}

impl Times {
    /// Reads the time claims (each must be a number when present).
    pub(crate) fn of(claims: &Map<String, Value>) -> Result<Self, TokenError> {
        Ok(Self {
            exp: numeric_date(claims, "exp")?,
            nbf: numeric_date(claims, "nbf")?,
            iat: numeric_date(claims, "iat")?,
        })
    }

    /// The time rules of `v` as of `now`: `exp` (required unless allowed missing), `nbf`
    /// and `iat`, each with the leeway.
    pub(crate) fn check(&self, v: &Validation, now: i64) -> Result<(), TokenError> {
        check_exp(self.exp, v, now)?;
        check_nbf(self.nbf, v, now)?;
        check_iat(self.iat, v, now)
    }
}

fn check_exp(exp: Option<i64>, v: &Validation, now: i64) -> Result<(), TokenError> {
    match exp {
        Some(exp) if now >= exp.saturating_add(v.leeway_secs) => Err(TokenError::Expired),
        None if v.require_exp => Err(TokenError::MissingClaim("exp")),
        _ => Ok(()),
    }
}

fn check_nbf(nbf: Option<i64>, v: &Validation, now: i64) -> Result<(), TokenError> {
    match nbf {
        Some(nbf) if now.saturating_add(v.leeway_secs) < nbf => Err(TokenError::NotYetValid),
        _ => Ok(()),
    }
}

fn check_iat(iat: Option<i64>, v: &Validation, now: i64) -> Result<(), TokenError> {
    match iat {
        Some(iat) if iat > now.saturating_add(v.leeway_secs) => Err(TokenError::IssuedInFuture),
        _ => Ok(()),
    }
}

pub(super) fn check_claims(claims: &Map<String, Value>, v: &Validation, now: i64) -> Result<(), TokenError> {
    // Read and checked one at a time, in this order, so the first failing rule is reported.
    check_exp(numeric_date(claims, "exp")?, v, now)?;
    check_nbf(numeric_date(claims, "nbf")?, v, now)?;
    check_iat(numeric_date(claims, "iat")?, v, now)?;
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
