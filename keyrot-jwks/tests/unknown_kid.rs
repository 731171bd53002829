//! Unknown kids against a real HTTP server: one fetch per cooldown, shared by concurrent
//! misses, and a flood of random kids bounded.

mod support;

use keyrot_core::TokenError;
use keyrot_core::TokenVerifier;
use keyrot_jwks::JwksVerifier;
use std::sync::Arc;
use support::*;

const PATH: &str = "/jwks";

async fn verifier(server: &Server, cooldown: u64) -> JwksVerifier {
    JwksVerifier::builder()
        .jwks_url(server.url(PATH))
        .client(client())
        .min_refresh(ms(cooldown))
        .max_refresh(ms(3_600_000))
        .build()
        .await
        .expect("build")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_kid_fetches_at_most_once_per_cooldown() {
    let server = Server::start().await;
    let (old, new, newer) = (ed25519(), ed25519(), ed25519());
    server.set(
        PATH,
        Reply::ok(jwks(&[jwk(&old, "old")])).header("cache-control", "max-age=3600"),
    );
    let v = verifier(&server, 300).await;
    server.set(
        PATH,
        Reply::ok(jwks(&[jwk(&old, "old"), jwk(&new, "new")])).header("cache-control", "max-age=3600"),
    );
    let t_new = token(&new, "new");
    assert_eq!(
        v.verify(&t_new).expect_err("refused"),
        TokenError::UnknownKid,
        "the sync path never fetches"
    );
    assert_eq!(server.hits(PATH), 1);
    TokenVerifier::verify(&v, &t_new)
        .await
        .expect("one fetch finds the new kid");
    assert_eq!(server.hits(PATH), 2);
    // Within the cooldown another unknown kid is refused at once, without a request.
    server.set(
        PATH,
        Reply::ok(jwks(&[jwk(&old, "old"), jwk(&new, "new"), jwk(&newer, "newer")]))
            .header("cache-control", "max-age=3600"),
    );
    let t_newer = token(&newer, "newer");
    let started = std::time::Instant::now();
    assert_eq!(
        v.verify_refreshing(&t_newer).await.expect_err("refused"),
        TokenError::UnknownKid
    );
    assert!(started.elapsed() < ms(100), "did not wait for the cooldown");
    assert_eq!(server.hits(PATH), 2);
    // A known kid never fetches.
    v.verify_refreshing(&t_new).await.expect("known");
    assert_eq!(server.hits(PATH), 2);
    sleep_ms(350).await;
    v.verify_refreshing(&t_newer)
        .await
        .expect("after the cooldown: fetched");
    assert_eq!(server.hits(PATH), 3);
    v.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_share_one_fetch() {
    let server = Server::start().await;
    let (old, new) = (ed25519(), ed25519());
    server.set(
        PATH,
        Reply::ok(jwks(&[jwk(&old, "old")])).header("cache-control", "max-age=3600"),
    );
    let v = verifier(&server, 5_000).await;
    server.set(
        PATH,
        Reply::ok(jwks(&[jwk(&old, "old"), jwk(&new, "new")]))
            .header("cache-control", "max-age=3600")
            .delay(ms(150)),
    );
    let t = Arc::new(token(&new, "new"));
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (v, t) = (v.clone(), t.clone());
            tokio::spawn(async move { v.verify_refreshing(&t).await })
        })
        .collect();
    for task in tasks {
        task.await
            .expect("task")
            .expect("every miss verifies after the shared fetch");
    }
    assert_eq!(server.hits(PATH), 2, "one initial fetch, one shared by 50 misses");
    v.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_random_kids_costs_at_most_one_request_per_cooldown() {
    let server = Server::start().await;
    let key = ed25519();
    server.set(
        PATH,
        Reply::ok(jwks(&[jwk(&key, "k")])).header("cache-control", "max-age=3600"),
    );
    let cooldown = 100;
    let v = verifier(&server, cooldown).await;
    let started = std::time::Instant::now();
    let flood = ms(800);
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let (v, key) = (v.clone(), key.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while started.elapsed() < flood {
                    let kid = format!("random-{t}-{n}");
                    assert_eq!(
                        v.verify_refreshing(&token(&key, &kid)).await.expect_err("refused"),
                        TokenError::UnknownKid
                    );
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut attempts = 0;
    for task in tasks {
        attempts += task.await.expect("task");
    }
    let elapsed = started.elapsed().as_millis() as u64;
    let fetches = server.hits(PATH) - 1;
    assert!(attempts > 100, "the flood was a flood: {attempts}");
    assert!(fetches >= 1, "the cooldown passed several times: misses fetch again");
    assert!(
        fetches as u64 <= elapsed / cooldown + 1,
        "{fetches} fetches in {elapsed} ms for {attempts} random kids"
    );
    v.verify(&token(&key, "k")).expect("the real key still verifies");
    v.shutdown().await;
}
