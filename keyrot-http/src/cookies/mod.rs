//! Encrypted and signed cookies on a symmetric ring, framework-neutral.
//!
//! * [`SealedCookies`] (an [`AeadRing`]): the value is encrypted under the Active key with
//!   XChaCha20-Poly1305, the cookie's name bound as associated data, and written in
//!   base64url. The client can neither read nor change it.
//! * [`SignedCookies`] (a [`MacRing`]): the value is sent as it is, followed by
//!   `.KID.TAG`, an HMAC-SHA-256 over the cookie's name and value. The client can read it
//!   but not change it.
//!
//! In both, a value is bound to its cookie's name: copied into another cookie it is
//! refused. A cookie opens under any key of the ring inside its window (Pending, Active,
//! Retiring before its window ends) and is refused after (expired, revoked, unknown),
//! like a token. One that opened under a key other than the Active one is
//! [`Opened::stale`]: issue it again ([`SealedCookies::reissue`]) so that a rotation never
//! logs anyone out while the old key is still inside its window.
//!
//! Every cookie carries the time it was first issued, authenticated with it. With
//! [`CookieOptions::with_max_age`] that is also the server's limit: a cookie older than
//! `max_age` is refused even while its key is inside its window, and a re-issue keeps the
//! first issue time, so a stolen cookie cannot be kept alive by sending it again.
//!
//! Cookies are read from the `Cookie` header(s) strictly, as [`TokenSource::cookie`] reads
//! a token: a cookie sent twice (e.g. one set by a sibling domain) is refused, never one of
//! the two picked. `Set-Cookie` values are built with [`CookieOptions`], whose defaults are
//! `Path=/; HttpOnly; Secure; SameSite=Lax` and no `Max-Age` (a session cookie).
//!
//! Neither a cookie's value nor key material ever appears in an error, a `Debug` output or
//! a log line.
//!
//! ```
//! # async fn demo(aead: keyrot_core::AeadRing) -> Result<(), keyrot_http::CookieError> {
//! use keyrot_http::{CookieCodec, SealedCookies};
//! let cookies = SealedCookies::new(aead);
//! // The response to a login: `session=<ciphertext>; Path=/; HttpOnly; Secure; SameSite=Lax`.
//! let set_cookie = cookies.set_cookie("session", b"user-7")?;
//! # let value = set_cookie.split(';').next().unwrap().trim_start_matches("session=").to_owned();
//! // A later request's `Cookie` header.
//! let headers = vec![("cookie", format!("session={value}"))];
//! let opened = cookies.read(&headers, "session")?.expect("the cookie was sent");
//! assert_eq!(opened.value, b"user-7");
//! if let Some(again) = cookies.reissue("session", &opened)? {
//!     // Opened under an older key: send `again` as a `Set-Cookie` header.
//!     # drop(again);
//! }
//! # Ok(()) }
//! ```

use crate::token_source::{BearerToken, TokenSource};
use crate::{HeaderSource, HttpResponse};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use keyrot_core::adapter::with_concatenated;
use keyrot_core::{AeadRing, MacRing, MacTag, Purpose, SymmetricError};
use std::fmt;

mod options;
pub use options::{CookieOptions, SameSite};

/// Longest `name=value` a browser is sure to store (RFC 6265 §6.1): a longer cookie is
/// refused when it is made rather than dropped silently by the browser.
pub const MAX_COOKIE_BYTES: usize = 4096;

/// The purpose both codecs bind their ring to (in the associated data, or inside the MAC):
/// no ciphertext or tag the application makes with the same ring for another purpose opens
/// as a cookie, nor a cookie as anything else.
const COOKIES: Purpose = Purpose::new("keyrot-cookies");

/// Why a cookie could not be made or was refused. Never carries the cookie's value, a
/// plaintext or key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CookieError {
    /// The cookie name is not an RFC 6265 token (empty, a separator, a control character),
    /// or its `__Secure-` / `__Host-` prefix does not fit the [`CookieOptions`].
    #[error("invalid cookie name")]
    InvalidName,
    /// The value cannot be written into a cookie as it is (a signed cookie's value must be
    /// made of `A-Z a-z 0-9 - . _ ~ + / =`; encode anything else, or seal it).
    #[error("invalid cookie value")]
    InvalidValue,
    /// `name=value` would exceed [`MAX_COOKIE_BYTES`].
    #[error("cookie exceeds {MAX_COOKIE_BYTES} bytes")]
    TooLarge,
    /// The cookie was sent more than once, or is not in keyrot's format.
    #[error("malformed cookie")]
    Malformed,
    /// The cookie did not open: tampered with, made for another cookie name, made under a
    /// key that is not (or no longer) inside its window, or revoked. `reason` is the
    /// ring's [`SymmetricError::reason`].
    #[error("cookie refused ({reason})")]
    Refused {
        /// Why, in a few words (`authentication`, `unknown_key`, `key_expired`, …).
        reason: &'static str,
    },
    /// The ring could not make or check a cookie (no Active key, the RNG failed, a ring of
    /// the wrong kind).
    #[error("cookie ring unavailable ({reason})")]
    Unavailable {
        /// Why, in a few words (`no_active_key`, `rng`, …).
        reason: &'static str,
    },
}

