//! A failing issuer: the last good set keeps serving up to `max_stale`, then
//! verification fails closed; a bad document is refused whole; sizes and times are
//! bounded.

mod support;

use keyrot_core::{KeySetError, TokenError};
use keyrot_jwks::{JwksError, JwksVerifier};
use serde_json::json;
use support::*;

const PATH: &str = "/jwks";
const MAX_BYTES: usize = 4096;

struct Setup {
    server: Server,
    v: JwksVerifier,
    t_old: String,
    t_new: String,
    good: Vec<u8>,
    new: serde_json::Value,
    old: serde_json::Value,
}

/// A verifier with a 100 ms lifetime, 400 ms of staleness, a 150 ms timeout and a
/// 4 KiB limit; `good` is the next document, with the old key and a new one.
async fn setup() -> Setup {
    let server = Server::start().await;
    let (old_key, new_key) = (ed25519(), ed25519());
    let (old, new) = (jwk(&old_key, "old"), jwk(&new_key, "new"));
    server.set(
        PATH,
        Reply::ok(jwks(std::slice::from_ref(&old))).header("cache-control", "max-age=0"),
    );
    let v = JwksVerifier::builder()
        .jwks_url(server.url(PATH))
        .client(client())
        .min_refresh(ms(100))
        .max_refresh(ms(100))
        .max_stale(ms(400))
        .timeout(ms(150))
        .max_response_bytes(MAX_BYTES)
        .build()
        .await
        .expect("build");
    Setup {
        t_old: token(&old_key, "old"),
        t_new: token(&new_key, "new"),
        good: jwks(&[old.clone(), new.clone()]),
        server,
        v,
        new,
        old,
    }
}

/// With `bad` served from now on: the old set serves (nothing of `bad` applied), then
/// fails closed once lifetime + max_stale have passed, then recovers when the issuer does.
async fn stale_then_closed(s: Setup, bad: Reply, recovers: bool) {
    let started = std::time::Instant::now();
    s.server.set(PATH, bad);
    // A refresh of the bad answer, asked for rather than waited for: it fails.
    s.v.refresh().await.expect_err("the bad answer is refused");
    wait_until("the last good set's 100 ms lifetime to pass", ms(1000), || {
        started.elapsed() >= ms(100)
    })
    .await;
    s.v.verify(&s.t_old).expect("the last good set serves while stale");
    assert_eq!(
        s.v.verify(&s.t_new).expect_err("refused"),
        TokenError::UnknownKid,
        "nothing applied in part"
    );
    wait_until("the verifier to fail closed", ms(3000), || {
        s.v.verify(&s.t_old).err() == Some(TokenError::KeysUnavailable)
    })
    .await;
    // The last good set was fetched at most one 75 ms refresh period before `started`.
    let closed_after = started.elapsed();
    assert!(
        closed_after >= ms(350),
        "served stale for max_stale first: {closed_after:?}"
    );
    assert_eq!(
        s.v.verify(&s.t_old).expect_err("refused"),
        TokenError::KeysUnavailable,
        "fails closed"
    );
    assert_eq!(s.v.verify(&s.t_new).expect_err("refused"), TokenError::KeysUnavailable);
    if recovers {
        s.server
            .set(PATH, Reply::ok(s.good.clone()).header("cache-control", "max-age=0"));
        wait_until("a refresh of the good answer", ms(3000), || {
            s.v.verify(&s.t_new).is_ok()
        })
        .await;
        s.v.verify(&s.t_old).expect("recovered");
        s.v.verify(&s.t_new).expect("recovered with the new key");
    }
    s.v.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_issuer() {
    let s = setup().await;
    s.server.stop();
    let bad = Reply::ok(s.good.clone());
    stale_then_closed(s, bad, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx() {
    let s = setup().await;
    stale_then_closed(s, Reply::status(503), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout() {
    let s = setup().await;
    let bad = Reply::ok(s.good.clone()).delay(ms(400));
    stale_then_closed(s, bad, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_jwks() {
    let s = setup().await;
    let body = serde_json::to_vec(&json!({"keys": [s.old, s.new], "padding": "x".repeat(MAX_BYTES)})).expect("json");
    stale_then_closed(s, Reply::ok(body), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_kids() {
    let s = setup().await;
    let dup = jwk(&ed25519(), "new");
    let bad = Reply::ok(jwks(&[s.old.clone(), s.new.clone(), dup]));
    stale_then_closed(s, bad, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_key() {
    let s = setup().await;
    let mut broken = jwk(&ed25519(), "broken");
    broken["x"] = json!("AAAA");
    let bad = Reply::ok(jwks(&[s.old.clone(), s.new.clone(), broken]));
    stale_then_closed(s, bad, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_member() {
    let s = setup().await;
    let mut leaked = s.new.clone();
    leaked["d"] = json!("c2VjcmV0");
    let bad = Reply::ok(jwks(&[s.old.clone(), leaked]));
    stale_then_closed(s, bad, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json() {
    let s = setup().await;
    stale_then_closed(s, Reply::ok(b"{\"keys\": [".to_vec()), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_fetch_must_succeed() {
    let server = Server::start().await;
    let key = ed25519();
    let build = || {
        JwksVerifier::builder()
            .jwks_url(server.url(PATH))
            .client(client())
            .timeout(ms(150))
            .max_response_bytes(MAX_BYTES)
            .build()
    };
    server.set(PATH, Reply::status(500));
    assert!(matches!(build().await, Err(JwksError::Status { status: 500, .. })));
    server.set(PATH, Reply::ok(jwks(&[jwk(&key, "k")])).delay(ms(400)));
    assert!(matches!(build().await, Err(JwksError::Timeout { .. })));
    let big = serde_json::to_vec(&json!({"keys": [], "padding": "x".repeat(MAX_BYTES)})).expect("json");
    server.set(PATH, Reply::ok(big));
    assert!(matches!(build().await, Err(JwksError::TooLarge { max: MAX_BYTES, .. })));
    server.set(PATH, Reply::ok(jwks(&[jwk(&key, "k"), jwk(&ed25519(), "k")])));
    let e = build().await.expect_err("refused");
    assert!(
        matches!(e, JwksError::KeySet(KeySetError::DuplicateKid { .. })),
        "{e:?}"
    );
    let chain = keyrot_core::ErrorChain(&e).to_string();
    assert_eq!(
        chain,
        "the JWKS document is refused: JWKS keys #0 and #1 have the same kid"
    );
    server.stop();
    let e = build().await.expect_err("refused");
    assert!(matches!(e, JwksError::Request { .. }), "{e:?}");
    let insecure = JwksVerifier::builder().jwks_url("http://id.example/jwks").build().await;
    assert!(matches!(insecure, Err(JwksError::InsecureUrl { .. })));
    assert!(matches!(
        JwksVerifier::builder().build().await,
        Err(JwksError::NoSource)
    ));
    let inverted = JwksVerifier::builder()
        .jwks_url(server.url(PATH))
        .min_refresh(ms(200))
        .max_refresh(ms(100))
        .build()
        .await;
    assert!(matches!(inverted, Err(JwksError::Config(_))));
}
