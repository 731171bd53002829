//! # keyrot-http
//!
//! keyrot's framework-neutral HTTP layer: bearer-token verification, the JWKS and
//! discovery documents, the rotation endpoint, a read-only ring status, and tenant
//! routing over a [`RingManager`](keyrot_core::RingManager). `keyrot-core` knows no HTTP;
//! this crate turns its answers into status codes, headers and bodies.
//!
//! Web adapters (`keyrot-axum`, `keyrot-actix`) only convert types: they wrap their
//! header map in a [`HeaderSource`], read the request body up to
//! [`HttpEndpoints::max_body_bytes`], call one function here, and turn the
//! [`HttpResponse`] into their own response type. Every status code, header and body byte
//! is decided here, so every adapter behaves identically.
//!
//! | route (suggested path)          | function                  | protected by                      |
//! |---------------------------------|---------------------------|-----------------------------------|
//! | `GET /.well-known/jwks.json`    | [`jwks_response`]         | nothing (public keys only)        |
//! | `GET /.well-known/oauth-authorization-server` | [`discovery_response`] (with [`HttpEndpointsBuilder::with_issuer_url`]) | nothing |
//! | `GET /.well-known/openid-configuration` | [`openid_configuration_response`] (with an authorization endpoint in [`IssuerMetadata`]) | nothing |
//! | `POST /internal/rotate-keys`    | [`HttpEndpoints::rotate`] | a [`RotationAuthorizer`]          |
//! | `GET /internal/keys/status`     | [`HttpEndpoints::status`] | the same authorizer, normal scope |
//! | any route of the application    | [`BearerAuth::authenticate`] | the ring (or a [`TokenVerifier`](keyrot_core::TokenVerifier)) |
//!
//! Encrypted and signed cookies on a symmetric ring: [`SealedCookies`] (an
//! [`AeadRing`](keyrot_core::AeadRing)) and [`SignedCookies`] (a
//! [`MacRing`](keyrot_core::MacRing)), read and written through [`CookieCodec`].
//!
//! The `Authorization` header is never logged, echoed or stored; failures are described
//! to the client only by their RFC 6750 error code, and in detail to `tracing` and, for
//! the rotation endpoint, to the audit ledger.

mod authorizer;
mod bearer;
mod cookies;
mod endpoints;
mod jwks_route;
mod middleware;
mod refusal_audit;
mod status;
mod tenant;
mod token_source;

pub use authorizer::{
    AuthorizationDenied, DEFAULT_FORCE_SCOPE, DEFAULT_MAX_ROTATION_TOKEN_LIFETIME, DEFAULT_ROTATE_SCOPE,
    RotationAuthorizer, RotationGrant, ScopeAuthorizer, ServiceTokenFn, ServiceTokenRule,
};
pub use bearer::{AuthRejection, BearerAuth, OptionalBearerAuth, has_scope, require_scopes};
pub use cookies::{
    CookieCodec, CookieError, CookieOptions, MAX_COOKIE_BYTES, Opened, SameSite, SealedCookies, SignedCookies,
};
pub use endpoints::{HttpConfigError, HttpEndpoints, HttpEndpointsBuilder};
pub use jwks_route::{
    IssuerMetadata, OAUTH_AUTHORIZATION_SERVER_PATH, OPENID_CONFIGURATION_PATH, discovery_response, jwks_response,
    openid_configuration_response,
};
#[cfg(test)]
use keyrot_core::TransitionAction;
pub use middleware::{
    Admission, Anonymous, AuthError, Guard, RequiredScopes, Stored, each_header_value, verified_claims, verified_token,
};
pub use refusal_audit::{
    ANONYMOUS_ACTOR, DEFAULT_REFUSAL_AUDIT_INTERVAL, DEFAULT_REFUSAL_AUDIT_MAX_ACTORS, DEFAULT_REFUSALS_AUDITED_GLOBAL,
    DEFAULT_REFUSALS_AUDITED_PER_ACTOR, RefusalAuditLimits, UNTRACKED_ACTORS,
};
#[cfg(test)]
use status::next_transition;
pub use tenant::{
    InvalidPattern, IssuerOf, PATH_HEADER, PathPattern, RingLookup, RingSelector, TENANT_DISCOVERY_PATTERN,
    TENANT_JWKS_PATTERN, TenantAuth, TenantEndpoints, WithPath,
};
pub use token_source::{BearerToken, TokenSource, bearer_token};

use serde::Serialize;
use std::sync::Arc;

