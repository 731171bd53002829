//! The read-only ring status: public facts only, never key material.

use chrono::{DateTime, Utc};
use keyrot_core::Policy;
use keyrot_core::TriggerKind;
use keyrot_core::{AuditQuery, AuditRecord, Outcome, StorageError};
use keyrot_core::{KeyRing, KeyStatus};
use serde::Serialize;

use keyrot_core::NextTransition;

/// The earliest transition the scheduler will make on its own, from the keys' public
/// facts and the policy: [`planner::next_transition`](keyrot_core::next_transition),
/// which holds the rule (and its tests against the tick), for a snapshot's keys.
///
/// Rows that failed their integrity check ([`KeyStatus::tampered`]) are left out, and no
/// stored time can make it panic.
pub(crate) fn next_transition(keys: &[KeyStatus], policy: &Policy) -> Option<NextTransition> {
    keyrot_core::next_transition(keys, policy)
}

/// Whether an audit record is a rotation attempt (normal or forced, by any caller).
fn is_rotation_attempt(r: &AuditRecord) -> bool {
    matches!(r.trigger, TriggerKind::Rotate | TriggerKind::ForceRotate)
}

/// Whether an audit record is a rotation that changed the ring (a new Active or Pending
/// key, by request or by the scheduler).
fn is_rotation(r: &AuditRecord) -> bool {
    matches!(
        r.trigger,
        TriggerKind::Init | TriggerKind::Tick | TriggerKind::Rotate | TriggerKind::ForceRotate
    ) && matches!(r.outcome, Outcome::Bootstrapped | Outcome::Rotated | Outcome::Scheduled)
}

#[derive(Serialize)]
pub(crate) struct StatusBody {
    ring: String,
    generation: u64,
    active_kid: Option<String>,
    /// The last refresh from storage failed: this is the instance's last good snapshot.
    stale: bool,
    loaded_at: DateTime<Utc>,
    now: DateTime<Utc>,
    keys: Vec<KeyStatus>,
    /// Whether every stored row passed its integrity check, and which did not.
    integrity: keyrot_core::IntegrityReport,
    /// One line: `intact`, or what failed.
    integrity_summary: String,
    next_transition: Option<NextTransition>,
    /// The newest rotation that changed the ring.
    last_rotation: Option<AuditRecord>,
    /// The newest rotation request, whatever its outcome (refusals included).
    last_attempt: Option<AuditRecord>,
    /// The audit ledger could not be read.
    audit_unavailable: bool,
    /// With master keys under custody: whether the HSM or KMS answers (no new key is
    /// sealed while it does not).
    #[serde(skip_serializing_if = "Option::is_none")]
    custody: Option<keyrot_core::custody::CustodyHealth>,
    /// With signing keys held by an HSM or KMS: whether it answers (no token is signed
    /// while it does not; verifying goes on).
    #[serde(skip_serializing_if = "Option::is_none")]
    signing_custody: Option<keyrot_core::custody::CustodyHealth>,
}

/// How many records the status page reads at first.
const AUDIT_LOOKBACK: usize = 1000;
/// The most records one status read goes back when it has to look further.
const MAX_AUDIT_SCAN: usize = 64_000;

/// What the status page remembers of the ledger between reads.
///
/// The ledger can only be read newest first, `limit` records at a time, and refused
/// attempts are written to it too (within the budget of [`super::RefusalAuditLimits`],
/// but over days a flood still writes far more records than one read should hold). So
/// the newest rotation is not looked for in the newest N records alone: the view keeps
/// the last rotation and the last attempt it found, and the newest record it read; each
/// read goes back at least as far as that record (growing the read until it is in it,
/// up to 64,000 records), so a record appended in between is not skipped however many
/// came after it, and the rotation found once is kept until a newer one appears. With
/// the default budgets one flooding actor writes 11 records a minute per instance, so
/// that many records between two status reads take days.
///
/// Kept in memory per endpoint: a new process (or a first read) looks back until it
/// finds a rotation, within the same bound.
#[derive(Debug, Default)]
pub(crate) struct LedgerView {
    newest_id: Option<String>,
    last_rotation: Option<AuditRecord>,
    last_attempt: Option<AuditRecord>,
}

impl LedgerView {
    /// Reads what was appended since the last read and updates the view.
    async fn update(&mut self, keyring: &KeyRing) -> Result<(), StorageError> {
        let mut limit = AUDIT_LOOKBACK;
        loop {
            let records = keyring
                .storage()
                .audit_log(keyring.ring(), AuditQuery { limit })
                .await?;
            let whole_ledger = records.len() < limit;
            let rotation = records.iter().find(|r| is_rotation(r));
            let attempt = records.iter().find(|r| is_rotation_attempt(r));
            let caught_up = match &self.newest_id {
                Some(id) => records.iter().any(|r| &r.id == id),
                None => rotation.is_some() && attempt.is_some(),
            };
            if whole_ledger || caught_up || limit >= MAX_AUDIT_SCAN {
                if !(whole_ledger || caught_up) {
                    tracing::warn!(
                        ring = %keyring.ring(),
                        records = limit,
                        "status: more audit records since the last read than one read holds; the last rotation shown may be older than the real one"
                    );
                }
                // Records read now are newer than anything remembered.
                if let Some(r) = rotation {
                    self.last_rotation = Some(r.clone());
                }
                if let Some(a) = attempt {
                    self.last_attempt = Some(a.clone());
                }
                if let Some(newest) = records.first() {
                    self.newest_id = Some(newest.id.clone());
                }
                return Ok(());
            }
            limit = limit.saturating_mul(4).min(MAX_AUDIT_SCAN);
        }
    }
}

pub(crate) async fn status_body(keyring: &KeyRing, view: &mut LedgerView) -> StatusBody {
    // A cheap generation check: the status should show the stored truth, not a
    // snapshot that may lag behind another instance's rotation.
    let stale = keyring.refresh().await.is_err();
    let snapshot = keyring.snapshot();
    let audit_unavailable = match view.update(keyring).await {
        Ok(()) => false,
        Err(e) => {
            tracing::warn!(ring = %keyring.ring(), error = %e, "status: audit ledger unavailable");
            true
        }
    };
    let (last_rotation, last_attempt) = if audit_unavailable {
        (None, None)
    } else {
        (view.last_rotation.clone(), view.last_attempt.clone())
    };
    StatusBody {
        ring: keyring.ring().to_string(),
        generation: snapshot.generation(),
        active_kid: snapshot.active_kid().map(str::to_owned),
        stale,
        loaded_at: snapshot.loaded_at(),
        now: keyring.clock().now(),
        keys: snapshot.keys().to_vec(),
        integrity: snapshot.integrity().clone(),
        integrity_summary: snapshot.integrity().summary(),
        next_transition: next_transition(snapshot.keys(), keyring.policy()),
        last_rotation,
        last_attempt,
        audit_unavailable,
        custody: keyring.custody(),
        signing_custody: keyring.signing_custody_health(),
    }
}
