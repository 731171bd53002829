//! Signature algorithms and key sizes.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A JWS signature algorithm keyrot signs and verifies with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[non_exhaustive]
pub enum Algorithm {
    /// Ed25519 (RFC 8037), published as `"alg": "EdDSA"`. The default.
    #[default]
    #[serde(rename = "EdDSA")]
    EdDsa,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    #[serde(rename = "RS256")]
    Rs256,
    /// RSASSA-PSS with SHA-256 and MGF1-SHA-256, salt length 32.
    #[serde(rename = "PS256")]
    Ps256,
    /// ECDSA on P-256 with SHA-256 (RFC 7518 §3.4), signatures in the fixed-length `R‖S`.
    #[serde(rename = "ES256")]
    Es256,
    /// ECDSA on P-384 with SHA-384 (RFC 7518 §3.4), signatures in the fixed-length `R‖S`.
    #[serde(rename = "ES384")]
    Es384,
    /// A MAC ring's keys: HMAC-SHA-256 with 256-bit secrets ([`KeyKind::Mac`]). Not a JWS
    /// algorithm: never in a JWKS, never accepted by token verification.
    #[serde(rename = "HMAC-SHA256")]
    HmacSha256,
    /// An AEAD ring's keys: XChaCha20-Poly1305 with 256-bit keys ([`KeyKind::Aead`]), named
    /// `XC20P` as in draft-amringer-jose-chacha. Not a JWS algorithm.
    #[serde(rename = "XC20P")]
    XChaCha20Poly1305,
}

/// What a ring's keys do. A ring holds keys of one kind, fixed by its policy's algorithm
/// ([`Algorithm::kind`]); every key row's algorithm is authenticated by the ring manifest,
/// so no row can change a key's kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum KeyKind {
    /// Asymmetric JWS signing keys: tokens, the JWKS. The default.
    #[default]
    Signing,
    /// HMAC-SHA-256 secrets: signed webhooks (Standard Webhooks), signed cookies, MACs.
    Mac,
    /// XChaCha20-Poly1305 keys: encrypted cookies, field encryption.
    Aead,
}

impl KeyKind {
    /// The lowercase name (`signing`, `mac`, `aead`), as `keyrotctl init --kind` takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Signing => "signing",
            KeyKind::Mac => "mac",
            KeyKind::Aead => "aead",
        }
    }

    /// The algorithm new keys of a ring of this kind get by default: EdDSA, HMAC-SHA256,
    /// XC20P.
    pub fn default_algorithm(self) -> Algorithm {
        match self {
            KeyKind::Signing => Algorithm::EdDsa,
            KeyKind::Mac => Algorithm::HmacSha256,
            KeyKind::Aead => Algorithm::XChaCha20Poly1305,
        }
    }
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A key kind name other than `signing`, `mac` or `aead`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown key kind: use signing, mac or aead")]
pub struct UnknownKeyKind;

impl FromStr for KeyKind {
    type Err = UnknownKeyKind;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "signing" => Ok(KeyKind::Signing),
            "mac" => Ok(KeyKind::Mac),
            "aead" => Ok(KeyKind::Aead),
            _ => Err(UnknownKeyKind),
        }
    }
}

impl Algorithm {
    /// Every algorithm, in the order key import tries their families. A new variant goes
    /// here as well as in [`Algorithm::as_str`] and `FromStr`.
    pub(crate) const ALL: [Algorithm; 5] = [
        Algorithm::EdDsa,
        Algorithm::Rs256,
        Algorithm::Ps256,
        Algorithm::Es256,
        Algorithm::Es384,
    ];

    /// The JWS `alg` value (for a symmetric algorithm, its stored name).
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::EdDsa => "EdDSA",
            Algorithm::Rs256 => "RS256",
            Algorithm::Ps256 => "PS256",
            Algorithm::Es256 => "ES256",
            Algorithm::Es384 => "ES384",
            Algorithm::HmacSha256 => "HMAC-SHA256",
            Algorithm::XChaCha20Poly1305 => "XC20P",
        }
    }

    /// The kind of key this algorithm is for.
    pub fn kind(self) -> KeyKind {
        match self {
            Algorithm::EdDsa | Algorithm::Rs256 | Algorithm::Ps256 | Algorithm::Es256 | Algorithm::Es384 => {
                KeyKind::Signing
            }
            Algorithm::HmacSha256 => KeyKind::Mac,
            Algorithm::XChaCha20Poly1305 => KeyKind::Aead,
        }
    }

    /// Whether this is a JWS signature algorithm (the only kind a token, a JWK or a JWKS
    /// may name).
    pub fn is_signing(self) -> bool {
        self.kind() == KeyKind::Signing
    }

    /// Whether a JWS header or JWK `alg` of `name` names this algorithm: its own name, and
    /// for EdDSA also the RFC 9864 fully-specified `Ed25519` (keyrot's EdDSA keys are
    /// Ed25519 keys, so the key decides the family either way).
    pub fn accepts_name(self, name: &str) -> bool {
        self.is_signing() && name == self.as_str() || (self == Algorithm::EdDsa && name == ED25519_NAME)
    }

    /// Parses a JWS or JWK `alg`: every name [`FromStr`] accepts, plus RFC 9864's
    /// `Ed25519` for [`Algorithm::EdDsa`]. (`FromStr` itself stays strict: it parses the
    /// names keyrot stores and is configured with.)
    /// A symmetric algorithm's name is refused here: no JOSE header or JWK ever selects a
    /// MAC or AEAD key.
    pub fn from_jose_name(name: &str) -> Result<Self, UnsupportedAlgorithm> {
        if name == ED25519_NAME {
            return Ok(Algorithm::EdDsa);
        }
        match name.parse::<Algorithm>() {
            Ok(alg) if alg.is_signing() => Ok(alg),
            _ => Err(UnsupportedAlgorithm(name.chars().take(32).collect())),
        }
    }

    /// The name written in headers and JWKs for this algorithm under `naming`.
    pub fn name_with(self, naming: EdDsaName) -> &'static str {
        match (self, naming) {
            (Algorithm::EdDsa, EdDsaName::Ed25519) => ED25519_NAME,
            _ => self.as_str(),
        }
    }

    /// Whether this algorithm uses RSA keys.
    pub fn is_rsa(self) -> bool {
        matches!(self, Algorithm::Rs256 | Algorithm::Ps256)
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// RFC 9864's fully-specified JOSE name for EdDSA with Ed25519.
pub const ED25519_NAME: &str = "Ed25519";

/// Which name a ring writes for its Ed25519 keys, in the JWS header `alg` of the tokens it
/// signs and in the JWK `alg` it publishes. Verification accepts both whichever is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[non_exhaustive]
pub enum EdDsaName {
    /// `EdDSA` (RFC 8037), the default, understood by every JOSE library.
    #[default]
    EdDsa,
    /// `Ed25519` (RFC 9864), the fully-specified name.
    Ed25519,
}

/// The error for an algorithm name keyrot does not support.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unsupported algorithm {0:?}: use EdDSA, RS256, PS256, ES256 or ES384 (HMAC-SHA256 and XC20P for symmetric rings)"
)]
pub struct UnsupportedAlgorithm(pub String);

