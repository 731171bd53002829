//! The storage, lock and change-feed traits every backend implements, and the records
//! they keep (audit ledger, idempotency).
//!
//! # Implementing your own store
//!
//! A store keeps rings (name, generation, manifest), key records, an append-only audit
//! ledger and idempotency records, and follows the rules listed on [`Storage`]. Run the
//! conformance kit (feature `test-util`) to prove it: one `#[tokio::test]` per rule. A
//! store that holds many rings for a [`RingManager`](crate::RingManager) also implements
//! [`RingStorage`] (the next-due index, the listing of rings, what changed since a
//! cursor) and runs `ring_storage_conformance_tests!` too; the compiler refuses a
//! `RingManager` over a store without it.
//!
//! Here a store that counts commits and keeps everything in a [`MemoryStorage`](crate::MemoryStorage)
//! (a real store would write to its database instead, in one transaction per call):
//!
//! ```
//! use keyrot_core::{
//!     AuditLinker, AuditQuery, AuditRecord, Commit, CommitOutcome, IdempotencyRecord, Storage, StorageError,
//! };
//! use keyrot_core::{MemoryStorage, Ring, RingName, async_trait};
//! use std::sync::atomic::{AtomicU64, Ordering};
//!
//! #[derive(Debug, Default)]
//! pub struct CountingStore {
//!     inner: MemoryStorage,
//!     commits: AtomicU64,
//! }
//!
//! #[async_trait]
//! impl Storage for CountingStore {
//!     async fn load(&self, ring: &RingName) -> Result<Ring, StorageError> {
//!         self.inner.load(ring).await
//!     }
//!
//!     async fn generation(&self, ring: &RingName) -> Result<u64, StorageError> {
//!         self.inner.generation(ring).await
//!     }
//!
//!     async fn commit(&self, commit: &Commit, linker: &dyn AuditLinker) -> Result<CommitOutcome, StorageError> {
//!         let outcome = self.inner.commit(commit, linker).await?;
//!         if outcome == CommitOutcome::Committed {
//!             self.commits.fetch_add(1, Ordering::Relaxed);
//!         }
//!         Ok(outcome)
//!     }
//!
//!     async fn record_attempt(
//!         &self,
//!         audit: &AuditRecord,
//!         idempotency: Option<&IdempotencyRecord>,
//!         linker: &dyn AuditLinker,
//!     ) -> Result<(), StorageError> {
//!         self.inner.record_attempt(audit, idempotency, linker).await
//!     }
//!
//!     async fn audit_log(&self, ring: &RingName, query: AuditQuery) -> Result<Vec<AuditRecord>, StorageError> {
//!         self.inner.audit_log(ring, query).await
//!     }
//!
//!     async fn idempotency(&self, ring: &RingName, key: &str) -> Result<Option<IdempotencyRecord>, StorageError> {
//!         self.inner.idempotency(ring, key).await
//!     }
//! }
//!
//! // In your crate's tests (with keyrot-core's `test-util` feature and tokio as
//! // dev-dependencies): every case of the kit, each on a fresh store.
//! #[cfg(feature = "test-util")]
//! mod conformance {
//!     use super::CountingStore;
//!     use keyrot_core::MemoryLock;
//!     use keyrot_core::conformance::Backend;
//!     use std::sync::Arc;

//!
//!     pub async fn setup() -> Option<Backend> {
//!         // `None` skips every case (e.g. when no test database is configured).
//!         Some(Backend::new(Arc::new(CountingStore::default()), Arc::new(MemoryLock::default())))
//!     }
//!
//!     keyrot_core::storage_conformance_tests!(setup);
//! }
//! # fn main() {
//! #     // The cases are plain async functions too: run two of them here.
//! #     #[cfg(feature = "test-util")]
//! #     tokio::runtime::Builder::new_multi_thread()
//! #         .enable_all()
//! #         .build()
//! #         .expect("runtime")
//! #         .block_on(async {
//! #             for case in 0..2 {
//! #                 let backend = conformance::setup().await.expect("backend");
//! #                 match case {
//! #                     0 => keyrot_core::conformance::stale_generation_conflicts_and_writes_nothing(&backend).await,
//! #                     _ => keyrot_core::conformance::idempotency_first_answer_wins(&backend).await,
//! #                 }
//! #                 backend.finish().await;
//! #             }
//! #         });
//! # }
//! ```

