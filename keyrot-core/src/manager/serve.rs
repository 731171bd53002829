//! Serving rings to requests: loading a ring once however many ask for it, answering
//! unknown names from memory, and verifying within the manager's unknown-kid budget.

use super::RingManager;
use super::cache::Loaded;
use crate::keyring::{KeyRing, RefreshError};
use crate::ring::RingName;
use crate::token::{self, TokenError, Validation, Verified};

impl RingManager {
    /// The ring's key ring if the store holds the ring, `None` for an unknown one, which
    /// is not loaded: a request naming random rings cannot fill the loaded set, and costs
    /// at most one store look-up per
    /// [`ManagerConfig::unknown_ring_lookup_interval`](super::ManagerConfig::unknown_ring_lookup_interval)
    /// for all names together (the rings the store holds are kept in memory). A ring is
    /// loaded once, however many requests ask for it at the same time. A retired ring is
    /// `None` too (it stays loaded, so asking again costs nothing).
    pub async fn existing_keyring(&self, ring: &RingName) -> Result<Option<KeyRing>, RefreshError> {
        let loaded = self.loaded().get(ring);
        let keyring = match loaded {
            Some(l) => l.keyring,
            None => {
                if !self.inner.known.exists(&*self.inner.storage, ring).await? {
                    return Ok(None);
                }
                self.load(ring).await?.keyring
            }
        };
        Ok(Some(keyring).filter(|k| !k.snapshot().is_retired()))
    }

    /// The loaded ring, loading it if needed: one load at a time per ring, and the
    /// requests that waited for it share its result.
    pub(super) async fn load(&self, ring: &RingName) -> Result<Loaded, RefreshError> {
        if let Some(l) = self.loaded().get(ring) {
            return Ok(l);
        }
        let gate = self.inner.load_flights.gate(ring);
        let _flight = gate.lock().await;
        if let Some(l) = self.loaded().get(ring) {
            return Ok(l);
        }
        let built = self.build_loaded(ring).await;
        self.inner.load_flights.done(ring);
        let loaded = built?;
        if loaded.keyring.snapshot().generation() > 0 {
            self.inner.known.add(ring);
        }
        Ok(self.loaded().insert(ring, loaded))
    }

    async fn build_loaded(&self, ring: &RingName) -> Result<Loaded, RefreshError> {
        let policy = self.policy(ring);
        let keyring = KeyRing::builder(ring.clone(), self.inner.storage.clone(), self.inner.sealer.clone())
            .with_clock(self.inner.clock.clone())
            .with_policy(policy.clone())
            .with_validation(self.inner.validation.clone())
            .build()
            .await?;
        let rotator = self.rotator_for(ring, policy, Some(keyring.clone()));
        Ok(Loaded { keyring, rotator })
    }

    /// Verifies `token` with `keyring` under `rules` now. On an unknown kid the ring is
    /// refreshed once, if the manager's unknown-kid budget
    /// ([`ManagerConfig::unknown_kid_refreshes_per_second`](super::ManagerConfig::unknown_kid_refreshes_per_second),
    /// one for all rings) has a refresh left; otherwise the kid is refused at once.
    pub async fn verify_within_budget(
        &self,
        keyring: &KeyRing,
        token: &str,
        rules: &Validation,
    ) -> Result<Verified, TokenError> {
        let now = || self.inner.clock.now();
        match keyring.verify_with(token, rules, now()) {
            Err(TokenError::UnknownKid) => {
                let kid = token::decode_header(token, rules)?.kid;
                if !keyring.snapshot().verifies(&kid) {
                    if !self.inner.unknown_kid_budget.take() {
                        tracing::debug!(ring = %keyring.ring(), "unknown kid: the manager's refresh budget is spent");
                        return Err(TokenError::UnknownKid);
                    }
                    crate::metrics::unknown_kid_refresh(keyring.ring());
                    if keyring.refresh().await.is_err() {
                        return Err(TokenError::UnknownKid);
                    }
                }
                keyring.verify_with(token, rules, now())
            }
            other => other,
        }
    }
}

impl RingManager {
    /// Now, on the manager's clock.
    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.inner.clock.now()
    }
}
