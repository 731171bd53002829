//! Key material: generation, import, public JWKs, RFC 7638 thumbprints, and the
//! pre-parsed signing and verifying keys the hot path uses.

use crate::alg::{Algorithm, RsaBits};
use crate::b64;
use crate::secret::SecretBytes;
use ed25519_dalek::pkcs8::EncodePrivateKey as _;
use rsa::traits::PublicKeyParts as _;
use rsa::{BoxedUint, sha2::Sha256};
use serde_json::{Map, Value};
use sha2::Digest as _;
use std::fmt;

/// Smallest RSA modulus keyrot accepts (bits).
pub const RSA_MIN_BITS: usize = 2048;
/// Largest RSA modulus keyrot accepts (bits).
pub const RSA_MAX_BITS: usize = 4096;

/// Why key material could not be generated, imported or used. Never carries key bytes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The operating system's random number generator failed.
    #[error("the system random number generator failed")]
    Rng,
    /// RSA key generation failed.
    #[error("RSA key generation failed: {0}")]
    RsaGeneration(String),
    /// A JWK or PEM could not be used; the message names the field or rule, never a value.
    #[error("invalid key: {0}")]
    Invalid(String),
    /// The key's type does not match the algorithm asked for.
    #[error("key type does not fit algorithm {alg}")]
    AlgorithmMismatch {
        /// The algorithm asked for.
        alg: Algorithm,
    },
    /// An RSA modulus outside 2048–4096 bits.
    #[error("RSA modulus of {bits} bits is outside the supported 2048–4096 bits")]
    RsaSize {
        /// The modulus size found.
        bits: usize,
    },
    /// An Ed25519 public key of small order (a weak key that verifies forged signatures).
    #[error("Ed25519 public key is of small order (weak key)")]
    WeakKey,
}

fn invalid(msg: impl Into<String>) -> KeyError {
    KeyError::Invalid(msg.into())
}

/// The public half of a key, parsed and validated.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    alg: Algorithm,
    params: PublicParams,
}

#[derive(Clone, PartialEq, Eq)]
enum PublicParams {
    Ed25519 { x: [u8; 32] },
    Rsa { n: Vec<u8>, e: Vec<u8> },
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKey")
            .field("alg", &self.alg)
            .field("thumbprint", &self.thumbprint())
            .finish()
    }
}

impl PublicKey {
    /// The algorithm this key is used with.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// RSA modulus size in bits (None for Ed25519).
    pub fn rsa_bits(&self) -> Option<usize> {
        match &self.params {
            PublicParams::Rsa { n, .. } => Some(bit_len(n)),
            PublicParams::Ed25519 { .. } => None,
        }
    }

    /// The RFC 7638 JWK thumbprint (SHA-256, base64url): keyrot's default `kid`.
    pub fn thumbprint(&self) -> String {
        b64::encode(&sha2::Sha256::digest(self.thumbprint_input().as_bytes()))
    }

