//! # keyrot-actix
//!
//! [keyrot](keyrot_core) for actix-web 4: a middleware ([`BearerAuthMiddleware`]) that
//! verifies bearer tokens against the key ring and puts the verified token in the request
//! extensions, the [`Claims`] extractor (typed, generic over your claims struct),
//! [`require_scopes`], and [`configure`] for the JWKS, the rotation endpoint and the ring
//! status.
//!
//! This crate only converts types: every status code, header and body byte comes from
//! [`keyrot_http`], so keyrot-actix and keyrot-axum answer identically.
//!
//! - **Any verifier:** [`BearerAuth::with_verifier`] takes any `Arc<dyn TokenVerifier>`:
//!   a [`keyrot_core::PublicKeyRing`] (a shared store's published keys, no master key),
//!   the remote verifier (`keyrot_jwks::JwksVerifier`) (an issuer's JWKS over HTTPS), or your own.
//! - **Token sources:** `auth.with_token_source(TokenSource::cookie("session"))` or
//!   `TokenSource::header("x-api-token")` instead of `Authorization: Bearer`.
//! - **Anonymous users too:** `OptionalBearerAuthMiddleware::new(auth.optional())` with
//!   the [`MaybeClaims`] extractor: no token is `MaybeClaims(None)`, an invalid one
//!   `401`.
//! - **Encrypted and signed cookies:** [`SealedCookies`] and [`SignedCookies`] on a
//!   symmetric ring, read with [`read_cookie`], written with [`SetCookie`] (module
//!   [`cookies`]).
//! - **Discovery:** with `HttpEndpoints::builder(…).with_issuer_url("https://…")`,
//!   [`configure`] also serves `/.well-known/openid-configuration` and
//!   `/.well-known/oauth-authorization-server`.
//!
//! ```no_run
//! use actix_web::{App, HttpServer, web};
//! use keyrot_actix::{BearerAuth, BearerAuthMiddleware, Claims, HttpEndpoints, require_scopes};
//! use keyrot_core::{
//!     KeyRing, MasterKey, MasterKeySealer, MemoryLock, MemoryStorage, RequestContext, RingName, Rotator,
//!     StandardClaims,
//! };
//! use std::sync::Arc;
//!
//! async fn me(Claims(claims): Claims<StandardClaims>) -> web::Json<Option<String>> {
//!     web::Json(claims.sub)
//! }
//!
//! async fn report() -> &'static str {
//!     "only for tokens with the reports.read scope"
//! }
//!
//! async fn run() -> Result<(), Box<dyn std::error::Error>> {
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
//!     let auth = BearerAuth::new(keyring);
//!
//!     HttpServer::new(move || {
//!         App::new()
//!             // Public JWKS; the rotation routes authorize on their own.
//!             .configure(keyrot_actix::configure(endpoints.clone()))
//!             .service(
//!                 web::scope("/api")
//!                     // Verifies every route of the scope; a token from a key another
//!                     // instance activated a moment ago is accepted after one refresh.
//!                     .wrap(BearerAuthMiddleware::new(auth.clone()))
//!                     .route("/me", web::get().to(me))
//!                     .service(
//!                         web::resource("/reports")
//!                             .wrap(require_scopes(["reports.read"]))
//!                             .route(web::get().to(report)),
//!                     ),
//!             )
//!     })
//!     .bind(("127.0.0.1", 3000))?
//!     .run()
//!     .await?;
//!     Ok(())
//! }
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     actix_web::rt::System::new().block_on(run())
//! }
//! ```

pub mod cookies;

use actix_web::body::EitherBody;
use actix_web::dev::{Payload, Service, ServiceRequest, ServiceResponse, Transform, forward_ready};
use actix_web::http::StatusCode;
use actix_web::http::header::HeaderMap;
use actix_web::{FromRequest, HttpMessage, ResponseError, web};
use bytes::Bytes;
use keyrot_core::Verified;
use keyrot_http::{
    Admission, Anonymous, Guard, HeaderSource, HttpRequest as NeutralRequest, HttpResponse as NeutralResponse,
    RequestBody, ResponseBody, Stored, WithPath, each_header_value,
};
use serde::de::DeserializeOwned;
use std::future::{Future, Ready, ready};
use std::pin::Pin;
use std::rc::Rc;

