//! The `KeyRing` handle: signs, verifies and serves the JWKS from an in-memory snapshot
//! that is swapped atomically. The hot path takes no lock, does no I/O and parses no key.

use crate::alg::Algorithm;
use crate::clock::{Clock, SystemClock};
use crate::jwks::Jwks;
use crate::key::{KeyError, PrivateKey, SigningKey, VerifyingKey};
use crate::policy::Policy;
use crate::ring::{KeyOrigin, KeyRecord, KeyState, Ring, RingName};
use crate::seal::{SealContext, SealError, Sealer};
use crate::storage::{ChangeFeed, FeedEvent, Storage, StorageError};
use crate::token::{self, SignError, TokenError, Validation, Verified};
use arc_swap::ArcSwap;
use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;
use tokio::sync::{Mutex as AsyncMutex, watch};

/// Why a snapshot could not be (re)built. The previous snapshot stays in use.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RefreshError {
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The Active key could not be unsealed (e.g. an unknown master key id).
    #[error("cannot unseal the active key {kid}: {source}")]
    Seal {
        /// The key.
        kid: String,
        /// Why.
        #[source]
        source: SealError,
    },
    /// A stored key could not be parsed.
    #[error("stored key {kid} is unusable: {source}")]
    Key {
        /// The key.
        kid: String,
        /// Why.
        #[source]
        source: KeyError,
    },
}

struct ActiveSigner {
    kid: String,
    header_b64: String,
    key: SigningKey,
}

/// Public facts about one key (no key material), for status pages and CLIs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyStatus {
    /// Key id.
    pub kid: String,
    /// Algorithm.
    pub alg: Algorithm,
    /// State.
    pub state: KeyState,
    /// Origin.
    pub origin: KeyOrigin,
    /// Activated by the forced path.
    pub forced: bool,
    /// RFC 7638 thumbprint.
    pub fingerprint: String,
    /// Created (published).
    pub created_at: DateTime<Utc>,
    /// Due activation (Pending).
    pub activate_at: Option<DateTime<Utc>>,
    /// Activated.
    pub activated_at: Option<DateTime<Utc>>,
    /// Retired.
    pub retired_at: Option<DateTime<Utc>>,
    /// Due expiry (Retiring).
    pub expires_at: Option<DateTime<Utc>>,
    /// Expired.
    pub expired_at: Option<DateTime<Utc>>,
    /// Revoked.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Revocation reason.
    pub revoke_reason: Option<String>,
    /// Material destroyed.
    pub purged_at: Option<DateTime<Utc>>,
}

impl From<&KeyRecord> for KeyStatus {
    fn from(k: &KeyRecord) -> Self {
        KeyStatus {
            kid: k.kid.clone(),
            alg: k.alg,
            state: k.state,
            origin: k.origin,
            forced: k.forced,
            fingerprint: k.fingerprint.clone(),
            created_at: k.created_at,
            activate_at: k.activate_at,
            activated_at: k.activated_at,
            retired_at: k.retired_at,
            expires_at: k.expires_at,
            expired_at: k.expired_at,
            revoked_at: k.revoked_at,
            revoke_reason: k.revoke_reason.clone(),
            purged_at: k.purged_at,
        }
    }
}

