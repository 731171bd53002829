//! Finding an issuer's `jwks_uri`: OpenID Connect Discovery, then RFC 8414.

use crate::error::{Document, JwksError};
use crate::http::{self, Limits, Response};
use reqwest::{Client, Url};

/// The members keyrot reads. serde refuses a document with either of them twice, so two
/// parsers cannot read two issuers from one document.
#[derive(serde::Deserialize)]
struct Metadata {
    issuer: String,
    jwks_uri: String,
}

/// `{issuer}/.well-known/openid-configuration` (OpenID Connect Discovery 1.0 §4).
fn openid_url(issuer: &str) -> Result<Url, JwksError> {
    let url = format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'));
    http::parse_url(&url, Document::Discovery)
}

/// `https://host/.well-known/oauth-authorization-server{path}` (RFC 8414 §3.1: the
/// well-known segment goes between the host and the issuer's path).
fn rfc8414_url(issuer: &Url) -> Url {
    let mut url = issuer.clone();
    let path = format!(
        "/.well-known/oauth-authorization-server{}",
        issuer.path().trim_end_matches('/')
    );
    url.set_path(&path);
    url.set_query(None);
    url.set_fragment(None);
    url
}

/// The issuer's `jwks_uri`. The OpenID Connect document is asked for first; when it
/// answers with an HTTP error status, the RFC 8414 document. The document's `issuer` must
/// equal `issuer` exactly, and its `jwks_uri` be within `limits.scope` (a remote issuer
/// cannot name a loopback or plain `http` URL).
pub(crate) async fn jwks_uri(client: &Client, issuer: &str, limits: Limits) -> Result<Url, JwksError> {
    let base = http::parse_url(issuer, Document::Discovery)?;
    let response = match http::get(client, &openid_url(issuer)?, None, limits, Document::Discovery).await {
        Err(JwksError::Status { .. }) => {
            http::get(client, &rfc8414_url(&base), None, limits, Document::Discovery).await?
        }
        other => other?,
    };
    let Response::Body { bytes, .. } = response else {
        // Not a conditional request: a 304 is an error status here.
        return Err(JwksError::Status {
            what: Document::Discovery,
            status: 304,
        });
    };
    let metadata: Metadata = serde_json::from_slice(&bytes).map_err(JwksError::Discovery)?;
    if metadata.issuer != issuer {
        return Err(JwksError::IssuerMismatch);
    }
    http::parse_url_in(&metadata.jwks_uri, Document::Jwks, limits.scope)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_known_urls() -> Result<(), JwksError> {
        assert_eq!(
            openid_url("https://id.example/tenant/")?.as_str(),
            "https://id.example/tenant/.well-known/openid-configuration"
        );
        let base = http::parse_url("https://id.example/tenant", Document::Discovery)?;
        assert_eq!(
            rfc8414_url(&base).as_str(),
            "https://id.example/.well-known/oauth-authorization-server/tenant"
        );
        let root = http::parse_url("https://id.example", Document::Discovery)?;
        assert_eq!(
            rfc8414_url(&root).as_str(),
            "https://id.example/.well-known/oauth-authorization-server"
        );
        Ok(())
    }
}
