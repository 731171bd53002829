//! The keys on the token: a private key checked fit to sign (it may not leave the token),
//! and its public key read back as a JWK.

use super::mechanism::{ED25519_NAME, ED25519_OID, P256_OID, P384_OID};
use crate::pkcs11::token::{Fail, Place};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use keyrot_core::custody::CustodyError;
use keyrot_core::{Algorithm, PublicKey};
use serde_json::{Value, json};

/// What kind of key an object is, from `CKA_KEY_TYPE` and `CKA_EC_PARAMS`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Ed25519,
    P256,
    P384,
    Rsa,
    /// Any other key (another curve, DSA, a secret key type): fit for nothing here.
    Other,
}

impl Kind {
    fn of(key_type: Option<KeyType>, ec_params: Option<&[u8]>) -> Self {
        match (key_type, ec_params) {
            (Some(KeyType::EC_EDWARDS), Some(p)) if p == ED25519_OID || p == ED25519_NAME => Kind::Ed25519,
            (Some(KeyType::EC), Some(P256_OID)) => Kind::P256,
            (Some(KeyType::EC), Some(P384_OID)) => Kind::P384,
            (Some(KeyType::RSA), _) => Kind::Rsa,
            _ => Kind::Other,
        }
    }

    /// Whether a key of this kind signs `alg`.
    pub fn fits(self, alg: Algorithm) -> bool {
        matches!(
            (self, alg),
            (Kind::Ed25519, Algorithm::EdDsa)
                | (Kind::P256, Algorithm::Es256)
                | (Kind::P384, Algorithm::Es384)
                | (Kind::Rsa, Algorithm::Rs256 | Algorithm::Ps256)
        )
    }

    /// For messages: `an Ed25519 key`.
    pub fn describe(self) -> &'static str {
        match self {
            Kind::Ed25519 => "an Ed25519 key",
            Kind::P256 => "a P-256 key",
            Kind::P384 => "a P-384 key",
            Kind::Rsa => "an RSA key",
            Kind::Other => "a key of a type keyrot does not sign with",
        }
    }
}

/// A private key on the token, checked fit: its handle, `CKA_ID`, `CKA_LABEL` and kind.
#[derive(Clone, Debug)]
pub(crate) struct Found {
    pub handle: ObjectHandle,
    pub id: Vec<u8>,
    pub label: Vec<u8>,
    pub kind: Kind,
    /// `CKA_SIGN` when it was read.
    pub sign: bool,
}

/// Whether a private key's value may leave the token: `CKA_EXTRACTABLE`, `CKA_SENSITIVE`,
/// `CKA_NEVER_EXTRACTABLE` (an attribute the token does not answer counts against it).
pub(crate) struct Guard {
    extractable: bool,
    sensitive: bool,
    never_extractable: bool,
}

impl Guard {
    /// Refuses a key whose value can leave the token; with `fresh` (a key just created),
    /// also one that was ever extractable.
    pub fn check(&self, place: &Place<'_>, what: &str, fresh: bool) -> Result<(), Fail> {
        let why = if self.extractable {
            "is extractable (CKA_EXTRACTABLE=true): its value can leave the HSM"
        } else if !self.sensitive {
            "is not sensitive (CKA_SENSITIVE=false): its value can be read off the token"
        } else if fresh && !self.never_extractable {
            "was extractable at some point (CKA_NEVER_EXTRACTABLE=false)"
        } else {
            return Ok(());
        };
        Err(CustodyError::Config(format!("{}: the private key {what} {why}", place.location)).into())
    }
}

/// Reads what keyrot needs to know of the private key `handle`.
pub(crate) fn inspect(session: &Session, handle: ObjectHandle) -> Result<(Found, Guard), Fail> {
    use AttributeType as T;
    let wanted = [
        T::KeyType,
        T::EcParams,
        T::Extractable,
        T::Sensitive,
        T::NeverExtractable,
        T::Sign,
        T::Id,
        T::Label,
    ];
    let attrs = session
        .get_attributes(handle, &wanted)
        .map_err(|e| Fail::Ck(e, "C_GetAttributeValue"))?;
    let (mut key_type, mut params, mut id, mut label) = (None, None, Vec::new(), Vec::new());
    let mut guard = Guard {
        extractable: true,
        sensitive: false,
        never_extractable: false,
    };
    let mut sign = false;
    for a in attrs {
        match a {
            Attribute::KeyType(k) => key_type = Some(k),
            Attribute::EcParams(p) => params = Some(p),
            Attribute::Extractable(b) => guard.extractable = b,
            Attribute::Sensitive(b) => guard.sensitive = b,
            Attribute::NeverExtractable(b) => guard.never_extractable = b,
            Attribute::Sign(b) => sign = b,
            Attribute::Id(v) => id = v,
            Attribute::Label(v) => label = v,
            _ => {}
        }
    }
    let found = Found {
        handle,
        id,
        label,
        kind: Kind::of(key_type, params.as_deref()),
        sign,
    };
    Ok((found, guard))
}

