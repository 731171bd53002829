//! Key material: generation, import, public JWKs, RFC 7638 thumbprints, and the
//! pre-parsed signing and verifying keys the hot path uses.
//!
//! The public types here are family-agnostic. Each algorithm family lives in its own
//! file behind the internal `Family`, `PublicParams`, `PrivateParams`, `Signer` and
//! `Verifier` traits, and the private `fn family` is the one table from [`Algorithm`] to
//! family: a new family is a new file and one arm there.

mod ecdsa;
mod ed25519;
mod not_signing;
mod rsa;
mod signing;

use crate::alg::{Algorithm, RsaBits, UnsupportedAlgorithm};
use crate::b64;
use crate::secret::SecretBytes;
use serde_json::{Map, Value};
use sha2::Digest as _;
use std::any::Any;
use std::fmt;
use std::panic::{RefUnwindSafe, UnwindSafe};
use std::sync::Arc;

pub(crate) use signing::{MAX_SIGNATURE_BYTES, Signer, Verifier, put_signature};
pub use signing::{SigningKey, VerifyingKey};

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
    #[error("RSA key generation failed")]
    RsaGeneration(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The blocking task that generates a slow (RSA) key did not finish (it panicked or
    /// the runtime is shutting down).
    #[error("the key generation task did not finish")]
    GenerationTask(#[source] tokio::task::JoinError),
    /// A JWK, PEM or stored key could not be used; names the member or rule, never a
    /// value.
    #[error("invalid key: {0}")]
    Invalid(InvalidKey),
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

/// Which rule a key broke (the reason of [`KeyError::Invalid`]). Names JWK members and
/// rules, never a key's value.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidKey {
    /// A required JWK member is absent.
    MissingMember(&'static str),
    /// A JWK member that must be a string is not.
    NotAString(&'static str),
    /// A JWK member is not canonical base64url.
    NotBase64url(&'static str),
    /// The JWK's `alg` is not one keyrot supports.
    Algorithm(UnsupportedAlgorithm),
    /// The JWK's `alg` is not the algorithm asked for.
    AlgorithmConflict {
        /// The JWK's `alg`.
        declared: Algorithm,
        /// The algorithm asked for.
        requested: Algorithm,
    },
    /// `use` is present and not `sig`.
    NotForSignatures,
    /// `key_ops` permits more than signing and verifying.
    KeyOpsNotSigning,
    /// `kty` names a key type keyrot has no family for.
    UnsupportedKeyType,
    /// The JWK is not a JSON object (or has duplicate members).
    NotAnObject,
    /// A public JWK carries the private member `d`.
    PrivateMemberInPublicKey,
    /// The PEM is not a PKCS#8 private key of a supported family.
    UnsupportedPem,
    /// The `kid` is empty or longer than 256 characters.
    KidLength,
    /// The stored public JWK is not JSON.
    StoredJwkNotJson,
    /// The Active key's row has no private material.
    NoPrivateMaterial,
    /// A family's own rule (length, curve point, consistency of the parts).
    Rule(&'static str),
}

impl fmt::Display for InvalidKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InvalidKey::MissingMember(m) => write!(f, "JWK member \"{m}\" is missing"),
            InvalidKey::NotAString(m) => write!(f, "JWK member \"{m}\" is not a string"),
            InvalidKey::NotBase64url(m) => write!(f, "JWK member \"{m}\" is not base64url"),
            InvalidKey::Algorithm(e) => write!(f, "{e}"),
            InvalidKey::AlgorithmConflict { declared, requested } => {
                write!(f, "JWK declares alg {declared} but {requested} was asked for")
            }
            InvalidKey::NotForSignatures => f.write_str("JWK \"use\" must be \"sig\" for a signing key"),
            InvalidKey::KeyOpsNotSigning => {
                f.write_str("JWK \"key_ops\" must list only \"sign\" and \"verify\" for a signing key")
            }
            InvalidKey::UnsupportedKeyType => {
                f.write_str("unsupported JWK \"kty\": use OKP (Ed25519), EC (P-256, P-384) or RSA")
            }
            InvalidKey::NotAnObject => f.write_str("JWK is not a JSON object without duplicate members"),
            InvalidKey::PrivateMemberInPublicKey => {
                f.write_str("a public JWK must not contain the private member \"d\"")
            }
            InvalidKey::UnsupportedPem => f.write_str("not a PKCS#8 PEM Ed25519, RSA or EC (P-256, P-384) private key"),
            InvalidKey::KidLength => f.write_str("JWK \"kid\" must be 1 to 256 characters"),
            InvalidKey::StoredJwkNotJson => f.write_str("stored public JWK is not JSON"),
            InvalidKey::NoPrivateMaterial => f.write_str("active key has no private material"),
            InvalidKey::Rule(rule) => f.write_str(rule),
        }
    }
}

fn invalid(reason: InvalidKey) -> KeyError {
    KeyError::Invalid(reason)
}

/// A family's own rule, broken.
fn broken(rule: &'static str) -> KeyError {
    KeyError::Invalid(InvalidKey::Rule(rule))
}

// ---------------------------------------------------------------------------------------
// The family table and the internal traits every family implements.
// ---------------------------------------------------------------------------------------

/// The one table from algorithm to family. Exhaustive on purpose: a new [`Algorithm`]
/// does not compile until it names its family here.
fn family(alg: Algorithm) -> &'static dyn Family {
    match alg {
        Algorithm::EdDsa => &ed25519::Ed25519,
        Algorithm::Rs256 | Algorithm::Ps256 => &self::rsa::Rsa,
        Algorithm::Es256 | Algorithm::Es384 => &ecdsa::Ecdsa,
        Algorithm::HmacSha256 | Algorithm::XChaCha20Poly1305 => &not_signing::NotSigning,
    }
}

/// Every family once, in the order PEM import tries them (the order of [`Algorithm::ALL`]).
fn families() -> impl Iterator<Item = &'static dyn Family> {
    let mut seen: Vec<&'static str> = Vec::new();
    Algorithm::ALL.iter().map(|alg| family(*alg)).filter(move |f| {
        let new = !seen.contains(&f.name());
        if new {
            seen.push(f.name());
        }
        new
    })
}

/// What a caller may choose when a key is generated. Each family reads only its own
/// fields (RSA its modulus size); a family with a new knob adds a field here, and no
/// other family's code changes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GenerateOptions {
    /// The modulus size of new RSA keys.
    pub(crate) rsa_bits: RsaBits,
}

