//! `keyrotctl verify --at T`: a token checked against its key as that key was at moment
//! T, for every key the ring ever held (Pending, Active, Retiring, Expired, revoked or
//! purged: the public key and the timestamps of every row are kept, and authenticated by
//! the ring's manifest).
//!
//! The signature is checked first, with the row's public key: a token that is not the
//! key's fails whatever T. Then the key's state at T, from its recorded times: only a key
//! that was Active, or Retiring inside its window, vouches for a token at T. Then the
//! token's claims as of T. A row that fails its integrity check never verifies.

use crate::clean;
use chrono::{DateTime, SecondsFormat, Utc};
use keyrot_core::{KeyRecord, KeyStatus, Snapshot, TokenError, Validation};

type Time = DateTime<Utc>;

/// A key time as `status --json` prints it (RFC 3339, milliseconds when there are some).
fn rfc(t: Time) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// Why a key's window ended (or will end): the earliest of its recorded ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    Revoked(Time),
    ExpiresAt(Time),
    Retired(Time),
    Expired(Time),
}

impl End {
    fn at(self) -> Time {
        match self {
            End::Revoked(t) | End::ExpiresAt(t) | End::Retired(t) | End::Expired(t) => t,
        }
    }

    fn label(self) -> &'static str {
        match self {
            End::Revoked(_) => "revoked",
            End::ExpiresAt(_) => "its expires_at",
            End::Retired(_) => "retired",
            End::Expired(_) => "expired",
        }
    }
}

/// The end of `k`'s validity: revocation, the end of a Retiring key's grace
/// (`expires_at`, else when it retired, as the key ring applies it), or expiry; the
/// earliest of those recorded. `None` while no end is set (the Active key).
fn end_of(k: &KeyStatus) -> Option<End> {
    let retiring_end = match (k.expires_at, k.retired_at) {
        (Some(e), _) => Some(End::ExpiresAt(e)),
        (None, Some(r)) => Some(End::Retired(r)),
        (None, None) => None,
    };
    [
        k.revoked_at.map(End::Revoked),
        retiring_end,
        k.expired_at.map(End::Expired),
    ]
    .into_iter()
    .flatten()
    .min_by_key(|e| e.at())
}

/// `valid from A until E (why)`, `valid from A, no end set yet`, or `it never signed`.
fn window(k: &KeyStatus) -> String {
    let Some(from) = k.activated_at else {
        return "it never signed".to_owned();
    };
    match end_of(k) {
        Some(end) => format!("valid from {} until {} ({})", rfc(from), rfc(end.at()), end.label()),
        None => format!("valid from {}, no end set yet", rfc(from)),
    }
}

/// What the key was at one moment.
#[derive(Debug, PartialEq, Eq)]
enum StateAt {
    /// Created after the moment.
    NotYet,
    /// Published, not yet signing.
    Pending,
    /// Signing.
    Active,
    /// No longer signing, still verifying.
    Retiring,
    /// Revoked at or before the moment.
    Revoked(Time),
    /// Its window had ended (not by revocation).
    Ended(End),
}

fn state_at(k: &KeyStatus, t: Time) -> StateAt {
    if t < k.created_at {
        return StateAt::NotYet;
    }
    if let Some(r) = k.revoked_at.filter(|r| *r <= t) {
        return StateAt::Revoked(r);
    }
    if k.activated_at.is_none_or(|a| t < a) {
        return StateAt::Pending;
    }
    if let Some(end) = end_of(k).filter(|e| e.at() <= t) {
        return StateAt::Ended(end);
    }
    match k.retired_at {
        Some(r) if r <= t => StateAt::Retiring,
        _ => StateAt::Active,
    }
}

/// The refusals about the token's claims (its signature is the key's).
fn is_claims_error(e: &TokenError) -> bool {
    matches!(
        e,
        TokenError::Expired
            | TokenError::NotYetValid
            | TokenError::IssuedInFuture
            | TokenError::MissingClaim(_)
            | TokenError::InvalidClaim(_)
            | TokenError::InvalidIssuer
            | TokenError::InvalidAudience
            | TokenError::ClaimsShape
    )
}

/// The answer of `verify --at`.
pub(crate) enum Answer {
    /// Valid at the moment: the claims, and the key's state and window.
    Valid(serde_json::Map<String, serde_json::Value>, String),
    /// Refused because of the key (its state at the moment, or its integrity).
    Refused(String),
    /// Refused because of the token itself: the error, and the key's state when the
    /// signature is the key's.
    Invalid(TokenError, Option<String>),
}

