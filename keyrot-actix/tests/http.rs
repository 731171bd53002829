//! The shared HTTP suite (keyrot-http-tests) against keyrot-actix, over real HTTP.

use actix_web::{App, HttpServer, web};
use keyrot_actix::{
    BearerAuthMiddleware, Claims, MaybeClaims, OptionalBearerAuthMiddleware, TenantAuthMiddleware, Token,
    require_scopes,
};
use keyrot_core::StandardClaims;
use keyrot_http_tests::{
    COOKIE_PATH, HEADER_PATH, OPTIONAL_PATH, OPTIONAL_STRICT_PATH, PROTECTED_PATH, RunningServer, SCOPED_PATH,
    SCOPED_SCOPE, TENANT_HOST_PATH, TENANT_HOST_RING_PATTERN, TENANT_ISS_PATH, TENANT_ISS_RING_PATTERN,
    TENANT_PATH_PATTERN, TestApp, UNGUARDED_OPTIONAL_PATH, UNGUARDED_PATH, UNGUARDED_SCOPED_PATH, maybe_whoami_body,
    tenant_whoami_body, whoami_body,
};

async fn whoami(Claims(claims): Claims<StandardClaims>) -> String {
    whoami_body(&claims)
}

async fn tenant_whoami(Token(token): Token) -> String {
    tenant_whoami_body(&token)
}

async fn maybe_whoami(MaybeClaims(claims): MaybeClaims<StandardClaims>) -> String {
    maybe_whoami_body(claims.as_ref())
}

async fn start(app: TestApp) -> RunningServer {
    let (tx, rx) = tokio::sync::oneshot::channel();
    // actix runs its own single-threaded runtime (System) on a thread of its own.
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let server = HttpServer::new(move || {
                App::new()
                    .configure(keyrot_actix::configure(app.endpoints.clone()))
                    .configure(keyrot_actix::configure_tenants(app.tenants.clone()))
                    .service(
                        web::resource(TENANT_ISS_PATH)
                            .wrap(TenantAuthMiddleware::new(app.tenant_by_issuer.clone()))
                            .route(web::get().to(whoami)),
                    )
                    .service(
                        web::resource(TENANT_PATH_PATTERN)
                            .wrap(TenantAuthMiddleware::new(app.tenant_by_path.clone()))
                            .route(web::get().to(whoami)),
                    )
                    .service(
                        web::resource(TENANT_HOST_PATH)
                            .wrap(TenantAuthMiddleware::new(app.tenant_by_host.clone()))
                            .route(web::get().to(whoami)),
                    )
                    .service(
                        web::resource(TENANT_ISS_RING_PATTERN)
                            .wrap(TenantAuthMiddleware::new(app.tenant_by_issuer.clone()))
                            .route(web::get().to(tenant_whoami)),
                    )
                    .service(
                        web::resource(TENANT_HOST_RING_PATTERN)
                            .wrap(TenantAuthMiddleware::new(app.tenant_by_host.clone()))
                            .route(web::get().to(tenant_whoami)),
                    )
                    // Before the catch-all scope below, which would answer 404 for them.
                    .route(UNGUARDED_PATH, web::get().to(whoami))
                    .route(UNGUARDED_OPTIONAL_PATH, web::get().to(maybe_whoami))
                    .service(
                        web::resource(COOKIE_PATH)
                            .wrap(BearerAuthMiddleware::new(app.cookie_auth.clone()))
                            .route(web::get().to(whoami)),
                    )
                    .service(
                        web::resource(HEADER_PATH)
                            .wrap(BearerAuthMiddleware::new(app.header_auth.clone()))
                            .route(web::get().to(whoami)),
                    )
                    .service(
                        web::scope("/optional")
                            .wrap(OptionalBearerAuthMiddleware::new(app.auth.clone().optional()))
                            .route(
                                OPTIONAL_PATH.trim_start_matches("/optional"),
                                web::get().to(maybe_whoami),
                            )
                            .route(
                                OPTIONAL_STRICT_PATH.trim_start_matches("/optional"),
                                web::get().to(whoami),
                            ),
                    )
                    .service(
                        web::resource(UNGUARDED_SCOPED_PATH)
                            .wrap(require_scopes([SCOPED_SCOPE]))
                            .route(web::get().to(whoami)),
                    )
                    .service(
                        web::scope("")
                            .wrap(BearerAuthMiddleware::new(app.auth.clone()))
                            .route(PROTECTED_PATH, web::get().to(whoami))
                            .service(
                                web::resource(SCOPED_PATH)
                                    .wrap(require_scopes([SCOPED_SCOPE]))
                                    .route(web::get().to(whoami)),
                            ),
                    )
            })
            .workers(1)
            .disable_signals()
            .bind(("127.0.0.1", 0))
            .expect("bind an ephemeral port");
            let addr = server.addrs()[0];
            let server = server.run();
            let _ = tx.send((addr, server.handle()));
            let _ = server.await;
        });
    });
    let (addr, handle) = rx.await.expect("the actix server started");
    RunningServer::new(addr, move || {
        // Sends the stop command at once; the server thread then ends.
        drop(handle.stop(false));
    })
}

keyrot_http_tests::http_suite!(start);
