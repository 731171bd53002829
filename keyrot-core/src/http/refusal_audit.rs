//! How many refused rotation attempts reach the audit ledger.
//!
//! Every refused attempt is traced, but the append-only ledger takes, per instance and
//! interval, at most a few records per actor and a few more in all; the rest of each
//! actor's refusals become one summary record when the interval ends. No client — with
//! no token, with a user token from a demo login, with many tokens — can grow the ledger
//! faster than `global + max_actors + 1` records per interval, and the state kept for it
//! is bounded by `max_actors`.
//!
//! The bookkeeping here is pure: time comes in as `now`, records are written by the
//! endpoint.

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use std::collections::HashMap;
use std::time::Duration;

/// Default number of refused attempts written per actor and interval.
pub const DEFAULT_REFUSALS_AUDITED_PER_ACTOR: u32 = 10;
/// Default number of refused attempts written in all (every actor) per interval.
pub const DEFAULT_REFUSALS_AUDITED_GLOBAL: u32 = 60;
/// Default interval of the refusal audit budget.
pub const DEFAULT_REFUSAL_AUDIT_INTERVAL: Duration = Duration::from_secs(60);
/// Default number of actors counted one by one per interval.
pub const DEFAULT_REFUSAL_AUDIT_MAX_ACTORS: usize = 1024;
/// The actor of refused requests that never authenticated.
pub const ANONYMOUS_ACTOR: &str = "anonymous";
/// The actor of the summary that counts the actors beyond
/// [`RefusalAuditLimits::with_max_actors`].
pub const UNTRACKED_ACTORS: &str = "(untracked actors)";

/// Shortest and longest accepted interval.
const INTERVAL_RANGE: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(24 * 3600));

/// How many refused attempts (401, 403 and the endpoint's own 400, 413, 415) the rotation
/// endpoint writes to the audit ledger, per instance and interval. Beyond either budget
/// an actor's refusals are traced and counted, and the count is written as one record
/// per actor when the interval ends (or on [`HttpEndpoints::flush_refusal_summaries`]),
/// whose detail reads `N refused attempts by actor X between T1 and T2` (RFC 3339 times
/// of the first and the last attempt counted).
///
/// Defaults: 10 per actor, 60 in all, per minute; 1024 actors counted one by one, the
/// rest together as [`UNTRACKED_ACTORS`]. Requests without a valid token count as one
/// actor, [`ANONYMOUS_ACTOR`].
///
/// [`HttpEndpoints::flush_refusal_summaries`]: super::HttpEndpoints::flush_refusal_summaries
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefusalAuditLimits {
    per_actor: u32,
    global: u32,
    interval: Duration,
    max_actors: usize,
}

impl Default for RefusalAuditLimits {
    fn default() -> Self {
        Self {
            per_actor: DEFAULT_REFUSALS_AUDITED_PER_ACTOR,
            global: DEFAULT_REFUSALS_AUDITED_GLOBAL,
            interval: DEFAULT_REFUSAL_AUDIT_INTERVAL,
            max_actors: DEFAULT_REFUSAL_AUDIT_MAX_ACTORS,
        }
    }
}

impl RefusalAuditLimits {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Refused attempts written per actor and interval (0: only summaries).
    pub fn with_per_actor(mut self, n: u32) -> Self {
        self.per_actor = n;
        self
    }

    /// Refused attempts written in all per interval.
    pub fn with_global(mut self, n: u32) -> Self {
        self.global = n;
        self
    }

    /// The interval (1 second to 1 day; checked by the endpoints builder).
    pub fn with_interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Actors counted one by one per interval; refusals of further actors are counted
    /// together under [`UNTRACKED_ACTORS`].
    pub fn with_max_actors(mut self, n: usize) -> Self {
        self.max_actors = n;
        self
    }

    /// Refused attempts written per actor and interval.
    pub fn per_actor(&self) -> u32 {
        self.per_actor
    }

    /// Refused attempts written in all per interval.
    pub fn global(&self) -> u32 {
        self.global
    }

    /// The interval.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Actors counted one by one per interval.
    pub fn max_actors(&self) -> usize {
        self.max_actors
    }

    /// The interval as a [`TimeDelta`], when it is in the accepted range.
    pub(crate) fn checked_interval(&self) -> Option<TimeDelta> {
        let (min, max) = INTERVAL_RANGE;
        (min..=max)
            .contains(&self.interval)
            .then(|| TimeDelta::from_std(self.interval).ok())
            .flatten()
    }
}

