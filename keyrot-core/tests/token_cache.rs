//! The verified-token cache (issue 12): a repeated token is answered without a signature
//! check, and each invalidation rule holds at once — a revoked key, a key past its window,
//! a token past its `exp`, a new snapshot, the memory bound — with the same answer an
//! uncached ring gives.

use chrono::{TimeDelta, TimeZone, Utc};
use keyrot_core::testing::token::{encode_header_with_type, sign};
use keyrot_core::{
    Algorithm, Clock, ImportState, ImportedKey, KeyRing, KeySet, ManualClock, MasterKey, MasterKeySealer, MemoryLock,
    MemoryStorage, PrivateKey, RequestContext, RingName, Rotator, RsaBits, SigningKey, TokenCache, TokenCacheConfig,
    TokenError, Validation,
};
use serde_json::json;
use std::sync::Arc;

struct Setup {
    clock: ManualClock,
    /// The ring with a cache.
    cached: KeyRing,
    /// The same ring without one: the reference answer.
    plain: KeyRing,
    cache: TokenCache,
    rotator: Rotator,
}

async fn setup(config: TokenCacheConfig) -> Setup {
    setup_with("cached", TokenCache::new(config)).await
}

/// Ring `name` on its own store, verifying through `cache`, initialised.
async fn setup_with(name: &str, cache: TokenCache) -> Setup {
    let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 6, 1, 8, 0, 0).single().expect("time"));
    let storage = Arc::new(MemoryStorage::new());
    let sealer = Arc::new(MasterKeySealer::new(MasterKey::generate("mk").expect("mk"), []).expect("sealer"));
    let ring = RingName::new(name).expect("ring");
    let cached = KeyRing::builder(ring.clone(), storage.clone(), sealer.clone())
        .with_clock(Arc::new(clock.clone()))
        .with_token_cache(cache.clone())
        .build()
        .await
        .expect("keyring");
    let plain = KeyRing::builder(ring.clone(), storage.clone(), sealer.clone())
        .with_clock(Arc::new(clock.clone()))
        .build()
        .await
        .expect("keyring");
    let lock = Arc::new(MemoryLock::new(Arc::new(clock.clone())));
    let rotator = Rotator::builder(ring, storage, lock, sealer)
        .with_clock(Arc::new(clock.clone()))
        .with_keyring(cached.clone())
        .build();
    rotator.init(ctx()).await.expect("init");
    Setup {
        clock,
        cached,
        plain,
        cache,
        rotator,
    }
}

fn ctx() -> RequestContext {
    RequestContext::actor("test")
}

impl Setup {
    fn token(&self, sub: &str, ttl: i64) -> String {
        let now = self.clock.now().timestamp();
        self.cached
            .sign(&json!({"sub": sub, "iat": now, "exp": now + ttl}))
            .expect("sign")
    }

    /// Verifies with the cached ring, checks the uncached ring gives the same answer.
    async fn verify(&self, token: &str) -> Result<keyrot_core::Verified, TokenError> {
        self.plain.refresh().await.expect("refresh");
        let cached = self.cached.verify(token);
        let plain = self.plain.verify(token);
        assert_eq!(
            cached.as_ref().map(|v| (&v.kid, &v.claims)).map_err(Clone::clone),
            plain.as_ref().map(|v| (&v.kid, &v.claims)).map_err(Clone::clone),
            "the cache changes no answer"
        );
        cached
    }
}

#[tokio::test]
async fn a_repeated_token_is_a_hit_with_the_same_claims() {
    let s = setup(TokenCacheConfig::new()).await;
    let token = s.token("alice", 600);
    let first = s.verify(&token).await.expect("verifies");
    assert_eq!(s.cache.stats().entries, 1);
    for _ in 0..3 {
        let again = s.verify(&token).await.expect("verifies");
        assert_eq!(again.claims, first.claims);
        assert_eq!(again.kid, first.kid);
    }
    let stats = s.cache.stats();
    assert_eq!((stats.hits, stats.misses, stats.invalidations), (3, 1, 0), "{stats:?}");
}

