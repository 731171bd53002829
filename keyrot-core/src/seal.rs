//! Keys at rest: private keys are sealed with XChaCha20-Poly1305 under a wrapping key
//! derived by HKDF-SHA-256 from a master key. The associated data binds each ciphertext
//! to its ring, kid and algorithm, so a sealed key moved to another row does not open.

use crate::alg::Algorithm;
use crate::b64;
use crate::secret::SecretBytes;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use std::collections::HashMap;
use std::fmt;

const NONCE_LEN: usize = 24;
const HKDF_SALT: &[u8] = b"keyrot/seal/v1";
const HKDF_MAC_SALT: &[u8] = b"keyrot/integrity/v1";
const FORMAT_V1: u8 = 1;

/// A sealed private key as stored: the id of the master key that sealed it and
/// `version || nonce || ciphertext || tag`.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedKey {
    /// Which master key sealed it.
    pub master_key_id: String,
    /// The sealed bytes.
    pub ciphertext: Vec<u8>,
}

impl fmt::Debug for SealedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedKey")
            .field("master_key_id", &self.master_key_id)
            .field("len", &self.ciphertext.len())
            .finish()
    }
}

/// What a sealed key is bound to.
#[derive(Debug, Clone, Copy)]
pub struct SealContext<'a> {
    /// Ring name.
    pub ring: &'a str,
    /// Key id.
    pub kid: &'a str,
    /// Algorithm.
    pub alg: Algorithm,
}

impl SealContext<'_> {
    fn aad(&self) -> Vec<u8> {
        let mut out = b"keyrot/v1".to_vec();
        for part in [self.ring.as_bytes(), self.kid.as_bytes(), self.alg.as_str().as_bytes()] {
            out.extend_from_slice(&(part.len() as u32).to_be_bytes());
            out.extend_from_slice(part);
        }
        out
    }
}

/// Why sealing or opening failed. Never carries key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The sealed key names a master key this process does not have. Fails closed.
    #[error("sealed with unknown master key id {0:?}: configure that master key (old keys open by id) and retry")]
    UnknownMasterKey(String),
    /// Authentication failed: wrong master key, tampered bytes, or a ciphertext moved to
    /// another ring, kid or algorithm.
    #[error("sealed key failed authentication (wrong master key, tampering, or moved between keys)")]
    Authentication,
    /// Sealed bytes of an unknown format.
    #[error("sealed key has an unknown format")]
    Format,
    /// A master key specification could not be parsed.
    #[error("invalid master key: {0}")]
    InvalidMasterKey(String),
    /// The random number generator failed.
    #[error("the system random number generator failed")]
    Rng,
    /// The master keys' custody backend (HSM or KMS) does not answer: no new key is sealed
    /// until it does (what is sealed already keeps opening).
    #[error("the master keys' custody backend {backend} does not answer: no new key is sealed until it does")]
    CustodyUnavailable {
        /// `pkcs11`, `vault-transit`, `aws-kms`.
        backend: String,
    },
}

/// A message authentication code under one master key: which key, and the tag.
#[derive(Clone, PartialEq, Eq)]
pub struct Mac {
    /// The master key whose derived authentication key made the tag.
    pub master_key_id: String,
    /// The tag (HMAC-SHA-256 for [`MasterKeySealer`]).
    pub tag: Vec<u8>,
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mac")
            .field("master_key_id", &self.master_key_id)
            .field("tag", &b64::encode(&self.tag))
            .finish()
    }
}

impl Mac {
    /// `ID:BASE64URL`, as stored.
    pub fn to_text(&self) -> String {
        format!("{}:{}", self.master_key_id, b64::encode(&self.tag))
    }

    /// Parses [`Mac::to_text`].
    pub fn parse(s: &str) -> Option<Self> {
        let (id, tag) = s.split_once(':')?;
        if !valid_id(id) {
            return None;
        }
        Some(Self {
            master_key_id: id.to_owned(),
            tag: b64::decode(tag)?,
        })
    }
}

