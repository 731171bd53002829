//! Differential tests against `jsonwebtoken` 11 (RustCrypto backend), and a
//! secret-hygiene test: private key bytes never appear in `Debug` output, errors or the
//! JWKS.
//!
//! The same key goes into both libraries: keyrot generates it, a real [`KeyRing`] holds it
//! (imported as Active), and `jsonwebtoken` gets it as keyrot's PKCS#8 PEM export for
//! signing and as keyrot's published JWKS for verification.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, EncodingKey, Header};
use keyrot_core::testing::token;
use keyrot_core::{
    Algorithm, ImportState, ImportedKey, KeyRing, MasterKey, MasterKeySealer, MemoryLock, MemoryStorage, Outcome,
    PrivateKey, RequestContext, RingName, Rotator, RsaBits, testing::b64,
};
use keyrot_core::{SigningKey, VerifyingKey};
use keyrot_core::{TokenError, Validation};
use serde_json::{Value, json};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

const ISSUER: &str = "https://issuer.example";

fn now() -> i64 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock is after 1970")
        .as_secs();
    i64::try_from(secs).expect("time fits in i64")
}

/// One RSA key per algorithm for the whole file (2048-bit generation takes about a second).
fn rsa_key(alg: Algorithm) -> &'static PrivateKey {
    static RS256: OnceLock<PrivateKey> = OnceLock::new();
    static PS256: OnceLock<PrivateKey> = OnceLock::new();
    let cell = match alg {
        Algorithm::Rs256 => &RS256,
        Algorithm::Ps256 => &PS256,
        Algorithm::EdDsa => panic!("not an RSA algorithm"),
        other => panic!("no RSA key for {other}"),
    };
    cell.get_or_init(|| PrivateKey::generate(alg, RsaBits::B2048).expect("RSA key generation"))
}

fn jwt_alg(alg: Algorithm) -> jsonwebtoken::Algorithm {
    match alg {
        Algorithm::EdDsa => jsonwebtoken::Algorithm::EdDSA,
        Algorithm::Rs256 => jsonwebtoken::Algorithm::RS256,
        Algorithm::Ps256 => jsonwebtoken::Algorithm::PS256,
        Algorithm::Es256 => jsonwebtoken::Algorithm::ES256,
        Algorithm::Es384 => jsonwebtoken::Algorithm::ES384,
        other => panic!("no jsonwebtoken counterpart for {other}"),
    }
}

/// A real key ring (memory storage, master-key sealer) with `key` imported as Active.
async fn ring_with(key: &PrivateKey, name: &str) -> (KeyRing, String) {
    let storage = Arc::new(MemoryStorage::new());
    let sealer = Arc::new(MasterKeySealer::new(MasterKey::generate("mk1").expect("master key"), []).expect("sealer"));
    let ring = RingName::new(name).expect("ring name");
    let keyring = KeyRing::builder(ring.clone(), storage.clone(), sealer.clone())
        .build()
        .await
        .expect("key ring");
    let rotator = Rotator::builder(ring, storage, Arc::new(MemoryLock::default()), sealer)
        .with_keyring(keyring.clone())
        .build();
    let report = rotator
        .import(
            RequestContext::actor("interop-test"),
            ImportedKey {
                key: key.clone(),
                kid: None,
            },
            ImportState::Active,
        )
        .await
        .expect("import");
    assert_eq!(report.outcome, Outcome::Imported, "{report:?}");
    let kid = key.public_key().thumbprint();
    assert_eq!(keyring.snapshot().active_kid(), Some(kid.as_str()));
    (keyring, kid)
}

fn encoding_key(key: &PrivateKey) -> EncodingKey {
    let pem = key.to_pkcs8_pem().expect("PKCS#8 PEM export");
    match key.algorithm() {
        Algorithm::EdDsa => EncodingKey::from_ed_pem(pem.expose()),
        Algorithm::Rs256 | Algorithm::Ps256 => EncodingKey::from_rsa_pem(pem.expose()),
        Algorithm::Es256 | Algorithm::Es384 => EncodingKey::from_ec_pem(pem.expose()),
        other => panic!("no jsonwebtoken encoding key for {other}"),
    }
    .expect("jsonwebtoken reads keyrot's PKCS#8 PEM")
}

