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

    /// The claim with its value mapped by `f`.
    pub(super) fn map<U>(self, f: impl FnOnce(T) -> U) -> Claim<U> {
        match self {
            Claim::Absent => Claim::Absent,
            Claim::Present(v) => Claim::Present(f(v)),
            Claim::Invalid => Claim::Invalid,
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
    /// `sub`, `client_id` and `jti` (in [`PROFILE_MEMBERS`] order), each as a string or
    /// not: what the access-token profile (RFC 9068 §2.2) requires besides the above.
    pub(super) profile: [Claim<()>; 3],
}

/// The members the access-token profile requires that no other rule reads, in the order
/// of [`Registered::profile`].
pub(super) const PROFILE_MEMBERS: [&str; 3] = ["sub", "client_id", "jti"];

/// The index of `name` in [`PROFILE_MEMBERS`].
pub(super) fn profile_member(name: &str) -> Option<usize> {
    PROFILE_MEMBERS.iter().position(|m| *m == name)
}

impl Default for Registered<'_> {
    fn default() -> Self {
        Self {
            exp: Claim::Absent,
            nbf: Claim::Absent,
            iat: Claim::Absent,
            iss: Claim::Absent,
            aud: Audience::Absent,
            profile: [Claim::Absent, Claim::Absent, Claim::Absent],
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
                other => {
                    if let Some(i) = profile_member(other) {
                        r.profile[i] = match value {
                            Value::String(_) => Claim::Present(()),
                            _ => Claim::Invalid,
                        };
                    }
                }
            }
        }
        r
    }

    /// Every claim rule of `v` as of `now`, read and checked one at a time in this order
    /// (`exp`, `nbf`, `iat`, `iss`, `aud`, then the members the access-token profile
    /// requires) so the first failing rule is reported.
    pub(super) fn check(self, v: &Validation, now: i64) -> Result<(), TokenError> {
        let exp = self.exp.read("exp")?;
        check_exp(exp, v, now)?;
        check_nbf(self.nbf.read("nbf")?, v, now)?;
        let iat = self.iat.read("iat")?;
        check_iat(iat, v, now)?;
        if v.access_token_profile {
            // RFC 9068 §2.2: exp and iat are required, whatever else `v` allows.
            exp.ok_or(TokenError::MissingClaim("exp"))?;
            iat.ok_or(TokenError::MissingClaim("iat"))?;
            match &self.iss {
                Claim::Present(_) => {}
                Claim::Absent => return Err(TokenError::MissingClaim("iss")),
                Claim::Invalid => return Err(TokenError::InvalidClaim("iss")),
            }
            let no_audience = match &self.aud {
                Audience::Absent => true,
                Audience::Values(items) => items.is_empty(),
                Audience::Strings(items) => items.is_empty(),
                Audience::One(_) | Audience::Invalid => false,
            };
            if no_audience {
                return Err(TokenError::MissingClaim("aud"));
            }
            for (claim, name) in self.profile.iter().zip(PROFILE_MEMBERS) {
                match claim {
                    Claim::Present(()) => {}
                    Claim::Absent => return Err(TokenError::MissingClaim(name)),
                    Claim::Invalid => return Err(TokenError::InvalidClaim(name)),
                }
            }
        }
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
