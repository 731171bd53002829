use super::endpoints::report_response_for_tests;
use super::*;
use crate::planner::Refusal;
use crate::rotator::RotationReport;
use crate::storage::Outcome;
use crate::{
    Clock as _, KeyRing, ManualClock, MasterKey, MasterKeySealer, MemoryLock, MemoryStorage, RequestContext, RingName,
    Rotator,
};
use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};

fn h(pairs: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    pairs.to_vec()
}

#[test]
fn bearer_token_parsing() {
    let t = |pairs: &[(&'static str, &'static str)]| {
        let headers = h(pairs);
        match bearer_token(&headers) {
            BearerToken::Present(s) => Ok(s.to_owned()),
            BearerToken::Absent => Err("absent"),
            BearerToken::Malformed => Err("malformed"),
        }
    };
    assert_eq!(t(&[]), Err("absent"));
    assert_eq!(
        t(&[("Authorization", "Bearer abc.def.ghi")]),
        Ok("abc.def.ghi".to_owned())
    );
    assert_eq!(
        t(&[("authorization", "bearer   abc")]),
        Ok("abc".to_owned()),
        "scheme is case-insensitive"
    );
    assert_eq!(t(&[("authorization", "Basic dXNlcg==")]), Err("absent"));
    assert_eq!(t(&[("authorization", "Bearerabc")]), Err("absent"));
    assert_eq!(t(&[("authorization", "Bearer")]), Err("malformed"));
    assert_eq!(t(&[("authorization", "Bearer ")]), Err("malformed"));
    assert_eq!(t(&[("authorization", "Bearer a b")]), Err("malformed"));
    assert_eq!(t(&[("authorization", "Bearer a\"b")]), Err("malformed"));
    assert_eq!(
        t(&[("authorization", "Bearer a"), ("authorization", "Bearer a")]),
        Err("malformed")
    );
}

#[test]
fn rejections_follow_rfc_6750_and_say_nothing_more() {
    let missing = AuthRejection::MissingToken.to_response();
    assert_eq!(missing.status, 401);
    assert_eq!(missing.header("www-authenticate"), Some("Bearer"));
    let expired = AuthRejection::InvalidToken(Some(crate::TokenError::Expired)).to_response();
    let bad_sig = AuthRejection::InvalidToken(Some(crate::TokenError::BadSignature)).to_response();
    assert_eq!(expired, bad_sig, "the client cannot tell why");
    assert_eq!(
        expired.header("www-authenticate"),
        Some("Bearer error=\"invalid_token\"")
    );
    let scope = AuthRejection::InsufficientScope.to_response();
    assert_eq!(
        (scope.status, scope.header("www-authenticate")),
        (403, Some("Bearer error=\"insufficient_scope\""))
    );
    let body: Value = serde_json::from_slice(scope.body.as_bytes()).expect("json");
    assert_eq!(body["error"], "insufficient_scope");
}

#[test]
fn scopes_come_from_the_scope_claim_only() {
    let m = |v: Value| v.as_object().cloned().expect("object");
    assert!(has_scope(&m(json!({"scope": "a b c"})), "b"));
    assert!(!has_scope(&m(json!({"scope": "ab c"})), "a"));
    assert!(!has_scope(&m(json!({"scp": ["x", "y"]})), "y"), "scp is not read");
    assert!(!has_scope(&m(json!({"scp": "x y"})), "x"), "scp is not read");
    assert!(!has_scope(&m(json!({"scope": ["b"]})), "b"), "scope must be a string");
    assert!(!has_scope(&m(json!({})), "b"));
}

#[test]
fn request_ids_are_validated() {
    assert_eq!(request_id(&h(&[("X-Request-Id", "abc-123")])), "abc-123");
    let generated = request_id(&h(&[("x-request-id", "has space")]));
    assert_eq!(generated.len(), 32);
    assert_ne!(generated, "has space");
    let long: &'static str = Box::leak("a".repeat(129).into_boxed_str());
    assert_ne!(request_id(&h(&[("x-request-id", long)])), long);
}

