//! The cases of issue 10: the discovery document, token sources, optional auth and any
//! token verifier in the middleware. Re-exported by [`crate::cases`].

use crate::cases::{INVALID_TOKEN_BODY, MISSING_MIDDLEWARE_BODY, MISSING_TOKEN_BODY, assert_401_invalid};
use crate::{
    COOKIE_PATH, HEADER_PATH, OPTIONAL_PATH, OPTIONAL_STRICT_PATH, PROTECTED_PATH, Start, TOKEN_COOKIE, TOKEN_HEADER,
    UNGUARDED_OPTIONAL_PATH, World,
};
use keyrot_core::{AccessToken, KeyRing, PublicKeyRing, Validation};
use keyrot_http::{BearerAuth, IssuerMetadata, JWKS_PATH, OAUTH_AUTHORIZATION_SERVER_PATH, OPENID_CONFIGURATION_PATH};
use serde_json::json;
use std::sync::Arc;

const ISSUER: &str = "https://issuer.example/tenant";
const WHOAMI_ALICE: &str = r#"{"client_id":"web-app","sub":"alice"}"#;

fn assert_401_missing(a: &crate::Answer, what: &str) {
    assert_eq!(a.status, 401, "{what}: {}", a.text());
    assert_eq!(a.header("www-authenticate"), Some("Bearer"), "{what}");
    assert_eq!(a.text(), MISSING_TOKEN_BODY, "{what}");
}

/// An issuer offering only its JWKS: RFC 8414 metadata listing nothing else (empty
/// response and grant types), the headers, `405`; no OpenID document, which could not be
/// valid without an authorization endpoint.
pub async fn discovery_document_is_served_at_both_paths(start: Start) {
    let w = World::start_with(start, |_, b| b.with_issuer_url(ISSUER)).await;
    let oauth = w.send("GET", OAUTH_AUTHORIZATION_SERVER_PATH, &[], None).await;
    assert_eq!(oauth.status, 200, "{}", oauth.text());
    assert_eq!(oauth.header("content-type"), Some("application/json"));
    assert_eq!(oauth.header("x-content-type-options"), Some("nosniff"));
    let jwks = w.jwks(None).await;
    assert_eq!(
        oauth.header("cache-control"),
        jwks.header("cache-control"),
        "cached like the JWKS it points to"
    );
    assert_eq!(
        oauth.json(),
        json!({
            "issuer": ISSUER,
            "jwks_uri": format!("{ISSUER}{JWKS_PATH}"),
            "response_types_supported": [],
            "grant_types_supported": [],
        }),
        "no endpoint, grant or response type keyrot does not serve"
    );
    let openid = w.send("GET", OPENID_CONFIGURATION_PATH, &[], None).await;
    assert!(
        matches!(openid.status, 404 | 401) && !openid.text().contains("jwks_uri"),
        "no OpenID document without an authorization endpoint: {} {}",
        openid.status,
        openid.text()
    );
    let head = w.send("HEAD", OAUTH_AUTHORIZATION_SERVER_PATH, &[], None).await;
    assert_eq!(head.status, 200);
    let post = w.send("POST", OAUTH_AUTHORIZATION_SERVER_PATH, &[], None).await;
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
}

/// Without an issuer URL the discovery paths are not routed.
pub async fn discovery_is_routed_only_with_an_issuer_url(start: Start) {
    let w = World::start(start).await;
    for path in [OPENID_CONFIGURATION_PATH, OAUTH_AUTHORIZATION_SERVER_PATH] {
        // Not found, or refused by the test server's catch-all authenticated scope.
        let a = w.send("GET", path, &[], None).await;
        assert!(
            matches!(a.status, 404 | 401) && !a.text().contains("jwks_uri"),
            "{path} without an issuer URL: {} {}",
            a.status,
            a.text()
        );
    }
}

