//! Signing keys that never leave an HSM or a KMS: the backend creates them, signs with
//! them, disables and destroys them; keyrot keeps only a reference and the public key.

use super::CustodyError;
use super::CustodyHealth;
use crate::alg::Algorithm;
use crate::alg::RsaBits;
use crate::key::PublicKey;
use crate::ring::RingName;
use async_trait::async_trait;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// A key a [`SigningCustody`] backend created or found: where it is, and its public key.
#[derive(Clone)]
pub struct RemoteKey {
    /// The backend's reference, stored in the key's row and authenticated by the ring's
    /// manifest: the scheme of the backend's URI, then what names the key there (a PKCS#11
    /// object id, a Transit key name, a KMS key ARN). Never a credential.
    pub reference: String,
    /// Its public key, read from the backend.
    pub public: PublicKey,
}

impl fmt::Debug for RemoteKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteKey")
            .field("reference", &self.reference)
            .field("alg", &self.public.algorithm())
            .finish()
    }
}

/// The prefix of the names keyrot gives the keys it creates for `ring`:
/// `keyrot-LEN-RING-`, `LEN` the ring name's length. A backend lists the keys under it
/// ([`SigningCustody::list`]) so that a key no ring references (a lost race, a crash
/// before the commit) is found and destroyed. The length makes no ring's prefix the start
/// of another ring's names (`keyrot-1-a-` never matches ring `a-b`'s `keyrot-3-a-b-…`).
pub fn key_name_prefix(ring: &RingName) -> String {
    format!("keyrot-{}-{ring}-", ring.as_str().len())
}

/// An HSM or KMS that holds a ring's private signing keys, non-extractable.
///
/// keyrot calls [`SigningCustody::create`] outside any transaction, before the commit
/// that references the key; a key whose commit is lost is destroyed, and
/// [`SigningCustody::list`] lets a later attempt find and destroy keys that no ring
/// references. Signatures are returned in JWS form (ECDSA as `R‖S`, RSA-PSS with the
/// salt length RFC 7518 requires).
#[async_trait]
pub trait SigningCustody: fmt::Debug + Send + Sync + 'static {
    /// `pkcs11`, `vault-transit`, `aws-kms`: the `backend` label of the metrics.
    fn backend(&self) -> &'static str;

    /// Where, with every secret redacted: safe for logs, errors and the ledger.
    fn location(&self) -> String;

    /// `Ok` when the backend can create and sign with keys of `alg` (and, for RSA,
    /// `rsa_bits`); otherwise [`CustodyError::Config`] saying what it can do. Checked when
    /// a ring is configured, so that a ring is never set up to fail at its first rotation.
    fn supports(&self, alg: Algorithm, rsa_bits: RsaBits) -> Result<(), CustodyError>;

    /// Creates a non-extractable key of `alg` named `name` (which starts with
    /// [`key_name_prefix`] of its ring) and reads its public key back.
    async fn create(&self, name: &str, alg: Algorithm, rsa_bits: RsaBits) -> Result<RemoteKey, CustodyError>;

    /// Finds an existing key by the reference [`RemoteKey::reference`] form (or the
    /// backend's own name for it) and reads its public key: bringing an existing key.
    async fn find(&self, reference: &str, alg: Algorithm) -> Result<RemoteKey, CustodyError>;

    /// Signs `message` (a JWS signing input) with the referenced key: the JWS signature.
    async fn sign(&self, reference: &str, alg: Algorithm, message: &[u8]) -> Result<Vec<u8>, CustodyError>;

    /// Stops the key from signing at once. `Ok(false)` when the backend cannot disable a
    /// key (it is then destroyed at purge).
    async fn disable(&self, reference: &str) -> Result<bool, CustodyError>;

    /// Destroys the key, or schedules its deletion where the backend insists on a waiting
    /// period. Destroying a key that is already gone is `Ok`.
    async fn destroy(&self, reference: &str) -> Result<(), CustodyError>;

    /// The references of every key the backend holds whose name starts with `prefix`
    /// ([`key_name_prefix`]), destroyed or scheduled ones excluded.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, CustodyError>;

    /// Whether the backend is reachable and the credential may use it.
    async fn check(&self) -> Result<(), CustodyError>;
}

/// A ring's signing backend and its health: what the last probe or signing call found.
pub(crate) struct SigningState {
    pub(crate) custody: Arc<dyn SigningCustody>,
    up: AtomicBool,
    last_error: Mutex<Option<String>>,
}

impl SigningState {
    pub(crate) fn new(custody: Arc<dyn SigningCustody>) -> Self {
        Self {
            custody,
            up: AtomicBool::new(true),
            last_error: Mutex::new(None),
        }
    }

    /// The health, for the status endpoint's `signing_custody` member.
    pub(crate) fn health(&self) -> CustodyHealth {
        CustodyHealth {
            backend: self.custody.backend(),
            location: self.custody.location(),
            up: self.up.load(Ordering::Acquire),
            error: self.last_error.lock().ok().and_then(|e| e.clone()),
        }
    }

    /// Records what a probe or a signing call found: the gauge and a log line change only
    /// when the health does. A refusal of one key (a disabled key) is not the backend's
    /// health; only an unreachable backend or a refused credential is.
    pub(crate) fn record(&self, result: &Result<(), CustodyError>) {
        let error = match result {
            Ok(()) => None,
            Err(e @ (CustodyError::Unavailable { .. } | CustodyError::Denied { .. })) => Some(e.to_string()),
            Err(_) => return,
        };
        let up = error.is_none();
        if let Ok(mut last) = self.last_error.lock() {
            *last = error.clone();
        }
        let was = self.up.swap(up, Ordering::AcqRel);
        let backend = self.custody.backend();
        match (error, was) {
            (Some(e), true) => tracing::error!(
                backend,
                location = %self.custody.location(),
                error = %e,
                "the signing keys' HSM or KMS does not answer: verifying goes on, tokens are not signed"
            ),
            (None, false) => tracing::info!(backend, "the signing keys' HSM or KMS answers again"),
            _ => {}
        }
        if was != up {
            crate::metrics::signing_custody_up(backend, up);
        }
    }

    /// Asks the backend whether it answers.
    pub(crate) async fn probe(&self) -> bool {
        let result = self.custody.check().await;
        self.record(&result);
        crate::metrics::signing_custody_up(self.custody.backend(), result.is_ok());
        result.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_ring_prefix_starts_another_rings_names() {
        let rings = [
            "a",
            "a-b",
            "a-b-c",
            "ab",
            "a1",
            "default",
            "default-2",
            "1-a",
            "12345678901-x",
        ];
        for r1 in rings {
            for r2 in rings {
                let (p1, p2) = (
                    key_name_prefix(&RingName::new(r1).expect("ring")),
                    key_name_prefix(&RingName::new(r2).expect("ring")),
                );
                let name = format!("{p2}0123456789abcdef");
                assert_eq!(name.starts_with(&p1), r1 == r2, "{p1:?} and {name:?}");
            }
        }
    }
}