fn report(outcome: Outcome) -> RotationReport {
    RotationReport {
        outcome,
        ring: "r".into(),
        generation: 7,
        forced: false,
        old_kid: Some("old".into()),
        old_fingerprint: Some("old-fp".into()),
        new_kid: None,
        new_fingerprint: None,
        activates_at: None,
        retry_after_ms: None,
        refusal: None,
        detail: None,
        at: DateTime::from_timestamp(1_900_000_000, 0).expect("time"),
        replayed: false,
    }
}

#[test]
fn outcomes_map_to_status_codes() {
    let status = |r: &RotationReport| report_response_for_tests(r).status;
    assert_eq!(status(&report(Outcome::Rotated)), 200);
    assert_eq!(status(&report(Outcome::Bootstrapped)), 200);
    assert_eq!(status(&report(Outcome::Scheduled)), 202);
    assert_eq!(status(&report(Outcome::AlreadyScheduled)), 202);
    let busy = report_response_for_tests(&report(Outcome::LockBusy));
    assert_eq!((busy.status, busy.header("retry-after")), (409, Some("1")));
    let lost = report_response_for_tests(&report(Outcome::LostRace));
    assert_eq!(lost.status, 409);
    let body: Value = serde_json::from_slice(lost.body.as_bytes()).expect("json");
    assert_eq!(
        (body["error"].as_str(), body["generation"].as_u64()),
        (Some("lost_race"), Some(7))
    );
    let mut refused = report(Outcome::Refused);
    refused.refusal = Some(Refusal::ReasonRequired);
    assert_eq!(status(&refused), 400);
    refused.refusal = Some(Refusal::NotInitialised);
    assert_eq!(status(&refused), 409);
    let mut limited = report(Outcome::RateLimited);
    limited.retry_after_ms = Some(1_001);
    let r = report_response_for_tests(&limited);
    assert_eq!((r.status, r.header("retry-after")), (429, Some("2")), "rounded up");
    limited.retry_after_ms = Some(0);
    assert_eq!(
        report_response_for_tests(&limited).header("retry-after"),
        Some("1"),
        "at least 1"
    );
}

#[test]
fn a_replay_has_the_same_body_and_a_marker_header() {
    let first = report(Outcome::Scheduled);
    let mut again = first.clone();
    again.replayed = true;
    let (a, b) = (report_response_for_tests(&first), report_response_for_tests(&again));
    assert_eq!(a.body, b.body);
    assert_eq!(
        (
            a.header(IDEMPOTENT_REPLAYED_HEADER),
            b.header(IDEMPOTENT_REPLAYED_HEADER)
        ),
        (None, Some("true"))
    );
}

fn key(kid: &str, state: crate::KeyState, created: DateTime<Utc>) -> crate::KeyStatus {
    crate::KeyStatus {
        kid: kid.into(),
        alg: crate::Algorithm::EdDsa,
        state,
        origin: crate::KeyOrigin::Rotation,
        forced: false,
        fingerprint: kid.into(),
        created_at: created,
        activate_at: None,
        activated_at: None,
        retired_at: None,
        expires_at: None,
        expired_at: None,
        revoked_at: None,
        revoke_reason: None,
        purged_at: None,
        tampered: None,
    }
}

#[test]
fn next_transition_is_the_earliest_due_change() {
    use crate::KeyState::*;
    let p = crate::Policy::default();
    let t0 = DateTime::from_timestamp(1_900_000_000, 0).expect("time");
    let mut active = key("a", Active, t0);
    active.activated_at = Some(t0);
    let n = next_transition(std::slice::from_ref(&active), &p).expect("next");
    assert_eq!(
        (n.action, n.at),
        (TransitionAction::PublishNext, t0 + TimeDelta::days(6))
    );

    let mut pending = key("p", Pending, t0 + TimeDelta::hours(1));
    pending.activate_at = Some(t0 + TimeDelta::hours(25));
    let n = next_transition(&[active.clone(), pending.clone()], &p).expect("next");
    assert_eq!((n.action, n.kid.as_deref()), (TransitionAction::Activate, Some("p")));
    assert_eq!(n.at, t0 + TimeDelta::days(6), "not before min_interval");

    let mut retiring = key("r", Retiring, t0 - TimeDelta::days(8));
    retiring.expires_at = Some(t0 + TimeDelta::days(2));
    let n = next_transition(&[active, pending, retiring], &p).expect("next");
    assert_eq!((n.action, n.kid.as_deref()), (TransitionAction::Expire, Some("r")));
}

