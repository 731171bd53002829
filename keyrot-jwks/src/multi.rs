//! Several issuers behind one verifier, routed by `iss`.

use crate::error::MultiIssuerError;
use crate::verifier::JwksVerifier;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keyrot_core::TokenVerifier;
use keyrot_core::{TokenCache, TokenError, Verified};
use std::collections::HashMap;
use std::sync::Arc;

/// Verifies tokens from several issuers, each with its own [`JwksVerifier`] (its own
/// source, cache, [`keyrot_core::Validation`] and required `iss`), and applies to each
/// token the rules of exactly one of them.
///
/// A token is routed by its `iss` claim to the verifier that requires that issuer. The
/// claim is read from the payload before anything is verified, only to choose (after the
/// size cap: the largest [`keyrot_core::Validation::max_token_bytes`] of the verifiers);
/// the chosen verifier then checks everything, its own `iss` rule included, and no other
/// verifier is ever tried. A token whose `iss` is missing or names no verifier is refused
/// ([`TokenError::MissingClaim`], [`TokenError::InvalidIssuer`]). So a token one issuer
/// would refuse (a wrong audience, say) cannot pass under another issuer's looser rules,
/// even when that issuer republishes its keys. [`Verified::issuer`] names the issuer
/// whose rules accepted the token.
///
/// Each verifier's issuers are those its validation requires (the
/// [`crate::JwksVerifierBuilder::issuer`], unless the validation names issuers itself).
/// Construction refuses a verifier that requires none, unless it is the only one (it then
/// gets every token, and [`Verified::issuer`] stays `None`), and two verifiers that
/// require the same issuer. An unknown `kid` costs only the chosen issuer a rate-limited
/// fetch ([`MultiIssuerVerifier::verify_refreshing`]).
#[derive(Debug, Clone)]
pub struct MultiIssuerVerifier {
    inner: Arc<Members>,
}

#[derive(Debug)]
struct Members {
    verifiers: Vec<JwksVerifier>,
    /// Each required issuer, and the position of the verifier that requires it.
    by_issuer: HashMap<String, usize>,
    /// The routing size cap: the largest of the verifiers' caps.
    max_token_bytes: usize,
}

/// The verifier a token is routed to, and the issuer it was routed by.
type Route<'a> = (&'a JwksVerifier, Option<&'a str>);

impl MultiIssuerVerifier {
    /// One verifier over `verifiers`; see the type for the rules on their issuers.
    pub fn new(verifiers: impl IntoIterator<Item = JwksVerifier>) -> Result<Self, MultiIssuerError> {
        let verifiers: Vec<JwksVerifier> = verifiers.into_iter().collect();
        if verifiers.is_empty() {
            return Err(MultiIssuerError::Empty);
        }
        let mut by_issuer = HashMap::new();
        for (index, v) in verifiers.iter().enumerate() {
            let issuers = v.validation().issuers();
            if issuers.is_empty() && verifiers.len() > 1 {
                return Err(MultiIssuerError::MissingIssuer { index });
            }
            for issuer in issuers {
                if by_issuer
                    .insert(issuer.clone(), index)
                    .is_some_and(|other| other != index)
                {
                    return Err(MultiIssuerError::DuplicateIssuer { issuer: issuer.clone() });
                }
            }
        }
        let max_token_bytes = verifiers
            .iter()
            .map(|v| v.validation().max_token_bytes())
            .max()
            .unwrap_or(keyrot_core::DEFAULT_MAX_TOKEN_BYTES);
        let members = Members {
            verifiers,
            by_issuer,
            max_token_bytes,
        };
        Ok(Self {
            inner: Arc::new(members),
        })
    }

    /// The verifiers, in the order given.
    pub fn verifiers(&self) -> &[JwksVerifier] {
        &self.inner.verifiers
    }

