//! The claim rules checked after the signature: time claims, issuer, audience. They read
//! the registered claims as a [`Registered`], borrowed either from the claims map or
//! straight from the payload bytes (`payload.rs`), so both ways of verifying apply one
//! set of rules.

use super::*;
use std::borrow::Cow;

/// One registered claim as read: absent, a value of the type the rules need, or present
/// with another type (refused when a rule reads it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Claim<T> {
    Absent,
    Present(T),
    Invalid,
}

impl<T> Claim<T> {
    /// The value, `None` when absent, [`TokenError::InvalidClaim`] for another type.
    fn read(self, name: &'static str) -> Result<Option<T>, TokenError> {
        match self {
            Claim::Absent => Ok(None),
            Claim::Present(v) => Ok(Some(v)),
            Claim::Invalid => Err(TokenError::InvalidClaim(name)),
        }
    }
}

/// A numeric date from an integer beyond `i64`: saturated.
pub(super) fn date_from_u64(u: u64) -> Claim<i64> {
    Claim::Present(i64::try_from(u).unwrap_or(i64::MAX))
}

/// A numeric date from a fraction: whole seconds (rounded down), saturating.
pub(super) fn date_from_f64(f: f64) -> Claim<i64> {
    if f.is_finite() {
        Claim::Present(f.floor().clamp(i64::MIN as f64, i64::MAX as f64) as i64)
    } else {
        Claim::Invalid
    }
}

/// A numeric date as whole seconds, saturating instead of overflowing; any other JSON
/// type is invalid.
fn numeric_date(value: Option<&Value>) -> Claim<i64> {
    match value {
        None => Claim::Absent,
        Some(Value::Number(n)) => {
            if let Some(i) = n.as_i64() {
                Claim::Present(i)
            } else if let Some(u) = n.as_u64() {
                date_from_u64(u)
            } else {
                n.as_f64().map_or(Claim::Invalid, date_from_f64)
            }
        }
        Some(_) => Claim::Invalid,
    }
}

/// `aud` as read: a string or an array of strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Audience<'a> {
    Absent,
    One(Cow<'a, str>),
    /// An array in a claims map (each item is checked when the rule reads it).
    Values(&'a [Value]),
    /// An array read from the payload bytes, every item a string.
    Strings(Vec<Cow<'a, str>>),
    Invalid,
}

/// The registered claims the rules read, borrowed from where the claims are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Registered<'a> {
    pub(super) exp: Claim<i64>,
    pub(super) nbf: Claim<i64>,
    pub(super) iat: Claim<i64>,
    pub(super) iss: Claim<Cow<'a, str>>,
    pub(super) aud: Audience<'a>,
}

impl Default for Registered<'_> {
    fn default() -> Self {
        Self {
            exp: Claim::Absent,
            nbf: Claim::Absent,
            iat: Claim::Absent,
            iss: Claim::Absent,
            aud: Audience::Absent,
        }
    }
}

impl<'a> Registered<'a> {
    /// The registered claims of a claims map, read in one walk over its members (five
    /// look-ups cost five descents with string comparisons).
    pub(super) fn of_map(claims: &'a Map<String, Value>) -> Self {
        let mut r = Self::default();
        for (name, value) in claims {
            match name.as_str() {
                "exp" => r.exp = numeric_date(Some(value)),
                "nbf" => r.nbf = numeric_date(Some(value)),
                "iat" => r.iat = numeric_date(Some(value)),
                "iss" => {
                    r.iss = match value {
                        Value::String(s) => Claim::Present(Cow::Borrowed(s)),
                        _ => Claim::Invalid,
                    }
                }
                "aud" => {
                    r.aud = match value {
                        Value::String(s) => Audience::One(Cow::Borrowed(s)),
                        Value::Array(items) => Audience::Values(items),
                        _ => Audience::Invalid,
                    }
                }
                _ => {}
            }
        }
        r
    }

    /// Every claim rule of `v` as of `now`, read and checked one at a time in this order
    /// (`exp`, `nbf`, `iat`, `iss`, `aud`) so the first failing rule is reported.
    pub(super) fn check(self, v: &Validation, now: i64) -> Result<(), TokenError> {
        check_exp(self.exp.read("exp")?, v, now)?;
        check_nbf(self.nbf.read("nbf")?, v, now)?;
        check_iat(self.iat.read("iat")?, v, now)?;
        if !v.issuers.is_empty() {
            match self.iss {
                Claim::Present(iss) if v.issuers.iter().any(|i| *i == iss) => {}
                Claim::Present(_) => return Err(TokenError::InvalidIssuer),
                Claim::Invalid => return Err(TokenError::InvalidClaim("iss")),
                Claim::Absent => return Err(TokenError::MissingClaim("iss")),
            }
        }
        if !v.any_audience {
            check_audience(&self.aud, &v.audiences)?;
        }
        Ok(())
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
            exp: numeric_date(claims.get("exp")).read("exp")?,
            nbf: numeric_date(claims.get("nbf")).read("nbf")?,
            iat: numeric_date(claims.get("iat")).read("iat")?,
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

/// `aud` (a string or an array of strings) against the accepted audiences: with none
/// configured a token must carry no audience, with some it must name one of them.
fn check_audience(aud: &Audience<'_>, accepted: &[String]) -> Result<(), TokenError> {
    let accepts = |a: &str| accepted.iter().any(|x| x == a);
    let (empty, named) = match aud {
        Audience::Absent => (true, false),
        Audience::One(a) => (false, accepts(a)),
        Audience::Values(items) => {
            let mut named = false;
            for item in *items {
                named |= accepts(item.as_str().ok_or(TokenError::InvalidClaim("aud"))?);
            }
            (items.is_empty(), named)
        }
        Audience::Strings(items) => (items.is_empty(), items.iter().any(|a| accepts(a))),
        Audience::Invalid => return Err(TokenError::InvalidClaim("aud")),
    };
    match (accepted.is_empty(), empty) {
        (true, true) => Ok(()),
        (true, false) => Err(TokenError::InvalidAudience),
        (false, true) => Err(TokenError::MissingClaim("aud")),
        (false, false) if named => Ok(()),
        (false, false) => Err(TokenError::InvalidAudience),
    }
}
