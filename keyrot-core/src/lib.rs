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

pub mod alg;
pub mod b64;
pub mod clock;
pub mod http;
pub mod integrity;
pub mod json;
pub mod jwks;
pub mod key;
pub mod keyring;
pub mod memory;
pub mod planner;
pub mod policy;
pub mod ring;
pub mod rotator;
pub mod scheduler;
pub mod seal;
pub mod secret;
pub mod storage;
pub mod token;

#[cfg(feature = "test-util")]
pub mod conformance;

pub use alg::{Algorithm, RsaBits};
pub use clock::{Clock, ManualClock, SystemClock};
pub use integrity::{ChainBreak, ChainReport, IntegrityReport, RingIntegrity, TamperedKey};
pub use jwks::{JWKS_CONTENT_TYPE, Jwks};
pub use key::{ImportedKey, KeyError, PrivateKey, PublicKey};
pub use keyring::{KeyRing, KeyStatus, RefreshError, Snapshot};
pub use memory::{MemoryLock, MemoryStorage};
pub use planner::{ImportState, Refusal, Trigger, TriggerKind};
pub use policy::{Policy, PolicyError};
pub use ring::{KeyOrigin, KeyRecord, KeyState, Ring, RingName};
pub use rotator::{RequestContext, RotateError, RotationReport, Rotator};
pub use scheduler::{SchedulerConfig, SchedulerHandle};
pub use seal::{Mac, MasterKey, MasterKeySealer, SealError, SealedKey, Sealer};
pub use secret::SecretBytes;
pub use storage::{
    AuditLinker, AuditQuery, AuditRecord, ChangeFeed, ChangeStream, Commit, CommitOutcome, FeedEvent,
    IdempotencyRecord, Lock, LockGuard, Outcome, PollingFeed, Storage, StorageError,
};
pub use token::{SignError, StandardClaims, TokenError, Validation, Verified};

#[doc(hidden)]
pub use async_trait::async_trait;