/// Checks `token` against its key as the key was at `t`. `rows` are the ring's stored
/// rows and `snap` the snapshot built from them (for the integrity verdict).
pub(crate) fn verify_at(snap: &Snapshot, rows: &[KeyRecord], token: &str, v: &Validation, t: Time) -> Answer {
    let unverified = match keyrot_core::decode_header(token, v) {
        Ok(u) => u,
        Err(e) => return Answer::Invalid(e, None),
    };
    let kid = unverified.kid.clone();
    let (Some(status), Some(row)) = (
        snap.keys().iter().find(|k| k.kid == kid),
        rows.iter().find(|k| k.kid == kid),
    ) else {
        return Answer::Invalid(TokenError::UnknownKid, None);
    };
    if !snap.integrity().trusts(&kid) {
        let reason = status.tampered.clone().unwrap_or_else(|| snap.integrity().summary());
        return Answer::Refused(format!(
            "key {} failed its integrity check ({}): it never verifies",
            clean(&kid),
            clean(&reason)
        ));
    }
    let key = match row.public_key().and_then(|pk| pk.verifying_key()) {
        Ok(key) => key,
        Err(_) => {
            return Answer::Refused(format!(
                "key {}: its stored public key cannot be read: it never verifies",
                clean(&kid)
            ));
        }
    };
    let checked = unverified.verify_with(&key, v, t.timestamp());
    if let Err(e) = &checked
        && !is_claims_error(e)
    {
        // Not the key's signature (or not a token of this key): whatever the moment.
        return Answer::Invalid(e.clone(), None);
    }
    let at = t.to_rfc3339_opts(SecondsFormat::Secs, true);
    // What the token itself is worth at T: said with every answer.
    let (claims_note, refused_note) = match &checked {
        Ok(_) => (
            format!("its signature and claims verify at {at}"),
            format!("the signature is the key's and the claims hold at {at}: only the key's state refuses it"),
        ),
        Err(e) => (
            format!("its signature verifies; its claims do not hold at {at} ({e})"),
            format!("the signature is the key's; the claims do not hold at {at} either ({e})"),
        ),
    };
    let kid = clean(&kid);
    let refusal = match state_at(status, t) {
        StateAt::NotYet => Some(format!(
            "at {at} the key {kid} did not exist yet (created at {})",
            rfc(status.created_at)
        )),
        StateAt::Pending => Some(format!(
            "at {at} the key {kid} was Pending: not yet signing (created at {}; {})",
            rfc(status.created_at),
            match (status.activated_at, status.activate_at) {
                (Some(a), _) => format!("Active from {}", rfc(a)),
                (None, Some(a)) if status.revoked_at.is_none() => format!("due to activate at {}", rfc(a)),
                _ => "it never signed".to_owned(),
            }
        )),
        StateAt::Revoked(r) => Some(format!(
            "key {kid} was already revoked at {at}: revoked at {} (reason: {}); {}",
            rfc(r),
            clean(status.revoke_reason.as_deref().unwrap_or("-")),
            window(status)
        )),
        // The wording `verify` has always used for a window that ran out.
        StateAt::Ended(end) => Some(format!(
            "key {kid} is no longer valid: its validity ended at {} ({}); verified as of {at}, when it was already \
             Expired ({})",
            rfc(end.at()),
            end.label(),
            window(status)
        )),
        StateAt::Active | StateAt::Retiring => None,
    };
    if let Some(why) = refusal {
        return Answer::Refused(format!("{why}; {refused_note}"));
    }
    let state = if state_at(status, t) == StateAt::Active {
        "Active"
    } else {
        "Retiring"
    };
    let line = format!("key {kid} was {state} at {at} ({}): {claims_note}", window(status));
    match checked {
        Ok(verified) => Answer::Valid(verified.claims, line),
        Err(e) => Answer::Invalid(e, Some(line)),
    }
}

#[cfg(test)]
mod tests {
    use super::{Answer, End, StateAt, end_of, state_at, verify_at, window};
    use chrono::{TimeDelta, TimeZone as _, Utc};
    use keyrot_core::{
        Algorithm, KeyOrigin, KeyRing, KeyState, KeyStatus, MasterKey, MasterKeySealer, MemoryLock, MemoryStorage,
        Policy, RequestContext, RingName, Rotator, Snapshot, Storage as _, Validation,
    };
    use std::sync::Arc;

