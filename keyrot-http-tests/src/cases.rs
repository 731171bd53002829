//! The cases. Each starts a fresh world and server; [`crate::http_suite!`] runs them.

pub use crate::cache::middleware_token_cache_hits_and_never_outlives_a_revocation;
use crate::{PROTECTED_PATH, SCOPED_PATH, SCOPED_SCOPE, Start, UNGUARDED_PATH, UNGUARDED_SCOPED_PATH, World};
use chrono::TimeDelta;
use keyrot_core::TokenVerifier;
use keyrot_core::VerifyingKey;
use keyrot_core::testing::token;
use keyrot_core::{
    Algorithm, Clock, Lock, Outcome, PrivateKey, RequestContext, RsaBits, TokenError, TriggerKind, Validation, Verified,
};
use keyrot_http::{ANONYMOUS_ACTOR, JWKS_PATH, ROTATE_PATH, RefusalAuditLimits, STATUS_PATH, ScopeAuthorizer};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use token::encode_header_with_type;

pub use crate::plane::*;
pub use crate::tenants::{
    a_retired_tenant_is_not_found_and_its_tokens_are_refused, a_tenant_token_is_refused_on_another_tenants_routes,
    tenant_jwks_and_discovery_are_served_per_ring, tenant_middleware_picks_the_ring_from_iss_path_or_host,
};

pub(crate) const INVALID_TOKEN_BODY: &str =
    r#"{"error":"invalid_token","error_description":"the access token is not valid"}"#;
pub(crate) const MISSING_TOKEN_BODY: &str =
    r#"{"error":"unauthorized","error_description":"a bearer token is required"}"#;
pub(crate) const MISSING_MIDDLEWARE_BODY: &str = r#"{"error":"server_error","error_description":"the server is misconfigured: bearer authentication is not installed for this route"}"#;
const INSUFFICIENT_SCOPE_BODY: &str =
    r#"{"error":"insufficient_scope","error_description":"the access token does not grant access to this resource"}"#;

/// The headers keyrot set (the framework's own `date`, `content-length`, … left out),
/// sorted: the same on every adapter.
pub(crate) fn keyrot_headers(a: &crate::Answer) -> Vec<(String, String)> {
    const FRAMEWORK: [&str; 5] = [
        "date",
        "content-length",
        "connection",
        "transfer-encoding",
        "keep-alive",
    ];
    let mut v: Vec<(String, String)> = a
        .headers
        .iter()
        .filter(|(n, _)| !FRAMEWORK.contains(&n.as_str()))
        .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap_or("<binary>").to_owned()))
        .collect();
    v.sort();
    v
}

fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    p.iter().map(|(n, v)| ((*n).to_owned(), (*v).to_owned())).collect()
}

fn six_days_later(w: &World) {
    w.advance(TimeDelta::days(6) + TimeDelta::seconds(1));
}

pub(crate) fn assert_401_invalid(a: &crate::Answer, what: &str) {
    assert_eq!(a.status, 401, "{what}: {}", a.text());
    assert_eq!(
        a.header("www-authenticate"),
        Some("Bearer error=\"invalid_token\""),
        "{what}"
    );
    assert_eq!(
        a.text(),
        INVALID_TOKEN_BODY,
        "{what}: no reason detail beyond the RFC 6750 code"
    );
}

fn assert_403(a: &crate::Answer, what: &str) {
    assert_eq!(a.status, 403, "{what}: {}", a.text());
    assert_eq!(
        a.header("www-authenticate"),
        Some("Bearer error=\"insufficient_scope\""),
        "{what}"
    );
    assert_eq!(a.text(), INSUFFICIENT_SCOPE_BODY, "{what}");
}

/// Seed 004 P0 (1): a service token with the normal scope rotates (scheduled, then
/// activated once the new key has been published for `publish_lead`).
pub async fn p0_1_normal_scope_succeeds(start: Start) {
    let w = World::start(start).await;
    six_days_later(&w);
    let a = w.rotate(Some(&w.scheduler_token()), None, &[]).await;
    assert_eq!(a.status, 202, "{}", a.text());
    let j = a.json();
    assert_eq!(j["outcome"], "scheduled");
    assert_eq!(j["old_kid"], w.first_kid.as_str());
    let pending = j["new_kid"].as_str().expect("new kid").to_owned();
    assert!(j["new_fingerprint"].is_string() && j["activates_at"].is_string(), "{j}");
    assert_eq!(j["generation"], 2);
    assert_eq!(a.header("content-type"), Some("application/json"));
    assert!(a.header("x-request-id").is_some_and(|r| !r.is_empty()));

    w.advance(TimeDelta::days(1));
    let a = w.rotate(Some(&w.scheduler_token()), None, &[]).await;
    assert_eq!(a.status, 200, "{}", a.text());
    let j = a.json();
    assert_eq!(j["outcome"], "rotated");
    assert_eq!(j["new_kid"], pending.as_str());
    assert_eq!(w.keyring.snapshot().active_kid(), Some(pending.as_str()));
}

/// Seed 004 P0 (2): a valid token without a rotation scope is refused with 403.
pub async fn p0_2_token_without_rotation_scope_is_403(start: Start) {
    let w = World::start(start).await;
    six_days_later(&w);
    let a = w
        .rotate(
            Some(&w.service_token("scheduler", "orders.read orders.write")),
            None,
            &[],
        )
        .await;
    assert_403(&a, "no rotation scope");
    let a = w
        .rotate(
            Some(&w.service_token("scheduler", "service.rotate-keys.extra")),
            None,
            &[],
        )
        .await;
    assert_403(&a, "a scope that only starts like the rotation scope");
    assert_eq!(w.generation().await, 1, "nothing rotated");
}

/// Seed 004 P0 (3): a user token with a rotation scope injected is refused with 403.
pub async fn p0_3_user_token_with_injected_rotation_scope_is_403(start: Start) {
    let w = World::start(start).await;
    six_days_later(&w);
    let a = w.rotate(Some(&w.user_token("service.rotate-keys")), None, &[]).await;
    assert_403(&a, "user token, normal scope");
    let a = w
        .rotate(
            Some(&w.user_token("admin.force-rotate-keys")),
            Some(json!({"force": true, "reason": "x"})),
            &[],
        )
        .await;
    assert_403(&a, "user token, force scope");
    let now = w.now().timestamp();
    let no_client = w.sign(&json!({"sub": "alice", "scope": "service.rotate-keys", "iat": now, "exp": now + 60}));
    assert_403(&w.rotate(Some(&no_client), None, &[]).await, "token without client_id");
    assert_eq!(w.generation().await, 1, "nothing rotated");
}