impl CookieError {
    fn from_open(e: SymmetricError) -> Self {
        match e {
            SymmetricError::Malformed(_) => CookieError::Malformed,
            SymmetricError::UnknownKey | SymmetricError::KeyExpired(_) | SymmetricError::Authentication => {
                CookieError::Refused { reason: e.reason() }
            }
            other => CookieError::Unavailable { reason: other.reason() },
        }
    }

    fn from_seal(e: SymmetricError) -> Self {
        CookieError::Unavailable { reason: e.reason() }
    }

    /// A short, stable name for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            CookieError::InvalidName => "invalid_name",
            CookieError::InvalidValue => "invalid_value",
            CookieError::TooLarge => "too_large",
            CookieError::Malformed => "malformed",
            CookieError::Refused { reason } | CookieError::Unavailable { reason } => reason,
        }
    }

    /// `401` for a cookie the client sent that does not open ([`CookieError::Malformed`],
    /// [`CookieError::Refused`]): the client is not who the cookie said; `500` for every
    /// other error (the server's configuration or ring).
    pub fn status(&self) -> u16 {
        match self {
            CookieError::Malformed | CookieError::Refused { .. } => 401,
            _ => 500,
        }
    }

    /// The response: [`CookieError::status`] with the JSON body
    /// `{"error":"invalid_cookie"}` (`401`) or `{"error":"server_error"}` (`500`), and
    /// `Cache-Control: no-store`. Logged at `debug` (`401`) or `error` (`500`), by reason.
    pub fn to_response(&self) -> HttpResponse {
        let status = self.status();
        let error = if status == 401 {
            tracing::debug!(reason = self.reason(), "cookie refused");
            "invalid_cookie"
        } else {
            tracing::error!(reason = self.reason(), "cookie codec failed");
            "server_error"
        };
        HttpResponse::json(status, &serde_json::json!({ "error": error }))
    }
}

/// A cookie that opened.
#[derive(Clone, PartialEq, Eq)]
pub struct Opened<T> {
    /// What was sealed or signed.
    pub value: T,
    /// The key it opened under.
    pub kid: String,
    /// When the cookie was first issued (a re-issued cookie keeps this time): what
    /// [`CookieOptions::with_max_age`] is measured from.
    pub issued_at: DateTime<Utc>,
    /// Whether that key is not the ring's Active key: issue the cookie again
    /// ([`SealedCookies::reissue`], [`SignedCookies::reissue`]) before the key leaves its
    /// window.
    pub stale: bool,
}

impl<T> fmt::Debug for Opened<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The value is deliberately not printed.
        f.debug_struct("Opened")
            .field("kid", &self.kid)
            .field("issued_at", &self.issued_at)
            .field("stale", &self.stale)
            .finish_non_exhaustive()
    }
}

/// What [`SealedCookies`] and [`SignedCookies`] have in common, for adapters and code
/// generic over both.
pub trait CookieCodec {
    /// What a cookie holds: bytes (sealed) or text (signed).
    type Value: ?Sized + ToOwned;

    /// The attributes of the `Set-Cookie` headers this codec writes.
    fn options(&self) -> &CookieOptions;

    /// Now, by the ring's clock.
    fn now(&self) -> DateTime<Utc>;

    /// The cookie value (the part after `name=`) carrying `value` and its first issue
    /// time `issued_at`, under the Active key.
    fn seal_at(&self, name: &str, value: &Self::Value, issued_at: DateTime<Utc>) -> Result<String, CookieError>;

    /// Opens the value of cookie `name` (the part after `name=`); one older than the
    /// options' `max_age` is refused.
    fn open(&self, name: &str, cookie_value: &str) -> Result<Opened<<Self::Value as ToOwned>::Owned>, CookieError>;

    /// The cookie value (the part after `name=`) carrying `value`, issued now.
    fn seal(&self, name: &str, value: &Self::Value) -> Result<String, CookieError> {
        self.seal_at(name, value, self.now())
    }