/// An issuer with an authorization endpoint: both documents, the OpenID one with every
/// member OpenID Connect Discovery 1.0 §3 requires; the issuer is kept exactly.
pub async fn discovery_lists_a_configured_token_endpoint(start: Start) {
    let token_endpoint = "https://issuer.example/tenant/oauth/token";
    let authorization_endpoint = "https://issuer.example/tenant/authorize";
    let meta = IssuerMetadata::new(format!("{ISSUER}/"))
        .with_authorization_endpoint(authorization_endpoint)
        .with_token_endpoint(token_endpoint)
        .with_grant_types_supported(["authorization_code", "refresh_token"])
        .with_token_endpoint_auth_methods_supported(["client_secret_basic"])
        .with_response_types_supported(["code", "id_token"]);
    let w = World::start_with(start, move |_, b| b.with_issuer(meta)).await;
    let a = w.send("GET", OAUTH_AUTHORIZATION_SERVER_PATH, &[], None).await;
    assert_eq!(a.status, 200, "{}", a.text());
    let oauth = json!({
        "issuer": format!("{ISSUER}/"),
        "authorization_endpoint": authorization_endpoint,
        "token_endpoint": token_endpoint,
        "jwks_uri": format!("{ISSUER}{JWKS_PATH}"),
        "response_types_supported": ["code", "id_token"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic"],
    });
    assert_eq!(a.json(), oauth, "the issuer exactly as configured, no double slash");
    let o = w.send("GET", OPENID_CONFIGURATION_PATH, &[], None).await;
    assert_eq!(o.status, 200, "{}", o.text());
    let mut openid = oauth;
    openid["subject_types_supported"] = json!(["public"]);
    openid["id_token_signing_alg_values_supported"] = json!(["EdDSA"]);
    assert_eq!(o.json(), openid);
    let post = w.send("POST", OPENID_CONFIGURATION_PATH, &[], None).await;
    assert_eq!(post.status, 405);
    openid_connect_discovery(&w, authorization_endpoint, token_endpoint).await;
}

/// What a standard client makes of the document: openidconnect-rs's discovery
/// (`CoreProviderMetadata::discover_async`, which refuses a document that lacks a member
/// OpenID Connect Discovery 1.0 §3 requires, or whose `issuer` differs) and its JWKS
/// fetch, with requests to the issuer's host answered by this server.
async fn openid_connect_discovery(w: &World, authorization_endpoint: &str, token_endpoint: &str) {
    use openidconnect::core::{CoreJwsSigningAlgorithm, CoreProviderMetadata};
    let client = |req: openidconnect::HttpRequest| async move {
        let url = req.uri().to_string();
        let path = url
            .strip_prefix(ISSUER)
            .ok_or_else(|| std::io::Error::other(format!("a request outside the issuer: {url}")))?;
        let a = w.send(req.method().as_str(), path, &[], None).await;
        let mut response = openidconnect::http::Response::builder().status(a.status);
        for (name, value) in &a.headers {
            response = response.header(name, value);
        }
        response.body(a.body).map_err(std::io::Error::other)
    };
    let issuer = openidconnect::IssuerUrl::new(format!("{ISSUER}/")).expect("issuer URL");
    let metadata = CoreProviderMetadata::discover_async(issuer, &client)
        .await
        .expect("openidconnect-rs accepts the OpenID document and its JWKS");
    assert_eq!(metadata.authorization_endpoint().as_str(), authorization_endpoint);
    assert_eq!(metadata.token_endpoint().map(|t| t.as_str()), Some(token_endpoint));
    assert_eq!(
        metadata.id_token_signing_alg_values_supported().as_slice(),
        [CoreJwsSigningAlgorithm::EdDsa]
    );
    assert_eq!(metadata.jwks().keys().len(), 1, "the ring's one published key");
}

/// `GET path` with extra headers.
async fn get_with(w: &World, path: &str, headers: &[(&str, String)]) -> crate::Answer {
    w.send("GET", path, headers, None).await
}

/// A route reading the token from a cookie, strictly.
pub async fn token_from_a_cookie(start: Start) {
    let w = World::start(start).await;
    let t = w.user_token("");
    let cookie = |v: String| vec![("cookie", v)];
    let ok = get_with(
        &w,
        COOKIE_PATH,
        &cookie(format!("theme=dark; {TOKEN_COOKIE}={t}; lang=en")),
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.text(), WHOAMI_ALICE);
    let quoted = get_with(&w, COOKIE_PATH, &cookie(format!("{TOKEN_COOKIE}=\"{t}\""))).await;
    assert_eq!(quoted.status, 200, "a quoted cookie value");
    assert_401_missing(&get_with(&w, COOKIE_PATH, &[]).await, "no cookie");
    assert_401_missing(
        &get_with(&w, COOKIE_PATH, &[("authorization", format!("Bearer {t}"))]).await,
        "the Authorization header is not a source of this route",
    );
    assert_401_missing(
        &get_with(&w, COOKIE_PATH, &cookie(format!("x{TOKEN_COOKIE}={t}"))).await,
        "another cookie's name",
    );
    assert_401_invalid(
        &get_with(
            &w,
            COOKIE_PATH,
            &cookie(format!("{TOKEN_COOKIE}={t}; {TOKEN_COOKIE}={t}")),
        )
        .await,
        "the cookie twice",
    );
    assert_401_invalid(
        &get_with(&w, COOKIE_PATH, &cookie(format!("{TOKEN_COOKIE}="))).await,
        "an empty cookie",
    );
    assert_401_invalid(
        &get_with(&w, COOKIE_PATH, &cookie(format!("{TOKEN_COOKIE}={t}x"))).await,
        "a bad signature",
    );
}

/// A route reading the token from a custom header, strictly.
pub async fn token_from_a_custom_header(start: Start) {
    let w = World::start(start).await;
    let t = w.user_token("");
    let ok = get_with(&w, HEADER_PATH, &[(TOKEN_HEADER, t.clone())]).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.text(), WHOAMI_ALICE);
    let upper = get_with(&w, HEADER_PATH, &[("X-API-TOKEN", t.clone())]).await;
    assert_eq!(upper.status, 200, "header names are case-insensitive");
    assert_401_missing(&get_with(&w, HEADER_PATH, &[]).await, "no header");
    assert_401_missing(
        &get_with(&w, HEADER_PATH, &[("authorization", format!("Bearer {t}"))]).await,
        "the Authorization header is not a source of this route",
    );
    assert_401_invalid(
        &get_with(&w, HEADER_PATH, &[(TOKEN_HEADER, format!("Bearer {t}"))]).await,
        "the whole value is the token",
    );
    assert_401_invalid(
        &get_with(&w, HEADER_PATH, &[(TOKEN_HEADER, t.clone()), (TOKEN_HEADER, t.clone())]).await,
        "the header twice",
    );
    assert_401_invalid(
        &get_with(&w, HEADER_PATH, &[(TOKEN_HEADER, format!("{t}x"))]).await,
        "a bad signature",
    );
}

