//! `verify --jwks-url URL` / `verify --issuer URL`: one-shot checks against a remote
//! issuer's keys, with keyrot's token rules (`keyrot_jwks::JwksVerifier`).

use crate::{Fail, refused, usage};
use keyrot_core::{ErrorChain, Validation};
use keyrot_jwks::JwksVerifier;

/// Where the keys come from.
pub(crate) struct Source {
    pub(crate) jwks_url: Option<String>,
    pub(crate) issuer: Option<String>,
}

/// Fetches the issuer's keys once and verifies `token` against them, now or as of `at`
/// (Unix seconds). Exit 0 with the claims printed; 1 when the token is refused; 2 when
/// the keys cannot be had (unreachable, an HTTP error, discovery refused, a bad JWKS).
pub(crate) async fn verify(source: Source, token: &str, v: Validation, at: Option<i64>) -> Result<(), Fail> {
    let mut builder = JwksVerifier::builder().validation(v);
    if let Some(url) = source.jwks_url {
        builder = builder.jwks_url(url);
    }
    if let Some(issuer) = source.issuer {
        builder = builder.issuer(issuer);
    }
    let verifier = builder.build().await.map_err(|e| usage(ErrorChain(&e).to_string()))?;
    let result = match at {
        Some(t) => verifier.key_set().verify(token, verifier.validation(), t),
        None => verifier.verify(token),
    };
    verifier.shutdown().await;
    match result {
        Ok(verified) => {
            let out = serde_json::to_string_pretty(&serde_json::Value::Object(verified.claims)).unwrap_or_default();
            println!("{out}");
            Ok(())
        }
        Err(e) => {
            println!("invalid: {e:?}");
            Err(refused(format!("token refused: {e}")))
        }
    }
}
