//! Where wrapped master keys are kept: in the key store's own database, beside the rings, so
//! that a new instance needs only the custody URI and its credential.

use super::WrappedKey;
use crate::storage::StorageError;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::fmt;

/// A master key as stored: wrapped under a KEK of a custody backend. Nothing in it is secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMasterKey {
    /// The master key's id: what sealed keys, manifests and ledger records name.
    pub id: String,
    /// The custody backend that wrapped it (`pkcs11`, `vault-transit`, `aws-kms`).
    pub backend: String,
    /// The wrapped key and the KEK that wrapped it.
    pub wrapped: WrappedKey,
    /// When it was stored. The newest stored master key is the primary.
    pub created_at: DateTime<Utc>,
}

/// Storage of wrapped master keys. The sqlx stores and [`crate::MemoryStorage`] implement
/// it; the conformance kit (`master_key_storage_conformance_tests!`, feature `test-util`)
/// checks it.
///
/// A writer to this table without access to the KEK can delete rows (new seals then fail
/// closed, old ones stop opening: denial of service) but cannot substitute a blob: each
/// wrap is bound to its id and KEK, and a blob that does not unwrap under its row is refused
/// by name.
#[async_trait]
pub trait MasterKeyStorage: fmt::Debug + Send + Sync + 'static {
    /// Every stored master key, oldest first (by `created_at`, then id).
    async fn master_keys(&self) -> Result<Vec<StoredMasterKey>, StorageError>;

    /// Stores a new master key. `Ok(false)`, changing nothing, when its id is taken.
    async fn insert_master_key(&self, key: &StoredMasterKey) -> Result<bool, StorageError>;

    /// Replaces the wrapped form of `id` with `new` if it is still `expected` (a rewrap).
    /// `Ok(false)`, changing nothing, when the row is gone or holds something else.
    async fn replace_wrapped_master_key(
        &self,
        id: &str,
        expected: &WrappedKey,
        new: &WrappedKey,
    ) -> Result<bool, StorageError>;
}
