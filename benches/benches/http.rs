//! The web adapters in process: one request through the framework's service stack, no
//! sockets, no HTTP parsing. Per framework (`axum`, `actix`):
//!
//! * `with_middleware`: `GET /api/me` with a valid EdDSA bearer token through the
//!   verifying middleware (`BearerAuthLayer` / `BearerAuthMiddleware`); the handler takes
//!   the [`Token`](keyrot_axum::Token) extractor and answers its kid.
//! * `without_middleware`: the same route and the same answer (the kid, captured by the
//!   handler) without the middleware and without a token. `with − without` is what the
//!   middleware costs per request: bearer parsing, token verification, the extension
//!   insert and the `Token` extractor's clone.
//! * `jwks_200`: `GET /.well-known/jwks.json`.
//! * `jwks_304`: the same with an `If-None-Match` carrying the current ETag.
//!
//! Each app is the documented layout: the protected route (behind the middleware or
//! not) plus keyrot's routes (`keyrot_axum::routes` / `keyrot_actix::configure`).
//! Requests are built in the untimed setup of `iter_batched` (`BatchSize::SmallInput`);
//! the timing covers the call into the app up to the response head (the body is neither
//! read nor dropped inside the timed part). Every request kind is checked for its status,
//! ETag and body before timing, and the status again on every timed response.
//!
//! How each framework is driven:
//!
//! * axum: the `Router` is a tower `Service`; each request is `router.clone().oneshot(req)`
//!   on a current-thread tokio runtime handed to criterion's `to_async`.
//! * actix: `actix_web::test::init_service` builds the app service inside an actix
//!   `System` (`SystemRunner`, a current-thread tokio runtime with a `LocalSet`: actix
//!   services are `!Send`); criterion's `to_async` is given that runner through a small
//!   `AsyncExecutor` impl, and each request is `actix_web::test::call_service`.
//!
//! Run with `cargo bench -p keyrot-benches --bench http`.

mod common;

use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceResponse};
use criterion::async_executor::AsyncExecutor;
use criterion::measurement::WallTime;
use criterion::{BatchSize, BenchmarkGroup, Criterion, criterion_group, criterion_main};
use keyrot_core::Algorithm;
use keyrot_http::{BearerAuth, HttpEndpoints, JWKS_PATH};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt as _;

const ME_PATH: &str = "/api/me";

/// Everything the apps share: the ring, a valid token, the JWKS as the ring publishes it.
struct Fixture {
    /// The (current-thread) runtime the ring was built on; axum is driven on it too.
    rt: tokio::runtime::Runtime,
    endpoints: HttpEndpoints,
    auth: BearerAuth,
    kid: Arc<str>,
    bearer: String,
    etag: String,
    jwks_body: Vec<u8>,
}

fn fixture() -> Fixture {
    let rt = common::runtime();
    let ring = common::ring(&rt, Algorithm::EdDsa);
    let token = ring.keyring.sign(&common::claims()).expect("keyrot signs");
    let verified = ring.keyring.verify(&token).expect("keyrot verifies its own token");
    assert_eq!(verified.kid, ring.kid, "the token is signed by the Active key");
    let snap = ring.keyring.snapshot();
    let etag = snap.jwks().etag().to_owned();
    let jwks_body = snap.jwks().body_arc().to_vec();
    drop(snap);
    let auth = BearerAuth::new(ring.keyring.clone());
    let endpoints = HttpEndpoints::builder(ring.keyring, ring.rotator)
        .build()
        .expect("HTTP endpoints");
    Fixture {
        rt,
        endpoints,
        auth,
        kid: ring.kid.into(),
        bearer: format!("Bearer {token}"),
        etag,
        jwks_body,
    }
}

fn tune(group: &mut BenchmarkGroup<'_, WallTime>) {
    group
        .sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
}

/// The four request kinds, with the status each must get.
#[derive(Debug, Clone, Copy)]
enum Kind {
    WithMiddleware,
    WithoutMiddleware,
    Jwks200,
    Jwks304,
}

