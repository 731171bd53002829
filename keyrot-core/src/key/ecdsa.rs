//! ECDSA (RFC 7518 §3.4): ES256 on P-256 with SHA-256 and ES384 on P-384 with SHA-384.
//! EC JWKs with `crv`, `x`, `y` (RFC 7518 §6.2), the public point validated on import,
//! the raw scalar in storage, and signatures in the JWS fixed-length `R‖S` encoding only
//! (never DER), with `r` and `s` in `[1, n)`.

use super::{
    Family, GenerateOptions, KeyError, MAX_SIGNATURE_BYTES, PrivateParams, PublicParams, Signer, Verifier, broken,
    member_b64, member_str, put_signature,
};
use crate::alg::Algorithm;
use crate::b64;
use crate::secret::SecretBytes;
use p256::elliptic_curve::Generate as _;
use p256::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _};
use serde_json::{Map, Value};
use std::any::Any;
use std::sync::Arc;

/// The ECDSA family (both curves).
pub(super) struct Ecdsa;

/// A curve keyrot signs with, one per algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Curve {
    /// P-256, ES256.
    P256,
    /// P-384, ES384.
    P384,
}

impl Curve {
    fn for_alg(alg: Algorithm) -> Result<Self, KeyError> {
        match alg {
            Algorithm::Es256 => Ok(Curve::P256),
            Algorithm::Es384 => Ok(Curve::P384),
            // Every other family's algorithm: not an EC key's.
            _ => Err(KeyError::AlgorithmMismatch { alg }),
        }
    }

    fn algorithm(self) -> Algorithm {
        match self {
            Curve::P256 => Algorithm::Es256,
            Curve::P384 => Algorithm::Es384,
        }
    }

    /// The JWK `crv`.
    fn crv(self) -> &'static str {
        match self {
            Curve::P256 => "P-256",
            Curve::P384 => "P-384",
        }
    }

    /// The length of a coordinate, of the private scalar, and of `r` and of `s`.
    fn field_len(self) -> usize {
        match self {
            Curve::P256 => 32,
            Curve::P384 => 48,
        }
    }

    /// The curve's key, but only when `alg` (if given) is this curve's algorithm.
    fn check(self, alg: Option<Algorithm>) -> Result<(), KeyError> {
        match alg {
            Some(a) if a != self.algorithm() => Err(KeyError::AlgorithmMismatch { alg: a }),
            _ => Ok(()),
        }
    }
}

/// A private key of either curve (zeroised on drop by its crate).
#[derive(Clone)]
enum Sk {
    P256(p256::ecdsa::SigningKey),
    P384(p384::ecdsa::SigningKey),
}

/// A validated public key of either curve.
#[derive(Clone, Copy)]
enum Vk {
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
}

impl Sk {
    fn curve(&self) -> Curve {
        match self {
            Sk::P256(_) => Curve::P256,
            Sk::P384(_) => Curve::P384,
        }
    }

    fn generate(curve: Curve) -> Result<Self, KeyError> {
        Ok(match curve {
            Curve::P256 => Sk::P256(
                p256::ecdsa::SigningKey::try_generate_from_rng(&mut getrandom::SysRng).map_err(|_| KeyError::Rng)?,
            ),
            Curve::P384 => Sk::P384(
                p384::ecdsa::SigningKey::try_generate_from_rng(&mut getrandom::SysRng).map_err(|_| KeyError::Rng)?,
            ),
        })
    }

    /// From the big-endian scalar, exactly the field length, in `[1, n)`.
    fn from_scalar(curve: Curve, d: &[u8], what: &'static str) -> Result<Self, KeyError> {
        if d.len() != curve.field_len() {
            return Err(broken(what));
        }
        let sk = match curve {
            Curve::P256 => p256::ecdsa::SigningKey::from_slice(d).map(Sk::P256),
            Curve::P384 => p384::ecdsa::SigningKey::from_slice(d).map(Sk::P384),
        };
        sk.map_err(|_| broken("EC private scalar is zero or not below the group order"))
    }

    fn from_pkcs8_pem(pem: &str) -> Option<Self> {
        if let Ok(sk) = p256::ecdsa::SigningKey::from_pkcs8_pem(pem) {
            return Some(Sk::P256(sk));
        }
        p384::ecdsa::SigningKey::from_pkcs8_pem(pem).ok().map(Sk::P384)
    }

    fn verifying_key(&self) -> Vk {
        match self {
            Sk::P256(sk) => Vk::P256(*sk.verifying_key()),
            Sk::P384(sk) => Vk::P384(*sk.verifying_key()),
        }
    }

