//! The shared HTTP suite (keyrot-http-tests) against keyrot-axum, over real HTTP.

use axum::Router;
use axum::routing::get;
use keyrot_axum::{
    BearerAuthLayer, Claims, MaybeClaims, OptionalBearerAuthLayer, TenantAuthLayer, Token, require_scopes,
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
    let router = Router::new()
        .route(PROTECTED_PATH, get(whoami))
        .route(SCOPED_PATH, get(whoami).layer(require_scopes([SCOPED_SCOPE])))
        .layer(BearerAuthLayer::new(app.auth.clone()))
        .route(UNGUARDED_PATH, get(whoami))
        .route(UNGUARDED_SCOPED_PATH, get(whoami).layer(require_scopes([SCOPED_SCOPE])))
        .route(UNGUARDED_OPTIONAL_PATH, get(maybe_whoami))
        .merge(
            Router::new()
                .route(COOKIE_PATH, get(whoami))
                .layer(BearerAuthLayer::new(app.cookie_auth)),
        )
        .merge(
            Router::new()
                .route(HEADER_PATH, get(whoami))
                .layer(BearerAuthLayer::new(app.header_auth)),
        )
        .merge(
            Router::new()
                .route(OPTIONAL_PATH, get(maybe_whoami))
                .route(OPTIONAL_STRICT_PATH, get(whoami))
                .layer(OptionalBearerAuthLayer::new(app.auth.optional())),
        )
        .merge(keyrot_axum::routes(app.endpoints))
        .merge(keyrot_axum::tenant_routes(app.tenants))
        .merge(
            Router::new()
                .route(TENANT_ISS_PATH, get(whoami))
                .route(TENANT_ISS_RING_PATTERN, get(tenant_whoami))
                .layer(TenantAuthLayer::new(app.tenant_by_issuer)),
        )
        .merge(
            Router::new()
                .route(TENANT_PATH_PATTERN, get(whoami))
                .layer(TenantAuthLayer::new(app.tenant_by_path)),
        )
        .merge(
            Router::new()
                .route(TENANT_HOST_PATH, get(whoami))
                .route(TENANT_HOST_RING_PATTERN, get(tenant_whoami))
                .layer(TenantAuthLayer::new(app.tenant_by_host)),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind an ephemeral port");
    let addr = listener.local_addr().expect("local address");
    let task = tokio::spawn(async move { axum::serve(listener, router).await });
    RunningServer::new(addr, move || task.abort())
}

keyrot_http_tests::http_suite!(start);