/// jsonwebtoken's decoding key for `kid`, taken from the JWKS keyrot publishes.
fn decoding_key(keyring: &KeyRing, kid: &str) -> DecodingKey {
    let set: JwkSet =
        serde_json::from_slice(keyring.snapshot().jwks().body()).expect("jsonwebtoken parses keyrot's JWKS");
    let jwk = set.find(kid).expect("the active kid is in the JWKS");
    DecodingKey::from_jwk(jwk).expect("jsonwebtoken builds a key from keyrot's JWK")
}

fn jwt_validation(alg: Algorithm) -> jsonwebtoken::Validation {
    let mut v = jsonwebtoken::Validation::new(jwt_alg(alg));
    v.set_issuer(&[ISSUER]);
    v.set_required_spec_claims(&["exp", "iss", "sub"]);
    v
}

fn claims() -> Value {
    let now = now();
    json!({
        "sub": "alice",
        "iss": ISSUER,
        "iat": now,
        "nbf": now - 5,
        "exp": now + 300,
        "scope": "read write",
        "nested": {"roles": ["admin", "ops"], "n": 1.5},
    })
}

/// Flips one bit in the middle of the signature segment.
fn tamper(token: &str) -> String {
    let (input, sig) = token.rsplit_once('.').expect("three segments");
    let mut bytes = b64::decode(sig).expect("signature is base64url");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    format!("{input}.{}", b64::encode(&bytes))
}

async fn differential(alg: Algorithm, key: &PrivateKey, ring: &str) {
    assert_eq!(key.algorithm(), alg);
    let (keyring, kid) = ring_with(key, ring).await;
    let claims = claims();

    // (a) jsonwebtoken signs (header kid = keyrot's kid), keyrot verifies.
    let mut header = Header::new(jwt_alg(alg));
    header.kid = Some(kid.clone());
    let theirs = jsonwebtoken::encode(&header, &claims, &encoding_key(key)).expect("jsonwebtoken signs");
    let verified = keyring.verify(&theirs).expect("keyrot verifies jsonwebtoken's token");
    assert_eq!(verified.kid, kid);
    assert_eq!(verified.alg, alg);
    assert_eq!(Value::Object(verified.claims), claims);
    // The bare verifying key agrees with the ring.
    let vk: VerifyingKey = key.public_key().verifying_key().expect("verifying key");
    assert!(keyrot_core::verify_with_key(&theirs, &vk, keyring.validation(), now()).is_ok());
    assert_eq!(keyring.verify(&tamper(&theirs)).err(), Some(TokenError::BadSignature));

    // (b) keyrot signs through the ring, jsonwebtoken verifies against keyrot's JWKS.
    let ours = keyring.sign(&claims).expect("keyrot signs");
    let dec = decoding_key(&keyring, &kid);
    let data =
        jsonwebtoken::decode::<Value>(&ours, &dec, &jwt_validation(alg)).expect("jsonwebtoken verifies keyrot's token");
    assert_eq!(data.header.alg, jwt_alg(alg));
    assert_eq!(data.header.kid.as_deref(), Some(kid.as_str()));
    assert_eq!(data.header.typ.as_deref(), Some("JWT"));
    assert_eq!(data.claims, claims);
    let err = jsonwebtoken::decode::<Value>(tamper(&ours), &dec, &jwt_validation(alg)).expect_err("tampered token");
    assert_eq!(err.kind(), &ErrorKind::InvalidSignature);
    // ... and with the bare signing key (no ring), still decodable.
    let sk: SigningKey = key.signing_key();
    let bare = token::sign(&sk, &token::encode_header(alg, &kid), &claims, now(), 600).expect("bare sign");
    let data = jsonwebtoken::decode::<Value>(&bare, &dec, &jwt_validation(alg)).expect("jsonwebtoken verifies");
    assert_eq!(data.claims, claims);
    // Our own verifier accepts what jsonwebtoken accepted.
    assert!(keyring.verify(&bare).is_ok());

    // Deliberate differences: keyrot is stricter than jsonwebtoken's defaults.
    // No kid: jsonwebtoken accepts the token, keyrot's ring refuses it.
    let no_kid = jsonwebtoken::encode(&Header::new(jwt_alg(alg)), &claims, &encoding_key(key)).expect("sign");
    assert!(jsonwebtoken::decode::<Value>(&no_kid, &dec, &jwt_validation(alg)).is_ok());
    assert_eq!(keyring.verify(&no_kid).err(), Some(TokenError::MissingKid));
    // An audience the verifier did not ask for: jsonwebtoken checks aud only when it has
    // been configured; keyrot refuses it unless told to accept any audience.
    let mut with_aud = claims.clone();
    with_aud["aud"] = json!("someone-else");
    let aud_token = jsonwebtoken::encode(&header, &with_aud, &encoding_key(key)).expect("sign");
    assert_eq!(keyring.verify(&aud_token).err(), Some(TokenError::InvalidAudience));
    let any_aud = Validation::new().allow_any_audience();
    assert!(keyring.verify_with(&aud_token, &any_aud, chrono::Utc::now()).is_ok());
}