    fn scalar(&self) -> SecretBytes {
        match self {
            Sk::P256(sk) => SecretBytes::from_slice(&zeroize::Zeroizing::new(sk.to_bytes())[..]),
            Sk::P384(sk) => SecretBytes::from_slice(&zeroize::Zeroizing::new(sk.to_bytes())[..]),
        }
    }

    fn pkcs8_der(&self) -> Result<SecretBytes, KeyError> {
        let doc = match self {
            Sk::P256(sk) => sk.to_pkcs8_der(),
            Sk::P384(sk) => sk.to_pkcs8_der(),
        }
        .map_err(|_| broken("EC key could not be encoded as PKCS#8"))?;
        Ok(SecretBytes::from_slice(doc.as_bytes()))
    }
}

impl Vk {
    /// The uncompressed point `x‖y`, validated: each coordinate exactly the field length,
    /// the point on the curve (and not the identity).
    fn from_coordinates(curve: Curve, x: &[u8], y: &[u8]) -> Result<Self, KeyError> {
        let n = curve.field_len();
        if x.len() != n || y.len() != n {
            return Err(broken(match curve {
                Curve::P256 => "P-256 \"x\" and \"y\" must be 32 bytes each",
                Curve::P384 => "P-384 \"x\" and \"y\" must be 48 bytes each",
            }));
        }
        let mut sec1 = Vec::with_capacity(1 + 2 * n);
        sec1.push(0x04);
        sec1.extend_from_slice(x);
        sec1.extend_from_slice(y);
        let vk = match curve {
            Curve::P256 => p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1).map(Vk::P256),
            Curve::P384 => p384::ecdsa::VerifyingKey::from_sec1_bytes(&sec1).map(Vk::P384),
        };
        vk.map_err(|_| broken("EC public key is not a point on the curve"))
    }

    /// `(x, y)`, each the field length.
    fn coordinates(&self) -> (Vec<u8>, Vec<u8>) {
        let sec1 = match self {
            Vk::P256(vk) => vk.to_sec1_bytes(),
            Vk::P384(vk) => vk.to_sec1_bytes(),
        };
        // Uncompressed SEC1: 0x04 ‖ x ‖ y.
        let coords = sec1.get(1..).unwrap_or_default();
        let (x, y) = coords.split_at(coords.len() / 2);
        (x.to_vec(), y.to_vec())
    }
}

fn private(sk: Sk) -> Arc<dyn PrivateParams> {
    Arc::new(Private(sk))
}

impl Family for Ecdsa {
    fn name(&self) -> &'static str {
        "ECDSA"
    }

    fn kty(&self) -> &'static str {
        "EC"
    }

    fn slow_generation(&self) -> bool {
        false
    }

    fn generate(&self, alg: Algorithm, _: &GenerateOptions) -> Result<Arc<dyn PrivateParams>, KeyError> {
        Sk::generate(Curve::for_alg(alg)?).map(private)
    }

    fn import_secret_bytes(&self, alg: Algorithm, bytes: &SecretBytes) -> Result<Arc<dyn PrivateParams>, KeyError> {
        let curve = Curve::for_alg(alg)?;
        let what = match curve {
            Curve::P256 => "P-256 private key must be 32 bytes",
            Curve::P384 => "P-384 private key must be 48 bytes",
        };
        Sk::from_scalar(curve, bytes.expose(), what).map(private)
    }

    fn import_pkcs8_pem(&self, pem: &str, alg: Option<Algorithm>) -> Result<Option<Arc<dyn PrivateParams>>, KeyError> {
        let Some(sk) = Sk::from_pkcs8_pem(pem) else {
            return Ok(None);
        };
        sk.curve().check(alg)?;
        Ok(Some(private(sk)))
    }

    fn public_from_jwk(
        &self,
        obj: &Map<String, Value>,
        alg: Option<Algorithm>,
    ) -> Result<Arc<dyn PublicParams>, KeyError> {
        let curve = match member_str(obj, "crv")? {
            Some("P-256") => Curve::P256,
            Some("P-384") => Curve::P384,
            _ => return Err(broken("EC JWK must have \"crv\": \"P-256\" or \"P-384\"")),
        };
        curve.check(alg)?;
        let vk = Vk::from_coordinates(curve, &member_b64(obj, "x")?, &member_b64(obj, "y")?)?;
        Ok(Arc::new(Public::new(vk)))
    }
}

/// An EC public key: its curve and validated point, with the coordinates it renders.
struct Public {
    curve: Curve,
    x: Vec<u8>,
    y: Vec<u8>,
    vk: Vk,
}

