//! Ed25519 (RFC 8032/8037, JWS `EdDSA`): OKP JWKs with `crv: "Ed25519"`, 32-byte seeds,
//! strict verification, weak (small-order) public keys refused.

use super::{
    Family, GenerateOptions, KeyError, MAX_SIGNATURE_BYTES, PrivateParams, PublicParams, Signer, Verifier, broken,
    member_b64, member_str, put_signature,
};
use crate::alg::Algorithm;
use crate::b64;
use crate::secret::SecretBytes;
use ed25519_dalek::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _};
use serde_json::{Map, Value};
use std::any::Any;
use std::sync::Arc;

/// The Ed25519 family.
pub(super) struct Ed25519;

/// Ed25519 keys sign with EdDSA and nothing else.
fn check_alg(alg: Algorithm) -> Result<(), KeyError> {
    if alg == Algorithm::EdDsa {
        Ok(())
    } else {
        Err(KeyError::AlgorithmMismatch { alg })
    }
}

fn private(sk: ed25519_dalek::SigningKey) -> Arc<dyn PrivateParams> {
    Arc::new(Private(sk))
}

impl Family for Ed25519 {
    fn name(&self) -> &'static str {
        "Ed25519"
    }

    fn kty(&self) -> &'static str {
        "OKP"
    }

    fn slow_generation(&self) -> bool {
        false
    }

    fn generate(&self, alg: Algorithm, _: &GenerateOptions) -> Result<Arc<dyn PrivateParams>, KeyError> {
        check_alg(alg)?;
        let mut seed = zeroize::Zeroizing::new([0u8; 32]);
        getrandom::fill(&mut seed[..]).map_err(|_| KeyError::Rng)?;
        Ok(private(ed25519_dalek::SigningKey::from_bytes(&seed)))
    }

    fn import_secret_bytes(&self, alg: Algorithm, bytes: &SecretBytes) -> Result<Arc<dyn PrivateParams>, KeyError> {
        check_alg(alg)?;
        let seed: &[u8; 32] = bytes
            .expose()
            .try_into()
            .map_err(|_| broken("Ed25519 private key must be 32 bytes"))?;
        Ok(private(ed25519_dalek::SigningKey::from_bytes(seed)))
    }

    fn import_pkcs8_pem(&self, pem: &str, alg: Option<Algorithm>) -> Result<Option<Arc<dyn PrivateParams>>, KeyError> {
        let Ok(sk) = ed25519_dalek::SigningKey::from_pkcs8_pem(pem) else {
            return Ok(None);
        };
        check_alg(alg.unwrap_or(Algorithm::EdDsa))?;
        Ok(Some(private(sk)))
    }

    fn public_from_jwk(
        &self,
        obj: &Map<String, Value>,
        alg: Option<Algorithm>,
    ) -> Result<Arc<dyn PublicParams>, KeyError> {
        if member_str(obj, "crv")? != Some("Ed25519") {
            return Err(broken("OKP JWK must have \"crv\": \"Ed25519\""));
        }
        check_alg(alg.unwrap_or(Algorithm::EdDsa))?;
        let x: [u8; 32] = member_b64(obj, "x")?
            .try_into()
            .map_err(|_| broken("Ed25519 \"x\" must be 32 bytes"))?;
        let public = Public { x };
        public.dalek()?;
        Ok(Arc::new(public))
    }
}

/// An Ed25519 public key: the 32-byte compressed point.
#[derive(PartialEq, Eq)]
struct Public {
    x: [u8; 32],
}

impl Public {
    /// The point, validated: on the curve and not of small order.
    fn dalek(&self) -> Result<ed25519_dalek::VerifyingKey, KeyError> {
        let vk = ed25519_dalek::VerifyingKey::from_bytes(&self.x)
            .map_err(|_| broken("Ed25519 public key is not a valid point"))?;
        if vk.is_weak() {
            return Err(KeyError::WeakKey);
        }
        Ok(vk)
    }
}

impl PublicParams for Public {
    fn algorithm(&self) -> Algorithm {
        Algorithm::EdDsa
    }

    fn rsa_bits(&self) -> Option<usize> {
        None
    }

    fn thumbprint_input(&self) -> String {
        format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#, b64::encode(&self.x))
    }

    fn jwk_members(&self, m: &mut Map<String, Value>) {
        m.insert("kty".into(), "OKP".into());
        m.insert("crv".into(), "Ed25519".into());
        m.insert("x".into(), b64::encode(&self.x).into());
    }

    fn verifier(&self) -> Result<Arc<dyn Verifier>, KeyError> {
        Ok(Arc::new(self.dalek()?))
    }

    fn private_from_jwk(&self, _obj: &Map<String, Value>, d: &SecretBytes) -> Result<Arc<dyn PrivateParams>, KeyError> {
        let seed: &[u8; 32] = d
            .expose()
            .try_into()
            .map_err(|_| broken("Ed25519 \"d\" must be 32 bytes"))?;
        let sk = ed25519_dalek::SigningKey::from_bytes(seed);
        if sk.verifying_key().to_bytes() != self.x {
            return Err(broken("Ed25519 \"d\" does not match \"x\""));
        }
        Ok(private(sk))
    }

    fn same_as(&self, other: &dyn PublicParams) -> bool {
        other.as_any().downcast_ref::<Self>().is_some_and(|o| o == self)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// An Ed25519 private key (zeroised on drop by `ed25519-dalek`).
struct Private(ed25519_dalek::SigningKey);

impl PrivateParams for Private {
    fn algorithm(&self) -> Algorithm {
        Algorithm::EdDsa
    }

    fn public(&self) -> Arc<dyn PublicParams> {
        Arc::new(Public {
            x: self.0.verifying_key().to_bytes(),
        })
    }

    fn signer(&self) -> Box<dyn Signer> {
        Box::new(self.0.clone())
    }

    fn to_secret_bytes(&self) -> Result<SecretBytes, KeyError> {
        Ok(SecretBytes::from_slice(self.0.as_bytes()))
    }

    fn to_pkcs8_der(&self) -> Result<SecretBytes, KeyError> {
        let doc = self
            .0
            .to_pkcs8_der()
            .map_err(|_| broken("Ed25519 key could not be encoded as PKCS#8"))?;
        Ok(SecretBytes::from_slice(doc.as_bytes()))
    }
}

impl Signer for ed25519_dalek::SigningKey {
    fn sign_into(&self, message: &[u8], out: &mut [u8; MAX_SIGNATURE_BYTES]) -> Result<usize, KeyError> {
        put_signature(&ed25519_dalek::Signer::sign(self, message).to_bytes(), out)
    }

    fn signature_len(&self) -> usize {
        ed25519_dalek::SIGNATURE_LENGTH
    }
}

impl Verifier for ed25519_dalek::VerifyingKey {
    fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        let Ok(sig) = ed25519_dalek::Signature::from_slice(signature) else {
            return false;
        };
        self.verify_strict(message, &sig).is_ok()
    }
}
