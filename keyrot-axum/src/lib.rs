//! # keyrot-axum
//!
//! [keyrot](keyrot_core) for axum 0.8: a tower [`Layer`] that verifies bearer tokens
//! against the key ring and puts the verified token in the request extensions, the
//! [`Claims`] extractor (typed, generic over your claims struct), [`require_scopes`],
//! and [`routes`] for the JWKS, the rotation endpoint and the ring status.
//!
//! This crate only converts types: every status code, header and body byte comes from
//! [`keyrot_http`], so keyrot-axum and keyrot-actix answer identically.
//!
//! - **Any verifier:** [`BearerAuth::with_verifier`] takes any `Arc<dyn TokenVerifier>`:
//!   a [`keyrot_core::PublicKeyRing`] (a shared store's published keys, no master key),
//!   the remote verifier (`keyrot_jwks::JwksVerifier`) (an issuer's JWKS over HTTPS), or your own.
//! - **Token sources:** `auth.with_token_source(TokenSource::cookie("session"))` or
//!   `TokenSource::header("x-api-token")` instead of `Authorization: Bearer`.
//! - **Anonymous users too:** `OptionalBearerAuthLayer::new(auth.optional())` with the
//!   [`MaybeClaims`] extractor: no token is `MaybeClaims(None)`, an invalid one `401`.
//! - **Encrypted and signed cookies:** [`SealedCookies`] and [`SignedCookies`] on a
//!   symmetric ring, read with [`read_cookie`], written with [`SetCookie`] (module
//!   [`cookies`]).
//! - **Discovery:** with `HttpEndpoints::builder(…).with_issuer_url("https://…")`,
//!   [`routes`] also serves `/.well-known/openid-configuration` and
//!   `/.well-known/oauth-authorization-server`.
//!
//! ```no_run
//! use axum::{Router, routing::get};
//! use keyrot_axum::{BearerAuth, BearerAuthLayer, Claims, HttpEndpoints, require_scopes};
//! use keyrot_core::{
//!     KeyRing, MasterKey, MasterKeySealer, MemoryLock, MemoryStorage, RequestContext, RingName, Rotator,
//!     StandardClaims,
//! };
//! use std::sync::Arc;
//!
//! async fn me(Claims(claims): Claims<StandardClaims>) -> String {
//!     format!("hello, {}", claims.sub.unwrap_or_default())
//! }
//!
//! async fn report() -> &'static str {
//!     "only for tokens with the reports.read scope"
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // Storage, lock and sealer: use keyrot-sqlx and a real master key in production.
//!     let storage = Arc::new(MemoryStorage::new());
//!     let sealer = Arc::new(MasterKeySealer::new(MasterKey::generate("mk1")?, [])?);
//!     let ring = RingName::new("default")?;
//!     let keyring = KeyRing::builder(ring.clone(), storage.clone(), sealer.clone()).build().await?;
//!     let rotator = Rotator::builder(ring, storage, Arc::new(MemoryLock::default()), sealer)
//!         .with_keyring(keyring.clone())
//!         .build();
//!     rotator.init(RequestContext::actor("startup")).await?;
//!
//!     // JWKS, POST /internal/rotate-keys and GET /internal/keys/status; rotation tokens
//!     // are verified against the ring, with the default scopes and rules.
//!     let endpoints = HttpEndpoints::builder(keyring.clone(), rotator).build()?;
//!
//!     let app = Router::new()
//!         .route("/api/me", get(me))
//!         .route("/api/reports", get(report).layer(require_scopes(["reports.read"])))
//!         // Verifies every route above; a token from a key another instance activated
//!         // a moment ago is accepted after one refresh.
//!         .layer(BearerAuthLayer::new(BearerAuth::new(keyring.clone())))
//!         // Mounted after the layer: the JWKS is public and the rotation routes
//!         // authorize on their own.
//!         .merge(keyrot_axum::routes(endpoints));
//!
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//!     axum::serve(listener, app).await?;
//!     Ok(())
//! }
//! ```

pub mod cookies;

use axum::Router;
use axum::body::Body;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use bytes::Bytes;
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use keyrot_core::Verified;
use keyrot_http::{
    Admission, Anonymous, Guard, HeaderSource, HttpRequest, HttpResponse, RequestBody, ResponseBody, Stored, WithPath,
    each_header_value,
};
use serde::de::DeserializeOwned;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tower::{Layer, Service};

