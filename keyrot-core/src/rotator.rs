//! The rotator: the effectful shell around the planner.
//!
//! Every attempt runs these phases, each a `tracing` span with a `phase` field:
//! idempotency check → lock → load → plan → generate (outside any transaction; RSA on a
//! blocking thread) → seal → commit (compare-and-swap on generation, with the audit and
//! idempotency records) → notify → release. Losing the compare-and-swap is not an error:
//! the report says another instance already did it.

use crate::b64;
use crate::clock::{Clock, SystemClock, to_millis};
use crate::integrity::SealerLinker;
use crate::key::{ImportedKey, KeyError, PrivateKey};
use crate::keyring::KeyRing;
use crate::planner::{self, ApplyError, ImportState, NewKey, Plan, PlanKind, Refusal, Trigger, TriggerKind};
use crate::policy::Policy;
use crate::ring::{KeyState, Ring, RingName};
use crate::seal::{SealContext, SealError, Sealer};
use crate::storage::{
    AuditQuery, AuditRecord, Commit, CommitOutcome, IdempotencyRecord, Lock, LockGuard, Outcome, Storage, StorageError,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use std::sync::Arc;
use tracing::Instrument as _;

/// Longest accepted `Idempotency-Key`.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;

/// Why an attempt failed (as opposed to being refused). Carries no key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RotateError {
    /// Storage failed; nothing was changed. Rotation fails closed.
    #[error("rotation failed closed: {0}")]
    Storage(#[from] StorageError),
    /// Sealing or unsealing failed.
    #[error(transparent)]
    Seal(#[from] SealError),
    /// Key generation or import failed.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// Internal inconsistency between plan and ring.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// The idempotency key was used before for a different request.
    #[error("idempotency key was already used for a different request")]
    IdempotencyKeyReused,
    /// The idempotency key is empty, too long, or not printable ASCII.
    #[error("idempotency key must be 1-128 printable ASCII characters")]
    InvalidIdempotencyKey,
    /// The stored ring fails its integrity check (tampered, missing or unauthenticated
    /// rows): nothing is written on top of it. Fails closed.
    #[error("rotation refused: the stored ring fails its integrity check: {0}")]
    Integrity(String),
    /// Storage shows an older generation than this instance already served (a rollback
    /// of the database): nothing is written. Fails closed.
    #[error(
        "rotation refused: storage is at generation {found}, older than generation {served} this instance already served"
    )]
    Rollback {
        /// What storage shows.
        found: u64,
        /// What this instance served.
        served: u64,
    },
}

/// The answer to an attempt: what happened, to which keys, at which generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotationReport {
    /// What happened.
    pub outcome: Outcome,
    /// The ring.
    pub ring: String,
    /// The generation after the attempt.
    pub generation: u64,
    /// Whether the forced path was used.
    pub forced: bool,
    /// The kid of the ring's Active key when the attempt was planned; `None` when the
    /// ring had none (bootstrap) or could not be read.
    pub old_kid: Option<String>,
    /// The RFC 7638 thumbprint of the `old_kid` key; `None` exactly when `old_kid` is (or
    /// when a quarantine could not vouch for it).
    pub old_fingerprint: Option<String>,
    /// The kid of the key the attempt added or activated (Active, or Pending when
    /// scheduled), or of the Pending key already scheduled for
    /// [`Outcome::AlreadyScheduled`]; `None` when no key was added or activated.
    pub new_kid: Option<String>,
    /// The RFC 7638 thumbprint of the `new_kid` key; `None` when `new_kid` is.
    pub new_fingerprint: Option<String>,
    /// The `new_kid` key's due activation (its `activate_at`): when a scheduled or
    /// already scheduled Pending key is due to sign; `None` when there is no `new_kid`.
    pub activates_at: Option<DateTime<Utc>>,
    /// For rate limits: how long until allowed (milliseconds).
    pub retry_after_ms: Option<i64>,
    /// The refusal, if refused.
    pub refusal: Option<Refusal>,
    /// Human-readable detail (never secrets).
    pub detail: Option<String>,
    /// When the attempt was handled: the rotator's clock, truncated to whole milliseconds;
    /// the audit record of the attempt carries the same time.
    pub at: DateTime<Utc>,
    /// Whether this answer was replayed from an earlier request with the same
    /// idempotency key.
    #[serde(default)]
    pub replayed: bool,
}

impl RotationReport {
    /// `Retry-After` in whole seconds, rounded up, at least 1 (rate limits only).
    pub fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after_ms.map(|ms| (ms.max(1) as u64).div_ceil(1000).max(1))
    }
}

/// Who asked and how to correlate the request.
#[derive(Debug, Clone, Default)]
pub struct RequestContext {
    /// The actor (OAuth client id, `cli:user`, …).
    pub actor: String,
    /// An `Idempotency-Key`.
    pub idempotency_key: Option<String>,
    /// A request id for correlation.
    pub request_id: Option<String>,
}

impl RequestContext {
    /// A context for `actor`.
    pub fn actor(actor: impl Into<String>) -> Self {
        Self {
            actor: actor.into(),
            ..Self::default()
        }
    }

    /// With an idempotency key.
    pub fn with_idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// With a request id.
    pub fn with_request_id(mut self, id: impl Into<String>) -> Self {
        self.request_id = Some(id.into());
        self
    }
}

struct Inner {
    ring: RingName,
    storage: Arc<dyn Storage>,
    lock: Arc<dyn Lock>,
    sealer: Arc<dyn Sealer>,
    clock: Arc<dyn Clock>,
    policy: Policy,
    instance: String,
    keyring: Option<KeyRing>,
    linker: SealerLinker,
    /// The highest authenticated generation this rotator loaded or committed.
    served: std::sync::atomic::AtomicU64,
}