/// A subscriber that writes every span and event field into one string.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<String>>);

struct Visit<'a>(&'a mut String);

impl tracing::field::Visit for Visit<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write as _;
        let _ = write!(self.0, " {}={:?}", field.name(), value);
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        span.record(&mut Visit(&mut s));
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        values.record(&mut Visit(&mut s));
    }
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        s.push('\n');
        event.record(&mut Visit(&mut s));
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

async fn fixture(clock: &ManualClock) -> HttpEndpoints {
    let storage = Arc::new(MemoryStorage::new());
    let sealer = Arc::new(MasterKeySealer::new(MasterKey::generate("mk").expect("mk"), []).expect("sealer"));
    let ring = RingName::new("t").expect("ring");
    let keyring = KeyRing::builder(ring.clone(), storage.clone(), sealer.clone())
        .with_clock(Arc::new(clock.clone()))
        .build()
        .await
        .expect("keyring");
    let rotator = Rotator::builder(
        ring,
        storage,
        Arc::new(MemoryLock::new(Arc::new(clock.clone()))),
        sealer,
    )
    .with_clock(Arc::new(clock.clone()))
    .with_keyring(keyring.clone())
    .build();
    rotator.init(RequestContext::actor("t")).await.expect("init");
    HttpEndpoints::builder(keyring, rotator).build().expect("endpoints")
}

