//! Several issuers behind one verifier.

use crate::verifier::JwksVerifier;
use keyrot_core::http::TokenVerifier;
use keyrot_core::{TokenError, Verified};
use std::sync::Arc;

/// Verifies tokens from several issuers, each with its own [`JwksVerifier`] (its own
/// source, cache, [`keyrot_core::Validation`] and required `iss`).
///
/// A token is routed by its header's `kid`, never by its payload: keyrot reads no claim
/// before the signature has been checked. Each verifier that holds the `kid` tries it (a
/// `kid` two issuers share is tried with both) and the token is accepted by the first
/// that verifies it, its own rules, `iss` included, applied. When none holds the `kid`,
/// [`MultiIssuerVerifier::verify_refreshing`] gives each verifier its rate-limited
/// unknown-kid fetch, so a flood of random kids costs each issuer at most one request
/// per its cooldown.
#[derive(Debug, Clone)]
pub struct MultiIssuerVerifier {
    verifiers: Arc<[JwksVerifier]>,
}

impl MultiIssuerVerifier {
    /// One verifier over `verifiers`.
    pub fn new(verifiers: impl IntoIterator<Item = JwksVerifier>) -> Self {
        Self {
            verifiers: verifiers.into_iter().collect(),
        }
    }

    /// The verifiers, in the order given.
    pub fn verifiers(&self) -> &[JwksVerifier] {
        &self.verifiers
    }

    /// Verifies `token` with every verifier that holds its `kid` (no I/O, no lock). The
    /// refusal is the first verifier's that holds the `kid`, else
    /// [`TokenError::UnknownKid`] (or the first other refusal, such as a malformed token).
    pub fn verify(&self, token: &str) -> Result<Verified, TokenError> {
        let mut refusal = None;
        for v in self.verifiers.iter() {
            match v.verify(token) {
                Ok(verified) => return Ok(verified),
                Err(TokenError::UnknownKid) => {}
                Err(e) => {
                    refusal.get_or_insert(e);
                }
            }
        }
        Err(refusal.unwrap_or(TokenError::UnknownKid))
    }

    /// [`MultiIssuerVerifier::verify`], and when no verifier holds the `kid`, each one's
    /// rate-limited unknown-kid fetch, then once more.
    pub async fn verify_refreshing(&self, token: &str) -> Result<Verified, TokenError> {
        match self.verify(token) {
            Err(TokenError::UnknownKid) => {
                for v in self.verifiers.iter() {
                    if let Ok(verified) = v.verify_refreshing(token).await {
                        return Ok(verified);
                    }
                }
                self.verify(token)
            }
            other => other,
        }
    }

    /// Stops every verifier's background refresh.
    pub async fn shutdown(self) {
        for v in self.verifiers.iter() {
            v.clone().shutdown().await;
        }
    }
}

#[async_trait::async_trait]
impl TokenVerifier for MultiIssuerVerifier {
    async fn verify(&self, token: &str) -> Result<Verified, TokenError> {
        self.verify_refreshing(token).await
    }
}
