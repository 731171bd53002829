//! Custody of the master keys: an HSM or a KMS holds a key-encryption key (KEK) that never
//! leaves it, and keyrot's master keys are stored only wrapped under it.
//!
//! A [`KeyCustody`] backend wraps and unwraps 256-bit master keys. Every wrap is bound to the
//! master key's id and to the KEK that made it ([`binding`]): a blob moved to another id, or
//! to a row that names another KEK, does not unwrap. The backends live in `keyrot-kms`
//! (PKCS#11, Vault/OpenBao Transit, AWS KMS); keyrot-core only defines what they do.

mod keys;
mod sealer;
mod signing;
mod store;

pub use keys::{CustodyKeys, CustodyKeysError, FIRST_MASTER_KEY_ID, Rewrapped};
pub use sealer::{CustodyHealth, CustodyMonitor, CustodySealer};
pub(crate) use signing::SigningState;
pub use signing::{RemoteKey, SigningCustody, key_name_prefix};
pub use store::{MasterKeyStorage, StoredMasterKey};

use crate::secret::SecretBytes;
use async_trait::async_trait;
use std::fmt;

/// A master key as a custody backend wrapped it: which KEK, and the backend's ciphertext.
/// Neither is secret (the blob opens only inside the backend), but `Debug` shows only the
/// blob's length.
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedKey {
    /// The key-encryption key that wrapped it, as the backend names it, version included
    /// where the backend has versions (a PKCS#11 token and object label, a Transit key
    /// name, a KMS key ARN). Never a credential.
    pub kek: String,
    /// The backend's ciphertext, opaque to keyrot.
    pub blob: Vec<u8>,
}

impl fmt::Debug for WrappedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WrappedKey")
            .field("kek", &self.kek)
            .field("blob_len", &self.blob.len())
            .finish()
    }
}

/// The associated data every backend binds a wrap to: the master key's id and the KEK's
/// name, length-prefixed so that no two pairs share an encoding. Backends with associated
/// data (PKCS#11 AES-GCM, Transit) authenticate these bytes; AWS KMS takes
/// [`encryption_context`] instead.
pub fn binding(master_key_id: &str, kek: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + master_key_id.len() + kek.len());
    out.extend_from_slice(b"keyrot master key v1\0");
    for part in [master_key_id, kek] {
        out.extend_from_slice(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(part.as_bytes());
    }
    out
}

/// The encryption context (AWS KMS) a wrap is bound to: the master key's id under the key
/// `keyrot:master-key-id`. KMS binds the KEK itself (its ciphertext names the key).
pub fn encryption_context(master_key_id: &str) -> [(&'static str, String); 2] {
    [
        ("keyrot:purpose", "master-key".to_owned()),
        ("keyrot:master-key-id", master_key_id.to_owned()),
    ]
}

/// Why a custody operation failed. Messages name the backend and its redacted location,
/// never a credential, a PIN or key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CustodyError {
    /// The backend could not be reached, or did not answer in time. Retrying may help.
    #[error("{backend} at {location} is unreachable: {detail}")]
    Unavailable {
        /// `pkcs11`, `vault-transit`, `aws-kms`.
        backend: &'static str,
        /// Where, secrets redacted.
        location: String,
        /// What happened.
        detail: String,
    },
    /// The backend answered but refused: a revoked or expired credential, a missing
    /// permission, a disabled or missing KEK.
    #[error("{backend} at {location} refused the request: {detail}")]
    Denied {
        /// `pkcs11`, `vault-transit`, `aws-kms`.
        backend: &'static str,
        /// Where, secrets redacted.
        location: String,
        /// What to check.
        detail: String,
    },
    /// A wrapped master key did not unwrap: it was altered, moved to another id, or
    /// wrapped under another KEK than its row names.
    #[error(
        "the wrapped master key {id:?} does not unwrap under {kek}: it was altered, substituted or wrapped under another key"
    )]
    Refused {
        /// The master key's id.
        id: String,
        /// The KEK its row names.
        kek: String,
    },
    /// The configuration is unusable (an invalid URI, an extractable PKCS#11 key, an
    /// unsupported KEK type). Not retried.
    #[error("custody configuration: {0}")]
    Config(String),
}

/// A key-encryption key in an HSM or a KMS that wraps keyrot's master keys.
///
/// Implementations bind every wrap to [`binding`] (or [`encryption_context`]), answer
/// [`CustodyError::Refused`] for a blob that does not open under that binding, and never
/// return or log the plaintext except as [`SecretBytes`] from [`KeyCustody::unwrap`] and
/// [`KeyCustody::generate`].
#[async_trait]
pub trait KeyCustody: fmt::Debug + Send + Sync + 'static {
    /// The backend's name, the `backend` label of `keyrot_custody_up`: `pkcs11`,
    /// `vault-transit`, `aws-kms`.
    fn backend(&self) -> &'static str;

    /// Where the KEK is, with every secret redacted: safe for logs, errors and the ledger.
    fn location(&self) -> String;

    /// Wraps `key`, the master key `master_key_id`, under the current KEK.
    async fn wrap(&self, master_key_id: &str, key: &SecretBytes) -> Result<WrappedKey, CustodyError>;

    /// Unwraps a key [`KeyCustody::wrap`] or [`KeyCustody::generate`] made for
    /// `master_key_id`.
    async fn unwrap(&self, master_key_id: &str, wrapped: &WrappedKey) -> Result<SecretBytes, CustodyError>;

    /// A new 256-bit master key, and its wrapped form. Backends with a data-key operation
    /// (Transit `datakey`, KMS `GenerateDataKey`) override it; the default draws 32 bytes
    /// from the operating system and wraps them.
    async fn generate(&self, master_key_id: &str) -> Result<(SecretBytes, WrappedKey), CustodyError> {
        let mut bytes = vec![0u8; 32];
        getrandom::fill(&mut bytes)
            .map_err(|_| CustodyError::Config("the system random number generator failed".into()))?;
        let key = SecretBytes::new(bytes);
        let wrapped = self.wrap(master_key_id, &key).await?;
        Ok((key, wrapped))
    }

    /// Wraps again under the KEK's newest version (after the HSM or KMS rotated it).
    /// Backends with a rewrap operation (Transit `rewrap`, KMS `ReEncrypt`) override it so
    /// that the plaintext never leaves the backend; the default unwraps and wraps.
    async fn rewrap(&self, master_key_id: &str, wrapped: &WrappedKey) -> Result<WrappedKey, CustodyError> {
        let key = self.unwrap(master_key_id, wrapped).await?;
        self.wrap(master_key_id, &key).await
    }

    /// Whether the backend is reachable and the credential may use the KEK, without
    /// unwrapping anything. A missing KEK is [`CustodyError::Denied`] naming how to create
    /// it.
    async fn check(&self) -> Result<(), CustodyError>;

    /// Creates the KEK the configuration names when it does not exist yet (non-extractable
    /// and sensitive on PKCS#11; a non-exportable Transit key; a symmetric KMS key and its
    /// alias). `Ok(true)` when it was created, `Ok(false)` when it existed. An existing key
    /// that is unfit (an extractable PKCS#11 key, a Transit key that cannot be used for
    /// wrapping) is [`CustodyError::Config`].
    async fn ensure_kek(&self) -> Result<bool, CustodyError>;
}
