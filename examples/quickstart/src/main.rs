//! keyrot quickstart on axum: `cargo run -p quickstart`.
//!
//! Serves the JWKS, the rotation endpoint, ring status, an OAuth 2.0 client-credentials
//! token endpoint, a demo login and a protected route, on an embedded SQLite file (or
//! `KEYROT_DATABASE_URL`), with the in-process scheduler running. At start it prints the
//! URLs and `curl` commands that work as printed.

use axum::Router;
use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{get, post};
use keyrot_axum::{BearerAuth, BearerAuthLayer, Token, into_axum_response};
use keyrot_examples_support::quickstart::{self, LOGIN_PATH, ME_PATH, METRICS_PATH, Quickstart, TOKEN_PATH};
use keyrot_http::HttpResponse;
use std::process::ExitCode;
use std::sync::Arc;

#[tokio::main]
async fn main() -> ExitCode {
    quickstart::run("quickstart", serve).await
}

/// Mounts the routes on axum and serves until Ctrl-C.
async fn serve(app: &Quickstart) -> Result<(), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind(app.config.listen).await?;
    let tokens = app.tokens.clone();
    let login_tokens = app.tokens.clone();
    let metrics = app.metrics_response_fn();
    let router = Router::new()
        .route(ME_PATH, get(me))
        .layer(BearerAuthLayer::new(BearerAuth::new(app.keyring.clone())))
        .route(
            TOKEN_PATH,
            post(move |headers: HeaderMap, body: Bytes| {
                let tokens = Arc::clone(&tokens);
                async move {
                    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
                    into_axum_response(tokens.client_credentials(auth, &body).await)
                }
            }),
        )
        .route(
            LOGIN_PATH,
            post(move |body: Bytes| {
                let tokens = Arc::clone(&login_tokens);
                async move { into_axum_response(tokens.demo_login(&body).await) }
            }),
        )
        // Unauthenticated on the quickstart; in production keep it on an internal listener.
        .route(
            METRICS_PATH,
            get(move || std::future::ready(into_axum_response(metrics()))),
        )
        .merge(keyrot_axum::routes(app.endpoints.clone()));
    app.announce("axum");
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

/// The protected route: echoes the verified claims.
async fn me(Token(verified): Token) -> Response {
    let body = serde_json::json!({ "kid": verified.kid, "claims": verified.claims });
    into_axum_response(HttpResponse::json(200, &body))
}
