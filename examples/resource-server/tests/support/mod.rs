//! The foreign stacks the interop tests verify keyrot's tokens with: installing them (from
//! PyPI and npm, into the target directory, once) and running them on a set of tokens
//! ([`verify_elsewhere`]: PyJWT, jwcrypto, node's `jose`, and the `jsonwebtoken` crate).
//! With `CI=true` a failed install fails the test; elsewhere the test prints one line and
//! skips that stack.

#![allow(dead_code)]

use keyrot_examples_support::testing::unavailable;
use std::path::{Path, PathBuf};
use std::process::Command;

fn succeeds(c: &mut Command) -> bool {
    c.output().is_ok_and(|o| o.status.success())
}

/// A Python with PyJWT, cryptography and jwcrypto, or `None` (skip) outside CI.
pub fn python_with_pyjwt() -> Option<PathBuf> {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("pyjwt-venv");
    keyrot_examples_support::testing::python_venv(
        &venv,
        &["pyjwt>=2.8", "cryptography>=42", "jwcrypto>=1.5"],
        "jwt, cryptography, jwcrypto",
        "PyJWT and jwcrypto",
    )
}

/// A directory with node's `jose` installed (scripts copied into it resolve it), or
/// `None` (skip) outside CI.
pub fn node_with_jose() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("node-jose");
    if dir.join("node_modules").join("jose").is_dir() {
        return Some(dir);
    }
    let _ = std::fs::create_dir_all(&dir);
    let installed = succeeds(
        Command::new("npm")
            .args(["install", "--silent", "--no-audit", "--no-fund", "--prefix"])
            .arg(&dir)
            .arg("jose@6"),
    );
    if installed && dir.join("node_modules").join("jose").is_dir() {
        Some(dir)
    } else {
        unavailable("node's jose")
    }
}

/// One token for the verifiers: it must verify through `jwks` as `alg` with `sub`, and
/// `tampered` (when given) must be refused for its signature.
pub struct Case {
    pub name: String,
    pub alg: &'static str,
    pub jwks: serde_json::Value,
    pub token: String,
    pub sub: String,
    pub tampered: Option<String>,
}

/// `token` with one bit of its middle signature byte flipped: still well-formed, so only
/// the signature check can refuse it.
pub fn tamper(token: &str) -> String {
    use keyrot_core::testing::b64;
    let (input, sig) = token.rsplit_once('.').expect("three segments");
    let mut bytes = b64::decode(sig).expect("the signature is base64url");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    format!("{input}.{}", b64::encode(&bytes))
}

/// What each verifier calls a bad signature.
const SIGNATURE_REFUSED: [(&str, &str); 4] = [
    ("pyjwt", "InvalidSignatureError"),
    ("jwcrypto", "InvalidJWSSignature"),
    ("jose", "JWSSignatureVerificationFailed"),
    ("jsonwebtoken", "InvalidSignature"),
];

/// Verifies every case with PyJWT, jwcrypto, node's `jose` (those that could be installed;
/// all of them under `CI=true`) and the `jsonwebtoken` crate, each through the case's
/// JWKS, and asserts each verifier accepted each token with its `sub` and refused each
/// tampered token as a bad signature. Returns the verifiers that ran.
pub fn verify_elsewhere(tag: &str, issuer: &str, audience: &str, cases: &[Case]) -> Vec<&'static str> {
    let mut results = vec![("jsonwebtoken", jsonwebtoken_results(issuer, audience, cases))];
    let input: serde_json::Map<String, serde_json::Value> = cases
        .iter()
        .map(|c| {
            let mut case = serde_json::json!({ "alg": c.alg, "jwks": c.jwks, "token": c.token });
            if let Some(t) = &c.tampered {
                case["tampered"] = t.as_str().into();
            }
            (c.name.clone(), case)
        })
        .collect();
    let input = serde_json::json!({ "issuer": issuer, "audience": audience, "cases": input });
    let input_file = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{tag}-{}.json", std::process::id()));
    std::fs::write(&input_file, input.to_string()).expect("write the input");
    let tests = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    if let Some(python) = python_with_pyjwt() {
        let mut out = run(
            "PyJWT/jwcrypto",
            Command::new(python)
                .arg(tests.join("verify_elsewhere.py"))
                .arg(&input_file),
        );
        results.push(("pyjwt", out["pyjwt"].take()));
        results.push(("jwcrypto", out["jwcrypto"].take()));
    }
    if let Some(node_dir) = node_with_jose() {
        // ESM resolves `jose` from the script's own directory.
        let script = node_dir.join("verify_elsewhere.mjs");
        std::fs::copy(tests.join("verify_elsewhere.mjs"), &script).expect("copy the script");
        let mut out = run("jose", Command::new("node").arg(&script).arg(&input_file));
        results.push(("jose", out["jose"].take()));
    }
    let _ = std::fs::remove_file(&input_file);
    for (stack, out) in &results {
        assert_results(stack, out, cases);
    }
    results.into_iter().map(|(stack, _)| stack).collect()
}

fn run(what: &str, command: &mut Command) -> serde_json::Value {
    let out = command.output().unwrap_or_else(|e| panic!("run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{what} printed no JSON: {e}"))
}

fn assert_results(stack: &str, out: &serde_json::Value, cases: &[Case]) {
    let refused = SIGNATURE_REFUSED
        .iter()
        .find(|(s, _)| *s == stack)
        .map(|(_, e)| *e)
        .expect("a known verifier");
    for case in cases {
        let got = &out[&case.name];
        assert_eq!(got["sub"], case.sub.as_str(), "{stack} verified {}: {out}", case.name);
        if case.tampered.is_some() {
            assert_eq!(
                got["tampered"], refused,
                "{stack} refused {} with a changed signature byte for its signature: {out}",
                case.name
            );
        }
    }
}

/// The `jsonwebtoken` crate's results, in the scripts' shape.
fn jsonwebtoken_results(issuer: &str, audience: &str, cases: &[Case]) -> serde_json::Value {
    let verify = |case: &Case, token: &str| -> Result<String, jsonwebtoken::errors::Error> {
        let set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(case.jwks.clone()).expect("a JWKS");
        let kid = jsonwebtoken::decode_header(token)?.kid.expect("a kid");
        let key = jsonwebtoken::DecodingKey::from_jwk(set.find(&kid).expect("the kid is in the JWKS"))?;
        let mut validation = jsonwebtoken::Validation::new(case.alg.parse()?);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation)?;
        Ok(data.claims["sub"].as_str().unwrap_or_default().to_owned())
    };
    let mut out = serde_json::Map::new();
    for case in cases {
        let sub = verify(case, &case.token).unwrap_or_else(|e| panic!("jsonwebtoken refused {}: {e}", case.name));
        let mut result = serde_json::json!({ "sub": sub });
        if let Some(t) = &case.tampered {
            result["tampered"] = match verify(case, t) {
                Ok(_) => "accepted".into(),
                Err(e) => format!("{:?}", e.kind()).into(),
            };
        }
        out.insert(case.name.clone(), result);
    }
    out.into()
}
