//! The pre-parsed keys the hot path signs and verifies with, and the internal `Signer` and
//! `Verifier` traits every family implements for them.

use super::{KeyError, RSA_MAX_BITS, broken};
use crate::alg::Algorithm;
use std::fmt;
use std::panic::{RefUnwindSafe, UnwindSafe};
use std::sync::Arc;

/// The longest signature of any family: RSA 4096 (512 bytes).
pub(crate) const MAX_SIGNATURE_BYTES: usize = RSA_MAX_BITS / 8;

/// Signs on the hot path: no parsing, and no allocation beyond what the crypto crate makes.
pub(crate) trait Signer: Send + Sync + RefUnwindSafe + UnwindSafe {
    /// Signs `message` into the front of `out`, returning the signature's length.
    fn sign_into(&self, message: &[u8], out: &mut [u8; MAX_SIGNATURE_BYTES]) -> Result<usize, KeyError>;
    /// The length of every signature this key makes.
    fn signature_len(&self) -> usize;
}

/// Copies a signature into the front of `out`, returning its length.
pub(crate) fn put_signature(sig: &[u8], out: &mut [u8; MAX_SIGNATURE_BYTES]) -> Result<usize, KeyError> {
    out.get_mut(..sig.len())
        .ok_or_else(|| broken("signature longer than any supported key makes"))?
        .copy_from_slice(sig);
    Ok(sig.len())
}

/// Verifies on the hot path: no parsing, no allocation.
pub(crate) trait Verifier: Send + Sync + RefUnwindSafe + UnwindSafe {
    /// Verifies `signature` over `message`.
    fn verify(&self, message: &[u8], signature: &[u8]) -> bool;
}

/// A signing key parsed once and reused for every token (no parsing on the hot path).
pub struct SigningKey {
    pub(super) alg: Algorithm,
    pub(super) inner: Box<dyn Signer>,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &self.alg)
            .field("material", &"[redacted]")
            .finish()
    }
}

impl SigningKey {
    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// Signs `message`, returning the raw signature bytes.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        let mut buf = [0u8; MAX_SIGNATURE_BYTES];
        let n = self.inner.sign_into(message, &mut buf)?;
        Ok(buf[..n].to_vec())
    }

    /// Signs `message` into the front of `out` without allocating, returning the
    /// signature's length.
    pub(crate) fn sign_into(&self, message: &[u8], out: &mut [u8; MAX_SIGNATURE_BYTES]) -> Result<usize, KeyError> {
        self.inner.sign_into(message, out)
    }

    /// The length of every signature this key makes.
    pub(crate) fn signature_len(&self) -> usize {
        self.inner.signature_len()
    }
}

/// A verifying key parsed once and reused for every verification.
#[derive(Clone)]
pub struct VerifyingKey {
    pub(super) alg: Algorithm,
    pub(super) inner: Arc<dyn Verifier>,
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyingKey").field("alg", &self.alg).finish()
    }
}

impl VerifyingKey {
    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// Verifies `signature` over `message`. Ed25519 uses strict verification (canonical
    /// `S`, no small-order components); RSA signatures must be exactly the modulus length;
    /// ECDSA signatures must be the fixed-length `R‖S` (never DER) with `r`, `s` in `[1, n)`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        self.inner.verify(message, signature)
    }
}
