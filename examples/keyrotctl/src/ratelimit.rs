//! What to do about a rate-limited rotation: when it is allowed, what can be revoked at
//! once, and which variable sets the interval. Advice only: the limit itself is the
//! rotator's, and nothing here gets around it.

use crate::clean;
use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use keyrot_core::{KeyState, Outcome, Policy, Refusal, Ring, RotationReport};

/// The variable that sets the interval between forced rotations.
pub(crate) const FORCED_VAR: &str = "KEYROT_POLICY_FORCED_MIN_INTERVAL_MS";
/// The variable that sets the interval between normal rotations.
pub(crate) const NORMAL_VAR: &str = "KEYROT_POLICY_MIN_INTERVAL_MS";

/// The advice for a rate-limited `report`, `None` for any other answer.
pub(crate) struct Advice {
    /// When the refused rotation is allowed, to the second (rounded up).
    pub(crate) allowed_at: DateTime<Utc>,
    /// Whether the forced limit applied.
    pub(crate) forced: bool,
    /// The Active key.
    pub(crate) active: Option<String>,
    /// The keys that can be revoked now (Pending or Retiring), with their state.
    pub(crate) revocable: Vec<(String, KeyState)>,
    /// The interval in force.
    pub(crate) interval: TimeDelta,
}

impl Advice {
    pub(crate) fn of(report: &RotationReport, ring: &Ring, policy: &Policy) -> Option<Self> {
        if report.outcome != Outcome::RateLimited {
            return None;
        }
        let forced = match &report.refusal {
            Some(Refusal::RateLimited { forced, .. }) => *forced,
            _ => report.forced,
        };
        let interval = if forced {
            policy.forced_min_interval()
        } else {
            policy.min_interval()
        };
        // The planner's rule: the last forced activation (forced), or the Active key's
        // (normal), plus the interval; else the report's wait from its time.
        let last = if forced {
            ring.last_forced_activation()
        } else {
            ring.active().map(|k| k.activated_at.unwrap_or(k.created_at))
        };
        let waited = report.at + TimeDelta::milliseconds(report.retry_after_ms.unwrap_or(0).max(0));
        let exact = last
            .and_then(|t| t.checked_add_signed(interval))
            .filter(|t| *t > report.at)
            .unwrap_or(waited);
        let whole = DateTime::from_timestamp(exact.timestamp(), 0).unwrap_or(exact);
        let allowed_at = if whole < exact {
            whole + TimeDelta::seconds(1)
        } else {
            whole
        };
        let revocable = ring
            .keys
            .iter()
            .filter(|k| matches!(k.state, KeyState::Pending | KeyState::Retiring))
            .map(|k| (k.kid.clone(), k.state))
            .collect();
        Some(Self {
            allowed_at,
            forced,
            active: ring.active().map(|k| k.kid.clone()).or_else(|| report.old_kid.clone()),
            revocable,
            interval,
        })
    }

    fn allowed(&self) -> String {
        self.allowed_at.to_rfc3339_opts(SecondsFormat::Secs, true)
    }

    /// The variable that sets the interval that applied.
    pub(crate) fn variable(&self) -> &'static str {
        if self.forced { FORCED_VAR } else { NORMAL_VAR }
    }

    /// The `--json` report `report` (a JSON object, as printed so far) with the advice's
    /// fields added at its end: `allowed_at`, `interval_variable`, `revocable_now`.
    pub(crate) fn add_to(&self, report: &str) -> String {
        let extra = serde_json::json!({
            "allowed_at": self.allowed(),
            "interval_variable": self.variable(),
            "revocable_now": self.revocable.iter().map(|(kid, _)| kid.as_str()).collect::<Vec<_>>(),
        })
        .to_string();
        match (report.strip_suffix('}'), extra.strip_prefix('{')) {
            (Some(head), Some(tail)) if head.len() > 1 => format!("{head},{tail}"),
            _ => report.to_owned(),
        }
    }

    /// The lines added to the human report.
    pub(crate) fn lines(&self) -> Vec<String> {
        let allowed = self.allowed();
        let kind = if self.forced { "forced" } else { "normal" };
        let mut out = vec![format!("allowed at  {allowed} (the next {kind} rotation)")];
        out.push(
            "revoke now  a leaked key that is not the Active key: keyrotctl revoke KID --reason TEXT --yes \
             (revocations are not rate limited)"
                .to_owned(),
        );
        if self.revocable.is_empty() {
            out.push("revocable   none: every key but the Active one is already Expired".to_owned());
        } else {
            let kids: Vec<String> = self
                .revocable
                .iter()
                .map(|(kid, state)| format!("{} ({})", clean(kid), state.as_str()))
                .collect();
            out.push(format!("revocable   {}", kids.join(", ")));
        }
        if let Some(kid) = &self.active {
            out.push(format!(
                "active key  {} cannot be revoked on its own: a forced rotation with --revoke-old replaces and \
                 revokes it{}",
                clean(kid),
                if self.forced {
                    format!(", allowed at {allowed}")
                } else {
                    String::new()
                }
            ));
        }
        let ms = self.interval.num_milliseconds();
        out.push(if self.forced {
            format!(
                "interval    {FORCED_VAR} sets the interval between forced rotations (in force: {ms} ms); \
                 {NORMAL_VAR} that between normal ones"
            )
        } else {
            format!(
                "interval    {NORMAL_VAR} sets the interval between normal rotations (in force: {ms} ms); \
                 {FORCED_VAR} that between forced ones (keyrotctl rotate --force)"
            )
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::Advice;
    use chrono::{TimeDelta, TimeZone as _, Utc};
    use keyrot_core::{Outcome, Policy, RingName, RotationReport};

    #[test]
    fn the_allowed_moment_is_rounded_up_to_the_second() {
        let at = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).single().expect("time") + TimeDelta::milliseconds(250);
        let report: RotationReport = serde_json::from_value(serde_json::json!({
            "outcome": "rate_limited", "ring": "r", "generation": 3, "forced": true,
            "old_kid": null, "old_fingerprint": null, "new_kid": null, "new_fingerprint": null,
            "activates_at": null, "retry_after_ms": 2_966_000, "detail": null,
            "refusal": { "refusal": "rate_limited", "retry_after_ms": 2_966_000, "forced": true },
            "at": at,
        }))
        .expect("report");
        assert_eq!(report.outcome, Outcome::RateLimited);
        let ring = keyrot_core::Ring::empty(RingName::new("r").expect("name"));
        let policy = Policy::builder().build().expect("policy");
        let advice = Advice::of(&report, &ring, &policy).expect("advice");
        assert_eq!(
            advice.lines()[0],
            "allowed at  2026-01-01T00:49:27Z (the next forced rotation)"
        );
        assert_eq!(advice.variable(), "KEYROT_POLICY_FORCED_MIN_INTERVAL_MS");
        // The JSON report keeps its text and gains the advice's fields at its end.
        let printed = serde_json::to_string(&report).expect("json");
        let with = advice.add_to(&printed);
        assert!(with.starts_with(printed.trim_end_matches('}')), "{with}");
        let v: serde_json::Value = serde_json::from_str(&with).expect("still JSON");
        assert_eq!(v["allowed_at"], "2026-01-01T00:49:27Z");
        assert_eq!(v["revocable_now"], serde_json::json!([]));
    }
}