/// Performs rotations on one ring. Cheap to clone.
#[derive(Clone)]
pub struct Rotator {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Rotator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rotator")
            .field("ring", &self.inner.ring)
            .field("instance", &self.inner.instance)
            .finish()
    }
}

/// Builds a [`Rotator`].
#[derive(Debug)]
pub struct RotatorBuilder {
    ring: RingName,
    storage: Arc<dyn Storage>,
    lock: Arc<dyn Lock>,
    sealer: Arc<dyn Sealer>,
    clock: Arc<dyn Clock>,
    policy: Policy,
    instance: Option<String>,
    keyring: Option<KeyRing>,
}

impl RotatorBuilder {
    /// Clock (default: system).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Policy (default: [`Policy::default`]).
    pub fn with_policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// A name for this instance in audit records and lock holders (default: random).
    pub fn with_instance(mut self, instance: impl Into<String>) -> Self {
        self.instance = Some(instance.into());
        self
    }

    /// A local key ring to update at once after each commit.
    pub fn with_keyring(mut self, keyring: KeyRing) -> Self {
        self.keyring = Some(keyring);
        self
    }

    /// The rotator.
    pub fn build(self) -> Rotator {
        Rotator {
            inner: Arc::new(Inner {
                ring: self.ring,
                storage: self.storage,
                lock: self.lock,
                sealer: self.sealer.clone(),
                clock: self.clock,
                policy: self.policy,
                instance: self.instance.unwrap_or_else(|| format!("instance-{}", random_hex(4))),
                keyring: self.keyring,
                linker: SealerLinker::new(self.sealer.clone()),
                served: std::sync::atomic::AtomicU64::new(0),
            }),
        }
    }
}

fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    // A failing RNG only makes ids less unique; ids are not secrets.
    let _ = getrandom::fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

struct Attempt {
    trigger: Trigger,
    ctx: RequestContext,
    material: Option<PrivateKey>,
    revoke_old: bool,
}

impl Rotator {
    /// Starts building a rotator for `ring`.
    pub fn builder(
        ring: RingName,
        storage: Arc<dyn Storage>,
        lock: Arc<dyn Lock>,
        sealer: Arc<dyn Sealer>,
    ) -> RotatorBuilder {
        RotatorBuilder {
            ring,
            storage,
            lock,
            sealer,
            clock: Arc::new(SystemClock),
            policy: Policy::default(),
            instance: None,
            keyring: None,
        }
    }

    /// The ring.
    pub fn ring(&self) -> &RingName {
        &self.inner.ring
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.inner.policy
    }

    /// This instance's name.
    pub fn instance(&self) -> &str {
        &self.inner.instance
    }