pub use cookies::{CookieRejection, SetCookie, read_cookie};
pub use keyrot_core::TokenVerifier;
pub use keyrot_http::{
    AuthError, AuthRejection, BearerAuth, HttpEndpoints, IssuerMetadata, JWKS_PATH, OAUTH_AUTHORIZATION_SERVER_PATH,
    OPENID_CONFIGURATION_PATH, OptionalBearerAuth, ROTATE_PATH, RequiredScopes, RingSelector, RotationAuthorizer,
    STATUS_PATH, ScopeAuthorizer, ServiceTokenRule, TenantAuth, TenantEndpoints, TokenSource,
};
pub use keyrot_http::{CookieCodec, CookieError, CookieOptions, Opened, SameSite, SealedCookies, SignedCookies};

/// Verifies the bearer token with the ring a [`RingSelector`] picks (the token's `iss`,
/// the path or the host), from a [`keyrot_core::RingManager`] (see [`Guarded`]).
pub type TenantAuthLayer = Guarded<TenantAuth>;

/// An axum header map as a keyrot [`HeaderSource`].
#[derive(Debug, Clone, Copy)]
pub struct Headers<'a>(pub &'a HeaderMap);

impl HeaderSource for Headers<'_> {
    fn for_each_value<'s>(&'s self, name: &str, f: &mut dyn FnMut(&'s [u8])) {
        each_header_value(self.0.get_all(name), f);
    }
}

/// Converts a neutral response into an axum response.
pub fn into_axum_response(r: HttpResponse) -> Response {
    let body = match r.body {
        ResponseBody::Empty => Body::empty(),
        ResponseBody::Shared(bytes) => Body::from(Bytes::from_owner(bytes)),
        ResponseBody::Owned(bytes) => Body::from(bytes),
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = resp.headers_mut();
    for (name, value) in r.headers {
        match (HeaderName::from_bytes(name.as_bytes()), HeaderValue::try_from(value)) {
            (Ok(n), Ok(v)) => {
                headers.append(n, v);
            }
            _ => tracing::error!(header = name, "keyrot produced an invalid header; dropped"),
        }
    }
    resp
}

/// The response to an [`AuthError`] ([`AuthError::to_response`]): the rejection of
/// [`Claims`] and [`Token`], and what [`Guarded`] answers for a refused request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(transparent)]
pub struct AuthErrorResponse(#[from] pub AuthError);

impl IntoResponse for AuthErrorResponse {
    fn into_response(self) -> Response {
        into_axum_response(self.0.to_response())
    }
}

/// The verified claims, deserialized into `T` (e.g. [`keyrot_core::StandardClaims`] or
/// your own struct). Claims that do not fit `T` are answered `401 invalid_token`.
#[derive(Debug, Clone)]
pub struct Claims<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Claims<T> {
    type Rejection = AuthErrorResponse;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Claims(stored(parts).claims()?))
    }
}

/// The verified claims of a route that serves anonymous users too, behind
/// [`OptionalBearerAuthLayer`]: `MaybeClaims(None)` when the request sent no token,
/// `MaybeClaims(Some(claims))` for a valid one. An invalid token never gets here (the
/// layer answers `401`); claims that do not fit `T` are `401 invalid_token`; without the
/// layer in front the answer is `500` (never a silent `None`).
#[derive(Debug, Clone)]
pub struct MaybeClaims<T>(pub Option<T>);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for MaybeClaims<T> {
    type Rejection = AuthErrorResponse;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(MaybeClaims(stored(parts).optional_claims()?))
    }
}

/// What keyrot's middleware stored in the request.
fn stored(parts: &Parts) -> Stored<'_> {
    Stored::new(parts.extensions.get(), parts.extensions.get::<Anonymous>())
}

/// The whole verified token (kid, algorithm, claims as JSON).
#[derive(Debug, Clone)]
pub struct Token(pub Verified);