/// An actor's refusals beyond the budget, not written one by one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RefusalSummary {
    /// Who.
    pub(crate) actor: String,
    /// How many.
    pub(crate) count: u64,
    /// The first one counted.
    pub(crate) first: DateTime<Utc>,
    /// The last one counted.
    pub(crate) last: DateTime<Utc>,
    /// Whether every one asked for a forced rotation.
    pub(crate) forced: bool,
}

impl RefusalSummary {
    /// The audit record's detail.
    pub(crate) fn detail(&self) -> String {
        format!(
            "{} refused attempts by actor {} between {} and {}",
            self.count,
            self.actor,
            self.first.to_rfc3339_opts(SecondsFormat::Millis, true),
            self.last.to_rfc3339_opts(SecondsFormat::Millis, true),
        )
    }
}

#[derive(Debug, Default)]
struct ActorCount {
    written: u32,
    excess: Option<Excess>,
}

#[derive(Debug)]
struct Excess {
    count: u64,
    first: DateTime<Utc>,
    last: DateTime<Utc>,
    forced: bool,
}

#[derive(Debug)]
struct Window {
    ends: DateTime<Utc>,
    written: u32,
    actors: HashMap<String, ActorCount>,
    untracked: ActorCount,
}

impl Window {
    /// Takes every actor's excess, oldest first.
    fn take_summaries(&mut self) -> Vec<RefusalSummary> {
        let tracked = self.actors.iter_mut().map(|(a, c)| (a.as_str(), c));
        let mut out: Vec<RefusalSummary> = tracked
            .chain(std::iter::once((UNTRACKED_ACTORS, &mut self.untracked)))
            .filter_map(|(actor, c)| {
                c.excess.take().map(|e| RefusalSummary {
                    actor: actor.to_owned(),
                    count: e.count,
                    first: e.first,
                    last: e.last,
                    forced: e.forced,
                })
            })
            .collect();
        out.sort_by(|a, b| (a.first, &a.actor).cmp(&(b.first, &b.actor)));
        out
    }
}

/// The budget of one endpoint (one instance): the current interval's counts.
#[derive(Debug)]
pub(crate) struct RefusalBudget {
    limits: RefusalAuditLimits,
    interval: TimeDelta,
    window: Option<Window>,
}

impl RefusalBudget {
    /// A budget with validated `limits` (`interval` is their checked interval).
    pub(crate) fn new(limits: RefusalAuditLimits, interval: TimeDelta) -> Self {
        Self {
            limits,
            interval,
            window: None,
        }
    }

    /// Ends the interval if it is over at `now`, returning its summaries (to be written
    /// before anything of the next interval).
    pub(crate) fn roll(&mut self, now: DateTime<Utc>) -> Vec<RefusalSummary> {
        match &mut self.window {
            Some(w) if now >= w.ends => {
                let summaries = w.take_summaries();
                self.window = None;
                summaries
            }
            _ => Vec::new(),
        }
    }

    /// Counts a refusal by `actor` at `now`: `true` when it is to be written to the
    /// ledger, `false` when it went into the actor's summary. An interval starts with the
    /// first refusal after the previous one ended.
    pub(crate) fn admit(&mut self, actor: &str, forced: bool, now: DateTime<Utc>) -> bool {
        let limits = self.limits;
        let interval = self.interval;
        let w = self.window.get_or_insert_with(|| Window {
            ends: now + interval,
            written: 0,
            actors: HashMap::new(),
            untracked: ActorCount::default(),
        });
        if w.actors.len() < limits.max_actors && !w.actors.contains_key(actor) {
            w.actors.insert(actor.to_owned(), ActorCount::default());
        }
        let count = match w.actors.get_mut(actor) {
            Some(c) => c,
            None => &mut w.untracked,
        };
        if count.written < limits.per_actor && w.written < limits.global {
            count.written += 1;
            w.written += 1;
            return true;
        }
        match &mut count.excess {
            Some(e) => {
                e.count += 1;
                e.last = now;
                e.forced &= forced;
            }
            None => {
                count.excess = Some(Excess {
                    count: 1,
                    first: now,
                    last: now,
                    forced,
                });
            }
        }
        false
    }

    /// Takes the summaries counted so far: those of an interval that is over and those of
    /// the current one, whose budgets stay as they are (a flush on shutdown or a timer).
    pub(crate) fn flush(&mut self, now: DateTime<Utc>) -> Vec<RefusalSummary> {
        let mut summaries = self.roll(now);
        if let Some(w) = &mut self.window {
            summaries.extend(w.take_summaries());
        }
        summaries
    }
}

#[cfg(test)]
mod tests {
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
}