#[tokio::test]
async fn eddsa_tokens_interoperate() {
    let key = PrivateKey::generate(Algorithm::EdDsa, RsaBits::B2048).expect("Ed25519 key");
    differential(Algorithm::EdDsa, &key, "interop-eddsa").await;
}

#[tokio::test]
async fn rs256_tokens_interoperate() {
    differential(Algorithm::Rs256, rsa_key(Algorithm::Rs256), "interop-rs256").await;
}

#[tokio::test]
async fn ps256_tokens_interoperate() {
    differential(Algorithm::Ps256, rsa_key(Algorithm::Ps256), "interop-ps256").await;
}

#[tokio::test]
async fn es256_tokens_interoperate() {
    let key = PrivateKey::generate(Algorithm::Es256, RsaBits::B2048).expect("P-256 key");
    differential(Algorithm::Es256, &key, "interop-es256").await;
}

#[tokio::test]
async fn es384_tokens_interoperate() {
    let key = PrivateKey::generate(Algorithm::Es384, RsaBits::B2048).expect("P-384 key");
    differential(Algorithm::Es384, &key, "interop-es384").await;
}

/// jsonwebtoken signs ES384 with a P-384 key and the token is presented under the kid of
/// keyrot's ES256 key: the key decides the algorithm, so the header's ES384 is refused
/// before any signature check.
#[tokio::test]
async fn es384_header_on_an_es256_key_is_refused() {
    let es256 = PrivateKey::generate(Algorithm::Es256, RsaBits::B2048).expect("P-256 key");
    let es384 = PrivateKey::generate(Algorithm::Es384, RsaBits::B2048).expect("P-384 key");
    let (keyring, kid) = ring_with(&es256, "interop-es-swap").await;
    let mut header = Header::new(jsonwebtoken::Algorithm::ES384);
    header.kid = Some(kid.clone());
    let other_curve = jsonwebtoken::encode(&header, &claims(), &encoding_key(&es384)).expect("sign ES384");
    assert_eq!(
        keyring.verify(&other_curve).err(),
        Some(TokenError::AlgorithmMismatch {
            expected: Algorithm::Es256
        })
    );
    // jsonwebtoken, asked for ES256 only, refuses it too.
    let err = jsonwebtoken::decode::<Value>(
        &other_curve,
        &decoding_key(&keyring, &kid),
        &jwt_validation(Algorithm::Es256),
    )
    .expect_err("alg not allowed");
    assert_eq!(err.kind(), &ErrorKind::InvalidAlgorithm);
}