    /// The canonical JSON RFC 7638 hashes: required members only, sorted, no whitespace.
    pub fn thumbprint_input(&self) -> String {
        match &self.params {
            PublicParams::Ed25519 { x } => format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#, b64::encode(x)),
            PublicParams::Rsa { n, e } => {
                format!(r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#, b64::encode(e), b64::encode(n))
            }
        }
    }

    /// The public JWK as published in the JWKS: `kty`, `kid`, `alg`, `use: "sig"`, and
    /// `crv`/`x` or `n`/`e`. Nothing else.
    pub fn to_jwk(&self, kid: &str) -> Value {
        let mut m = Map::new();
        match &self.params {
            PublicParams::Ed25519 { x } => {
                m.insert("kty".into(), "OKP".into());
                m.insert("crv".into(), "Ed25519".into());
                m.insert("x".into(), b64::encode(x).into());
            }
            PublicParams::Rsa { n, e } => {
                m.insert("kty".into(), "RSA".into());
                m.insert("n".into(), b64::encode(n).into());
                m.insert("e".into(), b64::encode(e).into());
            }
        }
        m.insert("kid".into(), kid.into());
        m.insert("alg".into(), self.alg.as_str().into());
        m.insert("use".into(), "sig".into());
        Value::Object(m)
    }

    /// Parses a public JWK (as [`PublicKey::to_jwk`] renders it, or any RFC 7517 public
    /// key of a supported type). Private members are refused: a public JWK that carries
    /// `d` is a leak waiting to happen.
    pub fn from_jwk(jwk: &Value, alg_hint: Option<Algorithm>) -> Result<Self, KeyError> {
        let obj = jwk.as_object().ok_or_else(|| invalid("JWK is not a JSON object"))?;
        if obj.contains_key("d") {
            return Err(invalid("a public JWK must not contain the private member \"d\""));
        }
        parse_public(obj, alg_hint)
    }

    /// Builds the verifying key once; used for every verification with this key.
    pub fn verifying_key(&self) -> Result<VerifyingKey, KeyError> {
        let inner = match (&self.params, self.alg) {
            (PublicParams::Ed25519 { x }, Algorithm::EdDsa) => {
                let vk = ed25519_dalek::VerifyingKey::from_bytes(x)
                    .map_err(|_| invalid("Ed25519 public key is not a valid point"))?;
                if vk.is_weak() {
                    return Err(KeyError::WeakKey);
                }
                VerifierInner::Ed25519(vk)
            }
            (PublicParams::Rsa { n, e }, alg @ (Algorithm::Rs256 | Algorithm::Ps256)) => {
                let pk = rsa_public(n, e)?;
                if alg == Algorithm::Rs256 {
                    VerifierInner::Rs256(rsa::pkcs1v15::VerifyingKey::<Sha256>::new(pk))
                } else {
                    VerifierInner::Ps256(rsa::pss::VerifyingKey::<Sha256>::new(pk))
                }
            }
            (_, alg) => return Err(KeyError::AlgorithmMismatch { alg }),
        };
        Ok(VerifyingKey { alg: self.alg, inner })
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

fn rsa_public(n: &[u8], e: &[u8]) -> Result<rsa::PublicKey, KeyError> {
    let bits = bit_len(n);
    if !(RSA_MIN_BITS..=RSA_MAX_BITS).contains(&bits) {
        return Err(KeyError::RsaSize { bits });
    }
    rsa::PublicKey::new(BoxedUint::from_be_slice_vartime(n), BoxedUint::from_be_slice_vartime(e))
        .map_err(|_| invalid("RSA public key rejected (modulus or exponent invalid)"))
}

fn member_b64(obj: &Map<String, Value>, name: &str) -> Result<Vec<u8>, KeyError> {
    let s = obj
        .get(name)
        .ok_or_else(|| invalid(format!("JWK member \"{name}\" is missing")))?
        .as_str()
        .ok_or_else(|| invalid(format!("JWK member \"{name}\" is not a string")))?;
    b64::decode(s).ok_or_else(|| invalid(format!("JWK member \"{name}\" is not base64url")))
}

fn member_str<'a>(obj: &'a Map<String, Value>, name: &str) -> Result<Option<&'a str>, KeyError> {
    match obj.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(invalid(format!("JWK member \"{name}\" is not a string"))),
    }
}

fn jwk_alg(obj: &Map<String, Value>, hint: Option<Algorithm>) -> Result<Option<Algorithm>, KeyError> {
    let declared = member_str(obj, "alg")?
        .map(|s| s.parse::<Algorithm>().map_err(|e| invalid(e.to_string())))
        .transpose()?;
    match (declared, hint) {
        (Some(d), Some(h)) if d != h => Err(invalid(format!("JWK declares alg {d} but {h} was asked for"))),
        (d, h) => Ok(d.or(h)),
    }
}

fn check_use(obj: &Map<String, Value>) -> Result<(), KeyError> {
    match member_str(obj, "use")? {
        None | Some("sig") => {}
        Some(_) => return Err(invalid("JWK \"use\" must be \"sig\" for a signing key")),
    }
    // RFC 7517 §4.3: `key_ops`, when present, must only permit signing and verifying.
    match obj.get("key_ops") {
        None => Ok(()),
        Some(Value::Array(ops))
            if !ops.is_empty() && ops.iter().all(|op| matches!(op.as_str(), Some("sign" | "verify"))) =>
        {
            Ok(())
        }
        Some(_) => Err(invalid(
            "JWK \"key_ops\" must list only \"sign\" and \"verify\" for a signing key",
        )),
    }
}