pub use cookies::{CookieErrorResponse, SetCookie, read_cookie};
pub use keyrot_core::TokenVerifier;
pub use keyrot_http::{
    AuthError, AuthRejection, BearerAuth, HttpEndpoints, IssuerMetadata, JWKS_PATH, OAUTH_AUTHORIZATION_SERVER_PATH,
    OPENID_CONFIGURATION_PATH, OptionalBearerAuth, ROTATE_PATH, RequiredScopes, RingSelector, RotationAuthorizer,
    STATUS_PATH, ScopeAuthorizer, ServiceTokenRule, TenantAuth, TenantEndpoints, TokenSource,
};
pub use keyrot_http::{CookieCodec, CookieError, CookieOptions, Opened, SameSite, SealedCookies, SignedCookies};

/// Verifies the bearer token with the ring a [`RingSelector`] picks (the token's `iss`,
/// the path or the host), from a [`keyrot_core::RingManager`] (see [`Guarded`]).
pub type TenantAuthMiddleware = Guarded<TenantAuth>;

/// Converts a neutral response into an actix response.
pub fn into_actix_response(r: NeutralResponse) -> actix_web::HttpResponse {
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut builder = actix_web::HttpResponse::build(status);
    for (name, value) in r.headers {
        builder.append_header((name, value));
    }
    match r.body {
        ResponseBody::Empty => builder.finish(),
        ResponseBody::Shared(bytes) => builder.body(Bytes::from_owner(bytes)),
        ResponseBody::Owned(bytes) => builder.body(bytes),
    }
}

/// An actix header map as a keyrot [`HeaderSource`].
#[derive(Debug, Clone, Copy)]
pub struct Headers<'a>(pub &'a HeaderMap);

impl HeaderSource for Headers<'_> {
    fn for_each_value<'s>(&'s self, name: &str, f: &mut dyn FnMut(&'s [u8])) {
        each_header_value(self.0.get_all(name), f);
    }
}

/// The response to an [`AuthError`] ([`AuthError::to_response`]): the error of
/// [`Claims`] and [`Token`], and what [`Guarded`] answers for a refused request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(transparent)]
pub struct AuthErrorResponse(#[from] pub AuthError);

impl ResponseError for AuthErrorResponse {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.0.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> actix_web::HttpResponse {
        into_actix_response(self.0.to_response())
    }
}

/// The verified claims, deserialized into `T` (e.g. [`keyrot_core::StandardClaims`] or
/// your own struct). Claims that do not fit `T` are answered `401 invalid_token`.
#[derive(Debug, Clone)]
pub struct Claims<T>(pub T);

impl<T: DeserializeOwned> FromRequest for Claims<T> {
    type Error = AuthErrorResponse;
    type Future = Ready<Result<Self, AuthErrorResponse>>;

    fn from_request(req: &actix_web::HttpRequest, _payload: &mut Payload) -> Self::Future {
        ready(with_stored(req, |s| s.claims().map(Claims)))
    }
}

/// The verified claims of a route that serves anonymous users too, behind
/// [`OptionalBearerAuthMiddleware`]: `MaybeClaims(None)` when the request sent no token,
/// `MaybeClaims(Some(claims))` for a valid one. An invalid token never gets here (the
/// middleware answers `401`); claims that do not fit `T` are `401 invalid_token`;
/// without the middleware in front the answer is `500` (never a silent `None`). Do not
/// use actix's `Option<Claims<T>>`: actix turns every error of an extractor into `None`.
#[derive(Debug, Clone)]
pub struct MaybeClaims<T>(pub Option<T>);

impl<T: DeserializeOwned> FromRequest for MaybeClaims<T> {
    type Error = AuthErrorResponse;
    type Future = Ready<Result<Self, AuthErrorResponse>>;

    fn from_request(req: &actix_web::HttpRequest, _payload: &mut Payload) -> Self::Future {
        ready(with_stored(req, |s| s.optional_claims().map(MaybeClaims)))
    }
}

/// `f` of what keyrot's middleware stored in the request.
fn with_stored<T>(
    req: &actix_web::HttpRequest,
    f: impl FnOnce(Stored<'_>) -> Result<T, AuthError>,
) -> Result<T, AuthErrorResponse> {
    let ext = req.extensions();
    f(Stored::new(ext.get(), ext.get::<Anonymous>())).map_err(AuthErrorResponse)
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

impl FromRequest for Token {
    type Error = AuthErrorResponse;
    type Future = Ready<Result<Self, AuthErrorResponse>>;

    fn from_request(req: &actix_web::HttpRequest, _payload: &mut Payload) -> Self::Future {
        ready(with_stored(req, |s| s.token().map(|v| Token(v.clone()))))
    }
}

type LocalBoxFuture<T> = Pin<Box<dyn Future<Output = T> + 'static>>;

/// Middleware that runs a keyrot [`Guard`] before the route: [`BearerAuthMiddleware`]
/// verifies the bearer token and puts the [`Verified`] token in the request extensions
/// (for [`Claims`] and [`Token`]); [`RequireScopes`] checks the scopes of that token. A
/// refused request is answered by the guard's [`AuthError`] (`401`/`403` with
/// `WWW-Authenticate`, `500` when no verified token is there to check).
#[derive(Debug, Clone)]
pub struct Guarded<G> {
    guard: G,
}

impl<S, B, G: Guard> Transform<S, ServiceRequest> for Guarded<G>
where
    GuardedService<S, G>: Service<ServiceRequest, Response = ServiceResponse<EitherBody<B>>, Error = actix_web::Error>,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Transform = GuardedService<S, G>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(GuardedService {
            service: Rc::new(service),
            guard: self.guard.clone(),
        }))
    }
}

