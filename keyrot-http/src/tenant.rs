//! Many tenants behind one server: each tenant's JWKS and discovery document at a path
//! naming its ring, and a middleware that picks the ring of a request (from the token's
//! `iss`, the path or the host) before it verifies the token with that ring, and admits
//! on a route that names a tenant only that tenant's tokens ([`auth`]).

mod auth;

pub use auth::TenantAuth;
pub use keyrot_core::IssuerOf;

use super::jwks_route::{IssuerMetadata, discovery_answer, discovery_response, jwks_answer, jwks_response};
use super::{HeaderSource, HttpRequest, HttpResponse};
use keyrot_core::DEFAULT_MAX_TOKEN_BYTES;
use keyrot_core::RingName;
use keyrot_core::{Published, RingManager};
use std::sync::Arc;

/// The default path of a tenant's JWKS.
pub const TENANT_JWKS_PATTERN: &str = "/t/{ring}/.well-known/jwks.json";
/// The default path of a tenant's discovery document: RFC 8414 metadata, where RFC 8414
/// §3.1 puts it for the issuer `https://HOST/t/RING` (the well-known segment before the
/// issuer's path). A tenant offers no authorization endpoint, so it has no OpenID Connect
/// document.
pub const TENANT_DISCOVERY_PATTERN: &str = "/.well-known/oauth-authorization-server/t/{ring}";
/// The pseudo-header the adapters' middleware adds with the request path, so that a
/// [`Guard`](super::Guard) can read it (`:` never starts a real header name).
pub const PATH_HEADER: &str = ":path";
/// The pseudo-header the adapters' middleware adds with the route the request matched
/// (its pattern, e.g. `/t/{ring}/orders`), when the framework tells it.
pub(crate) const ROUTE_HEADER: &str = ":route";

/// A path pattern with one `{ring}` segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    pattern: String,
    prefix: String,
    suffix: String,
}

/// A path pattern that is not `/…{ring}…` with exactly one `{ring}` making a whole segment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "a tenant path pattern starts with / and has exactly one {{ring}} segment, e.g. /t/{{ring}}/.well-known/jwks.json"
)]
pub struct InvalidPattern;

impl PathPattern {
    /// Parses `pattern`.
    pub fn new(pattern: &str) -> Result<Self, InvalidPattern> {
        let (prefix, suffix) = pattern.split_once("{ring}").ok_or(InvalidPattern)?;
        let whole_segment = prefix.ends_with('/') && (suffix.is_empty() || suffix.starts_with('/'));
        if !pattern.starts_with('/') || !whole_segment || suffix.contains('\u{7b}') || prefix.contains('\u{7b}') {
            return Err(InvalidPattern);
        }
        Ok(Self {
            pattern: pattern.to_owned(),
            prefix: prefix.to_owned(),
            suffix: suffix.to_owned(),
        })
    }

    /// The pattern, as given (it is also an axum and actix-web route).
    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// The ring a path names, if it matches.
    pub fn ring(&self, path: &str) -> Option<RingName> {
        let name = path.strip_prefix(&self.prefix)?.strip_suffix(&self.suffix)?;
        RingName::new(name).ok()
    }

    /// The path of `ring`.
    pub fn path(&self, ring: &RingName) -> String {
        format!("{}{}{}", self.prefix, ring.as_str(), self.suffix)
    }
}

/// Headers plus the request path as [`PATH_HEADER`] (and the matched route, when the
/// framework tells it): what the adapters give a [`Guard`](super::Guard).
pub struct WithPath<'a> {
    headers: &'a dyn HeaderSource,
    path: &'a str,
    route: Option<&'a str>,
}

impl<'a> WithPath<'a> {
    /// `headers`, answering [`PATH_HEADER`] with `path`.
    pub fn new(headers: &'a dyn HeaderSource, path: &'a str) -> Self {
        Self {
            headers,
            path,
            route: None,
        }
    }

    /// The pattern of the route the request matched (axum's `MatchedPath`, actix-web's
    /// `match_pattern`): a route with a `{ring}` segment names a tenant, and
    /// [`TenantAuth`] admits there only that tenant's tokens.
    pub fn with_route(mut self, route: Option<&'a str>) -> Self {
        self.route = route;
        self
    }
}

impl HeaderSource for WithPath<'_> {
    fn for_each_value<'s>(&'s self, name: &str, f: &mut dyn FnMut(&'s [u8])) {
        if name == PATH_HEADER {
            f(self.path.as_bytes());
        } else if name == ROUTE_HEADER {
            if let Some(route) = self.route {
                f(route.as_bytes());
            }
        } else {
            self.headers.for_each_value(name, f);
        }
    }
}

/// Maps a token's issuer or a request's host to a ring.
pub type RingLookup = Arc<dyn Fn(&str) -> Option<RingName> + Send + Sync>;