    /// The `Set-Cookie` header value that gives the client cookie `name` holding `value`.
    fn set_cookie(&self, name: &str, value: &Self::Value) -> Result<String, CookieError> {
        let sealed = self.seal(name, value)?;
        self.options().set_cookie(name, &sealed)
    }

    /// The `Set-Cookie` header value that deletes cookie `name`.
    fn removal(&self, name: &str) -> Result<String, CookieError> {
        self.options().removal(name)
    }

    /// Cookie `name` of the request, opened: `None` when it was not sent; an error when it
    /// was sent twice, is malformed or does not open.
    fn read(
        &self,
        headers: &dyn HeaderSource,
        name: &str,
    ) -> Result<Option<Opened<<Self::Value as ToOwned>::Owned>>, CookieError> {
        check_name(name)?;
        match TokenSource::cookie(name).read(headers) {
            BearerToken::Absent => Ok(None),
            BearerToken::Malformed => Err(CookieError::Malformed),
            BearerToken::Present(v) => self.open(name, v).map(Some),
        }
    }

    /// When `opened` is stale, the `Set-Cookie` header value that issues it again under the
    /// Active key, with its first issue time and the `Max-Age` it has left (a re-issue
    /// never lengthens a cookie's life); `None` when it already is under the Active key.
    fn reissue(
        &self,
        name: &str,
        opened: &Opened<<Self::Value as ToOwned>::Owned>,
    ) -> Result<Option<String>, CookieError> {
        if !opened.stale {
            return Ok(None);
        }
        let sealed = self.seal_at(name, std::borrow::Borrow::borrow(&opened.value), opened.issued_at)?;
        let left = self.options().remaining(opened.issued_at, self.now());
        self.options().set_cookie_for(name, &sealed, left).map(Some)
    }
}

/// Encrypted cookies on an AEAD ring ([`keyrot_core::KeyKind::Aead`]): see
/// [`CookieCodec`] for the rules both codecs keep. Cheap to clone; rotations take effect at once.
///
/// The value of cookie `name` is `base64url(AeadRing::encrypt(issued ‖ value, name))` under
/// the cookies' purpose: the ring's format (version, key id, random nonce, ciphertext, tag)
/// with the cookie's name as associated data; `issued` is the first issue time in Unix
/// seconds, 8 bytes big-endian.
#[derive(Debug, Clone)]
pub struct SealedCookies {
    aead: AeadRing,
    options: CookieOptions,
}

impl SealedCookies {
    /// Sealed cookies on `aead`, with the default [`CookieOptions`].
    pub fn new(aead: AeadRing) -> Self {
        Self {
            aead: aead.with_purpose(COOKIES),
            options: CookieOptions::default(),
        }
    }

    /// The same codec writing `Set-Cookie` headers with `options`.
    pub fn with_options(mut self, options: CookieOptions) -> Self {
        self.options = options;
        self
    }

    /// The ring.
    pub fn ring(&self) -> &AeadRing {
        &self.aead
    }
}

impl CookieCodec for SealedCookies {
    type Value = [u8];

    fn options(&self) -> &CookieOptions {
        &self.options
    }

    fn now(&self) -> DateTime<Utc> {
        self.aead.ring().clock().now()
    }

    fn seal_at(&self, name: &str, value: &[u8], issued_at: DateTime<Utc>) -> Result<String, CookieError> {
        check_name(name)?;
        let issued = issued_at.timestamp().to_be_bytes();
        let ct = with_concatenated(&[&issued, value], |plaintext| {
            self.aead.encrypt(plaintext, name.as_bytes())
        })
        .map_err(CookieError::from_seal)?;
        Ok(URL_SAFE_NO_PAD.encode(ct))
    }