impl<G: Guard> Guarded<G> {
    /// Middleware running `guard`.
    pub fn new(guard: G) -> Self {
        Self { guard }
    }
}

/// Verifies the bearer token of every request (see [`Guarded`]). Its [`BearerAuth`]
/// verifies against a key ring or any [`TokenVerifier`] ([`BearerAuth::with_verifier`]:
/// a [`keyrot_core::PublicKeyRing`], the remote verifier (`keyrot_jwks::JwksVerifier`), your own),
/// and reads the token from `Authorization: Bearer` or the [`TokenSource`]s configured.
pub type BearerAuthMiddleware = Guarded<BearerAuth>;
/// Verifies the token of a request that sends one (`401` if it is invalid) and lets a
/// request without any through as anonymous, for [`MaybeClaims`] (see [`Guarded`]).
pub type OptionalBearerAuthMiddleware = Guarded<OptionalBearerAuth>;
/// Lets a request through only if its verified token grants every scope (see
/// [`require_scopes`]).
pub type RequireScopes = Guarded<RequiredScopes>;

/// The service [`Guarded`] wraps around a route.
#[derive(Debug)]
pub struct GuardedService<S, G> {
    service: Rc<S>,
    guard: G,
}

/// The service [`BearerAuthMiddleware`] wraps around a route.
pub type BearerAuthService<S> = GuardedService<S, BearerAuth>;
/// The service [`RequireScopes`] wraps around a route.
pub type RequireScopesService<S> = GuardedService<S, RequiredScopes>;

impl<S, B, G> Service<ServiceRequest> for GuardedService<S, G>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: 'static,
    G: Guard,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<Result<Self::Response, Self::Error>>;

    forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        let service = self.service.clone();
        let guard = self.guard.clone();
        Box::pin(async move {
            // Taken out (not borrowed: the extensions are a RefCell) and put back below.
            let found = req.extensions_mut().remove::<Verified>();
            let anonymous = req.extensions_mut().remove::<Anonymous>();
            let headers = Headers(req.headers());
            let route = req.match_pattern();
            let admitted = guard
                .admit(
                    &WithPath::new(&headers, req.path()).with_route(route.as_deref()),
                    Stored::new(found.as_ref(), anonymous.as_ref()),
                )
                .await;
            match admitted {
                Ok(admission) => {
                    let mut ext = req.extensions_mut();
                    if let Some(v) = found {
                        ext.insert(v);
                    }
                    if let Some(a) = anonymous {
                        ext.insert(a);
                    }
                    match admission {
                        Admission::Verified(v) => {
                            ext.insert(v);
                        }
                        Admission::Anonymous => {
                            ext.insert(Anonymous);
                        }
                        Admission::Unchanged => {}
                    }
                }
                Err(e) => {
                    let resp = AuthErrorResponse(e).error_response();
                    return Ok(req.into_response(resp).map_into_right_body());
                }
            }
            service.call(req).await.map(ServiceResponse::map_into_left_body)
        })
    }
}

/// Middleware that lets a request through only if the token verified by
/// [`BearerAuthMiddleware`] grants every scope given (`403 insufficient_scope`
/// otherwise). Wrap it inside (closer to the route than) the [`BearerAuthMiddleware`].
pub fn require_scopes<I, T>(scopes: I) -> RequireScopes
where
    I: IntoIterator<Item = T>,
    T: Into<String>,
{
    Guarded::new(RequiredScopes::new(scopes))
}

fn neutral<'a>(req: &'a actix_web::HttpRequest, headers: &'a Headers<'a>) -> NeutralRequest<'a> {
    NeutralRequest {
        method: req.method().as_str(),
        headers,
    }
}

