//! A [`Sealer`] whose master keys are held by a custody backend: unwrapped at start into
//! zeroised memory, reloaded when a new master key is stored, and refusing new seals while
//! the backend does not answer.

use super::keys::{CustodyKeys, CustodyKeysError};
use crate::seal::{Mac, MasterKeySealer, SealContext, SealError, SealedKey, Sealer};
use crate::secret::SecretBytes;
use arc_swap::ArcSwap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The custody backend's health, as the last probe found it (the status endpoint's
/// `custody` member).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CustodyHealth {
    /// `pkcs11`, `vault-transit`, `aws-kms`.
    pub backend: &'static str,
    /// Where, secrets redacted.
    pub location: String,
    /// Whether the last probe reached the backend and the KEK.
    pub up: bool,
    /// The last probe's error, when it failed.
    pub error: Option<String>,
}

/// A sealer over the master keys a custody backend holds. Sealed keys keep opening and
/// manifests keep authenticating while the backend is away (the keys are in memory);
/// sealing a new key is refused ([`SealError::CustodyUnavailable`]) until a probe reaches
/// the backend again, so that revoking keyrot's access to the KEK stops new keys at once.
pub struct CustodySealer {
    keys: CustodyKeys,
    current: ArcSwap<MasterKeySealer>,
    up: AtomicBool,
    last_error: Mutex<Option<String>>,
}

impl fmt::Debug for CustodySealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CustodySealer")
            .field("backend", &self.keys.custody().backend())
            .field("location", &self.keys.custody().location())
            .field("sealer", &**self.current.load())
            .field("up", &self.up.load(Ordering::Relaxed))
            .finish()
    }
}

impl CustodySealer {
    /// Unwraps every stored master key. With `create_if_empty`, the first master key is
    /// created when none is stored (instances starting together agree on one).
    pub async fn open(keys: CustodyKeys, create_if_empty: bool) -> Result<Arc<Self>, CustodyKeysError> {
        let sealer = if create_if_empty {
            keys.sealer_or_create().await?.0
        } else {
            keys.sealer().await?
        };
        crate::metrics::custody_up(keys.custody().backend(), true);
        Ok(Arc::new(Self {
            keys,
            current: ArcSwap::from_pointee(sealer),
            up: AtomicBool::new(true),
            last_error: Mutex::new(None),
        }))
    }

    /// The master keys under custody.
    pub fn keys(&self) -> &CustodyKeys {
        &self.keys
    }

    /// The backend's health, as the last probe found it.
    pub fn health(&self) -> CustodyHealth {
        let custody = self.keys.custody();
        CustodyHealth {
            backend: custody.backend(),
            location: custody.location(),
            up: self.up.load(Ordering::Acquire),
            error: self.last_error.lock().map(|e| e.clone()).unwrap_or_default(),
        }
    }

    /// Asks the backend whether it answers and the KEK is usable, and unwraps any master
    /// key stored since the last probe (a `keyrotctl master-key create` elsewhere). Sets
    /// `keyrot_custody_up`. `true` when the backend answered.
    pub async fn probe(&self) -> bool {
        let custody = self.keys.custody();
        let result = match custody.check().await {
            Ok(()) => self.reload().await,
            Err(e) => Err(CustodyKeysError::Custody(e)),
        };
        let up = result.is_ok();
        let was = self.up.swap(up, Ordering::AcqRel);
        if let Ok(mut last) = self.last_error.lock() {
            *last = result.as_ref().err().map(ToString::to_string);
        }
        match (&result, was) {
            (Err(e), true) => tracing::error!(
                backend = custody.backend(),
                location = %custody.location(),
                error = %e,
                "the master keys' custody backend does not answer: signing and verifying go on, no new key is sealed"
            ),
            (Ok(()), false) => tracing::info!(
                backend = custody.backend(),
                "the master keys' custody backend answers again"
            ),
            _ => {}
        }
        crate::metrics::custody_up(custody.backend(), up);
        up
    }

    /// Unwraps the stored master keys this sealer does not hold yet.
    async fn reload(&self) -> Result<(), CustodyKeysError> {
        let stored = self.keys.list().await?;
        let current = self.current.load();
        if stored.iter().all(|k| current.has_key(&k.id)) {
            return Ok(());
        }
        let sealer = self.keys.sealer().await?;
        tracing::info!(
            primary = %sealer.primary_key_id(),
            "a new master key under custody: unwrapped; new seals use the newest"
        );
        self.current.store(Arc::new(sealer));
        Ok(())
    }

    /// Probes every `every` until the handle is dropped.
    pub fn spawn_monitor(self: &Arc<Self>, every: Duration) -> CustodyMonitor {
        let sealer = Arc::clone(self);
        CustodyMonitor::spawn(every, move || {
            let sealer = Arc::clone(&sealer);
            async move { sealer.probe().await }
        })
    }
}

/// The background probe of [`CustodySealer::spawn_monitor`]; stops when dropped.
#[derive(Debug)]
pub struct CustodyMonitor {
    task: tokio::task::JoinHandle<()>,
}

impl CustodyMonitor {
    /// Probes with `probe` every `every` (the first probe after one interval).
    pub(crate) fn spawn<F, Fut>(every: Duration, probe: F) -> Self
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = bool> + Send,
    {
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                probe().await;
            }
        });
        Self { task }
    }
}

impl Drop for CustodyMonitor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Sealer for CustodySealer {
    fn authenticate(&self, message: &[u8]) -> Result<Mac, SealError> {
        self.current.load().authenticate(message)
    }

    fn check_authentication(&self, mac: &Mac, message: &[u8]) -> Result<(), SealError> {
        self.current.load().check_authentication(mac, message)
    }

    fn primary_key_id(&self) -> String {
        self.current.load().primary_key_id()
    }

    fn seal(&self, plaintext: &SecretBytes, ctx: &SealContext<'_>) -> Result<SealedKey, SealError> {
        if !self.up.load(Ordering::Acquire) {
            return Err(SealError::CustodyUnavailable {
                backend: self.keys.custody().backend().to_owned(),
            });
        }
        self.current.load().seal(plaintext, ctx)
    }

    fn open(&self, sealed: &SealedKey, ctx: &SealContext<'_>) -> Result<SecretBytes, SealError> {
        self.current.load().open(sealed, ctx)
    }

    fn custody(&self) -> Option<CustodyHealth> {
        Some(self.health())
    }
}
