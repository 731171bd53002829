//! Signing keys "held by a backend" in software, for tests of everything above the
//! backends: the rotator's create / lost-race / revoke / purge steps and `sign_async`. The
//! keys are in this process. It can be switched off (as an unreachable HSM), and its next
//! `create` can be held until the test releases it (to lose a commit race on purpose).

use crate::alg::{Algorithm, RsaBits};
use crate::custody::{CustodyError, RemoteKey, SigningCustody};
use crate::key::PrivateKey;
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

struct Held {
    key: PrivateKey,
    disabled: bool,
}

/// Keys by reference (`soft:NAME`), in memory. Never for production.
#[derive(Default)]
pub struct SoftSigning {
    keys: Mutex<BTreeMap<String, Held>>,
    down: AtomicBool,
    gate: Mutex<Option<Arc<Notify>>>,
}

impl fmt::Debug for SoftSigning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SoftSigning").finish_non_exhaustive()
    }
}

impl SoftSigning {
    /// No keys yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Unreachable (`false`) or back (`true`).
    pub fn set_up(&self, up: bool) {
        self.down.store(!up, Ordering::Release);
    }

    /// Holds the next `create` after it made its key, until the returned `Notify` is
    /// notified.
    pub fn hold_next_create(&self) -> Arc<Notify> {
        let gate = Arc::new(Notify::new());
        if let Ok(mut g) = self.gate.lock() {
            *g = Some(Arc::clone(&gate));
        }
        gate
    }

    /// The references of the keys it holds, and whether each is disabled.
    pub fn held(&self) -> BTreeMap<String, bool> {
        self.keys
            .lock()
            .map(|k| k.iter().map(|(r, h)| (r.clone(), h.disabled)).collect())
            .unwrap_or_default()
    }

    fn up(&self) -> Result<(), CustodyError> {
        if self.down.load(Ordering::Acquire) {
            return Err(CustodyError::Unavailable {
                backend: "soft",
                location: "soft:".into(),
                detail: "switched off by the test".into(),
            });
        }
        Ok(())
    }

    fn denied(detail: String) -> CustodyError {
        CustodyError::Denied {
            backend: "soft",
            location: "soft:".into(),
            detail,
        }
    }
}

#[async_trait]
impl SigningCustody for SoftSigning {
    fn backend(&self) -> &'static str {
        "soft"
    }

    fn location(&self) -> String {
        "soft:".into()
    }

    fn supports(&self, _alg: Algorithm, _bits: RsaBits) -> Result<(), CustodyError> {
        Ok(())
    }

    async fn create(&self, name: &str, alg: Algorithm, bits: RsaBits) -> Result<RemoteKey, CustodyError> {
        self.up()?;
        let key = PrivateKey::generate_async(alg, bits)
            .await
            .map_err(|e| CustodyError::Config(e.to_string()))?;
        let reference = format!("soft:{name}");
        let public = key.public_key();
        if let Ok(mut keys) = self.keys.lock() {
            keys.insert(reference.clone(), Held { key, disabled: false });
        }
        let gate = self.gate.lock().ok().and_then(|mut g| g.take());
        if let Some(gate) = gate {
            gate.notified().await;
        }
        Ok(RemoteKey { reference, public })
    }

    async fn find(&self, reference: &str, alg: Algorithm) -> Result<RemoteKey, CustodyError> {
        self.up()?;
        let keys = self.keys.lock().map_err(|_| Self::denied("poisoned".into()))?;
        let held = keys
            .get(reference)
            .filter(|h| h.key.algorithm() == alg)
            .ok_or_else(|| Self::denied(format!("no {alg} key {reference}")))?;
        Ok(RemoteKey {
            reference: reference.to_owned(),
            public: held.key.public_key(),
        })
    }

    async fn sign(&self, reference: &str, _alg: Algorithm, message: &[u8]) -> Result<Vec<u8>, CustodyError> {
        self.up()?;
        let keys = self.keys.lock().map_err(|_| Self::denied("poisoned".into()))?;
        match keys.get(reference) {
            Some(h) if !h.disabled => h
                .key
                .signing_key()
                .sign(message)
                .map_err(|e| CustodyError::Config(e.to_string())),
            Some(_) => Err(Self::denied(format!("{reference} is disabled"))),
            None => Err(Self::denied(format!("no key {reference}"))),
        }
    }

    async fn disable(&self, reference: &str) -> Result<bool, CustodyError> {
        self.up()?;
        if let Ok(mut keys) = self.keys.lock()
            && let Some(h) = keys.get_mut(reference)
        {
            h.disabled = true;
        }
        Ok(true)
    }

    async fn destroy(&self, reference: &str) -> Result<(), CustodyError> {
        self.up()?;
        if let Ok(mut keys) = self.keys.lock() {
            keys.remove(reference);
        }
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, CustodyError> {
        self.up()?;
        let keys = self.keys.lock().map_err(|_| Self::denied("poisoned".into()))?;
        Ok(keys
            .keys()
            .filter(|r| r.strip_prefix("soft:").is_some_and(|n| n.starts_with(prefix)))
            .cloned()
            .collect())
    }

    async fn check(&self) -> Result<(), CustodyError> {
        self.up()
    }
}
