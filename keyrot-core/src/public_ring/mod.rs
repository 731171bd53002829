//! A public-only verifier over a keyrot store: verifies from the ring's published keys
//! without any [`Sealer`](crate::Sealer), for services that share the database but must
//! not hold the master key.

use crate::clock::{Clock, SystemClock};
use crate::integrity::TamperedKey;
use crate::jwks::Jwks;
use crate::keyring::{
    Follows, KeyStatus, RefreshError, RefresherHandle, Snapshot, TokenCache, Verifiers, spawn_follower, trusted_rows,
};
use crate::policy::Policy;
use crate::ring::{KeyOrigin, Ring, RingName};
use crate::storage::{ChangeFeed, Storage};
use crate::token::{self, TokenError, Validation, Verified};
use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use memory::Memory;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::Mutex as AsyncMutex;

mod memory;

/// Verifies tokens of a keyrot ring from its published keys, read from the shared store
/// with [`Storage::load_public`]: it holds no [`Sealer`](crate::Sealer), never reads a
/// sealed column, and cannot sign. It refreshes like a [`KeyRing`](crate::KeyRing) (the
/// change feed, a poll: [`PublicKeyRing::spawn_refresher`]) and verifies by the same code
/// path with the same rules: the same [`Validation`], the same header checks, and a
/// Retiring key refuses tokens from its `expires_at` on. Verifying never touches
/// storage, and an unknown `kid` does not trigger a reload: a new key reaches it by the
/// change feed or the poll (keyrot publishes a key `publish_lead` before it signs, so a
/// refresher polling more often than that sees every key before its first token).
///
/// # Trust
///
/// Without the master key it **cannot check the ring manifest's HMAC**, which is what
/// lets a `KeyRing` tell a row keyrot wrote from one written by anyone else with access
/// to the database. What it does check, on every load:
///
/// - **Removals stick:** a key it saw leave the published rows (revoked, expired,
///   deleted) never verifies again in this process, and a Retiring key's window only
///   shrinks (a stored `expires_at` moved later, or a Retiring row set back to Active,
///   keeps the earliest end it saw). Both hold within one refresh, whatever the
///   stored `generation` does: the column is not authenticated, so it is used only to
///   notice that something changed, never as a high-water mark (a column set to a huge
///   value and back would otherwise pin the handle to an old view). A restored backup
///   therefore cannot bring back a key this process saw revoked.
/// - **Self-consistent rows:** a row verifies only if its public key parses for its
///   algorithm, its `fingerprint` is the RFC 7638 thumbprint of that key, and, for a key
///   keyrot generated (any origin but `imported`), its `kid` is that thumbprint too.
/// - **A manifest is present:** a ring with keys but no manifest (one a `KeyRing` would
///   not trust either) verifies nothing.
/// - **Lifecycle and windows:** only published keys (Pending, Active, Retiring) verify,
///   a Retiring key only before its `expires_at`; every token rule of [`Validation`]
///   (issuer, audience, expiry, type, algorithm fixed by the key) applies.
///
/// What it cannot detect: **anyone who can write to the ring's tables can insert a key
/// pair of their own (or mark one published, or move a Retiring key's `expires_at`) and
/// it will be accepted**, since a self-consistent row is all it can ask for; a rollback
/// to an old state from before it started (a new process has no memory of removals);
/// and a key withheld or a window shortened (denial of service). So it is as
/// trustworthy as write access to
/// the database is restricted. The remote verifier (the JWKS fetched over HTTPS from the
/// issuer, `keyrot_jwks::JwksVerifier`) trusts the issuer's TLS certificate and its serving host
/// instead. Where a service can hold the master key, a `KeyRing` checks all of the above
/// and the manifest's HMAC over every row.
#[derive(Clone)]
pub struct PublicKeyRing {
    inner: Arc<Inner>,
}

struct Inner {
    ring: RingName,
    storage: Arc<dyn Storage>,
    clock: Arc<dyn Clock>,
    policy: Policy,
    validation: Validation,
    token_type: String,
    view: ArcSwap<View>,
    /// Held by a refresh; what it guards is what the handle remembers across refreshes.
    refresh_lock: AsyncMutex<Memory>,
    stale: AtomicBool,
    token_cache: Option<TokenCache>,
}

/// What a [`PublicKeyRing`] serves at one generation.
struct View {
    generation: u64,
    public: Verifiers,
    jwks: Jwks,
    keys: Vec<KeyStatus>,
    rejected: Vec<TamperedKey>,
}

