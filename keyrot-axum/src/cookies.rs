//! Encrypted ([`SealedCookies`](keyrot_http::SealedCookies)) and signed
//! ([`SignedCookies`](keyrot_http::SignedCookies)) cookies in axum handlers:
//! [`read_cookie`] opens a cookie of the request's [`HeaderMap`], [`SetCookie`] adds a
//! `Set-Cookie` header to the response. Every rule (format, keys, windows, attributes,
//! statuses) is [`keyrot_http`]'s.
//!
//! ```
//! use axum::http::HeaderMap;
//! use axum::response::IntoResponse;
//! use keyrot_axum::{CookieCodec, CookieRejection, SealedCookies, SetCookie, read_cookie};
//!
//! async fn me(
//!     cookies: axum::extract::State<SealedCookies>,
//!     headers: HeaderMap,
//! ) -> Result<impl IntoResponse, CookieRejection> {
//!     let Some(session) = read_cookie(&*cookies, &headers, "session")? else {
//!         return Ok((axum::http::StatusCode::UNAUTHORIZED, None, String::new()));
//!     };
//!     // Opened under an older key: issue it again under the Active one.
//!     let again = cookies.reissue("session", &session)?.map(SetCookie);
//!     Ok((axum::http::StatusCode::OK, again, String::from_utf8_lossy(&session.value).into_owned()))
//! }
//! # let _ = axum::Router::<SealedCookies>::new().route("/me", axum::routing::get(me));
//! ```

use crate::{Headers, into_axum_response};
use axum::http::header::SET_COOKIE;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, IntoResponseParts, Response, ResponseParts};
use keyrot_http::{CookieCodec, CookieError, Opened};
use std::fmt;

/// The response to a [`CookieError`] ([`CookieError::to_response`]): `401` for a cookie
/// that does not open (tampered with, another cookie's, its key expired or revoked, sent
/// twice), `500` otherwise.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(transparent)]
pub struct CookieRejection(#[from] pub CookieError);

impl IntoResponse for CookieRejection {
    fn into_response(self) -> Response {
        into_axum_response(self.0.to_response())
    }
}

/// Cookie `name` of `headers`, opened by `cookies` ([`CookieCodec::read`]): `None` when
/// the request did not send it.
pub fn read_cookie<C: CookieCodec + ?Sized>(
    cookies: &C,
    headers: &HeaderMap,
    name: &str,
) -> Result<Option<Opened<<C::Value as ToOwned>::Owned>>, CookieRejection> {
    Ok(cookies.read(&Headers(headers), name)?)
}

/// A `Set-Cookie` header value ([`CookieCodec::set_cookie`], [`CookieCodec::reissue`],
/// [`CookieCodec::removal`]) as a part of an axum response; appended, so a response may
/// set several cookies. `Option<SetCookie>` adds nothing when `None`.
#[derive(Clone, PartialEq, Eq)]
pub struct SetCookie(pub String);

impl fmt::Debug for SetCookie {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A signed cookie's value is readable: not printed.
        f.write_str("SetCookie(..)")
    }
}

impl IntoResponseParts for SetCookie {
    type Error = CookieRejection;

    fn into_response_parts(self, mut res: ResponseParts) -> Result<ResponseParts, Self::Error> {
        let value = HeaderValue::try_from(self.0).map_err(|_| CookieRejection(CookieError::InvalidValue))?;
        res.headers_mut().append(SET_COOKIE, value);
        Ok(res)
    }
}

impl IntoResponse for SetCookie {
    fn into_response(self) -> Response {
        (self, ()).into_response()
    }
}
