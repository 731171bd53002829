//! RSA (RFC 7518 §3.3 and §3.5): RS256 (PKCS#1 v1.5) and PS256 (PSS, MGF1-SHA-256, salt
//! 32) with SHA-256, moduli of 2048–4096 bits, PKCS#8 DER in storage.

use super::{
    Family, GenerateOptions, KeyError, MAX_SIGNATURE_BYTES, PrivateParams, PublicParams, RSA_MAX_BITS, RSA_MIN_BITS,
    Signer, Verifier, broken, member_b64, put_signature,
};
use crate::alg::Algorithm;
use crate::b64;
use crate::secret::SecretBytes;
use ::rsa::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _};
use ::rsa::signature::SignatureEncoding as _;
use ::rsa::traits::PublicKeyParts as _;
use ::rsa::{BoxedUint, sha2::Sha256};
use serde_json::{Map, Value};
use std::any::Any;
use std::sync::Arc;

/// The RSA family.
pub(super) struct Rsa;

/// The signature scheme an RSA key is bound to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scheme {
    /// RS256.
    Pkcs1v15,
    /// PS256.
    Pss,
}

impl Scheme {
    fn for_alg(alg: Algorithm) -> Result<Self, KeyError> {
        match alg {
            Algorithm::Rs256 => Ok(Scheme::Pkcs1v15),
            Algorithm::Ps256 => Ok(Scheme::Pss),
            // Every other family's algorithm: not an RSA key's.
            _ => Err(KeyError::AlgorithmMismatch { alg }),
        }
    }

    fn algorithm(self) -> Algorithm {
        match self {
            Scheme::Pkcs1v15 => Algorithm::Rs256,
            Scheme::Pss => Algorithm::Ps256,
        }
    }
}

fn bit_len(be: &[u8]) -> usize {
    let trimmed = trim_leading_zeros(be);
    match trimmed.first() {
        None => 0,
        Some(b) => trimmed.len() * 8 - b.leading_zeros() as usize,
    }
}

fn trim_leading_zeros(be: &[u8]) -> &[u8] {
    let start = be.iter().position(|b| *b != 0).unwrap_or(be.len());
    &be[start..]
}

fn check_bits(n: &[u8]) -> Result<(), KeyError> {
    let bits = bit_len(n);
    if !(RSA_MIN_BITS..=RSA_MAX_BITS).contains(&bits) {
        return Err(KeyError::RsaSize { bits });
    }
    Ok(())
}

fn rsa_public(n: &[u8], e: &[u8]) -> Result<::rsa::PublicKey, KeyError> {
    check_bits(n)?;
    ::rsa::PublicKey::new(BoxedUint::from_be_slice_vartime(n), BoxedUint::from_be_slice_vartime(e))
        .map_err(|_| broken("RSA public key rejected (modulus or exponent invalid)"))
}

/// A private key of an accepted size, bound to `scheme`.
fn private(scheme: Scheme, key: ::rsa::PrivateKey) -> Result<Arc<dyn PrivateParams>, KeyError> {
    check_bits(&key.n_bytes())?;
    Ok(Arc::new(Private { key, scheme }))
}

impl Family for Rsa {
    fn name(&self) -> &'static str {
        "RSA"
    }

    fn kty(&self) -> &'static str {
        "RSA"
    }

    fn slow_generation(&self) -> bool {
        true
    }

    fn generate(&self, alg: Algorithm, options: &GenerateOptions) -> Result<Arc<dyn PrivateParams>, KeyError> {
        let scheme = Scheme::for_alg(alg)?;
        let key = ::rsa::PrivateKey::new(&mut getrandom::SysRng, options.rsa_bits.bits())
            .map_err(|e| KeyError::RsaGeneration(Box::new(e)))?;
        Ok(Arc::new(Private { key, scheme }))
    }

    fn import_secret_bytes(&self, alg: Algorithm, bytes: &SecretBytes) -> Result<Arc<dyn PrivateParams>, KeyError> {
        let scheme = Scheme::for_alg(alg)?;
        let key = ::rsa::PrivateKey::from_pkcs8_der(bytes.expose())
            .map_err(|_| broken("RSA private key is not valid PKCS#8"))?;
        private(scheme, key)
    }

    fn import_pkcs8_pem(&self, pem: &str, alg: Option<Algorithm>) -> Result<Option<Arc<dyn PrivateParams>>, KeyError> {
        let Ok(key) = ::rsa::PrivateKey::from_pkcs8_pem(pem) else {
            return Ok(None);
        };
        let scheme = Scheme::for_alg(alg.unwrap_or(Algorithm::Rs256))?;
        private(scheme, key).map(Some)
    }

    fn public_from_jwk(
        &self,
        obj: &Map<String, Value>,
        alg: Option<Algorithm>,
    ) -> Result<Arc<dyn PublicParams>, KeyError> {
        let scheme = Scheme::for_alg(alg.unwrap_or(Algorithm::Rs256))?;
        let n = trim_leading_zeros(&member_b64(obj, "n")?).to_vec();
        let e = trim_leading_zeros(&member_b64(obj, "e")?).to_vec();
        rsa_public(&n, &e)?;
        Ok(Arc::new(Public { n, e, scheme }))
    }
}

/// An RSA public key: big-endian modulus and exponent without leading zeros.
#[derive(PartialEq, Eq)]
struct Public {
    n: Vec<u8>,
    e: Vec<u8>,
    scheme: Scheme,
}

