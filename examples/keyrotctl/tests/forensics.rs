//! `keyrotctl verify --at T` answers for every key the ring ever held (issue 22): the
//! key's state at T and its window, with the real binary on a real SQLite file, through
//! a real lifecycle (Pending, Active, Retiring, revoked, purged).

mod support;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use std::time::Duration;
use support::{Dir, ctl, ctl_env};

/// A policy short enough to walk a key through its life in seconds.
const POLICY: [(&str, &str); 6] = [
    ("KEYROT_POLICY_JWKS_MAX_AGE_MS", "0"),
    ("KEYROT_POLICY_VERIFIER_CACHE_MS", "0"),
    ("KEYROT_POLICY_CLOCK_SKEW_MS", "0"),
    ("KEYROT_POLICY_PUBLISH_LEAD_MS", "2000"),
    ("KEYROT_POLICY_MIN_INTERVAL_MS", "1"),
    ("KEYROT_POLICY_FORCED_MIN_INTERVAL_MS", "1"),
];

/// Enough for every recorded time to fall in a different whole second from the last.
const STEP: Duration = Duration::from_millis(2100);

fn run(dir: &Dir, args: &[&str]) -> (i32, String, String) {
    ctl_env(dir, args, &POLICY)
}

fn ok(dir: &Dir, args: &[&str]) -> String {
    let (code, out, err) = run(dir, args);
    assert_eq!(code, 0, "{args:?}: {out}{err}");
    out
}

fn json(dir: &Dir, args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&ok(dir, args)).expect("json")
}

/// The key `kid` of `status --json`.
fn key(dir: &Dir, kid: &str) -> serde_json::Value {
    let st = json(dir, &["status", "--json"]);
    st["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["kid"] == kid)
        .cloned()
        .unwrap_or_else(|| panic!("no key {kid}: {st}"))
}

/// A time of `key` as printed (RFC 3339) and parsed.
fn time(key: &serde_json::Value, field: &str) -> (String, DateTime<Utc>) {
    let s = key[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field}: {key}"))
        .to_owned();
    let t = DateTime::parse_from_rfc3339(&s).expect("rfc 3339").with_timezone(&Utc);
    (s, t)
}

/// Whole seconds: the moment before `t` (floor - 1), the moment at or after it (ceil).
fn before(t: DateTime<Utc>) -> i64 {
    t.timestamp() - 1
}
fn at_or_after(t: DateTime<Utc>) -> i64 {
    t.timestamp() + i64::from(t.timestamp_subsec_nanos() > 0)
}

fn rfc(secs: i64) -> String {
    DateTime::from_timestamp(secs, 0)
        .expect("time")
        .to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// `verify --at SECS TOKEN`: exit code, stdout, stderr.
fn verify_at(dir: &Dir, secs: i64, token: &str) -> (i32, String, String) {
    run(dir, &["verify", "--at", &secs.to_string(), token])
}

/// Each answer `verify --at` gives about A (Active, then Retiring, then revoked) and
/// C (Pending, then Active, then revoked while Active by a forced rotation).
fn check_answers(dir: &Dir, a: &str, ta: &str, c: &str, tc: &str, purged: bool) {
    let ka = key(dir, a);
    let kc = key(dir, c);
    for k in [&ka, &kc] {
        assert_eq!(k["state"], "expired", "{k}");
        assert_eq!(!k["purged_at"].is_null(), purged, "{k}");
    }
    let (a_from, _) = time(&ka, "activated_at");
    let (_, a_retired) = time(&ka, "retired_at");
    let (a_revoked_s, a_revoked) = time(&ka, "revoked_at");
    let (_, c_created) = time(&kc, "created_at");
    let (c_from, _) = time(&kc, "activated_at");
    let (c_revoked_s, c_revoked) = time(&kc, "revoked_at");
    let a_window = format!("(valid from {a_from} until {a_revoked_s} (revoked))");

    // A, one second before it retired: Active; the window names its revocation.
    let t = before(a_retired);
    let (code, out, err) = verify_at(dir, t, ta);
    assert_eq!(code, 0, "A was Active: {out}{err}");
    assert!(out.contains("\"alice\""), "stdout stays the claims: {out}");
    serde_json::from_str::<serde_json::Value>(&out).expect("stdout is the claims' JSON");
    assert!(
        err.contains(&format!(
            "key {a} was Active at {} {a_window}: its signature and claims verify at {}",
            rfc(t),
            rfc(t)
        )),
        "{err}"
    );

    // A, one second before its revocation: Retiring, still valid.
    let t = before(a_revoked);
    let (code, out, err) = verify_at(dir, t, ta);
    assert_eq!(code, 0, "A was Retiring: {out}{err}");
    assert!(
        err.contains(&format!("key {a} was Retiring at {} {a_window}", rfc(t))),
        "{err}"
    );

    // A, at (and after) its revocation: refused, naming the revocation.
    for t in [at_or_after(a_revoked), at_or_after(a_revoked) + 60] {
        let (code, out, err) = verify_at(dir, t, ta);
        assert_eq!(code, 1, "A was revoked: {out}{err}");
        assert!(
            out.contains(&format!(
                "refused: key {a} was already revoked at {}: revoked at {a_revoked_s} (reason: leaked); valid from \
                 {a_from} until {a_revoked_s} (revoked); the signature is the key's and the claims hold at {}: \
                 only the key's state refuses it",
                rfc(t),
                rfc(t)
            )),
            "{out}"
        );
        assert!(err.contains("token refused: key"), "{err}");
    }

    // A, before it existed.
    let (code, out, _) = verify_at(dir, before(time(&ka, "created_at").1) - 5, ta);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("the key {a} did not exist yet (created at ")),
        "{out}"
    );

    // A token whose signature is not A's fails whatever the moment: A's header and
    // signature over C's claims.
    let (h, rest) = ta.split_once('.').expect("jws");
    let sig = rest.rsplit_once('.').expect("jws").1;
    let payload_c = tc.split('.').nth(1).expect("jws");
    let forged = format!("{h}.{payload_c}.{sig}");
    let (code, out, err) = verify_at(dir, before(a_revoked), &forged);
    assert_eq!(code, 1, "a forged token: {out}{err}");
    assert!(out.starts_with("invalid: BadSignature"), "{out}");
    assert!(!out.contains("was Retiring"), "{out}");

    // C while Pending: refused, not yet signing.
    let t = at_or_after(c_created);
    let (code, out, err) = verify_at(dir, t, tc);
    assert_eq!(code, 1, "C was Pending: {out}{err}");
    assert!(
        out.contains(&format!(
            "refused: at {} the key {c} was Pending: not yet signing (created at ",
            rfc(t)
        )) && out.contains(&format!("; Active from {c_from})")),
        "{out}"
    );

    // C while Active, one second before the forced rotation revoked it; then at it.
    let t = before(c_revoked);
    let (code, out, err) = verify_at(dir, t, tc);
    assert_eq!(code, 0, "C was Active: {out}{err}");
    assert!(
        err.contains(&format!(
            "key {c} was Active at {} (valid from {c_from} until {c_revoked_s} (revoked))",
            rfc(t)
        )),
        "{err}"
    );
    let (code, out, _) = verify_at(dir, at_or_after(c_revoked), tc);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("refused: key {c} was already revoked at ")),
        "{out}"
    );
    assert!(out.contains("(reason: compromised)"), "{out}");
}

