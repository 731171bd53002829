//! The deciding phases of the operator's operations: rewrap, the integrity migration
//! (authenticate) and repair (quarantine). Each returns a [`Step`]; the commit, the
//! audit record and the lock are the attempt's, as for every request.

use super::attempt::{Attempt, Change, Step};
use super::error::RotateError;
use super::report::Answer;
use crate::integrity::{IntegrityReport, MAX_GENERATION, RingIntegrity};
use crate::key::PrivateKey;
use crate::planner;
use crate::policy::Policy;
use crate::ring::{KeyOrigin, KeyRecord, KeyState, Ring};
use crate::seal::{SealContext, SealError, Sealer};
use crate::storage::{AuditRecord, Outcome};
use chrono::{DateTime, TimeDelta, Utc};

impl Attempt<'_> {
    /// Re-seals under the primary master key every key sealed under another one.
    pub(super) async fn rewrap(&self) -> Result<Step, RotateError> {
        let sealer = &*self.rotator.inner.sealer;
        let (ring, retired) = self.rotator.load_trusted().await?;
        let primary = sealer.primary_key_id();
        let mut next = Change::successor(&ring);
        let mut keys = Vec::new();
        for k in next.keys.iter_mut() {
            let Some(sealed) = &k.sealed else { continue };
            if sealed.master_key_id == primary {
                continue;
            }
            let sctx = SealContext {
                ring: ring.name.as_str(),
                kid: &k.kid,
                alg: k.alg,
            };
            let plain = sealer.open(sealed, &sctx)?;
            k.sealed = Some(sealer.seal(&plain, &sctx)?);
            keys.push(k.clone());
        }
        if keys.is_empty() {
            return Ok(Step::Answer(Answer {
                detail: Some(format!("every key is already sealed under {primary:?}")),
                ..Answer::on(Outcome::NothingDue, &ring)
            }));
        }
        let answer = Answer {
            detail: Some(format!("{} key(s) re-sealed under {primary:?}", keys.len())),
            ..Answer::on(Outcome::Rewrapped, &ring)
        };
        Ok(Step::Commit(Change {
            before: ring,
            next,
            keys,
            answer,
            retired,
        }))
    }

    /// The integrity migration: the ring's first manifest over the rows as they are,
    /// refused unless the ring is a legacy one and its rows are self-consistent (and, when
    /// `expected_digest` is given, still the reviewed ones).
    pub(super) async fn authenticate(&self, expected_digest: Option<&str>) -> Result<Step, RotateError> {
        let ring = self.rotator.load().await?;
        let refuse = |detail: String| Ok(Step::Answer(Answer::refused_untrusted(&ring, detail)));
        if ring.manifest.is_some() {
            return refuse("the ring already has a manifest; nothing to migrate".into());
        }
        let ledger = self.rotator.ledger().await?;
        // Refusals are chained on a legacy ring too; a chained *commit* means the ring
        // was authenticated before.
        if ledger.iter().any(|r| r.mac.is_some() && r.outcome.changed_ring()) {
            return refuse(
                "the ring's ledger is already chained, so it was authenticated before: a missing manifest means the \
                 database was tampered with; restore it from a backup instead"
                    .into(),
            );
        }
        let digest = crate::integrity::rows_digest(&ring);
        if expected_digest.is_some_and(|e| e != digest) {
            return refuse(format!(
                "the rows changed since they were reviewed (their digest is now {digest}): review them again"
            ));
        }
        if ring.generation > MAX_GENERATION {
            return refuse(format!(
                "the stored generation was altered: the ring row says generation {}, above {MAX_GENERATION} (2^62), \
                 which no ring reaches; set it back to the generation of the ledger's newest record (or restore the \
                 ring row from a backup), then review the rows again",
                ring.generation
            ));
        }
        let mut problems = unvouchable_rows(&ring, &*self.rotator.inner.sealer);
        problems.extend(impossible_lifecycles(&ring, &self.rotator.inner.policy, self.now));
        if !problems.is_empty() {
            return refuse(format!(
                "refusing to vouch for rows keyrot could not have written: {}. Nothing was authenticated",
                problems.join("; ")
            ));
        }
        let legacy: Vec<&AuditRecord> = ledger.iter().filter(|r| r.mac.is_none()).collect();
        let kids: Vec<String> = ring
            .keys
            .iter()
            .map(|k| format!("{} ({})", k.kid, k.state.as_str()))
            .collect();
        let answer = Answer {
            detail: Some(format!(
                "authenticated {} key row(s): {}; {}",
                kids.len(),
                kids.join(", "),
                crate::integrity::legacy_ledger_note(&legacy)
            )),
            ..Answer::on(Outcome::Authenticated, &ring)
        };
        Ok(Step::Commit(Change {
            next: Change::successor(&ring),
            before: ring,
            keys: Vec::new(),
            answer,
            retired: false,
        }))
    }

    /// Repair: quarantines every row that fails the integrity check and re-issues the
    /// manifest; refused for an intact ring, one without a manifest, and a rolled-back
    /// one.
    pub(super) async fn repair(&self, reason: &str) -> Result<Step, RotateError> {
        let ring = self.rotator.load().await?;
        let integrity = crate::integrity::check_ring(&ring, &*self.rotator.inner.sealer);
        if let Some(detail) = repair_refusal(reason, &integrity)? {
            return Ok(Step::Answer(Answer::refused_untrusted(&ring, detail)));
        }
        self.rotator.check_not_rolled_back(&integrity).await?;
        let ledger = self.rotator.ledger().await?;
        // A retired ring stays retired through a repair, even when the manifest that said
        // so is the thing that was destroyed: its chained ledger still records it.
        let retired = integrity.retired || ledger.iter().any(|r| r.mac.is_some() && r.outcome == Outcome::Retired);
        let chained = ledger
            .iter()
            .filter(|r| r.mac.is_some() && r.outcome.changed_ring())
            .map(|r| r.generation)
            .max();
        let (generation, found) = repaired_generation(&integrity, chained);
        // Not `Change::successor`: the stored generation is not what the ring moves on from.
        let mut next = ring.clone();
        next.generation = generation;
        let keys = quarantine(&mut next, &integrity, reason, self.now);
        let kids: Vec<&str> = keys.iter().map(|k| k.kid.as_str()).collect();
        let detail = format!(
            "{found}quarantined {} row(s): [{}]; dropped from the manifest: [{}]; {reason}",
            kids.len(),
            kids.join(", "),
            integrity.missing.join(", ")
        );
        tracing::warn!(ring = %ring.name, detail = detail.as_str(), "quarantining tampered key rows");
        let answer = Answer {
            // Only an Active key the check still trusts is named; its fingerprint is not
            // vouched for.
            old_kid: ring
                .active()
                .filter(|k| integrity.trusts(&k.kid))
                .map(|k| k.kid.clone()),
            detail: Some(detail),
            ..Answer::bare(Outcome::Quarantined)
        };
        Ok(Step::Commit(Change {
            before: ring,
            next,
            keys,
            answer,
            retired,
        }))
    }

    /// Retires the whole ring (tenant offboarding): every key not yet revoked is revoked
    /// and made Expired, every private key is destroyed (its sealed material dropped),
    /// and the manifest says from now on that the ring is retired, so it never gets a key
    /// again. Refused without a reason; answered `nothing_due` for a ring already retired.
    pub(super) async fn retire(&self, reason: &str) -> Result<Step, RotateError> {
        let (ring, retired) = self.rotator.load_trusted().await?;
        if ring.generation == 0 {
            return Ok(Step::Answer(Answer::refused_untrusted(
                &ring,
                "no such ring: there is nothing to retire".to_owned(),
            )));
        }
        if reason.trim().is_empty() || reason.chars().count() > planner::MAX_REASON_LEN {
            return Ok(Step::Answer(Answer::refusal(
                &ring,
                planner::Refusal::ReasonRequired,
                false,
            )));
        }
        if retired {
            return Ok(Step::Answer(Answer {
                detail: Some("the ring is already retired".to_owned()),
                ..Answer::on(Outcome::NothingDue, &ring)
            }));
        }
        let mut next = Change::successor(&ring);
        let keys = retire_keys(&mut next, reason, self.now);
        let answer = Answer {
            detail: Some(format!(
                "ring retired: {} key(s) revoked, {} private key(s) destroyed: {reason}",
                keys.iter().filter(|(_, revoked, _)| *revoked).count(),
                keys.iter().filter(|(_, _, purged)| *purged).count(),
            )),
            ..Answer::on(Outcome::Retired, &ring)
        };
        Ok(Step::Commit(Change {
            before: ring,
            next,
            keys: keys.into_iter().map(|(k, _, _)| k).collect(),
            answer,
            retired: true,
        }))
    }
}

