//! The `KeyRing` handle: signs, verifies and serves the JWKS from an in-memory snapshot
//! that is swapped atomically. The hot path takes no lock, does no I/O and parses no key.

use crate::alg::Algorithm;
use crate::clock::{Clock, SystemClock};
use crate::integrity::{IntegrityReport, TamperedKey};
use crate::jwks::Jwks;
use crate::key::{KeyError, PrivateKey, SigningKey, VerifyingKey};
use crate::policy::Policy;
use crate::ring::{KeyOrigin, KeyRecord, KeyState, Ring, RingName};
use crate::seal::{SealContext, SealError, Sealer};
use crate::storage::{ChangeFeed, FeedEvent, Storage, StorageError};
use crate::token::{self, SignError, TokenError, Validation, Verified};
use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{Mutex as AsyncMutex, watch};

/// Why a snapshot could not be (re)built. The previous snapshot stays in use.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RefreshError {
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The Active key could not be unsealed, or the ring manifest checked (e.g. an
    /// unknown master key id).
    #[error("cannot open {kid}: {source}")]
    Seal {
        /// The key, or `ring manifest` for the ring's manifest.
        kid: String,
        /// The sealer's error (unknown master key id, failed authentication, …).
        #[source]
        source: SealError,
    },
    /// A stored key could not be parsed.
    #[error("stored key {kid} is unusable: {source}")]
    Key {
        /// The kid of the stored key that could not be parsed.
        kid: String,
        /// The parse error (bad key bytes, or an algorithm this build does not support).
        #[source]
        source: KeyError,
    },
    /// The configured token type (`typ`) is not 1-64 printable ASCII characters.
    #[error("token type must be 1-64 printable ASCII characters")]
    InvalidTokenType,
    /// Storage shows an older generation than this instance already served: a rollback
    /// of the database (which could resurrect revoked keys) is never accepted.
    #[error("storage went back to generation {found} after this instance served generation {served}: refused")]
    Rollback {
        /// What storage shows.
        found: u64,
        /// The highest generation served.
        served: u64,
    },
}

/// What [`RefreshError::Seal`] names when the ring manifest could not be checked.
const MANIFEST: &str = "ring manifest";

/// A verifying key and the end of its validity window.
struct VerifierEntry {
    key: VerifyingKey,
    /// A Retiring key verifies only before its `expires_at`, whatever ticks ran and
    /// however old the snapshot is.
    not_after: Option<DateTime<Utc>>,
}

impl VerifierEntry {
    fn check(&self, at: DateTime<Utc>) -> Result<&VerifyingKey, TokenError> {
        match self.not_after {
            Some(end) if at >= end => Err(TokenError::KeyExpired),
            _ => Ok(&self.key),
        }
    }
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
    /// The JWS algorithm the key signs with (its `alg` in the JWKS).
    pub alg: Algorithm,
    /// Where the key is in its life: Pending, Active, Retiring or Expired.
    pub state: KeyState,
    /// How the key entered the ring (bootstrap, scheduled, rotation request, forced,
    /// imported).
    pub origin: KeyOrigin,
    /// Whether the key was activated by the forced path (emergency rotation or an import
    /// made Active at once), which bypasses `publish_lead` and `min_interval`.
    pub forced: bool,
    /// The RFC 7638 thumbprint of the public key.
    pub fingerprint: String,
    /// When the key was created; it is published (in the JWKS) from then on.
    pub created_at: DateTime<Utc>,
    /// When the key is (or was) due to activate: set when it is added, Pending or Active;
    /// `None` only for rows written without one (read as `publish_lead` after creation).
    pub activate_at: Option<DateTime<Utc>>,
    /// When the key started signing; `None` if it never became Active.
    pub activated_at: Option<DateTime<Utc>>,
    /// When the key stopped signing (Active → Retiring, or revoked while Active); `None`
    /// while it has not.
    pub retired_at: Option<DateTime<Utc>>,
    /// When a Retiring key's grace ends and it leaves the JWKS (`retire_grace` after it
    /// retired); `None` for a key that never retired normally.
    pub expires_at: Option<DateTime<Utc>>,
    /// When the key became Expired (grace over, or revoked); `None` while it is published.
    pub expired_at: Option<DateTime<Utc>>,
    /// When the key was revoked; `None` if it was not (a revoked key is also Expired).
    pub revoked_at: Option<DateTime<Utc>>,
    /// The reason given for the revocation; `None` if the key was not revoked.
    pub revoke_reason: Option<String>,
    /// When the private material was destroyed (`purge_after` after expiry); `None` while
    /// it is still stored. The metadata stays.
    pub purged_at: Option<DateTime<Utc>>,
    /// Why the row failed its integrity check, if it did: it never verifies.
    pub tampered: Option<String>,
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
            tampered: None,
        }
    }
}

