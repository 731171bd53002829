//! The rotator: the effectful shell around the planner.
//!
//! Every request — a rotation, a forced rotation, an import, a revocation, `init`, a
//! scheduler tick, and the operator's rewrap, integrity migration, repair and retiring a
//! ring — is one
//! `Attempt` (its kind, who asked, the time, its idempotency key) that runs the same
//! phases inside one `keyrot.attempt` span, each phase a `keyrot.phase` span with a
//! `phase` field:
//!
//! 1. `idempotency`: validate the key and answer a replay from its record;
//! 2. `lock` the ring (a busy lock is answered `lock_busy`), then check the replay again;
//! 3. `load` the ring and check it can be trusted (integrity manifest, no rollback);
//! 4. decide: `plan` (the planner, which holds every rate-limit rule), then `generate`
//!    and `seal` the new key outside any transaction (RSA on a blocking thread); or
//!    build the operator's change (rewrap, authenticate, repair);
//! 5. `seal` the manifest and `commit`: compare-and-swap on the generation, with the
//!    audit and idempotency records. Losing it is not an error: the report says another
//!    instance already did it;
//! 6. `notify` the local key ring, `release` the lock.
//!
//! Every answer becomes the [`RotationReport`] and the audit record together, in one
//! place (`Attempt::conclude`).

mod attempt;
mod context;
mod error;
mod export;
mod idempotency;
mod maintenance;
mod plan;
mod refused;
mod remote;
mod report;
mod trust;

pub use context::{DEFAULT_PROPAGATION, RequestContext, RotatorBuilder};
pub use error::RotateError;
pub use idempotency::{MAX_IDEMPOTENCY_KEY_LEN, checked_idempotency_key};
pub use refused::RefusedRequest;
pub use report::{BlastRadius, RotationReport};

use crate::clock::Clock;
use crate::integrity::SealerLinker;
use crate::key::{ImportedKey, PrivateKey};
use crate::keyring::KeyRing;
use crate::planner::{ImportState, Trigger};
use crate::policy::Policy;
use crate::ring::RingName;
use crate::seal::Sealer;
use crate::storage::{Lock, Storage};
use attempt::Request;

/// The key an import brings: a private key, or a key the ring's HSM or KMS holds.
pub(crate) enum Material {
    Local(PrivateKey),
    Remote(crate::custody::RemoteKey),
}
use std::sync::Arc;

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
    /// How long a commit takes at most to reach every instance (change feed or poll).
    propagation: std::time::Duration,
    /// The HSM or KMS that creates and holds the ring's signing keys, when one does.
    signing: Option<Arc<dyn crate::custody::SigningCustody>>,
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

