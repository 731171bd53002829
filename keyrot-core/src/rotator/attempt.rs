//! One attempt and its pipeline: idempotency → lock → decide → commit → notify →
//! release. The phases that decide ([`super::plan`], [`super::maintenance`]) return a
//! [`Step`]; everything else — replays, the lock, the one commit/conflict/install step,
//! the audit record — is here, the same for every kind of request.

use super::Rotator;
use super::context::RequestContext;
use super::error::RotateError;
use super::idempotency::Idempotency;
use super::report::{Answer, RotationReport};
use crate::clock::to_millis;
use crate::ids::random_hex;
use crate::planner::{Trigger, TriggerKind};
use crate::ring::{KeyRecord, Ring};
use crate::storage::{AuditRecord, Commit, CommitOutcome, LockGuard, Outcome, StorageError};
use chrono::{DateTime, Utc};
use tracing::Instrument as _;

/// What is asked.
pub(super) enum Request {
    /// A request the planner answers (init, tick, rotate, force, revoke, import).
    Plan(Trigger),
    /// Re-seal every key under the primary master key.
    Rewrap,
    /// The integrity migration, optionally bound to the digest of the reviewed rows.
    Authenticate {
        /// [`crate::integrity::rows_digest`] of the rows the operator reviewed.
        expected_digest: Option<String>,
    },
    /// Quarantine the rows that fail the integrity check.
    Repair {
        /// The operator's reason (required).
        reason: String,
    },
    /// Retire the whole ring: revoke every key (tenant offboarding).
    Retire {
        /// The operator's reason (required).
        reason: String,
    },
    /// Something that happened outside the ring's rows, only audited: a rotation request
    /// its endpoint refused before the rotator saw it (trigger `rotate` or
    /// `force_rotate`), or a master-key custody operation (trigger `master_key`).
    Recorded {
        /// The record's trigger.
        kind: TriggerKind,
        /// Whether it asked for a forced rotation.
        forced: bool,
        /// The reason it gave, if any.
        reason: Option<String>,
        /// The refusal as the endpoint saw the ring.
        answer: Answer,
    },
}

impl Request {
    /// The request's name in audit records.
    pub(super) fn kind(&self) -> TriggerKind {
        match self {
            Request::Plan(trigger) => trigger.kind(),
            Request::Rewrap => TriggerKind::Rewrap,
            Request::Authenticate { .. } => TriggerKind::Authenticate,
            Request::Repair { .. } => TriggerKind::Repair,
            Request::Retire { .. } => TriggerKind::RetireRing,
            Request::Recorded { kind, .. } => *kind,
        }
    }
}

/// What a deciding phase found: an answer that changes nothing (audited), or a change
/// to commit.
pub(super) enum Step {
    /// Nothing to write but the audit record.
    Answer(Answer),
    /// A new state of the ring.
    Commit(Change),
}

/// A change to commit: the ring as loaded, the ring after, the rows that changed, the
/// answer if it commits (its generation is the new ring's), and whether the ring is
/// retired after it (a retired ring stays retired: every later manifest says so).
pub(super) struct Change {
    pub(super) before: Ring,
    pub(super) next: Ring,
    pub(super) keys: Vec<KeyRecord>,
    pub(super) answer: Answer,
    pub(super) retired: bool,
}

impl Change {
    /// `ring` at its next generation, for a change to be made to.
    pub(super) fn successor(ring: &Ring) -> Ring {
        let mut next = ring.clone();
        next.generation += 1;
        next
    }
}

/// One attempt: its kind, who asked, when, and its idempotency key. Owns the phases.
pub(super) struct Attempt<'r> {
    pub(super) rotator: &'r Rotator,
    request: Request,
    kind: TriggerKind,
    ctx: RequestContext,
    pub(super) now: DateTime<Utc>,
    idempotency: Option<Idempotency>,
    /// What the attempt did in an HSM or KMS holding the ring's keys, for its record.
    notes: std::sync::Mutex<Vec<String>>,
}

impl<'r> Attempt<'r> {
    /// An attempt at the rotator's now. Only requests the planner answers use the
    /// idempotency key; an invalid one fails the attempt before anything is done.
    pub(super) fn new(rotator: &'r Rotator, request: Request, ctx: RequestContext) -> Result<Self, RotateError> {
        let now = to_millis(rotator.inner.clock.now());
        let idempotency = match (&request, &ctx.idempotency_key) {
            (Request::Plan(trigger), Some(key)) => {
                Some(Idempotency::new(key, trigger, &ctx.actor).ok_or(RotateError::InvalidIdempotencyKey)?)
            }
            _ => None,
        };
        Ok(Self {
            rotator,
            kind: request.kind(),
            request,
            ctx,
            now,
            idempotency,
            notes: std::sync::Mutex::default(),
        })
    }