/// One algorithm family (a key type): generation and every way of importing its keys.
/// Each method that takes an [`Algorithm`] refuses, with
/// [`KeyError::AlgorithmMismatch`], one the family does not sign with.
pub(crate) trait Family: Sync {
    /// A name unique among families.
    fn name(&self) -> &'static str;
    /// The JWK `kty` of its keys.
    fn kty(&self) -> &'static str;
    /// Whether generation is slow enough to belong on a blocking thread.
    fn slow_generation(&self) -> bool;
    /// Generates a new private key for `alg`, reading the options that concern it.
    fn generate(&self, alg: Algorithm, options: &GenerateOptions) -> Result<Arc<dyn PrivateParams>, KeyError>;
    /// Parses what [`PrivateParams::to_secret_bytes`] produced.
    fn import_secret_bytes(&self, alg: Algorithm, bytes: &SecretBytes) -> Result<Arc<dyn PrivateParams>, KeyError>;
    /// Parses a PKCS#8 PEM private key: `Ok(None)` when it is not this family's key.
    /// `alg` is the caller's choice, `None` for the family's default.
    fn import_pkcs8_pem(&self, pem: &str, alg: Option<Algorithm>) -> Result<Option<Arc<dyn PrivateParams>>, KeyError>;
    /// Parses and validates the public members of a JWK of this family's `kty`.
    fn public_from_jwk(
        &self,
        obj: &Map<String, Value>,
        alg: Option<Algorithm>,
    ) -> Result<Arc<dyn PublicParams>, KeyError>;
}

