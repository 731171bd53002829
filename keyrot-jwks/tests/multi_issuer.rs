//! Several issuers behind one verifier: routed by `iss`, each token checked with the
//! rules of exactly one issuer.

mod support;

use keyrot_core::TokenVerifier;
use keyrot_core::{TokenError, Validation};
use keyrot_jwks::{JwksVerifier, MultiIssuerError, MultiIssuerVerifier};
use serde_json::json;
use support::*;

const A: &str = "https://a.example";
const B: &str = "https://b.example";

async fn build(server: &Server, issuer: Option<&str>, validation: Validation) -> JwksVerifier {
    let mut builder = JwksVerifier::builder()
        .jwks_url(server.url("/keys"))
        .validation(validation)
        .client(client())
        .min_refresh(ms(200));
    if let Some(issuer) = issuer {
        builder = builder.issuer(issuer);
    }
    builder.build().await.expect("build")
}

fn orders_api() -> Validation {
    Validation::new().with_audience("orders-api")
}

fn any_audience() -> Validation {
    Validation::new().allow_any_audience()
}

/// Issue 20, item 4: B (JWKS URL only, any audience) republishes A's key; a token A
/// issued for another audience, which A's rules refuse, must not pass under B's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_does_not_pass_under_another_issuers_looser_rules() {
    let (a, b) = (Server::start().await, Server::start().await);
    let ka = ed25519();
    a.set("/keys", Reply::ok(jwks(&[jwk(&ka, "a1")])));
    b.set("/keys", Reply::ok(jwks(&[jwk(&ka, "a1")])));
    let va = build(&a, Some(A), orders_api()).await;
    let t = token_with(&ka, "a1", json!({"iss": A, "aud": "billing-api"}));
    assert_eq!(va.verify(&t).expect_err("A's rules"), TokenError::InvalidAudience);
    let b_anyone = build(&b, None, any_audience()).await;
    b_anyone.verify(&t).expect("B's looser rules");
    assert_eq!(
        MultiIssuerVerifier::new([b_anyone.clone(), va.clone()]).expect_err("refused"),
        MultiIssuerError::MissingIssuer { index: 0 },
        "a verifier that requires no issuer cannot share"
    );
    // B first: the first verifier holding the kid would have accepted it.
    let vb = build(&b, Some(B), any_audience()).await;
    let multi = MultiIssuerVerifier::new([vb, va]).expect("distinct issuers");
    assert_eq!(multi.verify(&t).expect_err("A's rules"), TokenError::InvalidAudience);
    assert_eq!(
        multi.verify_refreshing(&t).await.expect_err("A's rules"),
        TokenError::InvalidAudience
    );
    assert_eq!(
        TokenVerifier::verify(&multi, &t).await.expect_err("A's rules"),
        TokenError::InvalidAudience
    );
    let ok = multi
        .verify(&token_with(&ka, "a1", json!({"iss": A, "aud": "orders-api"})))
        .expect("A's audience");
    assert_eq!(ok.issuer(), Some(A), "the rules that accepted it");
    let ok = multi
        .verify(&token_with(&ka, "a1", json!({"iss": B, "aud": "billing-api"})))
        .expect("B publishes the key, and B's rules accept any audience");
    assert_eq!(ok.issuer(), Some(B));
    multi.shutdown().await;
    b_anyone.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_no_verifier_requires_is_refused_without_trying_any() {
    let (a, b) = (Server::start().await, Server::start().await);
    let (ka, kb) = (ed25519(), ed25519());
    a.set("/keys", Reply::ok(jwks(&[jwk(&ka, "a1")])));
    b.set("/keys", Reply::ok(jwks(&[jwk(&kb, "b1")])));
    let multi = MultiIssuerVerifier::new([
        build(&a, Some(A), any_audience()).await,
        build(&b, Some(B), any_audience()).await,
    ])
    .expect("distinct issuers");
    let other = token_with(&ka, "a1", json!({"iss": "https://c.example"}));
    assert_eq!(multi.verify(&other).expect_err("refused"), TokenError::InvalidIssuer);
    assert_eq!(
        multi.verify_refreshing(&other).await.expect_err("refused"),
        TokenError::InvalidIssuer
    );
    assert_eq!(
        multi.verify(&token(&ka, "a1")).expect_err("refused"),
        TokenError::MissingClaim("iss")
    );
    assert_eq!(
        multi
            .verify(&token_with(&ka, "a1", json!({"iss": 7})))
            .expect_err("refused"),
        TokenError::InvalidClaim("iss")
    );
    // A's key under A's kid, claiming B: B's keys and rules, and B does not hold it.
    assert_eq!(
        multi
            .verify(&token_with(&ka, "a1", json!({"iss": B})))
            .expect_err("refused"),
        TokenError::UnknownKid
    );
    assert_eq!((a.hits("/keys"), b.hits("/keys")), (1, 1), "no fetch for any of these");
    multi.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_verifiers_requiring_one_issuer_are_refused() {
    let (a, b) = (Server::start().await, Server::start().await);
    let ka = ed25519();
    a.set("/keys", Reply::ok(jwks(&[jwk(&ka, "a1")])));
    b.set("/keys", Reply::ok(jwks(&[jwk(&ka, "a1")])));
    let va = build(&a, Some(A), orders_api()).await;
    // B claims A's issuer through its validation, with looser rules.
    let vb = build(&b, None, any_audience().with_issuer(B).with_issuer(A)).await;
    let t = token_with(&ka, "a1", json!({"iss": A, "aud": "billing-api"}));
    vb.verify(&t).expect("B's looser rules");
    assert_eq!(
        MultiIssuerVerifier::new([vb.clone(), va.clone()]).expect_err("refused"),
        MultiIssuerError::DuplicateIssuer { issuer: A.into() }
    );
    assert_eq!(
        MultiIssuerVerifier::new([va.clone(), va.clone()]).expect_err("refused"),
        MultiIssuerError::DuplicateIssuer { issuer: A.into() },
        "the same verifier twice"
    );
    assert_eq!(
        MultiIssuerVerifier::new(Vec::new()).expect_err("refused"),
        MultiIssuerError::Empty
    );
    va.shutdown().await;
    vb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sole_verifier_without_an_issuer_gets_every_token() {
    let b = Server::start().await;
    let kb = ed25519();
    b.set("/keys", Reply::ok(jwks(&[jwk(&kb, "b1")])));
    let multi = MultiIssuerVerifier::new([build(&b, None, Validation::new()).await]).expect("one");
    let ok = multi.verify(&token(&kb, "b1")).expect("no iss needed");
    assert_eq!(ok.issuer(), None, "no issuer's rules were chosen");
    assert_eq!(
        multi
            .verify(&token_with(&kb, "b1", json!({"aud": "x"})))
            .expect_err("its own rules"),
        TokenError::InvalidAudience
    );
    multi.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_kid_costs_only_the_routed_issuer_a_fetch() {
    let (a, b) = (Server::start().await, Server::start().await);
    let (ka, kb, kb2) = (ed25519(), ed25519(), ed25519());
    let served = |keys: &[serde_json::Value]| Reply::ok(jwks(keys)).header("cache-control", "max-age=3600");
    a.set("/keys", served(&[jwk(&ka, "a1")]));
    b.set("/keys", served(&[jwk(&kb, "b1")]));
    let multi = MultiIssuerVerifier::new([
        build(&a, Some(A), any_audience()).await,
        build(&b, Some(B), any_audience()).await,
    ])
    .expect("distinct issuers");
    let va = multi.verify(&token_with(&ka, "a1", json!({"iss": A}))).expect("a");
    assert_eq!((va.claims["iss"].as_str(), va.issuer()), (Some(A), Some(A)));
    multi.verify(&token_with(&kb, "b1", json!({"iss": B}))).expect("b");
    // B publishes a new key: only B is asked.
    b.set("/keys", served(&[jwk(&kb, "b1"), jwk(&kb2, "b2")]));
    let t = token_with(&kb2, "b2", json!({"iss": B}));
    assert_eq!(multi.verify(&t).expect_err("refused"), TokenError::UnknownKid);
    let vb = multi.verify_refreshing(&t).await.expect("found at B");
    assert_eq!(vb.issuer(), Some(B));
    assert_eq!((a.hits("/keys"), b.hits("/keys")), (1, 2));
    let random = token_with(&ka, "nobody", json!({"iss": A}));
    for expected in [(2, 2), (2, 2)] {
        assert_eq!(
            multi.verify_refreshing(&random).await.expect_err("refused"),
            TokenError::UnknownKid
        );
        assert_eq!(
            (a.hits("/keys"), b.hits("/keys")),
            expected,
            "A once per cooldown, B never"
        );
    }
    multi.shutdown().await;
}