impl std::fmt::Debug for PublicKeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let view = self.inner.view.load();
        f.debug_struct("PublicKeyRing")
            .field("ring", &self.inner.ring)
            .field("generation", &view.generation)
            .field("verifying", &view.public.by_kid.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Builds a [`PublicKeyRing`].
#[derive(Debug)]
pub struct PublicKeyRingBuilder {
    ring: RingName,
    storage: Arc<dyn Storage>,
    clock: Arc<dyn Clock>,
    policy: Policy,
    validation: Validation,
    token_type: String,
    token_cache: Option<TokenCache>,
}

impl PublicKeyRingBuilder {
    /// Reuses successful verifications of repeated tokens from `cache`, with the rules of
    /// [`KeyRingBuilder::with_token_cache`](crate::KeyRingBuilder::with_token_cache): a
    /// key that leaves the published rows invalidates its cached tokens at once.
    pub fn with_token_cache(mut self, cache: TokenCache) -> Self {
        self.token_cache = Some(cache);
        self
    }

    /// Clock (default: system).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Policy (the issuer's; it caps the JWKS's `max-age`; default: [`Policy::default`]).
    pub fn with_policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// Token validation rules (issuer, audience, leeway, required type).
    pub fn with_validation(mut self, validation: Validation) -> Self {
        self.validation = validation;
        self
    }

    /// The `typ` the issuer writes in its headers (default `JWT`), as
    /// [`KeyRingBuilder::with_token_type`](crate::KeyRingBuilder::with_token_type).
    pub fn with_token_type(mut self, typ: impl Into<String>) -> Self {
        self.token_type = typ.into();
        self
    }

    /// Loads the ring's public rows and builds the first view.
    pub async fn build(self) -> Result<PublicKeyRing, RefreshError> {
        if !(1..=64).contains(&self.token_type.len()) || !self.token_type.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(RefreshError::InvalidTokenType);
        }
        let mut ring = self.storage.load_public(&self.ring).await?;
        let mut memory = Memory::default();
        memory.narrow(&mut ring, []);
        let view = View::build(&ring, &self.policy, &self.token_type)?;
        Ok(PublicKeyRing {
            inner: Arc::new(Inner {
                view: ArcSwap::from_pointee(view),
                ring: self.ring,
                storage: self.storage,
                clock: self.clock,
                policy: self.policy,
                validation: self.validation,
                token_type: self.token_type,
                refresh_lock: AsyncMutex::new(memory),
                stale: AtomicBool::new(false),
                token_cache: self.token_cache,
            }),
        })
    }
}

impl View {
    fn build(ring: &Ring, policy: &Policy, token_type: &str) -> Result<Self, RefreshError> {
        let rejected = check_rows(ring);
        let accepted = |kid: &str| !rejected.iter().any(|t| t.kid == kid);
        let public = Verifiers::parse(ring.published().filter(|k| accepted(&k.kid)), token_type)?;
        let (_, jwks) = trusted_rows(ring, policy, accepted);
        if !rejected.is_empty() {
            tracing::error!(
                ring = %ring.name,
                generation = ring.generation,
                rejected = rejected.len(),
                "public key ring: published rows fail their consistency checks and never verify"
            );
        }
        Ok(Self {
            generation: ring.generation,
            public,
            jwks,
            keys: Snapshot::statuses(ring, &rejected),
            rejected,
        })
    }
}

/// The published rows that fail what a verifier without the master key can check.
fn check_rows(ring: &Ring) -> Vec<TamperedKey> {
    let unauthenticated = ring.manifest.is_none();
    ring.published()
        .filter_map(|k| {
            let reason = if unauthenticated {
                "not authenticated (the ring has no manifest)".to_owned()
            } else {
                match k.public_key() {
                    Err(e) => format!("the public key cannot be used: {}", crate::ErrorChain(&e)),
                    Ok(pk) => {
                        let thumbprint = pk.thumbprint();
                        if thumbprint != k.fingerprint {
                            "the fingerprint is not the thumbprint of the public key".to_owned()
                        } else if k.origin != KeyOrigin::Imported && k.kid != thumbprint {
                            "the kid of a generated key is not the thumbprint of its public key".to_owned()
                        } else {
                            return None;
                        }
                    }
                }
            };
            Some(TamperedKey {
                kid: k.kid.clone(),
                reason,
            })
        })
        .collect()
}

impl PublicKeyRing {
    /// Starts building a public verifier for `ring` over `storage`.
    pub fn builder(ring: RingName, storage: Arc<dyn Storage>) -> PublicKeyRingBuilder {
        PublicKeyRingBuilder {
            ring,
            storage,
            clock: Arc::new(SystemClock),
            policy: Policy::default(),
            validation: Validation::default(),
            token_type: token::DEFAULT_TOKEN_TYPE.to_owned(),
            token_cache: None,
        }
    }

    /// The ring's name.
    pub fn ring(&self) -> &RingName {
        &self.inner.ring
    }

    /// The validation rules.
    pub fn validation(&self) -> &Validation {
        &self.inner.validation
    }

    /// The generation of the view it serves.
    pub fn generation(&self) -> u64 {
        self.inner.view.load().generation
    }

