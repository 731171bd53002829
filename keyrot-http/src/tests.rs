use super::endpoints::report_response_for_tests;
use super::*;
use chrono::{DateTime, TimeDelta, Utc};
use keyrot_core::Outcome;
use keyrot_core::Refusal;
use keyrot_core::RotationReport;
use keyrot_core::TokenVerifier;
use keyrot_core::{
    Clock as _, KeyRing, ManualClock, MasterKey, MasterKeySealer, MemoryLock, MemoryStorage, RequestContext, RingName,
    Rotator,
};
use serde_json::{Value, json};
use std::sync::Arc;

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
    let expired = AuthRejection::InvalidToken(Some(keyrot_core::TokenError::Expired)).to_response();
    let bad_sig = AuthRejection::InvalidToken(Some(keyrot_core::TokenError::BadSignature)).to_response();
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
        revocation: None,
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

fn key(kid: &str, state: keyrot_core::KeyState, created: DateTime<Utc>) -> keyrot_core::KeyStatus {
    keyrot_core::KeyStatus {
        kid: kid.into(),
        alg: keyrot_core::Algorithm::EdDsa,
        state,
        origin: keyrot_core::KeyOrigin::Rotation,
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
    use keyrot_core::KeyState::*;
    let p = keyrot_core::Policy::default();
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

#[test]
fn next_transition_ignores_tampered_rows_and_never_panics() {
    use keyrot_core::KeyState::*;
    let p = keyrot_core::Policy::default();
    let max = DateTime::<Utc>::MAX_UTC;
    let near = max - TimeDelta::hours(1);
    let t0 = DateTime::from_timestamp(1_900_000_000, 0).expect("time");
    let tampered = |kid: &str, state| {
        let mut k = key(kid, state, max);
        k.activate_at = Some(max);
        k.activated_at = Some(max);
        k.expires_at = Some(t0 - TimeDelta::days(365));
        k.expired_at = Some(max);
        k.tampered = Some("the row's MAC does not match".into());
        k
    };
    // Rows written by someone with database access: ignored whatever they say (one even
    // claims an expiry earlier than anything real).
    let forged = [
        tampered("x-pending", Pending),
        tampered("x-active", Active),
        tampered("x-retiring", Retiring),
        tampered("x-expired", Expired),
    ];
    assert_eq!(next_transition(&forged, &p), None);

    // Honest rows near the end of time: sums that do not fit are left out, no panic.
    let mut active = key("a", Active, near);
    active.activated_at = Some(near);
    let mut pending = key("p", Pending, near);
    pending.activate_at = Some(max);
    let mut expired = key("e", Expired, near);
    expired.expired_at = Some(near);
    let mut keys = vec![active, pending, expired];
    keys.extend(forged.iter().cloned());
    assert_eq!(next_transition(&keys, &p), None, "nothing representable is due");
    let mut retiring = key("r", Retiring, near);
    retiring.expires_at = Some(max);
    keys.push(retiring);
    let n = next_transition(&keys, &p).expect("next");
    assert_eq!(
        (n.action, n.kid.as_deref(), n.at),
        (TransitionAction::Expire, Some("r"), max)
    );
    // Only an Active key near the end: publishing the next does not fit either.
    let mut active = key("a", Active, near);
    active.activated_at = None;
    assert_eq!(next_transition(&[active], &p), None);
}

async fn fixture(clock: &ManualClock) -> HttpEndpoints {
    fixture_with(clock, |_, b| b).await
}

/// The endpoints of a fresh, initialised ring, configured by `configure`.
async fn fixture_with(
    clock: &ManualClock,
    configure: impl FnOnce(&KeyRing, HttpEndpointsBuilder) -> HttpEndpointsBuilder,
) -> HttpEndpoints {
    fixture_on(Arc::new(MemoryStorage::new()), clock, configure).await
}

/// [`fixture_with`] on `storage`.
async fn fixture_on(
    storage: Arc<MemoryStorage>,
    clock: &ManualClock,
    configure: impl FnOnce(&KeyRing, HttpEndpointsBuilder) -> HttpEndpointsBuilder,
) -> HttpEndpoints {
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
    configure(&keyring, HttpEndpoints::builder(keyring.clone(), rotator))
        .build()
        .expect("endpoints")
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

/// The whole ledger of the fixture's ring, oldest first.
async fn ledger(e: &HttpEndpoints) -> Vec<keyrot_core::AuditRecord> {
    let mut log = e
        .keyring()
        .storage()
        .audit_log(e.keyring().ring(), keyrot_core::AuditQuery { limit: usize::MAX })
        .await
        .expect("audit");
    log.reverse();
    log
}

fn by_actor<'a>(log: &'a [keyrot_core::AuditRecord], actor: &str) -> Vec<&'a keyrot_core::AuditRecord> {
    log.iter().filter(|r| r.actor == actor).collect()
}

/// A `POST` rotation request with `headers`, empty body.
async fn post(e: &HttpEndpoints, headers: &dyn HeaderSource) -> HttpResponse {
    let req = HttpRequest {
        method: "POST",
        headers,
    };
    e.rotate(&req, RequestBody::Complete(b"")).await
}

fn bearer(token: &str) -> Vec<(&'static str, String)> {
    vec![("authorization", format!("Bearer {token}"))]
}

/// A user token (`sub ≠ client_id`) that carries the rotation scope: valid, but refused
/// with 403 — what anyone with a demo login could send in a loop.
fn user_token(e: &HttpEndpoints, clock: &ManualClock, client_id: &str) -> String {
    let now = clock.now().timestamp();
    e.keyring()
        .sign(&json!({"sub": "alice", "client_id": client_id, "scope": "service.rotate-keys", "iat": now, "exp": now + 3600}))
        .expect("sign")
}

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_900_000_000, 0).expect("time")
}

