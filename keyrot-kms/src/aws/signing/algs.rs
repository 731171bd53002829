//! Which KMS key specs and signing algorithms keyrot's algorithms use.

use super::BACKEND;
use aws_sdk_kms::types::{KeySpec, SigningAlgorithmSpec};
use keyrot_core::custody::CustodyError;
use keyrot_core::{Algorithm, RsaBits};
use sha2::Digest as _;

/// The key spec keyrot creates for `alg` (`None`: KMS does not sign with it here).
pub(super) fn key_spec(alg: Algorithm, bits: RsaBits) -> Option<KeySpec> {
    match (alg, bits) {
        (Algorithm::Es256, _) => Some(KeySpec::EccNistP256),
        (Algorithm::Es384, _) => Some(KeySpec::EccNistP384),
        (Algorithm::Rs256 | Algorithm::Ps256, RsaBits::B2048) => Some(KeySpec::Rsa2048),
        (Algorithm::Rs256 | Algorithm::Ps256, RsaBits::B3072) => Some(KeySpec::Rsa3072),
        (Algorithm::Rs256 | Algorithm::Ps256, RsaBits::B4096) => Some(KeySpec::Rsa4096),
        _ => None,
    }
}

pub(super) fn spec_fits(spec: &KeySpec, alg: Algorithm) -> bool {
    match alg {
        Algorithm::Es256 => *spec == KeySpec::EccNistP256,
        Algorithm::Es384 => *spec == KeySpec::EccNistP384,
        Algorithm::Rs256 | Algorithm::Ps256 => {
            matches!(spec, KeySpec::Rsa2048 | KeySpec::Rsa3072 | KeySpec::Rsa4096)
        }
        _ => false,
    }
}

pub(super) fn specs_for(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::Es256 => "ECC_NIST_P256",
        Algorithm::Es384 => "ECC_NIST_P384",
        _ => "RSA_2048, RSA_3072 or RSA_4096",
    }
}

/// The signing algorithm of `alg`. `RSASSA_PSS_SHA_256` is PSS with MGF1-SHA-256 and a
/// salt as long as the hash (32 bytes), which is what RFC 7518 §3.5 requires for PS256.
pub(super) fn signing_algorithm(alg: Algorithm) -> Option<SigningAlgorithmSpec> {
    match alg {
        Algorithm::Es256 => Some(SigningAlgorithmSpec::EcdsaSha256),
        Algorithm::Es384 => Some(SigningAlgorithmSpec::EcdsaSha384),
        Algorithm::Rs256 => Some(SigningAlgorithmSpec::RsassaPkcs1V15Sha256),
        Algorithm::Ps256 => Some(SigningAlgorithmSpec::RsassaPssSha256),
        _ => None,
    }
}

/// The digest KMS would compute of `message` for `alg`: what `MessageType=DIGEST` sends.
pub(super) fn digest(alg: Algorithm, message: &[u8]) -> Vec<u8> {
    if alg == Algorithm::Es384 {
        sha2::Sha384::digest(message).to_vec()
    } else {
        sha2::Sha256::digest(message).to_vec()
    }
}

pub(super) fn unsupported(alg: Algorithm) -> CustodyError {
    CustodyError::Config(format!(
        "{BACKEND}: keyrot signs with AWS KMS keys for ES256 (ECC_NIST_P256), ES384 (ECC_NIST_P384), \
         RS256 and PS256 (RSA_2048, RSA_3072, RSA_4096), not {alg}: choose one of those for the ring, \
         or hold its keys on a PKCS#11 token or in Vault/OpenBao Transit (KMS's ECC_NIST_EDWARDS25519 \
         keys are not used by this version)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eddsa_is_refused_naming_what_kms_offers() {
        assert_eq!(key_spec(Algorithm::Rs256, RsaBits::B3072), Some(KeySpec::Rsa3072));
        assert!(key_spec(Algorithm::EdDsa, RsaBits::B2048).is_none());
        let e = unsupported(Algorithm::EdDsa).to_string();
        assert!(e.contains("ES256 (ECC_NIST_P256)") && e.contains("not EdDSA"), "{e}");
        assert!(spec_fits(&KeySpec::Rsa4096, Algorithm::Ps256));
        assert!(!spec_fits(&KeySpec::EccNistP384, Algorithm::Es256));
    }
}