/// A family's validated public key, bound to its algorithm.
pub(crate) trait PublicParams: Send + Sync + RefUnwindSafe + UnwindSafe + Any {
    /// The algorithm this key is used with.
    fn algorithm(&self) -> Algorithm;
    /// RSA modulus size in bits (None for other families).
    fn rsa_bits(&self) -> Option<usize>;
    /// The RFC 7638 canonical JSON of the required members.
    fn thumbprint_input(&self) -> String;
    /// Inserts `kty` and the key's public members into a JWK.
    fn jwk_members(&self, m: &mut Map<String, Value>);
    /// Builds the verifier used for every verification with this key.
    fn verifier(&self) -> Result<Arc<dyn Verifier>, KeyError>;
    /// Builds the private key from a private JWK's members, `d` already decoded, checking
    /// that it matches this public key.
    fn private_from_jwk(&self, obj: &Map<String, Value>, d: &SecretBytes) -> Result<Arc<dyn PrivateParams>, KeyError>;
    /// Whether `other` is the same key with the same algorithm.
    fn same_as(&self, other: &dyn PublicParams) -> bool;
    /// For [`PublicParams::same_as`].
    fn as_any(&self) -> &dyn Any;
}

/// A family's private key, bound to its algorithm. Zeroised on drop by its crate.
pub(crate) trait PrivateParams: Send + Sync + RefUnwindSafe + UnwindSafe {
    /// The algorithm this key signs with.
    fn algorithm(&self) -> Algorithm;
    /// The public half.
    fn public(&self) -> Arc<dyn PublicParams>;
    /// The pre-parsed signer.
    fn signer(&self) -> Box<dyn Signer>;
    /// The bytes sealed in storage.
    fn to_secret_bytes(&self) -> Result<SecretBytes, KeyError>;
    /// PKCS#8 DER, for PEM export.
    fn to_pkcs8_der(&self) -> Result<SecretBytes, KeyError>;
}

// ---------------------------------------------------------------------------------------
// Shared JWK member helpers.
// ---------------------------------------------------------------------------------------

fn member_b64(obj: &Map<String, Value>, name: &'static str) -> Result<Vec<u8>, KeyError> {
    let s = obj
        .get(name)
        .ok_or_else(|| invalid(InvalidKey::MissingMember(name)))?
        .as_str()
        .ok_or_else(|| invalid(InvalidKey::NotAString(name)))?;
    b64::decode(s).ok_or_else(|| invalid(InvalidKey::NotBase64url(name)))
}

fn member_str<'a>(obj: &'a Map<String, Value>, name: &'static str) -> Result<Option<&'a str>, KeyError> {
    match obj.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(Value::Null | Value::Bool(_) | Value::Number(_) | Value::Array(_) | Value::Object(_)) => {
            Err(invalid(InvalidKey::NotAString(name)))
        }
    }
}

fn jwk_alg(obj: &Map<String, Value>, hint: Option<Algorithm>) -> Result<Option<Algorithm>, KeyError> {
    let declared = member_str(obj, "alg")?
        .map(|s| Algorithm::from_jose_name(s).map_err(|e| invalid(InvalidKey::Algorithm(e))))
        .transpose()?;
    match (declared, hint) {
        (Some(d), Some(h)) if d != h => Err(invalid(InvalidKey::AlgorithmConflict {
            declared: d,
            requested: h,
        })),
        (d, h) => Ok(d.or(h)),
    }
}

fn check_use(obj: &Map<String, Value>) -> Result<(), KeyError> {
    if !matches!(member_str(obj, "use")?, None | Some("sig")) {
        return Err(invalid(InvalidKey::NotForSignatures));
    }
    // RFC 7517 §4.3: `key_ops`, when present, must only permit signing and verifying.
    let ops_ok = match obj.get("key_ops") {
        None => true,
        Some(Value::Array(ops)) => {
            !ops.is_empty() && ops.iter().all(|op| matches!(op.as_str(), Some("sign" | "verify")))
        }
        Some(Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) | Value::Object(_)) => false,
    };
    if ops_ok {
        Ok(())
    } else {
        Err(invalid(InvalidKey::KeyOpsNotSigning))
    }
}

fn parse_public(obj: &Map<String, Value>, hint: Option<Algorithm>) -> Result<PublicKey, KeyError> {
    check_use(obj)?;
    let alg = jwk_alg(obj, hint)?;
    let kty = member_str(obj, "kty")?.ok_or_else(|| invalid(InvalidKey::MissingMember("kty")))?;
    let family = families()
        .find(|f| f.kty() == kty)
        .ok_or_else(|| invalid(InvalidKey::UnsupportedKeyType))?;
    Ok(PublicKey::new(family.public_from_jwk(obj, alg)?))
}