/// An immutable view of a ring at one generation, with every key pre-parsed.
pub struct Snapshot {
    ring: RingName,
    generation: u64,
    signer: Option<Arc<ActiveSigner>>,
    verifiers: HashMap<String, Arc<VerifierEntry>>,
    /// The authentic rows (without sealed material), to re-render the JWKS when a
    /// snapshot is narrowed ([`Snapshot::narrowed_by`]).
    trusted_keys: Vec<KeyRecord>,
    /// The header segment keyrot writes for each published key → its kid: tokens carrying
    /// one of these skip header decoding.
    known_headers: HashMap<String, String>,
    jwks: Jwks,
    keys: Vec<KeyStatus>,
    integrity: IntegrityReport,
    /// The `typ` keyrot writes in headers it signs.
    token_type: String,
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
    /// Builds a snapshot: checks every row against the ring's authenticated manifest,
    /// parses every published key that passes, unseals only the Active one (and checks
    /// that its public key is the stored one). A row that fails never verifies, is
    /// reported ([`Snapshot::integrity`], an error event) and does not stop the others.
    ///
    /// This is a read-only view (`keyrotctl status` inspects a ring with it); only the
    /// ring's own [`KeyRing`] and rotator install snapshots.
    pub fn build(ring: &Ring, policy: &Policy, sealer: &dyn Sealer, now: DateTime<Utc>) -> Result<Self, RefreshError> {
        Self::build_with_type(ring, policy, sealer, now, token::DEFAULT_TOKEN_TYPE)
    }

    /// [`Snapshot::build`] for a ring that signs tokens with header `typ` `token_type`
    /// (explicit typing, RFC 8725 §3.11, e.g. `at+jwt`).
    pub(crate) fn build_with_type(
        ring: &Ring,
        policy: &Policy,
        sealer: &dyn Sealer,
        now: DateTime<Utc>,
        token_type: &str,
    ) -> Result<Self, RefreshError> {
        let mut integrity = crate::integrity::check_ring(ring, sealer);
        if let crate::integrity::RingIntegrity::UnknownMasterKey(id) = &integrity.integrity {
            return Err(RefreshError::Seal {
                kid: MANIFEST.into(),
                source: SealError::UnknownMasterKey(id.clone()),
            });
        }
        let mut verifiers = HashMap::new();
        let mut known_headers = HashMap::new();
        let mut signer = None;
        let candidates: Vec<&KeyRecord> = ring.published().filter(|k| integrity.trusts(&k.kid)).collect();
        for k in candidates {
            let vk = k
                .public_key()
                .and_then(|pk| pk.verifying_key())
                .map_err(|source| RefreshError::Key {
                    kid: k.kid.clone(),
                    source,
                })?;
            if k.state == KeyState::Active {
                match Self::active_signer(ring, k, sealer, token_type) {
                    Ok(Some(s)) => signer = Some(Arc::new(s)),
                    Ok(None) => {
                        integrity.add_tampered(TamperedKey {
                            kid: k.kid.clone(),
                            reason: "the public key does not match the sealed private key".into(),
                        });
                        continue;
                    }
                    // A master key this process lacks is a configuration error: fail closed.
                    Err(
                        e @ RefreshError::Seal {
                            source: SealError::UnknownMasterKey(_),
                            ..
                        },
                    ) => return Err(e),
                    // Anything else about this one row: it never signs; the rest serves.
                    Err(e) => {
                        integrity.add_tampered(TamperedKey {
                            kid: k.kid.clone(),
                            reason: format!("the private key cannot be used: {e}"),
                        });
                        continue;
                    }
                }
            }
            let not_after = match k.state {
                KeyState::Retiring => Some(k.expires_at.unwrap_or(k.retired_at.unwrap_or(k.created_at))),
                _ => None,
            };
            verifiers.insert(k.kid.clone(), Arc::new(VerifierEntry { key: vk, not_after }));
            known_headers.insert(token::encode_header_with_type(k.alg, &k.kid, token_type), k.kid.clone());
        }
        if !integrity.is_intact() {
            tracing::error!(
                ring = %ring.name,
                generation = ring.generation,
                integrity = %integrity.summary(),
                "key ring fails its integrity check: the rows named never verify"
            );
        }
        let trusted = Ring {
            name: ring.name.clone(),
            generation: ring.generation,
            keys: ring.keys.iter().filter(|k| integrity.trusts(&k.kid)).cloned().collect(),
            manifest: None,
        };
        let keys = ring
            .keys
            .iter()
            .map(|k| {
                let mut st = KeyStatus::from(k);
                st.tampered = integrity
                    .tampered
                    .iter()
                    .find(|t| t.kid == k.kid)
                    .map(|t| t.reason.clone());
                st
            })
            .collect();
        Ok(Self {
            ring: ring.name.clone(),
            generation: ring.generation,
            signer,
            verifiers,
            known_headers,
            jwks: Jwks::render(&trusted, policy),
            trusted_keys: trusted
                .keys
                .into_iter()
                .map(|mut k| {
                    k.sealed = None;
                    k
                })
                .collect(),
            keys,
            integrity,
            token_type: token_type.to_owned(),
            loaded_at: now,
        })
    }