/// An immutable view of a ring at one generation, with every key pre-parsed.
pub struct Snapshot {
    ring: RingName,
    generation: u64,
    signer: Option<ActiveSigner>,
    verifiers: HashMap<String, VerifyingKey>,
    /// The header segment keyrot writes for each published key → its kid: tokens carrying
    /// one of these skip header decoding.
    known_headers: HashMap<String, String>,
    jwks: Jwks,
    keys: Vec<KeyStatus>,
    loaded_at: DateTime<Utc>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("ring", &self.ring)
            .field("generation", &self.generation)
            .field("active", &self.signer.as_ref().map(|s| &s.kid))
            .field("verifying", &self.verifiers.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Snapshot {
    /// Builds a snapshot: parses every published key, unseals only the Active one.
    pub fn build(ring: &Ring, policy: &Policy, sealer: &dyn Sealer, now: DateTime<Utc>) -> Result<Self, RefreshError> {
        let mut verifiers = HashMap::new();
        let mut known_headers = HashMap::new();
        let mut signer = None;
        for k in ring.published() {
            let vk = k
                .public_key()
                .and_then(|pk| pk.verifying_key())
                .map_err(|source| RefreshError::Key {
                    kid: k.kid.clone(),
                    source,
                })?;
            verifiers.insert(k.kid.clone(), vk);
            known_headers.insert(token::encode_header(k.alg, &k.kid), k.kid.clone());
            if k.state == KeyState::Active {
                let sealed = k.sealed.as_ref().ok_or_else(|| RefreshError::Key {
                    kid: k.kid.clone(),
                    source: KeyError::Invalid("active key has no private material".into()),
                })?;
                let ctx = SealContext {
                    ring: ring.name.as_str(),
                    kid: &k.kid,
                    alg: k.alg,
                };
                let bytes = sealer.open(sealed, &ctx).map_err(|source| RefreshError::Seal {
                    kid: k.kid.clone(),
                    source,
                })?;
                let pk = PrivateKey::from_secret_bytes(k.alg, &bytes).map_err(|source| RefreshError::Key {
                    kid: k.kid.clone(),
                    source,
                })?;
                signer = Some(ActiveSigner {
                    kid: k.kid.clone(),
                    header_b64: token::encode_header(k.alg, &k.kid),
                    key: pk.signing_key(),
                });
            }
        }
        let keys = ring.keys.iter().map(KeyStatus::from).collect();
        Ok(Self {
            ring: ring.name.clone(),
            generation: ring.generation,
            signer,
            verifiers,
            known_headers,
            jwks: Jwks::render(ring, policy),
            keys,
            loaded_at: now,
        })
    }

    /// The generation this snapshot shows.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The Active kid.
    pub fn active_kid(&self) -> Option<&str> {
        self.signer.as_ref().map(|s| s.kid.as_str())
    }

    /// The JWKS.
    pub fn jwks(&self) -> &Jwks {
        &self.jwks
    }

    /// Every key's public facts.
    pub fn keys(&self) -> &[KeyStatus] {
        &self.keys
    }

    /// Whether `kid` verifies.
    pub fn verifies(&self, kid: &str) -> bool {
        self.verifiers.contains_key(kid)
    }

    /// When it was loaded.
    pub fn loaded_at(&self) -> DateTime<Utc> {
        self.loaded_at
    }
}

struct Inner {
    ring: RingName,
    storage: Arc<dyn Storage>,
    sealer: Arc<dyn Sealer>,
    clock: Arc<dyn Clock>,
    policy: Policy,
    validation: Validation,
    snapshot: ArcSwap<Snapshot>,
    refresh_lock: AsyncMutex<()>,
    unknown_kid_interval: TimeDelta,
    last_unknown_kid_refresh_ms: AtomicI64,
    stale: AtomicBool,
}

/// A cheap-to-clone handle to a ring's snapshot: sign, verify, JWKS, refresh.
#[derive(Clone)]
pub struct KeyRing {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("snapshot", &*self.inner.snapshot.load())
            .finish()
    }
}

/// Builds a [`KeyRing`].
#[derive(Debug)]
pub struct KeyRingBuilder {
    ring: RingName,
    storage: Arc<dyn Storage>,
    sealer: Arc<dyn Sealer>,
    clock: Arc<dyn Clock>,
    policy: Policy,
    validation: Validation,
    unknown_kid_interval: Duration,
}

impl KeyRingBuilder {
    /// Clock (default: system).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Policy (must be the one the rotator uses; default: [`Policy::default`]).
    pub fn with_policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// Token validation rules (issuer, audience, leeway).
    pub fn with_validation(mut self, validation: Validation) -> Self {
        self.validation = validation;
        self
    }

    /// Minimum time between refreshes triggered by unknown kids (default 10 s).
    pub fn with_unknown_kid_refresh_interval(mut self, d: Duration) -> Self {
        self.unknown_kid_interval = d;
        self
    }

    /// Loads the ring and builds the first snapshot.
    pub async fn build(self) -> Result<KeyRing, RefreshError> {
        let now = self.clock.now();
        let ring = self.storage.load(&self.ring).await?;
        let snap = Snapshot::build(&ring, &self.policy, &*self.sealer, now)?;
        Ok(KeyRing {
            inner: Arc::new(Inner {
                ring: self.ring,
                storage: self.storage,
                sealer: self.sealer,
                clock: self.clock,
                policy: self.policy,
                validation: self.validation,
                snapshot: ArcSwap::from_pointee(snap),
                refresh_lock: AsyncMutex::new(()),
                unknown_kid_interval: TimeDelta::from_std(self.unknown_kid_interval).unwrap_or(TimeDelta::MAX),
                last_unknown_kid_refresh_ms: AtomicI64::new(i64::MIN),
                stale: AtomicBool::new(false),
            }),
        })
    }
}

impl KeyRing {
    /// Starts building a handle for `ring`.
    pub fn builder(ring: RingName, storage: Arc<dyn Storage>, sealer: Arc<dyn Sealer>) -> KeyRingBuilder {
        KeyRingBuilder {
            ring,
            storage,
            sealer,
            clock: Arc::new(SystemClock),
            policy: Policy::default(),
            validation: Validation::default(),
            unknown_kid_interval: Duration::from_secs(10),
        }
    }

