//! Bounded HTTP GETs (time, size, and where they may lead), and conditional requests.

use crate::cache_control::CacheControl;
use crate::error::{Document, JwksError};
use reqwest::header::{ACCEPT, ETAG, IF_NONE_MATCH};
use reqwest::{Client, StatusCode, Url};
use std::net::IpAddr;
use std::time::Duration;

/// Longest ETag kept for revalidation.
const MAX_ETAG_LEN: usize = 256;
/// Most redirects the default client follows (each to https, or http on loopback).
pub(crate) const MAX_REDIRECTS: usize = 3;

/// The bounds on every request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) timeout: Duration,
    pub(crate) max_bytes: usize,
    /// Where requests may lead (discovered URLs, redirects, the final URL).
    pub(crate) scope: Scope,
}

/// Where keyrot may fetch from, decided by the configured URL. A loopback configuration
/// (a test, a sidecar) may lead to `https` anywhere or plain `http` to a loopback
/// address; a remote one only to `https` on a host that is not loopback, so a remote
/// issuer's discovery document or redirect cannot point keyrot at this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// The configured URL is on a loopback address.
    Loopback,
    /// Anything else (the default until a URL is configured).
    Remote,
}

impl Scope {
    /// The scope a configured URL opens.
    pub(crate) fn of(configured: &Url) -> Scope {
        if loopback(configured) {
            Scope::Loopback
        } else {
            Scope::Remote
        }
    }

    /// Whether a request may go to `url`.
    pub(crate) fn allows(self, url: &Url) -> bool {
        match (self, url.scheme()) {
            (Scope::Loopback, "https") => true,
            (Scope::Loopback, "http") => loopback(url),
            (Scope::Remote, "https") => !local_name(url),
            _ => false,
        }
    }
}

/// What a GET brought.
#[derive(Debug)]
pub(crate) enum Response {
    /// `200 OK`: the body (at most the size limit), its ETag, its caching directives.
    Body {
        bytes: Vec<u8>,
        etag: Option<String>,
        cache: CacheControl,
    },
    /// `304 Not Modified` to a conditional request.
    NotModified { cache: CacheControl },
}

/// Parses a configured URL: `https`, or `http` to a loopback address (tests, a sidecar).
pub(crate) fn parse_url(s: &str, what: Document) -> Result<Url, JwksError> {
    parse_url_in(s, what, Scope::Loopback)
}

/// Parses a URL a request may go to from within `scope`.
pub(crate) fn parse_url_in(s: &str, what: Document, scope: Scope) -> Result<Url, JwksError> {
    let url = Url::parse(s).map_err(|e| JwksError::InvalidUrl {
        what,
        source: Box::new(e),
    })?;
    if scope.allows(&url) {
        Ok(url)
    } else {
        Err(JwksError::InsecureUrl { what })
    }
}

/// The host as an address, when it is one (`[::1]` without its brackets).
fn host_ip(host: &str) -> Option<IpAddr> {
    host.trim_start_matches('[').trim_end_matches(']').parse().ok()
}

/// `localhost` or a loopback address: where plain `http` stays on this machine.
fn loopback(url: &Url) -> bool {
    match url.host_str() {
        Some(h) if h.eq_ignore_ascii_case("localhost") => true,
        Some(h) => host_ip(h).is_some_and(|ip| ip.is_loopback()),
        None => false,
    }
}

/// Any name or address that may reach this machine: loopback, `*.localhost` (RFC 6761),
/// the unspecified address, and IPv4-mapped forms of those.
fn local_name(url: &Url) -> bool {
    let Some(host) = url.host_str() else { return true };
    if let Some(ip) = host_ip(host) {
        let ip = ip.to_canonical();
        return ip.is_loopback() || ip.is_unspecified();
    }
    let name = host.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost")
}

/// The client used when the caller passes none: rustls, redirects only within `scope`.
pub(crate) fn default_client(scope: Scope) -> Result<Client, JwksError> {
    let policy = reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() > MAX_REDIRECTS || !scope.allows(attempt.url()) {
            attempt.stop()
        } else {
            attempt.follow()
        }
    });
    Client::builder().redirect(policy).build().map_err(JwksError::Client)
}

/// GETs `url` within `limits`, conditionally when `etag` is given.
pub(crate) async fn get(
    client: &Client,
    url: &Url,
    etag: Option<&str>,
    limits: Limits,
    what: Document,
) -> Result<Response, JwksError> {
    tokio::time::timeout(limits.timeout, get_unbounded(client, url, etag, limits, what))
        .await
        .unwrap_or(Err(JwksError::Timeout {
            what,
            timeout: limits.timeout,
        }))
}

