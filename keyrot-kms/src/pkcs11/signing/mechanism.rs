//! The PKCS#11 mechanisms behind each JWS algorithm: what the token offers (read once at
//! open), the key-pair templates, and signatures in JWS form.

use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismInfo, MechanismType};
use cryptoki::object::{Attribute, KeyType, ObjectClass};
use keyrot_core::custody::CustodyError;
use keyrot_core::{Algorithm, RsaBits};
use sha2::{Digest, Sha256, Sha384};

/// DER of the OID 1.3.101.112 (Ed25519, RFC 8410): `CKA_EC_PARAMS` of an Ed25519 key.
pub(crate) const ED25519_OID: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
/// DER of the PrintableString `edwards25519`, which some modules want instead of the OID.
pub(crate) const ED25519_NAME: &[u8] = b"\x13\x0cedwards25519";
/// DER of the OID 1.2.840.10045.3.1.7 (P-256, secp256r1).
pub(crate) const P256_OID: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// DER of the OID 1.3.132.0.34 (P-384, secp384r1).
pub(crate) const P384_OID: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];

/// The DigestInfo prefix of a SHA-256 digest (RFC 8017 §9.2, note 1), for `CKM_RSA_PKCS`.
const SHA256_DIGEST_INFO: &[u8] = &[
    0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20,
];

/// RFC 7518 §3.5: PS256 uses a salt as long as the SHA-256 digest.
const PSS_SALT_LEN: u64 = 32;

/// The mechanisms this backend may use; the token is asked about these only.
pub(crate) const WANTED: [MechanismType; 9] = [
    MechanismType::ECC_EDWARDS_KEY_PAIR_GEN,
    MechanismType::EDDSA,
    MechanismType::ECC_KEY_PAIR_GEN,
    MechanismType::ECDSA,
    MechanismType::RSA_PKCS_KEY_PAIR_GEN,
    MechanismType::SHA256_RSA_PKCS,
    MechanismType::RSA_PKCS,
    MechanismType::SHA256_RSA_PKCS_PSS,
    MechanismType::RSA_PKCS_PSS,
];

/// How a signature of one algorithm is made on this token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Signer {
    /// `CKM_EDDSA` over the message (Ed25519, pure).
    Eddsa,
    /// `CKM_ECDSA` over SHA-256 of the message: `R‖S`, 64 bytes.
    EcdsaP256,
    /// `CKM_ECDSA` over SHA-384 of the message: `R‖S`, 96 bytes.
    EcdsaP384,
    /// `CKM_SHA256_RSA_PKCS` over the message.
    RsaSha256,
    /// `CKM_RSA_PKCS` over the DigestInfo of SHA-256 of the message.
    RsaDigestInfo,
    /// `CKM_SHA256_RSA_PKCS_PSS` over the message, MGF1-SHA-256, 32-byte salt.
    PssSha256,
    /// `CKM_RSA_PKCS_PSS` over SHA-256 of the message, MGF1-SHA-256, 32-byte salt.
    PssDigest,
}

/// The mechanisms of [`WANTED`] the token offers, with their info.
pub(crate) struct Offered {
    list: Vec<(MechanismType, MechanismInfo)>,
    /// Sign RSA over a digest made here even when the token offers the hashing mechanisms.
    pub local_hashing: bool,
}

impl Offered {
    pub fn new(list: Vec<(MechanismType, MechanismInfo)>) -> Self {
        Self {
            list,
            local_hashing: false,
        }
    }

    fn info(&self, m: MechanismType) -> Option<&MechanismInfo> {
        self.list.iter().find(|(t, _)| *t == m).map(|(_, i)| i)
    }

    fn generates(&self, m: MechanismType) -> bool {
        self.info(m).is_some_and(MechanismInfo::generate_key_pair)
    }

    fn signs(&self, m: MechanismType) -> bool {
        self.info(m).is_some_and(MechanismInfo::sign)
    }

    /// What the token offers, for messages: `CKM_ECDSA, CKM_EDDSA, …`.
    fn names(&self) -> String {
        let names: Vec<String> = self.list.iter().map(|(m, _)| m.to_string()).collect();
        if names.is_empty() {
            "none of EdDSA, ECDSA, RSA PKCS#1 v1.5 or RSA-PSS".to_owned()
        } else {
            names.join(", ")
        }
    }

    /// The key-pair mechanism of `alg`.
    fn keygen(alg: Algorithm) -> MechanismType {
        match alg {
            Algorithm::EdDsa => MechanismType::ECC_EDWARDS_KEY_PAIR_GEN,
            Algorithm::Rs256 | Algorithm::Ps256 => MechanismType::RSA_PKCS_KEY_PAIR_GEN,
            _ => MechanismType::ECC_KEY_PAIR_GEN,
        }
    }