use crate::planner::TriggerKind;
use crate::ring::{KeyRecord, Ring, RingName};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::error::Error as StdError;
use std::fmt::Debug;
use std::sync::Arc;

mod polling;
mod rings;

pub use polling::PollingFeed;
pub use rings::{
    ChangeCursor, PollingRingsFeed, RingChanges, RingEntry, RingEvent, RingStorage, RingsFeed, RingsStream,
};

/// A storage backend failed. The source error is kept.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The backend could not be reached or the operation failed; retrying may help.
    #[error("storage unavailable: {message}")]
    Unavailable {
        /// What was being done.
        message: String,
        /// The backend's error.
        #[source]
        source: Option<Arc<dyn StdError + Send + Sync>>,
    },
    /// Stored data could not be decoded (a corrupt row, or a newer schema).
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
}

impl StorageError {
    /// Wraps a backend error.
    pub fn unavailable(message: impl Into<String>, source: impl StdError + Send + Sync + 'static) -> Self {
        Self::Unavailable {
            message: message.into(),
            source: Some(Arc::new(source)),
        }
    }
}

/// The outcome of one attempt, as audited and reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Outcome {
    /// The first key of the ring was created.
    Bootstrapped,
    /// A new key became Active.
    Rotated,
    /// A Pending key was published; it activates later.
    Scheduled,
    /// A rotation was already scheduled; nothing changed.
    AlreadyScheduled,
    /// A key was revoked.
    Revoked,
    /// A key was imported.
    Imported,
    /// Expiries or purges were performed.
    Maintained,
    /// Every key was re-sealed under the primary master key.
    Rewrapped,
    /// A ring written before keyrot authenticated rings got its first manifest (the
    /// explicit integrity migration).
    Authenticated,
    /// Rows that failed the integrity check were quarantined (made Expired and revoked)
    /// and the manifest re-issued over the rest.
    Quarantined,
    /// The whole ring was retired (tenant offboarding): every key revoked, its private
    /// material destroyed; the ring takes no new key.
    Retired,
    /// Nothing was due.
    NothingDue,
    /// Too soon: rate limited.
    RateLimited,
    /// Refused (missing reason, unknown kid, …).
    Refused,
    /// Another instance holds the rotation lock right now.
    LockBusy,
    /// Another instance committed first; its change stands.
    LostRace,
    /// An error (storage, sealing, key generation).
    Failed,
    /// A retry answered from the idempotency record; nothing changed.
    Replayed,
    /// A master-key custody operation was carried out (its detail says which); the ring's
    /// rows did not change.
    Custody,
    /// A symmetric ring's secrets were exported (its detail says which kids, in which
    /// form); the ring's rows did not change.
    Exported,
}

impl Outcome {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Bootstrapped => "bootstrapped",
            Outcome::Rotated => "rotated",
            Outcome::Scheduled => "scheduled",
            Outcome::AlreadyScheduled => "already_scheduled",
            Outcome::Revoked => "revoked",
            Outcome::Imported => "imported",
            Outcome::Maintained => "maintained",
            Outcome::Rewrapped => "rewrapped",
            Outcome::Authenticated => "authenticated",
            Outcome::Quarantined => "quarantined",
            Outcome::Retired => "retired",
            Outcome::NothingDue => "nothing_due",
            Outcome::RateLimited => "rate_limited",
            Outcome::Refused => "refused",
            Outcome::LockBusy => "lock_busy",
            Outcome::LostRace => "lost_race",
            Outcome::Failed => "failed",
            Outcome::Replayed => "replayed",
            Outcome::Custody => "custody",
            Outcome::Exported => "exported",
        }
    }

    /// Parses [`Outcome::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        [
            Outcome::Bootstrapped,
            Outcome::Rotated,
            Outcome::Scheduled,
            Outcome::AlreadyScheduled,
            Outcome::Revoked,
            Outcome::Imported,
            Outcome::Maintained,
            Outcome::Rewrapped,
            Outcome::Authenticated,
            Outcome::Quarantined,
            Outcome::Retired,
            Outcome::NothingDue,
            Outcome::RateLimited,
            Outcome::Refused,
            Outcome::LockBusy,
            Outcome::LostRace,
            Outcome::Failed,
            Outcome::Replayed,
            Outcome::Custody,
            Outcome::Exported,
        ]
        .into_iter()
        .find(|o| o.as_str() == s)
    }

    /// Whether the ring changed.
    pub fn changed_ring(self) -> bool {
        matches!(
            self,
            Outcome::Bootstrapped
                | Outcome::Rotated
                | Outcome::Scheduled
                | Outcome::Revoked
                | Outcome::Imported
                | Outcome::Maintained
                | Outcome::Rewrapped
                | Outcome::Authenticated
                | Outcome::Quarantined
                | Outcome::Retired
        )
    }
}