/// The same RSA material signed as RS256 by jsonwebtoken, presented under the kid of a
/// PS256 key: keyrot takes the algorithm from the key and refuses the swap, even though
/// the RS256 signature is genuine.
#[tokio::test]
async fn rs_ps_swap_is_refused() {
    let ps = rsa_key(Algorithm::Ps256);
    let (keyring, kid) = ring_with(ps, "interop-swap").await;
    let mut header = Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(kid.clone());
    let swapped = jsonwebtoken::encode(&header, &claims(), &encoding_key(ps)).expect("sign RS256 with the PS key");
    // The signature is a valid RS256 signature over the token ...
    let rs_view = PrivateKey::from_pkcs8_pem(
        std::str::from_utf8(ps.to_pkcs8_pem().expect("pem").expose()).expect("PEM is ASCII"),
        Some(Algorithm::Rs256),
    )
    .expect("RS256 view of the same key");
    let rs_vk = rs_view.public_key().verifying_key().expect("vk");
    assert!(keyrot_core::verify_with_key(&swapped, &rs_vk, &Validation::new(), now()).is_ok());
    // ... but the ring's key is PS256.
    assert_eq!(
        keyring.verify(&swapped).err(),
        Some(TokenError::AlgorithmMismatch {
            expected: Algorithm::Ps256
        })
    );
    // jsonwebtoken, asked for PS256 only, refuses it too.
    let err = jsonwebtoken::decode::<Value>(
        &swapped,
        &decoding_key(&keyring, &kid),
        &jwt_validation(Algorithm::Ps256),
    )
    .expect_err("alg not allowed");
    assert_eq!(err.kind(), &ErrorKind::InvalidAlgorithm);
}

// ---------------------------------------------------------------------------------------
// Secret hygiene.

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every rendering of `bytes` a careless log line could contain.
fn renderings(name: &str, bytes: &[u8], out: &mut Vec<(String, String)>) {
    assert!(bytes.len() >= 16, "{name}: too short to search for");
    out.push((format!("{name} base64url"), URL_SAFE_NO_PAD.encode(bytes)));
    out.push((format!("{name} base64"), STANDARD.encode(bytes)));
    out.push((format!("{name} hex"), hex(bytes)));
    out.push((format!("{name} HEX"), hex(bytes).to_uppercase()));
    out.push((format!("{name} bytes"), format!("{bytes:?}")));
}

/// The secret strings of `key`: its seed or PKCS#8 DER, the DER inside its PEM export, and
/// for RSA the private exponent and primes.
fn secret_needles(key: &PrivateKey) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let secret = key.to_secret_bytes().expect("secret bytes");
    renderings("secret bytes", secret.expose(), &mut out);
    let pem = key.to_pkcs8_pem().expect("pem");
    let pem = std::str::from_utf8(pem.expose()).expect("PEM is ASCII").to_owned();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = STANDARD.decode(body.as_bytes()).expect("PEM body is base64");
    renderings("PKCS#8 DER", &der, &mut out);
    out.push(("PEM".into(), pem));
    if key.algorithm().is_rsa() {
        use rsa::pkcs8::DecodePrivateKey as _;
        use rsa::traits::PrivateKeyParts as _;
        let k = rsa::PrivateKey::from_pkcs8_der(secret.expose()).expect("RSA PKCS#8");
        renderings("d", &k.d().to_be_bytes_trimmed_vartime(), &mut out);
        for (i, p) in k.primes().iter().enumerate() {
            renderings(
                &format!("prime {i}"),
                &p.as_ref().to_be_bytes_trimmed_vartime(),
                &mut out,
            );
        }
    }
    out
}

