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

    /// The JWS `alg` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::EdDsa => "EdDSA",
            Algorithm::Rs256 => "RS256",
            Algorithm::Ps256 => "PS256",
            Algorithm::Es256 => "ES256",
            Algorithm::Es384 => "ES384",
        }
    }

    /// Whether a JWS header or JWK `alg` of `name` names this algorithm: its own name, and
    /// for EdDSA also the RFC 9864 fully-specified `Ed25519` (keyrot's EdDSA keys are
    /// Ed25519 keys, so the key decides the family either way).
    pub fn accepts_name(self, name: &str) -> bool {
        name == self.as_str() || (self == Algorithm::EdDsa && name == ED25519_NAME)
    }

    /// Parses a JWS or JWK `alg`: every name [`FromStr`] accepts, plus RFC 9864's
    /// `Ed25519` for [`Algorithm::EdDsa`]. (`FromStr` itself stays strict: it parses the
    /// names keyrot stores and is configured with.)
    pub fn from_jose_name(name: &str) -> Result<Self, UnsupportedAlgorithm> {
        if name == ED25519_NAME {
            Ok(Algorithm::EdDsa)
        } else {
            name.parse()
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
#[error("unsupported algorithm {0:?}: use EdDSA, RS256, PS256, ES256 or ES384")]
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
}