impl Token {
    /// `Ok` when the token grants every scope in `required`; the error is the `403`.
    pub fn require_scopes<S: AsRef<str>>(&self, required: &[S]) -> Result<(), AuthError> {
        Ok(keyrot_http::require_scopes(&self.0, required)?)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Token {
    type Rejection = AuthErrorResponse;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Token(stored(parts).token()?.clone()))
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A tower [`Layer`] that runs a keyrot [`Guard`] before the route: [`BearerAuthLayer`]
/// verifies the bearer token and puts the [`Verified`] token in the request extensions
/// (for [`Claims`] and [`Token`]); [`RequireScopes`] checks the scopes of that token.
/// A refused request is answered by the guard's [`AuthError`] (`401`/`403` with
/// `WWW-Authenticate`, `500` when no verified token is there to check).
#[derive(Debug, Clone)]
pub struct Guarded<G> {
    guard: G,
}

impl<G: Guard> Guarded<G> {
    /// A layer running `guard`.
    pub fn new(guard: G) -> Self {
        Self { guard }
    }
}

/// Verifies the bearer token of every request (see [`Guarded`]). Its [`BearerAuth`]
/// verifies against a key ring or any [`TokenVerifier`] ([`BearerAuth::with_verifier`]:
/// a [`keyrot_core::PublicKeyRing`], the remote verifier (`keyrot_jwks::JwksVerifier`), your own),
/// and reads the token from `Authorization: Bearer` or the [`TokenSource`]s configured.
pub type BearerAuthLayer = Guarded<BearerAuth>;
/// Verifies the token of a request that sends one (`401` if it is invalid) and lets a
/// request without any through as anonymous, for [`MaybeClaims`] (see [`Guarded`]).
pub type OptionalBearerAuthLayer = Guarded<OptionalBearerAuth>;
/// Lets a request through only if its verified token grants every scope (see
/// [`require_scopes`]).
pub type RequireScopes = Guarded<RequiredScopes>;

impl<S, G: Guard> Layer<S> for Guarded<G> {
    type Service = GuardedService<S, G>;

    fn layer(&self, inner: S) -> Self::Service {
        GuardedService {
            inner,
            guard: self.guard.clone(),
        }
    }
}

/// The service [`Guarded`] wraps around a route.
#[derive(Debug, Clone)]
pub struct GuardedService<S, G> {
    inner: S,
    guard: G,
}

/// The service [`BearerAuthLayer`] wraps around a route.
pub type BearerAuthService<S> = GuardedService<S, BearerAuth>;
/// The service [`RequireScopes`] wraps around a route.
pub type RequireScopesService<S> = GuardedService<S, RequiredScopes>;

impl<S, B, G> Service<axum::http::Request<B>> for GuardedService<S, G>
where
    S: Service<axum::http::Request<B>, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    G: Guard,
{
    type Response = Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: axum::http::Request<B>) -> Self::Future {
        // The clone is the one that was not polled ready; keep the ready one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let guard = self.guard.clone();
        Box::pin(async move {
            let (mut parts, body) = req.into_parts();
            let headers = Headers(&parts.headers);
            let route = parts.extensions.get::<axum::extract::MatchedPath>().map(|m| m.as_str());
            let with_path = WithPath::new(&headers, parts.uri.path()).with_route(route);
            let admitted = guard.admit(&with_path, stored(&parts)).await;
            match admitted {
                Ok(Admission::Verified(verified)) => {
                    parts.extensions.insert(verified);
                }
                Ok(Admission::Anonymous) => {
                    parts.extensions.insert(Anonymous);
                }
                Ok(Admission::Unchanged) => {}
                Err(e) => return Ok(AuthErrorResponse(e).into_response()),
            }
            inner.call(axum::http::Request::from_parts(parts, body)).await
        })
    }
}

/// A layer that lets a request through only if the token verified by
/// [`BearerAuthLayer`] grants every scope given (`403 insufficient_scope` otherwise).
/// Put it on routes inside (added before) the [`BearerAuthLayer`].
pub fn require_scopes<I, T>(scopes: I) -> RequireScopes
where
    I: IntoIterator<Item = T>,
    T: Into<String>,
{
    Guarded::new(RequiredScopes::new(scopes))
}

async fn read_body(body: Body, limit: usize) -> Result<Bytes, RequestBody<'static>> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(RequestBody::TooLarge),
        Err(_) => Err(RequestBody::Unreadable),
    }
}