// ---------------------------------------------------------------------------------------
// The public types.
// ---------------------------------------------------------------------------------------

/// The public half of a key, parsed and validated.
#[derive(Clone)]
pub struct PublicKey {
    alg: Algorithm,
    params: Arc<dyn PublicParams>,
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.alg == other.alg && self.params.same_as(&*other.params)
    }
}

impl Eq for PublicKey {}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKey")
            .field("alg", &self.alg)
            .field("thumbprint", &self.thumbprint())
            .finish()
    }
}

impl PublicKey {
    fn new(params: Arc<dyn PublicParams>) -> Self {
        Self {
            alg: params.algorithm(),
            params,
        }
    }

    /// The algorithm this key is used with.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// RSA modulus size in bits (None for Ed25519 and EC keys).
    pub fn rsa_bits(&self) -> Option<usize> {
        self.params.rsa_bits()
    }

    /// The RFC 7638 JWK thumbprint (SHA-256, base64url): keyrot's default `kid`.
    pub fn thumbprint(&self) -> String {
        b64::encode(&sha2::Sha256::digest(self.thumbprint_input().as_bytes()))
    }

    /// The canonical JSON RFC 7638 hashes: required members only, sorted, no whitespace.
    pub fn thumbprint_input(&self) -> String {
        self.params.thumbprint_input()
    }

    /// The public JWK as published in the JWKS: `kty`, `kid`, `alg`, `use: "sig"`, and
    /// `crv`/`x` (OKP), `crv`/`x`/`y` (EC) or `n`/`e` (RSA). Nothing else.
    pub fn to_jwk(&self, kid: &str) -> Value {
        let mut m = Map::new();
        self.params.jwk_members(&mut m);
        m.insert("kid".into(), kid.into());
        m.insert("alg".into(), self.alg.as_str().into());
        m.insert("use".into(), "sig".into());
        Value::Object(m)
    }

    /// Parses a public JWK (as [`PublicKey::to_jwk`] renders it, or any RFC 7517 public
    /// key of a supported type). Private members are refused: a public JWK that carries
    /// `d` is a leak waiting to happen.
    pub fn from_jwk(jwk: &Value, alg_hint: Option<Algorithm>) -> Result<Self, KeyError> {
        let obj = jwk.as_object().ok_or_else(|| invalid(InvalidKey::NotAnObject))?;
        if obj.contains_key("d") {
            return Err(invalid(InvalidKey::PrivateMemberInPublicKey));
        }
        parse_public(obj, alg_hint)
    }

    /// Builds the verifying key once; used for every verification with this key.
    pub fn verifying_key(&self) -> Result<VerifyingKey, KeyError> {
        Ok(VerifyingKey {
            alg: self.alg,
            inner: self.params.verifier()?,
        })
    }
}

/// A private signing key. Zeroised on drop; `Debug` shows only the algorithm and
/// thumbprint.
#[derive(Clone)]
pub struct PrivateKey {
    alg: Algorithm,
    inner: Arc<dyn PrivateParams>,
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
    fn new(inner: Arc<dyn PrivateParams>) -> Self {
        Self {
            alg: inner.algorithm(),
            inner,
        }
    }

    /// Generates a new key. Ed25519 is instant; RSA takes from tens of milliseconds to
    /// seconds, so async callers use [`PrivateKey::generate_async`].
    pub fn generate(alg: Algorithm, rsa_bits: RsaBits) -> Result<Self, KeyError> {
        family(alg).generate(alg, &GenerateOptions { rsa_bits }).map(Self::new)
    }

