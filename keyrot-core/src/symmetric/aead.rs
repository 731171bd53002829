//! Authenticated encryption with an AEAD ring: XChaCha20-Poly1305 under the Active key,
//! decryption under any key inside its window, chosen by the id in the ciphertext's
//! header.
//!
//! The format (version 1), all of it authenticated:
//!
//! ```text
//! 0x01 ‖ key id (4 bytes, big-endian) ‖ nonce (24 random bytes) ‖ ciphertext ‖ tag (16 bytes)
//! ```
//!
//! The header (version and key id) is part of the associated data, followed by the
//! caller's: `header ‖ aad`. XChaCha20-Poly1305 rather than AES-256-GCM: its 192-bit nonces
//! can be drawn at random for any number of messages under one key (GCM's 96-bit random
//! nonces allow about 2³² per key), it is constant-time in software on every CPU, and it
//! is the primitive keyrot already seals keys with.

use super::counts::Use;
use super::keys::{SymmetricKey, SymmetricKeys};
use super::{Purpose, SymmetricError};
use crate::alg::KeyKind;
use crate::keyring::KeyRing;
use crate::ring::KeyState;
use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use chrono::{DateTime, Utc};

/// The first byte of every ciphertext of this format.
pub const AEAD_FORMAT_V1: u8 = 1;
const HEADER: usize = 5;
const NONCE: usize = 24;
const TAG: usize = 16;
/// Bytes a ciphertext has beyond its plaintext: header, nonce and tag (45).
pub const AEAD_OVERHEAD: usize = HEADER + NONCE + TAG;

/// Encrypts and decrypts with an AEAD ring (kind [`KeyKind::Aead`]). Cheap to clone; every
/// call reads the ring's current snapshot, so rotations take effect without a new handle.
#[derive(Clone, Debug)]
pub struct AeadRing {
    ring: KeyRing,
    purpose: Purpose,
}

/// What [`AeadRing::reencrypt`] made of a ciphertext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reencrypted {
    /// The ciphertext under the Active key (the input itself when it already was).
    pub ciphertext: Vec<u8>,
    /// Whether it changed (it was under another key).
    pub changed: bool,
}

impl AeadRing {
    /// The AEAD handle of `ring`; refused unless the ring's policy makes AEAD keys.
    pub fn new(ring: KeyRing) -> Result<Self, SymmetricError> {
        ring.check_kind(KeyKind::Aead)?;
        Ok(Self {
            ring,
            purpose: Purpose::default(),
        })
    }

    /// The same ring for `purpose`: its ciphertexts open only through a handle of the same
    /// purpose (the purpose is bound with the associated data).
    pub fn with_purpose(mut self, purpose: Purpose) -> Self {
        self.purpose = purpose;
        self
    }

    /// The ring.
    pub fn ring(&self) -> &KeyRing {
        &self.ring
    }

