use super::refusal::human_wait;
use super::*;
use crate::ring::RingName;
use chrono::TimeDelta;

fn record(kid: &str, state: KeyState, created_at: DateTime<Utc>) -> KeyRecord {
    KeyRecord {
        kid: kid.into(),
        alg: Algorithm::EdDsa,
        state,
        origin: KeyOrigin::Rotation,
        forced: false,
        fingerprint: format!("fp-{kid}"),
        public_jwk: "{}".into(),
        sealed: None,
        remote: None,
        created_at,
        activate_at: None,
        activated_at: None,
        retired_at: None,
        expires_at: None,
        expired_at: None,
        revoked_at: None,
        revoke_reason: None,
        purged_at: None,
    }
}

fn ring(keys: Vec<KeyRecord>) -> Ring {
    let mut r = Ring::empty(RingName::new("t").expect("ring name"));
    r.generation = 1;
    r.keys = keys;
    r
}

#[test]
fn the_tick_activates_when_next_transition_says() {
    let p = Policy::default();
    let t0 = DateTime::from_timestamp(1_900_000_000, 0).expect("time");
    let mut active = record("a", KeyState::Active, t0);
    active.activated_at = Some(t0);
    // A Pending row without `activate_at` activates `publish_lead` after it was
    // published, and not before `min_interval`: the same time for both.
    let pending = record("p", KeyState::Pending, t0 + TimeDelta::days(5) + TimeDelta::hours(12));
    let r = ring(vec![active, pending]);
    let next = r.next_transition(&p).expect("next");
    let due = t0 + TimeDelta::days(6) + TimeDelta::hours(12);
    assert_eq!(
        (next.action, next.kid.as_deref(), next.at),
        (TransitionAction::Activate, Some("p"), due)
    );
    let before = due - TimeDelta::milliseconds(1);
    assert_eq!(plan(&r, &p, before, &Trigger::Tick), Err(Refusal::NothingDue));
    let at = plan(&r, &p, due, &Trigger::Tick).expect("due");
    assert_eq!(at.kind, PlanKind::Rotated);
    assert_eq!(at.actions[0], Action::Activate { kid: "p".into() });
}

#[test]
fn the_tick_never_panics_near_the_end_of_time() {
    let p = Policy::default();
    let max = DateTime::<Utc>::MAX_UTC;
    let near = max - TimeDelta::hours(1);
    let mut active = record("a", KeyState::Active, near);
    active.activated_at = Some(near);
    let mut expired = record("e", KeyState::Expired, near);
    expired.expired_at = Some(near);
    let mut r = ring(vec![active.clone(), expired]);
    assert_eq!(plan(&r, &p, max, &Trigger::Tick), Err(Refusal::NothingDue));
    assert_eq!(r.next_transition(&p), None);
    let mut pending = record("p", KeyState::Pending, near);
    pending.activate_at = Some(max);
    r.keys.push(pending);
    assert_eq!(plan(&r, &p, max, &Trigger::Tick), Err(Refusal::NothingDue));
    assert_eq!(r.next_transition(&p), None);
}

#[test]
fn rate_limit_messages_are_readable() {
    assert_eq!(human_wait(0), "0s");
    assert_eq!(human_wait(1), "1s");
    assert_eq!(human_wait(90_061_000), "1d 1h 1m 1s");
    assert_eq!(human_wait(6 * 86_400_000), "6d");
    let r = Refusal::RateLimited {
        retry_after_ms: 3_599_001,
        forced: true,
    };
    assert_eq!(r.to_string(), "rate limited: the next forced rotation is allowed in 1h");
}
