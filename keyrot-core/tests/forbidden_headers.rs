//! RFC 8725 / DESIGN §4: a token whose protected header carries `crit`, `jku`, `x5u`,
//! `jwk`, `x5c` or `b64` is refused, however good its signature. One test per member, by
//! its literal name (not by looping over the constant under test), each with a real
//! Ed25519 signature that verifies once the member is taken out.

use keyrot_core::testing::b64;
use keyrot_core::{Algorithm, PrivateKey, RsaBits, TokenError, Validation, VerifyingKey, verify_with_lookup};
use serde_json::{Value, json};

const NOW: i64 = 1_700_000_000;

fn signed(key: &PrivateKey, header: &Value) -> String {
    let payload = json!({"sub": "alice", "exp": NOW + 600});
    let input = format!(
        "{}.{}",
        b64::encode(&serde_json::to_vec(header).expect("json")),
        b64::encode(&serde_json::to_vec(&payload).expect("json"))
    );
    let sig = key.signing_key().sign(input.as_bytes()).expect("sign");
    format!("{input}.{}", b64::encode(&sig))
}

/// Verifies a real token whose header is `{"alg":"EdDSA","kid":"k1", member: value}`,
/// after checking that the same token without the member verifies.
fn verify_with_member(member: &str, value: Value) -> Result<(), TokenError> {
    let key = PrivateKey::generate(Algorithm::EdDsa, RsaBits::B2048).expect("keygen");
    let vk: VerifyingKey = key.public_key().verifying_key().expect("verifying key");
    let v = Validation::new();
    let plain = json!({"alg": "EdDSA", "kid": "k1"});
    verify_with_lookup(&signed(&key, &plain), |_| Some(&vk), &v, NOW).expect("the token without the member verifies");
    let mut header = plain;
    header[member] = value;
    verify_with_lookup(&signed(&key, &header), |_| Some(&vk), &v, NOW).map(|_| ())
}

#[test]
fn crit_is_refused() {
    assert_eq!(
        verify_with_member("crit", json!(["exp"])),
        Err(TokenError::ForbiddenHeader("crit"))
    );
}

#[test]
fn jku_is_refused() {
    assert_eq!(
        verify_with_member("jku", json!("https://attacker.example/jwks.json")),
        Err(TokenError::ForbiddenHeader("jku"))
    );
}

#[test]
fn x5u_is_refused() {
    assert_eq!(
        verify_with_member("x5u", json!("https://attacker.example/cert.pem")),
        Err(TokenError::ForbiddenHeader("x5u"))
    );
}

#[test]
fn jwk_is_refused() {
    let attacker = PrivateKey::generate(Algorithm::EdDsa, RsaBits::B2048).expect("keygen");
    let jwk: Value = serde_json::from_str(&attacker.public_key().to_jwk("k1").to_string()).expect("jwk json");
    assert_eq!(verify_with_member("jwk", jwk), Err(TokenError::ForbiddenHeader("jwk")));
}

#[test]
fn x5c_is_refused() {
    assert_eq!(
        verify_with_member("x5c", json!(["MIIBszCCAVmgAwIBAgIUJ"])),
        Err(TokenError::ForbiddenHeader("x5c"))
    );
}

#[test]
fn b64_is_refused() {
    assert_eq!(
        verify_with_member("b64", json!(false)),
        Err(TokenError::ForbiddenHeader("b64"))
    );
}
