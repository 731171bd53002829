//! jsonwebtoken set up on a bench ring's Active key: its keys built once, the header
//! keyrot writes (same `alg` and `kid`), and the validation rules of the ring.

#![allow(dead_code, reason = "shared by several bench targets; each uses a subset")]

use crate::common::{AUDIENCE, ISSUER, Ring};
use keyrot_core::Algorithm;

/// jsonwebtoken on the ring's Active key.
pub struct Jwt {
    /// The private key, from keyrot's PKCS#8 PEM export.
    pub encoding: jsonwebtoken::EncodingKey,
    /// The public key, from the JWK members keyrot publishes.
    pub decoding: jsonwebtoken::DecodingKey,
    /// The header keyrot writes: the same `alg` and `kid`.
    pub header: jsonwebtoken::Header,
    /// The ring's rules: issuer, audience, 30 s leeway, `exp` required.
    pub validation: jsonwebtoken::Validation,
}

/// jsonwebtoken's keys, header and validation for `ring`'s Active key.
pub fn jwt(ring: &Ring) -> Jwt {
    use jsonwebtoken::{Algorithm as A, DecodingKey, EncodingKey};
    let pem = ring.key.to_pkcs8_pem().expect("PKCS#8 PEM");
    let pem = pem.expose();
    let (alg, encoding, decoding) = match ring.key.algorithm() {
        Algorithm::EdDsa => (
            A::EdDSA,
            EncodingKey::from_ed_pem(pem),
            DecodingKey::from_ed_components(&jwk_member(ring, "x")),
        ),
        alg @ (Algorithm::Rs256 | Algorithm::Ps256) => (
            if alg == Algorithm::Rs256 { A::RS256 } else { A::PS256 },
            EncodingKey::from_rsa_pem(pem),
            DecodingKey::from_rsa_components(&jwk_member(ring, "n"), &jwk_member(ring, "e")),
        ),
        alg @ (Algorithm::Es256 | Algorithm::Es384) => (
            if alg == Algorithm::Es256 { A::ES256 } else { A::ES384 },
            EncodingKey::from_ec_pem(pem),
            DecodingKey::from_ec_components(&jwk_member(ring, "x"), &jwk_member(ring, "y")),
        ),
        other => panic!("no jsonwebtoken set-up for {other}"),
    };
    let mut header = jsonwebtoken::Header::new(alg);
    header.kid = Some(ring.kid.clone());
    // The rules the keyring uses: issuer, audience, 30 s leeway, `exp` required.
    let mut validation = jsonwebtoken::Validation::new(alg);
    validation.set_issuer(&[ISSUER]);
    validation.set_audience(&[AUDIENCE]);
    validation.leeway = 30;
    Jwt {
        encoding: encoding.expect("jsonwebtoken private key"),
        decoding: decoding.expect("jsonwebtoken public key"),
        header,
        validation,
    }
}

/// The public JWK member `name` of the ring's Active key, as keyrot publishes it.
pub fn jwk_member(ring: &Ring, name: &str) -> String {
    ring.key.public_key().to_jwk(&ring.kid)[name]
        .as_str()
        .expect("JWK member is a string")
        .to_owned()
}
