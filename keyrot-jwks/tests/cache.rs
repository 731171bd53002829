//! Cache behaviour against a real HTTP server: lifetimes, revalidation, background
//! refresh, removal.

mod support;

use keyrot_core::{Algorithm, PrivateKey, RsaBits, TokenError, Validation};
use keyrot_jwks::{JwksVerifier, MAX_DURATION_SETTING};
use std::time::Duration;
use support::*;

const PATH: &str = "/jwks";

async fn verifier(server: &Server, floor: u64, ceiling: u64, stale: u64) -> JwksVerifier {
    JwksVerifier::builder()
        .jwks_url(server.url(PATH))
        .client(client())
        .min_refresh(ms(floor))
        .max_refresh(ms(ceiling))
        .max_stale(ms(stale))
        .build()
        .await
        .expect("build")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verifies_the_served_set_and_debug_shows_no_token() {
    let server = Server::start().await;
    let key = ed25519();
    server.set(
        PATH,
        Reply::ok(jwks(&[jwk(&key, "k1")])).header("cache-control", "max-age=3600"),
    );
    let v = verifier(&server, 1000, 60_000, 60_000).await;
    let t = token(&key, "k1");
    let verified = v.verify(&t).expect("verified");
    assert_eq!(
        (verified.kid.as_str(), verified.claims["sub"].as_str()),
        ("k1", Some("alice"))
    );
    assert_eq!(
        v.verify(&token(&ed25519(), "k1")).expect_err("refused"),
        TokenError::BadSignature
    );
    assert_eq!(
        v.verify(&token(&key, "k2")).expect_err("refused"),
        TokenError::UnknownKid
    );
    let debug = format!("{v:?}");
    assert!(debug.contains("k1") && !debug.contains(&t[..20]), "{debug}");
    assert_eq!(server.hits(PATH), 1);
    v.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_age_below_the_floor_is_raised_to_it() {
    let server = Server::start().await;
    let key = ed25519();
    server.set(
        PATH,
        Reply::ok(jwks(&[jwk(&key, "k1")])).header("cache-control", "max-age=0"),
    );
    let v = verifier(&server, 200, 60_000, 60_000).await;
    wait_until("three refreshes", Duration::from_secs(5), || server.hits(PATH) >= 3).await;
    // Refreshes every 3/4 of the 200 ms floor, not one per request.
    let hits = server.hits(PATH);
    assert!((3..=6).contains(&hits), "{hits} requests");
    // Each refresh is scheduled 150 ms after the previous fetch began; the server sees
    // the requests later by however long each took to arrive, which on a loaded machine
    // differs by tens of milliseconds, so the bound leaves 30 ms for that jitter.
    let times = server.hit_times(PATH);
    for pair in times.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= ms(120),
            "refreshed {gap:?} after the last one, below 3/4 of the floor"
        );
    }
    v.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_age_above_the_ceiling_is_lowered_to_it() {
    let server = Server::start().await;
    let key = ed25519();
    server.set(
        PATH,
        Reply::ok(jwks(&[jwk(&key, "k1")])).header("cache-control", "public, max-age=86400"),
    );
    let v = verifier(&server, 50, 300, 60_000).await;
    sleep_ms(100).await;
    assert_eq!(server.hits(PATH), 1, "fresh: no request");
    sleep_ms(700).await;
    let hits = server.hits(PATH);
    assert!(
        (3..=5).contains(&hits),
        "refreshed at the 300 ms ceiling: {hits} requests"
    );
    v.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_age_within_bounds_is_honoured() {
    let server = Server::start().await;
    let key = ed25519();
    server.set(
        PATH,
        Reply::ok(jwks(&[jwk(&key, "k1")])).header("cache-control", "max-age=1"),
    );
    let v = verifier(&server, 50, 60_000, 60_000).await;
    wait_until("the first refresh", Duration::from_secs(5), || server.hits(PATH) >= 2).await;
    let times = server.hit_times(PATH);
    let before = |after: u64| times.iter().filter(|t| **t < times[0] + ms(after)).count();
    assert_eq!(before(600), 1, "fresh for 1 s: no request yet");
    assert_eq!(server.hits(PATH), 2, "refreshed three quarters into the second");
    assert!(times[1] - times[0] >= ms(700), "{:?}", times[1] - times[0]);
    v.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revalidates_with_if_none_match_and_a_304_renews_the_set() {
    let server = Server::start().await;
    let key = ed25519();
    server.set(
        PATH,
        Reply::ok(jwks(&[jwk(&key, "k1")]))
            .header("cache-control", "max-age=0")
            .header("etag", "\"v1\""),
    );
    // Lifetime 100 ms, and no staleness allowed: only 304s keep the set usable.
    let v = verifier(&server, 100, 100, 0).await;
    let t = token(&key, "k1");
    for _ in 0..8 {
        sleep_ms(100).await;
        v.verify(&t).expect("still verifies: renewed by 304s");
    }
    let seen = server.if_none_match();
    assert!(seen.len() >= 5, "{seen:?}");
    assert_eq!(seen[0], None);
    assert!(seen[1..].iter().all(|s| s.as_deref() == Some("\"v1\"")), "{seen:?}");
    v.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_cache_revalidates_at_the_floor() {
    let server = Server::start().await;
    let key = ed25519();
    server.set(
        PATH,
        Reply::ok(jwks(&[jwk(&key, "k1")]))
            .header("cache-control", "no-cache, max-age=3600")
            .header("etag", "\"v1\""),
    );
    let v = verifier(&server, 200, 60_000, 60_000).await;
    sleep_ms(500).await;
    let seen = server.if_none_match();
    assert!((2..=4).contains(&seen.len()), "{seen:?}");
    assert!(seen[1..].iter().all(|s| s.as_deref() == Some("\"v1\"")), "{seen:?}");
    v.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_store_refetches_at_the_floor_without_a_validator() {
    let server = Server::start().await;
    let key = ed25519();
    server.set(
        PATH,
        Reply::ok(jwks(&[jwk(&key, "k1")]))
            .header("cache-control", "no-store")
            .header("etag", "\"v1\""),
    );
    let v = verifier(&server, 200, 60_000, 60_000).await;
    sleep_ms(500).await;
    let seen = server.if_none_match();
    assert!((2..=4).contains(&seen.len()), "{seen:?}");
    assert!(
        seen.iter().all(Option::is_none),
        "no ETag kept after no-store: {seen:?}"
    );
    v.verify(&token(&key, "k1")).expect("verifies");
    v.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_background_refresh_serves_a_new_key_before_any_request_asks() {
    let server = Server::start().await;
    let (old, new) = (ed25519(), ed25519());
    server.set(
        PATH,
        Reply::ok(jwks(&[jwk(&old, "old")])).header("cache-control", "max-age=0"),
    );
    let v = verifier(&server, 300, 300, 0).await;
    // The issuer is slow from now on; no verification may wait for it.
    server.set(
        PATH,
        Reply::ok(jwks(&[jwk(&old, "old"), jwk(&new, "new")]))
            .header("cache-control", "max-age=0")
            .delay(ms(50)),
    );
    let t_old = token(&old, "old");
    let started = std::time::Instant::now();
    let mut slowest = std::time::Duration::ZERO;
    while started.elapsed() < ms(1000) {
        let one = std::time::Instant::now();
        // With max_stale 0, a gap between expiry and the next set would refuse it.
        v.verify(&t_old).expect("never a gap, though the issuer takes 50 ms");
        slowest = slowest.max(one.elapsed());
        sleep_ms(5).await;
    }
    assert!(slowest < ms(20), "a verification waited {slowest:?}");
    // The sync path never fetches: the new key arrived by the background task alone.
    v.verify(&token(&new, "new")).expect("new key served");
    v.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_key_stops_verifying_once_the_served_lifetime_has_passed() {
    let server = Server::start().await;
    let (gone, kept) = (ed25519(), ed25519());
    server.set(
        PATH,
        Reply::ok(jwks(&[jwk(&gone, "gone"), jwk(&kept, "kept")])).header("cache-control", "max-age=1"),
    );
    let v = verifier(&server, 50, 60_000, 60_000).await;
    server.set(
        PATH,
        Reply::ok(jwks(&[jwk(&kept, "kept")])).header("cache-control", "max-age=1"),
    );
    let t = token(&gone, "gone");
    sleep_ms(300).await;
    v.verify(&t).expect("still within the served lifetime");
    sleep_ms(900).await;
    assert_eq!(
        v.verify(&t).expect_err("refused"),
        TokenError::UnknownKid,
        "1 s lifetime has passed"
    );
    v.verify(&token(&kept, "kept")).expect("kept");
    v.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_the_background_refresh() {
    let server = Server::start().await;
    let key = ed25519();
    server.set(
        PATH,
        Reply::ok(jwks(&[jwk(&key, "k1")])).header("cache-control", "max-age=0"),
    );
    let v = verifier(&server, 50, 50, 60_000).await;
    let clone = v.clone();
    sleep_ms(200).await;
    v.shutdown().await;
    let after = server.hits(PATH);
    sleep_ms(300).await;
    assert_eq!(server.hits(PATH), after);
    clone.verify(&token(&key, "k1")).expect("the last set still serves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwk_without_alg_serves_only_an_explicitly_allowed_algorithm() {
    let server = Server::start().await;
    let rsa = PrivateKey::generate(Algorithm::Rs256, RsaBits::B2048).expect("rsa");
    let mut no_alg = jwk(&rsa, "r");
    no_alg.as_object_mut().expect("object").remove("alg");
    let mut enc = jwk(&ed25519(), "enc");
    enc["use"] = "enc".into();
    server.set(
        PATH,
        Reply::ok(jwks(&[no_alg, enc])).header("cache-control", "max-age=3600"),
    );
    let t = token(&rsa, "r");
    let build = |v: Validation| {
        JwksVerifier::builder()
            .jwks_url(server.url(PATH))
            .client(client())
            .validation(v)
            .build()
    };
    let any = build(Validation::new()).await.expect("build");
    assert_eq!(
        any.verify(&t).expect_err("refused"),
        TokenError::UnknownKid,
        "no alg, nothing allowed"
    );
    assert!(!any.has_kid("enc"), "use=enc is not for verification");
    let allowed = build(Validation::new().with_algorithms([Algorithm::Rs256]))
        .await
        .expect("build");
    assert_eq!(allowed.verify(&t).expect("RS256 allowed").alg, Algorithm::Rs256);
    let other = build(Validation::new().with_algorithms([Algorithm::EdDsa]))
        .await
        .expect("build");
    assert_eq!(
        other.verify(&t).expect_err("refused"),
        TokenError::UnknownKid,
        "not for its key type"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_during_a_refresh_stops_the_task() {
    let server = Server::start().await;
    let key = ed25519();
    server.set(
        PATH,
        Reply::ok(jwks(&[jwk(&key, "k1")])).header("cache-control", "max-age=0"),
    );
    let v = verifier(&server, 40, 40, 60_000).await;
    // From now on each refresh takes 200 ms; the first starts 30 ms after the build.
    server.set(
        PATH,
        Reply::ok(jwks(&[jwk(&key, "k1")]))
            .header("cache-control", "max-age=0")
            .delay(ms(200)),
    );
    sleep_ms(80).await;
    assert_eq!(server.hits(PATH), 2, "a refresh is in flight");
    // The refresh that finishes after the stop must not schedule another.
    tokio::time::timeout(ms(2000), v.shutdown())
        .await
        .expect("shutdown returns once the in-flight refresh ends");
    let after = server.hits(PATH);
    sleep_ms(300).await;
    assert_eq!(server.hits(PATH), after);
}

/// Issue 20, item 7: a served `max-age` of 2^64 − 1 with the longest settings panicked
/// in the time arithmetic; the settings are capped at `MAX_DURATION_SETTING`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_max_age_with_the_longest_settings_does_not_overflow() {
    let server = Server::start().await;
    let key = ed25519();
    server.set(
        PATH,
        Reply::ok(jwks(&[jwk(&key, "k1")])).header("cache-control", "max-age=18446744073709551615"),
    );
    let v = JwksVerifier::builder()
        .jwks_url(server.url(PATH))
        .client(client())
        .max_refresh(Duration::MAX)
        .max_stale(Duration::MAX)
        .build()
        .await
        .expect("build");
    v.verify(&token(&key, "k1")).expect("verified");
    let debug = format!("{v:?}");
    let capped = format!("lifetime: {MAX_DURATION_SETTING:?}");
    assert!(debug.contains(&capped), "{debug}");
    v.refresh().await.expect("refreshed again");
    v.verify(&token(&key, "k1")).expect("verified");
    v.shutdown().await;
}
