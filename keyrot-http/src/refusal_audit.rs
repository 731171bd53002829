//! How many refused rotation attempts reach the audit ledger.
//!
//! Every refused attempt is traced, but the append-only ledger takes, per instance and
//! interval, at most a few records per actor and a few more in all; the rest of each
//! actor's refusals become one summary record when the interval ends, and the summaries
//! of one interval are capped too (beyond the global budget, actors are folded into the
//! [`UNTRACKED_ACTORS`] summary). No client without a rotation grant — with no token,
//! with a user token from a demo login, with many tokens — can grow the ledger faster
//! than `global` single records and `max(global, 1)` summaries per interval (plus one per
//! explicit flush), and the state kept for it is bounded by `2 × max_actors`.
//!
//! Clients with a rotation grant reach the rotator, which writes a record for every
//! answer. Their answers that change nothing (rate limited, already scheduled, lock busy,
//! replayed, failed, …) take a per-actor budget of the same size (a count of their own,
//! apart from the refusals naming the same actor); once it is used, the endpoint
//! answers that actor's further requests itself (`429`, until the interval ends) and
//! counts them into its summary. So each authorized actor adds at most `per_actor` (at
//! least 1) records per interval beyond those of rotations that changed the ring.
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
/// actor, [`ANONYMOUS_ACTOR`]. At most `global` (at least 1) summary records are written
/// per interval (plus one per explicit flush); beyond that the actors counted last are
/// folded into the [`UNTRACKED_ACTORS`] summary, authorized actors keeping their own
/// summary first.
///
/// The per-actor budget also bounds what callers *with* a rotation grant write through
/// the rotator: every answer of the rotator that did not change the ring (rate limited,
/// already scheduled, lock busy, replayed, idempotency key reused, failed, …) takes one of
/// the actor's `per_actor` of the interval — a count of its own, so refusals naming the
/// same client (say, a token of that client without the rotation scope) never spend it,
/// and no other client can either. Once the
/// budget is used (at least one request per interval always reaches the rotator, even
/// with `per_actor` 0), the endpoint answers that actor's further rotation requests
/// itself — `429 rate_limited` with `Retry-After` until the interval ends — without
/// calling the rotator, and counts them into the actor's summary. Rotations that changed
/// the ring never use the budget. Authorized actors are tracked apart from the refusals
/// of other callers (up to `max_actors` of each), and the global budget never stops them.
/// An over-budget actor's rotation is delayed by at most one interval: the first request
/// after the interval reaches the rotator again.
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
    /// Refusals written one by one.
    written: u32,
    /// Authorized requests let through to the rotator whose answer did not change the
    /// ring (each wrote a record), or that are still being answered. Counted apart from
    /// `written`: refusals naming this actor (a token of the same client without the
    /// rotation grant) never spend the authorized actor's budget.
    rotator: u32,
    excess: Option<Excess>,
    /// Whether the actor was authorized to rotate in this interval (its summary is kept
    /// one by one before other actors' when summaries are capped).
    authorized: bool,
}

impl ActorCount {
    fn count_excess(&mut self, forced: bool, now: DateTime<Utc>) {
        Excess::add(
            &mut self.excess,
            Excess {
                count: 1,
                first: now,
                last: now,
                forced,
            },
        );
    }
}

#[derive(Debug, Clone)]
struct Excess {
    count: u64,
    first: DateTime<Utc>,
    last: DateTime<Utc>,
    forced: bool,
}

impl Excess {
    /// Adds `more` into `into`.
    fn add(into: &mut Option<Excess>, more: Excess) {
        match into {
            Some(e) => {
                e.count = e.count.saturating_add(more.count);
                e.first = e.first.min(more.first);
                e.last = e.last.max(more.last);
                e.forced &= more.forced;
            }
            None => *into = Some(more),
        }
    }
}

/// Where an authorized request's reservation was counted.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Slot {
    Actor(String),
    UntrackedAuthorized,
}