/// Seed 004 P0 (4): no, malformed, badly signed, unknown-key or expired tokens get 401.
pub async fn p0_4_invalid_or_expired_token_is_401(start: Start) {
    let w = World::start(start).await;
    six_days_later(&w);
    let a = w.rotate(None, None, &[]).await;
    assert_eq!(a.status, 401);
    assert_eq!(
        a.header("www-authenticate"),
        Some("Bearer"),
        "no error code when no token was sent"
    );
    assert_eq!(a.text(), MISSING_TOKEN_BODY);

    assert_401_invalid(&w.rotate(Some("not-a-jwt"), None, &[]).await, "garbage");
    let basic = w
        .send(
            "POST",
            ROTATE_PATH,
            &[("authorization", "Basic dXNlcjpwYXNz".to_owned())],
            None,
        )
        .await;
    assert_eq!(
        (basic.status, basic.header("www-authenticate")),
        (401, Some("Bearer")),
        "another scheme"
    );

    let good = w.scheduler_token();
    let (head, rest) = good.split_once('.').expect("jwt");
    let (_, sig) = rest.split_once('.').expect("jwt");
    let now = w.now().timestamp();
    let forged_payload = keyrot_core::testing::b64::encode(
        json!({"sub":"scheduler","client_id":"scheduler","scope":"admin.force-rotate-keys","iat":now,"exp":now+60})
            .to_string()
            .as_bytes(),
    );
    assert_401_invalid(
        &w.rotate(Some(&format!("{head}.{forged_payload}.{sig}")), None, &[])
            .await,
        "bad signature",
    );

    let (other_ring, other_rotator) = {
        // A ring in another store: its kid is unknown here even after a refresh.
        let storage = std::sync::Arc::new(keyrot_core::MemoryStorage::new());
        let kr = keyrot_core::KeyRing::builder(w.ring.clone(), storage.clone(), w.sealer.clone())
            .with_clock(std::sync::Arc::new(w.clock.clone()))
            .build()
            .await
            .expect("foreign ring");
        let rot = keyrot_core::Rotator::builder(
            w.ring.clone(),
            storage,
            std::sync::Arc::new(keyrot_core::MemoryLock::default()),
            w.sealer.clone(),
        )
        .with_clock(std::sync::Arc::new(w.clock.clone()))
        .with_keyring(kr.clone())
        .build();
        (kr, rot)
    };
    other_rotator
        .init(RequestContext::actor("foreign"))
        .await
        .expect("foreign init");
    let foreign = other_ring
        .sign(&json!({"sub":"scheduler","client_id":"scheduler","scope":"service.rotate-keys","iat":now,"exp":now+60}))
        .expect("foreign token");
    assert_401_invalid(&w.rotate(Some(&foreign), None, &[]).await, "unknown kid");

    let expiring = w
        .sign(&json!({"sub":"scheduler","client_id":"scheduler","scope":"service.rotate-keys","iat":now,"exp":now+60}));
    w.advance(TimeDelta::seconds(60 + 30));
    assert_401_invalid(
        &w.rotate(Some(&expiring), None, &[]).await,
        "expired (after the 30 s leeway)",
    );
    assert_eq!(w.generation().await, 1, "nothing rotated");
}

/// Seed 004 P0 (5): a normal rotation within `min_interval` (6 days) is 429 with
/// `Retry-After` in whole seconds.
pub async fn p0_5_normal_rotation_within_six_days_is_429(start: Start) {
    let w = World::start(start).await;
    w.advance(TimeDelta::days(5));
    let a = w
        .rotate(Some(&w.scheduler_token()), None, &[("x-request-id", "p0-5")])
        .await;
    assert_eq!(a.status, 429, "{}", a.text());
    assert_eq!(a.header("retry-after"), Some("86400"), "one day left, in seconds");
    assert_eq!(
        keyrot_headers(&a),
        pairs(&[
            ("cache-control", "no-store"),
            ("content-type", "application/json"),
            ("retry-after", "86400"),
            ("x-content-type-options", "nosniff"),
            ("x-request-id", "p0-5"),
        ])
    );
    let j = a.json();
    assert_eq!(j["error"], "rate_limited");
    assert_eq!(j["outcome"], "rate_limited");
    assert_eq!(j["retry_after_secs"], 86400);
    assert_eq!(j["old_kid"], w.first_kid.as_str());

    // Rounded up, never 0: 500 ms before the limit ends.
    w.advance(TimeDelta::days(1) - TimeDelta::milliseconds(500));
    let a = w.rotate(Some(&w.scheduler_token()), None, &[]).await;
    assert_eq!((a.status, a.header("retry-after")), (429, Some("1")), "{}", a.text());
    assert_eq!(w.generation().await, 1, "nothing rotated");
}

/// Seed 004 P0 (6): a forced rotation within `forced_min_interval` (1 hour) is 429.
pub async fn p0_6_forced_rotation_within_an_hour_is_429(start: Start) {
    let w = World::start(start).await;
    let body = json!({"force": true, "reason": "key leaked in incident 42"});
    let a = w.rotate(Some(&w.admin_token()), Some(body.clone()), &[]).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json()["forced"], true);
    w.advance(TimeDelta::minutes(30));
    let a = w.rotate(Some(&w.admin_token()), Some(body), &[]).await;
    assert_eq!(a.status, 429, "{}", a.text());
    assert_eq!(a.header("retry-after"), Some("1800"));
    assert_eq!(a.json()["forced"], true);
    assert_eq!(w.generation().await, 2, "one forced rotation only");
}

/// Seed 004 P0 (7): a forced rotation an hour after the last one succeeds.
pub async fn p0_7_forced_rotation_after_an_hour_succeeds(start: Start) {
    let w = World::start(start).await;
    let body = json!({"force": true, "reason": "key leaked"});
    let first = w.rotate(Some(&w.admin_token()), Some(body.clone()), &[]).await;
    assert_eq!(first.status, 200, "{}", first.text());
    w.advance(TimeDelta::hours(1));
    let second = w.rotate(Some(&w.admin_token()), Some(body), &[]).await;
    assert_eq!(second.status, 200, "{}", second.text());
    let (a, b) = (first.json(), second.json());
    assert_eq!(b["outcome"], "rotated");
    assert_eq!(b["old_kid"], a["new_kid"]);
    assert_ne!(b["new_kid"], a["new_kid"]);
    assert_eq!(w.keyring.snapshot().active_kid(), b["new_kid"].as_str());
    assert_eq!(w.generation().await, 3);
}

