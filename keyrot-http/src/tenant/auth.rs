//! The tenant middleware: picks the ring, checks that the route admits that ring's
//! tokens, verifies with the ring's rules, and records the ring on the [`Verified`].

use super::{PATH_HEADER, PathPattern, ROUTE_HEADER, RingSelector, first_value};
use crate::HeaderSource;
use crate::bearer::AuthRejection;
use crate::middleware::{Admission, AuthError, Guard, Stored};
use crate::token_source::{BearerToken, bearer_token};
use keyrot_core::RingName;
use keyrot_core::{IssuerOf, RingManager};
use keyrot_core::{TokenError, Validation, Verified};
use std::sync::Arc;

/// Each ring's token validation rules (its `iss`, `aud`, leeway, required type).
type RulesOf = Arc<dyn Fn(&RingName) -> Validation + Send + Sync>;

/// Verifies the bearer token with the ring the [`RingSelector`] picks, served by the
/// [`RingManager`] (loaded on first use, then from memory), and records that ring on the
/// [`Verified`] it admits ([`Verified::ring`]).
///
/// **A route that names a tenant admits only that tenant's tokens.** A route names a
/// tenant when the pattern it matched (as the adapters tell it: axum's `MatchedPath`,
/// actix-web's `match_pattern`) has a `{ring}` segment, or when its path falls under a
/// pattern given to [`TenantAuth::bind_path`] (a path selector's own pattern is one).
/// There the ring the selector picks (from `iss` or the host) and the ring the path
/// names must be the same, byte for byte (a percent-encoded or otherwise different
/// spelling is refused); if not, `401 invalid_token`, before any storage access. It is
/// `401` and not `403` because the token is not valid *for this tenant* (like a token of
/// another audience), and because the path selector answers `401` to the same request
/// (another ring's keys do not verify it): the answer does not depend on the selector.
///
/// **Each ring's rules:** the manager's validation by default, or
/// [`TenantAuth::with_validation`]'s rules for the ring. When each ring's issuer URL is
/// known ([`TenantAuth::with_issuer`], or the manager's
/// [`with_issuers`](keyrot_core::RingManagerBuilder::with_issuers)), a ring's tokens must also
/// carry exactly that `iss`.
///
/// A request whose ring cannot be told, or names a ring the store does not hold, is
/// `401 invalid_token`; an unknown name costs at most the manager's one look-up per
/// interval, and an unknown kid a refresh from the manager's budget.
#[derive(Clone)]
pub struct TenantAuth {
    manager: RingManager,
    selector: RingSelector,
    bound: Vec<PathPattern>,
    issuer: Option<IssuerOf>,
    rules: Option<RulesOf>,
}