impl FromStr for Algorithm {
    type Err = UnsupportedAlgorithm;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "EdDSA" => Ok(Algorithm::EdDsa),
            "RS256" => Ok(Algorithm::Rs256),
            "PS256" => Ok(Algorithm::Ps256),
            "ES256" => Ok(Algorithm::Es256),
            "ES384" => Ok(Algorithm::Es384),
            "HMAC-SHA256" => Ok(Algorithm::HmacSha256),
            "XC20P" => Ok(Algorithm::XChaCha20Poly1305),
            other => Err(UnsupportedAlgorithm(other.chars().take(32).collect())),
        }
    }
}

/// RSA modulus sizes keyrot generates and accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum RsaBits {
    /// 2048-bit modulus.
    #[default]
    B2048,
    /// 3072-bit modulus.
    B3072,
    /// 4096-bit modulus.
    B4096,
}

impl RsaBits {
    /// The modulus size in bits.
    pub fn bits(self) -> usize {
        match self {
            RsaBits::B2048 => 2048,
            RsaBits::B3072 => 3072,
            RsaBits::B4096 => 4096,
        }
    }

    /// The size for a modulus of exactly `bits` bits, if supported.
    pub fn from_bits(bits: usize) -> Option<Self> {
        match bits {
            2048 => Some(RsaBits::B2048),
            3072 => Some(RsaBits::B3072),
            4096 => Some(RsaBits::B4096),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_is_refused() {
        for a in Algorithm::ALL {
            assert_eq!(a.as_str().parse::<Algorithm>(), Ok(a));
            assert_eq!(serde_json::to_string(&a).ok(), Some(format!("\"{a}\"")));
            assert_eq!(Algorithm::from_jose_name(a.as_str()), Ok(a));
            assert!(a.accepts_name(a.as_str()));
        }
        assert_eq!(Algorithm::from_jose_name("Ed25519"), Ok(Algorithm::EdDsa));
        assert!(Algorithm::EdDsa.accepts_name("Ed25519"));
        assert!(!Algorithm::Es256.accepts_name("Ed25519") && !Algorithm::Es256.accepts_name("ES384"));
        assert_eq!(Algorithm::EdDsa.name_with(EdDsaName::Ed25519), "Ed25519");
        assert_eq!(Algorithm::EdDsa.name_with(EdDsaName::EdDsa), "EdDSA");
        assert_eq!(Algorithm::Es256.name_with(EdDsaName::Ed25519), "ES256");
        // ES256 became supported in issue 11; ES512 and a lowercase es256 still are not.
        for bad in ["none", "HS256", "Ed25519", "rs256", "ES512", "es256"] {
            assert!(bad.parse::<Algorithm>().is_err(), "{bad}");
        }
    }

    #[test]
    fn symmetric_algorithms_are_stored_by_name_and_never_a_jose_algorithm() {
        assert_eq!("HMAC-SHA256".parse::<Algorithm>(), Ok(Algorithm::HmacSha256));
        assert_eq!("XC20P".parse::<Algorithm>(), Ok(Algorithm::XChaCha20Poly1305));
        assert_eq!(Algorithm::HmacSha256.kind(), KeyKind::Mac);
        assert_eq!(Algorithm::XChaCha20Poly1305.kind(), KeyKind::Aead);
        assert_eq!(Algorithm::Rs256.kind(), KeyKind::Signing);
        for name in ["HMAC-SHA256", "XC20P", "HS256"] {
            assert!(Algorithm::from_jose_name(name).is_err(), "{name}");
        }
        assert!(!Algorithm::HmacSha256.accepts_name("HMAC-SHA256"));
        assert!(!Algorithm::XChaCha20Poly1305.accepts_name("XC20P"));
        assert_eq!("mac".parse::<KeyKind>(), Ok(KeyKind::Mac));
        assert_eq!("aead".parse::<KeyKind>(), Ok(KeyKind::Aead));
        assert!("hmac".parse::<KeyKind>().is_err());
    }
}