/// Optional auth: no token is anonymous, an invalid one is `401`, no middleware is `500`.
pub async fn optional_auth_serves_anonymous_users_and_refuses_invalid_tokens(start: Start) {
    let w = World::start(start).await;
    let anonymous = w.get(OPTIONAL_PATH, None).await;
    assert_eq!(anonymous.status, 200, "{}", anonymous.text());
    assert_eq!(anonymous.text(), r#"{"anonymous":true}"#);
    let basic = get_with(&w, OPTIONAL_PATH, &[("authorization", "Basic YTpi".to_owned())]).await;
    assert_eq!(
        basic.text(),
        r#"{"anonymous":true}"#,
        "another scheme is no bearer token"
    );
    let t = w.user_token("");
    let known = w.get(OPTIONAL_PATH, Some(&t)).await;
    assert_eq!(known.status, 200);
    assert_eq!(known.text(), WHOAMI_ALICE);
    assert_401_invalid(
        &w.get(OPTIONAL_PATH, Some(&format!("{t}x"))).await,
        "an invalid token is never anonymous",
    );
    let now = w.now().timestamp();
    let expired = w.sign(&json!({ "sub": "alice", "exp": now - 3600 }));
    assert_401_invalid(&w.get(OPTIONAL_PATH, Some(&expired)).await, "an expired token");
    assert_401_invalid(
        &get_with(&w, OPTIONAL_PATH, &[("authorization", "Bearer ".to_owned())]).await,
        "a malformed credential",
    );
    assert_401_missing(
        &w.get(OPTIONAL_STRICT_PATH, None).await,
        "Claims behind optional auth requires a token",
    );
    assert_eq!(w.get(OPTIONAL_STRICT_PATH, Some(&t)).await.text(), WHOAMI_ALICE);
    let unguarded = w.get(UNGUARDED_OPTIONAL_PATH, None).await;
    assert_eq!(
        unguarded.status, 500,
        "without the middleware: fail closed, not anonymous"
    );
    assert_eq!(unguarded.text(), MISSING_MIDDLEWARE_BODY);
    assert_eq!(w.get(UNGUARDED_OPTIONAL_PATH, Some(&t)).await.status, 500);
}

/// The middleware over a `dyn TokenVerifier` (a `PublicKeyRing`).
pub async fn middleware_takes_any_token_verifier(start: Start) {
    // A public-only verifier over the same store: no sealer, a dyn TokenVerifier.
    let w = World::start_with_auth(
        start,
        |_, b| b,
        async |keyring, storage| {
            let public = PublicKeyRing::builder(keyring.ring().clone(), storage)
                .with_clock(keyring.clock().clone())
                .build()
                .await
                .expect("public key ring");
            BearerAuth::with_verifier(Arc::new(public))
        },
    )
    .await;
    let t = w.user_token("");
    let ok = w.get(PROTECTED_PATH, Some(&t)).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.text(), WHOAMI_ALICE);
    let by_cookie = get_with(&w, COOKIE_PATH, &[("cookie", format!("{TOKEN_COOKIE}={t}"))]).await;
    assert_eq!(by_cookie.status, 200, "token sources work with any verifier");
    assert_401_invalid(&w.get(PROTECTED_PATH, Some(&format!("{t}x"))).await, "a bad signature");
    let a = w.get(PROTECTED_PATH, Some(&format!("{t}x"))).await;
    assert_eq!(a.text(), INVALID_TOKEN_BODY);
}

