//! The master keys under custody: unwrapped into a sealer at start, created, imported and
//! rewrapped by operators.

use super::store::{MasterKeyStorage, StoredMasterKey};
use super::{CustodyError, KeyCustody, WrappedKey};
use crate::seal::{MasterKey, MasterKeySealer, SealError};
use crate::storage::StorageError;
use std::sync::Arc;

/// The id of the master key the first instance creates when none is stored. Fixed, so that
/// instances starting together agree: one inserts it, the others find it taken and unwrap it.
pub const FIRST_MASTER_KEY_ID: &str = "kms-0";

/// Why the master keys under custody could not be used or changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CustodyKeysError {
    /// The custody backend failed or refused.
    #[error(transparent)]
    Custody(#[from] CustodyError),
    /// The stored master keys could not be read or written.
    #[error("the stored master keys: {0}")]
    Storage(#[from] StorageError),
    /// No master key is stored yet.
    #[error(
        "no master key is stored under custody: create one with `keyrotctl master-key create`, or move the current one there with `keyrotctl master-key import`"
    )]
    NoMasterKey,
    /// A master key with that id is stored already.
    #[error("a master key with id {0:?} is stored already")]
    Exists(String),
    /// A stored master key was wrapped by another backend than the configured one.
    #[error("the stored master key {id:?} is held by {stored}, but this instance is configured for {configured}")]
    OtherBackend {
        /// The master key's id.
        id: String,
        /// The backend its row names.
        stored: String,
        /// The configured backend.
        configured: &'static str,
    },
    /// An unwrapped key is not a usable master key (a wrong length: the backend returned
    /// something keyrot did not store).
    #[error("the master key {id:?} unwrapped to an unusable key: {source}")]
    Unusable {
        /// The master key's id.
        id: String,
        /// Why.
        source: SealError,
    },
    /// A rewrap found the row changed by someone else meanwhile.
    #[error("the stored master key {0:?} changed while it was rewrapped: run the rewrap again")]
    Changed(String),
}

/// One master key after a rewrap: its id and the KEK before and after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewrapped {
    /// The master key's id.
    pub id: String,
    /// The KEK that wrapped it before.
    pub from: String,
    /// The KEK that wraps it now.
    pub to: String,
}

/// keyrot's master keys held by a custody backend and stored wrapped in `store`.
#[derive(Debug, Clone)]
pub struct CustodyKeys {
    custody: Arc<dyn KeyCustody>,
    store: Arc<dyn MasterKeyStorage>,
}

impl CustodyKeys {
    /// The master keys `custody` holds, stored in `store`.
    pub fn new(custody: Arc<dyn KeyCustody>, store: Arc<dyn MasterKeyStorage>) -> Self {
        Self { custody, store }
    }

    /// The custody backend.
    pub fn custody(&self) -> &Arc<dyn KeyCustody> {
        &self.custody
    }

    /// Every stored master key, oldest first.
    pub async fn list(&self) -> Result<Vec<StoredMasterKey>, CustodyKeysError> {
        Ok(self.store.master_keys().await?)
    }

    /// A sealer holding every stored master key, unwrapped; the newest is the primary.
    /// Every row must unwrap: a blob that does not is refused by name, never skipped.
    pub async fn sealer(&self) -> Result<MasterKeySealer, CustodyKeysError> {
        let stored = self.store.master_keys().await?;
        self.unwrap_all(&stored).await
    }

    /// [`CustodyKeys::sealer`], creating the first master key ([`FIRST_MASTER_KEY_ID`])
    /// when none is stored. `true` when this call created it.
    pub async fn sealer_or_create(&self) -> Result<(MasterKeySealer, bool), CustodyKeysError> {
        let stored = self.store.master_keys().await?;
        if !stored.is_empty() {
            return Ok((self.unwrap_all(&stored).await?, false));
        }
        let created = match self.store_new(FIRST_MASTER_KEY_ID).await {
            Ok(_) => true,
            // Another instance stored it first: use theirs.
            Err(CustodyKeysError::Exists(_)) => false,
            Err(e) => return Err(e),
        };
        Ok((self.sealer().await?, created))
    }

    /// A new master key generated under the KEK and stored wrapped; it becomes the primary
    /// of every sealer built from now on. Its id is `kms-`, the UTC time to the
    /// millisecond and four random hex digits (`kms-20261207T021500123-9f3a`).
    pub async fn create(&self) -> Result<StoredMasterKey, CustodyKeysError> {
        let mut salt = [0u8; 2];
        getrandom::fill(&mut salt)
            .map_err(|_| CustodyError::Config("the system random number generator failed".into()))?;
        let id = format!(
            "kms-{}-{:02x}{:02x}",
            chrono::Utc::now().format("%Y%m%dT%H%M%S%3f"),
            salt[0],
            salt[1]
        );
        self.store_new(&id).await
    }