async fn get_unbounded(
    client: &Client,
    url: &Url,
    etag: Option<&str>,
    limits: Limits,
    what: Document,
) -> Result<Response, JwksError> {
    let max = limits.max_bytes;
    let failed = |source| JwksError::Request { what, source };
    let mut request = client
        .get(url.clone())
        .header(ACCEPT, "application/jwk-set+json, application/json");
    if let Some(tag) = etag {
        request = request.header(IF_NONE_MATCH, tag);
    }
    let mut response = request.send().await.map_err(failed)?;
    if !limits.scope.allows(response.url()) {
        // A caller's client followed a redirect out of scope.
        return Err(JwksError::InsecureUrl { what });
    }
    let cache = CacheControl::from_headers(response.headers());
    let status = response.status();
    if status == StatusCode::NOT_MODIFIED && etag.is_some() {
        return Ok(Response::NotModified { cache });
    }
    if status != StatusCode::OK {
        return Err(JwksError::Status {
            what,
            status: status.as_u16(),
        });
    }
    if response.content_length().is_some_and(|n| n > max as u64) {
        return Err(JwksError::TooLarge { what, max });
    }
    let etag = response
        .headers()
        .get(ETAG)
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= MAX_ETAG_LEN)
        .map(str::to_owned);
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(failed)? {
        if bytes.len() + chunk.len() > max {
            return Err(JwksError::TooLarge { what, max });
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(Response::Body { bytes, etag, cache })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_or_loopback_http() {
        for ok in [
            "https://id.example/jwks",
            "http://127.0.0.1:8080/j",
            "http://[::1]/j",
            "http://localhost/j",
        ] {
            assert!(parse_url(ok, Document::Jwks).is_ok(), "{ok}");
        }
        for bad in ["http://id.example/jwks", "ftp://127.0.0.1/j", "file:///etc/jwks"] {
            assert!(
                matches!(parse_url(bad, Document::Jwks), Err(JwksError::InsecureUrl { .. })),
                "{bad}"
            );
        }
        assert!(matches!(
            parse_url("not a url", Document::Jwks),
            Err(JwksError::InvalidUrl { .. })
        ));
    }

    fn scope_of(configured: &str) -> Scope {
        Scope::of(&Url::parse(configured).expect("url"))
    }

    /// Issue 20, item 7: a remote issuer cannot lead keyrot to this machine.
    #[test]
    fn a_remote_configuration_never_leads_to_loopback_or_plain_http() {
        let remote = scope_of("https://id.example");
        assert_eq!(remote, Scope::Remote);
        assert_eq!(scope_of("https://127.0.0.1.example"), Scope::Remote);
        assert!(parse_url_in("https://keys.example/jwks", Document::Jwks, remote).is_ok());
        for bad in [
            "http://127.0.0.1:8080/keys",
            "http://localhost/keys",
            "http://[::1]/keys",
            "https://127.0.0.1/keys",
            "https://127.8.9.10/keys",
            "https://[::1]/keys",
            "https://[::ffff:127.0.0.1]/keys",
            "https://0.0.0.0/keys",
            "https://[::]/keys",
            "https://localhost/keys",
            "https://LOCALHOST./keys",
            "https://metadata.localhost/keys",
            "http://keys.example/jwks",
        ] {
            assert!(
                matches!(
                    parse_url_in(bad, Document::Jwks, remote),
                    Err(JwksError::InsecureUrl { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_loopback_configuration_may_lead_to_loopback_http_or_anywhere_over_https() {
        for configured in [
            "http://127.0.0.1:8080",
            "http://localhost:1",
            "http://[::1]:9",
            "https://127.0.0.1",
        ] {
            assert_eq!(scope_of(configured), Scope::Loopback, "{configured}");
        }
        let local = Scope::Loopback;
        for ok in [
            "http://127.0.0.1:9/keys",
            "http://localhost/k",
            "https://keys.example/jwks",
        ] {
            assert!(parse_url_in(ok, Document::Jwks, local).is_ok(), "{ok}");
        }
        for bad in ["http://keys.example/jwks", "http://0.0.0.0/k", "ftp://127.0.0.1/k"] {
            assert!(parse_url_in(bad, Document::Jwks, local).is_err(), "{bad}");
        }
    }
}