/// A verifier requiring the access-token profile (RFC 9068): the ring's access tokens
/// pass the adapter's middleware; the same claims under `typ` `JWT`, and an `at+jwt` token
/// without `client_id`, are refused `401 invalid_token`.
pub async fn middleware_requires_the_access_token_profile_when_configured(start: Start) {
    const API: &str = "https://api.example";
    let w = World::start_with_auth(
        start,
        |_, b| b,
        async |keyring, storage| {
            let profile = Validation::new()
                .with_issuer(ISSUER)
                .with_audience(API)
                .require_access_token_profile();
            let public = PublicKeyRing::builder(keyring.ring().clone(), storage)
                .with_clock(keyring.clock().clone())
                .with_validation(profile)
                .build()
                .await
                .expect("public key ring");
            BearerAuth::with_verifier(Arc::new(public))
        },
    )
    .await;
    let issued = w
        .keyring
        .issue_access_token(&AccessToken::new(ISSUER, "alice", "web-app", API).with_scopes(["read"]))
        .await
        .expect("access token");
    let ok = w.get(PROTECTED_PATH, Some(issued.token())).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.text(), WHOAMI_ALICE);

    let now = w.now().timestamp();
    let claims = json!({
        "iss": ISSUER, "sub": "alice", "aud": API, "exp": now + 60, "iat": now, "jti": "j-1", "client_id": "web-app",
    });
    assert_401_invalid(&w.get(PROTECTED_PATH, Some(&w.sign(&claims))).await, "typ JWT");
    let typed = KeyRing::builder(w.ring.clone(), w.storage.clone(), w.sealer.clone())
        .with_clock(Arc::new(w.clock.clone()))
        .with_token_type("at+jwt")
        .build()
        .await
        .expect("at+jwt ring");
    let mut without_client = claims.clone();
    without_client.as_object_mut().expect("object").remove("client_id");
    let token = typed.sign(&without_client).expect("sign");
    assert_401_invalid(&w.get(PROTECTED_PATH, Some(&token)).await, "no client_id");
    assert_eq!(
        w.get(PROTECTED_PATH, Some(&typed.sign(&claims).expect("sign")))
            .await
            .status,
        200,
        "the complete claims under at+jwt"
    );
}
