//! Discovery (OpenID Connect, then RFC 8414), the issuer rule, and several issuers.

mod support;

use keyrot_core::{TokenError, Validation};
use keyrot_jwks::{JwksError, JwksVerifier, MultiIssuerVerifier};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_issuers_are_routed_by_kid_and_keep_their_own_rules() {
    let (a, b) = (Server::start().await, Server::start().await);
    let (ka, kb, kb2) = (ed25519(), ed25519(), ed25519());
    a.set(
        "/keys",
        Reply::ok(jwks(&[jwk(&ka, "a1")])).header("cache-control", "max-age=3600"),
    );
    b.set(
        "/keys",
        Reply::ok(jwks(&[jwk(&kb, "b1")])).header("cache-control", "max-age=3600"),
    );
    let build = |s: &Server, iss: &str| {
        JwksVerifier::builder()
            .jwks_url(s.url("/keys"))
            .issuer(iss)
            .client(client())
            .min_refresh(ms(200))
            .build()
    };
    let multi = MultiIssuerVerifier::new([
        build(&a, "https://a.example").await.expect("a"),
        build(&b, "https://b.example").await.expect("b"),
    ]);
    let va = multi
        .verify(&token_with(&ka, "a1", json!({"iss": "https://a.example"})))
        .expect("a");
    assert_eq!(va.claims["iss"], "https://a.example");
    multi
        .verify(&token_with(&kb, "b1", json!({"iss": "https://b.example"})))
        .expect("b");
    // A's key under A's kid claiming B: A's rules refuse it.
    assert_eq!(
        multi
            .verify(&token_with(&ka, "a1", json!({"iss": "https://b.example"})))
            .expect_err("refused"),
        TokenError::InvalidIssuer
    );
    // B publishes a new key: an unknown kid gives each issuer one fetch.
    b.set(
        "/keys",
        Reply::ok(jwks(&[jwk(&kb, "b1"), jwk(&kb2, "b2")])).header("cache-control", "max-age=3600"),
    );
    let t = token_with(&kb2, "b2", json!({"iss": "https://b.example"}));
    assert_eq!(multi.verify(&t).expect_err("refused"), TokenError::UnknownKid);
    multi.verify_refreshing(&t).await.expect("found at B");
    assert_eq!((a.hits("/keys"), b.hits("/keys")), (2, 2));
    let random = token_with(&ka, "nobody", json!({"iss": "https://a.example"}));
    assert_eq!(
        multi.verify_refreshing(&random).await.expect_err("refused"),
        TokenError::UnknownKid
    );
    assert_eq!((a.hits("/keys"), b.hits("/keys")), (2, 2), "within both cooldowns");
    multi.shutdown().await;
}
