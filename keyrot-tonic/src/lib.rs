//! # keyrot-tonic
//!
//! [keyrot](keyrot_core) for tonic 0.14 gRPC servers: a tower [`Layer`] that verifies the
//! bearer token of every call from its `authorization` metadata, refuses the call with the
//! gRPC status that says why, and puts the verified token in the request extensions, where
//! a handler reads it typed ([`RequestClaims::claims`]).
//!
//! The third adapter next to keyrot-axum and keyrot-actix, as thin as they are: the
//! verification and every refusal reason come from [`keyrot_http`] ([`Guard`]), so any
//! verifier works — a [`keyrot_core::KeyRing`], a [`keyrot_core::PublicKeyRing`], the
//! remote verifier (`keyrot_jwks::JwksVerifier`), with or without the verified-token
//! cache ([`BearerAuth::with_verifier`]), or a [`TenantAuth`] picking the ring per token.
//!
//! | refusal ([`AuthRejection`]) | HTTP | gRPC status |
//! |---|---|---|
//! | no token, malformed, expired, badly signed, unknown key | 401 | `UNAUTHENTICATED` (16) |
//! | valid, without a scope the method requires | 403 | `PERMISSION_DENIED` (7) |
//! | the verifier's keys are unavailable | 503 | `UNAVAILABLE` (14) |
//!
//! The status message is the HTTP adapters' `error_description`
//! ([`AuthRejection::description`]); it never holds token contents. A handler that reads
//! claims behind no layer gets `INTERNAL` (fail closed).
//!
//! ```no_run
//! use keyrot_core::{PublicKeyRing, StandardClaims};
//! use keyrot_tonic::{BearerAuth, GrpcAuth, GrpcAuthLayer, RequestClaims as _};
//! use std::sync::Arc;
//!
//! // In a handler: `request.claims::<StandardClaims>()?.sub`.
//! fn subject<T>(request: &tonic::Request<T>) -> Result<String, tonic::Status> {
//!     Ok(request.claims::<StandardClaims>()?.sub.unwrap_or_default())
//! }
//!
//! fn layer(verifier: PublicKeyRing) -> GrpcAuthLayer {
//!     GrpcAuthLayer::new(
//!         GrpcAuth::new(BearerAuth::with_verifier(Arc::new(verifier)))
//!             // Health checks need no token (one that is sent is still verified).
//!             .allow_anonymous_service("grpc.health.v1.Health")
//!             .require_scopes("/billing.v1.Invoices/Void", ["invoices.admin"]),
//!     )
//! }
//! // tonic::transport::Server::builder().layer(layer(verifier)).add_service(…)
//! ```

use keyrot_core::Verified;
use keyrot_http::{Admission, Guard, HeaderSource, Stored, WithPath, each_header_value};
use serde::de::DeserializeOwned;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::Status;
use tower::{Layer, Service};

pub use keyrot_core::TokenVerifier;
pub use keyrot_http::{Anonymous, AuthError, AuthRejection, BearerAuth, RequiredScopes, TenantAuth};

/// What a method asks of its callers besides what the guard checks.
#[derive(Debug, Clone)]
enum Rule {
    /// Callers without a token are let through as [`Anonymous`].
    Anonymous,
    /// The verified token must grant every one of these scopes.
    Scopes(RequiredScopes),
}

/// Which calls need which token: a [`Guard`] (a [`BearerAuth`] by default) for every
/// call, and per method or per service the callers it also lets through without a token
/// and the scopes it requires. Methods are named by their gRPC path
/// (`/package.Service/Method`), services by their full name (`package.Service`).
#[derive(Debug, Clone)]
pub struct GrpcAuth<G = BearerAuth> {
    guard: G,
    /// Exact method paths, and service prefixes (`/package.Service/`), in the order given.
    rules: Vec<(String, Rule)>,
}

impl<G: Guard> GrpcAuth<G> {
    /// Every call needs a token `guard` admits.
    pub fn new(guard: G) -> Self {
        Self {
            guard,
            rules: Vec::new(),
        }
    }

    /// Calls to `method` (`/package.Service/Method`) may come without a token; a token
    /// that is sent is verified all the same (an invalid one is `UNAUTHENTICATED`).
    pub fn allow_anonymous(mut self, method: impl Into<String>) -> Self {
        self.rules.push((method.into(), Rule::Anonymous));
        self
    }

    /// [`GrpcAuth::allow_anonymous`] for every method of `service` (`package.Service`),
    /// such as the standard health service `grpc.health.v1.Health`.
    pub fn allow_anonymous_service(mut self, service: &str) -> Self {
        self.rules.push((format!("/{service}/"), Rule::Anonymous));
        self
    }

    /// Calls to `method` (`/package.Service/Method`) need a token granting every one of
    /// `scopes` (its `scope` claim); a token without one is `PERMISSION_DENIED`. This wins
    /// over an anonymous service: a call without a token is `UNAUTHENTICATED`. Paths are
    /// compared exactly, as tonic routes them.
    pub fn require_scopes<I, S>(mut self, method: impl Into<String>, scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.rules
            .push((method.into(), Rule::Scopes(RequiredScopes::new(scopes))));
        self
    }