    /// The storage.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.inner.storage
    }

    /// Appends a record of an attempt the caller refused itself (an HTTP endpoint's 401,
    /// 403, 400) to the ring's audit ledger, through the same path as the rotator's own
    /// records.
    pub async fn append_audit(&self, record: &AuditRecord) -> Result<(), StorageError> {
        self.inner
            .storage
            .record_attempt(record, None, &self.inner.linker)
            .await
    }

    /// Checks the ring's whole audit chain (see [`crate::integrity::verify_chain`]): `Ok`
    /// when intact, the first broken record otherwise.
    pub async fn verify_audit_chain(
        &self,
    ) -> Result<Result<crate::integrity::ChainReport, crate::integrity::ChainBreak>, StorageError> {
        let ring = self.load().await?;
        let records = self
            .inner
            .storage
            .audit_log(&self.inner.ring, AuditQuery { limit: usize::MAX })
            .await?;
        let report = crate::integrity::verify_chain(&records, &*self.inner.sealer);
        // The authenticated manifest names the record of the last commit: deleting the
        // newest records (a truncation of the ledger) cannot take it away unnoticed.
        let integrity = crate::integrity::check_ring(&ring, &*self.inner.sealer);
        if let (Ok(_), Some(id)) = (&report, &integrity.manifest_audit_id)
            && !records.iter().any(|r| &r.id == id && r.mac.is_some())
        {
            return Ok(Err(crate::integrity::ChainBreak {
                id: id.clone(),
                seq: 0,
                reason: format!(
                    "the record of the last commit (generation {}) is missing: the newest records were deleted",
                    integrity.manifest_generation.unwrap_or(0)
                ),
            }));
        }
        Ok(report)
    }

    /// The explicit, audited integrity migration for a ring written before keyrot
    /// authenticated rings: writes the ring's first manifest over the rows as they are
    /// now, and starts the audit chain. Whoever runs it vouches for those rows (check
    /// them first: `keyrotctl status`), so it is never done on load. Refused for a ring
    /// that already has a manifest, and for one whose ledger is already chained (its
    /// manifest was then deleted: tampering, not a legacy ring).
    pub async fn authenticate_ring(&self, ctx: RequestContext) -> Result<RotationReport, RotateError> {
        self.authenticate_ring_reviewed(ctx, None).await
    }

    /// [`Rotator::authenticate_ring`] bound to what was reviewed: refused unless the rows
    /// still have `expected_digest` ([`crate::integrity::rows_digest`], which
    /// `keyrotctl authenticate-ring` prints with the listing) when the lock is held.
    pub async fn authenticate_ring_reviewed(
        &self,
        ctx: RequestContext,
        expected_digest: Option<&str>,
    ) -> Result<RotationReport, RotateError> {
        let now = to_millis(self.inner.clock.now());
        self.under_lock(TriggerKind::Authenticate, &ctx, now, || {
            self.authenticate_locked(&ctx, now, expected_digest)
        })
        .await
    }

    /// Runs an operator's operation (rewrap, the integrity migration, repair) under the
    /// ring's rotation lock, in a `keyrot.operation` span; a busy lock is audited and
    /// answered, not an error.
    async fn under_lock<'a, F, Fut>(
        &'a self,
        kind: TriggerKind,
        ctx: &'a RequestContext,
        now: DateTime<Utc>,
        op: F,
    ) -> Result<RotationReport, RotateError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<RotationReport, RotateError>> + 'a,
    {
        let span = tracing::info_span!(
            "keyrot.operation",
            ring = %self.inner.ring,
            trigger = kind.as_str(),
            phase = tracing::field::Empty
        );
        async {
            let Some(guard) = self.acquire().await? else {
                let report = self.report(Outcome::LockBusy, now, None);
                self.audit_only(kind, ctx, &report, None, None).await?;
                return Ok(report);
            };
            let result = op().await;
            self.release(guard).await;
            result
        }
        .instrument(span)
        .await
    }

    /// Rows the integrity migration must not vouch for, each named with why: a
    /// fingerprint that is not the RFC 7638 thumbprint of the row's public key, a kid
    /// that is not its thumbprint (unless imported), private material that does not open
    /// or does not match the public key.
    fn unvouchable_rows(&self, ring: &Ring) -> Vec<String> {
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
            if k.origin != crate::ring::KeyOrigin::Imported && k.kid != thumbprint {
                problems.push(format!("{}: the kid is not the thumbprint of its public key", k.kid));
            }
            if let Some(sealed) = &k.sealed {
                let ctx = SealContext {
                    ring: ring.name.as_str(),
                    kid: &k.kid,
                    alg: k.alg,
                };
                let matches = self
                    .inner
                    .sealer
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

    async fn authenticate_locked(
        &self,
        ctx: &RequestContext,
        now: DateTime<Utc>,
        expected_digest: Option<&str>,
    ) -> Result<RotationReport, RotateError> {
        let ring = self.load().await?;
        let refuse = |detail: String| {
            let mut r = self.report(Outcome::Refused, now, None);
            r.generation = ring.generation;
            r.detail = Some(detail);
            r
        };
        if ring.manifest.is_some() {
            let report = refuse("the ring already has a manifest; nothing to migrate".into());
            self.audit_only(TriggerKind::Authenticate, ctx, &report, None, None)
                .await?;
            return Ok(report);
        }
        let ledger = self
            .inner
            .storage
            .audit_log(&self.inner.ring, AuditQuery { limit: usize::MAX })
            .await?;
        // Refusals are chained on a legacy ring too; a chained *commit* means the ring
        // was authenticated before.
        let chained = ledger.iter().any(|r| r.mac.is_some() && r.outcome.changed_ring());
        if chained {
            let report = refuse(
                "the ring's ledger is already chained, so it was authenticated before: a missing manifest means the \
                 database was tampered with; restore it from a backup instead"
                    .into(),
            );
            self.audit_only(TriggerKind::Authenticate, ctx, &report, None, None)
                .await?;
            return Ok(report);
        }
        let problems = self.unvouchable_rows(&ring);
        let digest = crate::integrity::rows_digest(&ring);
        let stale_review = expected_digest.filter(|e| *e != digest);
        if !problems.is_empty() || stale_review.is_some() {
            let detail = match stale_review {
                Some(_) => format!(
                    "the rows changed since they were reviewed (their digest is now {digest}): review them again"
                ),
                None => format!(
                    "refusing to vouch for rows that are not self-consistent: {}",
                    problems.join("; ")
                ),
            };
            let report = refuse(detail);
            self.audit_only(TriggerKind::Authenticate, ctx, &report, None, None)
                .await?;
            return Ok(report);
        }
        let legacy: Vec<&AuditRecord> = ledger.iter().filter(|r| r.mac.is_none()).collect();
        let legacy_note = crate::integrity::legacy_ledger_note(&legacy);
        let mut next = ring.clone();
        next.generation += 1;
        let audit_id = random_hex(16);
        let manifest = crate::integrity::seal_manifest(&next, &*self.inner.sealer, &audit_id)?;
        next.manifest = Some(manifest.clone());
        let mut report = self.report(Outcome::Authenticated, now, Some(&ring));
        report.generation = next.generation;
        let kids: Vec<String> = ring
            .keys
            .iter()
            .map(|k| format!("{} ({})", k.kid, k.state.as_str()))
            .collect();
        report.detail = Some(format!(
            "authenticated {} key row(s): {}; {legacy_note}",
            kids.len(),
            kids.join(", ")
        ));
        let commit = Commit {
            ring: ring.name.clone(),
            expected_generation: ring.generation,
            keys: Vec::new(),
            audit: AuditRecord {
                id: audit_id,
                ..self.audit_record(TriggerKind::Authenticate, ctx, &report, None)
            },
            idempotency: None,
            manifest,
        };
        self.commit_and_install(TriggerKind::Authenticate, ctx, &ring, &next, &commit, report, now)
            .await
    }

    /// The way back from tampering, for someone holding the master key: every row that
    /// fails the integrity check is quarantined — rewritten as Expired, revoked with a
    /// reason naming the failure and `reason`, its sealed material dropped — and the
    /// manifest is re-issued over the result (rows the manifest lists but storage lost are
    /// dropped from it). Rows that pass are not touched, so nothing an attacker wrote ever
    /// verifies. If the Active row was among the quarantined, the ring has no Active key
    /// afterwards: the next tick, `init` or forced rotation bootstraps a fresh one. Audited.
    /// Refused for an intact ring, a ring without a manifest (use
    /// [`Rotator::authenticate_ring`]), and a rolled-back one (restore it instead).
    pub async fn quarantine_tampered(
        &self,
        ctx: RequestContext,
        reason: impl Into<String>,
    ) -> Result<RotationReport, RotateError> {
        let reason = reason.into();
        let now = to_millis(self.inner.clock.now());
        self.under_lock(TriggerKind::Repair, &ctx, now, || {
            self.quarantine_locked(&ctx, &reason, now)
        })
        .await
    }

    async fn quarantine_locked(
        &self,
        ctx: &RequestContext,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<RotationReport, RotateError> {
        let ring = self.load().await?;
        let integrity = crate::integrity::check_ring(&ring, &*self.inner.sealer);
        let refusal = if reason.trim().is_empty() || reason.chars().count() > planner::MAX_REASON_LEN {
            Some("a non-empty reason (at most 500 characters) is required".to_owned())
        } else if integrity.is_intact() {
            Some("the ring passes its integrity check; nothing to repair".to_owned())
        } else {
            match &integrity.integrity {
                crate::integrity::RingIntegrity::Unauthenticated => Some(
                    "the ring has no manifest: authenticate it (authenticate-ring) instead of repairing it".to_owned(),
                ),
                crate::integrity::RingIntegrity::UnknownMasterKey(id) => {
                    return Err(RotateError::Seal(SealError::UnknownMasterKey(id.clone())));
                }
                _ => None,
            }
        };
        if refusal.is_none() {
            self.check_not_rolled_back(&integrity).await?;
        }
        if let Some(detail) = refusal {
            let mut r = self.report(Outcome::Refused, now, None);
            r.generation = ring.generation;
            r.detail = Some(detail);
            self.audit_only(TriggerKind::Repair, ctx, &r, None, None).await?;
            return Ok(r);
        }
        let mut next = ring.clone();
        next.generation += 1;
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
        let audit_id = random_hex(16);
        let manifest = crate::integrity::seal_manifest(&next, &*self.inner.sealer, &audit_id)?;
        next.manifest = Some(manifest.clone());
        let mut report = self.report(Outcome::Quarantined, now, Some(&next));
        report.old_kid = ring
            .active()
            .filter(|k| integrity.trusts(&k.kid))
            .map(|k| k.kid.clone());
        report.old_fingerprint = None;
        report.generation = next.generation;
        let kids: Vec<&str> = changed.iter().map(|k| k.kid.as_str()).collect();
        report.detail = Some(format!(
            "quarantined {} row(s): [{}]; dropped from the manifest: [{}]; {reason}",
            kids.len(),
            kids.join(", "),
            integrity.missing.join(", ")
        ));
        let commit = Commit {
            ring: ring.name.clone(),
            expected_generation: ring.generation,
            keys: changed,
            audit: AuditRecord {
                id: audit_id,
                ..self.audit_record(TriggerKind::Repair, ctx, &report, None)
            },
            idempotency: None,
            manifest,
        };
        tracing::warn!(ring = %ring.name, detail = report.detail.as_deref(), "quarantining tampered key rows");
        self.commit_and_install(TriggerKind::Repair, ctx, &ring, &next, &commit, report, now)
            .await
    }

    /// Commits a change the caller built (rewrap, the integrity migration) and installs
    /// it locally; a lost race is audited and answered, not an error.
    #[allow(clippy::too_many_arguments)]
    async fn commit_and_install(
        &self,
        kind: TriggerKind,
        ctx: &RequestContext,
        ring: &Ring,
        next: &Ring,
        commit: &Commit,
        report: RotationReport,
        now: DateTime<Utc>,
    ) -> Result<RotationReport, RotateError> {
        match self.inner.storage.commit(commit, &self.inner.linker).await? {
            CommitOutcome::Committed => {
                self.install(next).await;
                Ok(report)
            }
            CommitOutcome::Conflict { current } => {
                let mut r = self.report(Outcome::LostRace, now, Some(ring));
                r.generation = current;
                self.audit_only(kind, ctx, &r, None, None).await?;
                Ok(r)
            }
        }
    }

    /// Loads the ring fresh and refuses to build on it if it fails its integrity check
    /// or is older than what this instance served.
    async fn load_trusted(&self) -> Result<Ring, RotateError> {
        let ring = self.load().await?;
        let report = crate::integrity::check_ring(&ring, &*self.inner.sealer);
        self.check_not_rolled_back(&report).await?;
        if !report.is_intact() {
            tracing::error!(ring = %ring.name, integrity = %report.summary(), "stored ring fails its integrity check");
            return Err(RotateError::Integrity(report.summary()));
        }
        Ok(ring)
    }

    /// The highest authenticated generation this rotator (or its key ring) has seen.
    fn served(&self) -> u64 {
        let own = self.inner.served.load(std::sync::atomic::Ordering::Acquire);
        self.inner
            .keyring
            .as_ref()
            .map_or(own, |kr| kr.highest_generation().max(own))
    }

    /// Refuses a ring whose authenticated state is older than what this process served,
    /// or than what the ledger proves was committed: the newest chained record of a
    /// commit must be the one the manifest names. A whole-ring rollback (old rows and
    /// their old manifest restored together) is caught here even by a process that never
    /// served the newer state, unless the ledger was truncated as well.
    async fn check_not_rolled_back(&self, report: &crate::integrity::IntegrityReport) -> Result<(), RotateError> {
        let found = report.authenticated_generation().unwrap_or(0);
        let served = self.served();
        if found < served {
            return Err(RotateError::Rollback { found, served });
        }
        if let (Some(generation), Some(id)) = (report.manifest_generation, &report.manifest_audit_id) {
            match self.newest_commit_record().await? {
                Some(r) if &r.id == id && r.generation == generation => {}
                Some(r) if r.generation > generation => {
                    tracing::error!(
                        ring = %self.inner.ring,
                        manifest = generation,
                        ledger = r.generation,
                        "the ledger records a newer commit than the stored ring: a rollback"
                    );
                    return Err(RotateError::Rollback {
                        found: generation,
                        served: r.generation,
                    });
                }
                Some(r) => {
                    return Err(RotateError::Integrity(format!(
                        "the ledger's newest commit (record {}, generation {}) is not the one the manifest names \
                         (record {id}, generation {generation})",
                        r.id, r.generation
                    )));
                }
                None => {
                    return Err(RotateError::Integrity(format!(
                        "the ledger holds no record of the commit the manifest names (record {id}, generation \
                         {generation})"
                    )));
                }
            }
        }
        self.inner.served.fetch_max(found, std::sync::atomic::Ordering::AcqRel);
        Ok(())
    }

    /// The newest chained audit record of a change to the ring.
    async fn newest_commit_record(&self) -> Result<Option<AuditRecord>, StorageError> {
        let mut limit = 64;
        loop {
            let records = self
                .inner
                .storage
                .audit_log(&self.inner.ring, AuditQuery { limit })
                .await?;
            if let Some(r) = records.iter().find(|r| r.mac.is_some() && r.outcome.changed_ring()) {
                return Ok(Some(r.clone()));
            }
            if records.len() < limit || limit >= 1 << 22 {
                return Ok(None);
            }
            limit *= 8;
        }
    }

    async fn install(&self, next: &Ring) {
        self.inner
            .served
            .fetch_max(next.generation, std::sync::atomic::Ordering::AcqRel);
        if let Some(kr) = &self.inner.keyring {
            let span = tracing::info_span!("keyrot.phase", phase = "notify");
            if let Err(e) = kr.install(next).instrument(span).await {
                tracing::warn!(error = %e, "local key ring not updated; it refreshes from storage");
            }
        }
    }

    /// Creates the first Active key if the ring has none.
    pub async fn init(&self, ctx: RequestContext) -> Result<RotationReport, RotateError> {
        self.run(Attempt {
            trigger: Trigger::Init,
            ctx,
            material: None,
            revoke_old: false,
        })
        .await
    }

    /// One scheduler tick: performs whatever transitions are due. Ticks that find
    /// nothing due or the lock busy are traced but not written to the ledger.
    pub async fn tick(&self) -> Result<RotationReport, RotateError> {
        let ctx = RequestContext::actor(format!("scheduler:{}", self.inner.instance));
        self.run(Attempt {
            trigger: Trigger::Tick,
            ctx,
            material: None,
            revoke_old: false,
        })
        .await
    }

    /// A normal rotation: promotes a Pending key published for `publish_lead`, or
    /// schedules a new one. Rate limited by `min_interval`.
    pub async fn rotate(&self, ctx: RequestContext) -> Result<RotationReport, RotateError> {
        self.run(Attempt {
            trigger: Trigger::Rotate,
            ctx,
            material: None,
            revoke_old: false,
        })
        .await
    }

    /// The emergency path: a new key active at once. `reason` is required.
    pub async fn force_rotate(
        &self,
        ctx: RequestContext,
        reason: impl Into<String>,
        revoke_old: bool,
    ) -> Result<RotationReport, RotateError> {
        let trigger = Trigger::ForceRotate {
            reason: reason.into(),
            revoke_old,
        };
        self.run(Attempt {
            trigger,
            ctx,
            material: None,
            revoke_old,
        })
        .await
    }

    /// Revokes a Pending or Retiring key.
    pub async fn revoke(
        &self,
        ctx: RequestContext,
        kid: impl Into<String>,
        reason: impl Into<String>,
    ) -> Result<RotationReport, RotateError> {
        let trigger = Trigger::Revoke {
            kid: kid.into(),
            reason: reason.into(),
        };
        self.run(Attempt {
            trigger,
            ctx,
            material: None,
            revoke_old: false,
        })
        .await
    }

    /// Imports a key the user brings, as Pending or Active.
    pub async fn import(
        &self,
        ctx: RequestContext,
        key: ImportedKey,
        state: ImportState,
    ) -> Result<RotationReport, RotateError> {
        let kid = key.effective_kid();
        let fingerprint = key.key.public_key().thumbprint();
        let trigger = Trigger::Import {
            kid,
            fingerprint,
            state,
        };
        self.run(Attempt {
            trigger,
            ctx,
            material: Some(key.key),
            revoke_old: false,
        })
        .await
    }

    /// Re-seals every key whose material is sealed under another master key with the
    /// sealer's primary key. Audited.
    pub async fn rewrap(&self, ctx: RequestContext) -> Result<RotationReport, RotateError> {
        let now = to_millis(self.inner.clock.now());
        self.under_lock(TriggerKind::Rewrap, &ctx, now, || self.rewrap_locked(&ctx, now))
            .await
    }

    async fn rewrap_locked(&self, ctx: &RequestContext, now: DateTime<Utc>) -> Result<RotationReport, RotateError> {
        let ring = self.load_trusted().await?;
        let primary = self.inner.sealer.primary_key_id().to_owned();
        let mut changed = Vec::new();
        for k in &ring.keys {
            let Some(sealed) = &k.sealed else { continue };
            if sealed.master_key_id == primary {
                continue;
            }
            let sctx = SealContext {
                ring: ring.name.as_str(),
                kid: &k.kid,
                alg: k.alg,
            };
            let plain = self.inner.sealer.open(sealed, &sctx)?;
            let mut rec = k.clone();
            rec.sealed = Some(self.inner.sealer.seal(&plain, &sctx)?);
            changed.push(rec);
        }
        if changed.is_empty() {
            let mut report = self.report(Outcome::NothingDue, now, Some(&ring));
            report.detail = Some(format!("every key is already sealed under {primary:?}"));
            self.audit_only(TriggerKind::Rewrap, ctx, &report, None, None).await?;
            return Ok(report);
        }
        let mut report = self.report(Outcome::Rewrapped, now, Some(&ring));
        report.generation = ring.generation + 1;
        report.detail = Some(format!("{} key(s) re-sealed under {primary:?}", changed.len()));
        let audit = self.audit_record(TriggerKind::Rewrap, ctx, &report, None);
        let audit_id = audit.id.clone();
        let mut next = ring.clone();
        next.generation += 1;
        for rec in &changed {
            if let Some(k) = next.keys.iter_mut().find(|k| k.kid == rec.kid) {
                *k = rec.clone();
            }
        }
        let manifest = crate::integrity::seal_manifest(&next, &*self.inner.sealer, &audit_id)?;
        next.manifest = Some(manifest.clone());
        let commit = Commit {
            ring: ring.name.clone(),
            expected_generation: ring.generation,
            keys: changed,
            audit,
            idempotency: None,
            manifest,
        };
        self.commit_and_install(TriggerKind::Rewrap, ctx, &ring, &next, &commit, report, now)
            .await
    }

    async fn acquire(&self) -> Result<Option<Box<dyn LockGuard>>, StorageError> {
        let ttl = self
            .inner
            .policy
            .lock_ttl()
            .to_std()
            .unwrap_or(std::time::Duration::from_secs(30));
        let span = tracing::info_span!("keyrot.phase", phase = "lock");
        let r = self
            .inner
            .lock
            .try_acquire(&self.inner.ring, &self.inner.instance, ttl)
            .instrument(span)
            .await;
        match &r {
            Ok(Some(_)) => {
                tracing::debug!(ring = %self.inner.ring, holder = %self.inner.instance, "rotation lock acquired")
            }
            Ok(None) => tracing::debug!(ring = %self.inner.ring, "rotation lock busy"),
            Err(e) => tracing::warn!(ring = %self.inner.ring, error = %e, "rotation lock failed"),
        }
        r
    }

    async fn release(&self, guard: Box<dyn LockGuard>) {
        let span = tracing::info_span!("keyrot.phase", phase = "release");
        if let Err(e) = guard.release().instrument(span).await {
            tracing::warn!(ring = %self.inner.ring, error = %e, "rotation lock release failed; it expires by itself");
        } else {
            tracing::debug!(ring = %self.inner.ring, "rotation lock released");
        }
    }

    async fn load(&self) -> Result<Ring, StorageError> {
        let span = tracing::info_span!("keyrot.phase", phase = "load");
        self.inner.storage.load(&self.inner.ring).instrument(span).await
    }

    /// Idempotency keys are scoped by actor: another client cannot claim (or read) the
    /// answer stored under your key.
    fn idempotency_storage_key(actor: &str, key: &str) -> String {
        let mut h = sha2::Sha256::new();
        h.update(actor.as_bytes());
        h.update([0]);
        h.update(key.as_bytes());
        b64::encode(&h.finalize())
    }

    fn request_hash(trigger: &Trigger, ctx: &RequestContext) -> String {
        let mut h = sha2::Sha256::new();
        let desc = match trigger {
            Trigger::ForceRotate { reason, revoke_old } => format!("force|{reason}|{revoke_old}"),
            Trigger::Revoke { kid, reason } => format!("revoke|{kid}|{reason}"),
            Trigger::Import { kid, state, .. } => format!("import|{kid}|{state:?}"),
            other => other.kind().as_str().to_owned(),
        };
        h.update(desc.as_bytes());
        h.update([0]);
        h.update(ctx.actor.as_bytes());
        b64::encode(&h.finalize())
    }

    async fn run(&self, attempt: Attempt) -> Result<RotationReport, RotateError> {
        let kind = attempt.trigger.kind();
        let span = tracing::info_span!(
            "keyrot.attempt",
            ring = %self.inner.ring,
            trigger = kind.as_str(),
            actor = %attempt.ctx.actor,
            outcome = tracing::field::Empty,
        );
        let result = self.run_inner(attempt).instrument(span.clone()).await;
        match &result {
            Ok(r)
                if r.outcome == Outcome::NothingDue
                    || (r.outcome == Outcome::LockBusy && kind == TriggerKind::Tick) =>
            {
                span.record("outcome", r.outcome.as_str());
                tracing::debug!(parent: &span, outcome = r.outcome.as_str(), generation = r.generation, "nothing to do");
            }
            Ok(r) => {
                span.record("outcome", r.outcome.as_str());
                tracing::info!(
                    parent: &span,
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
                tracing::error!(parent: &span, error = %e, "key rotation attempt failed");
            }
        }
        result
    }

    async fn run_inner(&self, mut attempt: Attempt) -> Result<RotationReport, RotateError> {
        let kind = attempt.trigger.kind();
        let now = to_millis(self.inner.clock.now());
        let idem = match &attempt.ctx.idempotency_key {
            Some(k) => {
                if k.is_empty() || k.len() > MAX_IDEMPOTENCY_KEY_LEN || !k.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(RotateError::InvalidIdempotencyKey);
                }
                Some((
                    Self::idempotency_storage_key(&attempt.ctx.actor, k),
                    Self::request_hash(&attempt.trigger, &attempt.ctx),
                ))
            }
            None => None,
        };
        if let Some(answer) = self.replay(&attempt, now, idem.as_ref()).await? {
            return answer;
        }

        let Some(guard) = self.acquire().await? else {
            let report = self.report(Outcome::LockBusy, now, None);
            if kind != TriggerKind::Tick {
                self.audit_only(kind, &attempt.ctx, &report, None, None).await?;
            }
            return Ok(report);
        };
        let result = self.locked(&mut attempt, now, idem.as_ref()).await;
        self.release(guard).await;
        // A tampered or rolled-back ring fails every tick until someone fixes it; each
        // failure is an error event, but only explicit requests write ledger records, so
        // the tampering cannot grow the ledger by itself.
        let persistent = matches!(result, Err(RotateError::Integrity(_) | RotateError::Rollback { .. }));
        if let Err(e) = &result
            && !(persistent && kind == TriggerKind::Tick)
        {
            let mut r = self.report(Outcome::Failed, now, None);
            r.detail = Some(e.to_string());
            // Best effort: the ledger may be the thing that is down.
            if let Err(audit_err) = self.audit_only(kind, &attempt.ctx, &r, None, None).await {
                tracing::warn!(error = %audit_err, "could not audit the failed attempt");
            }
        }
        result
    }

    /// Answers from the idempotency record, if the request's key has one: the first
    /// answer (replayed), or a refusal when the key was used for another request.
    async fn replay(
        &self,
        attempt: &Attempt,
        now: DateTime<Utc>,
        idem: Option<&(String, String)>,
    ) -> Result<Option<Result<RotationReport, RotateError>>, RotateError> {
        let Some((key, hash)) = idem else {
            return Ok(None);
        };
        let kind = attempt.trigger.kind();
        let span = tracing::info_span!("keyrot.phase", phase = "idempotency");
        let stored = self
            .inner
            .storage
            .idempotency(&self.inner.ring, key)
            .instrument(span)
            .await?;
        let Some(rec) = stored else {
            return Ok(None);
        };
        if &rec.request_hash != hash {
            let mut r = self.report(Outcome::Refused, now, None);
            r.detail = Some("idempotency key reused for a different request".into());
            self.audit_only(kind, &attempt.ctx, &r, None, None).await?;
            return Ok(Some(Err(RotateError::IdempotencyKeyReused)));
        }
        let mut first: RotationReport = serde_json::from_str(&rec.response)
            .map_err(|_| StorageError::Corrupt("stored idempotent response".into()))?;
        first.replayed = true;
        let mut audit_view = first.clone();
        audit_view.outcome = Outcome::Replayed;
        audit_view.at = now;
        audit_view.detail = Some(format!("replay of the answer given at {}", first.at.to_rfc3339()));
        self.audit_only(kind, &attempt.ctx, &audit_view, None, None).await?;
        Ok(Some(Ok(first)))
    }

    async fn locked(
        &self,
        attempt: &mut Attempt,
        now: DateTime<Utc>,
        idem: Option<&(String, String)>,
    ) -> Result<RotationReport, RotateError> {
        let kind = attempt.trigger.kind();
        // Again under the lock: a concurrent request with the same key may have committed
        // between the first check and the lock; both get the same answer.
        if let Some(answer) = self.replay(attempt, now, idem).await? {
            return answer;
        }
        let ring = self.load_trusted().await?;
        let planned = {
            let _s = tracing::info_span!("keyrot.phase", phase = "plan").entered();
            planner::plan(&ring, &self.inner.policy, now, &attempt.trigger)
        };
        let plan = match planned {
            Ok(p) => p,
            Err(refusal) => {
                let outcome = match &refusal {
                    Refusal::NothingDue => Outcome::NothingDue,
                    Refusal::RateLimited { .. } => Outcome::RateLimited,
                    Refusal::AlreadyScheduled { .. } => Outcome::AlreadyScheduled,
                    _ => Outcome::Refused,
                };
                let mut report = self.report(outcome, now, Some(&ring));
                report.retry_after_ms = refusal.retry_after().map(|d| d.num_milliseconds());
                if let Refusal::AlreadyScheduled { kid, activates_at } = &refusal {
                    report.new_kid = Some(kid.clone());
                    report.new_fingerprint = ring.key(kid).map(|k| k.fingerprint.clone());
                    report.activates_at = Some(*activates_at);
                }
                report.forced = matches!(attempt.trigger, Trigger::ForceRotate { .. });
                report.detail = Some(refusal.to_string());
                report.refusal = Some(refusal);
                let skip_ledger = kind == TriggerKind::Tick && outcome == Outcome::NothingDue;
                if !skip_ledger {
                    self.audit_only(kind, &attempt.ctx, &report, Some(&attempt.trigger), idem)
                        .await?;
                }
                return Ok(report);
            }
        };

        let new_key = match plan.new_key() {
            Some(_) => {
                let import_kid = match &attempt.trigger {
                    Trigger::Import { kid, .. } => Some(kid.as_str()),
                    _ => None,
                };
                Some(self.new_key(&ring, attempt.material.take(), import_kid).await?)
            }
            None => None,
        };
        let new_kid = new_key.as_ref().map(|k| k.kid.clone());
        let (mut next, changed) = planner::apply(&ring, &plan, new_key, now)?;
        let audit_id = random_hex(16);
        let manifest = crate::integrity::seal_manifest(&next, &*self.inner.sealer, &audit_id)?;
        next.manifest = Some(manifest.clone());
        let mut report = self.report(outcome_of(&plan), now, Some(&ring));
        report.generation = next.generation;
        report.forced = plan.new_key().is_some_and(|(_, _, forced)| forced);
        if let Some(kid) = new_kid.as_deref().or_else(|| activated_kid(&plan)) {
            let k = next.key(kid);
            report.new_kid = Some(kid.to_owned());
            report.new_fingerprint = k.map(|k| k.fingerprint.clone());
            report.activates_at = k.and_then(|k| k.activate_at);
        }
        report.detail = match &attempt.trigger {
            Trigger::Revoke { kid, reason } => Some(format!("revoked {kid}: {reason}")),
            Trigger::ForceRotate { reason, .. } if attempt.revoke_old => {
                Some(format!("forced; old key revoked: {reason}"))
            }
            Trigger::ForceRotate { reason, .. } => Some(format!("forced: {reason}")),
            _ => None,
        };
        let audit = AuditRecord {
            id: audit_id,
            ..self.audit_record(kind, &attempt.ctx, &report, Some(&attempt.trigger))
        };
        let idempotency = idem.map(|(key, hash)| self.idempotency_record(key, hash, &report, now));
        let commit = Commit {
            ring: ring.name.clone(),
            expected_generation: ring.generation,
            keys: next.keys.iter().filter(|k| changed.contains(&k.kid)).cloned().collect(),
            audit,
            idempotency,
            manifest,
        };
        let committed = {
            let span = tracing::info_span!("keyrot.phase", phase = "commit");
            self.inner
                .storage
                .commit(&commit, &self.inner.linker)
                .instrument(span)
                .await?
        };
        match committed {
            CommitOutcome::Committed => {
                self.install(&next).await;
                Ok(report)
            }
            CommitOutcome::Conflict { current } => {
                let mut r = self.report(Outcome::LostRace, now, Some(&ring));
                r.generation = current;
                r.detail = Some(format!(
                    "another instance changed the ring first (generation {} → {current}); its change stands",
                    ring.generation
                ));
                self.audit_only(kind, &attempt.ctx, &r, Some(&attempt.trigger), None)
                    .await?;
                Ok(r)
            }
        }
    }

    async fn new_key(
        &self,
        ring: &Ring,
        material: Option<PrivateKey>,
        import_kid: Option<&str>,
    ) -> Result<NewKey, RotateError> {
        let key = match material {
            Some(k) => k,
            None => {
                let span = tracing::info_span!("keyrot.phase", phase = "generate");
                PrivateKey::generate_async(self.inner.policy.algorithm(), self.inner.policy.rsa_bits())
                    .instrument(span)
                    .await?
            }
        };
        let public = key.public_key();
        let fingerprint = public.thumbprint();
        // An imported key keeps the kid it arrived with (the planner checked it is new).
        let kid = import_kid.map_or_else(|| fingerprint.clone(), str::to_owned);
        let _s = tracing::info_span!("keyrot.phase", phase = "seal").entered();
        let plain = key.to_secret_bytes()?;
        let sealed = self.inner.sealer.seal(
            &plain,
            &SealContext {
                ring: ring.name.as_str(),
                kid: &kid,
                alg: key.algorithm(),
            },
        )?;
        Ok(NewKey {
            public_jwk: public.to_jwk(&kid).to_string(),
            kid,
            alg: key.algorithm(),
            fingerprint,
            sealed,
        })
    }

    fn report(&self, outcome: Outcome, now: DateTime<Utc>, before: Option<&Ring>) -> RotationReport {
        let old = before.and_then(Ring::active);
        RotationReport {
            outcome,
            ring: self.inner.ring.to_string(),
            generation: before.map_or(0, |r| r.generation),
            forced: false,
            old_kid: old.map(|k| k.kid.clone()),
            old_fingerprint: old.map(|k| k.fingerprint.clone()),
            new_kid: None,
            new_fingerprint: None,
            activates_at: None,
            retry_after_ms: None,
            refusal: None,
            detail: None,
            at: now,
            replayed: false,
        }
    }

    fn audit_record(
        &self,
        kind: TriggerKind,
        ctx: &RequestContext,
        report: &RotationReport,
        trigger: Option<&Trigger>,
    ) -> AuditRecord {
        let reason = match trigger {
            Some(Trigger::ForceRotate { reason, .. } | Trigger::Revoke { reason, .. }) => Some(reason.clone()),
            _ => None,
        };
        AuditRecord {
            id: random_hex(16),
            at: report.at,
            ring: self.inner.ring.to_string(),
            actor: ctx.actor.clone(),
            trigger: kind,
            outcome: report.outcome,
            forced: report.forced || matches!(trigger, Some(Trigger::ForceRotate { .. })),
            reason,
            old_kid: report.old_kid.clone(),
            old_fingerprint: report.old_fingerprint.clone(),
            new_kid: report.new_kid.clone(),
            new_fingerprint: report.new_fingerprint.clone(),
            generation: report.generation,
            idempotency_key: ctx.idempotency_key.clone(),
            request_id: ctx.request_id.clone(),
            detail: report.detail.clone(),
            instance: self.inner.instance.clone(),
            seq: 0,
            mac: None,
        }
    }

    fn idempotency_record(
        &self,
        key: &str,
        hash: &str,
        report: &RotationReport,
        now: DateTime<Utc>,
    ) -> IdempotencyRecord {
        IdempotencyRecord {
            ring: self.inner.ring.to_string(),
            key: key.to_owned(),
            request_hash: hash.to_owned(),
            response: serde_json::to_string(report).unwrap_or_default(),
            created_at: now,
        }
    }

    async fn audit_only(
        &self,
        kind: TriggerKind,
        ctx: &RequestContext,
        report: &RotationReport,
        trigger: Option<&Trigger>,
        idem: Option<&(String, String)>,
    ) -> Result<(), StorageError> {
        let audit = self.audit_record(kind, ctx, report, trigger);
        // Transient answers are not stored for replay: a retry should try again. Neither is
        // a rate limit: replayed later, its Retry-After would be stale.
        let store_idem = !matches!(
            report.outcome,
            Outcome::LockBusy | Outcome::LostRace | Outcome::Failed | Outcome::RateLimited
        );
        let rec = idem
            .filter(|_| store_idem)
            .map(|(k, h)| self.idempotency_record(k, h, report, report.at));
        self.inner
            .storage
            .record_attempt(&audit, rec.as_ref(), &self.inner.linker)
            .await
    }
}

fn activated_kid(plan: &Plan) -> Option<&str> {
    plan.actions.iter().find_map(|a| match a {
        planner::Action::Activate { kid } => Some(kid.as_str()),
        _ => None,
    })
}

fn outcome_of(plan: &Plan) -> Outcome {
    match plan.kind {
        PlanKind::Bootstrap => Outcome::Bootstrapped,
        PlanKind::Rotated => Outcome::Rotated,
        PlanKind::Scheduled => Outcome::Scheduled,
        PlanKind::Revoked => Outcome::Revoked,
        PlanKind::Imported => Outcome::Imported,
        PlanKind::Maintenance => Outcome::Maintained,
    }
}
