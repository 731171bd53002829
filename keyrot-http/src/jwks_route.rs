//! Serving the JWKS: pre-rendered bytes, strong `ETag`, `304` on `If-None-Match`.

use super::{HttpRequest, HttpResponse, ResponseBody};
use chrono::{DateTime, Utc};
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
/// §4), relative to the issuer URL; only for an issuer whose [`IssuerMetadata`] can make
/// it valid ([`IssuerMetadata::serves_openid_configuration`]).
pub const OPENID_CONFIGURATION_PATH: &str = "/.well-known/openid-configuration";
/// Where the OAuth 2.0 authorization server metadata is served (RFC 8414 §3), relative
/// to the issuer URL.
pub const OAUTH_AUTHORIZATION_SERVER_PATH: &str = "/.well-known/oauth-authorization-server";

/// The grant types that are requested at the authorization endpoint (RFC 6749 §4.1, §4.2).
const AUTHORIZATION_GRANTS: [&str; 2] = ["authorization_code", "implicit"];

/// What the discovery documents say about an issuer: its public URL and the endpoints and
/// grants the application offers. `jwks_uri` is derived (the issuer URL +
/// [`JWKS_PATH`](super::JWKS_PATH)), the ID token algorithms are the ring's, and nothing
/// the application does not offer is listed: an issuer of tokens without an authorization
/// endpoint (client credentials, a login of its own) gets RFC 8414 metadata only, with
/// empty `response_types_supported` (RFC 7591 §2: no response type without the
/// authorization endpoint) and the `grant_types_supported` it names (RFC 8414's default
/// when the member is absent would claim `authorization_code` and `implicit`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerMetadata {
    issuer: String,
    authorization_endpoint: Option<String>,
    token_endpoint: Option<String>,
    grant_types: Vec<String>,
    token_endpoint_auth_methods: Vec<String>,
    response_types: Vec<String>,
    subject_types: Vec<String>,
}

impl IssuerMetadata {
    /// The metadata of the issuer at `issuer_url` (the `iss` of its tokens, exactly):
    /// an `https` URL (`http` only for `localhost`, `127.0.0.1` and `[::1]`) with a host
    /// and neither query nor fragment, checked by [`HttpEndpointsBuilder::build`](super::HttpEndpointsBuilder::build).
    /// No endpoint, grant type or response type until set; `subject_types_supported`
    /// (OpenID document only) defaults to `["public"]`.
    pub fn new(issuer_url: impl Into<String>) -> Self {
        Self {
            issuer: issuer_url.into(),
            authorization_endpoint: None,
            token_endpoint: None,
            grant_types: Vec::new(),
            token_endpoint_auth_methods: Vec::new(),
            response_types: Vec::new(),
            subject_types: vec!["public".to_owned()],
        }
    }

    /// The issuer's token endpoint (`token_endpoint`); [`Self::with_grant_types_supported`]
    /// must then name a grant type used there (every one but `implicit`).
    pub fn with_token_endpoint(mut self, url: impl Into<String>) -> Self {
        self.token_endpoint = Some(url.into());
        self
    }

    /// The issuer's authorization endpoint (`authorization_endpoint`); with it,
    /// `response_types_supported` must be set and a grant type used there
    /// (`authorization_code`, `implicit`) named. Only an issuer with one gets the OpenID
    /// Connect document.
    pub fn with_authorization_endpoint(mut self, url: impl Into<String>) -> Self {
        self.authorization_endpoint = Some(url.into());
        self
    }

    /// The `grant_types_supported` values (RFC 7591 §2 names: `authorization_code`,
    /// `client_credentials`, `refresh_token`, …), always listed, even empty.
    pub fn with_grant_types_supported<I: IntoIterator<Item = T>, T: Into<String>>(mut self, types: I) -> Self {
        self.grant_types = types.into_iter().map(Into::into).collect();
        self
    }

    /// The `token_endpoint_auth_methods_supported` values (`client_secret_basic`,
    /// `client_secret_post`, `private_key_jwt`, …), listed when not empty (absent, RFC 8414
    /// means `client_secret_basic`); only with a token endpoint.
    pub fn with_token_endpoint_auth_methods_supported<I: IntoIterator<Item = T>, T: Into<String>>(
        mut self,
        methods: I,
    ) -> Self {
        self.token_endpoint_auth_methods = methods.into_iter().map(Into::into).collect();
        self
    }

    /// The `response_types_supported` values (`code`, …); only with an authorization
    /// endpoint, and required by it.
    pub fn with_response_types_supported<I: IntoIterator<Item = T>, T: Into<String>>(mut self, types: I) -> Self {
        self.response_types = types.into_iter().map(Into::into).collect();
        self
    }

    /// The `subject_types_supported` values (`public`, `pairwise`) of the OpenID document.
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

    /// Whether the OpenID Connect document can be valid, and is served: every member
    /// OpenID Connect Discovery 1.0 §3 requires is given, which takes an authorization
    /// endpoint (the checks of [`HttpEndpointsBuilder::build`](super::HttpEndpointsBuilder::build)
    /// then ensure the rest).
    pub fn serves_openid_configuration(&self) -> bool {
        self.authorization_endpoint.is_some()
    }

