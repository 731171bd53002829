//! Token signing and verification: keyrot side by side with the crypto crate alone
//! (`raw`) and with `jsonwebtoken`, on the same key and the same claims.
//!
//! * `raw` signs / verifies the exact signing input (`header.payload`) of the keyrot
//!   token with the crypto crate keyrot uses (ed25519-dalek `verify_strict`, rsa 0.10
//!   PKCS#1 v1.5 with SHA-256, p256 0.14 ECDSA with SHA-256 and RFC 6979 nonces). It is the floor: no JSON, no base64, no claims checks.
//! * `jsonwebtoken` encodes the same claims / decodes the keyrot token with the same
//!   issuer and audience rules, its keys built once outside the timing loop.
//! * `keyrot` is `KeyRing::sign` / `KeyRing::verify` on a ring bootstrapped with the
//!   same key through `Rotator::import(.., ImportState::Active)`.
//!
//! Run with `cargo bench -p keyrot-benches --bench tokens`.

mod common;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{AUDIENCE, ISSUER, Ring};
use criterion::{BenchmarkGroup, Criterion, criterion_group, criterion_main, measurement::WallTime};
use keyrot_core::Algorithm;
use serde_json::{Map, Value};
use std::hint::black_box;
use std::time::Duration;

type Claims = Map<String, Value>;

/// The three parts of a compact token, decoded where it helps the raw baseline.
struct Parts {
    /// `header.payload`, the bytes the signature covers.
    signing_input: String,
    /// The raw signature bytes.
    signature: Vec<u8>,
}

fn split(token: &str) -> Parts {
    let (signing_input, sig_b64) = token.rsplit_once('.').expect("compact token has a signature segment");
    Parts {
        signing_input: signing_input.to_owned(),
        signature: URL_SAFE_NO_PAD.decode(sig_b64).expect("signature is base64url"),
    }
}

/// The public JWK member `name` of the ring's Active key, as keyrot publishes it.
fn jwk_member(ring: &Ring, name: &str) -> String {
    ring.key.public_key().to_jwk(&ring.kid)[name]
        .as_str()
        .expect("JWK member is a string")
        .to_owned()
}

/// jsonwebtoken's validation with the rules the keyring uses (issuer, audience, 30 s leeway,
/// `exp` required).
fn jwt_validation(alg: jsonwebtoken::Algorithm) -> jsonwebtoken::Validation {
    let mut v = jsonwebtoken::Validation::new(alg);
    v.set_issuer(&[ISSUER]);
    v.set_audience(&[AUDIENCE]);
    v.leeway = 30;
    v
}

fn jwt_header(alg: jsonwebtoken::Algorithm, kid: &str) -> jsonwebtoken::Header {
    let mut h = jsonwebtoken::Header::new(alg);
    h.kid = Some(kid.to_owned());
    h
}

fn tune(group: &mut BenchmarkGroup<'_, WallTime>, slow: bool) {
    if slow {
        // RSA signing takes milliseconds: 20 samples over 5 s is still over a thousand iterations.
        group
            .sample_size(20)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(5));
    } else {
        group
            .sample_size(60)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(4));
    }
}