    /// The rules for `path`: the exact method's, then its service's.
    fn rules_for<'a>(&'a self, path: &'a str) -> impl Iterator<Item = &'a Rule> + 'a {
        self.rules
            .iter()
            .filter(move |(p, _)| p == path || (p.ends_with('/') && path.starts_with(p.as_str())))
            .map(|(_, rule)| rule)
    }

    /// Whether the call to `path` with `headers` may go on, and what to store in it.
    async fn admit(&self, path: &str, headers: &dyn HeaderSource) -> Result<Admission, AuthError> {
        // A method that requires scopes never admits anonymous callers, even when its
        // service allows them.
        let anonymous = self.rules_for(path).any(|r| matches!(r, Rule::Anonymous))
            && !self.rules_for(path).any(|r| matches!(r, Rule::Scopes(_)));
        let admission = match self.guard.admit(headers, Stored::Nothing).await {
            Err(AuthError::Rejected(AuthRejection::MissingToken)) if anonymous => return Ok(Admission::Anonymous),
            other => other?,
        };
        if let Admission::Verified(token) = &admission {
            for rule in self.rules_for(path) {
                if let Rule::Scopes(scopes) = rule {
                    scopes.check(Some(token))?;
                }
            }
        }
        Ok(admission)
    }
}

/// The gRPC status of a refusal: `UNAUTHENTICATED`, `PERMISSION_DENIED`, `UNAVAILABLE`,
/// or `INTERNAL` when claims are read behind no [`GrpcAuthLayer`]. The message is the
/// `error_description` the HTTP adapters answer with.
pub fn status_of(error: &AuthError) -> Status {
    match error {
        AuthError::Rejected(r @ (AuthRejection::MissingToken | AuthRejection::InvalidToken(_))) => {
            Status::unauthenticated(r.description())
        }
        AuthError::Rejected(r @ AuthRejection::InsufficientScope) => Status::permission_denied(r.description()),
        AuthError::Rejected(r @ AuthRejection::KeysUnavailable) => Status::unavailable(r.description()),
        AuthError::Rejected(r) => Status::unauthenticated(r.description()),
        AuthError::MissingMiddleware => {
            tracing::error!("keyrot-tonic: claims read on a call that no GrpcAuthLayer verified");
            Status::internal("the server is misconfigured: token verification is not installed for this method")
        }
        _ => Status::internal("the call could not be authorized"),
    }
}

/// The request's headers (gRPC metadata) as a keyrot [`HeaderSource`].
#[derive(Debug, Clone, Copy)]
pub struct Headers<'a>(pub &'a http::HeaderMap);

impl HeaderSource for Headers<'_> {
    fn for_each_value<'s>(&'s self, name: &str, f: &mut dyn FnMut(&'s [u8])) {
        each_header_value(self.0.get_all(name), f);
    }
}

/// The verified token a [`GrpcAuthLayer`] stored, read in a handler.
pub trait RequestClaims {
    /// The verified token; `UNAUTHENTICATED` for an anonymous caller, `INTERNAL` when no
    /// layer verified the call.
    fn verified_token(&self) -> Result<&Verified, Status>;

    /// The verified claims deserialised into `C` (claims that do not fit `C` are
    /// `UNAUTHENTICATED`, as the HTTP adapters answer `401`).
    fn claims<C: DeserializeOwned>(&self) -> Result<C, Status>;

    /// The claims of a method that serves anonymous callers too: `None` for one.
    fn optional_claims<C: DeserializeOwned>(&self) -> Result<Option<C>, Status>;
}

impl<T> RequestClaims for tonic::Request<T> {
    fn verified_token(&self) -> Result<&Verified, Status> {
        stored(self.extensions()).token().map_err(|e| status_of(&e))
    }

    fn claims<C: DeserializeOwned>(&self) -> Result<C, Status> {
        stored(self.extensions()).claims().map_err(|e| status_of(&e))
    }

    fn optional_claims<C: DeserializeOwned>(&self) -> Result<Option<C>, Status> {
        stored(self.extensions()).optional_claims().map_err(|e| status_of(&e))
    }
}

fn stored(extensions: &http::Extensions) -> Stored<'_> {
    Stored::new(extensions.get::<Verified>(), extensions.get::<Anonymous>())
}

/// A tower [`Layer`] for `tonic::transport::Server::builder().layer(…)` (or any tower
/// stack of `http::Request`s) running a [`GrpcAuth`] before every call.
#[derive(Debug, Clone)]
pub struct GrpcAuthLayer<G = BearerAuth>(Arc<GrpcAuth<G>>);

impl<G: Guard> GrpcAuthLayer<G> {
    /// The layer for `auth`.
    pub fn new(auth: GrpcAuth<G>) -> Self {
        Self(Arc::new(auth))
    }
}

impl<S, G: Guard> Layer<S> for GrpcAuthLayer<G> {
    type Service = GrpcAuthService<S, G>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcAuthService {
            inner,
            auth: Arc::clone(&self.0),
        }
    }
}