fn parse_public(obj: &Map<String, Value>, hint: Option<Algorithm>) -> Result<PublicKey, KeyError> {
    check_use(obj)?;
    let alg = jwk_alg(obj, hint)?;
    match member_str(obj, "kty")? {
        Some("OKP") => {
            if member_str(obj, "crv")? != Some("Ed25519") {
                return Err(invalid("OKP JWK must have \"crv\": \"Ed25519\""));
            }
            if let Some(a) = alg.filter(|a| *a != Algorithm::EdDsa) {
                return Err(KeyError::AlgorithmMismatch { alg: a });
            }
            let x: [u8; 32] = member_b64(obj, "x")?
                .try_into()
                .map_err(|_| invalid("Ed25519 \"x\" must be 32 bytes"))?;
            let pk = PublicKey {
                alg: Algorithm::EdDsa,
                params: PublicParams::Ed25519 { x },
            };
            pk.verifying_key()?;
            Ok(pk)
        }
        Some("RSA") => {
            let alg = alg.unwrap_or(Algorithm::Rs256);
            if !alg.is_rsa() {
                return Err(KeyError::AlgorithmMismatch { alg });
            }
            let n = trim_leading_zeros(&member_b64(obj, "n")?).to_vec();
            let e = trim_leading_zeros(&member_b64(obj, "e")?).to_vec();
            rsa_public(&n, &e)?;
            Ok(PublicKey {
                alg,
                params: PublicParams::Rsa { n, e },
            })
        }
        Some(_) => Err(invalid("unsupported JWK \"kty\": use OKP (Ed25519) or RSA")),
        None => Err(invalid("JWK member \"kty\" is missing")),
    }
}

/// A private signing key. Zeroised on drop; `Debug` shows only the algorithm and
/// thumbprint.
#[derive(Clone)]
pub struct PrivateKey {
    alg: Algorithm,
    inner: PrivateInner,
}

#[derive(Clone)]
#[allow(clippy::large_enum_variant, reason = "Ed25519, the common case, stays inline")]
enum PrivateInner {
    Ed25519(ed25519_dalek::SigningKey),
    Rsa(Box<rsa::PrivateKey>),
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateKey")
            .field("alg", &self.alg)
            .field("thumbprint", &self.public_key().thumbprint())
            .field("material", &"[redacted]")
            .finish()
    }
}

/// A key imported from a JWK or PEM, with the `kid` it arrived with (if any).
#[derive(Debug, Clone)]
pub struct ImportedKey {
    /// The key.
    pub key: PrivateKey,
    /// The JWK's own `kid`, kept so tokens already in circulation keep verifying.
    pub kid: Option<String>,
}

impl ImportedKey {
    /// The kid keyrot will use: the imported one, else the RFC 7638 thumbprint.
    pub fn effective_kid(&self) -> String {
        self.kid.clone().unwrap_or_else(|| self.key.public_key().thumbprint())
    }
}

impl PrivateKey {
    /// Generates a new key. Ed25519 is instant; RSA takes from tens of milliseconds to
    /// seconds, so async callers use [`PrivateKey::generate_async`].
    pub fn generate(alg: Algorithm, rsa_bits: RsaBits) -> Result<Self, KeyError> {
        match alg {
            Algorithm::EdDsa => {
                let mut seed = zeroize::Zeroizing::new([0u8; 32]);
                getrandom::fill(&mut seed[..]).map_err(|_| KeyError::Rng)?;
                Ok(Self {
                    alg,
                    inner: PrivateInner::Ed25519(ed25519_dalek::SigningKey::from_bytes(&seed)),
                })
            }
            Algorithm::Rs256 | Algorithm::Ps256 => {
                let key = rsa::PrivateKey::new(&mut getrandom::SysRng, rsa_bits.bits())
                    .map_err(|e| KeyError::RsaGeneration(e.to_string()))?;
                Ok(Self {
                    alg,
                    inner: PrivateInner::Rsa(Box::new(key)),
                })
            }
        }
    }

    /// Generates a key without blocking the async runtime: RSA runs on tokio's blocking
    /// pool.
    pub async fn generate_async(alg: Algorithm, rsa_bits: RsaBits) -> Result<Self, KeyError> {
        if alg.is_rsa() {
            tokio::task::spawn_blocking(move || Self::generate(alg, rsa_bits))
                .await
                .map_err(|e| KeyError::RsaGeneration(format!("generation task failed: {e}")))?
        } else {
            Self::generate(alg, rsa_bits)
        }
    }

    /// The algorithm this key signs with.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// The public half.
    pub fn public_key(&self) -> PublicKey {
        match &self.inner {
            PrivateInner::Ed25519(sk) => PublicKey {
                alg: self.alg,
                params: PublicParams::Ed25519 {
                    x: sk.verifying_key().to_bytes(),
                },
            },
            PrivateInner::Rsa(k) => PublicKey {
                alg: self.alg,
                params: PublicParams::Rsa {
                    n: k.n_bytes().into_vec(),
                    e: k.e_bytes().into_vec(),
                },
            },
        }
    }