impl Kind {
    const ALL: [Kind; 4] = [
        Kind::WithMiddleware,
        Kind::WithoutMiddleware,
        Kind::Jwks200,
        Kind::Jwks304,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::WithMiddleware => "with_middleware",
            Kind::WithoutMiddleware => "without_middleware",
            Kind::Jwks200 => "jwks_200",
            Kind::Jwks304 => "jwks_304",
        }
    }

    fn status(self) -> u16 {
        match self {
            Kind::Jwks304 => 304,
            _ => 200,
        }
    }

    fn path(self) -> &'static str {
        match self {
            Kind::WithMiddleware | Kind::WithoutMiddleware => ME_PATH,
            Kind::Jwks200 | Kind::Jwks304 => JWKS_PATH,
        }
    }

    /// The request headers for this kind.
    fn headers(self, fx: &Fixture) -> Vec<(&'static str, String)> {
        match self {
            Kind::WithMiddleware => vec![("authorization", fx.bearer.clone())],
            Kind::WithoutMiddleware | Kind::Jwks200 => Vec::new(),
            Kind::Jwks304 => vec![("if-none-match", fx.etag.clone())],
        }
    }

    /// The body the response must carry (checked once, before timing).
    fn expected_body(self, fx: &Fixture) -> &[u8] {
        match self {
            Kind::WithMiddleware | Kind::WithoutMiddleware => fx.kid.as_bytes(),
            Kind::Jwks200 => &fx.jwks_body,
            Kind::Jwks304 => b"",
        }
    }
}

// --- axum -------------------------------------------------------------------------

mod axum_app {
    use axum::Router;
    use axum::routing::get;
    use keyrot_axum::{BearerAuthLayer, Token};
    use keyrot_http::{BearerAuth, HttpEndpoints};
    use std::sync::Arc;

    async fn me(Token(verified): Token) -> String {
        verified.kid
    }

    /// The protected route behind the verifying layer, plus keyrot's routes.
    pub fn with_middleware(auth: BearerAuth, endpoints: HttpEndpoints) -> Router {
        Router::new()
            .route(super::ME_PATH, get(me))
            .layer(BearerAuthLayer::new(auth))
            .merge(keyrot_axum::routes(endpoints))
    }

    /// The same layout and answer, no layer (the handler has the kid already).
    pub fn without_middleware(kid: Arc<str>, endpoints: HttpEndpoints) -> Router {
        Router::new()
            .route(
                super::ME_PATH,
                get(move || {
                    let kid = kid.clone();
                    async move { kid.to_string() }
                }),
            )
            .merge(keyrot_axum::routes(endpoints))
    }
}

fn axum_request(kind: Kind, fx: &Fixture) -> axum::http::Request<axum::body::Body> {
    let mut builder = axum::http::Request::get(kind.path());
    for (name, value) in kind.headers(fx) {
        builder = builder.header(name, value);
    }
    builder.body(axum::body::Body::empty()).expect("valid request")
}

async fn axum_call(router: axum::Router, req: axum::http::Request<axum::body::Body>) -> axum::response::Response {
    router.oneshot(req).await.expect("axum routers are infallible")
}