/// The service [`GrpcAuthLayer`] wraps around a gRPC server's routes.
#[derive(Debug, Clone)]
pub struct GrpcAuthService<S, G = BearerAuth> {
    inner: S,
    auth: Arc<GrpcAuth<G>>,
}

impl<S, G, B, R> Service<http::Request<B>> for GrpcAuthService<S, G>
where
    S: Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    G: Guard,
    B: Send + 'static,
    R: Default,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The clone takes the place of the service that was polled ready (tower's rule).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = Arc::clone(&self.auth);
        Box::pin(async move {
            let headers = Headers(request.headers());
            // The path too, for a guard that picks a tenant's ring by it.
            let path = request.uri().path();
            let admitted = auth.admit(path, &WithPath::new(&headers, path)).await;
            match admitted {
                Ok(Admission::Verified(token)) => {
                    request.extensions_mut().insert(token);
                }
                Ok(Admission::Anonymous) => {
                    request.extensions_mut().insert(Anonymous);
                }
                Ok(_) => {}
                Err(e) => return Ok(status_of(&e).into_http()),
            }
            inner.call(request).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyrot_core::TokenError;

    fn verifier_down() -> BearerAuth {
        #[derive(Debug)]
        struct Down;
        #[keyrot_core::async_trait]
        impl TokenVerifier for Down {
            async fn verify(&self, _: &str) -> Result<Verified, TokenError> {
                Err(TokenError::KeysUnavailable)
            }
        }
        BearerAuth::with_verifier(Arc::new(Down))
    }

    #[test]
    fn rules_match_the_method_or_its_whole_service_only() {
        let auth = GrpcAuth::new(verifier_down())
            .allow_anonymous_service("grpc.health.v1.Health")
            .require_scopes("/billing.v1.Invoices/Void", ["invoices.admin"]);
        assert_eq!(auth.rules_for("/grpc.health.v1.Health/Check").count(), 1);
        assert_eq!(auth.rules_for("/grpc.health.v1.Health/Watch").count(), 1);
        assert_eq!(
            auth.rules_for("/grpc.health.v1.HealthX/Check").count(),
            0,
            "another service"
        );
        assert_eq!(auth.rules_for("/grpc.health.v1/Check").count(), 0);
        assert_eq!(auth.rules_for("/billing.v1.Invoices/Void").count(), 1);
        assert_eq!(
            auth.rules_for("/billing.v1.Invoices/VoidAll").count(),
            0,
            "another method"
        );
    }

    #[tokio::test]
    async fn anonymous_methods_admit_no_token_but_verify_one_that_is_sent() {
        let auth = GrpcAuth::new(verifier_down()).allow_anonymous("/a.B/Open");
        let none = http::HeaderMap::new();
        let mut some = http::HeaderMap::new();
        some.insert("authorization", http::HeaderValue::from_static("Bearer a.b.c"));
        assert!(matches!(
            auth.admit("/a.B/Open", &Headers(&none)).await,
            Ok(Admission::Anonymous)
        ));
        let down = auth.admit("/a.B/Open", &Headers(&some)).await.expect_err("verified");
        assert_eq!(status_of(&down).code(), tonic::Code::Unavailable);
        let closed = auth
            .admit("/a.B/Closed", &Headers(&none))
            .await
            .expect_err("a token is needed");
        assert_eq!(status_of(&closed).code(), tonic::Code::Unauthenticated);
    }

    #[tokio::test]
    async fn a_method_requiring_scopes_admits_no_anonymous_caller() {
        let auth = GrpcAuth::new(verifier_down())
            .allow_anonymous_service("a.B")
            .require_scopes("/a.B/Admin", ["admin"]);
        let none = http::HeaderMap::new();
        assert!(matches!(
            auth.admit("/a.B/Open", &Headers(&none)).await,
            Ok(Admission::Anonymous)
        ));
        let admin = auth
            .admit("/a.B/Admin", &Headers(&none))
            .await
            .expect_err("scopes need a token");
        assert_eq!(status_of(&admin).code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn statuses_carry_the_http_descriptions() {
        let cases = [
            (
                AuthRejection::MissingToken,
                tonic::Code::Unauthenticated,
                "a bearer token is required",
            ),
            (
                AuthRejection::InvalidToken(Some(TokenError::Expired)),
                tonic::Code::Unauthenticated,
                "the access token is not valid",
            ),
            (
                AuthRejection::InsufficientScope,
                tonic::Code::PermissionDenied,
                "the access token does not grant access to this resource",
            ),
            (
                AuthRejection::KeysUnavailable,
                tonic::Code::Unavailable,
                "the token cannot be checked now; retry later",
            ),
        ];
        for (rejection, code, message) in cases {
            let status = status_of(&AuthError::Rejected(rejection));
            assert_eq!((status.code(), status.message()), (code, message));
        }
        assert_eq!(status_of(&AuthError::MissingMiddleware).code(), tonic::Code::Internal);
    }
}