impl PartialEq for Public {
    fn eq(&self, other: &Self) -> bool {
        self.curve == other.curve && self.x == other.x && self.y == other.y
    }
}

impl Public {
    fn new(vk: Vk) -> Self {
        let (x, y) = vk.coordinates();
        let curve = match vk {
            Vk::P256(_) => Curve::P256,
            Vk::P384(_) => Curve::P384,
        };
        Self { curve, x, y, vk }
    }
}

impl PublicParams for Public {
    fn algorithm(&self) -> Algorithm {
        self.curve.algorithm()
    }

    fn rsa_bits(&self) -> Option<usize> {
        None
    }

    fn thumbprint_input(&self) -> String {
        format!(
            r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
            self.curve.crv(),
            b64::encode(&self.x),
            b64::encode(&self.y)
        )
    }

    fn jwk_members(&self, m: &mut Map<String, Value>) {
        m.insert("kty".into(), "EC".into());
        m.insert("crv".into(), self.curve.crv().into());
        m.insert("x".into(), b64::encode(&self.x).into());
        m.insert("y".into(), b64::encode(&self.y).into());
    }

    fn verifier(&self) -> Result<Arc<dyn Verifier>, KeyError> {
        Ok(match self.vk {
            Vk::P256(vk) => Arc::new(vk),
            Vk::P384(vk) => Arc::new(vk),
        })
    }

    fn private_from_jwk(&self, _obj: &Map<String, Value>, d: &SecretBytes) -> Result<Arc<dyn PrivateParams>, KeyError> {
        let what = match self.curve {
            Curve::P256 => "P-256 \"d\" must be 32 bytes",
            Curve::P384 => "P-384 \"d\" must be 48 bytes",
        };
        let sk = Sk::from_scalar(self.curve, d.expose(), what)?;
        if Public::new(sk.verifying_key()) != *self {
            return Err(broken("EC \"d\" does not match \"x\" and \"y\""));
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

/// An EC private key.
struct Private(Sk);

impl PrivateParams for Private {
    fn algorithm(&self) -> Algorithm {
        self.0.curve().algorithm()
    }

    fn public(&self) -> Arc<dyn PublicParams> {
        Arc::new(Public::new(self.0.verifying_key()))
    }

    fn signer(&self) -> Box<dyn Signer> {
        match &self.0 {
            Sk::P256(sk) => Box::new(sk.clone()),
            Sk::P384(sk) => Box::new(sk.clone()),
        }
    }

    fn to_secret_bytes(&self) -> Result<SecretBytes, KeyError> {
        Ok(self.0.scalar())
    }

    fn to_pkcs8_der(&self) -> Result<SecretBytes, KeyError> {
        self.0.pkcs8_der()
    }
}

impl Signer for p256::ecdsa::SigningKey {
    fn sign_into(&self, message: &[u8], out: &mut [u8; MAX_SIGNATURE_BYTES]) -> Result<usize, KeyError> {
        // RFC 6979 deterministic nonces; the fixed-length `R‖S` of RFC 7518 §3.4.
        let sig = p256::ecdsa::signature::Signer::<p256::ecdsa::Signature>::try_sign(self, message)
            .map_err(|_| broken("ES256 signing failed"))?;
        put_signature(&sig.to_bytes(), out)
    }

    fn signature_len(&self) -> usize {
        64
    }
}

impl Signer for p384::ecdsa::SigningKey {
    fn sign_into(&self, message: &[u8], out: &mut [u8; MAX_SIGNATURE_BYTES]) -> Result<usize, KeyError> {
        let sig = p384::ecdsa::signature::Signer::<p384::ecdsa::Signature>::try_sign(self, message)
            .map_err(|_| broken("ES384 signing failed"))?;
        put_signature(&sig.to_bytes(), out)
    }

    fn signature_len(&self) -> usize {
        96
    }
}

impl Verifier for p256::ecdsa::VerifyingKey {
    fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        // Exactly `R‖S` of 32 bytes each (so never DER), with `r` and `s` in `[1, n)`:
        // `Signature::from_slice` refuses zero and values not below the group order.
        if signature.len() != 64 {
            return false;
        }
        p256::ecdsa::Signature::from_slice(signature)
            .is_ok_and(|sig| p256::ecdsa::signature::Verifier::verify(self, message, &sig).is_ok())
    }
}

impl Verifier for p384::ecdsa::VerifyingKey {
    fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        if signature.len() != 96 {
            return false;
        }
        p384::ecdsa::Signature::from_slice(signature)
            .is_ok_and(|sig| p384::ecdsa::signature::Verifier::verify(self, message, &sig).is_ok())
    }
}
