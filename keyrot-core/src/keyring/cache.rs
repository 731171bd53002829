//! The verified-token cache: a repeated token skips the signature check, and nothing
//! else.
//!
//! A cache that reuses a verdict for a fixed TTL keeps accepting the tokens of a revoked
//! key for that TTL. This one never does. An entry is the outcome of a full, successful
//! verification, and every hit re-checks what can change since then:
//! - the token's time claims (`exp`, `nbf`, `iat`, with the leeway) against the clock;
//! - that the key it was verified with is still the very key the verifier's *current*
//!   snapshot holds for its `kid`, and is inside its validity window (a Retiring key past
//!   its end, a revoked, expired or tampered key, or a new snapshot that no longer holds
//!   that key object invalidates the entry at once);
//! - that the validation rules are the ones it was verified under.
//!
//! When any of these fails the entry is dropped and the token is verified in full, so a
//! cached verifier answers exactly what an uncached one answers. Entries are keyed by the
//! token's bytes (no digest, so no collisions), only successful verifications are stored
//! (an attacker cannot fill the cache with tokens the issuer did not sign), and the cache
//! is bounded both in entries and in (approximate) bytes.

use super::entry::VerifierEntry;
use crate::key::VerifyingKey;
use crate::token::{Times, Validation, Verified};
use quick_cache::sync::Cache;
use quick_cache::{Lifecycle, OptionsBuilder, Weighter};
use serde_json::Value;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// Default bound on the number of cached tokens.
pub const DEFAULT_TOKEN_CACHE_ENTRIES: usize = 10_000;
/// Default bound on the cache's (approximate) memory, in bytes.
pub const DEFAULT_TOKEN_CACHE_BYTES: usize = 16 * 1024 * 1024;

/// The most shards the entries are spread over (each locked on its own).
const MAX_SHARDS: u64 = 16;
/// The least capacity of a shard: an entry must fit in one (a token of the default 8 KiB
/// limit with its claims does, with room to spare).
const MIN_SHARD_BYTES: u64 = 64 * 1024;
/// What an entry costs besides the token, the kid and the claims: the entry itself, its
/// `Arc`, the table slot.
const ENTRY_OVERHEAD: usize = std::mem::size_of::<Entry>() + 64;

/// The bounds of a [`TokenCache`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenCacheConfig {
    max_entries: usize,
    max_bytes: usize,
}

impl Default for TokenCacheConfig {
    fn default() -> Self {
        Self {
            max_entries: DEFAULT_TOKEN_CACHE_ENTRIES,
            max_bytes: DEFAULT_TOKEN_CACHE_BYTES,
        }
    }
}

impl TokenCacheConfig {
    /// The defaults: [`DEFAULT_TOKEN_CACHE_ENTRIES`] tokens, [`DEFAULT_TOKEN_CACHE_BYTES`].
    pub fn new() -> Self {
        Self::default()
    }

    /// At most `n` tokens (0: nothing is cached).
    pub fn with_max_entries(mut self, n: usize) -> Self {
        self.max_entries = n;
        self
    }

    /// At most about `bytes` of memory for the entries: the token, its kid and claims,
    /// and a fixed overhead per entry (0: nothing is cached).
    pub fn with_max_bytes(mut self, bytes: usize) -> Self {
        self.max_bytes = bytes;
        self
    }

    /// The bound on entries.
    pub fn max_entries(&self) -> usize {
        self.max_entries
    }

    /// The bound on bytes.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }
}

/// What a [`TokenCache`] has done since it was created (for metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TokenCacheStats {
    /// Lookups answered from the cache (no signature check).
    pub hits: u64,
    /// Lookups that found nothing usable and verified in full (includes invalidations).
    pub misses: u64,
    /// Entries removed, or refused, to stay within the bounds.
    pub evictions: u64,
    /// Lookups that found the token cached but not valid for the verifier asking: its
    /// time claims no longer hold, or its key is no longer the current snapshot's
    /// (revoked, expired, tampered, replaced). Such an entry is dropped, unless it is
    /// another verifier's (other rules, or a key object another live verifier holds):
    /// verifiers sharing a cache never evict each other's entries.
    pub invalidations: u64,
    /// Tokens cached now.
    pub entries: u64,
    /// The entries' approximate memory now, in bytes (never more than the bound).
    pub bytes: u64,
}

/// What a cached verification was checked against: the key object of one snapshot. It is
/// compared by identity, so an entry only ever hits against that very object. The anchor
/// is weak: it keeps the object's allocation (so its address cannot be reused by another
/// key) but not the key, and tells when no verifier holds the object any more.
pub(crate) enum Anchor {
    /// A key of a [`KeyRing`](crate::KeyRing) or [`PublicKeyRing`](crate::PublicKeyRing)
    /// snapshot, with its validity window.
    Entry(Weak<VerifierEntry>),
    /// The keys of a [`KeySet`](crate::KeySet) (a fetched JWKS).
    Set(Weak<HashMap<String, Vec<VerifyingKey>>>),
}

