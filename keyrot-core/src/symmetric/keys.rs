//! What a snapshot of a symmetric ring holds: the unsealed secret of every trusted key in
//! a published state, with its 4-byte id and the end of its window; and how a new key is
//! made.

use super::SymmetricError;
use super::mac::HmacSha256;
use crate::alg::{Algorithm, KeyKind};
use crate::keyring::retiring_window_end;
use crate::ring::{KeyRecord, KeyState, Ring, RingName};
use crate::secret::SecretBytes;
use chrono::{DateTime, Utc};
use hmac::KeyInit as _;

/// The length of every symmetric key keyrot makes (256 bits).
pub(crate) const KEY_BYTES: usize = 32;

/// One usable symmetric key.
pub(crate) struct SymmetricKey {
    pub(crate) kid: String,
    /// The id carried in ciphertexts (the kid is its 8 lowercase hex digits).
    pub(crate) id: u32,
    pub(crate) state: KeyState,
    /// A Retiring key is accepted only before this instant.
    pub(crate) not_after: Option<DateTime<Utc>>,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) secret: SecretBytes,
    /// A MAC key's HMAC state with the key already absorbed, cloned per tag (two
    /// compressions fewer per call). It is as secret as the key: with the workspace's
    /// `zeroize` features of `hmac` and `sha2`, every copy is wiped when dropped.
    pub(crate) mac: Option<HmacSha256>,
}

impl SymmetricKey {
    /// Whether the key is accepted (decrypts, verifies) at `at`.
    pub(crate) fn accepts_at(&self, at: DateTime<Utc>) -> Result<(), SymmetricError> {
        match self.not_after {
            Some(end) if at >= end => Err(SymmetricError::KeyExpired(self.kid.clone())),
            _ => Ok(()),
        }
    }
}

/// The symmetric keys of one snapshot.
pub(crate) struct SymmetricKeys {
    pub(crate) ring: RingName,
    pub(crate) kind: KeyKind,
    /// Active first, then Pending (newest first), then Retiring (newest first).
    pub(crate) keys: Vec<SymmetricKey>,
}

impl std::fmt::Debug for SymmetricKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SymmetricKeys")
            .field("ring", &self.ring)
            .field("kind", &self.kind)
            .field("kids", &self.keys.iter().map(|k| k.kid.as_str()).collect::<Vec<_>>())
            .finish()
    }
}

impl SymmetricKeys {
    /// The keys of `rows` (trusted, published rows of `kind`), each opened by `open`.
    pub(crate) fn new(ring: &RingName, kind: KeyKind, opened: Vec<(&KeyRecord, SecretBytes)>) -> Self {
        let mut keys: Vec<SymmetricKey> = opened
            .into_iter()
            .filter_map(|(k, secret)| {
                Some(SymmetricKey {
                    id: id_of_kid(&k.kid)?,
                    kid: k.kid.clone(),
                    state: k.state,
                    not_after: (k.state == KeyState::Retiring).then(|| retiring_window_end(k)),
                    created_at: k.created_at,
                    mac: (kind == KeyKind::Mac)
                        .then(|| HmacSha256::new_from_slice(secret.expose()).ok())
                        .flatten(),
                    secret,
                })
            })
            .collect();
        keys.sort_by_key(|k| {
            let order = match k.state {
                KeyState::Active => 0,
                KeyState::Pending => 1,
                _ => 2,
            };
            (order, std::cmp::Reverse(k.created_at))
        });
        Self {
            ring: ring.clone(),
            kind,
            keys,
        }
    }

    /// The Active key.
    pub(crate) fn active(&self) -> Result<&SymmetricKey, SymmetricError> {
        self.keys
            .first()
            .filter(|k| k.state == KeyState::Active)
            .ok_or_else(|| SymmetricError::NoActiveKey(self.ring.clone()))
    }