impl PublicParams for Public {
    fn algorithm(&self) -> Algorithm {
        self.scheme.algorithm()
    }

    fn rsa_bits(&self) -> Option<usize> {
        Some(bit_len(&self.n))
    }

    fn thumbprint_input(&self) -> String {
        format!(
            r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#,
            b64::encode(&self.e),
            b64::encode(&self.n)
        )
    }

    fn jwk_members(&self, m: &mut Map<String, Value>) {
        m.insert("kty".into(), "RSA".into());
        m.insert("n".into(), b64::encode(&self.n).into());
        m.insert("e".into(), b64::encode(&self.e).into());
    }

    fn verifier(&self) -> Result<Arc<dyn Verifier>, KeyError> {
        let pk = rsa_public(&self.n, &self.e)?;
        Ok(match self.scheme {
            Scheme::Pkcs1v15 => Arc::new(::rsa::pkcs1v15::VerifyingKey::<Sha256>::new(pk)),
            Scheme::Pss => Arc::new(::rsa::pss::VerifyingKey::<Sha256>::new(pk)),
        })
    }

    fn private_from_jwk(&self, obj: &Map<String, Value>, d: &SecretBytes) -> Result<Arc<dyn PrivateParams>, KeyError> {
        let p = SecretBytes::new(member_b64(obj, "p")?);
        let q = SecretBytes::new(member_b64(obj, "q")?);
        let key = ::rsa::PrivateKey::from_components(
            BoxedUint::from_be_slice_vartime(&self.n),
            BoxedUint::from_be_slice_vartime(&self.e),
            BoxedUint::from_be_slice_vartime(d.expose()),
            vec![
                BoxedUint::from_be_slice_vartime(p.expose()),
                BoxedUint::from_be_slice_vartime(q.expose()),
            ],
        )
        .map_err(|_| broken("RSA private key components are inconsistent"))?;
        private(self.scheme, key)
    }

    fn same_as(&self, other: &dyn PublicParams) -> bool {
        other.as_any().downcast_ref::<Self>().is_some_and(|o| o == self)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// An RSA private key (zeroised on drop by `rsa`), bound to its scheme.
struct Private {
    key: ::rsa::PrivateKey,
    scheme: Scheme,
}

impl PrivateParams for Private {
    fn algorithm(&self) -> Algorithm {
        self.scheme.algorithm()
    }

    fn public(&self) -> Arc<dyn PublicParams> {
        Arc::new(Public {
            n: self.key.n_bytes().into_vec(),
            e: self.key.e_bytes().into_vec(),
            scheme: self.scheme,
        })
    }

    fn signer(&self) -> Box<dyn Signer> {
        match self.scheme {
            Scheme::Pkcs1v15 => Box::new(::rsa::pkcs1v15::SigningKey::<Sha256>::new(self.key.clone())),
            Scheme::Pss => Box::new(::rsa::pss::SigningKey::<Sha256>::new(self.key.clone())),
        }
    }

    fn to_secret_bytes(&self) -> Result<SecretBytes, KeyError> {
        let doc = self
            .key
            .to_pkcs8_der()
            .map_err(|_| broken("RSA key could not be encoded as PKCS#8"))?;
        Ok(SecretBytes::from_slice(doc.as_bytes()))
    }

    fn to_pkcs8_der(&self) -> Result<SecretBytes, KeyError> {
        self.to_secret_bytes()
    }
}

impl Signer for ::rsa::pkcs1v15::SigningKey<Sha256> {
    fn sign_into(&self, message: &[u8], out: &mut [u8; MAX_SIGNATURE_BYTES]) -> Result<usize, KeyError> {
        let sig = ::rsa::signature::Signer::try_sign(self, message).map_err(|_| broken("RS256 signing failed"))?;
        put_signature(&sig.to_bytes(), out)
    }

    fn signature_len(&self) -> usize {
        AsRef::<::rsa::PrivateKey>::as_ref(self).size()
    }
}

impl Signer for ::rsa::pss::SigningKey<Sha256> {
    fn sign_into(&self, message: &[u8], out: &mut [u8; MAX_SIGNATURE_BYTES]) -> Result<usize, KeyError> {
        let sig = ::rsa::signature::Signer::try_sign(self, message).map_err(|_| broken("PS256 signing failed"))?;
        put_signature(&sig.to_bytes(), out)
    }

    fn signature_len(&self) -> usize {
        AsRef::<::rsa::PrivateKey>::as_ref(self).size()
    }
}

impl Verifier for ::rsa::pkcs1v15::VerifyingKey<Sha256> {
    fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        // Exactly the modulus length: no leading-zero stripping or padding accepted.
        if signature.len() != AsRef::<::rsa::PublicKey>::as_ref(self).size() {
            return false;
        }
        ::rsa::pkcs1v15::Signature::try_from(signature)
            .is_ok_and(|sig| ::rsa::signature::Verifier::verify(self, message, &sig).is_ok())
    }
}

impl Verifier for ::rsa::pss::VerifyingKey<Sha256> {
    fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        if signature.len() != AsRef::<::rsa::PublicKey>::as_ref(self).size() {
            return false;
        }
        ::rsa::pss::Signature::try_from(signature)
            .is_ok_and(|sig| ::rsa::signature::Verifier::verify(self, message, &sig).is_ok())
    }
}