/// The public key of the private key `found`, read from the public key object with the
/// same `CKA_ID` (the same label when it has no id); an RSA private key without one
/// carries its modulus and exponent itself.
pub(crate) fn read(
    session: &Session,
    found: &Found,
    alg: Algorithm,
    place: &Place<'_>,
    what: &str,
) -> Result<PublicKey, Fail> {
    let mut template = vec![Attribute::Class(ObjectClass::PUBLIC_KEY)];
    if found.id.is_empty() {
        template.push(Attribute::Label(found.label.clone()));
    } else {
        template.push(Attribute::Id(found.id.clone()));
    }
    let objects = session
        .find_objects(&template)
        .map_err(|e| Fail::Ck(e, "C_FindObjects"))?;
    let source = match objects.as_slice() {
        [one] => *one,
        [] if found.kind == Kind::Rsa => found.handle,
        [] => {
            return Err(place
                .denied(format!(
                    "the token holds no public key object for the private key {what} (same CKA_ID): \
                     keyrot cannot publish its public key"
                ))
                .into());
        }
        more => {
            return Err(CustodyError::Config(format!(
                "{}: {} public key objects share the CKA_ID of the private key {what}",
                place.location,
                more.len()
            ))
            .into());
        }
    };
    let jwk = jwk(session, source, found.kind).map_err(|e| Fail::Ck(e, "C_GetAttributeValue"))?;
    let jwk = jwk.ok_or_else(|| {
        CustodyError::Config(format!(
            "{}: the public key object of {what} on the token is not {} (curve, point or modulus)",
            place.location,
            found.kind.describe()
        ))
    })?;
    PublicKey::from_jwk(&jwk, Some(alg)).map_err(|e| {
        CustodyError::Config(format!(
            "{}: the public key of {what} read from the token is not a valid {alg} key: {e}",
            place.location
        ))
        .into()
    })
}

/// The public JWK of the key object `handle` of `kind`; `None` when its attributes do
/// not make one (another curve, a malformed point).
fn jwk(session: &Session, handle: ObjectHandle, kind: Kind) -> Result<Option<Value>, cryptoki::error::Error> {
    use AttributeType as T;
    let wanted: &[T] = match kind {
        Kind::Rsa => &[T::Modulus, T::PublicExponent],
        _ => &[T::EcParams, T::EcPoint],
    };
    let (mut params, mut point, mut n, mut e) = (None, None, None, None);
    for a in session.get_attributes(handle, wanted)? {
        match a {
            Attribute::EcParams(v) => params = Some(v),
            Attribute::EcPoint(v) => point = Some(v),
            Attribute::Modulus(v) => n = Some(v),
            Attribute::PublicExponent(v) => e = Some(v),
            _ => {}
        }
    }
    let b64 = |v: &[u8]| URL_SAFE_NO_PAD.encode(v);
    if kind == Kind::Rsa {
        let (Some(n), Some(e)) = (n, e) else { return Ok(None) };
        return Ok(Some(
            json!({"kty": "RSA", "n": b64(unsigned(&n)), "e": b64(unsigned(&e))}),
        ));
    }
    // The public key object must be on the private key's curve.
    let key_type = match kind {
        Kind::Ed25519 => KeyType::EC_EDWARDS,
        _ => KeyType::EC,
    };
    if Kind::of(Some(key_type), params.as_deref()) != kind {
        return Ok(None);
    }
    let Some(point) = point else { return Ok(None) };
    Ok(ec_jwk(kind, &point))
}

