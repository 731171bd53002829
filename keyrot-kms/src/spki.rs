//! Public keys as backends hand them out (X.509 SubjectPublicKeyInfo, DER or PEM) turned
//! into keyrot's [`PublicKey`], through a JWK so that keyrot-core's own checks apply.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keyrot_core::{Algorithm, PublicKey};
use pkcs1::der::Decode as _;
use spki::ObjectIdentifier;
use spki::SubjectPublicKeyInfoRef;

const ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");

/// The DER inside a `-----BEGIN PUBLIC KEY-----` PEM block.
#[cfg(feature = "vault")]
pub(crate) fn pem_to_der(pem: &str) -> Result<Vec<u8>, String> {
    let body: String = pem
        .lines()
        .map(str::trim)
        .skip_while(|l| *l != "-----BEGIN PUBLIC KEY-----")
        .skip(1)
        .take_while(|l| *l != "-----END PUBLIC KEY-----")
        .collect();
    if body.is_empty() {
        return Err("not a PEM public key".into());
    }
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|_| "the PEM public key is not base64".into())
}

/// The public key of `alg` in `der` (a SubjectPublicKeyInfo); a key of another type or
/// curve is refused.
pub(crate) fn public_key(der: &[u8], alg: Algorithm) -> Result<PublicKey, String> {
    let info = SubjectPublicKeyInfoRef::from_der(der).map_err(|e| format!("not a SubjectPublicKeyInfo: {e}"))?;
    let bits = info
        .subject_public_key
        .as_bytes()
        .ok_or("the public key is not a whole number of bytes")?;
    let oid = info.algorithm.oid;
    let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
    let jwk = match alg {
        Algorithm::EdDsa if oid == ED25519 && bits.len() == 32 => {
            serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": b64(bits)})
        }
        Algorithm::Es256 | Algorithm::Es384 if oid == EC_PUBLIC_KEY => {
            let (crv, n) = if alg == Algorithm::Es256 {
                ("P-256", 32)
            } else {
                ("P-384", 48)
            };
            if bits.len() != 1 + 2 * n || bits.first() != Some(&4) {
                return Err(format!("not an uncompressed {crv} point"));
            }
            serde_json::json!({"kty": "EC", "crv": crv, "x": b64(&bits[1..=n]), "y": b64(&bits[1 + n..])})
        }
        Algorithm::Rs256 | Algorithm::Ps256 if oid == RSA_ENCRYPTION => {
            let rsa = pkcs1::RsaPublicKey::<pkcs1::UintRef<'_>>::from_der(bits)
                .map_err(|e| format!("not an RSA public key: {e}"))?;
            serde_json::json!({"kty": "RSA", "n": b64(rsa.modulus.as_bytes()), "e": b64(rsa.public_exponent.as_bytes())})
        }
        _ => return Err(format!("a key of type {oid} is not a {alg} key")),
    };
    PublicKey::from_jwk(&jwk, Some(alg)).map_err(|e| format!("the public key is unusable: {e}"))
}