/// A rotation token living longer than 15 minutes (`exp − iat`), or without `iat`, is 403.
pub async fn rotation_token_living_over_15_minutes_is_403(start: Start) {
    let w = World::start(start).await;
    six_days_later(&w);
    let now = w.now().timestamp();
    let claims = |iat: Option<i64>, exp: i64| {
        let mut c = json!({"sub":"scheduler","client_id":"scheduler","scope":"service.rotate-keys","exp":exp});
        if let Some(iat) = iat {
            c["iat"] = json!(iat);
        }
        c
    };
    assert_403(
        &w.rotate(Some(&w.sign(&claims(Some(now), now + 16 * 60))), None, &[])
            .await,
        "16 minutes",
    );
    assert_403(
        &w.rotate(Some(&w.sign(&claims(None, now + 60))), None, &[]).await,
        "no iat",
    );
    assert_eq!(w.generation().await, 1);
    let a = w
        .rotate(Some(&w.sign(&claims(Some(now), now + 15 * 60))), None, &[])
        .await;
    assert_eq!(a.status, 202, "exactly 15 minutes is allowed: {}", a.text());
}

/// A forced rotation needs a non-empty reason (400) and the force scope (403).
pub async fn forced_rotation_without_reason_is_400(start: Start) {
    let w = World::start(start).await;
    for body in [
        json!({"force": true}),
        json!({"force": true, "reason": "   "}),
        json!({"force": true, "reason": ""}),
    ] {
        let a = w.rotate(Some(&w.admin_token()), Some(body.clone()), &[]).await;
        assert_eq!(a.status, 400, "{body}: {}", a.text());
        let j = a.json();
        assert_eq!(j["error"], "invalid_request");
        assert!(
            j["error_description"].as_str().is_some_and(|d| d.contains("reason")),
            "{j}"
        );
    }
    let a = w
        .rotate(
            Some(&w.scheduler_token()),
            Some(json!({"force": true, "reason": "normal scope only"})),
            &[],
        )
        .await;
    assert_403(&a, "force without the force scope");
    assert_eq!(w.generation().await, 1);
}

/// The same `Idempotency-Key` twice rotates once and answers the same bytes; reused by
/// the same client for a different request it is 422; keys of different clients are
/// independent.
pub async fn same_idempotency_key_rotates_once_and_answers_the_same(start: Start) {
    let w = World::start(start).await;
    six_days_later(&w);
    let key = [("idempotency-key", "rotation-2030-w12")];
    let first = w.rotate(Some(&w.scheduler_token()), None, &key).await;
    assert_eq!(first.status, 202, "{}", first.text());
    assert_eq!(first.header("idempotent-replayed"), None);
    w.advance(TimeDelta::seconds(5));
    let second = w.rotate(Some(&w.scheduler_token()), None, &key).await;
    assert_eq!(second.status, 202, "{}", second.text());
    assert_eq!(
        second.body, first.body,
        "the retry gets the first answer, byte for byte"
    );
    assert_eq!(second.header("idempotent-replayed"), Some("true"));
    assert_eq!(w.generation().await, 2, "rotated once");
    assert_eq!(w.jwks_kids().await.len(), 2, "one new pending key");

    // Keys belong to their client: another client's identical key is its own request.
    let admin_same_key = w.rotate(Some(&w.admin_token()), None, &key).await;
    assert_eq!(
        admin_same_key.header("idempotent-replayed"),
        None,
        "{}",
        admin_same_key.text()
    );
    // The same client reusing its key for a different request is refused.
    let other = w
        .rotate(
            Some(&w.admin_token()),
            Some(json!({"force": true, "reason": "x"})),
            &key,
        )
        .await;
    assert_eq!(other.status, 422, "{}", other.text());
    assert_eq!(other.json()["error"], "idempotency_key_reused");
    assert_eq!(w.generation().await, 2);

    let bad = w
        .rotate(Some(&w.scheduler_token()), None, &[("idempotency-key", "has space")])
        .await;
    assert_eq!(bad.status, 400, "{}", bad.text());
}

/// Every attempt — refused at the endpoint or by the rotator, rate limited, successful —
/// produced exactly one audit record with the seed's fields.
pub async fn every_attempt_is_audited_once_with_the_seed_fields(start: Start) {
    let w = World::start(start).await;
    let before = w.audit().await.len();
    let force = |reason: Option<&str>| match reason {
        Some(r) => Some(json!({"force": true, "reason": r})),
        None => Some(json!({"force": true})),
    };
    let attempts: Vec<(Option<String>, Option<Value>, u16)> = vec![
        (None, None, 401),
        (Some(w.user_token("service.rotate-keys")), None, 403),
        (Some(w.service_token("scheduler", "orders.read")), None, 403),
        (Some(w.scheduler_token()), None, 429),
        (Some(w.admin_token()), force(None), 400),
        (Some(w.admin_token()), force(Some("audit drill")), 200),
        (Some(w.admin_token()), force(Some("audit drill")), 429),
    ];
    let mut answers = Vec::new();
    for (i, (token, body, status)) in attempts.into_iter().enumerate() {
        let rid = format!("audit-{i}");
        let a = w
            .rotate(token.as_deref(), body, &[("x-request-id", rid.as_str())])
            .await;
        assert_eq!(a.status, status, "attempt {i}: {}", a.text());
        assert_eq!(a.header("x-request-id"), Some(rid.as_str()), "the request id is echoed");
        answers.push(a);
    }
    let log = w.audit().await;
    assert_eq!(log.len(), before + 7, "one record per attempt");
    let mut by_rid: HashMap<String, Vec<&keyrot_core::AuditRecord>> = HashMap::new();
    for r in &log[before..] {
        by_rid
            .entry(r.request_id.clone().expect("request id recorded"))
            .or_default()
            .push(r);
    }
    let rec = |i: usize| {
        let v = &by_rid[&format!("audit-{i}")];
        assert_eq!(v.len(), 1, "exactly one record for attempt {i}");
        v[0]
    };
    let expected = [
        ("anonymous", Outcome::Refused, false),
        ("web-app", Outcome::Refused, false),
        ("scheduler", Outcome::Refused, false),
        ("scheduler", Outcome::RateLimited, false),
        ("breakglass", Outcome::Refused, true),
        ("breakglass", Outcome::Rotated, true),
        ("breakglass", Outcome::RateLimited, true),
    ];
    for (i, (actor, outcome, forced)) in expected.into_iter().enumerate() {
        let r = rec(i);
        assert_eq!(
            (r.actor.as_str(), r.outcome, r.forced),
            (actor, outcome, forced),
            "attempt {i}: {r:?}"
        );
        assert_eq!(r.ring, w.ring.as_str());
        assert_eq!(r.at, w.now(), "timestamp of attempt {i}");
        assert_eq!(
            r.trigger,
            if forced {
                TriggerKind::ForceRotate
            } else {
                TriggerKind::Rotate
            }
        );
        assert_eq!(r.instance, "server");
    }
    let rotated = rec(5);
    let answer = answers[5].json();
    assert_eq!(rotated.reason.as_deref(), Some("audit drill"));
    assert_eq!(rotated.old_kid.as_deref(), Some(w.first_kid.as_str()));
    assert!(rotated.old_fingerprint.is_some());
    assert_eq!(rotated.new_kid.as_deref(), answer["new_kid"].as_str());
    assert_eq!(rotated.new_fingerprint.as_deref(), answer["new_fingerprint"].as_str());
    assert_eq!(rotated.generation, 2);
    assert!(rec(0).detail.as_deref().is_some_and(|d| d.starts_with("401")));
    assert!(
        rec(1)
            .detail
            .as_deref()
            .is_some_and(|d| d.contains("not a service token")),
        "{:?}",
        rec(1).detail
    );
    for r in &log {
        let text = format!("{r:?}");
        assert!(
            !text.contains("Bearer") && !text.contains("eyJ"),
            "no token in the ledger: {text}"
        );
    }
}