    /// The verifier for the token's `iss`, and that issuer (none for a sole verifier that
    /// requires no issuer).
    fn route(&self, token: &str) -> Result<Route<'_>, TokenError> {
        let members = &*self.inner;
        if let [only] = members.verifiers.as_slice()
            && members.by_issuer.is_empty()
        {
            return Ok((only, None));
        }
        let iss = unverified_issuer(token, members.max_token_bytes)?;
        let (issuer, &index) = members
            .by_issuer
            .get_key_value(iss.as_str())
            .ok_or(TokenError::InvalidIssuer)?;
        Ok((&members.verifiers[index], Some(issuer.as_str())))
    }

    /// Verifies `token` with the verifier its `iss` names, and only with it (no I/O, no
    /// lock). The refusal is that verifier's, or why the token could not be routed.
    pub fn verify(&self, token: &str) -> Result<Verified, TokenError> {
        let (v, issuer) = self.route(token)?;
        v.verify(token).map(|ok| record(ok, issuer))
    }

    /// [`MultiIssuerVerifier::verify`], with the chosen verifier's rate-limited fetch on
    /// an unknown `kid` ([`JwksVerifier::verify_refreshing`]); no other issuer is asked.
    pub async fn verify_refreshing(&self, token: &str) -> Result<Verified, TokenError> {
        let (v, issuer) = self.route(token)?;
        v.verify_refreshing(token).await.map(|ok| record(ok, issuer))
    }

    /// Stops every verifier's background refresh.
    pub async fn shutdown(self) {
        for v in self.inner.verifiers.iter() {
            v.clone().shutdown().await;
        }
    }
}

fn record(verified: Verified, issuer: Option<&str>) -> Verified {
    match issuer {
        Some(issuer) => verified.with_issuer(issuer),
        None => verified,
    }
}

/// The `iss` of a token, read without verifying anything, only to choose a verifier:
/// the size cap, three non-empty segments, a canonical base64url payload holding a JSON
/// object whose `iss` (at most once) is a string.
fn unverified_issuer(token: &str, max: usize) -> Result<String, TokenError> {
    #[derive(serde::Deserialize)]
    struct Payload {
        iss: Option<serde_json::Value>,
    }
    if token.len() > max {
        return Err(TokenError::TooLarge { max });
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(TokenError::Malformed("expected three dot-separated segments"));
    };
    if h.is_empty() || p.is_empty() || s.is_empty() {
        return Err(TokenError::Malformed("empty segment"));
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(p)
        .map_err(|_| TokenError::Malformed("payload is not base64url"))?;
    // serde refuses `iss` twice, so the router and the verifier cannot read two issuers.
    let payload: Payload =
        serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed("payload is not a JSON object"))?;
    match payload.iss {
        None | Some(serde_json::Value::Null) => Err(TokenError::MissingClaim("iss")),
        Some(serde_json::Value::String(iss)) => Ok(iss),
        Some(_) => Err(TokenError::InvalidClaim("iss")),
    }
}

#[async_trait::async_trait]
impl TokenVerifier for MultiIssuerVerifier {
    async fn verify(&self, token: &str) -> Result<Verified, TokenError> {
        self.verify_refreshing(token).await
    }

    async fn verify_cached(&self, token: &str, cache: &TokenCache) -> Result<Verified, TokenError> {
        let (v, issuer) = self.route(token)?;
        TokenVerifier::verify_cached(v, token, cache)
            .await
            .map(|ok| record(ok, issuer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_payload(json: &str) -> String {
        format!("e30.{}.c2ln", URL_SAFE_NO_PAD.encode(json))
    }

    #[test]
    fn the_issuer_is_read_only_from_a_well_formed_payload() {
        assert_eq!(
            unverified_issuer(&with_payload(r#"{"iss":"https://a"}"#), 8192),
            Ok("https://a".into())
        );
        let twice = with_payload(r#"{"iss":"https://a","iss":"https://b"}"#);
        assert!(
            matches!(unverified_issuer(&twice, 8192), Err(TokenError::Malformed(_))),
            "iss twice"
        );
        assert_eq!(
            unverified_issuer(&with_payload("{}"), 8192),
            Err(TokenError::MissingClaim("iss"))
        );
        assert_eq!(
            unverified_issuer(&with_payload(r#"{"iss":["https://a"]}"#), 8192),
            Err(TokenError::InvalidClaim("iss"))
        );
        for bad in [
            with_payload("[]"),
            format!("{}=", with_payload(r#"{"iss":"a"}"#).trim_end_matches(".c2ln")) + ".c2ln",
            "e30.e30".into(),
            "e30..c2ln".into(),
            "e30.e30.c2ln.x".into(),
        ] {
            assert!(
                matches!(unverified_issuer(&bad, 8192), Err(TokenError::Malformed(_))),
                "{bad}"
            );
        }
        let long = with_payload(&format!(r#"{{"iss":"{}"}}"#, "a".repeat(100)));
        assert_eq!(
            unverified_issuer(&long, 64),
            Err(TokenError::TooLarge { max: 64 }),
            "the cap first"
        );
    }
}
