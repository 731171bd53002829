//! The attributes of the `Set-Cookie` headers a codec writes.

use super::{CookieError, MAX_COOKIE_BYTES, check_name, is_value_char};
use chrono::{DateTime, TimeDelta, Utc};
use std::time::Duration;

/// The `SameSite` attribute of a cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    /// Sent only with same-site requests.
    Strict,
    /// Sent with same-site requests and top-level cross-site navigations (the default).
    Lax,
    /// Sent with every request (requires `Secure`).
    None,
}

impl SameSite {
    fn as_cookie(self) -> cookie::SameSite {
        match self {
            SameSite::Strict => cookie::SameSite::Strict,
            SameSite::Lax => cookie::SameSite::Lax,
            SameSite::None => cookie::SameSite::None,
        }
    }
}

/// The attributes of the `Set-Cookie` headers a codec writes. The defaults are the safe
/// ones: `Path=/`, `HttpOnly`, `Secure`, `SameSite=Lax`, no `Domain` (host-only), no
/// `Max-Age` (the cookie ends with the browser session).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieOptions {
    path: String,
    domain: Option<String>,
    secure: bool,
    http_only: bool,
    same_site: SameSite,
    max_age: Option<Duration>,
}

impl Default for CookieOptions {
    fn default() -> Self {
        Self {
            path: "/".to_owned(),
            domain: None,
            secure: true,
            http_only: true,
            same_site: SameSite::Lax,
            max_age: None,
        }
    }
}

impl CookieOptions {
    /// The `Path` attribute (default `/`).
    pub fn with_path(mut self, path: impl Into<String>) -> Self {
        self.path = path.into();
        self
    }

    /// The `Domain` attribute (default none: the cookie is sent to this host only).
    pub fn with_domain(mut self, domain: impl Into<String>) -> Self {
        self.domain = Some(domain.into());
        self
    }

    /// Whether `Secure` is set (default yes; turn it off only for plain-HTTP development).
    pub fn with_secure(mut self, secure: bool) -> Self {
        self.secure = secure;
        self
    }

    /// Whether `HttpOnly` is set (default yes: scripts cannot read the cookie).
    pub fn with_http_only(mut self, http_only: bool) -> Self {
        self.http_only = http_only;
        self
    }

    /// The `SameSite` attribute (default [`SameSite::Lax`]).
    pub fn with_same_site(mut self, same_site: SameSite) -> Self {
        self.same_site = same_site;
        self
    }

    /// The cookie's lifetime (default none: a session cookie, which the server accepts
    /// while its key is inside its window): the `Max-Age` attribute, in whole seconds, and
    /// the server's own limit. Every cookie carries the time it was first issued, under
    /// its MAC, so one older than `max_age` is refused ([`CookieError::Refused`], reason
    /// `cookie_expired`) whatever the browser did with it; a re-issued cookie keeps its
    /// first issue time and gets the `Max-Age` it has left.
    pub fn with_max_age(mut self, max_age: Duration) -> Self {
        self.max_age = Some(max_age);
        self
    }

    /// The `Path` attribute.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The `Max-Age` attribute.
    pub fn max_age(&self) -> Option<Duration> {
        self.max_age
    }

    /// The `Set-Cookie` header value `name=value; attributes…`. `value` must already be
    /// cookie-safe (what [`CookieCodec::seal`](super::CookieCodec::seal) returns).
    pub fn set_cookie(&self, name: &str, value: &str) -> Result<String, CookieError> {
        self.set_cookie_for(name, value, self.max_age)
    }

    /// [`CookieOptions::set_cookie`] with `Max-Age` `max_age` (what a re-issued cookie has
    /// left of its lifetime).
    pub(super) fn set_cookie_for(
        &self,
        name: &str,
        value: &str,
        max_age: Option<Duration>,
    ) -> Result<String, CookieError> {
        check_name(name)?;
        self.check_prefix(name)?;
        if !value.bytes().all(is_value_char) {
            return Err(CookieError::InvalidValue);
        }
        if name.len() + 1 + value.len() > MAX_COOKIE_BYTES {
            return Err(CookieError::TooLarge);
        }
        let mut c = self.builder(name, value);
        if let Some(age) = max_age {
            c = c.max_age(cookie::time::Duration::seconds(
                i64::try_from(age.as_secs()).unwrap_or(i64::MAX),
            ));
        }
        Ok(c.build().to_string())
    }

    /// Refuses a cookie issued at `issued_at` when, at `now`, it is older than `max_age`.
    pub(super) fn check_age(&self, issued_at: DateTime<Utc>, now: DateTime<Utc>) -> Result<(), CookieError> {
        match self.max_age {
            Some(max) if now - issued_at >= TimeDelta::from_std(max).unwrap_or(TimeDelta::MAX) => {
                Err(CookieError::Refused {
                    reason: "cookie_expired",
                })
            }
            _ => Ok(()),
        }
    }

    /// What is left at `now` of the lifetime of a cookie issued at `issued_at` (`None`: a
    /// session cookie).
    pub(super) fn remaining(&self, issued_at: DateTime<Utc>, now: DateTime<Utc>) -> Option<Duration> {
        let age = (now - issued_at).to_std().unwrap_or_default();
        self.max_age.map(|max| max.saturating_sub(age))
    }

    /// The `Set-Cookie` header value that deletes cookie `name` (same `Path` and `Domain`,
    /// empty value, `Max-Age=0` and an `Expires` in the past).
    pub fn removal(&self, name: &str) -> Result<String, CookieError> {
        check_name(name)?;
        self.check_prefix(name)?;
        let mut c = self.builder(name, "").build();
        c.make_removal();
        Ok(c.to_string())
    }

    /// The rules of the `__Secure-` and `__Host-` name prefixes (RFC 6265bis §4.1.3),
    /// which browsers enforce by dropping the cookie: both need `Secure`; `__Host-` also
    /// `Path=/` and no `Domain`.
    fn check_prefix(&self, name: &str) -> Result<(), CookieError> {
        let host = name.starts_with("__Host-");
        if (host || name.starts_with("__Secure-")) && !self.secure {
            return Err(CookieError::InvalidName);
        }
        if host && (self.path != "/" || self.domain.is_some()) {
            return Err(CookieError::InvalidName);
        }
        Ok(())
    }

    fn builder<'c>(&'c self, name: &'c str, value: &'c str) -> cookie::CookieBuilder<'c> {
        let mut c = cookie::Cookie::build((name, value))
            .path(self.path.as_str())
            .secure(self.secure)
            .http_only(self.http_only)
            .same_site(self.same_site.as_cookie());
        if let Some(d) = &self.domain {
            c = c.domain(d.as_str());
        }
        c
    }
}