#[tokio::test]
async fn a_flood_from_one_user_token_writes_the_budget_and_one_summary() {
    let clock = ManualClock::new(t0());
    let e = fixture(&clock).await;
    let headers = bearer(&user_token(&e, &clock, "web-app"));
    let before = ledger(&e).await.len();
    for _ in 0..1200 {
        assert_eq!(post(&e, &headers).await.status, 403);
        clock.advance(TimeDelta::milliseconds(40));
    }
    let log = ledger(&e).await;
    assert_eq!(
        log.len() - before,
        DEFAULT_REFUSALS_AUDITED_PER_ACTOR as usize,
        "only the per-actor budget is written during the interval"
    );
    // The interval (60 s from the first refusal) ends; the next request, from anyone,
    // writes the summary first.
    clock.set(t0() + TimeDelta::seconds(60));
    let scheduler = {
        let now = clock.now().timestamp();
        e.keyring()
            .sign(
                &json!({"sub": "svc", "client_id": "svc", "scope": "service.rotate-keys", "iat": now, "exp": now + 60}),
            )
            .expect("sign")
    };
    assert_eq!(post(&e, &bearer(&scheduler)).await.status, 429, "too soon after init");
    let log = ledger(&e).await;
    let refused = by_actor(&log, "web-app");
    assert_eq!(
        refused.len(),
        DEFAULT_REFUSALS_AUDITED_PER_ACTOR as usize + 1,
        "budget + 1"
    );
    let summary = refused.last().expect("summary");
    assert_eq!(
        summary.detail.as_deref(),
        Some("1190 refused attempts by actor web-app between 2030-03-17T17:46:40.400Z and 2030-03-17T17:47:27.960Z")
    );
    assert_eq!(
        (summary.outcome, summary.trigger, summary.forced, summary.at),
        (
            Outcome::Refused,
            keyrot_core::TriggerKind::Rotate,
            false,
            t0() + TimeDelta::seconds(60)
        )
    );
    assert_eq!((summary.request_id.as_deref(), summary.generation), (None, 1));
    let last = log.last().expect("records");
    assert_eq!(
        (last.actor.as_str(), last.outcome),
        ("svc", Outcome::RateLimited),
        "the summary comes before the request that closed the interval"
    );
    assert_eq!(e.flush_refusal_summaries().await, 0, "nothing left to summarise");
}