/// One of an authorized actor's records of the interval, taken before the rotator is
/// called; given back with [`RefusalBudget::release`] when the answer changed the ring.
#[derive(Debug)]
#[must_use]
pub(crate) struct Reservation {
    ends: DateTime<Utc>,
    slot: Slot,
}

/// Whether an authorized request goes to the rotator.
#[derive(Debug)]
pub(crate) enum Gate {
    /// Yes; the reservation is given back if the answer changes the ring.
    Pass(Reservation),
    /// No: the actor's requests that changed nothing used its budget of the interval. The
    /// request is counted into the actor's summary and answered `429`, retry in this many
    /// seconds (the end of the interval, at least 1).
    OverBudget {
        /// Whole seconds until the interval ends, rounded up, at least 1.
        retry_after_secs: u64,
    },
}

#[derive(Debug)]
struct Window {
    ends: DateTime<Utc>,
    written: u32,
    actors: HashMap<String, ActorCount>,
    /// Entries of `actors` created by refusals before authorization, and by authorized
    /// requests: each kind at most `max_actors`, so refusals by many unauthenticated
    /// actors never push an authorized one into a shared count.
    refused_actors: usize,
    authorized_actors: usize,
    untracked: ActorCount,
    /// Authorized actors beyond `max_actors`, sharing one count of their own.
    untracked_authorized: ActorCount,
    /// Summary records taken in this interval.
    summaries: u32,
}

impl Window {
    fn new(ends: DateTime<Utc>) -> Self {
        Self {
            ends,
            written: 0,
            actors: HashMap::new(),
            refused_actors: 0,
            authorized_actors: 0,
            untracked: ActorCount::default(),
            untracked_authorized: ActorCount::default(),
            summaries: 0,
        }
    }

