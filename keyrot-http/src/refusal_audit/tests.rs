//! The refusal budgets: per actor, global, summaries, the actor table's bound.
use super::*;

fn t(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_900_000_000 + secs, 0).expect("time")
}

fn budget(limits: RefusalAuditLimits) -> RefusalBudget {
    let interval = limits.checked_interval().expect("interval");
    RefusalBudget::new(limits, interval)
}

#[test]
fn per_actor_then_summary() {
    let mut b = budget(RefusalAuditLimits::new().with_per_actor(2));
    let admitted: Vec<bool> = (0..5).map(|i| b.admit("u", false, t(i))).collect();
    assert_eq!(admitted, [true, true, false, false, false]);
    assert!(b.roll(t(59)).is_empty(), "the interval is not over");
    let s = b.roll(t(60));
    assert_eq!(
        s,
        vec![RefusalSummary {
            actor: "u".into(),
            count: 3,
            first: t(2),
            last: t(4),
            forced: false
        }]
    );
    assert_eq!(
        s[0].detail(),
        "3 refused attempts by actor u between 2030-03-17T17:46:42.000Z and 2030-03-17T17:46:44.000Z"
    );
    assert!(b.admit("u", false, t(61)), "a new interval, a new budget");
}

#[test]
fn the_global_budget_and_untracked_actors() {
    let mut b = budget(
        RefusalAuditLimits::new()
            .with_per_actor(5)
            .with_global(3)
            .with_max_actors(2),
    );
    assert!(b.admit("a", true, t(0)));
    assert!(b.admit("b", true, t(1)));
    assert!(b.admit("c", true, t(2)), "untracked actors share one count");
    assert!(!b.admit("d", false, t(3)), "global budget spent");
    assert!(!b.admit("a", true, t(4)));
    let s = b.flush(t(5));
    let got: Vec<(&str, u64, bool)> = s.iter().map(|s| (s.actor.as_str(), s.count, s.forced)).collect();
    assert_eq!(got, [(UNTRACKED_ACTORS, 1, false), ("a", 1, true)]);
    assert!(b.flush(t(6)).is_empty(), "a flush takes the counts");
    assert!(!b.admit("b", false, t(7)), "but keeps the budgets");
    assert!(b.roll(t(60)).len() == 1);
}

#[test]
fn intervals_are_checked() {
    assert!(RefusalAuditLimits::new().checked_interval().is_some());
    for bad in [Duration::ZERO, Duration::from_millis(999), Duration::from_secs(86_401)] {
        assert!(
            RefusalAuditLimits::new()
                .with_interval(bad)
                .checked_interval()
                .is_none()
        );
    }
}

fn passes(g: &Gate) -> bool {
    matches!(g, Gate::Pass(_))
}

#[test]
fn authorized_requests_that_change_nothing_have_a_budget() {
    let mut b = budget(RefusalAuditLimits::new().with_per_actor(2));
    let first = b.reserve("svc", false, t(0));
    assert!(passes(&first));
    assert!(passes(&b.reserve("svc", false, t(1))));
    match b.reserve("svc", false, t(10)) {
        Gate::OverBudget { retry_after_secs } => assert_eq!(retry_after_secs, 50, "to the end of the interval"),
        g => panic!("over budget: {g:?}"),
    }
    // An answer that changed the ring gives its reservation back.
    if let Gate::Pass(r) = first {
        b.release(r);
    }
    assert!(passes(&b.reserve("svc", false, t(11))));
    assert!(!passes(&b.reserve("svc", true, t(12))));
    let s = b.roll(t(60));
    let got: Vec<(&str, u64, bool)> = s.iter().map(|s| (s.actor.as_str(), s.count, s.forced)).collect();
    assert_eq!(got, [("svc", 2, false)], "the excess goes into the actor's summary");
    let next = b.reserve("svc", false, t(60));
    assert!(passes(&next), "the first request of the next interval passes");
    // A reservation of an interval that is over is not given back into the next one.
    let _ = b.reserve("svc", false, t(61));
    let _ = b.roll(t(120));
    let fresh = b.reserve("svc", false, t(120));
    if let Gate::Pass(r) = next {
        b.release(r);
    }
    assert!(passes(&fresh));
    assert!(passes(&b.reserve("svc", false, t(121))));
    assert!(
        !passes(&b.reserve("svc", false, t(122))),
        "the old release did not count"
    );
}

#[test]
fn refusals_never_spend_an_authorized_actors_budget() {
    let mut b = budget(
        RefusalAuditLimits::new()
            .with_per_actor(1)
            .with_global(2)
            .with_max_actors(2),
    );
    for i in 0..50 {
        // The same client without the rotation grant, and many other actors.
        let _ = b.admit("svc", false, t(0));
        let _ = b.admit(&format!("app-{i}"), false, t(0));
    }
    assert!(
        passes(&b.reserve("svc", false, t(1))),
        "global and refusal budgets spent"
    );
    assert!(!passes(&b.reserve("svc", false, t(1))));
    assert!(
        passes(&b.reserve("other-rotator", false, t(1))),
        "authorized actors are tracked apart from the refusing ones"
    );
    assert!(passes(&b.reserve("third-rotator", false, t(1))));
    assert!(
        passes(&b.reserve("fourth-rotator", false, t(1))),
        "beyond max_actors authorized actors share one count of their own"
    );
    assert!(!passes(&b.reserve("fifth-rotator", false, t(1))));
    let s = b.roll(t(60));
    let got: Vec<&str> = s.iter().map(|s| s.actor.as_str()).collect();
    assert_eq!(
        got,
        [UNTRACKED_ACTORS, "svc"],
        "within the cap of 2, the authorized actor keeps its summary (app-0 is folded)"
    );
}

#[test]
fn per_actor_zero_still_lets_one_request_through() {
    let mut b = budget(RefusalAuditLimits::new().with_per_actor(0));
    assert!(!b.admit("svc", false, t(0)), "no single refusals");
    assert!(passes(&b.reserve("svc", false, t(0))));
    assert!(!passes(&b.reserve("svc", false, t(1))));
}

#[test]
fn summaries_are_capped_per_interval() {
    let mut b = budget(RefusalAuditLimits::new().with_per_actor(0).with_global(3));
    for i in 0..6 {
        assert!(!b.admit(&format!("app-{i}"), false, t(i)));
    }
    let _ = b.reserve("svc", false, t(10));
    let _ = b.reserve("svc", true, t(11));
    let s = b.roll(t(60));
    let got: Vec<(&str, u64)> = s.iter().map(|s| (s.actor.as_str(), s.count)).collect();
    assert_eq!(
        got,
        [("app-0", 1), (UNTRACKED_ACTORS, 5), ("svc", 1)],
        "the authorized actor first, then the earliest; the rest folded"
    );
    assert_eq!((s[1].first, s[1].last), (t(1), t(5)));

    // Flushes within one interval share its cap (one more folded record each).
    for i in 0..6 {
        let _ = b.admit(&format!("app-{i}"), false, t(60 + i));
    }
    assert_eq!(b.flush(t(70)).len(), 3);
    let _ = b.admit("app-0", false, t(71));
    let _ = b.admit("app-1", false, t(72));
    let s = b.flush(t(73));
    let got: Vec<(&str, u64)> = s.iter().map(|s| (s.actor.as_str(), s.count)).collect();
    assert_eq!(got, [(UNTRACKED_ACTORS, 2)]);
    assert!(b.roll(t(120)).is_empty());
}