/// Where the middleware finds a request's ring.
#[derive(Clone)]
#[non_exhaustive]
pub enum RingSelector {
    /// From the token's `iss` claim (read before verification, only to pick the ring;
    /// the ring's key then has to verify the token).
    Issuer(RingLookup),
    /// From the request path.
    Path(PathPattern),
    /// From the `Host` header (without its port).
    Host(RingLookup),
}

impl std::fmt::Debug for RingSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RingSelector::Issuer(_) => f.write_str("Issuer(..)"),
            RingSelector::Path(p) => f.debug_tuple("Path").field(&p.as_str()).finish(),
            RingSelector::Host(_) => f.write_str("Host(..)"),
        }
    }
}

/// The `iss` of a token, read without verifying it.
fn unverified_issuer(token: &str) -> Option<String> {
    use base64::Engine as _;
    #[derive(serde::Deserialize)]
    struct Iss {
        iss: Option<String>,
    }
    if token.len() > DEFAULT_MAX_TOKEN_BYTES {
        return None;
    }
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice::<Iss>(&bytes).ok()?.iss
}

fn first_value<'h>(headers: &'h dyn HeaderSource, name: &str) -> Option<&'h str> {
    let mut found = None;
    headers.for_each_value(name, &mut |v| {
        if found.is_none() {
            found = std::str::from_utf8(v).ok();
        }
    });
    found
}

impl RingSelector {
    fn select(&self, headers: &dyn HeaderSource, token: &str) -> Option<RingName> {
        match self {
            RingSelector::Issuer(lookup) => lookup(&unverified_issuer(token)?),
            RingSelector::Path(p) => p.ring(first_value(headers, PATH_HEADER)?),
            RingSelector::Host(lookup) => {
                let host = first_value(headers, "host")?;
                let name = host.rsplit_once(':').map_or(host, |(h, _)| h);
                lookup(name)
            }
        }
    }
}

/// Serves each tenant's JWKS and discovery document from the [`RingManager`]'s rings.
#[derive(Clone)]
pub struct TenantEndpoints {
    manager: RingManager,
    jwks: PathPattern,
    discovery: PathPattern,
    issuer: Option<IssuerOf>,
}

impl std::fmt::Debug for TenantEndpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantEndpoints")
            .field("jwks", &self.jwks.as_str())
            .field("discovery", &self.discovery.as_str())
            .finish_non_exhaustive()
    }
}

impl TenantEndpoints {
    /// The JWKS at [`TENANT_JWKS_PATTERN`]; no discovery document until
    /// [`TenantEndpoints::with_issuer`].
    pub fn new(manager: RingManager) -> Self {
        let parse = |p| PathPattern::new(p).unwrap_or_else(|_| unreachable!("the default patterns are valid"));
        Self {
            manager,
            jwks: parse(TENANT_JWKS_PATTERN),
            discovery: parse(TENANT_DISCOVERY_PATTERN),
            issuer: None,
        }
    }

    /// Serves the JWKS at `pattern` instead.
    pub fn with_jwks_pattern(mut self, pattern: &str) -> Result<Self, InvalidPattern> {
        self.jwks = PathPattern::new(pattern)?;
        Ok(self)
    }

    /// Serves the discovery document at `pattern` instead.
    pub fn with_discovery_pattern(mut self, pattern: &str) -> Result<Self, InvalidPattern> {
        self.discovery = PathPattern::new(pattern)?;
        Ok(self)
    }

    /// Serves each ring's discovery document (RFC 8414 metadata: `issuer`, `jwks_uri`,
    /// empty `response_types_supported` and `grant_types_supported`), for the issuer URL
    /// `issuer` gives it (its `jwks_uri` is that URL + `/.well-known/jwks.json`).
    /// Without it, the manager's issuers ([`RingManagerBuilder::with_issuers`](keyrot_core::RingManagerBuilder::with_issuers)) are used.
    pub fn with_issuer(mut self, issuer: IssuerOf) -> Self {
        self.issuer = Some(issuer);
        self
    }

    fn issuer_of(&self, ring: &RingName) -> Option<String> {
        match &self.issuer {
            Some(f) => Some(f(ring)),
            None => self.manager.issuer(ring),
        }
    }

    fn serves_discovery(&self) -> bool {
        self.issuer.is_some() || self.manager.has_issuers()
    }

    /// The JWKS pattern (the route to mount).
    pub fn jwks_pattern(&self) -> &PathPattern {
        &self.jwks
    }

    /// The discovery pattern (the route to mount), if a discovery document is served.
    pub fn discovery_pattern(&self) -> Option<&PathPattern> {
        self.serves_discovery().then_some(&self.discovery)
    }

    /// Every route an adapter mounts for these endpoints: the JWKS pattern, then the
    /// discovery pattern when a discovery document is served.
    pub fn route_patterns(&self) -> impl Iterator<Item = &str> {
        std::iter::once(&self.jwks)
            .chain(self.discovery_pattern())
            .map(PathPattern::as_str)
    }

