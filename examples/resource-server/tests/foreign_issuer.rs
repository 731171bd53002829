//! Tokens of a foreign, non-Rust issuer (PyJWT) verify through keyrot's remote verifier:
//! RS256, PS256, EdDSA, ES256 and ES384, with keyrot's token rules (issuer, audience, the key's
//! algorithm). PyJWT is installed from PyPI into a virtualenv under the target directory
//! at the first run; with `CI=true` a failed install fails the test instead of skipping.

use axum::Router;
use axum::routing::get;
use keyrot_core::{TokenError, Validation};
use keyrot_jwks::JwksVerifier;
mod support;

use std::path::Path;
use std::process::Command;
use support::python_with_pyjwt;

const ISSUER: &str = "https://pyjwt.issuer.test";
const AUDIENCE: &str = "keyrot-resource-server";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyjwt_tokens_verify_through_the_remote_verifier() {
    let Some(python) = python_with_pyjwt() else { return };
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("pyjwt_issuer.py");
    let out = Command::new(&python)
        .arg(&script)
        .args([ISSUER, AUDIENCE])
        .output()
        .expect("run the PyJWT issuer");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let issued: serde_json::Value = serde_json::from_slice(&out.stdout).expect("issuer output is JSON");
    let jwks = issued["jwks"].to_string();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = Router::new().route(
        "/jwks.json",
        get(move || {
            let body = jwks.clone();
            async move {
                (
                    [
                        ("content-type", "application/jwk-set+json"),
                        ("cache-control", "max-age=300"),
                    ],
                    body,
                )
            }
        }),
    );
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let verifier = JwksVerifier::builder()
        .jwks_url(format!("http://{addr}/jwks.json"))
        .validation(Validation::new().with_issuer(ISSUER).with_audience(AUDIENCE))
        .build()
        .await
        .expect("the PyJWT JWKS loads");
    for alg in ["RS256", "PS256", "EdDSA", "ES256", "ES384"] {
        let token = issued["tokens"][alg].as_str().expect("token");
        let verified = verifier
            .verify(token)
            .unwrap_or_else(|e| panic!("PyJWT {alg} token (PyJWT {}) refused: {e}", issued["pyjwt"]));
        assert_eq!(verified.claims["sub"], format!("py-{alg}"));
        assert_eq!(verified.kid, format!("pyjwt-{}", alg.to_lowercase()));
        // The same rules as keyrot's own tokens: a changed payload byte is refused.
        let (head, rest) = token.split_once('.').expect("segments");
        let (payload, sig) = rest.split_once('.').expect("segments");
        let mut forged = payload.as_bytes().to_vec();
        forged[3] = if forged[3] == b'A' { b'B' } else { b'A' };
        let forged = format!("{head}.{}.{sig}", String::from_utf8(forged).expect("ascii"));
        assert!(verifier.verify(&forged).is_err(), "{alg}: a forged payload is refused");
    }
    // A token for another audience is refused even with a valid signature.
    let other = JwksVerifier::builder()
        .jwks_url(format!("http://{addr}/jwks.json"))
        .validation(Validation::new().with_issuer(ISSUER).with_audience("someone-else"))
        .build()
        .await
        .expect("JWKS");
    let token = issued["tokens"]["EdDSA"].as_str().expect("token");
    assert_eq!(other.verify(token).err(), Some(TokenError::InvalidAudience));
    verifier.shutdown().await;
    other.shutdown().await;
    server.abort();
}