/// Seals and opens private key bytes, and authenticates the records that decide what
/// verifies (ring manifests, the audit chain). Implement it to keep master keys in a KMS
/// or HSM.
pub trait Sealer: fmt::Debug + Send + Sync + 'static {
    /// Authenticates `message` under the primary master key (a key derived for
    /// authentication only, never the sealing key).
    fn authenticate(&self, message: &[u8]) -> Result<Mac, SealError>;
    /// Checks a tag made by [`Sealer::authenticate`] with the master key it names, in
    /// constant time. An unknown master key id fails closed.
    fn check_authentication(&self, mac: &Mac, message: &[u8]) -> Result<(), SealError>;
    /// The master key id new seals use.
    fn primary_key_id(&self) -> String;
    /// Seals `plaintext` under the primary master key, bound to `ctx`.
    fn seal(&self, plaintext: &SecretBytes, ctx: &SealContext<'_>) -> Result<SealedKey, SealError>;
    /// Opens a sealed key with the master key it names.
    fn open(&self, sealed: &SealedKey, ctx: &SealContext<'_>) -> Result<SecretBytes, SealError>;
    /// The health of the HSM or KMS holding the master keys, for a sealer whose keys are
    /// under custody ([`crate::custody::CustodySealer`]); `None` for keys from configuration.
    fn custody(&self) -> Option<crate::custody::CustodyHealth> {
        None
    }
}

/// A 256-bit master key with an id. `Debug` shows only the id.
#[derive(Clone)]
pub struct MasterKey {
    id: String,
    secret: SecretBytes,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKey")
            .field("id", &self.id)
            .field("secret", &"[redacted]")
            .finish()
    }
}

fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl MasterKey {
    /// A master key from 32 secret bytes.
    pub fn new(id: impl Into<String>, secret: SecretBytes) -> Result<Self, SealError> {
        let id = id.into();
        if !valid_id(&id) {
            return Err(SealError::InvalidMasterKey(
                "id must be 1-64 characters of A-Z a-z 0-9 . _ -".into(),
            ));
        }
        if secret.len() != 32 {
            return Err(SealError::InvalidMasterKey(format!(
                "master key {id:?} must be 32 bytes, got {}",
                secret.len()
            )));
        }
        Ok(Self { id, secret })
    }

    /// A fresh random master key.
    pub fn generate(id: impl Into<String>) -> Result<Self, SealError> {
        let mut bytes = vec![0u8; 32];
        getrandom::fill(&mut bytes).map_err(|_| SealError::Rng)?;
        Self::new(id, SecretBytes::new(bytes))
    }

    /// Parses `ID:BASE64URL` (32 bytes, unpadded base64url), the format of
    /// `KEYROT_MASTER_KEY`.
    pub fn parse(spec: &str) -> Result<Self, SealError> {
        let (id, key) = spec
            .trim()
            .split_once(':')
            .ok_or_else(|| SealError::InvalidMasterKey("expected ID:BASE64URL (32 bytes)".into()))?;
        let bytes = b64::decode(key)
            .ok_or_else(|| SealError::InvalidMasterKey(format!("master key {id:?} is not unpadded base64url")))?;
        Self::new(id, SecretBytes::new(bytes))
    }

    /// Renders `ID:BASE64URL` (for writing a generated key to a protected file).
    pub fn to_spec(&self) -> SecretBytes {
        SecretBytes::new(format!("{}:{}", self.id, b64::encode(self.secret.expose())).into_bytes())
    }

    /// The id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The secret, for a custody backend to wrap.
    pub(crate) fn secret(&self) -> &SecretBytes {
        &self.secret
    }
}

/// The default [`Sealer`]: XChaCha20-Poly1305 under HKDF-derived wrapping keys, with one
/// primary master key for new seals and any number of older ones for opening.
pub struct MasterKeySealer {
    primary: String,
    ciphers: HashMap<String, XChaCha20Poly1305>,
    mac_keys: HashMap<String, zeroize::Zeroizing<[u8; 32]>>,
}

impl fmt::Debug for MasterKeySealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ids: Vec<_> = self.ciphers.keys().collect();
        ids.sort();
        f.debug_struct("MasterKeySealer")
            .field("primary", &self.primary)
            .field("key_ids", &ids)
            .finish()
    }
}