impl Rotator {
    /// Starts building a rotator for `ring`.
    pub fn builder(
        ring: RingName,
        storage: Arc<dyn Storage>,
        lock: Arc<dyn Lock>,
        sealer: Arc<dyn Sealer>,
    ) -> RotatorBuilder {
        RotatorBuilder::new(ring, storage, lock, sealer)
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

    /// Appends `record` as written, linked into the chain: for tests that need records
    /// only other instances would write ([`crate::testing::append_audit`]).
    #[cfg(feature = "test-util")]
    pub(crate) async fn append_audit(&self, record: &crate::AuditRecord) -> Result<(), crate::StorageError> {
        self.inner
            .storage
            .record_attempt(record, None, &self.inner.linker)
            .await
    }

    /// Creates the first Active key if the ring has none.
    pub async fn init(&self, ctx: RequestContext) -> Result<RotationReport, RotateError> {
        self.attempt(Request::Plan(Trigger::Init), ctx, None).await
    }

    /// One scheduler tick: performs whatever transitions are due. Ticks that find
    /// nothing due or the lock busy are traced but not written to the ledger.
    pub async fn tick(&self) -> Result<RotationReport, RotateError> {
        let ctx = RequestContext::actor(format!("scheduler:{}", self.inner.instance));
        let result = self.attempt(Request::Plan(Trigger::Tick), ctx, None).await;
        if let Some(kr) = &self.inner.keyring {
            kr.record_clock_gauges();
        }
        result
    }

    /// A normal rotation: promotes a Pending key published for `publish_lead`, or
    /// schedules a new one. Rate limited by `min_interval`.
    pub async fn rotate(&self, ctx: RequestContext) -> Result<RotationReport, RotateError> {
        self.attempt(Request::Plan(Trigger::Rotate), ctx, None).await
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
        self.attempt(Request::Plan(trigger), ctx, None).await
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
        self.attempt(Request::Plan(trigger), ctx, None).await
    }

    /// Imports a key the user brings, as Pending or Active.
    pub async fn import(
        &self,
        ctx: RequestContext,
        key: ImportedKey,
        state: ImportState,
    ) -> Result<RotationReport, RotateError> {
        let trigger = Trigger::Import {
            kid: key.effective_kid(),
            fingerprint: key.key.public_key().thumbprint(),
            state,
        };
        self.attempt(Request::Plan(trigger), ctx, Some(Material::Local(key.key)))
            .await
    }

    /// Brings a key the ring's HSM or KMS already holds ([`RotatorBuilder::with_signing_custody`])
    /// into the ring by its reference (a PKCS#11 URI with `id=` or `object=`, a Transit key
    /// name, a KMS key ARN or alias), as Pending or Active, with `kid` or its thumbprint as
    /// its kid. The backend must hold it non-extractable, for the policy's algorithm. From
    /// then on keyrot's lifecycle drives it: revoking disables it there, purging destroys it.
    pub async fn import_remote(
        &self,
        ctx: RequestContext,
        reference: &str,
        kid: Option<String>,
        state: ImportState,
    ) -> Result<RotationReport, RotateError> {
        let custody = self.inner.signing.as_ref().ok_or_else(|| {
            RotateError::Custody(crate::custody::CustodyError::Config(
                "importing by reference needs the ring's HSM or KMS (RotatorBuilder::with_signing_custody)".into(),
            ))
        })?;
        let key = custody
            .find(reference, self.inner.policy.algorithm())
            .await
            .map_err(RotateError::Custody)?;
        let fingerprint = key.public.thumbprint();
        let trigger = Trigger::Import {
            kid: kid.unwrap_or_else(|| fingerprint.clone()),
            fingerprint,
            state,
        };
        self.attempt(Request::Plan(trigger), ctx, Some(Material::Remote(key)))
            .await
    }

    /// Re-seals every key whose material is sealed under another master key with the
    /// sealer's primary key. Audited.
    pub async fn rewrap(&self, ctx: RequestContext) -> Result<RotationReport, RotateError> {
        self.attempt(Request::Rewrap, ctx, None).await
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
        let expected_digest = expected_digest.map(str::to_owned);
        self.attempt(Request::Authenticate { expected_digest }, ctx, None).await
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
        self.attempt(Request::Repair { reason }, ctx, None).await
    }

    /// Retires the whole ring (tenant offboarding), audited with `reason` (required):
    /// every key not yet revoked is revoked and made Expired, so nothing signed with the
    /// ring verifies once the change has propagated and the JWKS publishes no key; every
    /// private key is destroyed (its sealed material dropped). The ring's authenticated
    /// manifest records that it is retired, so it never gets a key again: ticks find
    /// nothing due, and `init`, rotations and imports are refused with
    /// [`Refusal::RingRetired`](crate::Refusal::RingRetired). The report's `revocation`
    /// says when the last Active key is refused everywhere. A ring already retired answers
    /// `nothing_due`.
    pub async fn retire_ring(
        &self,
        ctx: RequestContext,
        reason: impl Into<String>,
    ) -> Result<RotationReport, RotateError> {
        let reason = reason.into();
        self.attempt(Request::Retire { reason }, ctx, None).await
    }

    /// Runs one attempt in its `keyrot.attempt` span and traces its answer.
    async fn attempt(
        &self,
        request: Request,
        ctx: RequestContext,
        material: Option<Material>,
    ) -> Result<RotationReport, RotateError> {
        use tracing::Instrument as _;
        let kind = request.kind();
        let span = tracing::info_span!(
            "keyrot.attempt",
            ring = %self.inner.ring,
            trigger = kind.as_str(),
            actor = %ctx.actor,
            outcome = tracing::field::Empty,
        );
        let result = async { attempt::Attempt::new(self, request, ctx)?.run(material).await }
            .instrument(span.clone())
            .await;
        attempt::trace_answer(&span, kind, &result);
        let outcome = result.as_ref().map_or("failed", |r| r.outcome.as_str());
        crate::metrics::rotation_attempt(&self.inner.ring, kind, outcome);
        result
    }
}