fn axum(c: &mut Criterion) {
    let fx = fixture();
    let rt = &fx.rt;
    let with = axum_app::with_middleware(fx.auth.clone(), fx.endpoints.clone());
    let without = axum_app::without_middleware(fx.kid.clone(), fx.endpoints.clone());
    let app_for = |kind: Kind| match kind {
        Kind::WithoutMiddleware => without.clone(),
        _ => with.clone(),
    };

    // Before timing: every request kind gets the status, ETag and body it must.
    for kind in Kind::ALL {
        let resp = rt.block_on(axum_call(app_for(kind), axum_request(kind, &fx)));
        assert_eq!(resp.status().as_u16(), kind.status(), "axum {}", kind.name());
        if matches!(kind, Kind::Jwks200 | Kind::Jwks304) {
            let etag = resp.headers().get("etag").expect("JWKS answers carry an ETag");
            assert_eq!(etag.as_bytes(), fx.etag.as_bytes(), "axum {}", kind.name());
        }
        let body = rt
            .block_on(axum::body::to_bytes(resp.into_body(), usize::MAX))
            .expect("readable body");
        assert_eq!(body.as_ref(), kind.expected_body(&fx), "axum {}", kind.name());
    }
    // The layer does guard the route: no token, no entry.
    let resp = rt.block_on(axum_call(with.clone(), axum_request(Kind::WithoutMiddleware, &fx)));
    assert_eq!(resp.status().as_u16(), 401, "axum: the layer guards {ME_PATH}");

    let mut g = c.benchmark_group("axum");
    tune(&mut g);
    for kind in Kind::ALL {
        let router = app_for(kind);
        let expected = kind.status();
        g.bench_function(kind.name(), |b| {
            b.to_async(rt).iter_batched(
                || (router.clone(), axum_request(kind, &fx)),
                |(router, req)| async move {
                    let resp = axum_call(router, req).await;
                    assert_eq!(resp.status().as_u16(), expected);
                    resp
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

// --- actix ------------------------------------------------------------------------

/// criterion's `to_async` driving futures on an actix `System`: the runtime the app
/// service was built on (actix services are `!Send` and expect the System's `LocalSet`).
struct ActixExecutor(actix_web::rt::SystemRunner);

impl AsyncExecutor for &ActixExecutor {
    fn block_on<T>(&self, future: impl Future<Output = T>) -> T {
        self.0.block_on(future)
    }
}

mod actix_app {
    use keyrot_actix::Token;

    pub async fn me(Token(verified): Token) -> String {
        verified.kid
    }
}

fn actix_request(kind: Kind, fx: &Fixture) -> actix_web::test::TestRequest {
    let mut req = actix_web::test::TestRequest::get().uri(kind.path());
    for (name, value) in kind.headers(fx) {
        req = req.insert_header((name, value));
    }
    req
}

/// Checks `kind` on `app`, then times it. `make` builds the request (actix-http's
/// `Request`, which actix-web does not re-export: inferred here rather than named).
fn actix_bench<S, R, B>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    runner: &ActixExecutor,
    fx: &Fixture,
    kind: Kind,
    app: &S,
    make: impl Fn(Kind) -> R,
) where
    S: Service<R, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let resp = runner.0.block_on(actix_web::test::call_service(app, make(kind)));
    assert_eq!(resp.status().as_u16(), kind.status(), "actix {}", kind.name());
    if matches!(kind, Kind::Jwks200 | Kind::Jwks304) {
        let etag = resp.headers().get("etag").expect("JWKS answers carry an ETag");
        assert_eq!(etag.as_bytes(), fx.etag.as_bytes(), "actix {}", kind.name());
    }
    let body = runner.0.block_on(actix_web::test::read_body(resp));
    assert_eq!(body.as_ref(), kind.expected_body(fx), "actix {}", kind.name());

    let expected = kind.status();
    g.bench_function(kind.name(), |b| {
        b.to_async(runner).iter_batched(
            || make(kind),
            |req| async move {
                let resp = actix_web::test::call_service(app, req).await;
                assert_eq!(resp.status().as_u16(), expected);
                resp
            },
            BatchSize::SmallInput,
        )
    });
}

fn actix(c: &mut Criterion) {
    use actix_web::{App, web};
    use keyrot_actix::BearerAuthMiddleware;

    let fx = fixture();
    let runner = ActixExecutor(actix_web::rt::System::new());
    let with = runner.0.block_on(actix_web::test::init_service(
        App::new()
            .configure(keyrot_actix::configure(fx.endpoints.clone()))
            .service(
                web::scope("/api")
                    .wrap(BearerAuthMiddleware::new(fx.auth.clone()))
                    .route("/me", web::get().to(actix_app::me)),
            ),
    ));
    let kid = fx.kid.clone();
    let without = runner.0.block_on(actix_web::test::init_service(
        App::new()
            .configure(keyrot_actix::configure(fx.endpoints.clone()))
            .service(web::scope("/api").route(
                "/me",
                web::get().to(move || {
                    let kid = kid.clone();
                    async move { kid.to_string() }
                }),
            )),
    ));
    let make = |kind: Kind| actix_request(kind, &fx).to_request();

    // The middleware does guard the route: no token, no entry.
    let resp = runner
        .0
        .block_on(actix_web::test::call_service(&with, make(Kind::WithoutMiddleware)));
    assert_eq!(resp.status().as_u16(), 401, "actix: the middleware guards {ME_PATH}");

    let mut g = c.benchmark_group("actix");
    tune(&mut g);
    for kind in Kind::ALL {
        match kind {
            Kind::WithoutMiddleware => actix_bench(&mut g, &runner, &fx, kind, &without, make),
            _ => actix_bench(&mut g, &runner, &fx, kind, &with, make),
        }
    }
    g.finish();
}

criterion_group!(benches, axum, actix);
criterion_main!(benches);
