//! Symmetric rings: MAC keys (HMAC-SHA-256) and AEAD keys (XChaCha20-Poly1305) on the
//! signing keys' lifecycle. The planner, rotator, storage, sealing, manifest and ledger are
//! the signing rings' own; what differs is here: how a key is made (32 random bytes, a
//! random 4-byte key id), what a snapshot holds for it (the unsealed secrets of the keys
//! inside their window, `keys.rs`) and what it is used for (`aead.rs`, `mac.rs`,
//! `webhook.rs`). A symmetric key is never in a JWKS and never verifies a token: the
//! JWKS and the token verifiers take signing algorithms only (`Algorithm::is_signing`).

mod aead;
mod counts;
mod export;
mod keys;
mod mac;
mod webhook;

pub use aead::{AEAD_FORMAT_V1, AEAD_OVERHEAD, AeadRing, Reencrypted};
pub(crate) use counts::{Counts, Use};

/// Calls `f` with the concatenation of `parts`, assembled on the stack when it is short
/// (up to 256 bytes) and in one allocation otherwise: associated data and MACed messages
/// made of several fields.
pub fn with_concatenated<T>(parts: &[&[u8]], f: impl FnOnce(&[u8]) -> T) -> T {
    const STACK: usize = 256;
    let len: usize = parts.iter().map(|p| p.len()).sum();
    if len <= STACK {
        let mut buf = [0u8; STACK];
        let mut at = 0;
        for p in parts {
            buf[at..at + p.len()].copy_from_slice(p);
            at += p.len();
        }
        f(&buf[..len])
    } else {
        f(&parts.concat())
    }
}
pub use export::{ExportedSecret, SecretFormat, UnknownSecretFormat};
pub(crate) use keys::{KEY_BYTES, SymmetricKeys, new_key};
pub use mac::{MacRing, MacTag};
pub use webhook::{DEFAULT_WEBHOOK_TOLERANCE, WebhookError, WebhookHeaders, Webhooks, standard_webhooks_secret};

use crate::alg::KeyKind;
use crate::ring::RingName;

/// What a handle's MACs or ciphertexts are for, bound into every one of them, so that one
/// made for a purpose is never accepted for another by the same ring: a cookie is not a
/// field, a field is not a webhook. 1-64 characters of `a-z A-Z 0-9 - _ /` (no `.`, no
/// NUL: no purpose-bound input can look like a Standard Webhooks message or another
/// purpose's). The default purpose is the empty one ([`AeadRing::new`], [`MacRing::new`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Purpose(&'static str);

impl Purpose {
    /// The purpose `name`; fails to compile in a `const` (and panics otherwise) when
    /// `name` breaks the rule: purposes are constants of the code, never input.
    pub const fn new(name: &'static str) -> Self {
        match Self::try_new(name) {
            Some(p) => p,
            None => panic!("a purpose is 1-64 characters of a-z A-Z 0-9 - _ /"),
        }
    }

    /// The purpose `name`, or `None` when it breaks the rule.
    pub const fn try_new(name: &'static str) -> Option<Self> {
        let b = name.as_bytes();
        if b.is_empty() || b.len() > 64 {
            return None;
        }
        let mut i = 0;
        while i < b.len() {
            if !(b[i].is_ascii_alphanumeric() || b[i] == b'-' || b[i] == b'_' || b[i] == b'/') {
                return None;
            }
            i += 1;
        }
        Some(Self(name))
    }

    /// The name (empty for the default purpose).
    pub fn as_str(self) -> &'static str {
        self.0
    }
}

/// Why a symmetric operation failed. Never carries key bytes, a plaintext or a tag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SymmetricError {
    /// The ring holds keys of another kind (a signing ring used for encryption, say).
    #[error("ring {ring} holds {holds} keys, not {wanted} keys")]
    WrongKind {
        /// The ring.
        ring: RingName,
        /// The kind of key it holds.
        holds: KeyKind,
        /// The kind the operation needs.
        wanted: KeyKind,
    },
    /// The ring has no usable Active key (not initialised, or its row failed its
    /// integrity check).
    #[error("ring {0} has no Active key")]
    NoActiveKey(RingName),
    /// The ciphertext or tag is not in keyrot's format (too short, another version).
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// No key of the ring inside its window has the id the input names: it never existed
    /// here, it was revoked, or its window ended.
    #[error("no key of the ring inside its window has this key id")]
    UnknownKey,
    /// The key is the ring's but its Retiring window is over.
    #[error("key {0} is past its window")]
    KeyExpired(String),
    /// Authentication failed: the ciphertext, the associated data or the tag was changed,
    /// or it was made under another key.
    #[error("authentication failed")]
    Authentication,
    /// The operating system's random number generator failed.
    #[error("the system random number generator failed")]
    Rng,
}

impl SymmetricError {
    /// A short, stable name for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            SymmetricError::WrongKind { .. } => "wrong_kind",
            SymmetricError::NoActiveKey(_) => "no_active_key",
            SymmetricError::Malformed(_) => "malformed",
            SymmetricError::UnknownKey => "unknown_key",
            SymmetricError::KeyExpired(_) => "key_expired",
            SymmetricError::Authentication => "authentication",
            SymmetricError::Rng => "rng",
        }
    }
}

#[cfg(test)]
mod tests;
