//! keyrot's metrics move with what happens, through the `metrics` facade into a real
//! Prometheus recorder: attempts by trigger and outcome, the snapshot's gauges (generation,
//! age of the Active key, next transition, integrity), refreshes, unknown kids,
//! verification failures by reason and JWKS responses by status. No kid is ever a label.

use chrono::{TimeDelta, TimeZone, Utc};
use keyrot_core::testing::metrics::value;
use keyrot_core::testing::token::{encode_header, sign};
use keyrot_core::{
    Algorithm, Clock, KeyRing, KeyState, ManualClock, MasterKey, MasterKeySealer, MemoryLock, MemoryStorage,
    PrivateKey, RequestContext, RingName, Rotator, RsaBits,
};
use keyrot_http::{BearerAuth, HttpRequest, jwks_response};
use metrics_exporter_prometheus::PrometheusBuilder;
use std::sync::Arc;

// Current-thread runtime: everything runs on the thread the local recorder is set on.
#[tokio::test]
async fn metrics_follow_the_ring() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let prom = recorder.handle();
    let _local = metrics::set_default_local_recorder(&recorder);
    keyrot_core::describe_metrics();

    let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).single().expect("time"));
    let storage = Arc::new(MemoryStorage::new());
    let sealer = Arc::new(MasterKeySealer::new(MasterKey::generate("mk1").expect("mk"), []).expect("sealer"));
    let ring = RingName::new("svc").expect("ring");
    let keyring = KeyRing::builder(ring.clone(), storage.clone(), sealer.clone())
        .with_clock(Arc::new(clock.clone()))
        .build()
        .await
        .expect("keyring");
    let rotator = Rotator::builder(
        ring,
        storage.clone(),
        Arc::new(MemoryLock::new(Arc::new(clock.clone()))),
        sealer,
    )
    .with_clock(Arc::new(clock.clone()))
    .with_keyring(keyring.clone())
    .build();
    let m = |name: &str, labels: &[(&str, &str)]| value(&prom.render(), name, labels);
    let svc = ("ring", "svc");

    rotator.init(RequestContext::actor("t")).await.expect("init");
    let bootstrapped = [svc, ("trigger", "init"), ("outcome", "bootstrapped")];
    assert_eq!(m("keyrot_rotation_attempts_total", &bootstrapped), Some(1.0));
    assert_eq!(m("keyrot_snapshot_generation", &[svc]), Some(1.0));
    assert_eq!(m("keyrot_active_key_age_seconds", &[svc]), Some(0.0));
    let next = m("keyrot_next_transition_seconds", &[svc]).expect("next transition");
    assert!(next > 0.0, "the next transition is ahead: {next}");

    // A tick later: the clock gauges are recomputed at the tick.
    clock.advance(TimeDelta::hours(1));
    rotator.tick().await.expect("tick");
    assert_eq!(m("keyrot_active_key_age_seconds", &[svc]), Some(3600.0));
    assert_eq!(m("keyrot_next_transition_seconds", &[svc]), Some(next - 3600.0));
    assert_eq!(
        m(
            "keyrot_rotation_attempts_total",
            &[svc, ("trigger", "tick"), ("outcome", "nothing_due")]
        ),
        Some(1.0)
    );

    let forced = rotator
        .force_rotate(RequestContext::actor("t"), "drill", false)
        .await
        .expect("forced");
    assert_eq!(
        m(
            "keyrot_rotation_attempts_total",
            &[svc, ("trigger", "force_rotate"), ("outcome", "rotated")]
        ),
        Some(1.0)
    );
    assert_eq!(m("keyrot_snapshot_generation", &[svc]), Some(2.0));
    assert_eq!(m("keyrot_active_key_age_seconds", &[svc]), Some(0.0));
    // Refused: too soon after the last forced rotation.
    let _ = rotator.force_rotate(RequestContext::actor("t"), "again", false).await;
    assert_eq!(
        m(
            "keyrot_rotation_attempts_total",
            &[svc, ("trigger", "force_rotate"), ("outcome", "rate_limited")]
        ),
        Some(1.0)
    );

    clock.advance(TimeDelta::seconds(30));
    keyring.refresh().await.expect("refresh");
    assert_eq!(m("keyrot_snapshot_refreshes_total", &[svc]), Some(1.0));
    assert_eq!(m("keyrot_snapshot_stale", &[svc]), Some(0.0));
    assert_eq!(m("keyrot_snapshot_refresh_age_seconds", &[svc]), Some(0.0));
    assert_eq!(
        m("keyrot_active_key_age_seconds", &[svc]),
        Some(30.0),
        "recomputed at the refresh"
    );

    // JWKS by status.
    let none: Vec<(&str, String)> = Vec::new();
    let r = jwks_response(
        &keyring,
        &HttpRequest {
            method: "GET",
            headers: &none,
        },
    );
    let etag = r.header("etag").expect("etag").to_owned();
    let cond = vec![("if-none-match", etag)];
    assert_eq!(
        jwks_response(
            &keyring,
            &HttpRequest {
                method: "GET",
                headers: &cond
            }
        )
        .status,
        304
    );
    assert_eq!(m("keyrot_jwks_responses_total", &[svc, ("status", "200")]), Some(1.0));
    assert_eq!(m("keyrot_jwks_responses_total", &[svc, ("status", "304")]), Some(1.0));

    // Verification failures by reason; an unknown kid starts one refresh.
    let auth = BearerAuth::new(keyring.clone());
    let bad = vec![("authorization", "Bearer a.b.c".to_owned())];
    assert!(auth.authenticate(&bad).await.is_err());
    assert_eq!(
        m("keyrot_verification_failures_total", &[("reason", "malformed")]),
        Some(1.0)
    );
    let stranger = PrivateKey::generate(Algorithm::EdDsa, RsaBits::B2048).expect("key");
    let now = clock.now().timestamp();
    let header = encode_header(stranger.algorithm(), "unknown-kid-x");
    let claims = serde_json::json!({ "exp": now + 600 });
    let token = sign(&stranger.signing_key(), &header, &claims, now, 3600).expect("sign");
    let unknown = vec![("authorization", format!("Bearer {token}"))];
    assert!(auth.authenticate(&unknown).await.is_err());
    assert_eq!(
        m("keyrot_verification_failures_total", &[("reason", "unknown_kid")]),
        Some(1.0)
    );
    assert_eq!(m("keyrot_unknown_kid_refreshes_total", &[svc]), Some(1.0));

    // A row edited in storage: the reloaded snapshot reports it.
    assert_eq!(m("keyrot_tampered_rows", &[svc]), Some(0.0));
    storage.tamper(&RingName::new("svc").expect("ring"), |raw| {
        let retiring = raw
            .keys
            .iter_mut()
            .find(|k| k.state == KeyState::Retiring)
            .expect("retiring key");
        retiring.expires_at = retiring.expires_at.map(|t| t + TimeDelta::days(365));
    });
    let _ = keyring.reload().await;
    assert_eq!(m("keyrot_tampered_rows", &[svc]), Some(1.0), "{}", prom.render());
    assert_eq!(m("keyrot_ring_intact", &[svc]), Some(0.0));

    // Labels are bounded: no kid appears anywhere in the exposition.
    let text = prom.render();
    for kid in [
        forced.new_kid.as_deref(),
        forced.old_kid.as_deref(),
        Some("unknown-kid-x"),
    ] {
        let kid = kid.expect("kid");
        assert!(!text.contains(kid), "kid {kid} in the metrics:\n{text}");
    }
    assert!(
        text.contains("# HELP keyrot_rotation_attempts_total Rotation attempts"),
        "{text}"
    );
}