    /// Generates a key without blocking the async runtime: RSA runs on tokio's blocking
    /// pool.
    pub async fn generate_async(alg: Algorithm, rsa_bits: RsaBits) -> Result<Self, KeyError> {
        if family(alg).slow_generation() {
            tokio::task::spawn_blocking(move || Self::generate(alg, rsa_bits))
                .await
                .map_err(KeyError::GenerationTask)?
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
        PublicKey::new(self.inner.public())
    }

    /// The pre-parsed signing key used for every token signed with this key.
    pub fn signing_key(&self) -> SigningKey {
        SigningKey {
            alg: self.alg,
            inner: self.inner.signer(),
        }
    }

    /// The private key as bytes for sealing: the 32-byte Ed25519 seed, the EC private
    /// scalar (32 bytes for P-256, 48 for P-384), or RSA PKCS#8 DER.
    pub fn to_secret_bytes(&self) -> Result<SecretBytes, KeyError> {
        self.inner.to_secret_bytes()
    }

    /// Parses bytes produced by [`PrivateKey::to_secret_bytes`].
    pub fn from_secret_bytes(alg: Algorithm, bytes: &SecretBytes) -> Result<Self, KeyError> {
        family(alg).import_secret_bytes(alg, bytes).map(Self::new)
    }

    /// Imports a PKCS#8 PEM private key (`-----BEGIN PRIVATE KEY-----`), Ed25519, RSA or
    /// EC (P-256, P-384). For RSA, `alg` chooses RS256 (default) or PS256; for EC the curve
    /// decides (ES256 or ES384), and an `alg` of another curve is refused.
    pub fn from_pkcs8_pem(pem: &str, alg: Option<Algorithm>) -> Result<Self, KeyError> {
        for family in families() {
            if let Some(inner) = family.import_pkcs8_pem(pem, alg)? {
                return Ok(Self::new(inner));
            }
        }
        Err(invalid(InvalidKey::UnsupportedPem))
    }

    /// Renders the key as PKCS#8 PEM (for export by an operator; never logged).
    pub fn to_pkcs8_pem(&self) -> Result<SecretBytes, KeyError> {
        let der = self.inner.to_pkcs8_der()?;
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
        let value = crate::json::parse_strict(json.as_bytes()).map_err(|_| invalid(InvalidKey::NotAnObject))?;
        Self::from_jwk(&value, alg_hint)
    }

    /// See [`PrivateKey::from_jwk_str`].
    pub fn from_jwk(jwk: &Value, alg_hint: Option<Algorithm>) -> Result<ImportedKey, KeyError> {
        let obj = jwk.as_object().ok_or_else(|| invalid(InvalidKey::NotAnObject))?;
        let public = parse_public(obj, alg_hint)?;
        let kid = member_str(obj, "kid")?.map(str::to_owned);
        if let Some(k) = &kid
            && (k.is_empty() || k.len() > 256)
        {
            return Err(invalid(InvalidKey::KidLength));
        }
        let d = SecretBytes::new(member_b64(obj, "d")?);
        let key = Self::new(public.params.private_from_jwk(obj, &d)?);
        Ok(ImportedKey { key, kid })
    }
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

    #[test]
    fn every_algorithm_has_a_family_that_keeps_it() -> Result<(), KeyError> {
        let names: Vec<&str> = families().map(|f| f.name()).collect();
        assert_eq!(names, ["Ed25519", "RSA", "ECDSA"]);
        for alg in Algorithm::ALL {
            let k = PrivateKey::generate(alg, RsaBits::B2048)?;
            assert_eq!(k.algorithm(), alg);
            assert_eq!(k.public_key().algorithm(), alg);
            assert_eq!(k.signing_key().algorithm(), alg);
            assert_eq!(k.public_key().verifying_key()?.algorithm(), alg);
            assert_eq!(family(alg).kty(), k.public_key().to_jwk("k")["kty"]);
        }
        Ok(())
    }

    #[test]
    fn public_types_keep_their_auto_traits() {
        fn check<T: Send + Sync + Unpin + UnwindSafe + RefUnwindSafe>() {}
        check::<PublicKey>();
        check::<PrivateKey>();
        check::<ImportedKey>();
        check::<SigningKey>();
        check::<VerifyingKey>();
    }

    #[test]
    fn rs256_and_ps256_keys_with_the_same_modulus_differ() -> Result<(), KeyError> {
        let k = PrivateKey::generate(Algorithm::Rs256, RsaBits::B2048)?;
        let ps = PrivateKey::from_secret_bytes(Algorithm::Ps256, &k.to_secret_bytes()?)?;
        assert_eq!(ps.algorithm(), Algorithm::Ps256);
        assert_ne!(k.public_key(), ps.public_key());
        assert_eq!(k.public_key().thumbprint(), ps.public_key().thumbprint());
        let sig = ps.signing_key().sign(b"m")?;
        assert!(ps.public_key().verifying_key()?.verify(b"m", &sig));
        assert!(!k.public_key().verifying_key()?.verify(b"m", &sig));
        Ok(())
    }
}
