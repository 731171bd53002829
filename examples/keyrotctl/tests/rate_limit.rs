//! A rate-limited forced rotation says what to do (issue 22): when the Active key can be
//! replaced, what can be revoked now, and which variable sets the interval. The real
//! binary on a real SQLite file.

mod support;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use support::{Dir, ctl, ctl_env};

#[test]
fn a_rate_limited_forced_rotation_says_what_to_do() {
    let dir = Dir::new("rate-limit");
    assert_eq!(ctl(&dir, &["migrate"]).0, 0);
    let (code, out, err) = ctl(&dir, &["init"]);
    assert_eq!(code, 0, "{out}{err}");
    let first = out.rsplit(' ').next().expect("kid").trim().to_owned();

    // The quickstart's drill: a forced rotation.
    let (code, out, err) = ctl(&dir, &["rotate", "--force", "--reason", "drill", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let drill: serde_json::Value = serde_json::from_str(&out).expect("json report");
    let active = drill["new_kid"].as_str().expect("new Active key").to_owned();
    let (code, out, _) = ctl(&dir, &["status", "--json"]);
    assert_eq!(code, 0);
    let status: serde_json::Value = serde_json::from_str(&out).expect("status json");
    let activated = status["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["kid"] == active.as_str())
        .and_then(|k| k["activated_at"].as_str())
        .expect("activated_at")
        .to_owned();
    // The default forced interval is an hour from the last forced activation, rounded up
    // to the second.
    let allowed = DateTime::parse_from_rfc3339(&activated)
        .expect("rfc 3339")
        .with_timezone(&Utc)
        + TimeDelta::hours(1);
    let allowed = DateTime::from_timestamp(allowed.timestamp() + i64::from(allowed.timestamp_subsec_nanos() > 0), 0)
        .expect("time")
        .to_rfc3339_opts(SecondsFormat::Secs, true);

    // The incident runbook's step 1, right after: refused, and told what to do.
    let leak = ["rotate", "--force", "--revoke-old", "--reason", "leaked"];
    let (code, out, err) = ctl(&dir, &leak);
    assert_eq!(code, 1, "rate limited: {out}{err}");
    for expected in [
        "outcome     rate_limited\n".to_owned(),
        "detail      rate limited: the next forced rotation is allowed in ".to_owned(),
        format!("allowed at  {allowed} (the next forced rotation)\n"),
        "revoke now  a leaked key that is not the Active key: keyrotctl revoke KID --reason TEXT --yes \
         (revocations are not rate limited)\n"
            .to_owned(),
        format!("revocable   {first} (retiring)\n"),
        format!(
            "active key  {active} cannot be revoked on its own: a forced rotation with --revoke-old replaces and \
             revokes it, allowed at {allowed}\n"
        ),
        "interval    KEYROT_POLICY_FORCED_MIN_INTERVAL_MS sets the interval between forced rotations (in force: \
         3600000 ms); KEYROT_POLICY_MIN_INTERVAL_MS that between normal ones\n"
            .to_owned(),
    ] {
        assert!(out.contains(&expected), "missing {expected:?} in:\n{out}");
    }
    assert!(err.contains("keyrotctl: rate_limited: rate limited"), "{err}");

    // The same in JSON: the report's fields, and the advice's.
    let (code, out, err) = ctl(&dir, &[leak.as_slice(), &["--json"]].concat());
    assert_eq!(code, 1, "{out}{err}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("json report");
    assert_eq!(report["outcome"], "rate_limited", "{report}");
    assert!(report["retry_after_ms"].as_i64().is_some_and(|ms| ms > 0), "{report}");
    assert_eq!(report["allowed_at"], allowed.as_str(), "{report}");
    assert_eq!(report["interval_variable"], "KEYROT_POLICY_FORCED_MIN_INTERVAL_MS");
    assert_eq!(report["revocable_now"], serde_json::json!([first]));

    // What the advice says works: the Retiring key is revoked now, not rate limited ...
    let (code, out, err) = ctl(&dir, &["revoke", &first, "--reason", "leaked", "--yes"]);
    assert_eq!(code, 0, "{out}{err}");
    // ... the Active key is not ...
    let (code, out, err) = ctl(&dir, &["revoke", &active, "--reason", "leaked", "--yes"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("is the Active key"), "{out}");
    // ... and the variable sets the interval (no bypass: a policy, validated as any).
    let (code, out, err) = ctl_env(&dir, &leak, &[("KEYROT_POLICY_FORCED_MIN_INTERVAL_MS", "0")]);
    assert_eq!(code, 2, "an interval of zero is not a policy: {out}{err}");
    let (code, out, err) = ctl_env(&dir, &leak, &[("KEYROT_POLICY_FORCED_MIN_INTERVAL_MS", "1")]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("outcome     rotated\n"), "{out}");
    assert!(out.contains(&format!("old key     {active}\n")), "{out}");
}