impl MasterKeySealer {
    /// A sealer whose primary is `primary`; `older` keys open what they sealed.
    pub fn new(primary: MasterKey, older: impl IntoIterator<Item = MasterKey>) -> Result<Self, SealError> {
        let mut ciphers = HashMap::new();
        let mut mac_keys = HashMap::new();
        let primary_id = primary.id.clone();
        for mk in std::iter::once(primary).chain(older) {
            let mut wrapping = zeroize::Zeroizing::new([0u8; 32]);
            hkdf::Hkdf::<sha2::Sha256>::new(Some(HKDF_SALT), mk.secret.expose())
                .expand(mk.id.as_bytes(), &mut wrapping[..])
                .map_err(|_| SealError::InvalidMasterKey("HKDF expansion failed".into()))?;
            let mut mac_key = zeroize::Zeroizing::new([0u8; 32]);
            hkdf::Hkdf::<sha2::Sha256>::new(Some(HKDF_MAC_SALT), mk.secret.expose())
                .expand(mk.id.as_bytes(), &mut mac_key[..])
                .map_err(|_| SealError::InvalidMasterKey("HKDF expansion failed".into()))?;
            mac_keys.insert(mk.id.clone(), mac_key);
            let cipher = XChaCha20Poly1305::new_from_slice(&wrapping[..])
                .map_err(|_| SealError::InvalidMasterKey("wrapping key length".into()))?;
            if ciphers.insert(mk.id.clone(), cipher).is_some() {
                return Err(SealError::InvalidMasterKey(format!(
                    "master key id {:?} given twice",
                    mk.id
                )));
            }
        }
        Ok(Self {
            primary: primary_id,
            ciphers,
            mac_keys,
        })
    }

    /// Parses a comma-separated list of `ID:BASE64URL` master keys; the first is primary.
    pub fn from_spec(spec: &str) -> Result<Self, SealError> {
        let mut keys = spec.split(',').filter(|s| !s.trim().is_empty()).map(MasterKey::parse);
        let primary = keys
            .next()
            .ok_or_else(|| SealError::InvalidMasterKey("no master key given".into()))??;
        let older = keys.collect::<Result<Vec<_>, _>>()?;
        Self::new(primary, older)
    }
}

impl MasterKeySealer {
    /// Whether the sealer holds the master key `id`.
    pub(crate) fn has_key(&self, id: &str) -> bool {
        self.ciphers.contains_key(id)
    }

    fn hmac(&self, id: &str, message: &[u8]) -> Result<hmac::Hmac<sha2::Sha256>, SealError> {
        use hmac::{KeyInit as _, Mac as _};
        let key = self
            .mac_keys
            .get(id)
            .ok_or_else(|| SealError::UnknownMasterKey(id.to_owned()))?;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key[..])
            .map_err(|_| SealError::InvalidMasterKey("authentication key length".into()))?;
        mac.update(message);
        Ok(mac)
    }
}

impl Sealer for MasterKeySealer {
    fn authenticate(&self, message: &[u8]) -> Result<Mac, SealError> {
        use hmac::Mac as _;
        let tag = self.hmac(&self.primary, message)?.finalize().into_bytes().to_vec();
        Ok(Mac {
            master_key_id: self.primary.clone(),
            tag,
        })
    }

    fn check_authentication(&self, mac: &Mac, message: &[u8]) -> Result<(), SealError> {
        use hmac::Mac as _;
        self.hmac(&mac.master_key_id, message)?
            .verify_slice(&mac.tag)
            .map_err(|_| SealError::Authentication)
    }

    fn primary_key_id(&self) -> String {
        self.primary.clone()
    }