/// Refusals beyond the per-actor budget are counted into a summary, not written one by
/// one: the aggregation counter says how many.
#[tokio::test]
async fn the_refusal_budget_aggregation_is_counted() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let prom = recorder.handle();
    let _local = metrics::set_default_local_recorder(&recorder);
    let storage = Arc::new(MemoryStorage::new());
    let sealer = Arc::new(MasterKeySealer::new(MasterKey::generate("mk1").expect("mk"), []).expect("sealer"));
    let ring = RingName::new("svc").expect("ring");
    let keyring = KeyRing::builder(ring.clone(), storage.clone(), sealer.clone())
        .build()
        .await
        .expect("keyring");
    let rotator = Rotator::builder(ring, storage, Arc::new(MemoryLock::default()), sealer)
        .with_keyring(keyring.clone())
        .build();
    rotator.init(RequestContext::actor("t")).await.expect("init");
    let endpoints = keyrot_http::HttpEndpoints::builder(keyring, rotator)
        .build()
        .expect("endpoints");
    let none: Vec<(&str, String)> = Vec::new();
    let req = HttpRequest {
        method: "POST",
        headers: &none,
    };
    let per_actor = keyrot_http::DEFAULT_REFUSALS_AUDITED_PER_ACTOR;
    for _ in 0..per_actor + 3 {
        let r = endpoints.rotate(&req, keyrot_http::RequestBody::Complete(b"")).await;
        assert_eq!(r.status, 401);
    }
    let aggregated = value(
        &prom.render(),
        "keyrot_ledger_records_aggregated_total",
        &[("reason", "refused")],
    );
    assert_eq!(aggregated, Some(3.0), "{}", prom.render());
}

/// The verified-token cache's hits, misses and evictions reach their counters at the next
/// refresh (or scheduler tick), each count once.
#[tokio::test]
async fn the_token_cache_counts_reach_the_counters() {
    use keyrot_core::{TokenCache, TokenCacheConfig};
    let recorder = PrometheusBuilder::new().build_recorder();
    let prom = recorder.handle();
    let _local = metrics::set_default_local_recorder(&recorder);
    let storage = Arc::new(MemoryStorage::new());
    let sealer = Arc::new(MasterKeySealer::new(MasterKey::generate("mk1").expect("mk"), []).expect("sealer"));
    let ring = RingName::new("cached").expect("ring");
    let keyring = KeyRing::builder(ring.clone(), storage.clone(), sealer.clone())
        .with_token_cache(TokenCache::new(TokenCacheConfig::new().with_max_entries(1)))
        .build()
        .await
        .expect("keyring");
    let rotator = Rotator::builder(ring, storage, Arc::new(MemoryLock::default()), sealer)
        .with_keyring(keyring.clone())
        .build();
    rotator.init(RequestContext::actor("t")).await.expect("init");
    let now = Utc::now().timestamp();
    let a = keyring
        .sign(&serde_json::json!({"sub": "a", "exp": now + 600}))
        .expect("sign");
    let b = keyring
        .sign(&serde_json::json!({"sub": "b", "exp": now + 600}))
        .expect("sign");
    for t in [&a, &a, &a, &b] {
        keyring.verify(t).expect("verifies");
    }
    let m = |name: &str| value(&prom.render(), name, &[("ring", "cached")]);
    keyring.refresh().await.expect("refresh");
    assert_eq!(m("keyrot_token_cache_hits_total"), Some(2.0));
    assert_eq!(m("keyrot_token_cache_misses_total"), Some(2.0));
    assert_eq!(
        m("keyrot_token_cache_evictions_total"),
        Some(1.0),
        "one entry: b pushed a out"
    );
    keyring.refresh().await.expect("refresh");
    assert_eq!(m("keyrot_token_cache_hits_total"), Some(2.0), "counted once");
}