#[tokio::test]
async fn a_revoked_key_invalidates_its_cached_tokens_at_once() {
    let s = setup(TokenCacheConfig::new()).await;
    let token = s.token("alice", 600);
    s.verify(&token).await.expect("verifies");
    s.verify(&token).await.expect("hit");
    let report = s
        .rotator
        .force_rotate(ctx(), "leaked", true)
        .await
        .expect("force with revoke_old");
    assert!(report.outcome.changed_ring(), "{:?}", report.outcome);
    // No clock movement, no refresh: the committing rotator installed the new snapshot.
    assert_eq!(s.verify(&token).await.err(), Some(TokenError::UnknownKid));
    let stats = s.cache.stats();
    assert_eq!((stats.hits, stats.invalidations, stats.entries), (1, 1, 0), "{stats:?}");
    // Still refused on every later try (no negative entry, no resurrection).
    assert_eq!(s.verify(&token).await.err(), Some(TokenError::UnknownKid));
    assert_eq!(s.cache.stats().entries, 0);
}

#[tokio::test]
async fn a_token_past_its_exp_is_refused_on_the_first_second_after_it() {
    let s = setup(TokenCacheConfig::new()).await;
    let leeway = s.cached.validation().leeway_secs();
    let token = s.token("alice", 60);
    s.verify(&token).await.expect("verifies");
    s.clock.advance(TimeDelta::seconds(60 + leeway - 1));
    s.verify(&token).await.expect("still inside exp + leeway: a hit");
    assert_eq!(s.cache.stats().hits, 1);
    s.clock.advance(TimeDelta::seconds(1));
    assert_eq!(s.verify(&token).await.err(), Some(TokenError::Expired));
    let stats = s.cache.stats();
    assert_eq!((stats.hits, stats.invalidations, stats.entries), (1, 1, 0), "{stats:?}");
}

#[tokio::test]
async fn a_key_past_its_window_invalidates_its_cached_tokens() {
    let s = setup(TokenCacheConfig::new()).await;
    // An imported Active key whose tokens outlive its window (we hold the private key, so
    // we can sign a token whose exp is later than the key's retirement end).
    let private = PrivateKey::generate(Algorithm::EdDsa, RsaBits::B2048).expect("key");
    let signer: SigningKey = private.signing_key();
    let imported = ImportedKey {
        key: private,
        kid: Some("imported".into()),
    };
    s.rotator
        .import(ctx(), imported, ImportState::Active)
        .await
        .expect("import Active");
    let now = s.clock.now().timestamp();
    let year = 365 * 24 * 3600;
    let header = encode_header_with_type(Algorithm::EdDsa, "imported", "JWT");
    let token = sign(&signer, &header, &json!({"sub": "a", "exp": now + year}), now, year).expect("sign");
    s.verify(&token).await.expect("verifies");
    s.verify(&token).await.expect("hit");
    // The imported key retires (after the forced-rotation interval); its window ends at
    // its expires_at.
    s.clock.advance(TimeDelta::hours(2));
    let report = s
        .rotator
        .force_rotate(ctx(), "rotate away", false)
        .await
        .expect("force");
    assert!(report.outcome.changed_ring(), "{:?}", report.outcome);
    s.verify(&token).await.expect("a Retiring key still verifies");
    let status = s.cached.snapshot().keys().iter().find(|k| k.kid == "imported").cloned();
    let end = status
        .as_ref()
        .and_then(|k| k.expires_at)
        .unwrap_or_else(|| panic!("expires_at of {status:?}"));
    s.verify(&token).await.expect("hit against the new snapshot's key");
    s.clock.set(end);
    // No tick ran, no refresh: the window alone refuses it.
    assert_eq!(s.verify(&token).await.err(), Some(TokenError::KeyExpired));
    assert_eq!(s.cache.stats().entries, 0);
}