    /// The whole pipeline.
    pub(super) async fn run(self, material: Option<super::Material>) -> Result<RotationReport, RotateError> {
        if let Some(answer) = self.replay().await? {
            return answer;
        }
        let Some(guard) = self.acquire().await? else {
            return Ok(self.record(Answer::bare(Outcome::LockBusy)).await?);
        };
        let result = self.locked(material).await;
        self.release(guard).await;
        if let Err(e) = &result {
            self.record_failure(e).await;
        }
        result
    }

    /// The phases under the lock.
    async fn locked(&self, material: Option<super::Material>) -> Result<RotationReport, RotateError> {
        // Again under the lock: a concurrent request with the same key may have committed
        // between the first check and the lock; both get the same answer.
        if let Some(answer) = self.replay().await? {
            return answer;
        }
        let step = match &self.request {
            Request::Plan(trigger) => self.plan(trigger, material).await?,
            Request::Rewrap => self.rewrap().await?,
            Request::Authenticate { expected_digest } => self.authenticate(expected_digest.as_deref()).await?,
            Request::Repair { reason } => self.repair(reason).await?,
            Request::Retire { reason } => self.retire(reason).await?,
            Request::Recorded { answer, .. } => Step::Answer(answer.clone()),
        };
        match step {
            Step::Answer(answer) => Ok(self.record(answer).await?),
            Step::Commit(change) => self.commit(change).await,
        }
    }

    /// Answers from the idempotency record, if the request's key has one: the first
    /// answer (replayed), or a refusal when the key was used for another request.
    async fn replay(&self) -> Result<Option<Result<RotationReport, RotateError>>, RotateError> {
        let Some(idem) = &self.idempotency else {
            return Ok(None);
        };
        let inner = &self.rotator.inner;
        let span = tracing::info_span!("keyrot.phase", phase = "idempotency");
        let stored = inner
            .storage
            .idempotency(&inner.ring, &idem.key)
            .instrument(span)
            .await?;
        let Some(rec) = stored else {
            return Ok(None);
        };
        if rec.request_hash != idem.request_hash {
            let detail = "idempotency key reused for a different request".to_owned();
            self.record(Answer {
                detail: Some(detail),
                ..Answer::bare(Outcome::Refused)
            })
            .await?;
            return Ok(Some(Err(RotateError::IdempotencyKeyReused)));
        }
        let mut first: RotationReport = serde_json::from_str(&rec.response)
            .map_err(|_| StorageError::Corrupt("stored idempotent response".into()))?;
        first.replayed = true;
        self.record(Answer::replay_of(&first)).await?;
        Ok(Some(Ok(first)))
    }

    /// The one commit step of every change: seals the manifest (naming the audit record
    /// the same commit writes), commits with compare-and-swap on the generation, then
    /// installs the new ring locally. A lost race is audited and answered, not an error.
    async fn commit(&self, change: Change) -> Result<RotationReport, RotateError> {
        let Change {
            before,
            mut next,
            keys,
            answer,
            retired,
        } = change;
        let inner = &self.rotator.inner;
        let revoked = self.drive_backend(&before, &keys).await?;
        let (report, audit) = self.conclude(Answer {
            generation: next.generation,
            ..answer
        });
        let manifest = {
            let _s = tracing::info_span!("keyrot.phase", phase = "seal").entered();
            if retired {
                crate::integrity::seal_retired_manifest(&next, &*inner.sealer, &audit.id)?
            } else {
                crate::integrity::seal_manifest(&next, &*inner.sealer, &audit.id)?
            }
        };
        next.manifest = Some(manifest.clone());
        let commit = Commit {
            ring: before.name.clone(),
            expected_generation: before.generation,
            keys: keys.clone(),
            audit,
            idempotency: self.idempotency.as_ref().map(|i| i.record(&inner.ring, &report)),
            manifest,
            next_due: crate::planner::next_due(&next, &inner.policy, self.now, retired),
        };
        let span = tracing::info_span!("keyrot.phase", phase = "commit");
        match inner.storage.commit(&commit, &inner.linker).instrument(span).await? {
            CommitOutcome::Committed => {
                self.install(&next).await;
                self.disable_revoked(&revoked).await;
                Ok(report)
            }
            CommitOutcome::Conflict { current } => {
                let detail = format!(
                    "another instance changed the ring first (generation {} → {current}); its change stands",
                    before.generation
                );
                self.discard_created(&keys, &before).await;
                let lost = Answer {
                    generation: current,
                    detail: Some(detail),
                    ..Answer::on(Outcome::LostRace, &before)
                };
                Ok(self.record(lost).await?)
            }
        }
    }