/// One entry of the append-only audit ledger. Never contains key material.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Unique id of the record.
    pub id: String,
    /// When the attempt was handled: the rotator's clock, truncated to whole milliseconds
    /// (the precision every store keeps); the same as [`RotationReport::at`](crate::RotationReport::at).
    pub at: DateTime<Utc>,
    /// The name of the ring the attempt was on (a store refuses a commit whose audit
    /// record names another ring).
    pub ring: String,
    /// Who (OAuth client id, `scheduler:<instance>`, `cli:<user>`).
    pub actor: String,
    /// What was attempted.
    pub trigger: TriggerKind,
    /// What came of it.
    pub outcome: Outcome,
    /// Whether the forced path was used.
    pub forced: bool,
    /// The reason the caller gave, for forced rotations and revocations; `None` for every
    /// other trigger.
    pub reason: Option<String>,
    /// The kid of the ring's Active key when the attempt was planned; `None` when the
    /// ring had none (bootstrap) or could not be read.
    pub old_kid: Option<String>,
    /// The RFC 7638 thumbprint of the `old_kid` key; `None` exactly when `old_kid` is (or
    /// when a quarantine could not vouch for it).
    pub old_fingerprint: Option<String>,
    /// The kid of the key the attempt added or activated (Active, or Pending when
    /// scheduled), or of the Pending key already scheduled for an `already_scheduled`
    /// answer; `None` when no key was added or activated.
    pub new_kid: Option<String>,
    /// The RFC 7638 thumbprint of the `new_kid` key; `None` when `new_kid` is.
    pub new_fingerprint: Option<String>,
    /// The ring generation after the attempt (unchanged if nothing was committed).
    pub generation: u64,
    /// The `Idempotency-Key` of the request.
    pub idempotency_key: Option<String>,
    /// The request id.
    pub request_id: Option<String>,
    /// Human-readable detail (refusal or error text; never secrets).
    pub detail: Option<String>,
    /// The instance that handled the attempt.
    pub instance: String,
    /// Position in the ring's audit chain (1, 2, …), assigned by the storage when the
    /// record is appended; 0 for a record not yet appended or written before the ledger
    /// was chained.
    #[serde(default)]
    pub seq: u64,
    /// The chain MAC over this record's content, `seq` and its predecessor's MAC
    /// ([`AuditLinker`]); `None` before the record is appended, or for records written
    /// before the ledger was chained.
    #[serde(default)]
    pub mac: Option<String>,
}

impl AuditRecord {
    /// The changes a ledger (newest first, as [`Storage::audit_log`] reads it) records as
    /// committed, oldest first: each one's generation and outcome. Exactly-once shows as
    /// generations 1, 2, … each once.
    pub fn committed_changes(ledger: &[AuditRecord]) -> Vec<(u64, Outcome)> {
        let committed = ledger.iter().rev().filter(|a| a.outcome.changed_ring());
        committed.map(|a| (a.generation, a.outcome)).collect()
    }
}

/// Links each appended audit record into the ring's tamper-evident chain.
///
/// A storage calls it inside the transaction that appends the record, *after* it has
/// serialised appends to the ring's ledger (a row lock on the ring, an exclusive
/// transaction), with the sequence number the record gets (the highest chain position in
/// the ring's ledger + 1, or 1) and the `mac` of the record at that highest position; it stores the returned MAC in
/// [`AuditRecord::mac`] and the sequence number in [`AuditRecord::seq`]. keyrot's linker
/// is [`crate::integrity::SealerLinker`] (HMAC under the master key).
pub trait AuditLinker: Debug + Send + Sync {
    /// The MAC of `record` at position `seq` after a record whose MAC is `prev_mac`.
    fn link(&self, record: &AuditRecord, seq: u64, prev_mac: Option<&str>) -> Result<String, StorageError>;
}