    /// Checks the URLs, the lists and that they agree; the error names the member that
    /// is wrong or missing.
    pub(crate) fn validate(&self) -> Result<(), super::HttpConfigError> {
        let bad = |what: &'static str| super::HttpConfigError::InvalidIssuerMetadata(what);
        check_url(&self.issuer).map_err(|()| bad("issuer"))?;
        for (url, name) in [
            (&self.authorization_endpoint, "authorization_endpoint"),
            (&self.token_endpoint, "token_endpoint"),
        ] {
            if let Some(u) = url {
                check_url(u).map_err(|()| bad(name))?;
            }
        }
        let valid = |v: &[String]| {
            v.iter()
                .all(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic() || b == b' '))
        };
        for (list, name) in [
            (&self.grant_types, "grant_types_supported"),
            (
                &self.token_endpoint_auth_methods,
                "token_endpoint_auth_methods_supported",
            ),
            (&self.response_types, "response_types_supported"),
        ] {
            if !valid(list) {
                return Err(bad(name));
            }
        }
        if self.subject_types.is_empty() || !valid(&self.subject_types) {
            return Err(bad("subject_types_supported"));
        }
        let at_authorization = self
            .grant_types
            .iter()
            .any(|g| AUTHORIZATION_GRANTS.contains(&g.as_str()));
        let at_token = self.grant_types.iter().any(|g| g != "implicit");
        if at_authorization != self.authorization_endpoint.is_some() {
            return Err(bad(if at_authorization {
                "authorization_endpoint"
            } else {
                "grant_types_supported"
            }));
        }
        if at_token != self.token_endpoint.is_some() {
            return Err(bad(if at_token {
                "token_endpoint"
            } else {
                "grant_types_supported"
            }));
        }
        if self.response_types.is_empty() == self.authorization_endpoint.is_some() {
            return Err(bad("response_types_supported"));
        }
        if !self.token_endpoint_auth_methods.is_empty() && self.token_endpoint.is_none() {
            return Err(bad("token_endpoint_auth_methods_supported"));
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

/// RFC 8414 §2: what the issuer offers, exactly.
#[derive(serde::Serialize)]
struct AuthorizationServerDocument<'a> {
    issuer: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    authorization_endpoint: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token_endpoint: Option<&'a str>,
    jwks_uri: String,
    response_types_supported: &'a [String],
    grant_types_supported: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    token_endpoint_auth_methods_supported: &'a [String],
}

impl<'a> AuthorizationServerDocument<'a> {
    fn of(m: &'a IssuerMetadata) -> Self {
        Self {
            issuer: &m.issuer,
            authorization_endpoint: m.authorization_endpoint.as_deref(),
            token_endpoint: m.token_endpoint.as_deref(),
            jwks_uri: m.jwks_uri(),
            response_types_supported: &m.response_types,
            grant_types_supported: &m.grant_types,
            token_endpoint_auth_methods_supported: &m.token_endpoint_auth_methods,
        }
    }
}

/// OpenID Connect Discovery 1.0 §3: the RFC 8414 members and the OpenID ones.
#[derive(serde::Serialize)]
struct OpenIdDocument<'a> {
    #[serde(flatten)]
    oauth: AuthorizationServerDocument<'a>,
    subject_types_supported: &'a [String],
    id_token_signing_alg_values_supported: Vec<&'static str>,
}

/// Answers a request (`GET` or `HEAD`) for the RFC 8414 authorization server metadata at
/// [`OAUTH_AUTHORIZATION_SERVER_PATH`]: `200` with the JSON document (`issuer`,
/// `authorization_endpoint` and `token_endpoint` when configured, `jwks_uri`,
/// `response_types_supported`, `grant_types_supported`, and
/// `token_endpoint_auth_methods_supported` when configured) and the JWKS's
/// `Cache-Control`; `405` for any other method.
pub fn discovery_response(keyring: &KeyRing, metadata: &IssuerMetadata, req: &HttpRequest<'_>) -> HttpResponse {
    discovery_answer(keyring.snapshot().jwks(), metadata, keyring.clock().now(), req)
}

/// [`discovery_response`] for a ring publishing `jwks`, at `now` (a tenant's document is
/// served from a ring that may not be loaded).
pub(crate) fn discovery_answer(
    jwks: &Jwks,
    metadata: &IssuerMetadata,
    now: DateTime<Utc>,
    req: &HttpRequest<'_>,
) -> HttpResponse {
    document(jwks, now, req, &AuthorizationServerDocument::of(metadata))
}

