//! A resource server that verifies another service's tokens and holds no key material:
//! `cargo run -p resource-server`.
//!
//! Configuration: `KEYROT_JWKS_URL`, `KEYROT_ISSUER`, `KEYROT_AUDIENCE`,
//! `KEYROT_JWKS_MIN_REFRESH_MS` as `keyrot_examples_support::remote` reads them, and
//! `KEYROT_LISTEN` (default `127.0.0.1:8090`).
//!
//! `GET /api/me` answers 200 with the verified claims, and 401 otherwise.

use axum::Router;
use axum::response::Response;
use axum::routing::get;
use keyrot_axum::{BearerAuth, BearerAuthLayer, Token, into_axum_response};
use keyrot_core::ErrorChain;
use keyrot_examples_support::remote::{RemoteSetupError, listen_address, remote_verifier_from_env};
use keyrot_http::HttpResponse;
use std::process::ExitCode;
use std::sync::Arc;

/// The protected route.
const ME_PATH: &str = "/api/me";

#[tokio::main]
async fn main() -> ExitCode {
    keyrot_examples_support::quickstart::init_tracing_with("info");
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("resource-server: {}", ErrorChain(&e));
            ExitCode::from(2)
        }
    }
}

async fn run() -> Result<(), RemoteSetupError> {
    let listen = listen_address("127.0.0.1:8090")?;
    let verifier = remote_verifier_from_env().await?;
    let router = Router::new()
        .route(ME_PATH, get(me))
        .layer(BearerAuthLayer::new(BearerAuth::with_verifier(Arc::new(verifier))));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| RemoteSetupError::Serve { listen, source })?;
    println!("resource-server on http://{listen}: GET {ME_PATH} verifies bearer tokens; holds no key material");
    println!("ready");
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|source| RemoteSetupError::Serve { listen, source })
}

/// The protected route: the verified claims and the key that signed them.
async fn me(Token(verified): Token) -> Response {
    let body = serde_json::json!({ "kid": verified.kid, "claims": verified.claims });
    into_axum_response(HttpResponse::json(200, &body))
}