    /// Wraps a master key that already exists (from `KEYROT_MASTER_KEY`) under the KEK and
    /// stores it with its own id, so that everything it sealed keeps opening with no
    /// re-seal. It becomes the primary.
    pub async fn import(&self, key: &MasterKey) -> Result<StoredMasterKey, CustodyKeysError> {
        if self.store.master_keys().await?.iter().any(|k| k.id == key.id()) {
            return Err(CustodyKeysError::Exists(key.id().to_owned()));
        }
        let wrapped = self.custody.wrap(key.id(), key.secret()).await?;
        // The wrap must open before it is stored: a KEK that wraps but cannot unwrap
        // (a missing permission) would otherwise lose the key.
        self.check_opens(key.id(), &wrapped).await?;
        self.insert(key.id(), wrapped).await
    }

    /// Wraps every stored master key again under the configured KEK (its newest version),
    /// after the HSM or KMS rotated it. Each row is replaced only if nobody changed it
    /// meanwhile.
    pub async fn rewrap(&self) -> Result<Vec<Rewrapped>, CustodyKeysError> {
        let mut done = Vec::new();
        for key in self.store.master_keys().await? {
            self.same_backend(&key)?;
            let new = self.custody.rewrap(&key.id, &key.wrapped).await?;
            self.check_opens(&key.id, &new).await?;
            if !self
                .store
                .replace_wrapped_master_key(&key.id, &key.wrapped, &new)
                .await?
            {
                return Err(CustodyKeysError::Changed(key.id));
            }
            done.push(Rewrapped {
                id: key.id,
                from: key.wrapped.kek,
                to: new.kek,
            });
        }
        Ok(done)
    }

    async fn store_new(&self, id: &str) -> Result<StoredMasterKey, CustodyKeysError> {
        let (secret, wrapped) = self.custody.generate(id).await?;
        // Proves the id and the key make a master key before anything is stored.
        MasterKey::new(id, secret).map_err(|source| CustodyKeysError::Unusable {
            id: id.to_owned(),
            source,
        })?;
        self.check_opens(id, &wrapped).await?;
        self.insert(id, wrapped).await
    }

    async fn insert(&self, id: &str, wrapped: WrappedKey) -> Result<StoredMasterKey, CustodyKeysError> {
        let row = StoredMasterKey {
            id: id.to_owned(),
            backend: self.custody.backend().to_owned(),
            wrapped,
            created_at: chrono::Utc::now(),
        };
        if !self.store.insert_master_key(&row).await? {
            return Err(CustodyKeysError::Exists(id.to_owned()));
        }
        tracing::info!(
            master_key_id = %row.id,
            backend = row.backend,
            kek = %row.wrapped.kek,
            "master key stored wrapped under custody"
        );
        Ok(row)
    }

    async fn check_opens(&self, id: &str, wrapped: &WrappedKey) -> Result<(), CustodyKeysError> {
        let secret = self.custody.unwrap(id, wrapped).await?;
        MasterKey::new(id, secret)
            .map(drop)
            .map_err(|source| CustodyKeysError::Unusable {
                id: id.to_owned(),
                source,
            })
    }

    fn same_backend(&self, key: &StoredMasterKey) -> Result<(), CustodyKeysError> {
        if key.backend == self.custody.backend() {
            return Ok(());
        }
        Err(CustodyKeysError::OtherBackend {
            id: key.id.clone(),
            stored: key.backend.clone(),
            configured: self.custody.backend(),
        })
    }

    async fn unwrap_all(&self, stored: &[StoredMasterKey]) -> Result<MasterKeySealer, CustodyKeysError> {
        let mut keys = Vec::with_capacity(stored.len());
        for row in stored {
            self.same_backend(row)?;
            let secret = self.custody.unwrap(&row.id, &row.wrapped).await?;
            let key = MasterKey::new(row.id.clone(), secret).map_err(|source| CustodyKeysError::Unusable {
                id: row.id.clone(),
                source,
            })?;
            keys.push(key);
        }
        // Oldest first: the last is the primary.
        let primary = keys.pop().ok_or(CustodyKeysError::NoMasterKey)?;
        MasterKeySealer::new(primary, keys).map_err(|source| CustodyKeysError::Unusable {
            id: "(the set)".into(),
            source,
        })
    }
}