#[tokio::test]
async fn a_new_snapshot_invalidates_entries_then_they_are_cached_again() {
    let s = setup(TokenCacheConfig::new()).await;
    let token = s.token("alice", 600);
    s.verify(&token).await.expect("verifies");
    // Any commit builds a new snapshot: here the token's key retires (it still verifies).
    let report = s
        .rotator
        .force_rotate(ctx(), "new snapshot", false)
        .await
        .expect("force");
    assert!(report.outcome.changed_ring(), "{:?}", report.outcome);
    s.verify(&token).await.expect("still verifies (in full)");
    let stats = s.cache.stats();
    assert_eq!((stats.hits, stats.invalidations, stats.misses), (0, 1, 2), "{stats:?}");
    s.verify(&token).await.expect("verifies");
    assert_eq!(s.cache.stats().hits, 1, "cached again against the new snapshot");
}

#[tokio::test]
async fn the_cache_stays_within_its_entry_and_byte_bounds() {
    let by_entries = setup(TokenCacheConfig::new().with_max_entries(8)).await;
    for i in 0..100 {
        by_entries
            .verify(&by_entries.token(&format!("user{i}"), 600))
            .await
            .expect("verifies");
    }
    let stats = by_entries.cache.stats();
    assert!(stats.entries <= 8, "{stats:?}");
    assert!(stats.entries >= 1, "{stats:?}");
    assert!(stats.evictions >= 92, "{stats:?}");

    let max_bytes = 8 * 1024;
    let by_bytes = setup(TokenCacheConfig::new().with_max_bytes(max_bytes)).await;
    for i in 0..100 {
        by_bytes
            .verify(&by_bytes.token(&format!("user{i}"), 600))
            .await
            .expect("verifies");
    }
    let stats = by_bytes.cache.stats();
    assert!(stats.bytes <= max_bytes as u64, "{stats:?}");
    assert!(stats.entries >= 1 && stats.entries < 100, "{stats:?}");
    assert!(stats.evictions >= 100 - stats.entries, "{stats:?}");

    let off = setup(TokenCacheConfig::new().with_max_entries(0)).await;
    let token = off.token("alice", 600);
    off.verify(&token).await.expect("verifies");
    off.verify(&token).await.expect("verifies");
    assert_eq!(off.cache.stats().hits, 0, "a zero bound caches nothing");
}

#[tokio::test]
async fn failures_are_never_cached() {
    let s = setup(TokenCacheConfig::new()).await;
    let token = s.token("alice", 600);
    // The same header and payload with another signature.
    let (signed, _) = token.rsplit_once('.').expect("three segments");
    let forged = format!("{signed}.{}", "A".repeat(86));
    for _ in 0..3 {
        assert_eq!(s.verify(&forged).await.err(), Some(TokenError::BadSignature));
    }
    let stats = s.cache.stats();
    assert_eq!((stats.entries, stats.hits), (0, 0), "{stats:?}");
    // A genuine token cached first does not make a forged one with its payload pass.
    s.verify(&token).await.expect("verifies");
    assert_eq!(s.verify(&forged).await.err(), Some(TokenError::BadSignature));
}

#[tokio::test]
async fn other_validation_rules_never_hit_an_entry_verified_under_different_ones() {
    let s = setup(TokenCacheConfig::new()).await;
    let token = s.token("alice", 600);
    s.verify(&token).await.expect("verifies");
    let strict = Validation::new().with_audience("payments");
    let now = s.clock.now();
    assert_eq!(
        s.cached.verify_with(&token, &strict, now).err(),
        Some(TokenError::MissingClaim("aud")),
        "verified under other rules, not answered from the entry"
    );
    assert_eq!(s.cache.stats().hits, 0);
}