#[tokio::test]
async fn the_authorization_header_is_never_logged() {
    let capture = Capture::default();
    let _guard = tracing::subscriber::set_default(capture.clone());
    // Tests run in parallel threads: a callsite first hit on a thread without a subscriber
    // caches "never"; rebuild the cache now that this thread has one.
    tracing::callsite::rebuild_interest_cache();
    let clock = ManualClock::new(DateTime::from_timestamp(1_900_000_000, 0).expect("time"));
    let e = fixture(&clock).await;
    let now = clock.now().timestamp();
    let sign = |scope: &str, sub: &str| {
        e.keyring()
            .sign(&json!({"sub": sub, "client_id": "svc", "scope": scope, "iat": now, "exp": now + 60}))
            .expect("sign")
    };
    let tokens = [
        sign("admin.force-rotate-keys", "svc"),
        sign("service.rotate-keys", "svc"),
        sign("service.rotate-keys", "user"),
        sign("other", "svc"),
        "eyJhbGciOiJFZERTQSIsImtpZCI6Im5vcGUifQ.e30.c2ln".to_owned(),
    ];
    for t in &tokens {
        let headers = vec![
            ("authorization", format!("Bearer {t}")),
            ("content-type", "application/json".to_owned()),
        ];
        let req = HttpRequest {
            method: "POST",
            headers: &headers,
        };
        let _ = e
            .rotate(&req, RequestBody::Complete(br#"{"force":true,"reason":"log test"}"#))
            .await;
        let _ = e.rotate(&req, RequestBody::Complete(b"")).await;
        let get = HttpRequest {
            method: "GET",
            headers: &headers,
        };
        let _ = e.status(&get).await;
        let _ = BearerAuth::new(e.keyring().clone()).authenticate(&headers).await;
    }
    let logged = capture.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert!(logged.contains("refused"), "the capture works: {logged}");
    assert!(logged.contains("rotated"), "the capture saw the rotation: {logged}");
    for t in &tokens {
        let signature = t.rsplit('.').next().unwrap_or(t);
        assert!(!logged.contains(signature), "a token was logged: {logged}");
    }
    assert!(
        !logged.contains("Bearer "),
        "an Authorization header was logged: {logged}"
    );
}

#[tokio::test]
async fn body_parsing_is_strict() {
    let clock = ManualClock::new(DateTime::from_timestamp(1_900_000_000, 0).expect("time"));
    let e = fixture(&clock).await;
    let now = clock.now().timestamp();
    let token = e
        .keyring()
        .sign(
            &json!({"sub": "svc", "client_id": "svc", "scope": "admin.force-rotate-keys", "iat": now, "exp": now + 60}),
        )
        .expect("sign");
    let headers = vec![
        ("authorization", format!("Bearer {token}")),
        ("content-type", "application/json".to_owned()),
    ];
    let req = HttpRequest {
        method: "POST",
        headers: &headers,
    };
    for body in [
        &br#"[true, "x"]"#[..],
        br#"{"force":true,"force":false,"reason":"x"}"#,
        br#"{"force":1}"#,
    ] {
        let r = e.rotate(&req, RequestBody::Complete(body)).await;
        assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(body));
    }
    assert_eq!(e.rotate(&req, RequestBody::TooLarge).await.status, 413);
    assert_eq!(e.rotate(&req, RequestBody::Unreadable).await.status, 400);
    let ok = e
        .rotate(&req, RequestBody::Complete(br#"{"force":true,"reason":"strict"}"#))
        .await;
    assert_eq!(ok.status, 200);
    assert!(ok.header(REQUEST_ID_HEADER).is_some());
}

#[tokio::test]
async fn the_builder_refuses_mismatched_rings() {
    let clock = ManualClock::new(Utc::now());
    let e = fixture(&clock).await;
    let other = Rotator::builder(
        RingName::new("other").expect("ring"),
        Arc::new(MemoryStorage::new()),
        Arc::new(MemoryLock::default()),
        Arc::new(MasterKeySealer::new(MasterKey::generate("mk").expect("mk"), []).expect("sealer")),
    )
    .build();
    let err = HttpEndpoints::builder(e.keyring().clone(), other).build().err();
    assert!(matches!(err, Some(HttpConfigError::RingMismatch { .. })), "{err:?}");
}

#[test]
fn any_token_rule_still_needs_a_client_id() {
    use super::ServiceTokenRule;
    let m = |v: Value| v.as_object().cloned().expect("object");
    assert!(ServiceTokenRule::AnyToken.is_service_token(&m(json!({"sub": "u", "client_id": "web"}))));
    assert!(!ServiceTokenRule::AnyToken.is_service_token(&m(json!({"sub": "alice"}))));
    assert!(!ServiceTokenRule::AnyToken.is_service_token(&m(json!({"sub": "alice", "client_id": ""}))));
}

#[tokio::test]
async fn anonymous_refusals_are_audited_within_a_budget_per_minute() {
    let clock = ManualClock::new(DateTime::from_timestamp(1_900_000_000, 0).expect("time"));
    let e = fixture(&clock).await;
    let ring = e.keyring().ring().clone();
    let count_anonymous = || async {
        e.keyring()
            .storage()
            .audit_log(&ring, crate::AuditQuery { limit: 10_000 })
            .await
            .expect("audit")
            .iter()
            .filter(|r| r.actor == "anonymous")
            .count()
    };
    let no_token: Vec<(&'static str, String)> = Vec::new();
    let req = HttpRequest {
        method: "POST",
        headers: &no_token,
    };
    for _ in 0..(super::endpoints::ANONYMOUS_AUDIT_PER_MINUTE + 10) {
        assert_eq!(e.rotate(&req, RequestBody::Complete(b"")).await.status, 401);
    }
    assert_eq!(
        count_anonymous().await,
        super::endpoints::ANONYMOUS_AUDIT_PER_MINUTE as usize
    );
    // A new minute, a new budget; authenticated refusals are always audited.
    clock.advance(chrono::TimeDelta::seconds(60));
    assert_eq!(e.rotate(&req, RequestBody::Complete(b"")).await.status, 401);
    assert_eq!(
        count_anonymous().await,
        super::endpoints::ANONYMOUS_AUDIT_PER_MINUTE as usize + 1
    );
}