    /// Records what happened outside the ring's rows ([`Request::Recorded`]): no
    /// lock, no decision, its one record.
    pub(super) async fn record_refused(&self) -> Result<RotationReport, StorageError> {
        let answer = match &self.request {
            Request::Recorded { answer, .. } => answer.clone(),
            _ => Answer::bare(Outcome::Refused),
        };
        self.record(answer).await
    }

    /// Writes the audit record of an answer that changed nothing (with its idempotency
    /// record when the answer is kept for replay). Ticks that find nothing due or the lock
    /// busy write nothing.
    async fn record(&self, answer: Answer) -> Result<RotationReport, StorageError> {
        let remembered = answer.remembered;
        let (report, audit) = self.conclude(answer);
        if self.kind == TriggerKind::Tick && matches!(report.outcome, Outcome::NothingDue | Outcome::LockBusy) {
            return Ok(report);
        }
        let inner = &self.rotator.inner;
        let idempotency = self
            .idempotency
            .as_ref()
            .filter(|_| remembered && Idempotency::replays(report.outcome))
            .map(|i| i.record(&inner.ring, &report));
        inner
            .storage
            .record_attempt(&audit, idempotency.as_ref(), &inner.linker)
            .await?;
        Ok(report)
    }

    /// Audits a failed attempt, best effort (the ledger may be the thing that is down).
    /// A tampered or rolled-back ring fails every tick until someone fixes it; each
    /// failure is an error event, but only explicit requests write ledger records, so
    /// the tampering cannot grow the ledger by itself. The operator's operations answer
    /// their operator and write no failure records.
    async fn record_failure(&self, e: &RotateError) {
        let audited = match &self.request {
            Request::Plan(_) => !(e.is_persistent() && self.kind == TriggerKind::Tick),
            _ => false,
        };
        if !audited {
            return;
        }
        let failed = Answer {
            detail: Some(e.described()),
            ..Answer::bare(Outcome::Failed)
        };
        if let Err(audit_err) = self.record(failed).await {
            tracing::warn!(error = %audit_err, "could not audit the failed attempt");
        }
    }

    /// Adds what was done in the HSM or KMS to the attempt's record.
    pub(super) fn note(&self, note: String) {
        if let Ok(mut notes) = self.notes.lock() {
            notes.push(note);
        }
    }

    /// The report and the audit record of an answer, made together: the only place
    /// either is built.
    pub(super) fn conclude(&self, a: Answer) -> (RotationReport, AuditRecord) {
        let inner = &self.rotator.inner;
        let (reason, forced_request) = match &self.request {
            Request::Plan(Trigger::ForceRotate { reason, .. }) => (Some(reason.clone()), true),
            Request::Plan(Trigger::Revoke { reason, .. }) | Request::Retire { reason } => (Some(reason.clone()), false),
            Request::Recorded { forced, reason, .. } => (reason.clone(), *forced),
            _ => (None, false),
        };
        let revocation = self.blast_radius(&a);
        let join = |parts: [Option<String>; 2]| {
            parts
                .into_iter()
                .flatten()
                .filter(|d| !d.is_empty())
                .reduce(|a, b| format!("{a}; {b}"))
        };
        let notes = self.notes.lock().map(|n| n.join("; ")).ok();
        let answered = join([a.detail.clone(), notes]);
        let detail = join([answered.clone(), revocation.as_ref().map(|r| r.summary.clone())]);
        let (new_kid, new_fingerprint, activates_at) = match a.new {
            Some(n) => (Some(n.kid), n.fingerprint, n.activates_at),
            None => (None, None, None),
        };
        let audit = AuditRecord {
            id: random_hex(16),
            at: self.now,
            ring: inner.ring.to_string(),
            actor: self.ctx.actor.clone(),
            trigger: self.kind,
            outcome: a.outcome,
            forced: a.forced || forced_request,
            reason,
            old_kid: a.old_kid.clone(),
            old_fingerprint: a.old_fingerprint.clone(),
            new_kid: new_kid.clone(),
            new_fingerprint: new_fingerprint.clone(),
            generation: a.generation,
            idempotency_key: self.ctx.idempotency_key.clone(),
            request_id: self.ctx.request_id.clone(),
            detail,
            instance: inner.instance.clone(),
            seq: 0,
            mac: None,
        };
        let report = RotationReport {
            outcome: a.outcome,
            ring: inner.ring.to_string(),
            generation: a.generation,
            forced: a.forced,
            old_kid: a.old_kid,
            old_fingerprint: a.old_fingerprint,
            new_kid,
            new_fingerprint,
            activates_at,
            retry_after_ms: a.retry_after_ms,
            refusal: a.refusal,
            detail: answered,
            at: self.now,
            replayed: false,
            revocation,
        };
        (report, audit)
    }