    /// The times `verify --at` relies on are the authenticated row's: a revocation
    /// erased from storage makes the row fail its integrity check, and it never verifies.
    #[tokio::test]
    async fn a_row_whose_times_were_altered_never_verifies() {
        let storage = Arc::new(MemoryStorage::new());
        let sealer =
            Arc::new(MasterKeySealer::new(MasterKey::generate("mk1").expect("master key"), []).expect("sealer"));
        let name = RingName::new("default").expect("ring name");
        let policy = Policy::builder().build().expect("policy");
        let rotator = Rotator::builder(
            name.clone(),
            storage.clone(),
            Arc::new(MemoryLock::default()),
            sealer.clone(),
        )
        .with_policy(policy.clone())
        .build();
        let ctx = || RequestContext::actor("test");
        rotator.init(ctx()).await.expect("init");
        let kr = KeyRing::builder(name.clone(), storage.clone(), sealer.clone())
            .with_policy(policy.clone())
            .build()
            .await
            .expect("key ring");
        let kid = kr.snapshot().active_kid().expect("active").to_owned();
        let exp = Utc::now().timestamp() + 600;
        let token = kr.sign(&serde_json::json!({ "sub": "a", "exp": exp })).expect("sign");
        rotator.force_rotate(ctx(), "leaked", true).await.expect("force rotate");
        let v = Validation::new().allow_any_audience();
        let later = Utc::now() + TimeDelta::seconds(5);

        let mut ring = storage.load(&name).await.expect("load");
        let snap = Snapshot::build(&ring, &policy, &*sealer, Utc::now()).expect("snapshot");
        match verify_at(&snap, &ring.keys, &token, &v, later) {
            Answer::Refused(why) => assert!(why.starts_with(&format!("key {kid} was already revoked at ")), "{why}"),
            _ => panic!("a revoked key's token verified"),
        }

        // Storage rewritten as if the key had never been revoked.
        let row = ring.keys.iter_mut().find(|k| k.kid == kid).expect("row");
        (row.state, row.revoked_at, row.revoke_reason, row.expired_at) = (KeyState::Active, None, None, None);
        let snap = Snapshot::build(&ring, &policy, &*sealer, Utc::now()).expect("snapshot");
        match verify_at(&snap, &ring.keys, &token, &v, later) {
            Answer::Refused(why) => assert!(
                why.starts_with(&format!("key {kid} failed its integrity check ("))
                    && why.ends_with("it never verifies"),
                "{why}"
            ),
            _ => panic!("an altered row's token verified"),
        }
    }

    fn key() -> KeyStatus {
        let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).single().expect("time");
        KeyStatus {
            kid: "k".into(),
            alg: Algorithm::EdDsa,
            state: KeyState::Active,
            origin: KeyOrigin::Rotation,
            forced: false,
            fingerprint: "k".into(),
            created_at: t0,
            activate_at: Some(t0 + TimeDelta::hours(1)),
            activated_at: Some(t0 + TimeDelta::hours(1)),
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
    fn the_state_at_each_moment_of_a_life() {
        let mut k = key();
        let t0 = k.created_at;
        let h = TimeDelta::hours;
        k.retired_at = Some(t0 + h(5));
        k.expires_at = Some(t0 + h(9));
        k.expired_at = Some(t0 + h(10));
        assert_eq!(state_at(&k, t0 - h(1)), StateAt::NotYet);
        assert_eq!(state_at(&k, t0), StateAt::Pending);
        assert_eq!(state_at(&k, t0 + h(1) - TimeDelta::seconds(1)), StateAt::Pending);
        assert_eq!(state_at(&k, t0 + h(1)), StateAt::Active);
        assert_eq!(state_at(&k, t0 + h(5)), StateAt::Retiring);
        assert_eq!(state_at(&k, t0 + h(9)), StateAt::Ended(End::ExpiresAt(t0 + h(9))));
        // Revoked while Retiring: the revocation ends the window.
        k.revoked_at = Some(t0 + h(7));
        assert_eq!(end_of(&k), Some(End::Revoked(t0 + h(7))));
        assert_eq!(state_at(&k, t0 + h(7) - TimeDelta::seconds(1)), StateAt::Retiring);
        assert_eq!(state_at(&k, t0 + h(7)), StateAt::Revoked(t0 + h(7)));
        assert!(window(&k).ends_with("(revoked)"), "{}", window(&k));
        // Never activated (cancelled while Pending).
        let mut p = key();
        p.activated_at = None;
        p.revoked_at = Some(t0 + h(2));
        assert_eq!(state_at(&p, t0 + h(1)), StateAt::Pending);
        assert_eq!(state_at(&p, t0 + h(3)), StateAt::Revoked(t0 + h(2)));
        assert_eq!(window(&p), "it never signed");
        // The Active key: no end yet.
        assert_eq!(state_at(&key(), t0 + h(1000)), StateAt::Active);
        assert!(window(&key()).ends_with("no end set yet"));
    }
}