/// The stored answer to a request with an `Idempotency-Key`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    /// The name of the ring the request was on (a store refuses a commit whose
    /// idempotency record names another ring).
    pub ring: String,
    /// The request's `Idempotency-Key` header value, unique per ring: the first answer
    /// stored under it is kept.
    pub key: String,
    /// Hash of what was asked (trigger, reason, actor): a key reused for a different
    /// request is refused.
    pub request_hash: String,
    /// The answer (a serialized report).
    pub response: String,
    /// When it was stored.
    pub created_at: DateTime<Utc>,
}

/// A change to commit atomically with compare-and-swap on the ring's generation.
#[derive(Debug, Clone)]
pub struct Commit {
    /// The ring.
    pub ring: RingName,
    /// The generation the change was planned on; the commit fails if the ring moved.
    pub expected_generation: u64,
    /// Key records to insert or replace (by kid). Records are never deleted.
    pub keys: Vec<KeyRecord>,
    /// The audit record. Its `generation` is the one the commit moves the ring to:
    /// `expected_generation + 1`, except for a repair of a generation column that was
    /// altered, which moves the ring to its authenticated generation + 1.
    pub audit: AuditRecord,
    /// The idempotency record, if the request had a key.
    pub idempotency: Option<IdempotencyRecord>,
    /// The authenticated manifest of the whole ring at the new generation
    /// ([`crate::integrity::seal_manifest`]), stored with the ring and returned as
    /// [`Ring::manifest`] by `load`. Opaque to the storage.
    pub manifest: String,
    /// When the ring's next planned transition is due after this commit (the planner's
    /// [`next_transition`](crate::next_transition)), or `None` if nothing is planned. The
    /// store keeps it with the ring, indexed, for [`RingStorage::due_rings`].
    pub next_due: Option<DateTime<Utc>>,
}

/// Result of a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    /// Written; the ring is now at the generation of the commit's audit record.
    Committed,
    /// The ring was at another generation; nothing was written.
    Conflict {
        /// The generation found.
        current: u64,
    },
}

/// Which audit records to read.
#[derive(Debug, Clone, Copy)]
pub struct AuditQuery {
    /// At most this many, newest first.
    pub limit: usize,
}

impl Default for AuditQuery {
    fn default() -> Self {
        Self { limit: 100 }
    }
}

