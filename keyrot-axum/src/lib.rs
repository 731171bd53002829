//! # keyrot-axum
//!
//! [keyrot](keyrot_core) for axum 0.8: a tower [`Layer`] that verifies bearer tokens
//! against the key ring and puts the verified token in the request extensions, the
//! [`Claims`] extractor (typed, generic over your claims struct), [`require_scopes`],
//! and [`routes`] for the JWKS, the rotation endpoint and the ring status.
//!
//! This crate only converts types: every status code, header and body byte comes from
//! [`keyrot_core::http`], so keyrot-axum and keyrot-actix answer identically.
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

use axum::Router;
use axum::body::Body;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use bytes::Bytes;
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use keyrot_core::http::{HeaderSource, HttpRequest, HttpResponse, RequestBody, ResponseBody};
use keyrot_core::{TokenError, Verified};
use serde::de::DeserializeOwned;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service};

pub use keyrot_core::http::{
    AuthRejection, BearerAuth, HttpEndpoints, JWKS_PATH, ROTATE_PATH, RotationAuthorizer, STATUS_PATH, ScopeAuthorizer,
    ServiceTokenRule,
};

/// An axum header map as a keyrot [`HeaderSource`].
#[derive(Debug, Clone, Copy)]
pub struct Headers<'a>(pub &'a HeaderMap);

impl HeaderSource for Headers<'_> {
    fn for_each_value<'s>(&'s self, name: &str, f: &mut dyn FnMut(&'s [u8])) {
        for v in self.0.get_all(name) {
            f(v.as_bytes());
        }
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

/// Why [`Claims`], [`Token`] or [`RequireScopes`] refused a request. It is itself the
/// response: `401`/`403` with `WWW-Authenticate`, or `500` when the verifying
/// [`BearerAuthLayer`] is not installed in front of the route (fail closed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// The token was refused.
    Rejected(AuthRejection),
    /// No verified token in the request: [`BearerAuthLayer`] is missing (a bug in the
    /// router, answered `500`).
    MissingLayer,
}

impl AuthError {
    /// The neutral response.
    pub fn to_http_response(&self) -> HttpResponse {
        match self {
            AuthError::Rejected(r) => r.to_response(),
            AuthError::MissingLayer => HttpResponse::missing_middleware(),
        }
    }
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthError::Rejected(r) => r.fmt(f),
            AuthError::MissingLayer => f.write_str("BearerAuthLayer is not installed for this route"),
        }
    }
}

impl std::error::Error for AuthError {}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        if self == AuthError::MissingLayer {
            tracing::error!("a keyrot extractor ran on a route without BearerAuthLayer");
        }
        into_axum_response(self.to_http_response())
    }
}

fn verified(parts: &Parts) -> Result<&Verified, AuthError> {
    parts.extensions.get::<Verified>().ok_or(AuthError::MissingLayer)
}

/// The verified claims, deserialized into `T` (e.g. [`keyrot_core::StandardClaims`] or
/// your own struct). Claims that do not fit `T` are answered `401 invalid_token`.
#[derive(Debug, Clone)]
pub struct Claims<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Claims<T> {
    type Rejection = AuthError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let v = verified(parts)?;
        T::deserialize(&v.claims)
            .map(Claims)
            .map_err(|_| AuthError::Rejected(AuthRejection::InvalidToken(Some(TokenError::ClaimsShape))))
    }
}

/// The whole verified token (kid, algorithm, claims as JSON).
#[derive(Debug, Clone)]
pub struct Token(pub Verified);

impl Token {
    /// `Ok` when the token grants every scope in `required`; the error is the `403`.
    pub fn require_scopes<S: AsRef<str>>(&self, required: &[S]) -> Result<(), AuthError> {
        keyrot_core::http::require_scopes(&self.0, required).map_err(AuthError::Rejected)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Token {
    type Rejection = AuthError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        verified(parts).cloned().map(Token)
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A tower [`Layer`] that verifies the bearer token of every request: `401`/`403` with
/// `WWW-Authenticate` on failure; on success the [`Verified`] token goes into the request
/// extensions for [`Claims`] and [`Token`].
#[derive(Debug, Clone)]
pub struct BearerAuthLayer {
    auth: BearerAuth,
}

impl BearerAuthLayer {
    /// A layer running `auth`.
    pub fn new(auth: BearerAuth) -> Self {
        Self { auth }
    }
}

impl<S> Layer<S> for BearerAuthLayer {
    type Service = BearerAuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BearerAuthService {
            inner,
            auth: self.auth.clone(),
        }
    }
}

/// The service [`BearerAuthLayer`] wraps around a route.
#[derive(Debug, Clone)]
pub struct BearerAuthService<S> {
    inner: S,
    auth: BearerAuth,
}

impl<S, B> Service<axum::http::Request<B>> for BearerAuthService<S>
where
    S: Service<axum::http::Request<B>, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
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
        let auth = self.auth.clone();
        Box::pin(async move {
            let (mut parts, body) = req.into_parts();
            match auth.authenticate(&Headers(&parts.headers)).await {
                Ok(verified) => {
                    parts.extensions.insert(verified);
                    inner.call(axum::http::Request::from_parts(parts, body)).await
                }
                Err(rejection) => Ok(into_axum_response(rejection.to_response())),
            }
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
    RequireScopes {
        scopes: scopes.into_iter().map(Into::into).collect(),
    }
}

/// See [`require_scopes`].
#[derive(Debug, Clone)]
pub struct RequireScopes {
    scopes: Arc<[String]>,
}

impl<S> Layer<S> for RequireScopes {
    type Service = RequireScopesService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireScopesService {
            inner,
            scopes: self.scopes.clone(),
        }
    }
}

/// The service [`RequireScopes`] wraps around a route.
#[derive(Debug, Clone)]
pub struct RequireScopesService<S> {
    inner: S,
    scopes: Arc<[String]>,
}

impl<S, B> Service<axum::http::Request<B>> for RequireScopesService<S>
where
    S: Service<axum::http::Request<B>, Response = Response> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: axum::http::Request<B>) -> Self::Future {
        let check = match req.extensions().get::<Verified>() {
            None => Err(AuthError::MissingLayer),
            Some(v) => keyrot_core::http::require_scopes(v, &self.scopes).map_err(AuthError::Rejected),
        };
        match check {
            Ok(()) => Box::pin(self.inner.call(req)),
            Err(e) => {
                let resp = e.into_response();
                Box::pin(async move { Ok(resp) })
            }
        }
    }
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
/// `/internal/keys/status` (each authorized by the endpoints' [`RotationAuthorizer`]).
/// Every method reaches keyrot, which answers `405` (JSON) for the wrong one. Merge or
/// nest the router where you want it; do not put [`BearerAuthLayer`] in front of it.
pub fn routes<S>(endpoints: HttpEndpoints) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route(JWKS_PATH, any(jwks))
        .route(ROTATE_PATH, any(rotate))
        .route(STATUS_PATH, any(status))
        .with_state(endpoints)
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
                into_axum_response(keyrot_core::http::jwks_response(&keyring, &req))
            }),
        )
        .with_state(keyring)
}