#[tokio::test]
async fn actors_have_budgets_of_their_own_and_anonymous_is_one_actor() {
    let clock = ManualClock::new(t0());
    let e = fixture(&clock).await;
    let alice = bearer(&user_token(&e, &clock, "web-app"));
    let bob = bearer(&user_token(&e, &clock, "mobile-app"));
    let anonymous: Vec<(&'static str, String)> = Vec::new();
    let garbage = bearer("not.a.token");
    for _ in 0..15 {
        assert_eq!(post(&e, &alice).await.status, 403);
        assert_eq!(post(&e, &bob).await.status, 403);
        assert_eq!(post(&e, &anonymous).await.status, 401);
        assert_eq!(post(&e, &garbage).await.status, 401);
    }
    let log = ledger(&e).await;
    let per_actor = DEFAULT_REFUSALS_AUDITED_PER_ACTOR as usize;
    assert_eq!(by_actor(&log, "web-app").len(), per_actor);
    assert_eq!(by_actor(&log, "mobile-app").len(), per_actor);
    assert_eq!(
        by_actor(&log, ANONYMOUS_ACTOR).len(),
        per_actor,
        "no token and a bad token are the same actor"
    );
    // A flush (shutdown, a timer) writes the summaries now.
    assert_eq!(e.flush_refusal_summaries().await, 3);
    let log = ledger(&e).await;
    let details: Vec<&str> = log[log.len() - 3..]
        .iter()
        .filter_map(|r| r.detail.as_deref())
        .collect();
    let at = "2030-03-17T17:46:40.000Z";
    assert_eq!(
        details,
        [
            format!("20 refused attempts by actor anonymous between {at} and {at}"),
            format!("5 refused attempts by actor mobile-app between {at} and {at}"),
            format!("5 refused attempts by actor web-app between {at} and {at}"),
        ]
    );
    // The budgets of the interval stand after a flush: still no single records.
    assert_eq!(post(&e, &alice).await.status, 403);
    assert_eq!(by_actor(&ledger(&e).await, "web-app").len(), per_actor + 1);
    // A new interval, a new budget.
    clock.advance(TimeDelta::seconds(60));
    assert_eq!(post(&e, &alice).await.status, 403);
    let log = ledger(&e).await;
    let alice_records = by_actor(&log, "web-app");
    assert_eq!(
        alice_records.len(),
        per_actor + 3,
        "one summary (after the flush), one single record"
    );
    assert!(
        alice_records[per_actor + 1]
            .detail
            .as_deref()
            .is_some_and(|d| d.starts_with("1 refused attempts"))
    );
    assert!(
        alice_records[per_actor + 2]
            .detail
            .as_deref()
            .is_some_and(|d| d.starts_with("403 "))
    );
}

#[tokio::test]
async fn the_global_budget_caps_every_actor_together() {
    let clock = ManualClock::new(t0());
    let e = fixture_with(&clock, |_, b| {
        b.with_refusal_audit_limits(RefusalAuditLimits::new().with_per_actor(10).with_global(25))
    })
    .await;
    let before = ledger(&e).await.len();
    let tokens: Vec<_> = (0..4)
        .map(|i| bearer(&user_token(&e, &clock, &format!("app-{i}"))))
        .collect();
    for t in &tokens {
        for _ in 0..10 {
            assert_eq!(post(&e, t).await.status, 403);
        }
    }
    let log = ledger(&e).await;
    assert_eq!(log.len() - before, 25, "the global budget");
    let counts: Vec<usize> = (0..4).map(|i| by_actor(&log, &format!("app-{i}")).len()).collect();
    assert_eq!(counts, [10, 10, 5, 0]);
    clock.advance(TimeDelta::seconds(61));
    assert_eq!(e.flush_refusal_summaries().await, 2);
    let log = ledger(&e).await;
    let summaries: Vec<(&str, Option<&str>)> = log[log.len() - 2..]
        .iter()
        .map(|r| (r.actor.as_str(), r.detail.as_deref()))
        .collect();
    let at = "2030-03-17T17:46:40.000Z";
    assert_eq!(
        summaries,
        [
            (
                "app-2",
                Some(format!("5 refused attempts by actor app-2 between {at} and {at}").as_str())
            ),
            (
                "app-3",
                Some(format!("10 refused attempts by actor app-3 between {at} and {at}").as_str())
            ),
        ]
    );
}

#[tokio::test]
async fn actors_beyond_the_tracked_ones_share_one_summary() {
    let clock = ManualClock::new(t0());
    let e = fixture_with(&clock, |_, b| {
        b.with_refusal_audit_limits(RefusalAuditLimits::new().with_per_actor(1).with_max_actors(2))
    })
    .await;
    for i in 0..6 {
        for _ in 0..2 {
            assert_eq!(
                post(&e, &bearer(&user_token(&e, &clock, &format!("app-{i}"))))
                    .await
                    .status,
                403
            );
        }
    }
    assert_eq!(e.flush_refusal_summaries().await, 3);
    let log = ledger(&e).await;
    let count = |actor: &str| by_actor(&log, actor).len();
    assert_eq!(
        (0..6).map(|i| count(&format!("app-{i}"))).collect::<Vec<_>>(),
        [2, 2, 1, 0, 0, 0],
        "two tracked actors (a record and a summary each), then one budget for the rest"
    );
    let untracked = by_actor(&log, UNTRACKED_ACTORS);
    assert_eq!(untracked.len(), 1, "one summary for all untracked actors");
    assert!(
        untracked[0]
            .detail
            .as_deref()
            .is_some_and(|d| d.starts_with("7 refused attempts by actor (untracked actors) between")),
        "{:?}",
        untracked[0].detail
    );
}

#[tokio::test]
async fn endpoint_refusals_of_authorized_callers_count_too() {
    let clock = ManualClock::new(t0());
    let e = fixture(&clock).await;
    let now = clock.now().timestamp();
    let admin = e
        .keyring()
        .sign(&json!({"sub": "ops", "client_id": "ops", "scope": "admin.force-rotate-keys", "iat": now, "exp": now + 600}))
        .expect("sign");
    let headers = vec![
        ("authorization", format!("Bearer {admin}")),
        ("content-type", "application/json".to_owned()),
    ];
    let req = HttpRequest {
        method: "POST",
        headers: &headers,
    };
    let text_headers = vec![
        ("authorization", format!("Bearer {admin}")),
        ("content-type", "text/plain".to_owned()),
    ];
    let text = HttpRequest {
        method: "POST",
        headers: &text_headers,
    };
    let forced = RequestBody::Complete(br#"{"force":true,"reason":"x"}"#);
    for _ in 0..20 {
        assert_eq!(e.rotate(&req, RequestBody::Complete(b"{")).await.status, 400);
        assert_eq!(
            e.rotate(&req, RequestBody::Complete(br#"{"reason":"x"}"#)).await.status,
            400
        );
        assert_eq!(e.rotate(&text, forced).await.status, 415);
        assert_eq!(e.rotate(&req, RequestBody::TooLarge).await.status, 413);
    }
    assert_eq!(e.flush_refusal_summaries().await, 1);
    let log = ledger(&e).await;
    let ops = by_actor(&log, "ops");
    assert_eq!(ops.len(), DEFAULT_REFUSALS_AUDITED_PER_ACTOR as usize + 1);
    let summary = ops.last().expect("summary");
    assert!(
        summary
            .detail
            .as_deref()
            .is_some_and(|d| d.starts_with("70 refused attempts by actor ops")),
        "{:?}",
        summary.detail
    );
    assert!(!summary.forced, "not every summarised attempt was forced");
}

#[test]
fn refusal_audit_intervals_are_validated() {
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let clock = ManualClock::new(t0());
    let e = rt.block_on(fixture(&clock));
    for bad in [std::time::Duration::ZERO, std::time::Duration::from_secs(2 * 86_400)] {
        let err = HttpEndpoints::builder(e.keyring().clone(), e.rotator().clone())
            .with_refusal_audit_limits(RefusalAuditLimits::new().with_interval(bad))
            .build()
            .err();
        assert_eq!(err, Some(HttpConfigError::RefusalAuditInterval), "{bad:?}");
    }
}

/// The status page as JSON, read with a service token.
async fn status_json(e: &HttpEndpoints, clock: &ManualClock) -> Value {
    let now = clock.now().timestamp();
    let token = e
        .keyring()
        .sign(&json!({"sub": "svc", "client_id": "svc", "scope": "service.rotate-keys", "iat": now, "exp": now + 60}))
        .expect("sign");
    let headers = bearer(&token);
    let r = e
        .status(&HttpRequest {
            method: "GET",
            headers: &headers,
        })
        .await;
    assert_eq!(r.status, 200);
    serde_json::from_slice(r.body.as_bytes()).expect("json")
}

#[tokio::test]
async fn a_flood_does_not_push_the_last_rotation_off_the_status_page() {
    let clock = ManualClock::new(t0());
    let e = fixture(&clock).await;
    let now = clock.now().timestamp();
    let admin = e
        .keyring()
        .sign(&json!({"sub": "ops", "client_id": "ops", "scope": "admin.force-rotate-keys", "iat": now, "exp": now + 600}))
        .expect("sign");
    let headers = vec![
        ("authorization", format!("Bearer {admin}")),
        ("content-type", "application/json".to_owned()),
    ];
    let r = e
        .rotate(
            &HttpRequest {
                method: "POST",
                headers: &headers,
            },
            RequestBody::Complete(br#"{"force":true,"reason":"drill"}"#),
        )
        .await;
    assert_eq!(r.status, 200);
    let rotated_kid = e.keyring().snapshot().active_kid().map(str::to_owned);
    assert_eq!(
        status_json(&e, &clock).await["last_rotation"]["new_kid"].as_str(),
        rotated_kid.as_deref()
    );

    // Two actors flood for two hours, within the budget: 2 × (10 + 1) records a minute.
    let anonymous: Vec<(&'static str, String)> = Vec::new();
    for _ in 0..120 {
        let alice = bearer(&user_token(&e, &clock, "web-app"));
        for _ in 0..12 {
            assert_eq!(post(&e, &alice).await.status, 403);
            assert_eq!(post(&e, &anonymous).await.status, 401);
        }
        clock.advance(TimeDelta::seconds(60));
    }
    e.flush_refusal_summaries().await;
    let log = ledger(&e).await;
    assert!(
        log.len() > 2_500,
        "more records than one read of the ledger: {}",
        log.len()
    );

    let j = status_json(&e, &clock).await;
    assert_eq!(j["last_rotation"]["new_kid"].as_str(), rotated_kid.as_deref());
    assert_eq!(j["last_rotation"]["actor"], "ops");
    assert_eq!(
        j["last_attempt"]["id"].as_str(),
        log.last().map(|r| r.id.as_str()),
        "the newest attempt"
    );

    // A new instance (nothing remembered) looks back far enough too.
    let fresh = HttpEndpoints::builder(e.keyring().clone(), e.rotator().clone())
        .build()
        .expect("endpoints");
    let j = status_json(&fresh, &clock).await;
    assert_eq!(j["last_rotation"]["new_kid"].as_str(), rotated_kid.as_deref());
    assert_eq!(j["audit_unavailable"], false);
}

#[tokio::test]
async fn the_status_page_keeps_the_last_rotation_beyond_any_read() {
    let clock = ManualClock::new(t0());
    let e = fixture(&clock).await;
    let init = status_json(&e, &clock).await["last_rotation"].clone();
    assert_eq!(init["outcome"], "bootstrapped");
    // More refusals than the longest read holds (written directly, as other instances
    // flooding within their own budgets would).
    let mut record = ledger(&e).await.pop().expect("init record");
    record.trigger = keyrot_core::TriggerKind::Rotate;
    record.outcome = Outcome::Refused;
    for i in 0..70_000 {
        record.id = format!("flood-{i}");
        keyrot_core::testing::append_audit(e.rotator(), &record)
            .await
            .expect("append");
    }
    let j = status_json(&e, &clock).await;
    assert_eq!(j["last_rotation"], init, "remembered from the earlier read");
    assert_eq!(j["last_attempt"]["id"], "flood-69999");
}

#[tokio::test]
async fn a_required_token_type_is_enforced_by_the_rotation_endpoint() {
    let clock = ManualClock::new(t0());
    let e = fixture_with(&clock, |keyring, b| {
        b.with_authorizer(Arc::new(
            ScopeAuthorizer::new(keyring.clone()).with_required_token_type("at+jwt"),
        ))
    })
    .await;
    let now = clock.now().timestamp();
    // The ring signs typ "JWT": not an access token.
    let token = e
        .keyring()
        .sign(
            &json!({"sub": "svc", "client_id": "svc", "scope": "admin.force-rotate-keys", "iat": now, "exp": now + 60}),
        )
        .expect("sign");
    let r = post(&e, &bearer(&token)).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer error=\"invalid_token\""));
    let last = ledger(&e).await.pop().expect("audited");
    assert_eq!((last.actor.as_str(), last.outcome), (ANONYMOUS_ACTOR, Outcome::Refused));
    assert_eq!(
        last.detail.as_deref(),
        Some("401 invalid_token: token rejected: token type (typ) is not the one required here")
    );
    let get = HttpRequest {
        method: "GET",
        headers: &bearer(&token),
    };
    assert_eq!(
        e.status(&get).await.status,
        401,
        "the status page uses the same authorizer"
    );

    // Requiring the type the ring writes lets the same token through.
    let jwt = fixture_with(&clock, |keyring, b| {
        b.with_authorizer(Arc::new(
            ScopeAuthorizer::new(keyring.clone()).with_required_token_type("application/JWT"),
        ))
    })
    .await;
    let token = jwt
        .keyring()
        .sign(&json!({"sub": "svc", "client_id": "svc", "scope": "service.rotate-keys", "iat": now, "exp": now + 60}))
        .expect("sign");
    assert_eq!(
        post(&jwt, &bearer(&token)).await.status,
        429,
        "authorized; too soon after init"
    );
}

/// A service token with `scope` for `client`, living 10 minutes from now.
fn service_token(e: &HttpEndpoints, clock: &ManualClock, client: &str, scope: &str) -> String {
    let now = clock.now().timestamp();
    e.keyring()
        .sign(&json!({"sub": client, "client_id": client, "scope": scope, "iat": now, "exp": now + 600}))
        .expect("sign")
}

fn json_of(r: &HttpResponse) -> Value {
    serde_json::from_slice(r.body.as_bytes()).expect("json")
}

#[tokio::test]
async fn the_status_page_ignores_a_tampered_row_at_the_end_of_time() {
    let clock = ManualClock::new(t0());
    let storage = Arc::new(MemoryStorage::new());
    let e = fixture_on(storage.clone(), &clock, |_, b| b).await;
    let first = e.keyring().snapshot().active_kid().map(str::to_owned).expect("active");
    let admin = service_token(&e, &clock, "ops", "admin.force-rotate-keys");
    let headers = vec![
        ("authorization", format!("Bearer {admin}")),
        ("content-type", "application/json".to_owned()),
    ];
    let req = HttpRequest {
        method: "POST",
        headers: &headers,
    };
    let r = e
        .rotate(&req, RequestBody::Complete(br#"{"force":true,"reason":"two keys"}"#))
        .await;
    assert_eq!(r.status, 200);
    // Someone with write access to the database makes the old row a Pending key at the
    // end of time (the sum `created_at + publish_lead` does not fit in a date).
    let max = DateTime::<Utc>::MAX_UTC;
    storage.tamper(e.keyring().ring(), |raw| {
        let row = raw.keys.iter_mut().find(|k| k.kid == first).expect("row");
        row.state = keyrot_core::KeyState::Pending;
        row.created_at = max;
        row.activate_at = Some(max);
        row.expires_at = Some(max);
        *raw.generation += 1;
    });
    e.keyring().refresh().await.expect("refresh");
    let j = status_json(&e, &clock).await;
    let row = j["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["kid"] == first.as_str())
        .cloned()
        .unwrap_or_default();
    assert!(row["tampered"].is_string(), "the row is shown as tampered: {row}");
    assert_eq!(
        (
            j["next_transition"]["action"].as_str(),
            j["next_transition"]["kid"].as_str()
        ),
        (Some("publish_next"), None),
        "the tampered Pending row is not the next transition: {}",
        j["next_transition"]
    );
    let at: DateTime<Utc> = serde_json::from_value(j["next_transition"]["at"].clone()).expect("time");
    assert_eq!(at, t0() + TimeDelta::days(6), "from the real Active key");
}

#[tokio::test]
async fn a_rotation_token_looping_on_a_rate_limit_writes_the_budget_and_one_summary() {
    // Six days after init, less 30 s: normal rotations are rate limited for 30 s more.
    let start = t0() + TimeDelta::days(6) - TimeDelta::seconds(30);
    let clock = ManualClock::new(t0());
    let e = fixture(&clock).await;
    clock.set(start);
    let headers = bearer(&service_token(&e, &clock, "svc", "service.rotate-keys"));
    let before = ledger(&e).await.len();
    let per_actor = DEFAULT_REFUSALS_AUDITED_PER_ACTOR as usize;
    for i in 0..1200 {
        let r = post(&e, &headers).await;
        assert_eq!(r.status, 429, "request {i}");
        let j = json_of(&r);
        assert_eq!(j["error"], "rate_limited");
        if i < per_actor {
            assert_eq!(j["outcome"], "rate_limited", "answered by the rotator");
        } else {
            assert_eq!(j["outcome"], Value::Null, "answered by the endpoint: {j}");
            // The interval began with the first request; retry when it ends.
            let left = (start + TimeDelta::seconds(60) - clock.now()).num_milliseconds();
            let secs = u64::try_from(left).expect("within the interval").div_ceil(1000);
            assert_eq!(r.header("retry-after"), Some(secs.to_string().as_str()));
            assert_eq!(j["retry_after_secs"].as_u64(), Some(secs));
        }
        clock.advance(TimeDelta::milliseconds(20));
    }
    assert_eq!(
        ledger(&e).await.len() - before,
        per_actor,
        "the rotator wrote the budget"
    );
    // The rotator's rate limit is over (24 s + 6 s), but the client's budget lasts until
    // the interval ends.
    clock.set(start + TimeDelta::seconds(31));
    let r = post(&e, &headers).await;
    assert_eq!((r.status, r.header("retry-after")), (429, Some("29")));
    assert_eq!(ledger(&e).await.len() - before, per_actor);
    // The first request after the interval reaches the rotator, and rotates.
    clock.set(start + TimeDelta::seconds(60));
    let r = post(&e, &headers).await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(r.body.as_bytes()));
    assert_eq!(json_of(&r)["outcome"], "scheduled");
    let log = ledger(&e).await;
    let svc = by_actor(&log, "svc");
    assert_eq!(svc.len(), per_actor + 2, "the budget, one summary, the rotation");
    assert!(
        svc[..per_actor].iter().all(|r| r.outcome == Outcome::RateLimited),
        "{svc:?}"
    );
    let summary = svc[per_actor];
    assert_eq!(summary.outcome, Outcome::Refused);
    assert_eq!(
        summary.detail.as_deref(),
        Some("1191 refused attempts by actor svc between 2030-03-23T17:46:10.200Z and 2030-03-23T17:46:41.000Z")
    );
    assert_eq!(svc[per_actor + 1].outcome, Outcome::Scheduled);
    assert_eq!(e.flush_refusal_summaries().await, 0);
}

#[tokio::test]
async fn rotations_that_change_the_ring_do_not_use_the_budget() {
    let clock = ManualClock::new(t0());
    let e = fixture_with(&clock, |_, b| {
        b.with_refusal_audit_limits(RefusalAuditLimits::new().with_per_actor(1))
    })
    .await;
    // The same client without the rotation scope floods: its refusals are its own count.
    let no_scope = bearer(&service_token(&e, &clock, "svc", "orders.read"));
    for _ in 0..20 {
        assert_eq!(post(&e, &no_scope).await.status, 403);
    }
    clock.advance(TimeDelta::days(6) + TimeDelta::seconds(1));
    let svc = bearer(&service_token(&e, &clock, "svc", "service.rotate-keys"));
    let r = post(&e, &svc).await;
    assert_eq!(
        (r.status, json_of(&r)["outcome"].as_str()),
        (202, Some("scheduled")),
        "a rotation"
    );
    let r = post(&e, &svc).await;
    assert_eq!(
        (r.status, json_of(&r)["outcome"].as_str()),
        (202, Some("already_scheduled")),
        "the rotation gave its reservation back"
    );
    let r = post(&e, &svc).await;
    assert_eq!(
        (r.status, json_of(&r)["error"].as_str(), json_of(&r)["outcome"].as_str()),
        (429, Some("rate_limited"), None),
        "over the budget of answers that changed nothing"
    );
    // Another rotation client has its own budget.
    let other = bearer(&service_token(&e, &clock, "svc-2", "service.rotate-keys"));
    assert_eq!(json_of(&post(&e, &other).await)["outcome"], "already_scheduled");
}

#[tokio::test]
async fn summaries_of_one_interval_are_capped_by_the_global_budget() {
    let clock = ManualClock::new(t0());
    let e = fixture_with(&clock, |_, b| {
        b.with_refusal_audit_limits(RefusalAuditLimits::new().with_per_actor(1).with_global(3))
    })
    .await;
    let before = ledger(&e).await.len();
    for i in 0..40 {
        let t = bearer(&user_token(&e, &clock, &format!("app-{i:02}")));
        assert_eq!(post(&e, &t).await.status, 403);
        assert_eq!(post(&e, &t).await.status, 403);
    }
    assert_eq!(
        ledger(&e).await.len() - before,
        3,
        "the global budget of single records"
    );
    clock.advance(TimeDelta::seconds(60));
    assert_eq!(e.flush_refusal_summaries().await, 3, "three summaries, not forty");
    let log = ledger(&e).await;
    let summaries: Vec<(&str, &str)> = log[before + 3..]
        .iter()
        .map(|r| (r.actor.as_str(), r.detail.as_deref().unwrap_or("")))
        .collect();
    let at = "2030-03-17T17:46:40.000Z";
    assert_eq!(
        summaries,
        [
            (
                UNTRACKED_ACTORS,
                format!("75 refused attempts by actor (untracked actors) between {at} and {at}").as_str()
            ),
            (
                "app-00",
                format!("1 refused attempts by actor app-00 between {at} and {at}").as_str()
            ),
            (
                "app-01",
                format!("1 refused attempts by actor app-01 between {at} and {at}").as_str()
            ),
        ]
    );
}

/// A verifier whose keys are unavailable (a remote issuer failing for too long).
#[derive(Debug)]
struct KeysDown;

#[async_trait::async_trait]
impl TokenVerifier for KeysDown {
    async fn verify(&self, _token: &str) -> Result<keyrot_core::Verified, keyrot_core::TokenError> {
        Err(keyrot_core::TokenError::KeysUnavailable)
    }
}

#[tokio::test]
async fn unavailable_keys_answer_503_not_an_invalid_token() {
    let auth = BearerAuth::with_verifier(Arc::new(KeysDown));
    let headers = vec![("authorization", "Bearer a.b.c")];
    let rejection = auth.authenticate(&headers).await.expect_err("no keys");
    assert_eq!(rejection, AuthRejection::KeysUnavailable);
    let r = rejection.to_response();
    assert_eq!(r.status, 503);
    assert!(
        r.headers.iter().any(|(n, v)| *n == "retry-after" && v == "5"),
        "{:?}",
        r.headers
    );
    assert!(
        !r.headers.iter().any(|(n, _)| *n == "www-authenticate"),
        "the token is not called invalid: {:?}",
        r.headers
    );
    assert!(
        String::from_utf8_lossy(r.body.as_bytes()).contains("temporarily_unavailable"),
        "{:?}",
        r.body
    );
}