    /// The key with id `id`, if it is accepted now: `now` is read only for a Retiring key
    /// (the others have no end to their window).
    pub(crate) fn by_id(&self, id: u32, now: impl FnOnce() -> DateTime<Utc>) -> Result<&SymmetricKey, SymmetricError> {
        let key = self
            .keys
            .iter()
            .find(|k| k.id == id)
            .ok_or(SymmetricError::UnknownKey)?;
        if key.not_after.is_some() {
            key.accepts_at(now())?;
        }
        Ok(key)
    }

    /// Every key accepted at `at`, Active first.
    pub(crate) fn accepted_at(&self, at: DateTime<Utc>) -> impl Iterator<Item = &SymmetricKey> {
        self.keys.iter().filter(move |k| k.accepts_at(at).is_ok())
    }
}

impl SymmetricKeys {
    /// These keys with every change from `raw` (a newer stored state that could not be
    /// accepted) that only removes trust: a key whose row is gone or no longer published
    /// is dropped, a Retiring key's window only shrinks. `None` when nothing changes.
    pub(crate) fn narrowed_by(&self, raw: &Ring, now: DateTime<Utc>) -> Option<Self> {
        let mut changed = false;
        let mut keys = Vec::with_capacity(self.keys.len());
        for k in &self.keys {
            let Some(row) = raw.key(&k.kid).filter(|r| r.state.is_published()) else {
                changed = true;
                continue;
            };
            let mut state = k.state;
            let mut not_after = k.not_after;
            // As for the signer: the Active key keeps encrypting and signing only while
            // its stored row is still Active; otherwise it only decrypts and verifies (as
            // Retiring). A Pending key is never promoted by an unauthenticated row.
            if (row.state == KeyState::Retiring || (state == KeyState::Active && row.state != KeyState::Active))
                && state != KeyState::Retiring
            {
                state = KeyState::Retiring;
                changed = true;
            }
            if row.state == KeyState::Retiring {
                let end = row.expires_at.unwrap_or(now);
                if not_after.is_none_or(|n| end < n) {
                    not_after = Some(end);
                    changed = true;
                }
            }
            keys.push(SymmetricKey {
                kid: k.kid.clone(),
                id: k.id,
                state,
                not_after,
                created_at: k.created_at,
                secret: k.secret.clone(),
                mac: k.mac.clone(),
            });
        }
        changed.then(|| Self {
            ring: self.ring.clone(),
            kind: self.kind,
            keys,
        })
    }
}

/// The kid of the key with id `id`: 8 lowercase hex digits.
pub(crate) fn kid_of_id(id: u32) -> String {
    format!("{id:08x}")
}

/// The id a symmetric kid names, if it is one (8 lowercase hex digits).
pub(crate) fn id_of_kid(kid: &str) -> Option<u32> {
    if kid.len() == 8 && kid.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        u32::from_str_radix(kid, 16).ok()
    } else {
        None
    }
}

/// A new key for `ring`: 32 random bytes and a random id no key of the ring has had.
/// Its "public JWK" column holds a descriptor without key material, so no code that
/// reads public keys can find a secret there (and the key parser refuses `kty` `oct`).
pub(crate) fn new_key(ring: &Ring, alg: Algorithm) -> Result<(String, SecretBytes, String), SymmetricError> {
    let mut secret = vec![0u8; KEY_BYTES];
    getrandom::fill(&mut secret).map_err(|_| SymmetricError::Rng)?;
    let secret = SecretBytes::new(secret);
    let kid = loop {
        let mut id = [0u8; 4];
        getrandom::fill(&mut id).map_err(|_| SymmetricError::Rng)?;
        let kid = kid_of_id(u32::from_be_bytes(id));
        if ring.keys.iter().all(|k| k.kid != kid) {
            break kid;
        }
    };
    let descriptor = serde_json::json!({ "kty": "oct", "kid": kid, "alg": alg.as_str(), "use": alg.kind().as_str() });
    Ok((kid, secret, descriptor.to_string()))
}
