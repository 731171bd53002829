//! The public half of a snapshot, shared by [`super::KeyRing`] and
//! [`crate::PublicKeyRing`]: the verifying keys with their validity windows, the header
//! segments keyrot writes for them, and the one token-verification path both use.

use super::RefreshError;
use super::cache::{Anchor, Standing, TokenCache};
use super::entry::VerifierEntry;
use crate::jwks::Jwks;
use crate::policy::Policy;
use crate::ring::{KeyRecord, Ring};
use crate::token::{self, AsMap, AsType, HeaderHash, ReadClaims, TokenError, Validation, Verified};
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::sync::Arc;

/// The verifying keys of one snapshot.
pub(crate) struct Verifiers {
    pub(crate) by_kid: HashMap<String, Arc<VerifierEntry>>,
    /// The header segment keyrot writes for each published key → its kid: tokens carrying
    /// one of these skip header decoding.
    pub(crate) known_headers: HashMap<String, String, HeaderHash>,
    /// The `typ` keyrot writes in headers it signs.
    pub(crate) token_type: String,
}

impl Verifiers {
    /// Parses every row of `rows` (published rows the caller trusts) into a verifier.
    pub(crate) fn parse<'r>(
        rows: impl IntoIterator<Item = &'r KeyRecord>,
        token_type: &str,
    ) -> Result<Self, RefreshError> {
        let mut by_kid = HashMap::new();
        let mut known_headers = HashMap::default();
        // A MAC or AEAD key never verifies a token (no HS* path exists).
        for k in rows.into_iter().filter(|k| k.alg.is_signing()) {
            by_kid.insert(k.kid.clone(), Arc::new(VerifierEntry::for_record(k)?));
            known_headers.insert(token::encode_header_with_type(k.alg, &k.kid, token_type), k.kid.clone());
            // The RFC 9864 name a ring may be configured to sign with (`Ed25519`).
            let rfc9864 = k.alg.name_with(crate::alg::EdDsaName::Ed25519);
            if rfc9864 != k.alg.as_str() {
                known_headers.insert(token::encode_header_named(rfc9864, &k.kid, token_type), k.kid.clone());
            }
        }
        Ok(Self {
            by_kid,
            known_headers,
            token_type: token_type.to_owned(),
        })
    }

    /// Keeps only the kids for which `keep` holds.
    pub(crate) fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.by_kid.retain(|kid, _| keep(kid));
        self.known_headers.retain(|_, kid| keep(kid));
    }

    /// Whether `kid` is a verifying key (whatever its window).
    pub(crate) fn contains(&self, kid: &str) -> bool {
        self.by_kid.contains_key(kid)
    }

    /// Verifies `token` as of `at` under `v`: the token rules of [`crate::token`], with
    /// each key's validity window applied first.
    pub(crate) fn verify(&self, token: &str, v: &Validation, at: DateTime<Utc>) -> Result<Verified, TokenError> {
        self.verify_into::<AsMap>(token, v, at)
    }

    /// [`Verifiers::verify`], the claims read by `R` (into the map, or into a type).
    fn verify_into<R: ReadClaims>(
        &self,
        token: &str,
        v: &Validation,
        at: DateTime<Utc>,
    ) -> Result<Verified<R::Claims>, TokenError> {
        if token.len() <= v.max_token_bytes()
            && let Some((header, _)) = token.split_once('.')
            && let Some(kid) = self.known_headers.get(header)
            && let Some(entry) = self.by_kid.get(kid)
        {
            let key = entry.check(at)?;
            return token::decode_with_known_typed_header(
                token,
                header,
                v,
                kid,
                key.algorithm(),
                Some(&self.token_type),
            )?
            .verify_into::<R>(key, v, at.timestamp());
        }
        let u = token::decode_header(token, v)?;
        let key = self.by_kid.get(&u.kid).ok_or(TokenError::UnknownKid)?.check(at)?;
        u.parts().verify_into::<R>(key, v, at.timestamp())
    }

    /// [`Verifiers::verify_using`] with the claims read straight into `T`. Through a
    /// cache the entry (a claims map) is what is stored and reused, so a hit or a miss
    /// reads `T` from the map; without one no map is built.
    pub(crate) fn verify_as_using<T: DeserializeOwned>(
        &self,
        token: &str,
        v: &Validation,
        at: DateTime<Utc>,
        cache: Option<&TokenCache>,
    ) -> Result<Verified<T>, TokenError> {
        match cache {
            Some(cache) => self.verify_cached(token, v, at, cache)?.into_typed(),
            None => self.verify_into::<AsType<T>>(token, v, at),
        }
    }

    /// [`Verifiers::verify`] through `cache`: a hit needs the entry's key to be this
    /// snapshot's key object for its kid, inside its window at `at`; a successful full
    /// verification is stored.
    pub(crate) fn verify_cached(
        &self,
        token: &str,
        v: &Validation,
        at: DateTime<Utc>,
        cache: &TokenCache,
    ) -> Result<Verified, TokenError> {
        let standing = |kid: &str, anchor: &Anchor| match self.by_kid.get(kid) {
            Some(entry) if anchor.is_entry(entry) => match entry.check(at) {
                Ok(_) => Standing::Holds,
                Err(_) => Standing::Stale,
            },
            _ => Standing::Other,
        };
        if let Some(hit) = cache.lookup(token, v, at.timestamp(), standing) {
            return Ok(hit);
        }
        let verified = self.verify(token, v, at)?;
        if let Some(entry) = self.by_kid.get(&verified.kid) {
            cache.store(token, v, &verified, Anchor::entry(entry));
        }
        Ok(verified)
    }

    /// [`Verifiers::verify`], through `cache` when there is one.
    pub(crate) fn verify_using(
        &self,
        token: &str,
        v: &Validation,
        at: DateTime<Utc>,
        cache: Option<&TokenCache>,
    ) -> Result<Verified, TokenError> {
        match cache {
            Some(cache) => self.verify_cached(token, v, at, cache),
            None => self.verify(token, v, at),
        }
    }
}

/// The rows of `ring` that `trusts` accepts, without sealed material, and the JWKS that
/// publishes them.
pub(crate) fn trusted_rows(ring: &Ring, policy: &Policy, trusts: impl Fn(&str) -> bool) -> (Vec<KeyRecord>, Jwks) {
    let trusted = Ring {
        name: ring.name.clone(),
        generation: ring.generation,
        keys: ring
            .keys
            .iter()
            .filter(|k| trusts(&k.kid))
            .map(|k| KeyRecord {
                sealed: None,
                remote: k.remote.clone(),
                ..k.clone()
            })
            .collect(),
        manifest: None,
    };
    let jwks = Jwks::render(&trusted, policy);
    (trusted.keys, jwks)
}
