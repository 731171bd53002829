//! The `KeyRing` handle: signs, verifies and serves the JWKS from an in-memory snapshot
//! that is swapped atomically. The hot path takes no lock, does no I/O and parses no key.

use crate::clock::{Clock, SystemClock};
use crate::custody::{SigningCustody, SigningState};
use crate::key::KeyError;
use crate::policy::Policy;
use crate::ring::RingName;
use crate::seal::{SealError, Sealer};
use crate::storage::{ChangeFeed, Storage, StorageError};
use crate::token::{self, SignError, TokenError, Validation, Verified};
use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Mutex as AsyncMutex;

mod cache;
mod entry;
mod gauges;
mod public;
mod refresh;
mod snapshot;

pub(crate) use cache::{Anchor, Standing};
pub use cache::{
    DEFAULT_TOKEN_CACHE_BYTES, DEFAULT_TOKEN_CACHE_ENTRIES, TokenCache, TokenCacheConfig, TokenCacheStats,
};

pub(crate) use entry::retiring_window_end;
pub(crate) use public::{Verifiers, trusted_rows};
pub use refresh::RefresherHandle;
pub(crate) use refresh::{Follows, spawn_follower};
use snapshot::SignerKey;
pub use snapshot::{KeyStatus, Snapshot};

/// Why a snapshot could not be (re)built. The previous snapshot stays in use.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RefreshError {
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The Active key could not be unsealed, or the ring manifest checked (e.g. an
    /// unknown master key id).
    #[error("cannot open {kid}")]
    Seal {
        /// The key, or `ring manifest` for the ring's manifest.
        kid: String,
        /// The sealer's error (unknown master key id, failed authentication, …).
        #[source]
        source: SealError,
    },
    /// A stored key could not be parsed.
    #[error("stored key {kid} is unusable")]
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
    /// Successful verifications reused for repeated tokens (opt-in).
    token_cache: Option<TokenCache>,
    /// The HSM or KMS holding the ring's signing keys, when it holds them, with its health.
    signing: Option<Arc<SigningState>>,
    /// When the last refresh from storage succeeded (Unix milliseconds), for the metrics.
    last_refresh_ms: AtomicI64,
    /// The uses of a MAC or AEAD ring since the metrics last took them.
    symmetric_uses: crate::symmetric::Counts,
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
    eddsa_name: Option<crate::EdDsaName>,
    token_cache: Option<TokenCache>,
    signing: Option<Arc<dyn SigningCustody>>,
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

    /// Signs and publishes RFC 9864's `Ed25519` instead of `EdDSA` for Ed25519 keys
    /// ([`EdDsaName::Ed25519`](crate::EdDsaName::Ed25519)); `EdDSA` stays the default for
    /// compatibility. Verification accepts both names either way. It overrides
    /// [`Policy::eddsa_name`] of the policy given to [`KeyRingBuilder::with_policy`].
    pub fn with_eddsa_name(mut self, name: crate::EdDsaName) -> Self {
        self.eddsa_name = Some(name);
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

    /// Reuses successful verifications of repeated tokens from `cache` (see
    /// [`TokenCache`]): a hit skips the signature check but re-checks the token's time
    /// claims and that its key is still a verifying key of the current snapshot, so a
    /// revoked or expired key is refused at once. Off by default.
    pub fn with_token_cache(mut self, cache: TokenCache) -> Self {
        self.token_cache = Some(cache);
        self
    }

    /// The HSM or KMS that holds the ring's signing keys ([`SigningCustody`]): the Active
    /// key then signs through [`KeyRing::sign_async`]. The rotator that creates the keys
    /// must be given the same backend (`RotatorBuilder::with_keyring` takes it from here).
    pub fn with_signing_custody(mut self, custody: Arc<dyn SigningCustody>) -> Self {
        self.signing = Some(custody);
        self
    }

    /// Loads the ring and builds the first snapshot.
    pub async fn build(mut self) -> Result<KeyRing, RefreshError> {
        if let Some(name) = self.eddsa_name {
            self.policy.set_eddsa_name(name);
        }
        let now = self.clock.now();
        let ring = self.storage.load(&self.ring).await?;
        if !(1..=64).contains(&self.token_type.len()) || !self.token_type.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(RefreshError::InvalidTokenType);
        }
        let snap = Snapshot::build_with_type(&ring, &self.policy, &*self.sealer, now, &self.token_type)?;
        gauges::installed(&self.ring, &snap, &self.policy, now);
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
                token_cache: self.token_cache,
                signing: self.signing.map(|c| Arc::new(SigningState::new(c))),
                last_refresh_ms: AtomicI64::new(now.timestamp_millis()),
                symmetric_uses: crate::symmetric::Counts::default(),
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
            eddsa_name: None,
            token_cache: None,
            signing: None,
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

    /// The kind of key the ring holds, as its policy says: signing, MAC or AEAD.
    pub fn kind(&self) -> crate::KeyKind {
        self.inner.policy.algorithm().kind()
    }

    /// Refuses unless the ring holds keys of `wanted` kind.
    pub(crate) fn check_kind(&self, wanted: crate::KeyKind) -> Result<(), crate::SymmetricError> {
        let holds = self.kind();
        if holds == wanted {
            Ok(())
        } else {
            Err(crate::SymmetricError::WrongKind {
                ring: self.inner.ring.clone(),
                holds,
                wanted,
            })
        }
    }

    /// Runs `f` on the current snapshot's symmetric keys (borrowed, not cloned), when the
    /// ring holds keys of `wanted` kind.
    pub(crate) fn with_symmetric<T, E: From<crate::SymmetricError>>(
        &self,
        wanted: crate::KeyKind,
        f: impl FnOnce(&crate::symmetric::SymmetricKeys) -> Result<T, E>,
    ) -> Result<T, E> {
        self.check_kind(wanted)?;
        let snap = self.inner.snapshot.load();
        match snap.symmetric.as_deref().filter(|keys| keys.kind == wanted) {
            Some(keys) => f(keys),
            None => Err(crate::SymmetricError::NoActiveKey(self.inner.ring.clone()).into()),
        }
    }

    /// Counts one use of the ring's symmetric keys (`None`: refused).
    pub(crate) fn count_use(&self, what: crate::symmetric::Use, state: Option<crate::KeyState>) {
        self.inner.symmetric_uses.add(what, state);
    }

    /// Why the snapshot has no signer: a symmetric ring never has one.
    fn no_signer(&self) -> SignError {
        match self.kind() {
            crate::KeyKind::Signing => SignError::NoActiveKey,
            kind => SignError::NotASigningRing(kind),
        }
    }

    /// The ring's clock's now.
    pub(crate) fn now(&self) -> DateTime<Utc> {
        self.inner.clock.now()
    }

    /// The highest authenticated ring generation this handle ever served.
    pub fn highest_generation(&self) -> u64 {
        self.inner.highest_generation.load(Ordering::Acquire)
    }

    /// The health of the HSM or KMS holding the master keys, when they are under custody
    /// ([`crate::custody::CustodySealer`]).
    pub fn custody(&self) -> Option<crate::custody::CustodyHealth> {
        self.inner.sealer.custody()
    }

    /// Whether the last refresh failed (the snapshot may be out of date).
    pub fn is_stale(&self) -> bool {
        self.inner.stale.load(Ordering::Relaxed)
    }

    /// Signs `claims` with the Active key. `claims` must serialise to an object with a
    /// numeric `exp` no more than the policy's `max_token_ttl` ahead. When an HSM or KMS
    /// holds the Active key this answers [`SignError::RemoteKey`] at once rather than
    /// block: use [`KeyRing::sign_async`], which serves both kinds of ring.
    pub fn sign<C: Serialize + ?Sized>(&self, claims: &C) -> Result<String, SignError> {
        let snap = self.inner.snapshot.load();
        let signer = snap.signer.as_ref().ok_or_else(|| self.no_signer())?;
        let SignerKey::Local(key) = &signer.key else {
            return Err(SignError::RemoteKey);
        };
        token::sign(
            key,
            &signer.header_b64,
            claims,
            self.inner.clock.now().timestamp(),
            self.inner.policy.max_token_ttl().num_seconds(),
        )
    }

    /// Signs `claims` like [`KeyRing::sign`], with a key in this process or through the
    /// HSM or KMS that holds the Active key ([`KeyRingBuilder::with_signing_custody`]).
    /// A backend that does not sign is [`SignError::Custody`]; verifying is unaffected.
    pub async fn sign_async<C: Serialize + ?Sized>(&self, claims: &C) -> Result<String, SignError> {
        self.sign_async_with(claims, false).await
    }

    /// Issues an OAuth access token in the JWT profile (RFC 9068): the members of
    /// `request`, `iat` now, `exp` after its lifetime (at most the policy's
    /// `max_token_ttl`), a random 128-bit `jti`, signed by the Active key (in this process
    /// or through the HSM or KMS holding it) with the header `typ` `at+jwt`, whatever
    /// token type the ring was built with. Bad members are
    /// [`SignError::InvalidAccessToken`]; nothing is signed then.
    pub async fn issue_access_token(
        &self,
        request: &crate::AccessToken,
    ) -> Result<crate::IssuedAccessToken, SignError> {
        let now = self.inner.clock.now().timestamp();
        let (payload, lifetime) = request.payload(now, self.inner.policy.max_token_ttl())?;
        let token = self.sign_async_with(&payload, true).await?;
        Ok(crate::IssuedAccessToken::new(
            token,
            payload.jti,
            lifetime,
            payload.scope.unwrap_or_default(),
        ))
    }

    /// [`KeyRing::sign_async`] with the ring's header, or the access-token header.
    async fn sign_async_with<C: Serialize + ?Sized>(
        &self,
        claims: &C,
        access_token: bool,
    ) -> Result<String, SignError> {
        let signer = {
            let snap = self.inner.snapshot.load();
            let signer = snap.signer.as_ref().ok_or_else(|| self.no_signer())?;
            Arc::clone(signer)
        };
        let (now, ttl) = (
            self.inner.clock.now().timestamp(),
            self.inner.policy.max_token_ttl().num_seconds(),
        );
        let header = if access_token {
            &signer.access_header_b64
        } else {
            &signer.header_b64
        };
        let reference = match &signer.key {
            SignerKey::Local(key) => return token::sign(key, header, claims, now, ttl),
            SignerKey::Remote(reference) => reference,
        };
        let state = self.inner.signing.as_ref().ok_or_else(|| {
            SignError::Custody(crate::custody::CustodyError::Config(format!(
                "the active key {} is held by an HSM or KMS, and this ring was built without one \
                 (KeyRingBuilder::with_signing_custody)",
                signer.kid
            )))
        })?;
        let input = token::signing_input(header, claims, now, ttl)?;
        let started = std::time::Instant::now();
        let signed = state.custody.sign(reference, signer.alg, &input).await;
        let took = started.elapsed();
        crate::metrics::custody_operation(state.custody.backend(), "sign", signed.is_ok(), took);
        state.record(&signed.as_ref().map(drop).map_err(Clone::clone));
        token::finish(input, &signed.map_err(SignError::Custody)?)
    }

    /// The HSM or KMS holding the ring's signing keys, when one does.
    pub fn signing_custody(&self) -> Option<&Arc<dyn SigningCustody>> {
        self.inner.signing.as_ref().map(|s| &s.custody)
    }

    /// The health of the HSM or KMS holding the ring's signing keys, as its last probe or
    /// signing call found it (the status endpoint's `signing_custody` member).
    pub fn signing_custody_health(&self) -> Option<crate::custody::CustodyHealth> {
        self.inner.signing.as_ref().map(|s| s.health())
    }

    /// Probes the HSM or KMS holding the ring's signing keys every `every`, for
    /// `keyrot_signing_custody_up` and the status endpoint (a signing call that fails marks
    /// it down at once too); `None` when the ring's keys are in-process. Stops when the
    /// returned monitor is dropped.
    pub fn spawn_signing_monitor(&self, every: Duration) -> Option<crate::custody::CustodyMonitor> {
        let state = Arc::clone(self.inner.signing.as_ref()?);
        Some(crate::custody::CustodyMonitor::spawn(every, move || {
            let state = Arc::clone(&state);
            async move { state.probe().await }
        }))
    }

    /// Verifies a token against the snapshot, now.
    pub fn verify(&self, token: &str) -> Result<Verified, TokenError> {
        self.verify_at(token, self.inner.clock.now())
    }

    /// Verifies a token as of `at` (forensics, tests), with the ring's validation rules.
    pub fn verify_at(&self, token: &str, at: DateTime<Utc>) -> Result<Verified, TokenError> {
        self.verify_with(token, &self.inner.validation, at)
    }

    /// Verifies a token now with the configured rules, like [`Self::verify`], reading
    /// the claims straight into `T` with no claims map in between: the same header,
    /// signature and claim rules (duplicate members are refused at any depth), then
    /// claims that do not fit `T` are refused with [`TokenError::ClaimsShape`]. With a
    /// token cache, the cached claims map is what `T` is read from.
    pub fn verify_as<T: DeserializeOwned>(&self, token: &str) -> Result<Verified<T>, TokenError> {
        let cache = self.inner.token_cache.as_ref();
        let (v, at) = (&self.inner.validation, self.inner.clock.now());
        self.inner.snapshot.load().public.verify_as_using(token, v, at, cache)
    }

    /// Verifies with explicit rules.
    pub fn verify_with(&self, token: &str, v: &Validation, at: DateTime<Utc>) -> Result<Verified, TokenError> {
        let cache = self.inner.token_cache.as_ref();
        self.inner.snapshot.load().public.verify_using(token, v, at, cache)
    }

    /// The verified-token cache, when one is configured
    /// ([`KeyRingBuilder::with_token_cache`]).
    pub fn token_cache(&self) -> Option<&TokenCache> {
        self.inner.token_cache.as_ref()
    }

    /// Verifies, and on an unknown kid refreshes the snapshot once (rate limited) and
    /// tries again: a key that became Active on another instance a moment ago verifies.
    pub async fn verify_refreshing(&self, token: &str) -> Result<Verified, TokenError> {
        self.verify_refreshing_using(token, self.inner.token_cache.as_ref())
            .await
    }

    /// [`KeyRing::verify_refreshing`] through `cache` (the middleware's, or the ring's).
    pub(crate) async fn verify_refreshing_using(
        &self,
        token: &str,
        cache: Option<&TokenCache>,
    ) -> Result<Verified, TokenError> {
        let v = &self.inner.validation;
        let now = || self.inner.clock.now();
        match self.inner.snapshot.load().public.verify_using(token, v, now(), cache) {
            Err(TokenError::UnknownKid) => {
                let u = token::decode_header(token, v)?;
                if self.refresh_for_unknown_kid(&u.kid).await {
                    self.inner.snapshot.load().public.verify_using(token, v, now(), cache)
                } else {
                    Err(TokenError::UnknownKid)
                }
            }
            other => other,
        }
    }
}