    fn seal(&self, plaintext: &SecretBytes, ctx: &SealContext<'_>) -> Result<SealedKey, SealError> {
        let cipher = self
            .ciphers
            .get(&self.primary)
            .ok_or_else(|| SealError::UnknownMasterKey(self.primary.clone()))?;
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|_| SealError::Rng)?;
        let aad = ctx.aad();
        let ct = cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: plaintext.expose(),
                    aad: &aad,
                },
            )
            .map_err(|_| SealError::Authentication)?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + ct.len());
        out.push(FORMAT_V1);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(SealedKey {
            master_key_id: self.primary.clone(),
            ciphertext: out,
        })
    }

    fn open(&self, sealed: &SealedKey, ctx: &SealContext<'_>) -> Result<SecretBytes, SealError> {
        let cipher = self
            .ciphers
            .get(&sealed.master_key_id)
            .ok_or_else(|| SealError::UnknownMasterKey(sealed.master_key_id.clone()))?;
        let bytes = &sealed.ciphertext;
        if bytes.len() < 1 + NONCE_LEN + 16 || bytes[0] != FORMAT_V1 {
            return Err(SealError::Format);
        }
        let nonce: [u8; NONCE_LEN] = bytes[1..1 + NONCE_LEN].try_into().map_err(|_| SealError::Format)?;
        let aad = ctx.aad();
        cipher
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: &bytes[1 + NONCE_LEN..],
                    aad: &aad,
                },
            )
            .map(SecretBytes::new)
            .map_err(|_| SealError::Authentication)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(kid: &str) -> SealContext<'_> {
        SealContext {
            ring: "r",
            kid,
            alg: Algorithm::EdDsa,
        }
    }

    #[test]
    fn seal_open_bind_and_fail_closed() -> Result<(), SealError> {
        let old = MasterKey::generate("old")?;
        let new = MasterKey::generate("new")?;
        let plain = SecretBytes::from_slice(&[7u8; 32]);
        let sealer_old = MasterKeySealer::new(old.clone(), [])?;
        let sealed = sealer_old.seal(&plain, &ctx("k1"))?;
        assert_eq!(sealed.master_key_id, "old");
        assert!(!sealed.ciphertext.windows(32).any(|w| w == plain.expose()));
        assert_eq!(sealer_old.open(&sealed, &ctx("k1"))?.expose(), plain.expose());
        // Bound to ring/kid/alg.
        assert_eq!(sealer_old.open(&sealed, &ctx("k2")), Err(SealError::Authentication));
        let rsa_ctx = SealContext {
            alg: Algorithm::Rs256,
            ..ctx("k1")
        };
        assert_eq!(sealer_old.open(&sealed, &rsa_ctx), Err(SealError::Authentication));
        // Tampering.
        let mut t = sealed.clone();
        if let Some(b) = t.ciphertext.last_mut() {
            *b ^= 1;
        }
        assert_eq!(sealer_old.open(&t, &ctx("k1")), Err(SealError::Authentication));
        // Rotation of master keys: new primary, old still opens by id.
        let both = MasterKeySealer::new(new.clone(), [old])?;
        assert_eq!(both.open(&sealed, &ctx("k1"))?.expose(), plain.expose());
        assert_eq!(both.seal(&plain, &ctx("k1"))?.master_key_id, "new");
        // Unknown id fails closed, naming the id.
        let only_new = MasterKeySealer::new(new, [])?;
        let err = only_new.open(&sealed, &ctx("k1")).err();
        assert_eq!(err, Some(SealError::UnknownMasterKey("old".into())));
        assert!(err.map(|e| e.to_string()).unwrap_or_default().contains("\"old\""));
        Ok(())
    }

    #[test]
    fn master_key_spec_round_trip_and_debug() -> Result<(), SealError> {
        let mk = MasterKey::generate("mk1")?;
        let spec = String::from_utf8(mk.to_spec().expose().to_vec()).unwrap_or_default();
        let back = MasterKey::parse(&spec)?;
        assert_eq!(back.id(), "mk1");
        let secret_part = spec.split_once(':').map(|(_, s)| s.to_owned()).unwrap_or_default();
        assert!(!format!("{mk:?}").contains(&secret_part));
        assert!(MasterKey::parse("mk1:AAAA").is_err());
        assert!(MasterKey::parse("no-colon").is_err());
        assert!(MasterKeySealer::from_spec(&format!("{spec},{spec}")).is_err());
        Ok(())
    }
}