/// Another instance holding the rotation lock: 409 `rotation_in_progress` with
/// `Retry-After: 1`, audited, and not remembered for the `Idempotency-Key`.
pub async fn lock_busy_is_409_with_retry_after(start: Start) {
    let w = World::start(start).await;
    six_days_later(&w);
    let guard = w
        .lock
        .try_acquire(&w.ring, "other-instance", std::time::Duration::from_secs(30))
        .await
        .expect("lock")
        .expect("lock is free");
    let key = [("idempotency-key", "busy-1")];
    let a = w.rotate(Some(&w.scheduler_token()), None, &key).await;
    assert_eq!(a.status, 409, "{}", a.text());
    assert_eq!(a.header("retry-after"), Some("1"));
    let j = a.json();
    assert_eq!(j["error"], "rotation_in_progress");
    assert_eq!(
        (j["generation"].as_u64(), j["old_kid"].as_str()),
        (Some(1), Some(w.first_kid.as_str()))
    );
    assert_eq!(w.audit().await.last().map(|r| r.outcome), Some(Outcome::LockBusy));
    guard.release().await.expect("release");
    let a = w.rotate(Some(&w.scheduler_token()), None, &key).await;
    assert_eq!(a.status, 202, "the retry runs: {}", a.text());
}

/// Bodies over 4 KiB are 413; non-JSON is 415; a malformed body is 400. All audited.
pub async fn request_body_is_limited_and_validated(start: Start) {
    let w = World::start(start).await;
    six_days_later(&w);
    let before = w.audit().await.len();
    let auth = ("authorization", format!("Bearer {}", w.admin_token()));
    let json_ct = ("content-type", "application/json".to_owned());
    let huge = format!(r#"{{"force":true,"reason":"{}"}}"#, "x".repeat(5000)).into_bytes();
    let a = w
        .send("POST", ROTATE_PATH, &[auth.clone(), json_ct.clone()], Some(huge))
        .await;
    assert_eq!(
        (a.status, a.json()["error"].clone()),
        (413, json!("payload_too_large")),
        "{}",
        a.text()
    );
    let a = w
        .send(
            "POST",
            ROTATE_PATH,
            &[auth.clone(), ("content-type", "text/plain".to_owned())],
            Some(b"{}".to_vec()),
        )
        .await;
    assert_eq!(a.status, 415, "{}", a.text());
    for body in [
        r#"{"force":"yes"}"#,
        r#"{"force":true,"reason":"x","extra":1}"#,
        "[1]",
        "{",
        r#"{"reason":"no force"}"#,
    ] {
        let a = w
            .send(
                "POST",
                ROTATE_PATH,
                &[auth.clone(), json_ct.clone()],
                Some(body.as_bytes().to_vec()),
            )
            .await;
        assert_eq!(a.status, 400, "{body}: {}", a.text());
        assert_eq!(a.json()["error"], "invalid_request");
    }
    let a = w
        .send(
            "POST",
            ROTATE_PATH,
            &[
                auth.clone(),
                ("content-type", "application/merge-patch+json".to_owned()),
            ],
            Some(b" ".to_vec()),
        )
        .await;
    assert_eq!(
        a.status,
        202,
        "a blank body is a normal rotation (here: scheduled): {}",
        a.text()
    );
    let log = w.audit().await;
    assert_eq!(log.len(), before + 8, "every attempt audited");
    assert!(
        log[before..before + 7]
            .iter()
            .all(|r| r.outcome == Outcome::Refused && r.actor == "breakglass")
    );
}

/// A wrong method reaches keyrot and gets a JSON 405 with `Allow`.
pub async fn wrong_method_is_405_json(start: Start) {
    let w = World::start(start).await;
    let a = w.get(ROTATE_PATH, Some(&w.scheduler_token())).await;
    assert_eq!((a.status, a.header("allow")), (405, Some("POST")), "{}", a.text());
    assert_eq!(a.json()["error"], "method_not_allowed");
    let a = w.send("POST", JWKS_PATH, &[], None).await;
    assert_eq!((a.status, a.header("allow")), (405, Some("GET, HEAD")));
    let a = w.send("DELETE", STATUS_PATH, &[], None).await;
    assert_eq!(a.status, 405);
}

/// A token signed by a key that became Active on another instance a moment ago is
/// accepted: the unknown kid triggers one refresh of the server's ring.
pub async fn middleware_accepts_key_activated_on_another_instance(start: Start) {
    let w = World::start(start).await;
    let (other_ring, other_rotator) = w.other_instance().await;
    let r = other_rotator
        .force_rotate(RequestContext::actor("ops"), "rotated elsewhere", false)
        .await
        .expect("forced rotation on the other instance");
    let new_kid = r.new_kid.expect("new kid");
    assert!(
        !w.keyring.snapshot().verifies(&new_kid),
        "the server has not seen the new key yet"
    );
    let now = w.now().timestamp();
    let token = other_ring
        .sign(&json!({"sub": "bob", "client_id": "app", "exp": now + 600}))
        .expect("sign");
    let a = w.get(PROTECTED_PATH, Some(&token)).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json(), json!({"sub": "bob", "client_id": "app"}));
    assert!(w.keyring.snapshot().verifies(&new_kid), "refreshed on the unknown kid");
}