    /// The pre-parsed signing key used for every token signed with this key.
    pub fn signing_key(&self) -> SigningKey {
        let inner = match (&self.inner, self.alg) {
            (PrivateInner::Ed25519(sk), _) => SignerInner::Ed25519(sk.clone()),
            (PrivateInner::Rsa(k), Algorithm::Ps256) => {
                SignerInner::Ps256(Box::new(rsa::pss::SigningKey::<Sha256>::new((**k).clone())))
            }
            (PrivateInner::Rsa(k), _) => {
                SignerInner::Rs256(Box::new(rsa::pkcs1v15::SigningKey::<Sha256>::new((**k).clone())))
            }
        };
        SigningKey { alg: self.alg, inner }
    }

    /// The private key as bytes for sealing: the 32-byte Ed25519 seed, or RSA PKCS#8 DER.
    pub fn to_secret_bytes(&self) -> Result<SecretBytes, KeyError> {
        match &self.inner {
            PrivateInner::Ed25519(sk) => Ok(SecretBytes::from_slice(sk.as_bytes())),
            PrivateInner::Rsa(k) => {
                use rsa::pkcs8::EncodePrivateKey as _;
                let doc = k
                    .to_pkcs8_der()
                    .map_err(|_| invalid("RSA key could not be encoded as PKCS#8"))?;
                Ok(SecretBytes::from_slice(doc.as_bytes()))
            }
        }
    }

    /// Parses bytes produced by [`PrivateKey::to_secret_bytes`].
    pub fn from_secret_bytes(alg: Algorithm, bytes: &SecretBytes) -> Result<Self, KeyError> {
        match alg {
            Algorithm::EdDsa => {
                let seed: &[u8; 32] = bytes
                    .expose()
                    .try_into()
                    .map_err(|_| invalid("Ed25519 private key must be 32 bytes"))?;
                Ok(Self {
                    alg,
                    inner: PrivateInner::Ed25519(ed25519_dalek::SigningKey::from_bytes(seed)),
                })
            }
            Algorithm::Rs256 | Algorithm::Ps256 => {
                use rsa::pkcs8::DecodePrivateKey as _;
                let k = rsa::PrivateKey::from_pkcs8_der(bytes.expose())
                    .map_err(|_| invalid("RSA private key is not valid PKCS#8"))?;
                Self::from_rsa(alg, k)
            }
        }
    }

    fn from_rsa(alg: Algorithm, k: rsa::PrivateKey) -> Result<Self, KeyError> {
        let bits = bit_len(&k.n_bytes());
        if !(RSA_MIN_BITS..=RSA_MAX_BITS).contains(&bits) {
            return Err(KeyError::RsaSize { bits });
        }
        Ok(Self {
            alg,
            inner: PrivateInner::Rsa(Box::new(k)),
        })
    }

    /// Imports a PKCS#8 PEM private key (`-----BEGIN PRIVATE KEY-----`), Ed25519 or RSA.
    /// For RSA, `alg` chooses RS256 (default) or PS256.
    pub fn from_pkcs8_pem(pem: &str, alg: Option<Algorithm>) -> Result<Self, KeyError> {
        if let Ok(sk) = ed25519_dalek::SigningKey::from_pkcs8_pem(pem) {
            if let Some(a) = alg.filter(|a| *a != Algorithm::EdDsa) {
                return Err(KeyError::AlgorithmMismatch { alg: a });
            }
            return Ok(Self {
                alg: Algorithm::EdDsa,
                inner: PrivateInner::Ed25519(sk),
            });
        }
        use rsa::pkcs8::DecodePrivateKey as _;
        let k =
            rsa::PrivateKey::from_pkcs8_pem(pem).map_err(|_| invalid("not a PKCS#8 PEM Ed25519 or RSA private key"))?;
        let alg = alg.unwrap_or(Algorithm::Rs256);
        if !alg.is_rsa() {
            return Err(KeyError::AlgorithmMismatch { alg });
        }
        Self::from_rsa(alg, k)
    }