fn eddsa(c: &mut Criterion) {
    let rt = common::runtime();
    let ring = common::ring(&rt, Algorithm::EdDsa);
    let claims = common::claims();
    let token = ring.keyring.sign(&claims).expect("keyrot signs");
    let parts = split(&token);

    // raw: ed25519-dalek keys from the same 32-byte seed.
    let seed: [u8; 32] = ring
        .key
        .to_secret_bytes()
        .expect("seed")
        .expose()
        .try_into()
        .expect("Ed25519 secret is a 32-byte seed");
    let sk = ed25519_dalek::SigningKey::from_bytes(&seed);
    let vk = sk.verifying_key();
    assert_eq!(
        URL_SAFE_NO_PAD.encode(vk.as_bytes()),
        jwk_member(&ring, "x"),
        "raw key is the keyrot key"
    );
    let raw_sign = |msg: &[u8]| ed25519_dalek::Signer::sign(&sk, msg);
    let raw_verify = |msg: &[u8], sig: &[u8]| {
        let sig = ed25519_dalek::Signature::from_slice(sig).expect("64-byte signature");
        vk.verify_strict(msg, &sig)
    };
    assert_eq!(
        raw_sign(parts.signing_input.as_bytes()).to_bytes().as_slice(),
        parts.signature.as_slice()
    );
    raw_verify(parts.signing_input.as_bytes(), &parts.signature).expect("raw verifies the keyrot token");

    // jsonwebtoken: keys built once.
    let pem = ring.key.to_pkcs8_pem().expect("PKCS#8 PEM");
    let ek = jsonwebtoken::EncodingKey::from_ed_pem(pem.expose()).expect("jsonwebtoken Ed25519 PEM");
    let dk = jsonwebtoken::DecodingKey::from_ed_components(&jwk_member(&ring, "x")).expect("jsonwebtoken Ed25519 x");
    let header = jwt_header(jsonwebtoken::Algorithm::EdDSA, &ring.kid);
    let validation = jwt_validation(jsonwebtoken::Algorithm::EdDSA);
    let jwt_token = jsonwebtoken::encode(&header, &claims, &ek).expect("jsonwebtoken signs");
    let decoded = jsonwebtoken::decode::<Claims>(&token, &dk, &validation).expect("jsonwebtoken verifies keyrot");
    let verified = ring.keyring.verify(&token).expect("keyrot verifies");
    assert_eq!(decoded.claims, verified.claims, "same claims either way");
    ring.keyring
        .verify(&jwt_token)
        .expect("keyrot verifies jsonwebtoken's token");

    let mut g = c.benchmark_group("verify_eddsa");
    tune(&mut g, false);
    g.bench_function("raw", |b| {
        b.iter(|| raw_verify(black_box(parts.signing_input.as_bytes()), black_box(&parts.signature)))
    });
    g.bench_function("jsonwebtoken", |b| {
        b.iter(|| jsonwebtoken::decode::<Claims>(black_box(&token), &dk, &validation).expect("verifies"))
    });
    g.bench_function("keyrot", |b| {
        b.iter(|| ring.keyring.verify(black_box(&token)).expect("verifies"))
    });
    g.finish();

    let mut g = c.benchmark_group("sign_eddsa");
    tune(&mut g, false);
    g.bench_function("raw", |b| {
        b.iter(|| raw_sign(black_box(parts.signing_input.as_bytes())))
    });
    g.bench_function("jsonwebtoken", |b| {
        b.iter(|| jsonwebtoken::encode(&header, black_box(&claims), &ek).expect("signs"))
    });
    g.bench_function("keyrot", |b| {
        b.iter(|| ring.keyring.sign(black_box(&claims)).expect("signs"))
    });
    g.finish();
}

fn rs256(c: &mut Criterion) {
    use rsa::pkcs8::DecodePrivateKey as _;
    use rsa::signature::{SignatureEncoding as _, Signer as _, Verifier as _};

    let rt = common::runtime();
    let ring = common::ring(&rt, Algorithm::Rs256);
    let claims = common::claims();
    let token = ring.keyring.sign(&claims).expect("keyrot signs");
    let parts = split(&token);

    // raw: rsa 0.10 keys from the same PKCS#8 DER.
    let der = ring.key.to_secret_bytes().expect("PKCS#8 DER");
    let private = rsa::PrivateKey::from_pkcs8_der(der.expose()).expect("rsa parses PKCS#8");
    let vk = rsa::pkcs1v15::VerifyingKey::<sha2::Sha256>::new(private.to_public_key());
    let sk = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(private);
    let raw_sign = |msg: &[u8]| sk.sign(msg);
    let raw_verify = |msg: &[u8], sig: &[u8]| {
        let sig = rsa::pkcs1v15::Signature::try_from(sig).expect("signature bytes");
        vk.verify(msg, &sig)
    };
    // PKCS#1 v1.5 is deterministic: the same key gives the same signature.
    assert_eq!(
        raw_sign(parts.signing_input.as_bytes()).to_vec(),
        parts.signature,
        "raw key is the keyrot key"
    );
    raw_verify(parts.signing_input.as_bytes(), &parts.signature).expect("raw verifies the keyrot token");

    // jsonwebtoken: keys built once.
    let pem = ring.key.to_pkcs8_pem().expect("PKCS#8 PEM");
    let ek = jsonwebtoken::EncodingKey::from_rsa_pem(pem.expose()).expect("jsonwebtoken RSA PEM");
    let dk = jsonwebtoken::DecodingKey::from_rsa_components(&jwk_member(&ring, "n"), &jwk_member(&ring, "e"))
        .expect("jsonwebtoken RSA n/e");
    let header = jwt_header(jsonwebtoken::Algorithm::RS256, &ring.kid);
    let validation = jwt_validation(jsonwebtoken::Algorithm::RS256);
    let jwt_token = jsonwebtoken::encode(&header, &claims, &ek).expect("jsonwebtoken signs");
    let decoded = jsonwebtoken::decode::<Claims>(&token, &dk, &validation).expect("jsonwebtoken verifies keyrot");
    let verified = ring.keyring.verify(&token).expect("keyrot verifies");
    assert_eq!(decoded.claims, verified.claims, "same claims either way");
    ring.keyring
        .verify(&jwt_token)
        .expect("keyrot verifies jsonwebtoken's token");

    let mut g = c.benchmark_group("verify_rs256");
    tune(&mut g, false);
    g.bench_function("raw", |b| {
        b.iter(|| raw_verify(black_box(parts.signing_input.as_bytes()), black_box(&parts.signature)))
    });
    g.bench_function("jsonwebtoken", |b| {
        b.iter(|| jsonwebtoken::decode::<Claims>(black_box(&token), &dk, &validation).expect("verifies"))
    });
    g.bench_function("keyrot", |b| {
        b.iter(|| ring.keyring.verify(black_box(&token)).expect("verifies"))
    });
    g.finish();

    let mut g = c.benchmark_group("sign_rs256");
    tune(&mut g, true);
    g.bench_function("raw", |b| {
        b.iter(|| raw_sign(black_box(parts.signing_input.as_bytes())))
    });
    g.bench_function("jsonwebtoken", |b| {
        b.iter(|| jsonwebtoken::encode(&header, black_box(&claims), &ek).expect("signs"))
    });
    g.bench_function("keyrot", |b| {
        b.iter(|| ring.keyring.sign(black_box(&claims)).expect("signs"))
    });
    g.finish();
}