#[tokio::test]
async fn a_key_set_entry_hits_only_against_the_same_fetched_set() {
    let s = setup(TokenCacheConfig::new()).await;
    let token = s.token("alice", 600);
    let jwks = s.cached.snapshot().jwks().body().to_vec();
    let v = Validation::new();
    let cache = TokenCache::new(TokenCacheConfig::new());
    let now = s.clock.now().timestamp();
    let set = KeySet::from_jwks(&jwks, &v).expect("key set");
    set.verify_cached(&token, &v, now, &cache).expect("verifies");
    set.verify_cached(&token, &v, now, &cache).expect("hit");
    assert_eq!(cache.stats().hits, 1);
    // A new fetch (even of the same document) is another set: its keys verify afresh.
    let refetched = KeySet::from_jwks(&jwks, &v).expect("key set");
    refetched.verify_cached(&token, &v, now, &cache).expect("verifies");
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.invalidations), (1, 1), "{stats:?}");
    // A set without the key refuses the token even though it was cached.
    let empty = KeySet::from_jwks(br#"{"keys":[]}"#, &v).expect("empty set");
    assert_eq!(
        empty.verify_cached(&token, &v, now, &cache).err(),
        Some(TokenError::UnknownKid)
    );
}

/// A ring whose Active key is an imported one with the kid `shared`, verifying through
/// `cache`.
async fn ring_with_shared_kid(name: &str, cache: &TokenCache) -> (KeyRing, ManualClock) {
    let s = setup_with(name, cache.clone()).await;
    let imported = ImportedKey {
        key: PrivateKey::generate(Algorithm::EdDsa, RsaBits::B2048).expect("key"),
        kid: Some("shared".into()),
    };
    s.rotator
        .import(ctx(), imported, ImportState::Active)
        .await
        .expect("import Active");
    assert_eq!(s.cached.snapshot().active_kid(), Some("shared"));
    (s.cached, s.clock)
}

/// The entry's key object decides a hit, not its kid: ring B, whose key `shared` is
/// another key than ring A's `shared`, refuses A's token although A cached it.
#[tokio::test]
async fn a_cached_token_never_hits_under_another_key_with_the_same_kid() {
    let cache = TokenCache::new(TokenCacheConfig::new());
    let (a, clock) = ring_with_shared_kid("ring-a", &cache).await;
    let (b, _) = ring_with_shared_kid("ring-b", &cache).await;
    let now = clock.now().timestamp();
    let token = a.sign(&json!({"sub": "alice", "exp": now + 600})).expect("sign");
    a.verify(&token).expect("A verifies its token");
    a.verify(&token).expect("A hits");
    assert_eq!(cache.stats().hits, 1);
    assert_eq!(b.verify(&token).err(), Some(TokenError::BadSignature));
    assert_eq!(cache.stats().hits, 1, "{:?}", cache.stats());
}

/// Verifiers sharing a cache do not evict each other's entries: a refusal by another
/// verifier (other rules, or a set without the key) leaves the entry, which keeps hitting.
#[tokio::test]
async fn another_verifiers_refusal_leaves_the_entry_in_place() {
    let s = setup(TokenCacheConfig::new()).await;
    let token = s.token("alice", 600);
    let jwks = s.cached.snapshot().jwks().body().to_vec();
    let v = Validation::new();
    let strict = Validation::new().with_audience("billing-api");
    let cache = TokenCache::new(TokenCacheConfig::new());
    let now = s.clock.now().timestamp();
    let set = KeySet::from_jwks(&jwks, &v).expect("key set");
    let empty = KeySet::from_jwks(br#"{"keys":[]}"#, &v).expect("empty set");
    set.verify_cached(&token, &v, now, &cache).expect("verifies");
    assert_eq!(
        set.verify_cached(&token, &strict, now, &cache).err(),
        Some(TokenError::MissingClaim("aud"))
    );
    assert_eq!(
        empty.verify_cached(&token, &v, now, &cache).err(),
        Some(TokenError::UnknownKid)
    );
    assert_eq!(cache.stats().entries, 1, "{:?}", cache.stats());
    set.verify_cached(&token, &v, now, &cache).expect("still a hit");
    assert_eq!(cache.stats().hits, 1, "{:?}", cache.stats());
}
