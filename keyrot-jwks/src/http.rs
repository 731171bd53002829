//! Bounded HTTP GETs (time and size), conditional requests, and `Cache-Control`.

use crate::error::{Document, JwksError};
use reqwest::header::{ACCEPT, AGE, CACHE_CONTROL, ETAG, HeaderMap, IF_NONE_MATCH};
use reqwest::{Client, StatusCode, Url};
use std::net::IpAddr;
use std::time::Duration;

/// How long a response without `max-age` is fresh (before clamping).
pub(crate) const DEFAULT_LIFETIME: Duration = Duration::from_secs(600);
/// Longest ETag kept for revalidation.
const MAX_ETAG_LEN: usize = 256;
/// Most redirects the default client follows (each to https, or http on loopback).
pub(crate) const MAX_REDIRECTS: usize = 3;

/// The bounds on every request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) timeout: Duration,
    pub(crate) max_bytes: usize,
}

/// A response's caching directives (RFC 9111 §5.2.2), as far as keyrot honours them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CacheControl {
    pub(crate) max_age: Option<u64>,
    pub(crate) no_cache: bool,
    pub(crate) no_store: bool,
    /// The `Age` header (seconds the response already spent in caches).
    pub(crate) age: u64,
}

impl CacheControl {
    pub(crate) fn from_headers(headers: &HeaderMap) -> Self {
        let mut cc = CacheControl::default();
        for value in headers.get_all(CACHE_CONTROL) {
            let Ok(value) = value.to_str() else { continue };
            for directive in value.split(',') {
                let (name, arg) = match directive.split_once('=') {
                    Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                    None => (directive.trim(), None),
                };
                if name.eq_ignore_ascii_case("max-age") {
                    // An invalid max-age makes the response stale (RFC 9111 §4.2.1).
                    let secs = arg.and_then(|a| a.parse::<u64>().ok()).unwrap_or(0);
                    cc.max_age = Some(cc.max_age.map_or(secs, |m| m.min(secs)));
                } else if name.eq_ignore_ascii_case("no-cache") {
                    cc.no_cache = true;
                } else if name.eq_ignore_ascii_case("no-store") {
                    cc.no_store = true;
                }
            }
        }
        cc.age = headers
            .get(AGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        cc
    }

    /// How long the response may be used before it is refreshed: `max-age` less `Age`
    /// (or [`DEFAULT_LIFETIME`] without `max-age`; zero with `no-cache` or `no-store`),
    /// clamped to `[floor, ceiling]`.
    pub(crate) fn lifetime(&self, floor: Duration, ceiling: Duration) -> Duration {
        let raw = if self.no_cache || self.no_store {
            Duration::ZERO
        } else {
            self.max_age
                .map_or(DEFAULT_LIFETIME, |m| Duration::from_secs(m.saturating_sub(self.age)))
        };
        raw.max(floor).min(ceiling)
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

/// Parses a URL keyrot may fetch keys or metadata from: `https`, or `http` to a loopback
/// address (tests, a sidecar).
pub(crate) fn parse_url(s: &str, what: Document) -> Result<Url, JwksError> {
    let url = Url::parse(s).map_err(|e| JwksError::InvalidUrl {
        what,
        source: Box::new(e),
    })?;
    if allowed(&url) {
        Ok(url)
    } else {
        Err(JwksError::InsecureUrl { what })
    }
}

/// `https`, or `http` to a loopback address.
pub(crate) fn allowed(url: &Url) -> bool {
    match url.scheme() {
        "https" => true,
        "http" => match url.host_str() {
            Some(h) if h.eq_ignore_ascii_case("localhost") => true,
            Some(h) => h
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .is_ok_and(|ip| ip.is_loopback()),
            None => false,
        },
        _ => false,
    }
}

/// The client used when the caller passes none: rustls, redirects only to allowed URLs.
pub(crate) fn default_client() -> Result<Client, JwksError> {
    let policy = reqwest::redirect::Policy::custom(|attempt| {
        if attempt.previous().len() > MAX_REDIRECTS || !allowed(attempt.url()) {
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
    tokio::time::timeout(limits.timeout, get_unbounded(client, url, etag, limits.max_bytes, what))
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
    max: usize,
    what: Document,
) -> Result<Response, JwksError> {
    let failed = |source| JwksError::Request { what, source };
    let mut request = client
        .get(url.clone())
        .header(ACCEPT, "application/jwk-set+json, application/json");
    if let Some(tag) = etag {
        request = request.header(IF_NONE_MATCH, tag);
    }
    let mut response = request.send().await.map_err(failed)?;
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
    use reqwest::header::HeaderValue;

    fn cc(values: &[&str]) -> CacheControl {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(CACHE_CONTROL, HeaderValue::from_str(v).expect("value"));
        }
        CacheControl::from_headers(&h)
    }

    #[test]
    fn directives_and_clamping() {
        let (floor, ceiling) = (Duration::from_secs(30), Duration::from_secs(3600));
        assert_eq!(
            cc(&["public, max-age=300"]).lifetime(floor, ceiling),
            Duration::from_secs(300)
        );
        assert_eq!(
            cc(&["max-age=\"120\""]).lifetime(floor, ceiling),
            Duration::from_secs(120)
        );
        assert_eq!(cc(&["max-age=5"]).lifetime(floor, ceiling), floor);
        assert_eq!(cc(&["max-age=86400"]).lifetime(floor, ceiling), ceiling);
        assert_eq!(
            cc(&["max-age=300", "MAX-AGE=100"]).lifetime(floor, ceiling),
            Duration::from_secs(100)
        );
        assert_eq!(cc(&["max-age=soon"]).lifetime(floor, ceiling), floor);
        assert_eq!(cc(&["max-age=300, no-cache"]).lifetime(floor, ceiling), floor);
        assert_eq!(cc(&["no-store"]).lifetime(floor, ceiling), floor);
        assert_eq!(cc(&[]).lifetime(floor, ceiling), DEFAULT_LIFETIME);
        let mut h = HeaderMap::new();
        h.insert(CACHE_CONTROL, HeaderValue::from_static("max-age=400"));
        h.insert(AGE, HeaderValue::from_static("100"));
        assert_eq!(
            CacheControl::from_headers(&h).lifetime(floor, ceiling),
            Duration::from_secs(300)
        );
    }

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
}