    /// Unseals the Active key; `None` when its public half is not the stored public key.
    fn active_signer(
        ring: &Ring,
        k: &KeyRecord,
        sealer: &dyn Sealer,
        token_type: &str,
    ) -> Result<Option<ActiveSigner>, RefreshError> {
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
        let stored = k.public_key().map_err(|source| RefreshError::Key {
            kid: k.kid.clone(),
            source,
        })?;
        if pk.public_key().thumbprint() != stored.thumbprint() {
            return Ok(None);
        }
        Ok(Some(ActiveSigner {
            kid: k.kid.clone(),
            header_b64: token::encode_header_with_type(k.alg, &k.kid, token_type),
            key: pk.signing_key(),
        }))
    }

    /// The generation the snapshot's manifest authenticates (0 without one): what an
    /// instance never goes back from.
    pub fn authenticated_generation(&self) -> u64 {
        self.integrity.authenticated_generation().unwrap_or(0)
    }

    /// This snapshot with every change that can only *remove* trust applied from `raw`, a
    /// newer stored state that could not be accepted (it fails authentication, or goes
    /// back to an older authenticated generation): keys whose stored row is gone or no
    /// longer published stop verifying, a Retiring key's window only shrinks, and the
    /// signer stops unless its stored row is still the Active one. Nothing is added. So
    /// a revocation reaches an instance even while someone corrupts the manifest. `None`
    /// when nothing would change.
    pub fn narrowed_by(&self, raw: &Ring, policy: &Policy, now: DateTime<Utc>) -> Option<Snapshot> {
        let mut verifiers = HashMap::new();
        let mut changed = false;
        for (kid, entry) in &self.verifiers {
            let Some(row) = raw.key(kid) else {
                changed = true;
                continue;
            };
            if !row.state.is_published() {
                changed = true;
                continue;
            }
            let mut not_after = entry.not_after;
            if row.state == KeyState::Retiring {
                let end = row.expires_at.unwrap_or(now);
                if not_after.is_none_or(|n| end < n) {
                    not_after = Some(end);
                    changed = true;
                }
            }
            if not_after == entry.not_after {
                verifiers.insert(kid.clone(), entry.clone());
            } else {
                verifiers.insert(
                    kid.clone(),
                    Arc::new(VerifierEntry {
                        key: entry.key.clone(),
                        not_after,
                    }),
                );
            }
        }
        let signer = self
            .signer
            .as_ref()
            .filter(|s| raw.key(&s.kid).is_some_and(|r| r.state == KeyState::Active) && verifiers.contains_key(&s.kid))
            .cloned();
        if signer.is_none() && self.signer.is_some() {
            changed = true;
        }
        if !changed {
            return None;
        }
        let trusted_keys: Vec<KeyRecord> = self
            .trusted_keys
            .iter()
            .filter(|k| !k.state.is_published() || verifiers.contains_key(&k.kid))
            .cloned()
            .collect();
        let ring = Ring {
            name: self.ring.clone(),
            generation: self.generation,
            keys: trusted_keys.clone(),
            manifest: None,
        };
        let known_headers = self
            .known_headers
            .iter()
            .filter(|(_, kid)| verifiers.contains_key(*kid))
            .map(|(h, kid)| (h.clone(), kid.clone()))
            .collect();
        Some(Snapshot {
            ring: self.ring.clone(),
            generation: self.generation,
            signer,
            verifiers,
            trusted_keys,
            known_headers,
            jwks: Jwks::render(&ring, policy),
            keys: self.keys.clone(),
            integrity: self.integrity.clone(),
            token_type: self.token_type.clone(),
            loaded_at: now,
        })
    }

