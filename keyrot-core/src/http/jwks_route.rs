//! Serving the JWKS: pre-rendered bytes, strong `ETag`, `304` on `If-None-Match`.

use super::{HttpRequest, HttpResponse, ResponseBody};
use crate::jwks::JWKS_CONTENT_TYPE;
use crate::keyring::KeyRing;

/// Answers a JWKS request (`GET` or `HEAD`) from the ring's current snapshot:
/// `200` with `Content-Type: application/jwk-set+json`, `Cache-Control: public,
/// max-age=N` (never past the next planned change of the published set) and a strong
/// `ETag`; `304` (same validators, no body) when `If-None-Match` matches; `405` for any
/// other method. The body is shared with the snapshot, not copied.
pub fn jwks_response(keyring: &KeyRing, req: &HttpRequest<'_>) -> HttpResponse {
    if req.method != "GET" && req.method != "HEAD" {
        return HttpResponse::method_not_allowed("GET, HEAD");
    }
    let snapshot = keyring.snapshot();
    let jwks = snapshot.jwks();
    let cache_control = jwks.cache_control(keyring.clock().now());
    let mut not_modified = false;
    req.headers.for_each_value("if-none-match", &mut |v| {
        if let Ok(s) = std::str::from_utf8(v)
            && jwks.matches_if_none_match(s)
        {
            not_modified = true;
        }
    });
    let mut headers = vec![("etag", jwks.etag().to_owned()), ("cache-control", cache_control)];
    if not_modified {
        return HttpResponse {
            status: 304,
            headers,
            body: ResponseBody::Empty,
        };
    }
    headers.push(("content-type", JWKS_CONTENT_TYPE.to_owned()));
    headers.push(("x-content-type-options", "nosniff".to_owned()));
    HttpResponse {
        status: 200,
        headers,
        body: ResponseBody::Shared(jwks.body_arc()),
    }
}