fn es256(c: &mut Criterion) {
    let rt = common::runtime();
    let ring = common::ring(&rt, Algorithm::Es256);
    let claims = common::claims();
    let token = ring.keyring.sign(&claims).expect("keyrot signs");
    let parts = split(&token);

    // raw: p256 keys from the same 32-byte scalar.
    let scalar = ring.key.to_secret_bytes().expect("scalar");
    let sk = p256::ecdsa::SigningKey::from_slice(scalar.expose()).expect("P-256 scalar");
    let vk = *sk.verifying_key();
    let point = vk.to_sec1_point(false);
    assert_eq!(
        URL_SAFE_NO_PAD.encode(point.x().expect("x")),
        jwk_member(&ring, "x"),
        "raw key is the keyrot key"
    );
    let raw_sign = |msg: &[u8]| -> p256::ecdsa::Signature { p256::ecdsa::signature::Signer::sign(&sk, msg) };
    let raw_verify = |msg: &[u8], sig: &[u8]| {
        let sig = p256::ecdsa::Signature::from_slice(sig).expect("64-byte R‖S");
        p256::ecdsa::signature::Verifier::verify(&vk, msg, &sig)
    };
    // RFC 6979: deterministic, so raw and keyrot agree byte for byte.
    assert_eq!(
        raw_sign(parts.signing_input.as_bytes()).to_bytes().as_slice(),
        parts.signature.as_slice()
    );
    raw_verify(parts.signing_input.as_bytes(), &parts.signature).expect("raw verifies the keyrot token");

    // jsonwebtoken: keys built once.
    let pem = ring.key.to_pkcs8_pem().expect("PKCS#8 PEM");
    let ek = jsonwebtoken::EncodingKey::from_ec_pem(pem.expose()).expect("jsonwebtoken P-256 PEM");
    let dk = jsonwebtoken::DecodingKey::from_ec_components(&jwk_member(&ring, "x"), &jwk_member(&ring, "y"))
        .expect("jsonwebtoken P-256 x, y");
    let header = jwt_header(jsonwebtoken::Algorithm::ES256, &ring.kid);
    let validation = jwt_validation(jsonwebtoken::Algorithm::ES256);
    let jwt_token = jsonwebtoken::encode(&header, &claims, &ek).expect("jsonwebtoken signs");
    let decoded = jsonwebtoken::decode::<Claims>(&token, &dk, &validation).expect("jsonwebtoken verifies keyrot");
    let verified = ring.keyring.verify(&token).expect("keyrot verifies");
    assert_eq!(decoded.claims, verified.claims, "same claims either way");
    ring.keyring
        .verify(&jwt_token)
        .expect("keyrot verifies jsonwebtoken's token");

    let mut g = c.benchmark_group("verify_es256");
    tune(&mut g, false);
    g.bench_function("raw", |b| {
        b.iter(|| raw_verify(black_box(parts.signing_input.as_bytes()), black_box(&parts.signature)))
    });
    g.bench_function("jsonwebtoken", |b| {
        b.iter(|| jsonwebtoken::decode::<Claims>(black_box(&token), &dk, &validation).expect("verifies"))
    });
    g.bench_function("keyrot", |b| {
        b.iter(|| ring.keyring.verify(black_box(&token)).expect("verifies"))
    });
    g.finish();

    let mut g = c.benchmark_group("sign_es256");
    tune(&mut g, false);
    g.bench_function("raw", |b| {
        b.iter(|| raw_sign(black_box(parts.signing_input.as_bytes())))
    });
    g.bench_function("jsonwebtoken", |b| {
        b.iter(|| jsonwebtoken::encode(&header, black_box(&claims), &ek).expect("signs"))
    });
    g.bench_function("keyrot", |b| {
        b.iter(|| ring.keyring.sign(black_box(&claims)).expect("signs"))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default();
    targets = eddsa, rs256, es256
}
criterion_main!(benches);