    /// The ring's name.
    pub fn ring(&self) -> &RingName {
        &self.inner.ring
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.inner.policy
    }

    /// The validation rules.
    pub fn validation(&self) -> &Validation {
        &self.inner.validation
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    /// The storage.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.inner.storage
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.inner.snapshot.load_full()
    }

    /// Whether the last refresh failed (the snapshot may be out of date).
    pub fn is_stale(&self) -> bool {
        self.inner.stale.load(Ordering::Relaxed)
    }

    /// Signs `claims` with the Active key. `claims` must serialise to an object with a
    /// numeric `exp` no more than the policy's `max_token_ttl` ahead.
    pub fn sign<C: Serialize + ?Sized>(&self, claims: &C) -> Result<String, SignError> {
        let snap = self.inner.snapshot.load();
        let signer = snap.signer.as_ref().ok_or(SignError::NoActiveKey)?;
        token::sign(
            &signer.key,
            &signer.header_b64,
            claims,
            self.inner.clock.now().timestamp(),
            self.inner.policy.max_token_ttl().num_seconds(),
        )
    }

    /// Verifies a token against the snapshot, now.
    pub fn verify(&self, token: &str) -> Result<Verified, TokenError> {
        self.verify_at(token, self.inner.clock.now())
    }

    /// Verifies a token as of `at` (forensics, tests), with the ring's validation rules.
    pub fn verify_at(&self, token: &str, at: DateTime<Utc>) -> Result<Verified, TokenError> {
        self.verify_with(token, &self.inner.validation, at)
    }

    /// Verifies with explicit rules.
    pub fn verify_with(&self, token: &str, v: &Validation, at: DateTime<Utc>) -> Result<Verified, TokenError> {
        let snap = self.inner.snapshot.load();
        if token.len() <= v.max_token_bytes()
            && let Some((header, _)) = token.split_once('.')
            && let Some(kid) = snap.known_headers.get(header)
            && let Some(key) = snap.verifiers.get(kid)
        {
            return token::decode_with_known_header(token, v, kid, key.algorithm())?.verify_with(
                key,
                v,
                at.timestamp(),
            );
        }
        token::verify(token, |kid| snap.verifiers.get(kid), v, at.timestamp())
    }

    /// Verifies, and on an unknown kid refreshes the snapshot once (rate limited) and
    /// tries again: a key that became Active on another instance a moment ago verifies.
    pub async fn verify_refreshing(&self, token: &str) -> Result<Verified, TokenError> {
        match self.verify(token) {
            Err(TokenError::UnknownKid) => {
                let u = token::decode_header(token, &self.inner.validation)?;
                if self.refresh_for_unknown_kid(&u.kid).await {
                    self.verify(token)
                } else {
                    Err(TokenError::UnknownKid)
                }
            }
            other => other,
        }
    }

    async fn refresh_for_unknown_kid(&self, kid: &str) -> bool {
        let now_ms = self.inner.clock.now().timestamp_millis();
        let last = self.inner.last_unknown_kid_refresh_ms.load(Ordering::Relaxed);
        if last != i64::MIN && now_ms.saturating_sub(last) < self.inner.unknown_kid_interval.num_milliseconds() {
            return false;
        }
        if self
            .inner
            .last_unknown_kid_refresh_ms
            .compare_exchange(last, now_ms, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            // Another request is refreshing right now; wait for it, then look again.
            let _g = self.inner.refresh_lock.lock().await;
            return self.inner.snapshot.load().verifiers.contains_key(kid);
        }
        tracing::debug!(ring = %self.inner.ring, "unknown kid: refreshing key ring");
        match self.refresh().await {
            Ok(_) => self.inner.snapshot.load().verifiers.contains_key(kid),
            Err(_) => false,
        }
    }