/// Revokes and expires every key of `next` not yet revoked and drops every sealed private
/// key: the rewritten rows, each with whether it was revoked and whether its material was
/// destroyed now.
fn retire_keys(next: &mut Ring, reason: &str, now: DateTime<Utc>) -> Vec<(KeyRecord, bool, bool)> {
    let mut changed = Vec::new();
    for k in &mut next.keys {
        let revoke = k.revoked_at.is_none();
        let purge = k.sealed.is_some();
        if !revoke && !purge && k.state == KeyState::Expired {
            continue;
        }
        if k.state != KeyState::Expired {
            k.retired_at = k.retired_at.or(Some(now));
            k.expired_at = Some(now);
            k.state = KeyState::Expired;
        }
        if revoke {
            k.revoked_at = Some(now);
            k.revoke_reason = Some(format!("ring retired: {reason}"));
        }
        if purge {
            k.sealed = None;
            k.purged_at = Some(now);
        }
        changed.push((k.clone(), revoke, purge));
    }
    changed
}

/// Why a repair is refused, if it is; a manifest under an unknown master key fails.
fn repair_refusal(reason: &str, integrity: &IntegrityReport) -> Result<Option<String>, RotateError> {
    if reason.trim().is_empty() || reason.chars().count() > planner::MAX_REASON_LEN {
        return Ok(Some(
            "a non-empty reason (at most 500 characters) is required".to_owned(),
        ));
    }
    if integrity.is_intact() {
        return Ok(Some(
            "the ring passes its integrity check; nothing to repair".to_owned(),
        ));
    }
    match &integrity.integrity {
        RingIntegrity::Unauthenticated => Ok(Some(
            "the ring has no manifest: authenticate it (authenticate-ring) instead of repairing it".to_owned(),
        )),
        RingIntegrity::UnknownMasterKey(id) => Err(RotateError::Seal(SealError::UnknownMasterKey(id.clone()))),
        _ => Ok(None),
    }
}