impl Anchor {
    /// The anchor of a snapshot's key object.
    pub(crate) fn entry(entry: &Arc<VerifierEntry>) -> Self {
        Anchor::Entry(Arc::downgrade(entry))
    }

    /// The anchor of a fetched key set.
    pub(crate) fn set(set: &Arc<HashMap<String, Vec<VerifyingKey>>>) -> Self {
        Anchor::Set(Arc::downgrade(set))
    }

    /// Whether `self` is the key object `current`.
    pub(crate) fn is_entry(&self, current: &Arc<VerifierEntry>) -> bool {
        matches!(self, Anchor::Entry(e) if std::ptr::eq(e.as_ptr(), Arc::as_ptr(current)))
    }

    /// Whether `self` is the key set `current`.
    pub(crate) fn is_set(&self, current: &Arc<HashMap<String, Vec<VerifyingKey>>>) -> bool {
        matches!(self, Anchor::Set(s) if std::ptr::eq(s.as_ptr(), Arc::as_ptr(current)))
    }

    /// Whether no verifier holds the object any more: no lookup can ever hit it again.
    fn is_dead(&self) -> bool {
        match self {
            Anchor::Entry(e) => e.strong_count() == 0,
            Anchor::Set(s) => s.strong_count() == 0,
        }
    }
}

/// What the verifier looking a token up says of the cached entry's key object.
pub(crate) enum Standing {
    /// Its own current key object, inside its window: the entry answers.
    Holds,
    /// Its own key object, no longer valid (past its window): the entry is dropped.
    Stale,
    /// Not its current key object: another verifier's, or one of its older snapshots.
    /// Dropped only once no verifier holds that object.
    Other,
}

struct Entry {
    verified: Verified,
    validation: Arc<Validation>,
    anchor: Anchor,
    times: Times,
    weight: u64,
}

#[derive(Clone)]
struct ByWeight;

impl Weighter<Box<str>, Arc<Entry>> for ByWeight {
    fn weight(&self, _token: &Box<str>, entry: &Arc<Entry>) -> u64 {
        entry.weight
    }
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
    invalidations: AtomicU64,
    /// What [`TokenCache::take_unexported`] already handed to the metrics.
    exported: [AtomicU64; 3],
}

#[derive(Clone)]
struct CountEvictions(Arc<Counters>);

impl Lifecycle<Box<str>, Arc<Entry>> for CountEvictions {
    type RequestState = ();

    fn on_evict(&self, _state: &mut (), _token: Box<str>, _entry: Arc<Entry>) {
        self.0.evictions.fetch_add(1, Ordering::Relaxed);
    }
}

type Entries = Cache<Box<str>, Arc<Entry>, ByWeight, quick_cache::DefaultHashBuilder, CountEvictions>;

struct Shared {
    /// `None` when the bounds allow nothing.
    entries: Option<Entries>,
    counters: Arc<Counters>,
    /// The least weight of an entry, `max_bytes / (max_entries + 1) + 1`: the byte bound
    /// then also bounds the number of entries.
    floor: u64,
    config: TokenCacheConfig,
    /// The validation rules of the latest insert, shared by the entries verified under
    /// them (insert path only).
    last_validation: Mutex<Option<Arc<Validation>>>,
}

/// A bounded cache of successfully verified tokens that never outlives what verified
/// them (see the module rules above): opt in with
/// [`KeyRingBuilder::with_token_cache`](crate::KeyRingBuilder::with_token_cache),
/// [`PublicKeyRingBuilder::with_token_cache`](crate::PublicKeyRingBuilder::with_token_cache),
/// `keyrot_http::BearerAuth::with_token_cache` or the
/// remote verifier's builder. Cheap to clone (clones share the entries).
///
/// A hit re-checks the time claims and the key, then clones the claims: no signature
/// check, no base64 or JSON decoding.
#[derive(Clone)]
pub struct TokenCache {
    shared: Arc<Shared>,
}

impl fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCache")
            .field("config", &self.shared.config)
            .field("stats", &self.stats())
            .finish()
    }
}

impl TokenCache {
    /// An empty cache within `config`'s bounds.
    pub fn new(config: TokenCacheConfig) -> Self {
        let counters = Arc::new(Counters::default());
        let (max_entries, max_bytes) = (config.max_entries as u64, config.max_bytes as u64);
        // A power of two, so that shards can be halved for a small entry count; the
        // capacity a whole multiple of it, so the shards' capacities add up to the bound.
        let shards = (max_bytes / MIN_SHARD_BYTES).clamp(1, MAX_SHARDS);
        let shards = if shards.is_power_of_two() {
            shards
        } else {
            shards.next_power_of_two() / 2
        };
        let capacity = max_bytes - max_bytes % shards;
        // n + 1 entries of this weight exceed the capacity, so at most n fit; and one
        // entry of it stays well inside a shard's admission limit, even for n = 1.
        let floor = capacity / max_entries.saturating_add(1) + 1;
        let entries = (max_entries > 0 && capacity > 0)
            .then(|| {
                let options = OptionsBuilder::new()
                    .estimated_items_capacity(config.max_entries)
                    .weight_capacity(capacity)
                    .shards(shards as usize)
                    .build()
                    .ok()?;
                Some(Cache::with_options(
                    options,
                    ByWeight,
                    quick_cache::DefaultHashBuilder::default(),
                    CountEvictions(counters.clone()),
                ))
            })
            .flatten();
        Self {
            shared: Arc::new(Shared {
                entries,
                counters,
                floor,
                config,
                last_validation: Mutex::new(None),
            }),
        }
    }