/// The JWK of an Ed25519, P-256 or P-384 public key from its `CKA_EC_POINT`.
pub(crate) fn ec_jwk(kind: Kind, ec_point_value: &[u8]) -> Option<Value> {
    let b64 = |v: &[u8]| URL_SAFE_NO_PAD.encode(v);
    let (crv, coordinate) = match kind {
        Kind::Ed25519 => {
            let x = ec_point(ec_point_value, 32)?;
            return Some(json!({"kty": "OKP", "crv": "Ed25519", "x": b64(x)}));
        }
        Kind::P256 => ("P-256", 32),
        Kind::P384 => ("P-384", 48),
        Kind::Rsa | Kind::Other => return None,
    };
    // SEC 1 §2.3.3 uncompressed: 0x04 || X || Y.
    let point = ec_point(ec_point_value, 1 + 2 * coordinate)?;
    let (&tag, xy) = point.split_first()?;
    if tag != 0x04 {
        return None;
    }
    let (x, y) = xy.split_at(coordinate);
    Some(json!({"kty": "EC", "crv": crv, "x": b64(x), "y": b64(y)}))
}

/// The point in a `CKA_EC_POINT` value: the content of its DER OCTET STRING (PKCS#11
/// 2.40 and later), or the raw point some older modules store; `None` unless it is `len`
/// bytes long.
pub(crate) fn ec_point(value: &[u8], len: usize) -> Option<&[u8]> {
    let content = match value {
        [0x04, n, rest @ ..] if *n < 0x80 && rest.len() == usize::from(*n) => Some(rest),
        [0x04, 0x81, n, rest @ ..] if *n >= 0x80 && rest.len() == usize::from(*n) => Some(rest),
        _ => None,
    };
    match content {
        Some(point) if point.len() == len => Some(point),
        _ if value.len() == len => Some(value),
        _ => None,
    }
}

/// A big-endian integer without its leading zero bytes (JWK `n` and `e`, RFC 7518 §6.3.1).
fn unsigned(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|&b| b != 0).unwrap_or(v.len().saturating_sub(1));
    &v[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ec_point_is_the_content_of_its_der_octet_string() {
        let ed = [7u8; 32];
        let mut der = vec![0x04, 32];
        der.extend_from_slice(&ed);
        assert_eq!(ec_point(&der, 32), Some(&ed[..]));
        // A raw point (older modules) is taken as it is.
        assert_eq!(ec_point(&ed, 32), Some(&ed[..]));
        // P-384 uncompressed (97 bytes) still has a short-form length; a 200-byte point
        // would take the long form.
        let mut p384 = vec![0x04];
        p384.extend_from_slice(&[9u8; 96]);
        let mut der = vec![0x04, 97];
        der.extend_from_slice(&p384);
        assert_eq!(ec_point(&der, 97), Some(&p384[..]));
        let long = [1u8; 200];
        let mut der = vec![0x04, 0x81, 200];
        der.extend_from_slice(&long);
        assert_eq!(ec_point(&der, 200), Some(&long[..]));
        // A raw uncompressed P-256 point that happens to start like a DER header.
        let mut raw = vec![0x04, 0x3f];
        raw.extend_from_slice(&[2u8; 63]);
        assert_eq!(ec_point(&raw, 65), Some(&raw[..]));
        // Wrong lengths, truncated DER, a non-minimal long form, another tag.
        assert_eq!(ec_point(&der[..100], 200), None);
        assert_eq!(ec_point(&[0x04, 0x81, 0x20, 0], 32), None);
        assert_eq!(ec_point(&[0x03, 2, 0, 0], 2), None);
        assert_eq!(ec_point(&[0x04, 3, 1, 2, 3], 4), None);
    }

    #[test]
    fn ec_points_make_jwks_and_compressed_points_are_refused() {
        let mut der = vec![0x04, 65, 0x04];
        der.extend((0..64u8).collect::<Vec<_>>());
        let jwk = ec_jwk(Kind::P256, &der).unwrap_or_else(|| panic!("a P-256 JWK"));
        assert_eq!(jwk["crv"], "P-256");
        assert_eq!(jwk["x"], URL_SAFE_NO_PAD.encode((0..32u8).collect::<Vec<_>>()));
        assert_eq!(jwk["y"], URL_SAFE_NO_PAD.encode((32..64u8).collect::<Vec<_>>()));
        der[2] = 0x02;
        assert_eq!(ec_jwk(Kind::P256, &der), None, "not uncompressed");
        assert_eq!(ec_jwk(Kind::P384, &der), None, "a P-256 point is not a P-384 point");
        let ed = [0x04, 32].into_iter().chain([5u8; 32]).collect::<Vec<_>>();
        assert_eq!(
            ec_jwk(Kind::Ed25519, &ed).map(|j| j["crv"].clone()),
            Some("Ed25519".into())
        );
        assert_eq!(unsigned(&[0, 0, 1, 0]), &[1, 0]);
        assert_eq!(unsigned(&[0]), &[0]);
    }
}