async fn rotate(
    endpoints: HttpEndpoints,
    req: actix_web::HttpRequest,
    payload: web::Payload,
) -> actix_web::HttpResponse {
    let read = payload.to_bytes_limited(endpoints.max_body_bytes()).await;
    let body = match &read {
        Ok(Ok(bytes)) => RequestBody::Complete(bytes),
        Ok(Err(_)) => RequestBody::Unreadable,
        Err(_) => RequestBody::TooLarge,
    };
    let headers = Headers(req.headers());
    into_actix_response(endpoints.rotate(&neutral(&req, &headers), body).await)
}

async fn status(endpoints: HttpEndpoints, req: actix_web::HttpRequest) -> actix_web::HttpResponse {
    let headers = Headers(req.headers());
    into_actix_response(endpoints.status(&neutral(&req, &headers)).await)
}

fn jwks(keyring: &keyrot_core::KeyRing, req: &actix_web::HttpRequest) -> actix_web::HttpResponse {
    let headers = Headers(req.headers());
    into_actix_response(keyrot_http::jwks_response(keyring, &neutral(req, &headers)))
}

/// Registers `/.well-known/jwks.json` (public), `/internal/rotate-keys` and
/// `/internal/keys/status` (each authorized by the endpoints' [`RotationAuthorizer`]),
/// and, when the endpoints have an issuer URL
/// ([`HttpEndpointsBuilder::with_issuer_url`](keyrot_http::HttpEndpointsBuilder::with_issuer_url)),
/// the RFC 8414 metadata at [`OAUTH_AUTHORIZATION_SERVER_PATH`], and the OpenID document at
/// [`OPENID_CONFIGURATION_PATH`] when the metadata has an authorization endpoint (public). Every method reaches keyrot, which
/// answers `405` (JSON) for the wrong one. Use with `App::configure` or
/// `Scope::configure` (at the issuer URL's path); do not wrap [`BearerAuthMiddleware`]
/// around these routes.
pub fn configure(endpoints: HttpEndpoints) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        if endpoints.issuer().is_some() {
            let for_discovery = endpoints.clone();
            cfg.service(web::resource(OAUTH_AUTHORIZATION_SERVER_PATH).route(web::route().to(
                move |req: actix_web::HttpRequest| {
                    let headers = Headers(req.headers());
                    ready(into_actix_response(for_discovery.discovery(&neutral(&req, &headers))))
                },
            )));
        }
        if endpoints.serves_openid_configuration() {
            let for_openid = endpoints.clone();
            cfg.service(web::resource(OPENID_CONFIGURATION_PATH).route(web::route().to(
                move |req: actix_web::HttpRequest| {
                    let headers = Headers(req.headers());
                    ready(into_actix_response(
                        for_openid.openid_configuration(&neutral(&req, &headers)),
                    ))
                },
            )));
        }
        let keyring = endpoints.keyring().clone();
        let for_rotate = endpoints.clone();
        let for_status = endpoints;
        cfg.service(
            web::resource(JWKS_PATH)
                .route(web::route().to(move |req: actix_web::HttpRequest| ready(jwks(&keyring, &req)))),
        )
        .service(
            web::resource(ROTATE_PATH).route(web::route().to(
                move |req: actix_web::HttpRequest, payload: web::Payload| rotate(for_rotate.clone(), req, payload),
            )),
        )
        .service(
            web::resource(STATUS_PATH)
                .route(web::route().to(move |req: actix_web::HttpRequest| status(for_status.clone(), req))),
        );
    }
}

/// Registers only the JWKS route, for services that verify but do not rotate.
pub fn configure_jwks(keyring: keyrot_core::KeyRing) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        cfg.service(
            web::resource(JWKS_PATH)
                .route(web::route().to(move |req: actix_web::HttpRequest| ready(jwks(&keyring, &req)))),
        );
    }
}

async fn tenant(endpoints: TenantEndpoints, req: actix_web::HttpRequest) -> actix_web::HttpResponse {
    let headers = Headers(req.headers());
    match endpoints.respond(req.path(), &neutral(&req, &headers)).await {
        Some(r) => into_actix_response(r),
        None => actix_web::HttpResponse::NotFound().finish(),
    }
}

/// Registers every tenant's JWKS (at [`TenantEndpoints::jwks_pattern`], by default
/// `/t/{ring}/.well-known/jwks.json`) and, with an issuer, discovery document: public
/// routes, served from the rings' snapshots.
pub fn configure_tenants(endpoints: TenantEndpoints) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        for pattern in endpoints.route_patterns() {
            let e = endpoints.clone();
            cfg.service(
                web::resource(pattern)
                    .route(web::route().to(move |req: actix_web::HttpRequest| tenant(e.clone(), req))),
            );
        }
    }
}