impl std::fmt::Debug for TenantAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantAuth")
            .field("selector", &self.selector)
            .field("bound", &self.bound.iter().map(PathPattern::as_str).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl TenantAuth {
    /// Verifies with the rings of `manager`, picked by `selector`. Routes whose pattern
    /// has a `{ring}` segment admit only their ring's tokens; so do the paths of a path
    /// selector's pattern.
    pub fn new(manager: RingManager, selector: RingSelector) -> Self {
        let bound = match &selector {
            RingSelector::Path(p) => vec![p.clone()],
            _ => Vec::new(),
        };
        Self {
            manager,
            selector,
            bound,
            issuer: None,
            rules: None,
        }
    }

    /// Every path under `pattern` (starting with its part before `{ring}`) names the
    /// tenant of its `{ring}` segment, and admits only that tenant's tokens: for routes
    /// that name the tenant under another parameter name, or adapters that do not tell
    /// the matched route.
    pub fn bind_path(mut self, pattern: PathPattern) -> Self {
        self.bound.push(pattern);
        self
    }

    /// Each ring's issuer URL: a ring's tokens must carry exactly this `iss` (replaces
    /// the manager's issuers).
    pub fn with_issuer(mut self, issuer: IssuerOf) -> Self {
        self.issuer = Some(issuer);
        self
    }

    /// Each ring's validation rules (its `iss`, `aud`, …), instead of the manager's one
    /// [`Validation`] for all rings.
    pub fn with_validation(mut self, rules: Arc<dyn Fn(&RingName) -> Validation + Send + Sync>) -> Self {
        self.rules = Some(rules);
        self
    }

    /// Whether every tenant the request's route or path names is `ring`.
    fn route_admits(&self, headers: &dyn HeaderSource, ring: &RingName) -> bool {
        let path = first_value(headers, PATH_HEADER).unwrap_or_default();
        let by_route = first_value(headers, ROUTE_HEADER).and_then(|route| {
            let index = route.split('/').position(is_ring_parameter)?;
            Some(path.split('/').nth(index))
        });
        if by_route.is_some_and(|named| named != Some(ring.as_str())) {
            return false;
        }
        self.bound.iter().all(|p| match path.strip_prefix(p.prefix.as_str()) {
            Some(rest) => rest.split('/').next() == Some(ring.as_str()),
            None => true,
        })
    }

    fn issuer_of(&self, ring: &RingName) -> Option<String> {
        match &self.issuer {
            Some(f) => Some(f(ring)),
            None => self.manager.issuer(ring),
        }
    }

    /// The verified token (naming its ring), or why not.
    pub async fn authenticate(&self, headers: &dyn HeaderSource) -> Result<Verified, AuthRejection> {
        let token = match bearer_token(headers) {
            BearerToken::Present(t) => t,
            BearerToken::Absent => return Err(AuthRejection::MissingToken),
            BearerToken::Malformed => return Err(AuthRejection::InvalidToken(None)),
        };
        let invalid = |e| AuthRejection::InvalidToken(Some(e));
        let ring = self
            .selector
            .select(headers, token)
            .ok_or(invalid(TokenError::UnknownKid))?;
        if !self.route_admits(headers, &ring) {
            return Err(invalid(TokenError::InvalidIssuer));
        }
        let keyring = match self.manager.existing_keyring(&ring).await {
            Ok(Some(k)) => k,
            Ok(None) | Err(_) => return Err(invalid(TokenError::UnknownKid)),
        };
        let rules = self.rules.as_ref().map(|f| f(&ring));
        let rules = rules.as_ref().unwrap_or_else(|| keyring.validation());
        let verified = self
            .manager
            .verify_within_budget(&keyring, token, rules)
            .await
            .map_err(invalid)?;
        if let Some(issuer) = self.issuer_of(&ring)
            && verified.claims.get("iss").and_then(|v| v.as_str()) != Some(issuer.as_str())
        {
            return Err(invalid(TokenError::InvalidIssuer));
        }
        Ok(verified.with_ring(ring))
    }
}

/// A route pattern's segment that is the `{ring}` parameter (`{ring:regex}` in actix-web).
fn is_ring_parameter(segment: &str) -> bool {
    segment == "{ring}" || (segment.starts_with("{ring:") && segment.ends_with('}'))
}

impl Guard for TenantAuth {
    async fn admit(&self, headers: &dyn HeaderSource, _: Stored<'_>) -> Result<Admission, AuthError> {
        Ok(Admission::Verified(self.authenticate(headers).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::WithPath;

    struct NoHeaders;

    impl HeaderSource for NoHeaders {
        fn for_each_value<'s>(&'s self, _: &str, _: &mut dyn FnMut(&'s [u8])) {}
    }

    fn manager() -> RingManager {
        let storage = Arc::new(keyrot_core::MemoryStorage::new());
        let lock = Arc::new(keyrot_core::MemoryLock::default());
        let key = keyrot_core::MasterKey::generate("mk").expect("key");
        let sealer = Arc::new(keyrot_core::MasterKeySealer::new(key, []).expect("sealer"));
        RingManager::builder(storage, lock, sealer).build()
    }

    #[test]
    fn a_route_naming_a_tenant_admits_only_that_tenant() {
        let by_issuer = RingSelector::Issuer(Arc::new(|iss: &str| RingName::new(iss).ok()));
        let auth = TenantAuth::new(manager(), by_issuer).bind_path(PathPattern::new("/orgs/{ring}").expect("pattern"));
        let a = RingName::new("a").expect("ring");
        let admits =
            |path: &str, route: Option<&str>| auth.route_admits(&WithPath::new(&NoHeaders, path).with_route(route), &a);
        assert!(admits("/t/a/x", Some("/t/{ring}/x")));
        assert!(!admits("/t/b/x", Some("/t/{ring}/x")), "another tenant's route");
        assert!(!admits("/t/%61/x", Some("/t/{ring}/x")), "another spelling");
        assert!(!admits("/t/b/x", Some("/t/{ring:[a-z]+}/x")));
        assert!(admits("/api/x", Some("/api/{id}")), "a route that names no tenant");
        assert!(admits("/orgs/a/items/1", None));
        assert!(!admits("/orgs/b/items/1", None), "a bound path");
        assert!(!admits("/orgs//items", None));
        assert!(admits("/other/b", None), "outside the bound pattern");
    }
}
