//! Encrypted ([`SealedCookies`](keyrot_http::SealedCookies)) and signed
//! ([`SignedCookies`](keyrot_http::SignedCookies)) cookies in actix-web
//! handlers: [`read_cookie`] opens a cookie of the request, [`SetCookie`] is a
//! `Set-Cookie` header for `HttpResponseBuilder::append_header`. Every rule (format, keys,
//! windows, attributes, statuses) is [`keyrot_http`]'s.
//!
//! ```
//! use actix_web::{HttpRequest, HttpResponse, web};
//! use keyrot_actix::{CookieCodec, CookieErrorResponse, SealedCookies, SetCookie, read_cookie};
//!
//! async fn me(cookies: web::Data<SealedCookies>, req: HttpRequest) -> Result<HttpResponse, CookieErrorResponse> {
//!     let Some(session) = read_cookie(cookies.get_ref(), &req, "session")? else {
//!         return Ok(HttpResponse::Unauthorized().finish());
//!     };
//!     let mut resp = HttpResponse::Ok();
//!     // Opened under an older key: issue it again under the Active one.
//!     if let Some(again) = cookies.reissue("session", &session)? {
//!         resp.append_header(SetCookie(again));
//!     }
//!     Ok(resp.body(session.value))
//! }
//! # let _ = actix_web::App::new().route("/me", web::get().to(me));
//! ```

use crate::{Headers, into_actix_response};
use actix_web::ResponseError;
use actix_web::http::StatusCode;
use actix_web::http::header::{HeaderName, HeaderValue, InvalidHeaderValue, SET_COOKIE, TryIntoHeaderPair};
use keyrot_http::{CookieCodec, CookieError, Opened};
use std::fmt;

/// The response to a [`CookieError`] ([`CookieError::to_response`]): `401` for a cookie
/// that does not open (tampered with, another cookie's, its key expired or revoked, sent
/// twice), `500` otherwise.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(transparent)]
pub struct CookieErrorResponse(#[from] pub CookieError);

impl ResponseError for CookieErrorResponse {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.0.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> actix_web::HttpResponse {
        into_actix_response(self.0.to_response())
    }
}

/// Cookie `name` of the request, opened by `cookies` ([`CookieCodec::read`]): `None` when
/// the request did not send it.
pub fn read_cookie<C: CookieCodec + ?Sized>(
    cookies: &C,
    req: &actix_web::HttpRequest,
    name: &str,
) -> Result<Option<Opened<<C::Value as ToOwned>::Owned>>, CookieErrorResponse> {
    Ok(cookies.read(&Headers(req.headers()), name)?)
}

/// A `Set-Cookie` header value ([`CookieCodec::set_cookie`], [`CookieCodec::reissue`],
/// [`CookieCodec::removal`]) as an actix header pair: `builder.append_header(SetCookie(v))`
/// (append, not insert, so a response may set several cookies).
#[derive(Clone, PartialEq, Eq)]
pub struct SetCookie(pub String);

impl fmt::Debug for SetCookie {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A signed cookie's value is readable: not printed.
        f.write_str("SetCookie(..)")
    }
}

impl TryIntoHeaderPair for SetCookie {
    type Error = InvalidHeaderValue;

    fn try_into_pair(self) -> Result<(HeaderName, HeaderValue), Self::Error> {
        Ok((SET_COOKIE, HeaderValue::try_from(self.0)?))
    }
}