#[test]
fn verify_at_answers_with_the_state_of_every_key_the_ring_held() {
    let dir = Dir::new("forensics");
    assert_eq!(ctl(&dir, &["migrate"]).0, 0);
    let init = ok(&dir, &["init"]);
    let a = init.rsplit(' ').next().expect("kid").trim().to_owned();
    let ta = ok(&dir, &["token", "--sub", "alice", "--ttl", "1h"]).trim().to_owned();
    std::thread::sleep(STEP);

    // C: scheduled (Pending), then activated by a tick; A retires.
    let report = json(&dir, &["rotate", "--json"]);
    let c = report["new_kid"].as_str().expect("a Pending key").to_owned();
    assert_eq!(key(&dir, &c)["state"], "pending");
    std::thread::sleep(STEP);
    ok(&dir, &["tick"]);
    assert_eq!(key(&dir, &c)["state"], "active");
    assert_eq!(key(&dir, &a)["state"], "retiring");
    let tc = ok(&dir, &["token", "--sub", "carol", "--ttl", "1h"]).trim().to_owned();
    std::thread::sleep(STEP);

    // A revoked while Retiring; C revoked while Active, by a forced rotation.
    ok(&dir, &["revoke", &a, "--reason", "leaked", "--yes"]);
    ok(&dir, &["rotate", "--force", "--revoke-old", "--reason", "compromised"]);

    // Without --at, nothing changed: neither key is in the current verifier.
    for t in [&ta, &tc] {
        let (code, out, _) = run(&dir, &["verify", t]);
        assert_eq!(code, 1, "{out}");
        assert!(out.contains("invalid: UnknownKid"), "{out}");
    }

    check_answers(&dir, &a, &ta, &c, &tc, false);

    // Purged (private keys destroyed): the public key and the times stay, and so do the
    // answers.
    let (code, out, err) = ctl_env(
        &dir,
        &["tick"],
        &[POLICY.as_slice(), &[("KEYROT_POLICY_PURGE_AFTER_MS", "0")]].concat(),
    );
    assert_eq!(code, 0, "{out}{err}");
    check_answers(&dir, &a, &ta, &c, &tc, true);

    // A moment far in the future: D, the Active key, has no end set yet.
    let td = ok(&dir, &["token", "--sub", "dave", "--ttl", "1h"]).trim().to_owned();
    let d = json(&dir, &["status", "--json"])["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["state"] == "active")
        .cloned()
        .expect("the Active key");
    let (d_from, _) = time(&d, "activated_at");
    let t = (Utc::now() + TimeDelta::minutes(30)).timestamp();
    let (code, out, err) = verify_at(&dir, t, &td);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains(", no end set yet): its signature and claims verify at "),
        "{err}"
    );
    // ... and past the token's exp: the key was Active, the claims do not hold.
    let t = (Utc::now() + TimeDelta::hours(2)).timestamp();
    let (code, out, _) = verify_at(&dir, t, &td);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.starts_with("invalid: Expired\n")
            && out.contains(&format!(
                "was Active at {} (valid from {d_from}, no end set yet): its signature verifies; its claims do not \
                 hold at {} (token has expired)",
                rfc(t),
                rfc(t)
            )),
        "{out}"
    );
}