    /// Takes every actor's excess, oldest first: at most `cap` summaries per interval in
    /// all (whatever was taken before in the interval counts), the actors beyond it
    /// folded into the [`UNTRACKED_ACTORS`] summary. Authorized actors keep their own
    /// summary first, then the earliest.
    fn take_summaries(&mut self, cap: u32) -> Vec<RefusalSummary> {
        let mut tracked: Vec<(String, bool, Excess)> = self
            .actors
            .iter_mut()
            .filter_map(|(a, c)| c.excess.take().map(|e| (a.clone(), c.authorized, e)))
            .collect();
        let mut untracked = self.untracked.excess.take();
        if let Some(e) = self.untracked_authorized.excess.take() {
            Excess::add(&mut untracked, e);
        }
        tracked.sort_by(|a, b| (!a.1, a.2.first, &a.0).cmp(&(!b.1, b.2.first, &b.0)));
        let allowed = usize::try_from(cap.saturating_sub(self.summaries)).unwrap_or(usize::MAX);
        let wanted = tracked.len() + usize::from(untracked.is_some());
        if wanted > allowed {
            // One record stays for the untracked summary the rest are folded into.
            for (_, _, e) in tracked.drain(allowed.saturating_sub(1).min(tracked.len())..) {
                Excess::add(&mut untracked, e);
            }
        }
        let mut out: Vec<RefusalSummary> = tracked
            .into_iter()
            .map(|(actor, _, e)| (actor, e))
            .chain(untracked.map(|e| (UNTRACKED_ACTORS.to_owned(), e)))
            .map(|(actor, e)| RefusalSummary {
                actor,
                count: e.count,
                first: e.first,
                last: e.last,
                forced: e.forced,
            })
            .collect();
        out.sort_by(|a, b| (a.first, &a.actor).cmp(&(b.first, &b.actor)));
        self.summaries = self
            .summaries
            .saturating_add(u32::try_from(out.len()).unwrap_or(u32::MAX));
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

    /// The most summary records of one interval (the global budget, at least 1).
    fn summary_cap(&self) -> u32 {
        self.limits.global.max(1)
    }

    /// The current window, started at `now` if there is none.
    fn window(&mut self, now: DateTime<Utc>) -> &mut Window {
        let interval = self.interval;
        self.window
            .get_or_insert_with(|| Window::new(now.checked_add_signed(interval).unwrap_or(DateTime::<Utc>::MAX_UTC)))
    }

    /// Ends the interval if it is over at `now`, returning its summaries (to be written
    /// before anything of the next interval).
    pub(crate) fn roll(&mut self, now: DateTime<Utc>) -> Vec<RefusalSummary> {
        let cap = self.summary_cap();
        match &mut self.window {
            Some(w) if now >= w.ends => {
                let summaries = w.take_summaries(cap);
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
        let w = self.window(now);
        if w.refused_actors < limits.max_actors && !w.actors.contains_key(actor) {
            w.actors.insert(actor.to_owned(), ActorCount::default());
            w.refused_actors += 1;
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
        count.count_excess(forced, now);
        keyrot_core::adapter::record_ledger_aggregated("refused");
        false
    }

    /// Decides whether an authorized request by `actor` at `now` goes to the rotator.
    ///
    /// The rotator writes a record for every answer, so each answer that does not change
    /// the ring (rate limited, already scheduled, lock busy, replayed, a reused
    /// idempotency key, failed, …) takes one of the actor's per-actor budget of the
    /// interval — a budget of its own, apart from the refusals written under the same
    /// actor name, and at least 1, so that the first request of every interval reaches
    /// the rotator. The reservation is taken
    /// before the call (concurrent requests cannot overrun it) and given back with
    /// [`Self::release`] when the ring changed. Once the budget is used, the actor's
    /// requests are counted into its summary until the interval ends. The global budget
    /// does not stop authorized requests (no other actor can spend an authorized actor's
    /// budget), but their records count into it.
    pub(crate) fn reserve(&mut self, actor: &str, forced: bool, now: DateTime<Utc>) -> Gate {
        let limits = self.limits;
        let w = self.window(now);
        if w.authorized_actors < limits.max_actors && !w.actors.contains_key(actor) {
            w.actors.insert(actor.to_owned(), ActorCount::default());
            w.authorized_actors += 1;
        }
        let ends = w.ends;
        let (count, slot) = match w.actors.get_mut(actor) {
            Some(c) => (c, Slot::Actor(actor.to_owned())),
            None => (&mut w.untracked_authorized, Slot::UntrackedAuthorized),
        };
        count.authorized = true;
        if count.rotator < limits.per_actor.max(1) {
            count.rotator += 1;
            w.written = w.written.saturating_add(1);
            return Gate::Pass(Reservation { ends, slot });
        }
        count.count_excess(forced, now);
        keyrot_core::adapter::record_ledger_aggregated("over_budget");
        let ms = ends.signed_duration_since(now).num_milliseconds().max(1);
        Gate::OverBudget {
            retry_after_secs: u64::try_from(ms).unwrap_or(1).div_ceil(1000).max(1),
        }
    }

    /// Gives back a reservation whose request changed the ring (only within the interval
    /// it was taken in).
    pub(crate) fn release(&mut self, reservation: Reservation) {
        let Some(w) = &mut self.window else {
            return;
        };
        if w.ends != reservation.ends {
            return;
        }
        let count = match &reservation.slot {
            Slot::Actor(a) => w.actors.get_mut(a),
            Slot::UntrackedAuthorized => Some(&mut w.untracked_authorized),
        };
        if let Some(c) = count {
            c.rotator = c.rotator.saturating_sub(1);
            w.written = w.written.saturating_sub(1);
        }
    }

    /// Takes the summaries counted so far: those of an interval that is over and those of
    /// the current one, whose budgets stay as they are (a flush on shutdown or a timer).
    pub(crate) fn flush(&mut self, now: DateTime<Utc>) -> Vec<RefusalSummary> {
        let cap = self.summary_cap();
        let mut summaries = self.roll(now);
        if let Some(w) = &mut self.window {
            summaries.extend(w.take_summaries(cap));
        }
        summaries
    }
}

#[cfg(test)]
mod tests;
