//! `keyrotctl retire-ring`: tenant offboarding with the real binary on a real SQLite file.

mod support;

use support::{Dir, ctl};

#[test]
fn retire_ring_revokes_every_key_for_good() {
    let dir = Dir::new("retire");
    assert_eq!(ctl(&dir, &["migrate"]).0, 0);
    let (code, out, err) = ctl(&dir, &["init"]);
    assert_eq!(code, 0, "{out}{err}");
    let kid = out.rsplit(' ').next().expect("kid").trim().to_owned();

    let (code, _, err) = ctl(&dir, &["retire-ring"]);
    assert_eq!(code, 2, "a reason is required: {err}");
    let (code, out, err) = ctl(&dir, &["retire-ring", "--reason", "contract ended"]);
    assert_eq!(code, 2, "and a confirmation: {err}");
    assert!(out.contains(&format!("would revoke {kid}")), "{out}");
    let (code, out, err) = ctl(&dir, &["retire-ring", "--reason", "contract ended", "--yes", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("json report");
    assert_eq!(report["outcome"], "retired");
    assert_eq!(report["revocation"]["kid"], kid.as_str());

    let (code, _, err) = ctl(&dir, &["init"]);
    assert_eq!(code, 1, "a retired ring is never initialised again: {err}");
    assert!(err.contains("retired"), "{err}");
    let (code, out, _) = ctl(&dir, &["status"]);
    assert_eq!(code, 0);
    assert!(out.contains("retired: the ring was offboarded"), "{out}");
    assert!(out.contains("next: nothing, ever"), "{out}");
    let (code, out, _) = ctl(&dir, &["jwks"]);
    assert_eq!(code, 0);
    let jwks: serde_json::Value = serde_json::from_str(&out).expect("jwks");
    assert_eq!(jwks["keys"], serde_json::json!([]), "no key is published");
    let (code, out, _) = ctl(&dir, &["audit"]);
    assert_eq!(code, 0);
    assert!(out.contains("retire_ring") && out.contains("contract ended"), "{out}");
    let (code, out, err) = ctl(&dir, &["retire-ring", "--reason", "again", "--yes"]);
    assert_eq!(code, 0, "retiring again changes nothing: {out}{err}");
    assert!(out.contains("already retired"), "{out}");
}

/// `--actor` names who acted in the ledger (issue 22); a name that is not 1-64 visible
/// ASCII characters is refused before anything is done.
#[test]
fn the_actor_is_settable_and_checked() {
    let dir = Dir::new("actor");
    assert_eq!(ctl(&dir, &["migrate"]).0, 0);
    let (code, _, err) = ctl(&dir, &["--actor", "bad name", "init"]);
    assert_eq!(code, 2, "a space is refused: {err}");
    let (code, out, err) = ctl(&dir, &["--actor", "alice", "init"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = ctl(&dir, &["audit", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let records: serde_json::Value = serde_json::from_str(&out).expect("json audit");
    let actors: Vec<&str> = records
        .as_array()
        .expect("records")
        .iter()
        .filter_map(|r| r["actor"].as_str())
        .collect();
    assert_eq!(actors, ["cli:alice"], "{out}");
}

/// `verify --at` takes the RFC 3339 times `status` and `audit` print, as well as Unix
/// seconds (issue 22); anything else is a usage error.
#[test]
fn verify_at_takes_rfc_3339_and_unix_seconds() {
    let dir = Dir::new("verify-at");
    assert_eq!(ctl(&dir, &["migrate"]).0, 0);
    assert_eq!(ctl(&dir, &["init"]).0, 0);
    let (code, token, err) = ctl(&dir, &["token", "--sub", "bob", "--ttl", "10m"]);
    assert_eq!(code, 0, "{err}");
    let token = token.trim();
    let now = chrono::Utc::now();
    let inside = (now + chrono::TimeDelta::minutes(5)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let after = (now + chrono::TimeDelta::hours(1)).timestamp().to_string();
    let (code, out, err) = ctl(&dir, &["verify", "--at", &inside, token]);
    assert_eq!(code, 0, "valid five minutes from now: {out}{err}");
    assert!(out.contains("\"bob\""), "{out}");
    let (code, _, err) = ctl(&dir, &["verify", "--at", &after, token]);
    assert_eq!(code, 1, "expired an hour from now: {err}");
    let (code, _, err) = ctl(&dir, &["verify", "--at", "yesterday", token]);
    assert_eq!(code, 2, "not a time: {err}");
}

/// `revoke` names the revoked kid and labels the ring's Active key as such, not as an
/// "old key" (issue 22).
#[test]
fn revoke_names_the_revoked_key_and_the_active_one() {
    let dir = Dir::new("revoke-labels");
    assert_eq!(ctl(&dir, &["migrate"]).0, 0);
    let (code, out, err) = ctl(&dir, &["init"]);
    assert_eq!(code, 0, "{out}{err}");
    let first = out.rsplit(' ').next().expect("kid").trim().to_owned();
    let (code, out, err) = ctl(&dir, &["rotate", "--force", "--reason", "test", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("json report");
    let active = report["new_kid"].as_str().expect("a new Active key").to_owned();
    // The first key is Retiring now; revoke it.
    let (code, out, err) = ctl(&dir, &["revoke", &first, "--reason", "test", "--yes"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("revoked     {first}")), "{out}");
    assert!(out.contains(&format!("active key  {active}")), "{out}");
    assert!(!out.contains("old key"), "{out}");
}