async fn hygiene(key: &PrivateKey, ring: &str) {
    let needles = secret_needles(key);
    let (keyring, kid) = ring_with(key, ring).await;
    let token = keyring.sign(&claims()).expect("sign");
    assert!(keyring.verify(&token).is_ok());
    let snapshot = keyring.snapshot();
    let jwks = String::from_utf8(snapshot.jwks().body().to_vec()).expect("JWKS is UTF-8");
    assert!(jwks.contains(&kid), "the JWKS publishes the key");

    let mut seen: Vec<(&str, String)> = vec![
        ("PrivateKey", format!("{key:?}")),
        ("PrivateKey (alternate)", format!("{key:#?}")),
        ("SigningKey", format!("{:?}", key.signing_key())),
        (
            "ImportedKey",
            format!(
                "{:?}",
                ImportedKey {
                    key: key.clone(),
                    kid: Some(kid.clone())
                }
            ),
        ),
        ("SecretBytes", format!("{:?}", key.to_secret_bytes().expect("secret"))),
        ("PEM SecretBytes", format!("{:?}", key.to_pkcs8_pem().expect("pem"))),
        ("KeyRing", format!("{keyring:?}")),
        ("KeyRing (alternate)", format!("{keyring:#?}")),
        ("Snapshot", format!("{snapshot:?}")),
        ("key statuses", format!("{:?}", snapshot.keys())),
        ("token", token.clone()),
        ("JWKS", jwks),
    ];

    // Errors that had the secret in their input.
    let secret = key.to_secret_bytes().expect("secret");
    let other = PrivateKey::generate(Algorithm::EdDsa, RsaBits::B2048).expect("key");
    let mut mismatched = other.public_key().to_jwk("x");
    mismatched["d"] = URL_SAFE_NO_PAD.encode(&secret.expose()[..32]).into();
    let mut with_d = key.public_key().to_jwk("x");
    with_d["d"] = URL_SAFE_NO_PAD.encode(secret.expose()).into();
    // Positive control: the search does find a secret where one is.
    assert!(with_d.to_string().contains(needles[0].1.as_str()));
    let mut bad_pem = std::str::from_utf8(key.to_pkcs8_pem().expect("pem").expose())
        .expect("ascii")
        .to_owned();
    bad_pem.insert_str(40, "!!");
    // A 32-byte P-256 scalar is also a well-formed Ed25519 seed, so EC keys are tried as RSA.
    let wrong_alg = match key.algorithm() {
        a if a.is_rsa() => Algorithm::EdDsa,
        _ => Algorithm::Rs256,
    };
    let key_errors = [
        (
            "private JWK with a foreign d",
            PrivateKey::from_jwk(&mismatched, None)
                .map(|_| ())
                .expect_err("refused"),
        ),
        (
            "public JWK carrying d",
            keyrot_core::PublicKey::from_jwk(&with_d, None)
                .map(|_| ())
                .expect_err("refused"),
        ),
        (
            "JWK text with d in the wrong type",
            PrivateKey::from_jwk_str(
                &format!(r#"{{"kty":"OKP","crv":"Ed25519","d":{:?}}}"#, hex(secret.expose())),
                None,
            )
            .map(|_| ())
            .expect_err("refused"),
        ),
        (
            "corrupted PEM",
            PrivateKey::from_pkcs8_pem(&bad_pem, None)
                .map(|_| ())
                .expect_err("refused"),
        ),
        (
            "secret bytes of another type",
            PrivateKey::from_secret_bytes(wrong_alg, &secret)
                .map(|_| ())
                .expect_err("refused"),
        ),
    ];
    for (what, e) in key_errors {
        seen.push((what, format!("{e} {e:?}")));
    }
    let token_err = keyring.verify(&tamper(&token)).expect_err("tampered");
    seen.push(("TokenError", format!("{token_err} {token_err:?}")));
    let sign_err = keyring.sign(&json!({"sub": "no exp"})).expect_err("no exp");
    seen.push(("SignError", format!("{sign_err} {sign_err:?}")));

    let mut checked = 0;
    for (what, text) in &seen {
        for (name, needle) in &needles {
            assert!(
                !text.contains(needle.as_str()),
                "{:?} key: {name} appears in {what}",
                key.algorithm()
            );
            checked += 1;
        }
    }
    assert_eq!(checked, seen.len() * needles.len());
    // The redaction markers are there, so the Debug output was produced by the redacting impls.
    assert!(seen[0].1.contains("[redacted]") && seen[2].1.contains("[redacted]") && seen[4].1 == "[redacted]");
}

#[tokio::test]
async fn ed25519_secrets_never_leak() {
    let key = PrivateKey::generate(Algorithm::EdDsa, RsaBits::B2048).expect("Ed25519 key");
    hygiene(&key, "hygiene-eddsa").await;
}

#[tokio::test]
async fn rsa_secrets_never_leak() {
    hygiene(rsa_key(Algorithm::Rs256), "hygiene-rs256").await;
}

#[tokio::test]
async fn ecdsa_secrets_never_leak() {
    for (alg, ring) in [(Algorithm::Es256, "hygiene-es256"), (Algorithm::Es384, "hygiene-es384")] {
        let key = PrivateKey::generate(alg, RsaBits::B2048).expect("EC key");
        hygiene(&key, ring).await;
    }
}