    /// Reloads the ring if its generation moved. Returns whether the snapshot changed.
    /// On failure the old snapshot stays and the ring reports itself stale.
    pub async fn refresh(&self) -> Result<bool, RefreshError> {
        let _g = self.inner.refresh_lock.lock().await;
        let result = self.refresh_locked().await;
        match &result {
            Ok(_) => self.inner.stale.store(false, Ordering::Relaxed),
            Err(e) => {
                self.inner.stale.store(true, Ordering::Relaxed);
                tracing::warn!(ring = %self.inner.ring, error = %e, "key ring refresh failed; serving the last snapshot");
            }
        }
        result
    }

    async fn refresh_locked(&self) -> Result<bool, RefreshError> {
        let current = self.inner.snapshot.load().generation;
        let g = self.inner.storage.generation(&self.inner.ring).await?;
        if g == current {
            return Ok(false);
        }
        self.reload_locked().await
    }

    /// Reloads unconditionally (after a change-feed reconnect).
    pub async fn reload(&self) -> Result<bool, RefreshError> {
        let _g = self.inner.refresh_lock.lock().await;
        let r = self.reload_locked().await;
        self.inner.stale.store(r.is_err(), Ordering::Relaxed);
        r
    }

    async fn reload_locked(&self) -> Result<bool, RefreshError> {
        let ring = self.inner.storage.load(&self.inner.ring).await?;
        let current = self.inner.snapshot.load().generation;
        if ring.generation < current {
            return Ok(false);
        }
        let snap = Snapshot::build(&ring, &self.inner.policy, &*self.inner.sealer, self.inner.clock.now())?;
        let changed = snap.generation != current;
        self.inner.snapshot.store(Arc::new(snap));
        if changed {
            tracing::info!(ring = %self.inner.ring, generation = ring.generation, "key ring snapshot updated");
        }
        Ok(changed)
    }

    /// Installs a snapshot of `ring` directly if it is newer (the rotator does this after
    /// committing, so the committing instance serves the change at once).
    pub async fn install(&self, ring: &Ring) -> Result<(), RefreshError> {
        let _g = self.inner.refresh_lock.lock().await;
        if ring.name != self.inner.ring || ring.generation <= self.inner.snapshot.load().generation {
            return Ok(());
        }
        let snap = Snapshot::build(ring, &self.inner.policy, &*self.inner.sealer, self.inner.clock.now())?;
        self.inner.snapshot.store(Arc::new(snap));
        Ok(())
    }

    /// Starts a task that keeps the snapshot fresh: it follows `feed` (if any), polls the
    /// generation every `poll_interval` as a fallback, and reloads fully after a feed
    /// reconnect. Stop it with [`RefresherHandle::shutdown`].
    pub fn spawn_refresher(&self, feed: Option<Arc<dyn ChangeFeed>>, poll_interval: Duration) -> RefresherHandle {
        let (tx, mut rx) = watch::channel(false);
        let ring = self.clone();
        let join = tokio::spawn(async move {
            let mut stream = None;
            let mut poll = tokio::time::interval(poll_interval);
            poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                if stream.is_none()
                    && let Some(f) = &feed
                {
                    match f.subscribe(ring.ring()).await {
                        Ok(s) => {
                            stream = Some(s);
                            // Anything sent while we were not listening is lost.
                            let _ = ring.reload().await;
                        }
                        Err(e) => tracing::warn!(error = %e, "change feed subscribe failed; polling"),
                    }
                }
                tokio::select! {
                    _ = rx.changed() => break,
                    _ = poll.tick() => { let _ = ring.refresh().await; }
                    ev = async {
                        match stream.as_mut() {
                            Some(s) => s.next().await,
                            None => std::future::pending().await,
                        }
                    } => {
                        match ev {
                            Ok(FeedEvent::Changed(g)) if g > ring.snapshot().generation() => { let _ = ring.refresh().await; }
                            Ok(FeedEvent::Changed(_)) => {}
                            Ok(FeedEvent::Resync) => { let _ = ring.reload().await; }
                            Err(e) => {
                                tracing::warn!(error = %e, "change feed failed; resubscribing");
                                stream = None;
                            }
                        }
                    }
                }
            }
        });
        RefresherHandle { tx, join }
    }
}

/// Stops a refresher task.
#[derive(Debug)]
pub struct RefresherHandle {
    tx: watch::Sender<bool>,
    join: tokio::task::JoinHandle<()>,
}

impl RefresherHandle {
    /// Asks the task to stop and waits for it.
    pub async fn shutdown(self) {
        let _ = self.tx.send(true);
        let _ = self.join.await;
    }
}
