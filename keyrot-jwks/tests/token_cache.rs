//! The remote verifier with a verified-token cache, against a real HTTP server: a repeated
//! token is a hit, a `304` keeps the entries, and once the issuer's JWKS no longer
//! publishes the key its cached tokens are refused.

mod support;

use keyrot_core::{TokenCache, TokenCacheConfig, TokenError};
use keyrot_jwks::JwksVerifier;
use support::*;

const PATH: &str = "/jwks";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_tokens_of_a_key_the_issuer_stopped_publishing_are_refused() {
    let server = Server::start().await;
    let (old, new) = (ed25519(), ed25519());
    server.set(
        PATH,
        Reply::ok(jwks(&[jwk(&old, "old")]))
            .header("cache-control", "max-age=3600")
            .header("etag", "\"v1\""),
    );
    let cache = TokenCache::new(TokenCacheConfig::new());
    let v = JwksVerifier::builder()
        .jwks_url(server.url(PATH))
        .client(client())
        .min_refresh(ms(100))
        .token_cache(cache.clone())
        .build()
        .await
        .expect("build");
    let t_old = token(&old, "old");
    for _ in 0..3 {
        v.verify(&t_old).expect("verifies");
    }
    assert_eq!((cache.stats().hits, cache.stats().entries), (2, 1));

    // A conditional refresh answered 304 keeps the set, so the entry keeps hitting.
    v.refresh().await.expect("refresh (304)");
    assert_eq!(
        server.if_none_match().last().cloned().flatten().as_deref(),
        Some("\"v1\"")
    );
    v.verify(&t_old).expect("verifies");
    assert_eq!(cache.stats().hits, 3, "{:?}", cache.stats());

    // The issuer rotated and revoked: its JWKS publishes only the new key.
    server.set(
        PATH,
        Reply::ok(jwks(&[jwk(&new, "new")])).header("cache-control", "max-age=3600"),
    );
    v.refresh().await.expect("refresh");
    assert_eq!(v.verify(&t_old).expect_err("refused"), TokenError::UnknownKid);
    assert_eq!(cache.stats().invalidations, 1);
    v.verify(&token(&new, "new")).expect("the new key verifies");
}