/// A token signed by a key that is now Expired (revoked by a forced rotation) is
/// rejected, though the token itself has not expired.
pub async fn middleware_rejects_token_of_expired_key(start: Start) {
    let w = World::start(start).await;
    let now = w.now().timestamp();
    let old = w.sign(&json!({"sub": "bob", "exp": now + 3000}));
    assert_eq!(w.get(PROTECTED_PATH, Some(&old)).await.status, 200);
    let a = w
        .rotate(
            Some(&w.admin_token()),
            Some(json!({"force": true, "reason": "compromised", "revoke_old": true})),
            &[],
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_401_invalid(
        &w.get(PROTECTED_PATH, Some(&old)).await,
        "token of the revoked (expired) key",
    );
    let fresh = w.sign(&json!({"sub": "bob", "exp": now + 3000}));
    assert_eq!(w.get(PROTECTED_PATH, Some(&fresh)).await.status, 200);
}

/// A Retiring key's tokens keep verifying until their own expiry (plus leeway).
pub async fn middleware_accepts_retiring_key_until_token_expiry(start: Start) {
    let w = World::start(start).await;
    let now = w.now().timestamp();
    let token = w.sign(&json!({"sub": "bob", "exp": now + 3600}));
    let a = w
        .rotate(
            Some(&w.admin_token()),
            Some(json!({"force": true, "reason": "routine drill"})),
            &[],
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
    let retiring = w
        .keyring
        .snapshot()
        .keys()
        .iter()
        .find(|k| k.kid == w.first_kid)
        .map(|k| k.state);
    assert_eq!(retiring, Some(keyrot_core::KeyState::Retiring));
    w.advance(TimeDelta::seconds(3599));
    assert_eq!(
        w.get(PROTECTED_PATH, Some(&token)).await.status,
        200,
        "retiring key still verifies"
    );
    w.advance(TimeDelta::seconds(31));
    assert_401_invalid(&w.get(PROTECTED_PATH, Some(&token)).await, "token past its own expiry");
}

/// The extractor hands the claims to the handler; the scope helper answers 403; no
/// token is 401.
pub async fn middleware_extractor_and_scope_helper(start: Start) {
    let w = World::start(start).await;
    let now = w.now().timestamp();
    let plain = w.sign(&json!({"sub": "carol", "client_id": "web", "exp": now + 60}));
    let scoped =
        w.sign(&json!({"sub": "carol", "client_id": "web", "scope": format!("a {SCOPED_SCOPE}"), "exp": now + 60}));
    let a = w.get(PROTECTED_PATH, Some(&plain)).await;
    assert_eq!((a.status, a.json()), (200, json!({"sub": "carol", "client_id": "web"})));
    assert_403(&w.get(SCOPED_PATH, Some(&plain)).await, "scope helper");
    assert_eq!(w.get(SCOPED_PATH, Some(&scoped)).await.status, 200);
    let a = w.get(PROTECTED_PATH, None).await;
    assert_eq!((a.status, a.header("www-authenticate")), (401, Some("Bearer")));
    assert_eq!(a.text(), MISSING_TOKEN_BODY);
    assert_eq!(
        keyrot_headers(&a),
        pairs(&[
            ("cache-control", "no-store"),
            ("content-type", "application/json"),
            ("www-authenticate", "Bearer"),
            ("x-content-type-options", "nosniff"),
        ])
    );
    let a = w
        .send("GET", PROTECTED_PATH, &[("authorization", "Bearer ".to_owned())], None)
        .await;
    assert_401_invalid(&a, "empty bearer token");
    let two = w
        .send(
            "GET",
            PROTECTED_PATH,
            &[
                ("authorization", format!("Bearer {plain}")),
                ("authorization", format!("Bearer {plain}")),
            ],
            None,
        )
        .await;
    assert_401_invalid(&two, "two Authorization headers");
}

/// The extractor and the scope helper on routes without the verifying middleware fail
/// closed: `500`, whatever the token, and the route does not run.
pub async fn extractor_without_middleware_is_500(start: Start) {
    let w = World::start(start).await;
    let now = w.now().timestamp();
    let token = w.sign(&json!({"sub": "carol", "client_id": "web", "scope": SCOPED_SCOPE, "exp": now + 60}));
    for path in [UNGUARDED_PATH, UNGUARDED_SCOPED_PATH] {
        for token in [Some(token.as_str()), None] {
            let a = w.get(path, token).await;
            assert_eq!(a.status, 500, "{path}: {}", a.text());
            assert_eq!(a.text(), MISSING_MIDDLEWARE_BODY, "{path}");
            assert_eq!(
                keyrot_headers(&a),
                pairs(&[
                    ("cache-control", "no-store"),
                    ("content-type", "application/json"),
                    ("x-content-type-options", "nosniff"),
                ]),
                "{path}"
            );
        }
    }
}

/// A pending key is in the JWKS before it signs; the cache lifetime does not outlast
/// its activation.
pub async fn jwks_publishes_pending_key_before_it_signs(start: Start) {
    let w = World::start(start).await;
    six_days_later(&w);
    let a = w.rotate(Some(&w.scheduler_token()), None, &[]).await;
    assert_eq!(a.status, 202, "{}", a.text());
    let pending = a.json()["new_kid"].as_str().expect("pending kid").to_owned();
    let kids = w.jwks_kids().await;
    assert_eq!(
        kids,
        vec![w.first_kid.clone(), pending.clone()],
        "Active first, then Pending"
    );
    assert_eq!(
        w.keyring.snapshot().active_kid(),
        Some(w.first_kid.as_str()),
        "the pending key does not sign yet"
    );
    let token = w.sign(&json!({"sub": "x", "exp": w.now().timestamp() + 60}));
    let header = token.split('.').next().expect("header");
    let header: Value = serde_json::from_slice(&keyrot_core::testing::b64::decode(header).expect("b64")).expect("json");
    assert_eq!(header["kid"], w.first_kid.as_str());
    let cache = w
        .jwks(None)
        .await
        .header("cache-control")
        .map(str::to_owned)
        .expect("cache-control");
    let max_age: i64 = cache.trim_start_matches("public, max-age=").parse().expect("max-age");
    assert!((0..=3600).contains(&max_age), "{cache}");
}

/// An Expired key is gone from the JWKS.
pub async fn jwks_drops_expired_key(start: Start) {
    let w = World::start(start).await;
    let a = w
        .rotate(
            Some(&w.admin_token()),
            Some(json!({"force": true, "reason": "drill"})),
            &[],
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
    let new_kid = a.json()["new_kid"].as_str().expect("kid").to_owned();
    assert_eq!(
        w.jwks_kids().await,
        vec![new_kid.clone(), w.first_kid.clone()],
        "retiring key still published"
    );
    w.advance(TimeDelta::days(7) + TimeDelta::seconds(1));
    let tick = w.rotator.tick().await.expect("tick");
    assert!(
        matches!(tick.outcome, Outcome::Maintained | Outcome::Scheduled),
        "{tick:?}"
    );
    let kids = w.jwks_kids().await;
    assert!(!kids.contains(&w.first_kid), "expired key gone: {kids:?}");
    assert!(kids.contains(&new_kid));
}

/// Strong ETag, 304 on a matching `If-None-Match`, a new ETag after a change.
pub async fn jwks_etag_and_304(start: Start) {
    let w = World::start(start).await;
    let a = w.jwks(None).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("content-type"), Some("application/jwk-set+json"));
    let etag = a.header("etag").expect("etag").to_owned();
    assert!(
        etag.starts_with('"') && etag.ends_with('"') && !etag.starts_with("W/"),
        "strong: {etag}"
    );
    assert!(
        a.header("cache-control")
            .is_some_and(|c| c.starts_with("public, max-age="))
    );
    let keys = a.json()["keys"].as_array().expect("keys").clone();
    for k in &keys {
        let members: Vec<&str> = k.as_object().expect("jwk").keys().map(String::as_str).collect();
        assert!(
            members
                .iter()
                .all(|m| ["kty", "kid", "alg", "use", "crv", "x", "n", "e"].contains(m)),
            "{members:?}"
        );
    }
    assert_eq!(
        a.body,
        w.keyring.snapshot().jwks().body(),
        "the pre-rendered bytes, as they are"
    );
    let cache = a.header("cache-control").expect("cache-control").to_owned();
    assert_eq!(
        keyrot_headers(&a),
        pairs(&[
            ("cache-control", &cache),
            ("content-type", "application/jwk-set+json"),
            ("etag", &etag),
            ("x-content-type-options", "nosniff"),
        ])
    );
    let b = w.jwks(Some(&etag)).await;
    assert_eq!(b.status, 304);
    assert!(b.body.is_empty());
    assert_eq!(keyrot_headers(&b), pairs(&[("cache-control", &cache), ("etag", &etag)]));
    assert_eq!(b.header("etag"), Some(etag.as_str()));
    assert!(b.header("cache-control").is_some());
    assert_eq!(w.jwks(Some(&format!("\"nope\", {etag}"))).await.status, 304, "a list");
    assert_eq!(w.jwks(Some("*")).await.status, 304);
    assert_eq!(w.jwks(Some("\"nope\"")).await.status, 200);
    let r = w
        .rotate(
            Some(&w.admin_token()),
            Some(json!({"force": true, "reason": "drill"})),
            &[],
        )
        .await;
    assert_eq!(r.status, 200);
    let c = w.jwks(Some(&etag)).await;
    assert_eq!(c.status, 200, "the set changed");
    assert_ne!(c.header("etag"), Some(etag.as_str()));
}

/// `If-None-Match` uses the weak comparison (RFC 9110 §13.1.2): a proxy that weakens the
/// ETag (nginx with gzip forwards `W/"…"`) still gets 304; lists with whitespace work.
pub async fn jwks_if_none_match_uses_weak_comparison(start: Start) {
    let w = World::start(start).await;
    let etag = w.jwks(None).await.header("etag").expect("etag").to_owned();
    let weak = format!("W/{etag}");
    let a = w.jwks(Some(&weak)).await;
    assert_eq!(a.status, 304, "{weak}: {}", a.text());
    assert!(a.body.is_empty());
    assert_eq!(a.header("etag"), Some(etag.as_str()), "the 304 names the strong ETag");
    for list in [
        format!("\"stale\", {weak}"),
        format!("W/\"stale\",{weak}"),
        format!("\"stale\" ,\t{weak} , \"older\""),
        format!("garbage, {weak}"),
    ] {
        assert_eq!(w.jwks(Some(&list)).await.status, 304, "{list}");
    }
    let two_lines = w
        .send(
            "GET",
            JWKS_PATH,
            &[
                ("if-none-match", "\"stale\"".to_owned()),
                ("if-none-match", weak.clone()),
            ],
            None,
        )
        .await;
    assert_eq!(two_lines.status, 304, "two If-None-Match lines");
    for miss in [
        "W/\"stale\"".to_owned(),
        format!("w/{etag}"),
        format!("W/{}", etag.trim_matches('"')),
        format!("{weak}x"),
    ] {
        assert_eq!(w.jwks(Some(&miss)).await.status, 200, "{miss}");
    }
}

/// Tokens of an authorization server, verified by the application's own verifier.
#[derive(Debug)]
struct AuthorizationServer {
    key: VerifyingKey,
    clock: Arc<dyn Clock>,
}

#[async_trait::async_trait]
impl TokenVerifier for AuthorizationServer {
    async fn verify(&self, token: &str) -> Result<Verified, TokenError> {
        let lookup = |kid: &str| (kid == "as-1").then_some(&self.key);
        keyrot_core::verify_with_lookup(token, lookup, &Validation::new(), self.clock.now().timestamp())
    }
}

/// With a required token type (explicit typing, RFC 8725 §3.11), a rotation token of
/// another type, or with none, is 401 like any other invalid token, and audited.
pub async fn rotation_token_of_another_type_is_401(start: Start) {
    let issuer = PrivateKey::generate(Algorithm::EdDsa, RsaBits::B2048).expect("issuer key");
    let verifier = issuer.public_key().verifying_key().expect("verifying key");
    let w = World::start_with(start, |keyring, b| {
        let server = AuthorizationServer {
            key: verifier,
            clock: keyring.clock().clone(),
        };
        b.with_authorizer(Arc::new(
            ScopeAuthorizer::with_verifier(Arc::new(server)).with_required_token_type("at+jwt"),
        ))
    })
    .await;
    six_days_later(&w);
    let sign = |typ: Option<&str>| {
        let now = w.now().timestamp();
        let claims =
            json!({"sub":"scheduler","client_id":"scheduler","scope":"service.rotate-keys","iat":now,"exp":now+300});
        let header = match typ {
            Some(t) => encode_header_with_type(Algorithm::EdDsa, "as-1", t),
            None => keyrot_core::testing::b64::encode(br#"{"alg":"EdDSA","kid":"as-1"}"#),
        };
        token::sign(&issuer.signing_key(), &header, &claims, now, 900).expect("sign")
    };
    let before = w.audit().await.len();
    for (typ, what) in [
        (Some("JWT"), "typ JWT"),
        (None, "no typ"),
        (Some("id+jwt"), "another type"),
    ] {
        assert_401_invalid(&w.rotate(Some(&sign(typ)), None, &[]).await, what);
    }
    let log = w.audit().await;
    assert_eq!(log.len(), before + 3, "every refusal audited");
    assert!(
        log[before..].iter().all(|r| r.actor == ANONYMOUS_ACTOR
            && r.outcome == Outcome::Refused
            && r.detail
                .as_deref()
                .is_some_and(|d| d.starts_with("401 invalid_token") && d.contains("typ"))),
        "{:?}",
        &log[before..]
    );
    assert_eq!(w.generation().await, 1, "nothing rotated");
    let a = w.rotate(Some(&sign(Some("application/AT+JWT"))), None, &[]).await;
    assert_eq!(a.status, 202, "the required type, written in full: {}", a.text());
}

/// Refused attempts are written one by one within a budget per actor; the rest become
/// one summary record per actor.
pub async fn refused_attempts_are_audited_within_a_budget(start: Start) {
    let w = World::start_with(start, |_, b| {
        b.with_refusal_audit_limits(RefusalAuditLimits::new().with_per_actor(3))
    })
    .await;
    let before = w.audit().await.len();
    let user = w.user_token("service.rotate-keys");
    for _ in 0..20 {
        assert_403(&w.rotate(Some(&user), None, &[]).await, "user token");
        assert_eq!(w.rotate(None, None, &[]).await.status, 401);
    }
    let log = w.audit().await;
    assert_eq!(log.len() - before, 6, "three per actor");
    w.advance(TimeDelta::seconds(60));
    let a = w.rotate(Some(&w.scheduler_token()), None, &[]).await;
    assert_eq!(a.status, 429, "{}", a.text());
    let log = w.audit().await;
    let details: Vec<(&str, &str)> = log[before + 6..before + 8]
        .iter()
        .map(|r| (r.actor.as_str(), r.detail.as_deref().unwrap_or("")))
        .collect();
    let t = "2030-03-17T17:46:40.000Z";
    assert_eq!(
        details,
        [
            (
                ANONYMOUS_ACTOR,
                format!("17 refused attempts by actor anonymous between {t} and {t}").as_str()
            ),
            (
                "web-app",
                format!("17 refused attempts by actor web-app between {t} and {t}").as_str()
            ),
        ]
    );
    assert_eq!(
        log.len(),
        before + 9,
        "the summaries, then the request that came after the interval"
    );
    assert_eq!(w.endpoints.flush_refusal_summaries().await, 0);
}

/// The status page: kids, states, times, generation, next transition, last rotation; no
/// key material; the same authorizer (normal scope); reads are not audited.
pub async fn status_shows_ring_without_key_material(start: Start) {
    let w = World::start(start).await;
    six_days_later(&w);
    let r = w.rotate(Some(&w.scheduler_token()), None, &[]).await;
    assert_eq!(r.status, 202);
    let pending = r.json()["new_kid"].as_str().expect("kid").to_owned();
    let audited = w.audit().await.len();

    let a = w.get(STATUS_PATH, None).await;
    assert_eq!((a.status, a.header("www-authenticate")), (401, Some("Bearer")));
    assert_403(
        &w.get(STATUS_PATH, Some(&w.user_token("service.rotate-keys"))).await,
        "user token",
    );
    assert_403(
        &w.get(STATUS_PATH, Some(&w.service_token("x", "orders.read"))).await,
        "no scope",
    );

    let a = w.get(STATUS_PATH, Some(&w.scheduler_token())).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.header("cache-control"), Some("no-store"));
    let j = a.json();
    assert_eq!(j["ring"], w.ring.as_str());
    assert_eq!(j["generation"], 2);
    assert_eq!(j["active_kid"], w.first_kid.as_str());
    assert_eq!(j["stale"], false);
    let states: Vec<(&str, &str)> = j["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| (k["kid"].as_str().expect("kid"), k["state"].as_str().expect("state")))
        .collect();
    assert!(states.contains(&(w.first_kid.as_str(), "active")) && states.contains(&(pending.as_str(), "pending")));
    assert_eq!(j["next_transition"]["action"], "activate");
    assert_eq!(j["next_transition"]["kid"], pending.as_str());
    assert_eq!(j["last_rotation"]["outcome"], "scheduled");
    assert_eq!(j["last_rotation"]["actor"], "scheduler");
    let text = a.text();
    for secret_member in ["\"d\"", "\"p\"", "\"q\"", "sealed", "ciphertext", "private"] {
        assert!(
            !text.contains(secret_member),
            "status must not contain {secret_member}: {text}"
        );
    }
    let admin = w.get(STATUS_PATH, Some(&w.admin_token())).await;
    assert_eq!(admin.status, 200, "the force scope includes reading the status");
    assert_eq!(w.audit().await.len(), audited, "status reads are not audited");
}

/// Issue 8: a key row altered in storage (here its public key swapped for an attacker's)
/// never verifies through the middleware, drops out of the JWKS, and the status page
/// names it, while the rest of the ring keeps serving.
pub async fn tampered_rows_are_refused_and_shown_on_the_status_page(start: Start) {
    let w = World::start(start).await;
    let a = w
        .rotate(
            Some(&w.admin_token()),
            Some(json!({"force": true, "reason": "two keys"})),
            &[],
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
    let attacker = PrivateKey::generate(Algorithm::EdDsa, RsaBits::B2048).expect("keygen");
    let jwk = attacker.public_key().to_jwk(&w.first_kid).to_string();
    w.storage.tamper(&w.ring, |raw| {
        let row = raw.keys.iter_mut().find(|k| k.kid == w.first_kid).expect("row");
        row.public_jwk = jwk.clone();
        *raw.generation += 1;
    });
    w.keyring.refresh().await.expect("refresh");
    let now = w.now().timestamp();
    let forged = token::sign(
        &attacker.signing_key(),
        &token::encode_header(Algorithm::EdDsa, &w.first_kid),
        &json!({"sub": "mallory", "exp": now + 60}),
        now,
        3_600,
    )
    .expect("sign");
    assert_401_invalid(&w.get(PROTECTED_PATH, Some(&forged)).await, "a forged key row");
    let fresh = w.sign(&json!({"sub": "bob", "exp": now + 60}));
    assert_eq!(w.get(PROTECTED_PATH, Some(&fresh)).await.status, 200, "the rest serves");
    assert!(!w.jwks_kids().await.contains(&w.first_kid), "not published");
    let s = w.get(STATUS_PATH, Some(&w.scheduler_token())).await;
    assert_eq!(s.status, 200, "{}", s.text());
    let j = s.json();
    let summary = j["integrity_summary"].as_str().unwrap_or_default().to_owned();
    assert!(summary.contains(&w.first_kid), "{summary}");
    let row = j["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["kid"] == w.first_kid.as_str())
        .cloned()
        .unwrap_or_default();
    assert!(row["tampered"].is_string(), "{row}");
}

/// A client with a valid rotation token looping on a rotation that changes nothing (here
/// rate limited) writes its per-actor budget of records and one summary per interval:
/// beyond the budget the endpoint answers `429` itself, without the rotator, until the
/// interval ends. The first request after it reaches the rotator, which rotates once the
/// rate limit allows.
pub async fn authorized_requests_that_change_nothing_are_audited_within_a_budget(start: Start) {
    let w = World::start_with(start, |_, b| {
        b.with_refusal_audit_limits(RefusalAuditLimits::new().with_per_actor(5))
    })
    .await;
    // 30 s before normal rotations are allowed again.
    w.advance(TimeDelta::days(6) - TimeDelta::seconds(30));
    let began = w.now();
    let token = w.scheduler_token();
    let before = w.audit().await.len();
    for i in 0..1200 {
        let rid = format!("loop-{i}");
        let a = w.rotate(Some(&token), None, &[("x-request-id", rid.as_str())]).await;
        assert_eq!(a.status, 429, "request {i}: {}", a.text());
        let j = a.json();
        assert_eq!(j["error"], "rate_limited", "request {i}");
        if i < 5 {
            assert_eq!(j["outcome"], "rate_limited", "answered by the rotator: {j}");
        } else {
            assert_eq!(j["outcome"], Value::Null, "answered by the endpoint: {j}");
            let left = (began + TimeDelta::seconds(60) - w.now()).num_milliseconds();
            let secs = u64::try_from(left).expect("within the interval").div_ceil(1000);
            assert_eq!(j["retry_after_secs"].as_u64(), Some(secs), "to the end of the interval");
            let retry_after = secs.to_string();
            assert_eq!(
                keyrot_headers(&a),
                pairs(&[
                    ("cache-control", "no-store"),
                    ("content-type", "application/json"),
                    ("retry-after", retry_after.as_str()),
                    ("x-content-type-options", "nosniff"),
                    ("x-request-id", rid.as_str()),
                ])
            );
        }
        w.advance(TimeDelta::milliseconds(20));
    }
    let log = w.audit().await;
    assert_eq!(log.len() - before, 5, "the rotator wrote the budget, nothing more");
    assert!(log[before..].iter().all(|r| r.outcome == Outcome::RateLimited));

    // The rotator's limit is over, the client's budget lasts until the interval ends.
    w.advance(TimeDelta::seconds(10));
    let a = w.rotate(Some(&token), None, &[]).await;
    assert_eq!((a.status, a.header("retry-after")), (429, Some("26")), "{}", a.text());
    assert_eq!(w.generation().await, 1, "nothing rotated");

    w.advance(TimeDelta::seconds(26));
    let a = w.rotate(Some(&token), None, &[]).await;
    assert_eq!(
        a.status,
        202,
        "the first request after the interval rotates: {}",
        a.text()
    );
    assert_eq!(a.json()["outcome"], "scheduled");
    assert_eq!(w.generation().await, 2);
    let log = w.audit().await;
    let scheduler: Vec<&keyrot_core::AuditRecord> = log[before..].iter().filter(|r| r.actor == "scheduler").collect();
    assert_eq!(scheduler.len(), 5 + 2, "the budget, one summary, the rotation");
    let summary = scheduler[5];
    assert_eq!(
        (summary.outcome, summary.trigger),
        (Outcome::Refused, TriggerKind::Rotate)
    );
    assert!(
        summary
            .detail
            .as_deref()
            .is_some_and(|d| d.starts_with("1196 refused attempts by actor scheduler between ")),
        "{:?}",
        summary.detail
    );
    assert_eq!(scheduler[6].outcome, Outcome::Scheduled);
    assert_eq!(w.endpoints.flush_refusal_summaries().await, 0);
}

/// A key row moved to the end of time in storage (a Pending key whose `created_at +
/// publish_lead` is not a date) neither breaks the status page nor shows up as the next
/// transition.
pub async fn status_ignores_tampered_rows_at_the_end_of_time(start: Start) {
    let w = World::start(start).await;
    let a = w
        .rotate(
            Some(&w.admin_token()),
            Some(json!({"force": true, "reason": "two keys"})),
            &[],
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
    let max = chrono::DateTime::<chrono::Utc>::MAX_UTC;
    w.storage.tamper(&w.ring, |raw| {
        let row = raw.keys.iter_mut().find(|k| k.kid == w.first_kid).expect("row");
        row.state = keyrot_core::KeyState::Pending;
        row.created_at = max;
        row.activate_at = Some(max);
        row.expires_at = Some(max);
        *raw.generation += 1;
    });
    w.keyring.refresh().await.expect("refresh");
    for _ in 0..2 {
        let s = w.get(STATUS_PATH, Some(&w.scheduler_token())).await;
        assert_eq!(s.status, 200, "{}", s.text());
        let j = s.json();
        assert_eq!(
            j["next_transition"]["action"], "publish_next",
            "{}",
            j["next_transition"]
        );
        assert_eq!(j["next_transition"]["kid"], Value::Null);
        let row = j["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .find(|k| k["kid"] == w.first_kid.as_str())
            .cloned()
            .unwrap_or_default();
        assert!(row["tampered"].is_string(), "{row}");
    }
}
