//! Serving the JWKS: pre-rendered bytes, strong `ETag`, `304` on `If-None-Match`.

use super::{HttpRequest, HttpResponse, ResponseBody};
use chrono::{DateTime, Utc};
use keyrot_core::Algorithm;
use keyrot_core::JWKS_CONTENT_TYPE;
use keyrot_core::Jwks;
use keyrot_core::KeyRing;
use keyrot_core::RingName;

/// Answers a JWKS request (`GET` or `HEAD`) from the ring's current snapshot:
/// `200` with `Content-Type: application/jwk-set+json`, `Cache-Control: public,
/// max-age=N` (never past the next planned change of the published set) and a strong
/// `ETag`; `304` (same validators, no body) when `If-None-Match` matches; `405` for any
/// other method. The body is shared with the snapshot, not copied.
pub fn jwks_response(keyring: &KeyRing, req: &HttpRequest<'_>) -> HttpResponse {
    jwks_answer(keyring.snapshot().jwks(), keyring.ring(), keyring.clock().now(), req)
}

/// [`jwks_response`] for `jwks`, the JWKS of `ring`, at `now` (a tenant's JWKS is served
/// from a ring that may not be loaded).
pub(crate) fn jwks_answer(jwks: &Jwks, ring: &RingName, now: DateTime<Utc>, req: &HttpRequest<'_>) -> HttpResponse {
    if req.method != "GET" && req.method != "HEAD" {
        return HttpResponse::method_not_allowed("GET, HEAD");
    }
    let cache_control = jwks.cache_control(now);
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
        keyrot_core::adapter::record_jwks_response(ring, 304);
        return HttpResponse {
            status: 304,
            headers,
            body: ResponseBody::Empty,
        };
    }
    headers.push(("content-type", JWKS_CONTENT_TYPE.to_owned()));
    headers.push(("x-content-type-options", "nosniff".to_owned()));
    keyrot_core::adapter::record_jwks_response(ring, 200);
    HttpResponse {
        status: 200,
        headers,
        body: ResponseBody::Shared(jwks.body_arc()),
    }
}

/// Where the OpenID Connect discovery document is served (OpenID Connect Discovery 1.0
/// §4), relative to the issuer URL.
pub const OPENID_CONFIGURATION_PATH: &str = "/.well-known/openid-configuration";
/// Where the OAuth 2.0 authorization server metadata is served (RFC 8414 §3), relative
/// to the issuer URL. It is the same document.
pub const OAUTH_AUTHORIZATION_SERVER_PATH: &str = "/.well-known/oauth-authorization-server";

/// What the discovery document says about an issuer: its public URL and the few fields
/// the application decides. Everything else is derived (`jwks_uri` is the issuer URL +
/// [`JWKS_PATH`](super::JWKS_PATH), the signing algorithms are the ring's), and no
/// endpoint keyrot does not serve is listed unless configured here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerMetadata {
    issuer: String,
    token_endpoint: Option<String>,
    response_types: Vec<String>,
    subject_types: Vec<String>,
}

impl IssuerMetadata {
    /// The metadata of the issuer at `issuer_url` (the `iss` of its tokens, exactly):
    /// an `https` URL (`http` only for `localhost`, `127.0.0.1` and `[::1]`) with a host
    /// and neither query nor fragment, checked by [`HttpEndpointsBuilder::build`](super::HttpEndpointsBuilder::build).
    /// `response_types_supported` defaults to `["code"]` and `subject_types_supported`
    /// to `["public"]`.
    pub fn new(issuer_url: impl Into<String>) -> Self {
        Self {
            issuer: issuer_url.into(),
            token_endpoint: None,
            response_types: vec!["code".to_owned()],
            subject_types: vec!["public".to_owned()],
        }
    }

    /// The issuer's token endpoint (RFC 8414 `token_endpoint`), listed only when set.
    pub fn with_token_endpoint(mut self, url: impl Into<String>) -> Self {
        self.token_endpoint = Some(url.into());
        self
    }

    /// The `response_types_supported` values.
    pub fn with_response_types_supported<I: IntoIterator<Item = T>, T: Into<String>>(mut self, types: I) -> Self {
        self.response_types = types.into_iter().map(Into::into).collect();
        self
    }

    /// The `subject_types_supported` values (`public`, `pairwise`).
    pub fn with_subject_types_supported<I: IntoIterator<Item = T>, T: Into<String>>(mut self, types: I) -> Self {
        self.subject_types = types.into_iter().map(Into::into).collect();
        self
    }

    /// The issuer URL.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The `jwks_uri`: the issuer URL (without a trailing `/`) + [`JWKS_PATH`](super::JWKS_PATH).
    pub fn jwks_uri(&self) -> String {
        format!("{}{}", self.issuer.trim_end_matches('/'), super::JWKS_PATH)
    }

    /// Checks the URLs; the error names which one is wrong.
    pub(crate) fn validate(&self) -> Result<(), super::HttpConfigError> {
        let bad = |what: &'static str| super::HttpConfigError::InvalidIssuerMetadata(what);
        check_url(&self.issuer).map_err(|()| bad("issuer"))?;
        if let Some(t) = &self.token_endpoint {
            check_url(t).map_err(|()| bad("token_endpoint"))?;
        }
        let valid = |v: &[String]| {
            !v.is_empty()
                && v.iter()
                    .all(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic() || b == b' '))
        };
        if !valid(&self.response_types) {
            return Err(bad("response_types_supported"));
        }
        if !valid(&self.subject_types) {
            return Err(bad("subject_types_supported"));
        }
        Ok(())
    }
}