    /// Renders the key as PKCS#8 PEM (for export by an operator; never logged).
    pub fn to_pkcs8_pem(&self) -> Result<SecretBytes, KeyError> {
        let der = match &self.inner {
            PrivateInner::Ed25519(sk) => sk
                .to_pkcs8_der()
                .map_err(|_| invalid("Ed25519 key could not be encoded as PKCS#8"))?
                .as_bytes()
                .to_vec(),
            PrivateInner::Rsa(_) => self.to_secret_bytes()?.expose().to_vec(),
        };
        let der = SecretBytes::new(der);
        let body = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, der.expose());
        let body = zeroize::Zeroizing::new(body);
        const BEGIN: &str = "-----BEGIN PRIVATE KEY-----\n";
        const END: &str = "-----END PRIVATE KEY-----\n";
        // Allocated once at its final size, so no reallocation leaves a copy behind.
        let mut pem = Vec::with_capacity(BEGIN.len() + body.len() + body.len().div_ceil(64) + END.len());
        pem.extend_from_slice(BEGIN.as_bytes());
        for chunk in body.as_bytes().chunks(64) {
            pem.extend_from_slice(chunk);
            pem.push(b'\n');
        }
        pem.extend_from_slice(END.as_bytes());
        Ok(SecretBytes::new(pem))
    }

    /// Imports a private JWK (RFC 7517/7518/8037: `d` present). The JWK's own `kid` is
    /// kept. For RSA, `alg` comes from the JWK's `alg`, else the hint, else RS256.
    pub fn from_jwk_str(json: &str, alg_hint: Option<Algorithm>) -> Result<ImportedKey, KeyError> {
        let value = crate::json::parse_strict(json.as_bytes())
            .map_err(|_| invalid("JWK is not a JSON object without duplicate members"))?;
        Self::from_jwk(&value, alg_hint)
    }

    /// See [`PrivateKey::from_jwk_str`].
    pub fn from_jwk(jwk: &Value, alg_hint: Option<Algorithm>) -> Result<ImportedKey, KeyError> {
        let obj = jwk.as_object().ok_or_else(|| invalid("JWK is not a JSON object"))?;
        let public = parse_public(obj, alg_hint)?;
        let kid = member_str(obj, "kid")?.map(str::to_owned);
        if let Some(k) = &kid
            && (k.is_empty() || k.len() > 256)
        {
            return Err(invalid("JWK \"kid\" must be 1 to 256 characters"));
        }
        let d = SecretBytes::new(member_b64(obj, "d")?);
        let key = match &public.params {
            PublicParams::Ed25519 { x } => {
                let seed: &[u8; 32] = d
                    .expose()
                    .try_into()
                    .map_err(|_| invalid("Ed25519 \"d\" must be 32 bytes"))?;
                let sk = ed25519_dalek::SigningKey::from_bytes(seed);
                if sk.verifying_key().to_bytes() != *x {
                    return Err(invalid("Ed25519 \"d\" does not match \"x\""));
                }
                PrivateKey {
                    alg: Algorithm::EdDsa,
                    inner: PrivateInner::Ed25519(sk),
                }
            }
            PublicParams::Rsa { n, e } => {
                let p = SecretBytes::new(member_b64(obj, "p")?);
                let q = SecretBytes::new(member_b64(obj, "q")?);
                let k = rsa::PrivateKey::from_components(
                    BoxedUint::from_be_slice_vartime(n),
                    BoxedUint::from_be_slice_vartime(e),
                    BoxedUint::from_be_slice_vartime(d.expose()),
                    vec![
                        BoxedUint::from_be_slice_vartime(p.expose()),
                        BoxedUint::from_be_slice_vartime(q.expose()),
                    ],
                )
                .map_err(|_| invalid("RSA private key components are inconsistent"))?;
                Self::from_rsa(public.alg, k)?
            }
        };
        Ok(ImportedKey { key, kid })
    }
}

/// A signing key parsed once and reused for every token (no parsing on the hot path).
pub struct SigningKey {
    alg: Algorithm,
    inner: SignerInner,
}

#[allow(clippy::large_enum_variant, reason = "Ed25519, the common case, stays inline")]
enum SignerInner {
    Ed25519(ed25519_dalek::SigningKey),
    Rs256(Box<rsa::pkcs1v15::SigningKey<Sha256>>),
    Ps256(Box<rsa::pss::SigningKey<Sha256>>),
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &self.alg)
            .field("material", &"[redacted]")
            .finish()
    }
}