    /// How to sign with `alg`, or [`CustodyError::Config`] naming what the token offers.
    pub fn signer(&self, alg: Algorithm, location: &str) -> Result<Signer, CustodyError> {
        let keygen = Self::keygen(alg);
        let (hashed, raw) = match alg {
            Algorithm::EdDsa => (None, (MechanismType::EDDSA, Signer::Eddsa)),
            Algorithm::Es256 => (None, (MechanismType::ECDSA, Signer::EcdsaP256)),
            Algorithm::Es384 => (None, (MechanismType::ECDSA, Signer::EcdsaP384)),
            Algorithm::Rs256 => (
                Some((MechanismType::SHA256_RSA_PKCS, Signer::RsaSha256)),
                (MechanismType::RSA_PKCS, Signer::RsaDigestInfo),
            ),
            Algorithm::Ps256 => (
                Some((MechanismType::SHA256_RSA_PKCS_PSS, Signer::PssSha256)),
                (MechanismType::RSA_PKCS_PSS, Signer::PssDigest),
            ),
            other => {
                return Err(CustodyError::Config(format!(
                    "{location}: the PKCS#11 backend does not sign {other}"
                )));
            }
        };
        let hashed = hashed.filter(|(m, _)| !self.local_hashing && self.signs(*m));
        let chosen = hashed.or_else(|| self.signs(raw.0).then_some(raw));
        match chosen {
            Some((_, signer)) if self.generates(keygen) => Ok(signer),
            _ => {
                let needs = match alg {
                    Algorithm::Rs256 => {
                        "CKM_RSA_PKCS_KEY_PAIR_GEN and CKM_SHA256_RSA_PKCS (or CKM_RSA_PKCS)".to_owned()
                    }
                    Algorithm::Ps256 => {
                        "CKM_RSA_PKCS_KEY_PAIR_GEN and CKM_SHA256_RSA_PKCS_PSS (or CKM_RSA_PKCS_PSS)".to_owned()
                    }
                    _ => format!("{keygen} and {}", raw.0),
                };
                Err(CustodyError::Config(format!(
                    "{location}: the token cannot make {alg} keys: {alg} needs {needs}; the token offers {}",
                    self.names()
                )))
            }
        }
    }

    /// [`Offered::signer`], and for RSA whether the token makes and signs with keys of
    /// `rsa_bits` (the mechanisms' key size range, in bits).
    pub fn supports(&self, alg: Algorithm, rsa_bits: RsaBits, location: &str) -> Result<Signer, CustodyError> {
        let signer = self.signer(alg, location)?;
        if !alg.is_rsa() {
            return Ok(signer);
        }
        let bits = rsa_bits.bits();
        for m in [Self::keygen(alg), signer.mechanism_type()] {
            let Some(info) = self.info(m) else { continue };
            let (min, max) = (info.min_key_size(), info.max_key_size());
            if bits < min || (max != 0 && bits > max) {
                return Err(CustodyError::Config(format!(
                    "{location}: the token's {m} takes RSA keys of {min} to {max} bits, not {bits}"
                )));
            }
        }
        Ok(signer)
    }
}

impl Signer {
    fn mechanism_type(self) -> MechanismType {
        match self {
            Signer::Eddsa => MechanismType::EDDSA,
            Signer::EcdsaP256 | Signer::EcdsaP384 => MechanismType::ECDSA,
            Signer::RsaSha256 => MechanismType::SHA256_RSA_PKCS,
            Signer::RsaDigestInfo => MechanismType::RSA_PKCS,
            Signer::PssSha256 => MechanismType::SHA256_RSA_PKCS_PSS,
            Signer::PssDigest => MechanismType::RSA_PKCS_PSS,
        }
    }

    /// The mechanism to hand `C_Sign`.
    pub fn mechanism(self) -> Mechanism<'static> {
        let pss = PkcsPssParams {
            hash_alg: MechanismType::SHA256,
            mgf: PkcsMgfType::MGF1_SHA256,
            s_len: PSS_SALT_LEN.into(),
        };
        match self {
            Signer::Eddsa => Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
            Signer::EcdsaP256 | Signer::EcdsaP384 => Mechanism::Ecdsa,
            Signer::RsaSha256 => Mechanism::Sha256RsaPkcs,
            Signer::RsaDigestInfo => Mechanism::RsaPkcs,
            Signer::PssSha256 => Mechanism::Sha256RsaPkcsPss(pss),
            Signer::PssDigest => Mechanism::RsaPkcsPss(pss),
        }
    }

    /// The data to hand `C_Sign` for `message`: the message, its digest, or its DigestInfo.
    pub fn data(self, message: &[u8]) -> Vec<u8> {
        match self {
            Signer::Eddsa | Signer::RsaSha256 | Signer::PssSha256 => message.to_vec(),
            Signer::EcdsaP256 | Signer::PssDigest => Sha256::digest(message).to_vec(),
            Signer::EcdsaP384 => Sha384::digest(message).to_vec(),
            Signer::RsaDigestInfo => digest_info(message),
        }
    }

    /// The length a JWS signature of this kind has, where it is fixed.
    pub fn fixed_len(self) -> Option<usize> {
        match self {
            Signer::Eddsa | Signer::EcdsaP256 => Some(64),
            Signer::EcdsaP384 => Some(96),
            _ => None,
        }
    }
}