/// Quarantines in `next` every row the check found tampered, returning the rewritten
/// rows.
fn quarantine(next: &mut Ring, integrity: &IntegrityReport, reason: &str, now: DateTime<Utc>) -> Vec<KeyRecord> {
    let mut changed = Vec::new();
    for t in &integrity.tampered {
        if let Some(k) = next.keys.iter_mut().find(|k| k.kid == t.kid) {
            if k.state != KeyState::Expired {
                k.retired_at = k.retired_at.or(Some(now));
                k.expired_at = Some(now);
            }
            // Nothing the attacker wrote may count for anything afterwards: not as an
            // activation (rate limits), not with a time in the future, not as a
            // fingerprint that blocks importing that key.
            k.state = KeyState::Expired;
            k.forced = false;
            k.activate_at = None;
            k.activated_at = None;
            k.created_at = k.created_at.min(now);
            k.retired_at = k.retired_at.map(|t| t.min(now));
            k.expires_at = k.expires_at.map(|t| t.min(now));
            k.revoked_at = Some(now);
            k.revoke_reason = Some(format!("quarantined: {}; {reason}", t.reason));
            k.fingerprint = format!("quarantined:{}", k.kid);
            k.sealed = None;
            k.purged_at = Some(now);
            changed.push(k.clone());
        }
    }
    changed
}

/// Rows the integrity migration must not vouch for, each named with why: a
/// fingerprint that is not the RFC 7638 thumbprint of the row's public key, a kid
/// that is not its thumbprint (unless imported), private material that does not open
/// or does not match the public key.
fn unvouchable_rows(ring: &Ring, sealer: &dyn Sealer) -> Vec<String> {
    let mut problems = Vec::new();
    for k in &ring.keys {
        let public = match k.public_key() {
            Ok(p) => p,
            Err(e) => {
                problems.push(format!("{}: public key unusable ({e})", k.kid));
                continue;
            }
        };
        let thumbprint = public.thumbprint();
        if thumbprint != k.fingerprint {
            problems.push(format!(
                "{}: the fingerprint is not the thumbprint of its public key",
                k.kid
            ));
        }
        if k.origin != KeyOrigin::Imported && k.kid != thumbprint {
            problems.push(format!("{}: the kid is not the thumbprint of its public key", k.kid));
        }
        if let Some(sealed) = &k.sealed {
            let ctx = SealContext {
                ring: ring.name.as_str(),
                kid: &k.kid,
                alg: k.alg,
            };
            let matches = sealer
                .open(sealed, &ctx)
                .ok()
                .and_then(|b| PrivateKey::from_secret_bytes(k.alg, &b).ok())
                .is_some_and(|p| p.public_key().thumbprint() == thumbprint);
            if !matches {
                problems.push(format!(
                    "{}: the private key does not open or does not match its public key",
                    k.kid
                ));
            }
        }
    }
    problems
}

