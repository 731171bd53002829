//! Discovery (OpenID Connect, then RFC 8414) and the issuer rule (several issuers:
//! `multi_issuer.rs`).

mod support;

use keyrot_core::{TokenError, Validation};
use keyrot_jwks::{JwksError, JwksVerifier};
use serde_json::json;
use support::*;

fn metadata(issuer: &str, jwks_uri: &str) -> Reply {
    Reply::ok(
        serde_json::to_vec(&json!({"issuer": issuer, "jwks_uri": jwks_uri, "token_endpoint": "x"})).expect("json"),
    )
}

async fn by_issuer(issuer: &str) -> Result<JwksVerifier, JwksError> {
    JwksVerifier::builder().issuer(issuer).client(client()).build().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openid_configuration_gives_the_jwks_uri_and_the_required_issuer() {
    let server = Server::start().await;
    let key = ed25519();
    let issuer = server.base.clone();
    server.set(
        "/.well-known/openid-configuration",
        metadata(&issuer, &server.url("/keys")),
    );
    server.set("/keys", Reply::ok(jwks(&[jwk(&key, "k")])));
    let v = by_issuer(&issuer).await.expect("build");
    assert_eq!(v.jwks_url(), server.url("/keys"));
    assert_eq!(server.hits("/.well-known/oauth-authorization-server"), 0);
    v.verify(&token_with(&key, "k", json!({"iss": issuer})))
        .expect("its issuer");
    assert_eq!(
        v.verify(&token_with(&key, "k", json!({"iss": "https://other.example"})))
            .expect_err("refused"),
        TokenError::InvalidIssuer
    );
    assert!(v.verify(&token(&key, "k")).is_err(), "iss is required");
    v.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc8414_metadata_is_the_fallback() {
    let server = Server::start().await;
    let key = ed25519();
    let issuer = server.url("/tenant");
    // No /tenant/.well-known/openid-configuration: 404.
    server.set(
        "/.well-known/oauth-authorization-server/tenant",
        metadata(&issuer, &server.url("/tenant/keys")),
    );
    server.set("/tenant/keys", Reply::ok(jwks(&[jwk(&key, "k")])));
    let v = by_issuer(&issuer).await.expect("build");
    assert_eq!(server.hits("/tenant/.well-known/openid-configuration"), 1);
    v.verify(&token_with(&key, "k", json!({"iss": issuer})))
        .expect("verified");
    v.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_for_another_issuer_or_a_bad_one_is_refused() {
    let server = Server::start().await;
    let issuer = server.base.clone();
    let well_known = "/.well-known/openid-configuration";
    server.set(well_known, metadata("https://evil.example", &server.url("/keys")));
    assert!(matches!(by_issuer(&issuer).await, Err(JwksError::IssuerMismatch)));
    server.set(well_known, metadata(&format!("{issuer}/"), &server.url("/keys")));
    assert!(
        matches!(by_issuer(&issuer).await, Err(JwksError::IssuerMismatch)),
        "compared exactly"
    );
    let twice = format!(
        r#"{{"issuer":"https://evil.example","issuer":"{issuer}","jwks_uri":"{}"}}"#,
        server.url("/keys")
    );
    server.set(well_known, Reply::ok(twice.into_bytes()));
    assert!(
        matches!(by_issuer(&issuer).await, Err(JwksError::Discovery(_))),
        "duplicate member"
    );
    server.set(well_known, metadata(&issuer, "http://id.example/keys"));
    assert!(matches!(by_issuer(&issuer).await, Err(JwksError::InsecureUrl { .. })));
    server.set(well_known, Reply::status(404));
    assert!(matches!(
        by_issuer(&issuer).await,
        Err(JwksError::Status { status: 404, .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuers_named_by_the_validation_take_precedence() {
    let server = Server::start().await;
    let key = ed25519();
    server.set("/keys", Reply::ok(jwks(&[jwk(&key, "k")])));
    let v = JwksVerifier::builder()
        .jwks_url(server.url("/keys"))
        .issuer("https://a.example")
        .validation(Validation::new().with_issuer("https://b.example"))
        .client(client())
        .build()
        .await
        .expect("build: the JWKS URL is given, no discovery");
    v.verify(&token_with(&key, "k", json!({"iss": "https://b.example"})))
        .expect("b");
    assert_eq!(
        v.verify(&token_with(&key, "k", json!({"iss": "https://a.example"})))
            .expect_err("refused"),
        TokenError::InvalidIssuer
    );
    v.shutdown().await;
}

/// Issue 20, item 7, the loopback direction (the remote one is in `src/http.rs`: no test
/// server speaks TLS): a loopback configuration may be redirected on loopback, never to
/// plain http elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_stay_within_what_the_configured_url_allows() {
    let server = Server::start().await;
    let key = ed25519();
    server.set("/keys", Reply::ok(jwks(&[jwk(&key, "k")])));
    server.set("/moved", Reply::status(302).header("location", &server.url("/keys")));
    let default_client = |url: String| JwksVerifier::builder().jwks_url(url).build();
    let v = default_client(server.url("/moved"))
        .await
        .expect("followed on loopback");
    v.verify(&token(&key, "k")).expect("verified");
    v.shutdown().await;
    server.set(
        "/away",
        Reply::status(302).header("location", "http://keys.example/jwks"),
    );
    assert!(
        matches!(
            default_client(server.url("/away")).await,
            Err(JwksError::Status { status: 302, .. })
        ),
        "not followed to plain http elsewhere"
    );
    // Discovery from a loopback issuer to a loopback jwks_uri, with the default client.
    server.set(
        "/.well-known/openid-configuration",
        metadata(&server.base, &server.url("/moved")),
    );
    let v = JwksVerifier::builder()
        .issuer(server.base.clone())
        .build()
        .await
        .expect("loopback to loopback");
    assert_eq!(v.jwks_url(), server.url("/moved"));
    v.shutdown().await;
}