/// The DER DigestInfo of SHA-256 of `message` (what `CKM_RSA_PKCS` pads and signs).
pub(crate) fn digest_info(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(SHA256_DIGEST_INFO.len() + 32);
    out.extend_from_slice(SHA256_DIGEST_INFO);
    out.extend_from_slice(&Sha256::digest(message));
    out
}

/// What `C_GenerateKeyPair` needs for a key of `alg`: the mechanism, and the public and
/// private templates. The private key is a token object, private, sensitive,
/// non-extractable and signs only; `ed25519_params` is the `CKA_EC_PARAMS` form used for
/// Ed25519 ([`ED25519_OID`], or [`ED25519_NAME`] for modules that want it).
pub(crate) fn keygen_templates(
    alg: Algorithm,
    rsa_bits: RsaBits,
    label: &str,
    id: &[u8],
    ed25519_params: &[u8],
) -> (Mechanism<'static>, Vec<Attribute>, Vec<Attribute>) {
    let common = [
        Attribute::Token(true),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.to_vec()),
    ];
    let mut public = vec![Attribute::Class(ObjectClass::PUBLIC_KEY), Attribute::Verify(true)];
    public.extend(common.iter().cloned());
    let mut private = vec![
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
    ];
    private.extend(common);
    let (mechanism, key_type) = match alg {
        Algorithm::EdDsa => {
            public.push(Attribute::EcParams(ed25519_params.to_vec()));
            (Mechanism::EccEdwardsKeyPairGen, KeyType::EC_EDWARDS)
        }
        Algorithm::Rs256 | Algorithm::Ps256 => {
            let bits = u64::try_from(rsa_bits.bits()).unwrap_or(2048);
            public.push(Attribute::ModulusBits(bits.into()));
            public.push(Attribute::PublicExponent(vec![0x01, 0x00, 0x01]));
            (Mechanism::RsaPkcsKeyPairGen, KeyType::RSA)
        }
        Algorithm::Es384 => {
            public.push(Attribute::EcParams(P384_OID.to_vec()));
            (Mechanism::EccKeyPairGen, KeyType::EC)
        }
        _ => {
            public.push(Attribute::EcParams(P256_OID.to_vec()));
            (Mechanism::EccKeyPairGen, KeyType::EC)
        }
    };
    public.push(Attribute::KeyType(key_type));
    private.push(Attribute::KeyType(key_type));
    (mechanism, public, private)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_info_is_the_der_of_sha256_and_the_digest() {
        let di = digest_info(b"abc");
        assert_eq!(di.len(), 51);
        assert_eq!(&di[..19], SHA256_DIGEST_INFO);
        // SHA-256("abc"), FIPS 180-2 appendix B.1.
        assert_eq!(di[19..23], [0xba, 0x78, 0x16, 0xbf]);
        assert_eq!(di[47..], [0xf2, 0x00, 0x15, 0xad]);
    }

    #[test]
    fn pss_uses_sha256_mgf1_sha256_and_a_32_byte_salt() {
        for signer in [Signer::PssSha256, Signer::PssDigest] {
            let params = match signer.mechanism() {
                Mechanism::Sha256RsaPkcsPss(p) | Mechanism::RsaPkcsPss(p) => p,
                other => panic!("{other:?}"),
            };
            assert_eq!(params.hash_alg, MechanismType::SHA256);
            assert_eq!(params.mgf, PkcsMgfType::MGF1_SHA256);
            assert_eq!(*params.s_len, 32);
            let expected = if signer == Signer::PssDigest { 32 } else { 1 };
            assert_eq!(signer.data(b"m").len(), expected);
        }
        let data = Signer::EcdsaP384.data(b"m");
        assert_eq!(data.len(), 48, "ES384 signs SHA-384");
    }

    #[test]
    fn an_unsupported_algorithm_names_what_the_token_offers() {
        let none = Offered::new(Vec::new());
        let e = none.signer(Algorithm::EdDsa, "pkcs11:token=t").unwrap_err().to_string();
        assert!(e.contains("CKM_EC_EDWARDS_KEY_PAIR_GEN and CKM_EDDSA"), "{e}");
        assert!(e.contains("the token offers none"), "{e}");
        let e = none.signer(Algorithm::Ps256, "l").unwrap_err().to_string();
        assert!(e.contains("CKM_RSA_PKCS_PSS"), "{e}");
    }
}