impl SigningKey {
    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// Signs `message`, returning the raw signature bytes.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        use rsa::signature::{SignatureEncoding as _, Signer as _};
        match &self.inner {
            SignerInner::Ed25519(sk) => Ok(ed25519_dalek::Signer::sign(sk, message).to_bytes().to_vec()),
            SignerInner::Rs256(sk) => sk
                .try_sign(message)
                .map(|s| s.to_vec())
                .map_err(|_| invalid("RS256 signing failed")),
            SignerInner::Ps256(sk) => sk
                .try_sign(message)
                .map(|s| s.to_vec())
                .map_err(|_| invalid("PS256 signing failed")),
        }
    }
}

/// A verifying key parsed once and reused for every verification.
#[derive(Clone)]
pub struct VerifyingKey {
    alg: Algorithm,
    inner: VerifierInner,
}

#[derive(Clone)]
enum VerifierInner {
    Ed25519(ed25519_dalek::VerifyingKey),
    Rs256(rsa::pkcs1v15::VerifyingKey<Sha256>),
    Ps256(rsa::pss::VerifyingKey<Sha256>),
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyingKey").field("alg", &self.alg).finish()
    }
}

impl VerifyingKey {
    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// Verifies `signature` over `message`. Ed25519 uses strict verification (canonical
    /// `S`, no small-order components); RSA signatures must be exactly the modulus length.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        use rsa::signature::Verifier as _;
        match &self.inner {
            VerifierInner::Ed25519(vk) => {
                let Ok(sig) = ed25519_dalek::Signature::from_slice(signature) else {
                    return false;
                };
                vk.verify_strict(message, &sig).is_ok()
            }
            VerifierInner::Rs256(vk) => {
                if signature.len() != rsa_len(vk.as_ref()) {
                    return false;
                }
                rsa::pkcs1v15::Signature::try_from(signature).is_ok_and(|sig| vk.verify(message, &sig).is_ok())
            }
            VerifierInner::Ps256(vk) => {
                if signature.len() != rsa_len(vk.as_ref()) {
                    return false;
                }
                rsa::pss::Signature::try_from(signature).is_ok_and(|sig| vk.verify(message, &sig).is_ok())
            }
        }
    }
}

fn rsa_len(pk: &rsa::PublicKey) -> usize {
    pk.size()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ed25519_round_trip_and_debug_redacted() -> Result<(), KeyError> {
        let k = PrivateKey::generate(Algorithm::EdDsa, RsaBits::B2048)?;
        let bytes = k.to_secret_bytes()?;
        let back = PrivateKey::from_secret_bytes(Algorithm::EdDsa, &bytes)?;
        assert_eq!(k.public_key(), back.public_key());
        let sig = k.signing_key().sign(b"msg")?;
        let vk = k.public_key().verifying_key()?;
        assert!(vk.verify(b"msg", &sig));
        assert!(!vk.verify(b"msh", &sig));
        let dbg = format!("{k:?} {:?}", k.signing_key());
        assert!(!dbg.contains(&b64::encode(bytes.expose())));
        assert!(dbg.contains("[redacted]"));
        Ok(())
    }

    #[test]
    fn private_jwk_with_mismatched_public_is_refused() -> Result<(), KeyError> {
        let a = PrivateKey::generate(Algorithm::EdDsa, RsaBits::B2048)?;
        let b = PrivateKey::generate(Algorithm::EdDsa, RsaBits::B2048)?;
        let mut jwk = b.public_key().to_jwk("x");
        jwk["d"] = b64::encode(a.to_secret_bytes()?.expose()).into();
        let err = PrivateKey::from_jwk(&jwk, None).err().map(|e| e.to_string());
        assert_eq!(err.as_deref(), Some("invalid key: Ed25519 \"d\" does not match \"x\""));
        Ok(())
    }

    #[test]
    fn public_jwk_with_private_member_is_refused() -> Result<(), KeyError> {
        let a = PrivateKey::generate(Algorithm::EdDsa, RsaBits::B2048)?;
        let mut jwk = a.public_key().to_jwk("x");
        assert!(PublicKey::from_jwk(&jwk, None).is_ok());
        jwk["d"] = "AAAA".into();
        assert!(PublicKey::from_jwk(&jwk, None).is_err());
        Ok(())
    }

    #[test]
    fn small_order_ed25519_key_is_refused() {
        // The identity point (y = 1) is of small order.
        let mut x = [0u8; 32];
        x[0] = 1;
        let jwk = serde_json::json!({"kty":"OKP","crv":"Ed25519","x": b64::encode(&x)});
        assert!(matches!(PublicKey::from_jwk(&jwk, None), Err(KeyError::WeakKey)));
    }
}
