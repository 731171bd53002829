//! The remote-JWKS metrics move with real fetches: fetches by outcome, and the stale
//! count while the issuer fails past the set's lifetime.

mod support;

use keyrot_core::testing::metrics::value;
use keyrot_jwks::JwksVerifier;
use metrics_exporter_prometheus::PrometheusBuilder;
use support::*;

const PATH: &str = "/jwks";

// Current-thread runtime: every task (the verifier's refresher included) runs on the
// thread the local recorder is installed on.
#[tokio::test]
async fn fetches_by_outcome_and_stale_state() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let _local = metrics::set_default_local_recorder(&recorder);
    let server = Server::start().await;
    let key = ed25519();
    let body = jwks(&[jwk(&key, "k1")]);
    server.set(
        PATH,
        Reply::ok(body.clone())
            .header("etag", "\"v1\"")
            .header("cache-control", "max-age=0"),
    );
    let v = JwksVerifier::builder()
        .jwks_url(server.url(PATH))
        .client(client())
        .min_refresh(ms(100))
        .max_refresh(ms(100))
        .max_stale(ms(60_000))
        .build()
        .await
        .expect("build");
    let fetches = |outcome| {
        value(
            &handle.render(),
            "keyrot_remote_jwks_fetches_total",
            &[("outcome", outcome)],
        )
    };
    assert_eq!(fetches("updated"), Some(1.0), "{}", handle.render());
    server.set(
        PATH,
        Reply::status(304)
            .header("etag", "\"v1\"")
            .header("cache-control", "max-age=0"),
    );
    v.refresh().await.expect("revalidated");
    assert!(fetches("not_modified").is_some_and(|n| n >= 1.0), "{}", handle.render());
    let stale = || value(&handle.render(), "keyrot_remote_jwks_stale", &[]);

    server.set(PATH, Reply::status(500));
    sleep_ms(150).await;
    assert!(v.refresh().await.is_err());
    assert!(fetches("failed").is_some_and(|n| n >= 1.0));
    assert_eq!(stale(), Some(1.0), "past its lifetime and failing: stale");
    v.verify(&token(&key, "k1")).expect("the last good set still serves");

    server.set(PATH, Reply::ok(body).header("cache-control", "max-age=0"));
    v.refresh().await.expect("recovered");
    assert_eq!(stale(), Some(0.0), "recovered: no longer stale");
    v.shutdown().await;
}