    /// The result of the integrity check this snapshot was built with.
    pub fn integrity(&self) -> &IntegrityReport {
        &self.integrity
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

    /// Whether `kid` is one of the snapshot's verifying keys (published and authentic),
    /// whatever its validity window; [`Snapshot::verifies_at`] also applies the window.
    pub fn verifies(&self, kid: &str) -> bool {
        self.verifiers.contains_key(kid)
    }

    /// Whether a token of `kid` verifies at `at`: a verifying key, and a Retiring key
    /// only before its `expires_at`.
    pub fn verifies_at(&self, kid: &str, at: DateTime<Utc>) -> bool {
        self.verifiers.get(kid).is_some_and(|e| e.check(at).is_ok())
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
    unknown_kid_interval: Duration,
    token_type: String,
    /// Single flight for unknown-kid refreshes: when the last one started.
    unknown_kid_gate: AsyncMutex<Option<tokio::time::Instant>>,
    /// How many unknown-kid refreshes have started.
    unknown_kid_started: AtomicU64,
    /// The highest generation this handle ever served: storage going back is refused.
    highest_generation: AtomicU64,
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
    token_type: String,
}

impl KeyRingBuilder {
    /// The `typ` of the tokens this ring signs (default `JWT`): e.g. `at+jwt` for OAuth
    /// access tokens (RFC 9068), so verifiers can require it
    /// ([`Validation::with_required_type`]).
    pub fn with_token_type(mut self, typ: impl Into<String>) -> Self {
        self.token_type = typ.into();
        self
    }

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

    /// Minimum time between refreshes triggered by unknown kids (default 1 s). Requests
    /// that meet an unknown kid within it wait for the next refresh (at most this long)
    /// and share it: a flood of random kids costs at most one storage query per interval.
    pub fn with_unknown_kid_refresh_interval(mut self, d: Duration) -> Self {
        self.unknown_kid_interval = d;
        self
    }

    /// Loads the ring and builds the first snapshot.
    pub async fn build(self) -> Result<KeyRing, RefreshError> {
        let now = self.clock.now();
        let ring = self.storage.load(&self.ring).await?;
        if !(1..=64).contains(&self.token_type.len()) || !self.token_type.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(RefreshError::InvalidTokenType);
        }
        let snap = Snapshot::build_with_type(&ring, &self.policy, &*self.sealer, now, &self.token_type)?;
        let served = snap.authenticated_generation();
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
                unknown_kid_interval: self.unknown_kid_interval,
                token_type: self.token_type,
                unknown_kid_gate: AsyncMutex::new(None),
                unknown_kid_started: AtomicU64::new(0),
                highest_generation: AtomicU64::new(served),
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
            unknown_kid_interval: Duration::from_secs(1),
            token_type: token::DEFAULT_TOKEN_TYPE.to_owned(),
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

    /// The highest authenticated ring generation this handle ever served.
    pub fn highest_generation(&self) -> u64 {
        self.inner.highest_generation.load(Ordering::Acquire)
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
            && let Some(entry) = snap.verifiers.get(kid)
        {
            let key = entry.check(at)?;
            return token::decode_with_known_typed_header(token, v, kid, key.algorithm(), Some(&snap.token_type))?
                .verify_with(key, v, at.timestamp());
        }
        let u = token::decode_header(token, v)?;
        let key = snap.verifiers.get(&u.kid).ok_or(TokenError::UnknownKid)?.check(at)?;
        u.verify_with(key, v, at.timestamp())
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

    /// At most one refresh per interval, shared by every request waiting on it: a request
    /// that meets an unknown kid waits for the next refresh that starts after it arrived
    /// (at most one interval), so a real new kid is delayed by at most that, and a flood
    /// of random kids costs one generation query per interval.
    async fn refresh_for_unknown_kid(&self, kid: &str) -> bool {
        let arrived = self.inner.unknown_kid_started.load(Ordering::Acquire);
        let mut gate = self.inner.unknown_kid_gate.lock().await;
        if self.inner.snapshot.load().verifiers.contains_key(kid) {
            return true;
        }
        if self.inner.unknown_kid_started.load(Ordering::Acquire) != arrived {
            // A refresh started (and, since it ran under the gate, finished) after this
            // request arrived: storage was consulted; the kid is not there.
            return false;
        }
        if let Some(last) = *gate {
            tokio::time::sleep_until(last + self.inner.unknown_kid_interval).await;
        }
        *gate = Some(tokio::time::Instant::now());
        self.inner.unknown_kid_started.fetch_add(1, Ordering::AcqRel);
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
        match self.accept(&ring) {
            Ok(changed) => Ok(changed),
            Err(e) => {
                // Storage moved on but its state cannot be accepted: still apply what can
                // only remove trust (a revocation, an expiry), then report.
                let current = self.inner.snapshot.load_full();
                if let Some(narrowed) = current.narrowed_by(&ring, &self.inner.policy, self.inner.clock.now()) {
                    tracing::error!(
                        ring = %self.inner.ring,
                        error = %e,
                        "stored ring refused; keys it no longer publishes stop verifying here"
                    );
                    self.inner.snapshot.store(Arc::new(narrowed));
                }
                Err(e)
            }
        }
    }

    fn accept(&self, ring: &Ring) -> Result<bool, RefreshError> {
        let current = self.inner.snapshot.load().generation;
        let snap = Snapshot::build_with_type(
            ring,
            &self.inner.policy,
            &*self.inner.sealer,
            self.inner.clock.now(),
            &self.inner.token_type,
        )?;
        self.check_not_older(&snap)?;
        let changed = snap.generation != current;
        self.store(snap);
        if changed {
            tracing::info!(ring = %self.inner.ring, generation = ring.generation, "key ring snapshot updated");
        }
        Ok(changed)
    }

    /// Installs a snapshot of `ring` directly if it is newer (the rotator does this after
    /// committing, so the committing instance serves the change at once).
    pub(crate) async fn install(&self, ring: &Ring) -> Result<(), RefreshError> {
        let _g = self.inner.refresh_lock.lock().await;
        if ring.name != self.inner.ring || ring.generation <= self.inner.snapshot.load().generation {
            return Ok(());
        }
        let snap = Snapshot::build_with_type(
            ring,
            &self.inner.policy,
            &*self.inner.sealer,
            self.inner.clock.now(),
            &self.inner.token_type,
        )?;
        self.check_not_older(&snap)?;
        self.store(snap);
        Ok(())
    }

    /// Refuses a snapshot whose authenticated generation is older than one this handle
    /// served (a rollback of the store, which could resurrect revoked keys).
    fn check_not_older(&self, snap: &Snapshot) -> Result<(), RefreshError> {
        let served = self.highest_generation();
        let found = snap.authenticated_generation();
        if found < served {
            tracing::error!(
                ring = %self.inner.ring,
                found,
                served,
                "storage went back to an older generation (a database rollback?): keeping the snapshot"
            );
            return Err(RefreshError::Rollback { found, served });
        }
        Ok(())
    }

    fn store(&self, snap: Snapshot) {
        self.inner
            .highest_generation
            .fetch_max(snap.authenticated_generation(), Ordering::AcqRel);
        self.inner.snapshot.store(Arc::new(snap));
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