    /// What the ring's routes serve: its snapshot if it is loaded, else its published
    /// keys (read without opening any sealed key); `404` for a ring the store does not
    /// hold (an unknown name costs at most the manager's one look-up per interval).
    async fn published(&self, ring: &RingName) -> Result<Published, HttpResponse> {
        match self.manager.published(ring).await {
            Ok(Some(p)) => Ok(p),
            Ok(None) => Err(HttpResponse::error(404, "not_found", "no such ring")),
            Err(_) => Err(HttpResponse::error(503, "unavailable", "the ring could not be loaded")),
        }
    }

    /// Answers a request for `path`: the tenant's JWKS or discovery document, `404` for
    /// a ring the store does not hold; `None` when `path` is neither pattern. Neither
    /// ever unseals a key: a ring that is not loaded is served from its published keys.
    pub async fn respond(&self, path: &str, req: &HttpRequest<'_>) -> Option<HttpResponse> {
        if let Some(ring) = self.jwks.ring(path) {
            return Some(match self.published(&ring).await {
                Ok(Published::Loaded(k)) => jwks_response(&k, req),
                Ok(Published::Public(v)) => jwks_answer(&v.jwks, &ring, self.manager.now(), req),
                Err(r) => r,
            });
        }
        let ring = self.discovery.ring(path)?;
        let metadata = IssuerMetadata::new(self.issuer_of(&ring)?);
        Some(match self.published(&ring).await {
            Ok(Published::Loaded(k)) => discovery_response(&k, &metadata, req),
            Ok(Published::Public(v)) => discovery_answer(&v.jwks, &metadata, self.manager.now(), req),
            Err(r) => r,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_name_one_whole_segment() {
        let p = PathPattern::new(TENANT_JWKS_PATTERN).expect("default");
        assert_eq!(
            p.ring("/t/acme/.well-known/jwks.json").map(String::from),
            Some("acme".to_owned())
        );
        assert_eq!(
            p.ring("/t/acme/x/.well-known/jwks.json"),
            None,
            "a ring name has no slash"
        );
        assert_eq!(
            p.ring("/t/../.well-known/jwks.json").map(String::from),
            Some("..".to_owned())
        );
        assert_eq!(p.ring("/t//.well-known/jwks.json"), None);
        assert_eq!(p.ring("/.well-known/jwks.json"), None);
        let r = RingName::new("acme").expect("ring");
        assert_eq!(p.path(&r), "/t/acme/.well-known/jwks.json");
        let tail = PathPattern::new("/jwks/{ring}").expect("at the end");
        assert_eq!(tail.ring("/jwks/acme").map(String::from), Some("acme".to_owned()));
        for bad in [
            "t/{ring}",
            "/t/{ring}{ring}",
            "/t/x{ring}/",
            "/t/{ring}x",
            "/t/",
            "/{ring}/{ring}",
        ] {
            assert_eq!(PathPattern::new(bad), Err(InvalidPattern), "{bad}");
        }
    }

    #[test]
    fn the_issuer_is_read_from_the_payload_only_to_pick_a_ring() {
        let payload = keyrot_core::testing::b64::encode(br#"{"iss":"https://acme.example","sub":"x"}"#);
        assert_eq!(
            unverified_issuer(&format!("e30.{payload}.sig")).as_deref(),
            Some("https://acme.example")
        );
        assert_eq!(unverified_issuer("e30.e30.sig"), None);
        assert_eq!(unverified_issuer("garbage"), None);
        let huge = format!("e30.{}.sig", "A".repeat(DEFAULT_MAX_TOKEN_BYTES));
        assert_eq!(unverified_issuer(&huge), None, "the size cap comes first");
    }

    struct Host(&'static str);

    impl HeaderSource for Host {
        fn for_each_value<'s>(&'s self, name: &str, f: &mut dyn FnMut(&'s [u8])) {
            if name == "host" {
                f(self.0.as_bytes());
            }
        }
    }

    #[test]
    fn selectors_read_the_path_and_the_host() {
        let headers = Host("acme.example:8443");
        let with_path = WithPath::new(&headers, "/t/acme/api");
        let by_path = RingSelector::Path(PathPattern::new("/t/{ring}/api").expect("pattern"));
        assert_eq!(
            by_path.select(&with_path, "t").map(String::from),
            Some("acme".to_owned())
        );
        let by_host = RingSelector::Host(Arc::new(|h: &str| RingName::new(h.split('.').next()?).ok()));
        assert_eq!(
            by_host.select(&with_path, "t").map(String::from),
            Some("acme".to_owned())
        );
        assert_eq!(
            by_path.select(&headers, "t"),
            None,
            "no path without the adapter's pseudo-header"
        );
    }
}
