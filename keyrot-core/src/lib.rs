//! # keyrot-core
//!
//! Exactly-once rotation of token-signing keys for services on one instance or a
//! hundred. A ring of keys moves each key through Pending → Active → Retiring → Expired;
//! a pure planner decides, a rotator applies the plan under a lock with
//! compare-and-swap on the ring's generation, and a [`KeyRing`] handle signs, verifies
//! and serves the JWKS from an atomically swapped in-memory snapshot.
//!
//! ```
//! use keyrot_core::{KeyRing, MasterKey, MasterKeySealer, MemoryLock, MemoryStorage, RequestContext, RingName, Rotator};
//! use std::sync::Arc;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let storage = Arc::new(MemoryStorage::new());
//! let sealer = Arc::new(MasterKeySealer::new(MasterKey::generate("mk1")?, [])?);
//! let ring = RingName::new("default")?;
//! let keyring = KeyRing::builder(ring.clone(), storage.clone(), sealer.clone()).build().await?;
//! let rotator = Rotator::builder(ring, storage, Arc::new(MemoryLock::default()), sealer)
//!     .with_keyring(keyring.clone())
//!     .build();
//! rotator.init(RequestContext::actor("docs")).await?;
//!
//! let exp = chrono::Utc::now().timestamp() + 600;
//! let token = keyring.sign(&serde_json::json!({ "sub": "alice", "exp": exp }))?;
//! let verified = keyring.verify(&token)?;
//! assert_eq!(verified.claims["sub"], "alice");
//! # Ok(()) }
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
//! ```
//!
//! The [`manual`] is the long form: getting started, the lifecycle and every setting, services
//! that only verify, several instances, many rings, algorithms, the security model,
//! operations, incident runbooks and benchmarks.

// Every module is private: the crate root below is the one path to each public item.
// `adapter` is what the transport layers (keyrot-http, the web adapters) build on;
// `conformance` and `testing` (feature `test-util`) are for store implementors' and
// keyrot's own tests; `manual` holds documentation only; `custody` is what HSM and KMS
// backends (keyrot-kms) implement.
mod access_token;
pub mod adapter;
mod alg;
mod b64;
mod clock;
pub mod custody;
mod ids;
mod integrity;
mod json;
mod jwks;
mod key;
mod keyring;
mod keyset;
mod manager;
pub mod manual;
mod memory;
mod metrics;
mod planner;
mod policy;
mod public_ring;
mod report;
mod ring;
mod rotator;
mod scheduler;
mod seal;
mod secret;
mod storage;
mod symmetric;
mod token;
mod verifier;

#[cfg(feature = "test-util")]
pub mod conformance;
#[cfg(feature = "test-util")]
pub mod testing;

pub use access_token::{ACCESS_TOKEN_CLAIMS, ACCESS_TOKEN_TYPE, AccessToken, IssuedAccessToken};
pub use alg::{Algorithm, EdDsaName, KeyKind, RsaBits, UnknownKeyKind, UnsupportedAlgorithm};
pub use clock::{Clock, ManualClock, SystemClock, to_millis};
pub use integrity::{
    ChainBreak, ChainReport, IntegrityReport, RingIntegrity, SealerLinker, TamperedKey, check_ring, rows_digest,
    verify_chain,
};
pub use json::JsonError;
pub use jwks::{JWKS_CONTENT_TYPE, Jwks};
pub use key::{
    ImportedKey, InvalidKey, KeyError, PrivateKey, PublicKey, RSA_MAX_BITS, RSA_MIN_BITS, SigningKey, VerifyingKey,
};
pub use keyring::{
    DEFAULT_TOKEN_CACHE_BYTES, DEFAULT_TOKEN_CACHE_ENTRIES, KeyRing, KeyRingBuilder, KeyStatus, RefreshError,
    RefresherHandle, Snapshot, TokenCache, TokenCacheConfig, TokenCacheStats,
};
pub use keyset::{KeySet, KeySetError, MAX_JWKS_KEYS};
pub use manager::{
    DuePass, IssuerOf, ManagerConfig, ManagerError, ManagerHandle, PolicySource, PublicView, Published, RingManager,
    RingManagerBuilder,
};
#[cfg(feature = "test-util")]
pub use memory::RawRing;
pub use memory::{MemoryLock, MemoryStorage};
pub use metrics::{METRICS, MetricKind, describe_metrics, names as metric_names};
pub use planner::{
    Action, ImportState, MAX_REASON_LEN, NextTransition, Plan, Refusal, Target, TransitionAction, Trigger, TriggerKind,
    next_transition, plan,
};
pub use policy::{Policy, PolicyBuilder, PolicyError};
pub use public_ring::{PublicKeyRing, PublicKeyRingBuilder};
pub use report::ErrorChain;
pub use ring::{InvalidRingName, KeyOrigin, KeyRecord, KeyState, Ring, RingName};
pub use rotator::{
    BlastRadius, DEFAULT_PROPAGATION, MAX_IDEMPOTENCY_KEY_LEN, RefusedRequest, RequestContext, RotateError,
    RotationReport, Rotator, RotatorBuilder, checked_idempotency_key,
};
pub use scheduler::{SchedulerConfig, SchedulerHandle, spawn as spawn_scheduler};
pub use seal::{Mac, MasterKey, MasterKeySealer, SealContext, SealError, SealedKey, Sealer};
pub use secret::SecretBytes;
pub use storage::{
    AuditLinker, AuditQuery, AuditRecord, ChangeCursor, ChangeFeed, ChangeStream, Commit, CommitOutcome, FeedEvent,
    IdempotencyRecord, Lock, LockGuard, Outcome, PollingFeed, PollingRingsFeed, RingChanges, RingEntry, RingEvent,
    RingStorage, RingsFeed, RingsStream, Storage, StorageError,
};
pub use symmetric::{
    AEAD_FORMAT_V1, AEAD_OVERHEAD, AeadRing, DEFAULT_WEBHOOK_TOLERANCE, ExportedSecret, MacRing, MacTag, Purpose,
    Reencrypted, SecretFormat, SymmetricError, UnknownSecretFormat, WebhookError, WebhookHeaders, Webhooks,
    standard_webhooks_secret,
};
pub use token::{
    ClaimsError, DEFAULT_MAX_TOKEN_BYTES, DEFAULT_TOKEN_TYPE, FORBIDDEN_HEADER_MEMBERS, MAX_LEEWAY, SignError,
    StandardClaims, TokenError, Unverified, Validation, Verified, check_header_type, decode_header, verify_with_key,
    verify_with_lookup,
};

pub use verifier::{TokenVerifier, Verifier};

#[doc(hidden)]
pub use async_trait::async_trait;