    fn open(&self, name: &str, cookie_value: &str) -> Result<Opened<Vec<u8>>, CookieError> {
        check_name(name)?;
        let ct = URL_SAFE_NO_PAD
            .decode(cookie_value)
            .map_err(|_| CookieError::Malformed)?;
        let mut value = self
            .aead
            .decrypt(&ct, name.as_bytes())
            .map_err(CookieError::from_open)?;
        let issued_at = value
            .get(..8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .and_then(|b| DateTime::from_timestamp(i64::from_be_bytes(b), 0))
            .ok_or(CookieError::Malformed)?;
        self.options.check_age(issued_at, self.now())?;
        value.drain(..8);
        let kid = AeadRing::key_id(&ct).map_err(CookieError::from_open)?;
        let stale = self.aead.ring().snapshot().active_kid() != Some(kid.as_str());
        Ok(Opened {
            value,
            kid,
            issued_at,
            stale,
        })
    }
}

/// Signed cookies on a MAC ring ([`keyrot_core::KeyKind::Mac`]): see [`CookieCodec`]
/// for the rules both codecs keep. Cheap to clone; rotations take effect at once.
///
/// The value of cookie `name` is `VALUE.ISSUED.KID.TAG`: the value as it is, the first
/// issue time in Unix seconds, then the [`MacTag`] (`KID.TAG`) of HMAC-SHA-256 over
/// `name ‖ "=" ‖ VALUE ‖ "." ‖ ISSUED`.
/// The value must be made of the characters `A-Z a-z 0-9 - . _ ~ + / =` (base64, base64url,
/// ids, dotted parts); anything else is [`CookieError::InvalidValue`] (encode it, or use
/// [`SealedCookies`]).
#[derive(Debug, Clone)]
pub struct SignedCookies {
    mac: MacRing,
    options: CookieOptions,
}

impl SignedCookies {
    /// Signed cookies on `mac`, with the default [`CookieOptions`].
    pub fn new(mac: MacRing) -> Self {
        Self {
            mac: mac.with_purpose(COOKIES),
            options: CookieOptions::default(),
        }
    }

    /// The same codec writing `Set-Cookie` headers with `options`.
    pub fn with_options(mut self, options: CookieOptions) -> Self {
        self.options = options;
        self
    }

    /// The ring.
    pub fn ring(&self) -> &MacRing {
        &self.mac
    }
}

impl CookieCodec for SignedCookies {
    type Value = str;

    fn options(&self) -> &CookieOptions {
        &self.options
    }

    fn now(&self) -> DateTime<Utc> {
        self.mac.ring().clock().now()
    }

    fn seal_at(&self, name: &str, value: &str, issued_at: DateTime<Utc>) -> Result<String, CookieError> {
        check_name(name)?;
        if !value.bytes().all(is_value_char) {
            return Err(CookieError::InvalidValue);
        }
        let issued = u64::try_from(issued_at.timestamp()).map_err(|_| CookieError::Unavailable { reason: "clock" })?;
        let signed = format!("{value}.{issued}");
        let tag = with_message(name, &signed, |m| self.mac.sign(m)).map_err(CookieError::from_seal)?;
        Ok(format!("{signed}.{tag}"))
    }

    fn open(&self, name: &str, cookie_value: &str) -> Result<Opened<String>, CookieError> {
        check_name(name)?;
        // VALUE.ISSUED.KID.TAG: the value may hold dots, the others do not.
        let (rest, _) = cookie_value.rsplit_once('.').ok_or(CookieError::Malformed)?;
        let (signed, _) = rest.rsplit_once('.').ok_or(CookieError::Malformed)?;
        let (value, issued) = signed.rsplit_once('.').ok_or(CookieError::Malformed)?;
        if !value.bytes().all(is_value_char) {
            return Err(CookieError::Malformed);
        }
        let tag: MacTag = cookie_value[signed.len() + 1..]
            .parse()
            .map_err(|_| CookieError::Malformed)?;
        with_message(name, signed, |m| self.mac.verify(m, &tag)).map_err(CookieError::from_open)?;
        // Authentic from here on: the issue time was made by a holder of the key.
        let issued_at = (!issued.is_empty() && issued.len() <= 19 && issued.bytes().all(|b| b.is_ascii_digit()))
            .then(|| issued.parse::<i64>().ok())
            .flatten()
            .and_then(|secs| DateTime::from_timestamp(secs, 0))
            .ok_or(CookieError::Malformed)?;
        self.options.check_age(issued_at, self.now())?;
        let kid = tag.kid();
        let stale = self.mac.ring().snapshot().active_kid() != Some(kid.as_str());
        Ok(Opened {
            value: value.to_owned(),
            kid,
            issued_at,
            stale,
        })
    }
}

/// The RFC 6265 `token` characters: visible ASCII but the separators.
fn is_name_char(b: u8) -> bool {
    b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b)
}

fn check_name(name: &str) -> Result<(), CookieError> {
    if name.is_empty() || !name.bytes().all(is_name_char) {
        return Err(CookieError::InvalidName);
    }
    Ok(())
}

/// The characters a cookie value may hold here: RFC 6750 `b64token` (what
/// [`TokenSource::cookie`] reads back), a subset of RFC 6265 `cookie-octet`.
fn is_value_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/' | b'=')
}

/// `f` of `name ‖ "=" ‖ value`.
fn with_message<T>(name: &str, value: &str, f: impl FnOnce(&[u8]) -> T) -> T {
    with_concatenated(&[name.as_bytes(), b"=", value.as_bytes()], f)
}

#[cfg(test)]
mod tests;