/// An `https` URL with a host and neither query nor fragment (`http` for a loopback
/// host: `localhost` and its subdomains (RFC 6761), `127.0.0.1`, `[::1]`), of visible
/// ASCII, at most 2048 bytes.
fn check_url(url: &str) -> Result<(), ()> {
    if url.len() > 2048 || !url.bytes().all(|b| b.is_ascii_graphic()) || url.contains(['?', '#']) {
        return Err(());
    }
    let (loopback_only, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (false, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (true, rest)
    } else {
        return Err(());
    };
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() || authority.contains('@') {
        return Err(());
    }
    let host = if authority.starts_with('[') {
        authority.split_inclusive(']').next().unwrap_or_default()
    } else {
        authority.split(':').next().unwrap_or_default()
    };
    let loopback = matches!(host, "localhost" | "127.0.0.1" | "[::1]") || host.ends_with(".localhost");
    if host.is_empty() || (loopback_only && !loopback) {
        return Err(());
    }
    Ok(())
}

#[derive(serde::Serialize)]
struct DiscoveryDocument<'a> {
    issuer: &'a str,
    jwks_uri: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    token_endpoint: Option<&'a str>,
    response_types_supported: &'a [String],
    subject_types_supported: &'a [String],
    id_token_signing_alg_values_supported: Vec<&'static str>,
}

/// Answers a discovery request (`GET` or `HEAD`) at [`OPENID_CONFIGURATION_PATH`] or
/// [`OAUTH_AUTHORIZATION_SERVER_PATH`]: `200` with the JSON document (`issuer`,
/// `jwks_uri`, `token_endpoint` when configured, `response_types_supported`,
/// `subject_types_supported`, and `id_token_signing_alg_values_supported`: the
/// algorithms of the ring's published keys and of its policy) and the JWKS's
/// `Cache-Control` (the document changes only with the published set); `405` for any
/// other method.
pub fn discovery_response(keyring: &KeyRing, metadata: &IssuerMetadata, req: &HttpRequest<'_>) -> HttpResponse {
    let snapshot = keyring.snapshot();
    let mut algs = vec![keyring.policy().algorithm()];
    for k in snapshot.keys() {
        if k.state.is_published() && k.tampered.is_none() && !algs.contains(&k.alg) {
            algs.push(k.alg);
        }
    }
    discovery_answer(snapshot.jwks(), &algs, metadata, keyring.clock().now(), req)
}

/// [`discovery_response`] for a ring publishing `jwks` with the algorithms `algs`, at
/// `now` (a tenant's document is served from a ring that may not be loaded).
pub(crate) fn discovery_answer(
    jwks: &Jwks,
    algs: &[Algorithm],
    metadata: &IssuerMetadata,
    now: DateTime<Utc>,
    req: &HttpRequest<'_>,
) -> HttpResponse {
    if req.method != "GET" && req.method != "HEAD" {
        return HttpResponse::method_not_allowed("GET, HEAD");
    }
    let doc = DiscoveryDocument {
        issuer: &metadata.issuer,
        jwks_uri: metadata.jwks_uri(),
        token_endpoint: metadata.token_endpoint.as_deref(),
        response_types_supported: &metadata.response_types,
        subject_types_supported: &metadata.subject_types,
        id_token_signing_alg_values_supported: algs.iter().map(|a| a.as_str()).collect(),
    };
    let cache_control = jwks.cache_control(now);
    let mut r = HttpResponse::json(200, &doc);
    for (name, value) in &mut r.headers {
        if *name == "cache-control" {
            *value = cache_control.clone();
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issuer_urls_are_checked() {
        for ok in [
            "https://issuer.example",
            "https://issuer.example/",
            "https://issuer.example:8443/tenant",
            "http://localhost:3000",
            "http://127.0.0.1",
            "http://[::1]:8080/x",
            "http://keys.localhost:8080",
        ] {
            assert_eq!(check_url(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "issuer.example",
            "http://issuer.example",
            "ftp://issuer.example",
            "https://",
            "https:///path",
            "https://issuer.example/?q=1",
            "https://issuer.example/#f",
            "https://user@issuer.example",
            "https://issuer.example/a b",
            "http://localhost.evil.example",
            "http://evil-localhost",
        ] {
            assert_eq!(check_url(bad), Err(()), "{bad}");
        }
        assert!(IssuerMetadata::new("https://i.example").validate().is_ok());
        assert_eq!(
            IssuerMetadata::new("https://i.example")
                .with_token_endpoint("http://i.example/token")
                .validate(),
            Err(crate::HttpConfigError::InvalidIssuerMetadata("token_endpoint"))
        );
        assert_eq!(
            IssuerMetadata::new("https://i.example")
                .with_response_types_supported(Vec::<String>::new())
                .validate(),
            Err(crate::HttpConfigError::InvalidIssuerMetadata(
                "response_types_supported"
            ))
        );
        assert_eq!(
            IssuerMetadata::new("https://i.example/").jwks_uri(),
            "https://i.example/.well-known/jwks.json"
        );
    }
}
