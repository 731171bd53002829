//! Message authentication with a MAC ring: HMAC-SHA-256 tags under the Active key, checked
//! under any key inside its window, chosen by the kid the tag carries.

use super::aead::counted;
use super::counts::Use;
use super::keys::{SymmetricKey, SymmetricKeys, id_of_kid, kid_of_id};
use super::{Purpose, SymmetricError};
use crate::alg::KeyKind;
use crate::b64;
use crate::keyring::KeyRing;
use crate::ring::KeyState;
use chrono::{DateTime, Utc};
use hmac::{KeyInit as _, Mac as _};
use std::fmt;

pub(crate) type HmacSha256 = hmac::Hmac<sha2::Sha256>;
const TAG_BYTES: usize = 32;

/// Signs and verifies byte strings with a MAC ring (kind [`KeyKind::Mac`]). Cheap to
/// clone; every call reads the ring's current snapshot.
#[derive(Clone, Debug)]
pub struct MacRing {
    ring: KeyRing,
    purpose: Purpose,
}

/// A MAC with the kid of the key that made it. Its text form is `KID.TAG`, the tag in
/// base64url (`0a1b2c3d.q83v…`).
/// Two tags compare in constant time; check a tag with [`MacRing::verify`].
#[derive(Clone)]
pub struct MacTag {
    /// The 4-byte id of the key that made it (its kid is the id's 8 hex digits): no
    /// allocation per tag.
    id: u32,
    tag: [u8; TAG_BYTES],
}

impl MacTag {
    /// The kid of the key that made it (8 lowercase hex digits).
    pub fn kid(&self) -> String {
        kid_of_id(self.id)
    }

    /// The HMAC-SHA-256 of the message.
    pub fn tag(&self) -> &[u8; TAG_BYTES] {
        &self.tag
    }
}

impl PartialEq for MacTag {
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq as _;
        self.id == other.id && bool::from(self.tag.ct_eq(&other.tag))
    }
}

impl Eq for MacTag {}

impl fmt::Debug for MacTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MacTag")
            .field("kid", &self.kid())
            .finish_non_exhaustive()
    }
}

impl fmt::Display for MacTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", kid_of_id(self.id), b64::encode(&self.tag))
    }
}

impl std::str::FromStr for MacTag {
    type Err = SymmetricError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kid, tag) = s.split_once('.').ok_or(SymmetricError::Malformed("tag (no kid)"))?;
        let id = id_of_kid(kid).ok_or(SymmetricError::Malformed("tag (kid)"))?;
        let tag = b64::decode(tag)
            .and_then(|t| <[u8; TAG_BYTES]>::try_from(t).ok())
            .ok_or(SymmetricError::Malformed("tag (not 32 bytes of base64url)"))?;
        Ok(MacTag { id, tag })
    }
}

impl MacRing {
    /// The MAC handle of `ring`; refused unless the ring's policy makes MAC keys.
    pub fn new(ring: KeyRing) -> Result<Self, SymmetricError> {
        ring.check_kind(KeyKind::Mac)?;
        Ok(Self {
            ring,
            purpose: Purpose::default(),
        })
    }

    /// The same ring for `purpose`: its tags verify only through a handle of the same
    /// purpose (the MAC covers `purpose ‖ 0x00 ‖ message`).
    pub fn with_purpose(mut self, purpose: Purpose) -> Self {
        self.purpose = purpose;
        self
    }

    /// The ring.
    pub fn ring(&self) -> &KeyRing {
        &self.ring
    }

    /// The tag of `message` under the Active key.
    pub fn sign(&self, message: &[u8]) -> Result<MacTag, SymmetricError> {
        let signed = self.ring.with_symmetric(KeyKind::Mac, |keys| {
            let key = keys.active()?;
            let tag = MacTag {
                id: key.id,
                tag: purposed(self.purpose, message, |parts| tag_of(key, parts))?,
            };
            Ok((tag, key.state))
        });
        counted(&self.ring, Use::Sign, signed)
    }

    /// Checks `tag` on `message`: the key it names must be inside its window.
    pub fn verify(&self, message: &[u8], tag: &MacTag) -> Result<(), SymmetricError> {
        let checked = self.ring.with_symmetric(KeyKind::Mac, |keys| {
            check(keys, self.purpose, message, tag, || self.ring.now())
        });
        counted(&self.ring, Use::Verify, checked)
    }

    /// [`MacRing::verify`] as of `at` (for tests and forensics: never a time the input
    /// carries).
    pub fn verify_at(&self, message: &[u8], tag: &MacTag, at: DateTime<Utc>) -> Result<(), SymmetricError> {
        let checked = self
            .ring
            .with_symmetric(KeyKind::Mac, |keys| check(keys, self.purpose, message, tag, || at));
        counted(&self.ring, Use::Verify, checked)
    }
}

fn check(
    keys: &SymmetricKeys,
    purpose: Purpose,
    message: &[u8],
    tag: &MacTag,
    now: impl FnOnce() -> DateTime<Utc>,
) -> Result<((), KeyState), SymmetricError> {
    let key = keys.by_id(tag.id, now)?;
    let mac = keyed(key)?;
    purposed(purpose, message, |parts| mac.chain_parts(parts))
        .verify_slice(&tag.tag)
        .map_err(|_| SymmetricError::Authentication)?;
    Ok(((), key.state))
}

/// What a tag covers: `purpose ‖ 0x00 ‖ message` (one part fewer for the default, empty
/// purpose).
fn purposed<T>(purpose: Purpose, message: &[u8], f: impl FnOnce(&[&[u8]]) -> T) -> T {
    match purpose.as_str().as_bytes() {
        [] => f(&[&[0], message]),
        name => f(&[name, &[0], message]),
    }
}

/// HMAC-SHA-256 keyed with `key`.
pub(crate) fn keyed(key: &SymmetricKey) -> Result<HmacSha256, SymmetricError> {
    match &key.mac {
        Some(keyed) => Ok(keyed.clone()),
        None => HmacSha256::new_from_slice(key.secret.expose()).map_err(|_| SymmetricError::Authentication),
    }
}

/// The tag of the concatenation of `parts` under `key`.
pub(crate) fn tag_of(key: &SymmetricKey, parts: &[&[u8]]) -> Result<[u8; TAG_BYTES], SymmetricError> {
    Ok(keyed(key)?.chain_parts(parts).finalize().into_bytes().into())
}

pub(crate) trait ChainParts {
    fn chain_parts(self, parts: &[&[u8]]) -> Self;
}

impl ChainParts for HmacSha256 {
    fn chain_parts(mut self, parts: &[&[u8]]) -> Self {
        for p in parts {
            self.update(p);
        }
        self
    }
}