/// Answers a request (`GET` or `HEAD`) for the OpenID Connect discovery document at
/// [`OPENID_CONFIGURATION_PATH`]: the members of [`discovery_response`], plus
/// `subject_types_supported` and `id_token_signing_alg_values_supported` (the algorithms
/// of the ring's published keys and of its policy); `404` when the metadata cannot make
/// it valid ([`IssuerMetadata::serves_openid_configuration`]); `405` for any other method.
pub fn openid_configuration_response(
    keyring: &KeyRing,
    metadata: &IssuerMetadata,
    req: &HttpRequest<'_>,
) -> HttpResponse {
    if !metadata.serves_openid_configuration() {
        return HttpResponse::error(
            404,
            "not_found",
            "no OpenID Connect document: the issuer has no authorization endpoint",
        );
    }
    let snapshot = keyring.snapshot();
    let mut algs = vec![keyring.policy().algorithm()];
    for k in snapshot.keys() {
        if k.state.is_published() && k.tampered.is_none() && !algs.contains(&k.alg) {
            algs.push(k.alg);
        }
    }
    let doc = OpenIdDocument {
        oauth: AuthorizationServerDocument::of(metadata),
        subject_types_supported: &metadata.subject_types,
        id_token_signing_alg_values_supported: algs.iter().map(|a| a.as_str()).collect(),
    };
    document(snapshot.jwks(), keyring.clock().now(), req, &doc)
}

/// `doc` as JSON with the JWKS's `Cache-Control` (the documents change only with the
/// published set).
fn document(jwks: &Jwks, now: DateTime<Utc>, req: &HttpRequest<'_>, doc: &impl serde::Serialize) -> HttpResponse {
    if req.method != "GET" && req.method != "HEAD" {
        return HttpResponse::method_not_allowed("GET, HEAD");
    }
    let cache_control = jwks.cache_control(now);
    let mut r = HttpResponse::json(200, doc);
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
                .with_grant_types_supported(["client_credentials"])
                .validate(),
            Err(crate::HttpConfigError::InvalidIssuerMetadata("token_endpoint"))
        );
    }

    fn refused(m: IssuerMetadata) -> Option<&'static str> {
        match m.validate() {
            Err(crate::HttpConfigError::InvalidIssuerMetadata(what)) => Some(what),
            _ => None,
        }
    }

    #[test]
    fn the_metadata_lists_exactly_what_is_offered() {
        let client_credentials = IssuerMetadata::new("https://i.example")
            .with_token_endpoint("https://i.example/oauth/token")
            .with_grant_types_supported(["client_credentials"])
            .with_token_endpoint_auth_methods_supported(["client_secret_basic", "client_secret_post"]);
        assert_eq!(refused(client_credentials.clone()), None);
        assert!(!client_credentials.serves_openid_configuration());
        let code = IssuerMetadata::new("https://i.example")
            .with_authorization_endpoint("https://i.example/authorize")
            .with_token_endpoint("https://i.example/token")
            .with_grant_types_supported(["authorization_code", "refresh_token"])
            .with_response_types_supported(["code"]);
        assert_eq!(refused(code.clone()), None);
        assert!(code.serves_openid_configuration());
        let implicit_only = IssuerMetadata::new("https://i.example")
            .with_authorization_endpoint("https://i.example/authorize")
            .with_grant_types_supported(["implicit"])
            .with_response_types_supported(["id_token"]);
        assert_eq!(refused(implicit_only), None);

        // Response types without an authorization endpoint (what keyrot used to serve).
        let i = || IssuerMetadata::new("https://i.example");
        assert_eq!(
            refused(i().with_response_types_supported(["code"])),
            Some("response_types_supported")
        );
        // A token endpoint without a grant type used there, and the reverse.
        assert_eq!(
            refused(i().with_token_endpoint("https://i.example/t")),
            Some("grant_types_supported")
        );
        assert_eq!(
            refused(i().with_grant_types_supported(["client_credentials"])),
            Some("token_endpoint")
        );
        // Code flow without an authorization endpoint, and an authorization endpoint no grant uses.
        let with_token = || i().with_token_endpoint("https://i.example/t");
        assert_eq!(
            refused(with_token().with_grant_types_supported(["authorization_code"])),
            Some("authorization_endpoint")
        );
        assert_eq!(
            refused(
                with_token()
                    .with_grant_types_supported(["client_credentials"])
                    .with_authorization_endpoint("https://i.example/a")
                    .with_response_types_supported(["code"])
            ),
            Some("grant_types_supported")
        );
        // An authorization endpoint needs its response types.
        assert_eq!(
            refused(
                with_token()
                    .with_grant_types_supported(["authorization_code"])
                    .with_authorization_endpoint("https://i.example/a")
            ),
            Some("response_types_supported")
        );
        // Client authentication methods need a token endpoint; lists hold no empty value.
        assert_eq!(
            refused(i().with_token_endpoint_auth_methods_supported(["client_secret_basic"])),
            Some("token_endpoint_auth_methods_supported")
        );
        assert_eq!(
            refused(with_token().with_grant_types_supported(["client_credentials", ""])),
            Some("grant_types_supported")
        );
        assert_eq!(
            refused(i().with_subject_types_supported(Vec::<String>::new())),
            Some("subject_types_supported")
        );
        assert_eq!(
            IssuerMetadata::new("https://i.example/").jwks_uri(),
            "https://i.example/.well-known/jwks.json"
        );
    }
}