/// Where the JWKS is usually served.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";
/// Where the rotation endpoint is usually served.
pub const ROTATE_PATH: &str = "/internal/rotate-keys";
/// Where the ring status is usually served.
pub const STATUS_PATH: &str = "/internal/keys/status";
/// Default cap on the rotation endpoint's request body.
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 * 1024;
/// The header that carries (and echoes) a request id.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// The header set on an answer replayed for a repeated `Idempotency-Key`.
pub const IDEMPOTENT_REPLAYED_HEADER: &str = "idempotent-replayed";
/// Longest request id accepted from a client (a longer one is replaced).
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// Read access to a request's headers, implemented by each adapter over its header map.
pub trait HeaderSource: Sync {
    /// Calls `f` with every value of header `name` (lowercase ASCII), in the order they
    /// were received. Nothing is called when the header is absent.
    fn for_each_value<'s>(&'s self, name: &str, f: &mut dyn FnMut(&'s [u8]));
}

/// Headers as a list of `(name, value)` pairs (names compared case-insensitively): handy
/// for tests and for frameworks without a header map.
impl<N: AsRef<str> + Sync, V: AsRef<[u8]> + Sync> HeaderSource for [(N, V)] {
    fn for_each_value<'s>(&'s self, name: &str, f: &mut dyn FnMut(&'s [u8])) {
        for (n, v) in self {
            if n.as_ref().eq_ignore_ascii_case(name) {
                f(v.as_ref());
            }
        }
    }
}

impl<N: AsRef<str> + Sync, V: AsRef<[u8]> + Sync> HeaderSource for Vec<(N, V)> {
    fn for_each_value<'s>(&'s self, name: &str, f: &mut dyn FnMut(&'s [u8])) {
        self.as_slice().for_each_value(name, f);
    }
}

/// What a header holds when it may appear at most once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Single<'a> {
    Absent,
    One(&'a [u8]),
    Many,
}

pub(crate) fn single<'a>(headers: &'a dyn HeaderSource, name: &str) -> Single<'a> {
    let mut out = Single::Absent;
    headers.for_each_value(name, &mut |v| {
        out = match out {
            Single::Absent => Single::One(v),
            _ => Single::Many,
        }
    });
    out
}

/// The parts of a request the neutral handlers read. The body, where one matters, is
/// passed separately as a [`RequestBody`].
#[derive(Clone, Copy)]
pub struct HttpRequest<'a> {
    /// The method, as sent (`GET`, `POST`, …).
    pub method: &'a str,
    /// The headers.
    pub headers: &'a dyn HeaderSource,
}

impl std::fmt::Debug for HttpRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Headers are deliberately not printed: they carry the bearer token.
        f.debug_struct("HttpRequest")
            .field("method", &self.method)
            .finish_non_exhaustive()
    }
}

/// The request body as the adapter read it, up to [`HttpEndpoints::max_body_bytes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestBody<'a> {
    /// The whole body (possibly empty).
    Complete(&'a [u8]),
    /// The body exceeded the limit; the adapter stopped reading.
    TooLarge,
    /// The body could not be read (the client went away, a broken chunked encoding).
    Unreadable,
}

/// A response body: nothing, shared bytes (the pre-rendered JWKS, no copy) or owned JSON.
#[derive(Clone, PartialEq, Eq)]
pub enum ResponseBody {
    /// No body.
    Empty,
    /// Bytes shared with the ring's snapshot.
    Shared(Arc<[u8]>),
    /// Bytes rendered for this response.
    Owned(Vec<u8>),
}

impl ResponseBody {
    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            ResponseBody::Empty => &[],
            ResponseBody::Shared(b) => b,
            ResponseBody::Owned(b) => b,
        }
    }
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ResponseBody({} bytes)", self.as_bytes().len())
    }
}

/// A framework-neutral response. Header names are lowercase; every value is visible
/// ASCII, so it converts into any framework's header value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Headers, in order.
    pub headers: Vec<(&'static str, String)>,
    /// Body.
    pub body: ResponseBody,
}

impl HttpResponse {
    /// A response with no headers and no body.
    pub fn empty(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: ResponseBody::Empty,
        }
    }

    /// A JSON response (`Content-Type: application/json`, `Cache-Control: no-store`).
    pub fn json<T: Serialize + ?Sized>(status: u16, value: &T) -> Self {
        // Serialising these plain structs cannot fail; an empty object is the safe fallback.
        let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
        Self {
            status,
            headers: vec![
                ("content-type", "application/json".to_owned()),
                ("cache-control", "no-store".to_owned()),
                ("x-content-type-options", "nosniff".to_owned()),
            ],
            body: ResponseBody::Owned(body),
        }
    }

    /// A JSON error body `{"error": code, "error_description": description}`.
    pub fn error(status: u16, code: &str, description: &str) -> Self {
        Self::json(
            status,
            &ErrorBody {
                error: code,
                error_description: description,
            },
        )
    }

    /// `405 Method Not Allowed` with the `Allow` header.
    pub(crate) fn method_not_allowed(allow: &'static str) -> Self {
        let mut r = Self::error(
            405,
            "method_not_allowed",
            &format!("this resource answers {allow} only"),
        );
        r.headers.push(("allow", allow.to_owned()));
        r
    }

    /// The response a claims extractor gives when the verifying middleware was not
    /// installed in front of it: a server misconfiguration, answered `500` (fail closed).
    pub fn missing_middleware() -> Self {
        Self::error(
            500,
            "server_error",
            "the server is misconfigured: bearer authentication is not installed for this route",
        )
    }

    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    pub(crate) fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    error_description: &'a str,
}

/// A request id from `X-Request-Id` when it is 1–128 visible ASCII characters, else a
/// fresh random one.
pub fn request_id(headers: &dyn HeaderSource) -> String {
    if let Single::One(v) = single(headers, REQUEST_ID_HEADER)
        && !v.is_empty()
        && v.len() <= MAX_REQUEST_ID_LEN
        && v.iter().all(u8::is_ascii_graphic)
        && let Ok(s) = std::str::from_utf8(v)
    {
        return s.to_owned();
    }
    random_hex(16)
}

pub(crate) use keyrot_core::adapter::random_hex;

#[cfg(test)]
mod tests;
