//! A forced rotation that revokes the old key states when that key is refused everywhere:
//! in the report, in the HTTP answer and in the audit record.

use chrono::{TimeDelta, TimeZone, Utc};
use keyrot_core::{
    AuditQuery, Clock, KeyRing, ManualClock, MasterKey, MasterKeySealer, MemoryLock, MemoryStorage, RequestContext,
    RingName, Rotator, Storage,
};
use keyrot_http::{HttpEndpoints, HttpRequest, RequestBody};
use std::sync::Arc;
use std::time::Duration;

struct Setup {
    clock: ManualClock,
    storage: Arc<MemoryStorage>,
    keyring: KeyRing,
    rotator: Rotator,
}

async fn setup() -> Setup {
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
    .with_propagation(Duration::from_secs(5))
    .build();
    rotator.init(RequestContext::actor("t")).await.expect("init");
    Setup {
        clock,
        storage,
        keyring,
        rotator,
    }
}

#[tokio::test]
async fn the_report_and_the_audit_record_state_when_the_old_key_is_refused() {
    let s = setup().await;
    let old = s.keyring.snapshot().active_kid().expect("active").to_owned();
    let r = s
        .rotator
        .force_rotate(RequestContext::actor("oncall"), "INC-1 leak", true)
        .await
        .expect("forced");
    let b = r.revocation.as_ref().expect("a revocation states its blast radius");
    assert_eq!(b.kid, old);
    assert_eq!(b.propagation_secs, 5);
    assert_eq!(b.keyrot_instances_by, r.at + TimeDelta::seconds(5));
    let max_age = s.rotator.policy().jwks_max_age();
    assert_eq!(b.max_age_secs, max_age.num_seconds() as u64);
    assert_eq!(b.jwks_verifiers_by, r.at + max_age);
    assert!(
        b.summary.contains("cache the JWKS longer than its max-age"),
        "{}",
        b.summary
    );
    let ring = RingName::new("svc").expect("ring");
    let audit = s
        .storage
        .audit_log(&ring, AuditQuery { limit: 1 })
        .await
        .expect("audit");
    let detail = audit[0].detail.as_deref().expect("detail");
    assert!(
        detail.contains(&b.summary),
        "the audit record carries the same figure: {detail}"
    );

    // A forced rotation that keeps the old key revokes nothing and states nothing.
    s.clock.advance(TimeDelta::hours(2));
    let kept = s
        .rotator
        .force_rotate(RequestContext::actor("oncall"), "drill", false)
        .await
        .expect("forced");
    assert!(kept.revocation.is_none());
}

#[tokio::test]
async fn the_http_answer_states_it() {
    let s = setup().await;
    let endpoints = HttpEndpoints::builder(s.keyring.clone(), s.rotator.clone())
        .build()
        .expect("endpoints");
    let now = s.clock.now().timestamp();
    let claims = serde_json::json!({"sub": "bg", "client_id": "bg", "scope": "admin.force-rotate-keys", "iat": now, "exp": now + 60});
    let token = s.keyring.sign(&claims).expect("sign");
    let headers = vec![
        ("authorization", format!("Bearer {token}")),
        ("content-type", "application/json".to_owned()),
    ];
    let req = HttpRequest {
        method: "POST",
        headers: &headers,
    };
    let body = br#"{"force":true,"reason":"INC-2 leak","revoke_old":true}"#;
    let r = endpoints.rotate(&req, RequestBody::Complete(body)).await;
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_slice(r.body.as_bytes()).expect("json");
    assert_eq!(v["revocation"]["kid"], v["old_kid"], "{v}");
    assert_eq!(v["revocation"]["propagation_secs"], 5, "{v}");
    assert!(v["revocation"]["jwks_verifiers_by"].is_string(), "{v}");
}
