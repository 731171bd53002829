//! A custody backend in software, for tests of everything above the backends: the KEK is a
//! random key in this process. It binds wraps like the real backends do, can be switched off
//! (as an unreachable KMS) and denied (as a revoked credential), and rotates its KEK.

use crate::custody::{CustodyError, KeyCustody, WrappedKey, binding};
use crate::secret::SecretBytes;
use async_trait::async_trait;
use chacha20poly1305::aead::{Aead, KeyInit as _, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// A KEK with versions, in memory. Never for production: the KEK is in the process.
pub struct SoftCustody {
    name: String,
    versions: Mutex<HashMap<u32, XChaCha20Poly1305>>,
    latest: AtomicU32,
    down: AtomicBool,
    denied: AtomicBool,
    unwraps: AtomicU32,
}

impl fmt::Debug for SoftCustody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SoftCustody").field("name", &self.name).finish()
    }
}

impl SoftCustody {
    /// A KEK named `name`, at version 1.
    pub fn new(name: &str) -> Self {
        let this = Self {
            name: name.to_owned(),
            versions: Mutex::new(HashMap::new()),
            latest: AtomicU32::new(0),
            down: AtomicBool::new(false),
            denied: AtomicBool::new(false),
            unwraps: AtomicU32::new(0),
        };
        this.rotate();
        this
    }

    /// A new KEK version; older versions still unwrap.
    pub fn rotate(&self) {
        let version = self.latest.load(Ordering::SeqCst) + 1;
        let mut key = zeroize::Zeroizing::new([0u8; 32]);
        if getrandom::fill(&mut key[..]).is_err() {
            return;
        }
        let Ok(cipher) = XChaCha20Poly1305::new_from_slice(&key[..]) else {
            return;
        };
        if let Ok(mut v) = self.versions.lock() {
            v.insert(version, cipher);
        }
        self.latest.store(version, Ordering::SeqCst);
    }

    /// Whether the backend answers (`false`: every call is [`CustodyError::Unavailable`]).
    pub fn set_up(&self, up: bool) {
        self.down.store(!up, Ordering::SeqCst);
    }

    /// Whether the credential is refused (`true`: every call is [`CustodyError::Denied`]).
    pub fn set_denied(&self, denied: bool) {
        self.denied.store(denied, Ordering::SeqCst);
    }

    /// How many unwraps succeeded.
    pub fn unwraps(&self) -> u32 {
        self.unwraps.load(Ordering::SeqCst)
    }

    fn reachable(&self) -> Result<(), CustodyError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(CustodyError::Unavailable {
                backend: "soft",
                location: self.location(),
                detail: "switched off by the test".into(),
            });
        }
        if self.denied.load(Ordering::SeqCst) {
            return Err(CustodyError::Denied {
                backend: "soft",
                location: self.location(),
                detail: "the credential was revoked by the test".into(),
            });
        }
        Ok(())
    }

    fn kek(&self, version: u32) -> String {
        format!("soft:{}#v{version}", self.name)
    }
}

#[async_trait]
impl KeyCustody for SoftCustody {
    fn backend(&self) -> &'static str {
        "soft"
    }

    fn location(&self) -> String {
        format!("soft:{}", self.name)
    }

    async fn wrap(&self, master_key_id: &str, key: &SecretBytes) -> Result<WrappedKey, CustodyError> {
        self.reachable()?;
        let version = self.latest.load(Ordering::SeqCst);
        let kek = self.kek(version);
        let mut nonce = [0u8; 24];
        getrandom::fill(&mut nonce).map_err(|_| CustodyError::Config("no randomness".into()))?;
        let aad = binding(master_key_id, &kek);
        let versions = self
            .versions
            .lock()
            .map_err(|_| CustodyError::Config("poisoned".into()))?;
        let cipher = versions
            .get(&version)
            .ok_or_else(|| CustodyError::Config("no KEK".into()))?;
        let ct = cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: key.expose(),
                    aad: &aad,
                },
            )
            .map_err(|_| CustodyError::Config("encryption failed".into()))?;
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&ct);
        Ok(WrappedKey { kek, blob })
    }

    async fn unwrap(&self, master_key_id: &str, wrapped: &WrappedKey) -> Result<SecretBytes, CustodyError> {
        self.reachable()?;
        let refused = || CustodyError::Refused {
            id: master_key_id.to_owned(),
            kek: wrapped.kek.clone(),
        };
        let version: u32 = wrapped
            .kek
            .strip_prefix(&format!("soft:{}#v", self.name))
            .and_then(|v| v.parse().ok())
            .ok_or_else(refused)?;
        if wrapped.blob.len() < 24 {
            return Err(refused());
        }
        let (nonce, ct) = wrapped.blob.split_at(24);
        let nonce: [u8; 24] = nonce.try_into().map_err(|_| refused())?;
        let aad = binding(master_key_id, &wrapped.kek);
        let versions = self
            .versions
            .lock()
            .map_err(|_| CustodyError::Config("poisoned".into()))?;
        let cipher = versions.get(&version).ok_or_else(refused)?;
        let plain = cipher
            .decrypt(&XNonce::from(nonce), Payload { msg: ct, aad: &aad })
            .map_err(|_| refused())?;
        self.unwraps.fetch_add(1, Ordering::SeqCst);
        Ok(SecretBytes::new(plain))
    }

    async fn check(&self) -> Result<(), CustodyError> {
        self.reachable()
    }

    async fn ensure_kek(&self) -> Result<bool, CustodyError> {
        self.reachable()?;
        Ok(false)
    }
}