    /// Whether the last refresh failed (the view may be out of date).
    pub fn is_stale(&self) -> bool {
        self.inner.stale.load(Ordering::Relaxed)
    }

    /// The JWKS of the keys it verifies with.
    pub fn jwks(&self) -> Jwks {
        self.inner.view.load().jwks.clone()
    }

    /// Every key's public facts; `tampered` names why a published row is not used.
    pub fn keys(&self) -> Vec<KeyStatus> {
        self.inner.view.load().keys.clone()
    }

    /// The published rows that fail the checks it can make, with why: they never verify.
    pub fn rejected(&self) -> Vec<TamperedKey> {
        self.inner.view.load().rejected.clone()
    }

    /// Whether `kid` is one of its verifying keys (whatever its validity window).
    pub fn verifies(&self, kid: &str) -> bool {
        self.inner.view.load().public.contains(kid)
    }

    /// Verifies a token now, with the configured rules.
    pub fn verify(&self, token: &str) -> Result<Verified, TokenError> {
        self.verify_at(token, self.inner.clock.now())
    }

    /// Verifies a token as of `at`, with the configured rules.
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
        self.inner.view.load().public.verify_as_using(token, v, at, cache)
    }

    /// Verifies with explicit rules.
    pub fn verify_with(&self, token: &str, v: &Validation, at: DateTime<Utc>) -> Result<Verified, TokenError> {
        let cache = self.inner.token_cache.as_ref();
        self.inner.view.load().public.verify_using(token, v, at, cache)
    }

    /// Reloads if the stored generation differs from the view's (higher or lower: the
    /// column is not authenticated); returns whether the view changed. On a storage
    /// failure the old view stays and the handle reports itself stale.
    pub async fn refresh(&self) -> Result<bool, RefreshError> {
        let mut memory = self.inner.refresh_lock.lock().await;
        let current = self.generation();
        let result = match self.inner.storage.generation(&self.inner.ring).await {
            Ok(g) if g == current => Ok(false),
            Ok(_) => self.reload_locked(&mut memory).await,
            Err(e) => Err(e.into()),
        };
        self.finish(&result);
        result
    }

    /// Reloads unconditionally (after a change-feed reconnect).
    pub async fn reload(&self) -> Result<bool, RefreshError> {
        let mut memory = self.inner.refresh_lock.lock().await;
        let result = self.reload_locked(&mut memory).await;
        self.finish(&result);
        result
    }

    fn finish(&self, result: &Result<bool, RefreshError>) {
        self.inner.stale.store(result.is_err(), Ordering::Relaxed);
        if let Err(e) = result {
            tracing::warn!(ring = %self.inner.ring, error = %crate::ErrorChain(e), "public key ring refresh failed; serving the last view");
        }
    }

    async fn reload_locked(&self, memory: &mut Memory) -> Result<bool, RefreshError> {
        let mut ring = self.inner.storage.load_public(&self.inner.ring).await?;
        let served = self.inner.view.load();
        if ring.generation < served.generation {
            tracing::warn!(
                ring = %self.inner.ring,
                found = ring.generation,
                served = served.generation,
                "the stored generation went back (a database rollback, or the column was altered): applying the \
                 rows; keys this handle saw removed stay removed and windows only shrink"
            );
        }
        memory.narrow(&mut ring, served.public.by_kid.keys().map(String::as_str));
        let view = View::build(&ring, &self.inner.policy, &self.inner.token_type)?;
        let changed = view.generation != served.generation;
        self.inner.view.store(Arc::new(view));
        Ok(changed)
    }

    /// Starts a task that keeps the view fresh: it follows `feed` (if any), polls the
    /// generation every `poll_interval` as a fallback, and reloads fully after a feed
    /// reconnect. Stop it with [`RefresherHandle::shutdown`].
    pub fn spawn_refresher(&self, feed: Option<Arc<dyn ChangeFeed>>, poll_interval: Duration) -> RefresherHandle {
        spawn_follower(self.clone(), feed, poll_interval)
    }
}

#[async_trait::async_trait]
impl Follows for PublicKeyRing {
    fn followed_ring(&self) -> &RingName {
        self.ring()
    }

    fn served_generation(&self) -> u64 {
        self.generation()
    }

    async fn refresh_now(&self) {
        let _ = self.refresh().await;
    }

    async fn reload_now(&self) {
        let _ = self.reload().await;
    }
}

#[async_trait::async_trait]
impl crate::verifier::TokenVerifier for PublicKeyRing {
    /// Verifies from the current view (no storage access on this path).
    async fn verify(&self, token: &str) -> Result<Verified, TokenError> {
        PublicKeyRing::verify(self, token)
    }