/// The generation a repair moves the ring to, and what it found about the stored one (empty
/// when it was not altered). It is worked out from what is authenticated: the manifest's
/// generation, or without a readable manifest the newest chained commit record (`chained`).
/// A ring row moved ahead, but below [`MAX_GENERATION`]` / 2`, is moved past, so that every
/// instance that read it sees the repair as a change; one at or above that bound (73
/// million years of a commit every millisecond) is ignored, so it can neither overflow nor
/// push the ring towards the bound. Never above `MAX_GENERATION / 2 + 1`.
fn repaired_generation(integrity: &IntegrityReport, chained: Option<u64>) -> (u64, String) {
    let authenticated = integrity
        .manifest_generation
        .or(chained)
        .unwrap_or(0)
        .min(MAX_GENERATION / 2);
    let stored = integrity.ring_generation;
    let base = if stored < MAX_GENERATION / 2 {
        stored.max(authenticated)
    } else {
        authenticated
    };
    let next = base.saturating_add(1);
    let found = if stored == authenticated {
        String::new()
    } else {
        format!(
            "the stored generation was altered (the ring row said {stored}, the authenticated generation is \
             {authenticated}): the ring is at generation {next} again; "
        )
    };
    (next, found)
}

/// How long `d` is, for a refusal: whole days, hours, minutes or seconds.
fn human(d: TimeDelta) -> String {
    let s = d.num_seconds();
    match s {
        _ if s % 86_400 == 0 => format!("{}d", s / 86_400),
        _ if s % 3600 == 0 => format!("{}h", s / 3600),
        _ if s % 60 == 0 => format!("{}m", s / 60),
        _ => format!("{s}s"),
    }
}

/// Rows whose lifecycle no rotation under `policy` produces, each named with why and what
/// to do: a published key (Pending, Active, Retiring) without a sealed private key (keyrot
/// destroys material only after expiry, so such a row was not written by keyrot), a
/// Retiring window (`expires_at − retired_at`) longer than `retire_grace`, and a past event
/// (created, activated, retired, revoked, expired, purged) dated after `now` by more than
/// the policy's `clock_skew`. No key material is named.
fn impossible_lifecycles(ring: &Ring, policy: &Policy, now: DateTime<Utc>) -> Vec<String> {
    let mut problems = Vec::new();
    let latest = now
        .checked_add_signed(policy.clock_skew())
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    let grace = policy.retire_grace();
    for k in &ring.keys {
        let kid = shown(&k.kid);
        let published = matches!(k.state, KeyState::Pending | KeyState::Active | KeyState::Retiring);
        if published && k.sealed.is_none() {
            problems.push(format!(
                "{kid}: published ({}) with no sealed private key, which keyrot never writes (it destroys a private \
                 key only after the key expired): delete the row or restore the ring from a backup, then review again",
                k.state.as_str()
            ));
        }
        if k.state == KeyState::Retiring {
            match (k.retired_at, k.expires_at) {
                (None, _) => problems.push(format!(
                    "{kid}: Retiring without a retired_at, so its window cannot be checked: delete the row or \
                     restore the ring from a backup"
                )),
                (Some(retired), Some(expires)) if expires - retired > grace => problems.push(format!(
                    "{kid}: Retiring for {} (retired_at {}, expires_at {}), longer than the policy's retire_grace \
                     ({}): if the ring was written under a longer retire_grace, run the migration with that policy; \
                     otherwise delete the row or restore the ring from a backup",
                    human(expires - retired),
                    retired.to_rfc3339(),
                    expires.to_rfc3339(),
                    human(grace)
                )),
                _ => {}
            }
        }
        for (field, at) in [
            ("created_at", Some(k.created_at)),
            ("activated_at", k.activated_at),
            ("retired_at", k.retired_at),
            ("revoked_at", k.revoked_at),
            ("expired_at", k.expired_at),
            ("purged_at", k.purged_at),
        ] {
            if let Some(at) = at.filter(|at| *at > latest) {
                problems.push(format!(
                    "{kid}: {field} {} is in the future (now {}, clock_skew {}): a past event cannot be dated \
                     later; check this host's clock, otherwise correct the row or restore the ring from a backup",
                    at.to_rfc3339(),
                    now.to_rfc3339(),
                    human(policy.clock_skew())
                ));
            }
        }
    }
    problems
}

/// A stored (possibly forged) kid as a refusal names it: control characters escaped, at most
/// 80 characters.
fn shown(kid: &str) -> String {
    let escaped: String = kid.chars().flat_map(char::escape_default).collect();
    match escaped.char_indices().nth(80) {
        Some((end, _)) => format!("{}…", &escaped[..end]),
        None => escaped,
    }
}