    /// Encrypts `plaintext` under the Active key, binding `aad` (which decryption must
    /// present again; e.g. a cookie's name, a row's primary key and column).
    pub fn encrypt(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, SymmetricError> {
        let sealed = self.ring.with_symmetric(KeyKind::Aead, |keys| {
            let key = keys.active()?;
            seal(key, self.purpose, plaintext, aad).map(|ct| (ct, key.state))
        });
        counted(&self.ring, Use::Encrypt, sealed)
    }

    /// Decrypts `ciphertext` made by [`AeadRing::encrypt`] under any key of the ring inside its
    /// window (Pending, Active, or Retiring before its window ends), with the same `aad`.
    pub fn decrypt(&self, ciphertext: &[u8], aad: &[u8]) -> Result<Vec<u8>, SymmetricError> {
        let opened = self.ring.with_symmetric(KeyKind::Aead, |keys| {
            open(keys, self.purpose, ciphertext, aad, || self.ring.now())
        });
        counted(&self.ring, Use::Decrypt, opened)
    }

    /// [`AeadRing::decrypt`] as of `at` (for tests and forensics: `at` decides whether a
    /// Retiring key is still inside its window, so never pass a time the input carries).
    pub fn decrypt_at(&self, ciphertext: &[u8], aad: &[u8], at: DateTime<Utc>) -> Result<Vec<u8>, SymmetricError> {
        let opened = self
            .ring
            .with_symmetric(KeyKind::Aead, |keys| open(keys, self.purpose, ciphertext, aad, || at));
        counted(&self.ring, Use::Decrypt, opened)
    }

    /// The kid of the key `ciphertext` names (whether or not that key is still usable).
    pub fn key_id(ciphertext: &[u8]) -> Result<String, SymmetricError> {
        let (id, _, _) = split(ciphertext)?;
        Ok(super::keys::kid_of_id(id))
    }

    /// Moves `ciphertext` to the Active key: decrypted (under any key inside its window)
    /// and encrypted again under the Active key, or returned as it is when it already is
    /// under the Active key (after checking that it decrypts).
    pub fn reencrypt(&self, ciphertext: &[u8], aad: &[u8]) -> Result<Reencrypted, SymmetricError> {
        self.ring
            .with_symmetric(KeyKind::Aead, |keys| Ok(reencrypt_with(self, keys, ciphertext, aad)))?
    }

    /// [`AeadRing::reencrypt`] for a batch of `(ciphertext, aad)` pairs from one snapshot (a
    /// re-encryption job): one answer per input, in order; a failure does not stop the
    /// others.
    pub fn reencrypt_batch<'a, I>(&self, items: I) -> Result<Vec<Result<Reencrypted, SymmetricError>>, SymmetricError>
    where
        I: IntoIterator<Item = (&'a [u8], &'a [u8])>,
    {
        self.ring.with_symmetric(KeyKind::Aead, |keys| {
            Ok(items
                .into_iter()
                .map(|(ct, aad)| reencrypt_with(self, keys, ct, aad))
                .collect())
        })
    }
}

/// `result` counted as one use (under the key state it carries, or refused), without it.
pub(super) fn counted<T, E>(ring: &KeyRing, what: Use, result: Result<(T, KeyState), E>) -> Result<T, E> {
    ring.count_use(what, result.as_ref().ok().map(|(_, state)| *state));
    result.map(|(value, _)| value)
}

fn reencrypt_with(
    handle: &AeadRing,
    keys: &SymmetricKeys,
    ciphertext: &[u8],
    aad: &[u8],
) -> Result<Reencrypted, SymmetricError> {
    let (ring, purpose) = (&handle.ring, handle.purpose);
    let active = keys.active()?;
    let plain = counted(ring, Use::Decrypt, open(keys, purpose, ciphertext, aad, || ring.now()))?;
    let (id, _, _) = split(ciphertext)?;
    if id == active.id {
        return Ok(Reencrypted {
            ciphertext: ciphertext.to_vec(),
            changed: false,
        });
    }
    let sealed = seal(active, purpose, &plain, aad).map(|ct| (ct, active.state));
    Ok(Reencrypted {
        ciphertext: counted(ring, Use::Encrypt, sealed)?,
        changed: true,
    })
}

fn cipher(key: &SymmetricKey) -> Result<XChaCha20Poly1305, SymmetricError> {
    XChaCha20Poly1305::new_from_slice(key.secret.expose()).map_err(|_| SymmetricError::Authentication)
}

/// `header ‖ purpose ‖ 0x00 ‖ aad`, handed to `f`.
fn with_aad<T>(header: &[u8], purpose: Purpose, aad: &[u8], f: impl FnOnce(&[u8]) -> T) -> T {
    super::with_concatenated(&[header, purpose.as_str().as_bytes(), &[0], aad], f)
}

fn seal(key: &SymmetricKey, purpose: Purpose, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, SymmetricError> {
    let mut out = Vec::with_capacity(AEAD_OVERHEAD + plaintext.len());
    out.push(AEAD_FORMAT_V1);
    out.extend_from_slice(&key.id.to_be_bytes());
    let mut nonce = [0u8; NONCE];
    getrandom::fill(&mut nonce).map_err(|_| SymmetricError::Rng)?;
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    let cipher = cipher(key)?;
    let (head, body) = out.split_at_mut(HEADER + NONCE);
    let tag = with_aad(&head[..HEADER], purpose, aad, |full| {
        cipher.encrypt_inout_detached(&XNonce::from(nonce), full, body.into())
    })
    .map_err(|_| SymmetricError::Authentication)?;
    out.extend_from_slice(tag.as_slice());
    Ok(out)
}

/// The key id, nonce and `ciphertext ‖ tag` of a version-1 ciphertext.
fn split(ciphertext: &[u8]) -> Result<(u32, [u8; NONCE], &[u8]), SymmetricError> {
    if ciphertext.len() < AEAD_OVERHEAD {
        return Err(SymmetricError::Malformed("ciphertext (too short)"));
    }
    if ciphertext[0] != AEAD_FORMAT_V1 {
        return Err(SymmetricError::Malformed("ciphertext (unknown version)"));
    }
    let id = u32::from_be_bytes([ciphertext[1], ciphertext[2], ciphertext[3], ciphertext[4]]);
    let mut nonce = [0u8; NONCE];
    nonce.copy_from_slice(&ciphertext[HEADER..HEADER + NONCE]);
    Ok((id, nonce, &ciphertext[HEADER + NONCE..]))
}

fn open(
    keys: &SymmetricKeys,
    purpose: Purpose,
    ciphertext: &[u8],
    aad: &[u8],
    now: impl FnOnce() -> DateTime<Utc>,
) -> Result<(Vec<u8>, KeyState), SymmetricError> {
    let (id, nonce, body) = split(ciphertext)?;
    let key = keys.by_id(id, now)?;
    let (msg, tag) = body.split_at(body.len() - TAG);
    let tag = Tag::try_from(tag).map_err(|_| SymmetricError::Malformed("ciphertext (tag)"))?;
    let mut plain = msg.to_vec();
    let cipher = cipher(key)?;
    with_aad(&ciphertext[..HEADER], purpose, aad, |full| {
        cipher.decrypt_inout_detached(&XNonce::from(nonce), full, plain.as_mut_slice().into(), &tag)
    })
    .map_err(|_| SymmetricError::Authentication)?;
    Ok((plain, key.state))
}