    /// The bounds.
    pub fn config(&self) -> TokenCacheConfig {
        self.shared.config
    }

    /// The counts since creation, and the current size.
    pub fn stats(&self) -> TokenCacheStats {
        let c = &self.shared.counters;
        let (entries, bytes) = self
            .shared
            .entries
            .as_ref()
            .map_or((0, 0), |e| (e.len() as u64, e.weight()));
        TokenCacheStats {
            hits: c.hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            evictions: c.evictions.load(Ordering::Relaxed),
            invalidations: c.invalidations.load(Ordering::Relaxed),
            entries,
            bytes,
        }
    }

    /// Hits, misses and evictions counted since the last call (for the metrics' counters;
    /// concurrent callers never hand out the same count twice).
    pub(crate) fn take_unexported(&self) -> (u64, u64, u64) {
        let c = &self.shared.counters;
        let delta = |now: &AtomicU64, exported: &AtomicU64| {
            let now = now.load(Ordering::Relaxed);
            now.saturating_sub(exported.fetch_max(now, Ordering::Relaxed))
        };
        (
            delta(&c.hits, &c.exported[0]),
            delta(&c.misses, &c.exported[1]),
            delta(&c.evictions, &c.exported[2]),
        )
    }

    /// Drops every entry.
    pub fn clear(&self) {
        if let Some(e) = &self.shared.entries {
            e.clear();
        }
    }

    /// The cached verification of `token` when it still holds under `v` at `now` (Unix
    /// seconds) and `standing` says its key is the asker's current one; otherwise `None`
    /// and the caller verifies in full. An entry that can never hit again is dropped;
    /// another verifier's (other rules, or a key object still held elsewhere) stays.
    pub(crate) fn lookup(
        &self,
        token: &str,
        v: &Validation,
        now: i64,
        standing: impl FnOnce(&str, &Anchor) -> Standing,
    ) -> Option<Verified> {
        let entries = self.shared.entries.as_ref()?;
        let counters = &self.shared.counters;
        let Some(entry) = entries.get(token) else {
            counters.misses.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let drop = if *entry.validation != *v {
            false
        } else if entry.times.check(v, now).is_err() {
            true
        } else {
            match standing(&entry.verified.kid, &entry.anchor) {
                Standing::Holds => {
                    counters.hits.fetch_add(1, Ordering::Relaxed);
                    return Some(entry.verified.clone());
                }
                Standing::Stale => true,
                Standing::Other => entry.anchor.is_dead(),
            }
        };
        if drop {
            entries.remove(token);
        }
        counters.invalidations.fetch_add(1, Ordering::Relaxed);
        counters.misses.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// Stores the outcome of a successful full verification of `token` under `v`, made
    /// with the key object `anchor`.
    pub(crate) fn store(&self, token: &str, v: &Validation, verified: &Verified, anchor: Anchor) {
        let Some(entries) = self.shared.entries.as_ref() else {
            return;
        };
        let Ok(times) = Times::of(&verified.claims) else {
            return;
        };
        let bytes = ENTRY_OVERHEAD + token.len() + verified.kid.len() + object_bytes(&verified.claims);
        let entry = Entry {
            verified: verified.clone(),
            validation: self.interned(v),
            anchor,
            times,
            weight: (bytes as u64).max(self.shared.floor),
        };
        entries.insert(token.into(), Arc::new(entry));
    }

    /// `v` as an `Arc` shared with the previous insert's when the rules are equal.
    fn interned(&self, v: &Validation) -> Arc<Validation> {
        let mut last = match self.shared.last_validation.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        match &*last {
            Some(l) if **l == *v => l.clone(),
            _ => {
                let fresh = Arc::new(v.clone());
                *last = Some(fresh.clone());
                fresh
            }
        }
    }
}

/// The approximate heap size of a JSON object's members.
fn object_bytes(map: &serde_json::Map<String, Value>) -> usize {
    map.iter().map(|(k, v)| 48 + k.len() + value_bytes(v)).sum()
}

fn value_bytes(v: &Value) -> usize {
    match v {
        Value::String(s) => 24 + s.len(),
        Value::Array(items) => 24 + items.iter().map(|i| 8 + value_bytes(i)).sum::<usize>(),
        Value::Object(map) => 24 + object_bytes(map),
        Value::Null | Value::Bool(_) | Value::Number(_) => 16,
    }
}