/// Where rings live.
///
/// # The rules every store follows
///
/// The conformance kit ([`storage_conformance_tests!`](crate::storage_conformance_tests),
/// feature `test-util`) checks each of them; keyrot's correctness across instances rests
/// on them.
///
/// - **Compare-and-swap on the generation.** [`commit`](Storage::commit) writes if and
///   only if the ring is still at [`Commit::expected_generation`], and then moves it to
///   exactly the generation of [`Commit::audit`] (`expected_generation + 1` for every
///   commit but a repair of an altered generation). Otherwise it answers
///   [`CommitOutcome::Conflict`] with the generation found and writes nothing. Of
///   concurrent commits on one generation exactly one wins. An unknown ring is at
///   generation 0 and loads empty.
/// - **All or nothing.** Key records, the manifest, the audit record and the idempotency
///   record of a commit are written in one transaction: after a failure or a conflict,
///   none of them is.
/// - **The first answer wins.** A commit whose idempotency key already exists for the
///   ring is a `Conflict` and writes nothing (another request with the key committed
///   first). An idempotency record, once stored (by `commit` or
///   [`record_attempt`](Storage::record_attempt)), is never replaced:
///   [`idempotency`](Storage::idempotency) keeps returning the first one.
/// - **The manifest is stored with the ring.** [`Commit::manifest`] is kept with the
///   generation it was committed at and returned as [`Ring::manifest`] by
///   [`load`](Storage::load), unchanged (it is opaque to the store).
/// - **Keys are replaced by kid, never deleted.** A commit's key records insert or
///   replace the ring's record with the same kid; every other record stays. Timestamps
///   keep at least millisecond precision.
/// - **One chain per ring.** Audit appends (by `commit` and `record_attempt`) are
///   serialised per ring (a row lock on the ring, an exclusive transaction) and linked
///   with the [`AuditLinker`] inside the same transaction: the new record gets position
///   head + 1 (1 for the first), where the head is the record with the highest chain
///   position in the ring's ledger, and the linker's MAC over it and the head's MAC. The
///   store keeps both in [`AuditRecord::seq`] and [`AuditRecord::mac`].
/// - **Rings are isolated.** A commit carrying an audit or idempotency record that names
///   another ring is refused ([`StorageError`]) and writes nothing; records of one ring
///   never show in another's reads.
/// - **Nothing is deleted.** Audit records, key records and idempotency records are
///   never removed or rewritten by the store (purging a key's material is a commit that
///   replaces its record with `sealed: None`, not a deletion).
/// - **The next-due time is kept with the ring** by a store that manages many rings: a
///   commit stores [`Commit::next_due`], for [`RingStorage`] (the capability a
///   [`RingManager`](crate::RingManager) requires, with its own rules) to read back. A
///   store without that capability may ignore the field.
#[async_trait]
pub trait Storage: Debug + Send + Sync + 'static {
    /// Loads a ring (its keys and its manifest); an unknown ring is empty at generation 0.
    async fn load(&self, ring: &RingName) -> Result<Ring, StorageError>;

    /// Loads a ring as [`Storage::load`] does, without any sealed private material: every
    /// row equals `load`'s but has `sealed: None`. A public-only verifier
    /// ([`crate::PublicKeyRing`]) reads through it. A store should override it with a
    /// query that never reads the sealed columns; this default reads them (through
    /// `load`) and drops them at once.
    async fn load_public(&self, ring: &RingName) -> Result<Ring, StorageError> {
        let mut ring = self.load(ring).await?;
        for k in &mut ring.keys {
            k.sealed = None;
        }
        Ok(ring)
    }

    /// The ring's current generation (0 if unknown), cheaply.
    async fn generation(&self, ring: &RingName) -> Result<u64, StorageError>;

    /// Commits key changes, the manifest, the audit record (linked into the chain with
    /// `linker`) and the idempotency record in one transaction, if and only if the ring is
    /// still at `expected_generation`.
    async fn commit(&self, commit: &Commit, linker: &dyn AuditLinker) -> Result<CommitOutcome, StorageError>;

    /// Records an attempt that changed nothing (refusal, rate limit, lock busy, lost
    /// race, failure), linked into the chain with `linker`, with its idempotency record
    /// if it has one. A key already stored keeps its first answer, and that is not an
    /// error: the attempt is still recorded.
    async fn record_attempt(
        &self,
        audit: &AuditRecord,
        idempotency: Option<&IdempotencyRecord>,
        linker: &dyn AuditLinker,
    ) -> Result<(), StorageError>;

    /// Reads the audit ledger, newest first (by chain position; records written before
    /// the ledger was chained come last, in the order they were written). A limit of
    /// `usize::MAX` reads the whole ledger.
    async fn audit_log(&self, ring: &RingName, query: AuditQuery) -> Result<Vec<AuditRecord>, StorageError>;

    /// Reads the stored answer for an idempotency key.
    async fn idempotency(&self, ring: &RingName, key: &str) -> Result<Option<IdempotencyRecord>, StorageError>;
}

/// A held rotation lock. Release it explicitly; a guard dropped without release (or a
/// crashed holder) must not keep the lock longer than the bound the lock promises.
#[async_trait]
pub trait LockGuard: Send + Debug {
    /// Releases the lock.
    async fn release(self: Box<Self>) -> Result<(), StorageError>;
}

/// The per-ring rotation lock.
#[async_trait]
pub trait Lock: Debug + Send + Sync + 'static {
    /// Tries to take the lock without waiting; `None` if another holder has it. `ttl`
    /// bounds how long a crashed holder keeps it where the backend has no session to
    /// tie it to.
    async fn try_acquire(
        &self,
        ring: &RingName,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<Option<Box<dyn LockGuard>>, StorageError>;
}

/// What a change feed reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedEvent {
    /// The ring reached this generation.
    Changed(u64),
    /// Events may have been lost (a reconnect): reload fully.
    Resync,
}

/// A subscription to a ring's changes.
#[async_trait]
pub trait ChangeStream: Send + Debug {
    /// Waits for the next event.
    async fn next(&mut self) -> Result<FeedEvent, StorageError>;
}

/// How an instance learns that a ring changed.
#[async_trait]
pub trait ChangeFeed: Debug + Send + Sync + 'static {
    /// Subscribes to a ring.
    async fn subscribe(&self, ring: &RingName) -> Result<Box<dyn ChangeStream>, StorageError>;
}
