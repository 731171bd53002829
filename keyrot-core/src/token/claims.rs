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
