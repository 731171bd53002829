//! The deciding phases of the operator's operations: rewrap, the integrity migration
//! (authenticate) and repair (quarantine). Each returns a [`Step`]; the commit, the
//! audit record and the lock are the attempt's, as for every request.

use super::attempt::{Attempt, Change, Step};
use super::error::RotateError;
use super::report::Answer;
use crate::integrity::{IntegrityReport, RingIntegrity};
use crate::key::PrivateKey;
use crate::planner;
use crate::ring::{KeyOrigin, KeyRecord, KeyState, Ring};
use crate::seal::{SealContext, SealError, Sealer};
use crate::storage::{AuditRecord, Outcome};
use chrono::{DateTime, Utc};

impl Attempt<'_> {
    /// Re-seals under the primary master key every key sealed under another one.
    pub(super) async fn rewrap(&self) -> Result<Step, RotateError> {
        let sealer = &*self.rotator.inner.sealer;
        let (ring, retired) = self.rotator.load_trusted().await?;
        let primary = sealer.primary_key_id().to_owned();
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
        let problems = unvouchable_rows(&ring, &*self.rotator.inner.sealer);
        if !problems.is_empty() {
            return refuse(format!(
                "refusing to vouch for rows that are not self-consistent: {}",
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
        // A retired ring stays retired through a repair, even when the manifest that said
        // so is the thing that was destroyed: its chained ledger still records it.
        let retired = integrity.retired
            || self
                .rotator
                .ledger()
                .await?
                .iter()
                .any(|r| r.mac.is_some() && r.outcome == Outcome::Retired);
        let mut next = Change::successor(&ring);
        let keys = quarantine(&mut next, &integrity, reason, self.now);
        let kids: Vec<&str> = keys.iter().map(|k| k.kid.as_str()).collect();
        let detail = format!(
            "quarantined {} row(s): [{}]; dropped from the manifest: [{}]; {reason}",
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