async fn jwks(State(endpoints): State<HttpEndpoints>, parts: Parts) -> Response {
    let req = HttpRequest {
        method: parts.method.as_str(),
        headers: &Headers(&parts.headers),
    };
    into_axum_response(endpoints.jwks(&req))
}

async fn discovery(State(endpoints): State<HttpEndpoints>, parts: Parts) -> Response {
    let req = HttpRequest {
        method: parts.method.as_str(),
        headers: &Headers(&parts.headers),
    };
    into_axum_response(endpoints.discovery(&req))
}

async fn openid_configuration(State(endpoints): State<HttpEndpoints>, parts: Parts) -> Response {
    let req = HttpRequest {
        method: parts.method.as_str(),
        headers: &Headers(&parts.headers),
    };
    into_axum_response(endpoints.openid_configuration(&req))
}

async fn rotate(State(endpoints): State<HttpEndpoints>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let read = read_body(body, endpoints.max_body_bytes()).await;
    let body = match &read {
        Ok(bytes) => RequestBody::Complete(bytes),
        Err(e) => *e,
    };
    let req = HttpRequest {
        method: parts.method.as_str(),
        headers: &Headers(&parts.headers),
    };
    into_axum_response(endpoints.rotate(&req, body).await)
}

async fn status(State(endpoints): State<HttpEndpoints>, parts: Parts) -> Response {
    let req = HttpRequest {
        method: parts.method.as_str(),
        headers: &Headers(&parts.headers),
    };
    into_axum_response(endpoints.status(&req).await)
}

/// The routes: `/.well-known/jwks.json` (public), `/internal/rotate-keys` and
/// `/internal/keys/status` (each authorized by the endpoints' [`RotationAuthorizer`]),
/// and, when the endpoints have an issuer URL
/// ([`HttpEndpointsBuilder::with_issuer_url`](keyrot_http::HttpEndpointsBuilder::with_issuer_url)),
/// the RFC 8414 metadata at [`OAUTH_AUTHORIZATION_SERVER_PATH`], and the OpenID document at
/// [`OPENID_CONFIGURATION_PATH`] when the metadata has an authorization endpoint (public). Every method reaches keyrot, which
/// answers `405` (JSON) for the wrong one. Merge or nest the router where you want it
/// (at the issuer URL's path); do not put [`BearerAuthLayer`] in front of it.
pub fn routes<S>(endpoints: HttpEndpoints) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let mut router = Router::new()
        .route(JWKS_PATH, any(jwks))
        .route(ROTATE_PATH, any(rotate))
        .route(STATUS_PATH, any(status));
    if endpoints.issuer().is_some() {
        router = router.route(OAUTH_AUTHORIZATION_SERVER_PATH, any(discovery));
    }
    if endpoints.serves_openid_configuration() {
        router = router.route(OPENID_CONFIGURATION_PATH, any(openid_configuration));
    }
    router.with_state(endpoints)
}

/// Only the JWKS route, for services that verify but do not rotate.
pub fn jwks_route<S>(keyring: keyrot_core::KeyRing) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route(
            JWKS_PATH,
            any(|State(keyring): State<keyrot_core::KeyRing>, parts: Parts| async move {
                let req = HttpRequest {
                    method: parts.method.as_str(),
                    headers: &Headers(&parts.headers),
                };
                into_axum_response(keyrot_http::jwks_response(&keyring, &req))
            }),
        )
        .with_state(keyring)
}

async fn tenant(State(endpoints): State<TenantEndpoints>, parts: Parts) -> Response {
    let req = HttpRequest {
        method: parts.method.as_str(),
        headers: &Headers(&parts.headers),
    };
    match endpoints.respond(parts.uri.path(), &req).await {
        Some(r) => into_axum_response(r),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Every tenant's JWKS (at [`TenantEndpoints::jwks_pattern`], by default
/// `/t/{ring}/.well-known/jwks.json`) and, with an issuer, discovery document: public
/// routes, served from the rings' snapshots.
pub fn tenant_routes<S>(endpoints: TenantEndpoints) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let router = endpoints
        .route_patterns()
        .fold(Router::new(), |router, pattern| router.route(pattern, any(tenant)));
    router.with_state(endpoints)
}