    async fn verify_cached(&self, token: &str, cache: &TokenCache) -> Result<Verified, TokenError> {
        let at = self.inner.clock.now();
        self.inner
            .view
            .load()
            .public
            .verify_cached(token, &self.inner.validation, at, cache)
    }
}

#[cfg(all(test, feature = "test-util"))]
mod tests {
    use super::*;
    use crate::storage::{
        AuditLinker, AuditQuery, AuditRecord, Commit, CommitOutcome, IdempotencyRecord, StorageError,
    };
    use crate::{KeyRing, MasterKey, MasterKeySealer, MemoryLock, MemoryStorage, RequestContext, Rotator};

    /// A store that does not override `load_public`: the trait's default serves it.
    #[derive(Debug)]
    struct Plain(MemoryStorage);

    #[async_trait::async_trait]
    impl Storage for Plain {
        async fn load(&self, ring: &RingName) -> Result<Ring, StorageError> {
            self.0.load(ring).await
        }
        async fn generation(&self, ring: &RingName) -> Result<u64, StorageError> {
            self.0.generation(ring).await
        }
        async fn commit(&self, c: &Commit, l: &dyn AuditLinker) -> Result<CommitOutcome, StorageError> {
            self.0.commit(c, l).await
        }
        async fn record_attempt(
            &self,
            a: &AuditRecord,
            i: Option<&IdempotencyRecord>,
            l: &dyn AuditLinker,
        ) -> Result<(), StorageError> {
            self.0.record_attempt(a, i, l).await
        }
        async fn audit_log(&self, ring: &RingName, q: AuditQuery) -> Result<Vec<AuditRecord>, StorageError> {
            self.0.audit_log(ring, q).await
        }
        async fn idempotency(&self, ring: &RingName, key: &str) -> Result<Option<IdempotencyRecord>, StorageError> {
            self.0.idempotency(ring, key).await
        }
    }

    async fn issuer(storage: MemoryStorage) -> (RingName, KeyRing) {
        let ring = RingName::new("public").expect("ring");
        let sealer = Arc::new(MasterKeySealer::new(MasterKey::generate("mk").expect("mk"), []).expect("sealer"));
        let keyring = KeyRing::builder(ring.clone(), Arc::new(storage.clone()), sealer.clone())
            .build()
            .await
            .expect("keyring");
        Rotator::builder(ring.clone(), Arc::new(storage), Arc::new(MemoryLock::default()), sealer)
            .with_keyring(keyring.clone())
            .build()
            .init(RequestContext::actor("test"))
            .await
            .expect("init");
        (ring, keyring)
    }

    fn claims() -> serde_json::Value {
        serde_json::json!({ "sub": "alice", "exp": Utc::now().timestamp() + 60 })
    }

    #[tokio::test]
    async fn the_default_load_public_drops_the_sealed_material() {
        let storage = MemoryStorage::new();
        let (ring, keyring) = issuer(storage.clone()).await;
        let plain = Plain(storage);
        assert!(
            plain
                .load(&ring)
                .await
                .expect("load")
                .keys
                .iter()
                .any(|k| k.sealed.is_some())
        );
        let public = plain.load_public(&ring).await.expect("load_public");
        assert!(public.keys.iter().all(|k| k.sealed.is_none()));
        let verifier = PublicKeyRing::builder(ring, Arc::new(plain))
            .build()
            .await
            .expect("public ring");
        let token = keyring.sign(&claims()).expect("sign");
        assert_eq!(verifier.verify(&token).expect("verifies").claims["sub"], "alice");
        assert!(format!("{verifier:?}").contains("PublicKeyRing"));
    }

    #[tokio::test]
    async fn a_ring_without_manifest_verifies_nothing() {
        let storage = MemoryStorage::new();
        let (ring, keyring) = issuer(storage.clone()).await;
        let token = keyring.sign(&claims()).expect("sign");
        let verifier = PublicKeyRing::builder(ring.clone(), Arc::new(storage.clone()))
            .build()
            .await
            .expect("public ring");
        assert!(verifier.verify(&token).is_ok());
        storage.tamper(&ring, |raw| {
            *raw.manifest = None;
            *raw.generation += 1;
        });
        assert_eq!(verifier.refresh().await.ok(), Some(true));
        assert!(matches!(verifier.verify(&token), Err(TokenError::UnknownKid)));
        assert_eq!(verifier.rejected().len(), 1);
        assert!(verifier.keys()[0].tampered.is_some());
        assert_eq!(verifier.jwks().body(), br#"{"keys":[]}"#);
    }

    #[tokio::test]
    async fn a_bad_token_type_is_refused() {
        let storage = MemoryStorage::new();
        let ring = RingName::new("public").expect("ring");
        let r = PublicKeyRing::builder(ring, Arc::new(storage))
            .with_token_type("")
            .build()
            .await;
        assert!(matches!(r, Err(RefreshError::InvalidTokenType)));
    }
}