    /// For a forced rotation that revoked the old key, and a retired ring's last Active
    /// key: when that key is refused everywhere.
    fn blast_radius(&self, a: &Answer) -> Option<super::BlastRadius> {
        let revoked = match &self.request {
            Request::Plan(Trigger::ForceRotate { revoke_old: true, .. }) => a.outcome == Outcome::Rotated,
            Request::Retire { .. } => a.outcome == Outcome::Retired,
            _ => false,
        };
        let old = a.old_kid.as_deref().filter(|_| revoked)?;
        let inner = &self.rotator.inner;
        Some(super::BlastRadius::new(
            old,
            self.now,
            inner.propagation,
            inner.policy.jwks_max_age(),
        ))
    }

    async fn acquire(&self) -> Result<Option<Box<dyn LockGuard>>, StorageError> {
        let inner = &self.rotator.inner;
        let ttl = inner
            .policy
            .lock_ttl()
            .to_std()
            .unwrap_or(std::time::Duration::from_secs(30));
        let span = tracing::info_span!("keyrot.phase", phase = "lock");
        let r = inner
            .lock
            .try_acquire(&inner.ring, &inner.instance, ttl)
            .instrument(span)
            .await;
        match &r {
            Ok(Some(_)) => tracing::debug!(ring = %inner.ring, holder = %inner.instance, "rotation lock acquired"),
            Ok(None) => tracing::debug!(ring = %inner.ring, "rotation lock busy"),
            Err(e) => tracing::warn!(ring = %inner.ring, error = %e, "rotation lock failed"),
        }
        r
    }

    async fn release(&self, guard: Box<dyn LockGuard>) {
        let ring = &self.rotator.inner.ring;
        let span = tracing::info_span!("keyrot.phase", phase = "release");
        if let Err(e) = guard.release().instrument(span).await {
            tracing::warn!(%ring, error = %e, "rotation lock release failed; it expires by itself");
        } else {
            tracing::debug!(%ring, "rotation lock released");
        }
    }

    /// Records the committed generation as served and updates the local key ring.
    async fn install(&self, next: &Ring) {
        let inner = &self.rotator.inner;
        inner
            .served
            .fetch_max(next.generation, std::sync::atomic::Ordering::AcqRel);
        if let Some(kr) = &inner.keyring {
            let span = tracing::info_span!("keyrot.phase", phase = "notify");
            if let Err(e) = kr.install(next).instrument(span).await {
                tracing::warn!(error = %e, "local key ring not updated; it refreshes from storage");
            }
        }
    }
}

/// Traces an attempt's answer on its span: nothing due (and a tick's busy lock) at debug,
/// other answers at info, failures at error.
pub(super) fn trace_answer(span: &tracing::Span, kind: TriggerKind, result: &Result<RotationReport, RotateError>) {
    match result {
        Ok(r) if r.outcome == Outcome::NothingDue || (r.outcome == Outcome::LockBusy && kind == TriggerKind::Tick) => {
            span.record("outcome", r.outcome.as_str());
            tracing::debug!(parent: span, outcome = r.outcome.as_str(), generation = r.generation, "nothing to do");
        }
        Ok(r) => {
            span.record("outcome", r.outcome.as_str());
            tracing::info!(
                parent: span,
                outcome = r.outcome.as_str(),
                generation = r.generation,
                old_kid = r.old_kid.as_deref(),
                new_kid = r.new_kid.as_deref(),
                forced = r.forced,
                "key rotation attempt"
            );
        }
        Err(e) => {
            span.record("outcome", "failed");
            tracing::error!(parent: span, error = %e.described(), "key rotation attempt failed");
        }
    }
}
