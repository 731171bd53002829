//! The comparison server of the load test (`cargo bench -p keyrot-benches --bench load`):
//! the quickstart's `GET /api/me` route on axum behind the `jwt-authorizer` crate's layer,
//! which fetches the keys from the axum quickstart's JWKS and checks `iss`, `exp` and `nbf`
//! like keyrot's middleware does.
//!
//! jwt-authorizer 0.15 is built on axum 0.7 (the quickstarts use axum 0.8), so this route
//! runs on axum 0.7. Configured from the environment:
//! `KEYROT_LOAD_LISTEN` (address to bind), `KEYROT_LOAD_JWKS_URL` (the quickstart's JWKS)
//! and `KEYROT_LOAD_ISSUER` (the `iss` its tokens carry). Prints `ready` once it listens
//! and serves until killed.

use axum07 as axum;
use jwt_authorizer::{IntoLayer as _, JwtAuthorizer, JwtClaims, Validation};
use std::process::ExitCode;

/// The protected route: echoes the verified claims, as the quickstart's does.
async fn me(JwtClaims(claims): JwtClaims<serde_json::Value>) -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({ "claims": claims }))
}

fn setting(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| format!("{name} is not set"))
}

async fn serve() -> Result<(), String> {
    let listen = setting("KEYROT_LOAD_LISTEN")?;
    let jwks_url = setting("KEYROT_LOAD_JWKS_URL")?;
    let issuer = setting("KEYROT_LOAD_ISSUER")?;
    // The quickstart's access tokens name its issuer URL as their audience too (RFC 9068).
    let validation = Validation::new()
        .iss(std::slice::from_ref(&issuer))
        .aud(&[issuer])
        .exp(true)
        .nbf(true);
    let authorizer = JwtAuthorizer::<serde_json::Value>::from_jwks_url(&jwks_url)
        .validation(validation)
        .build()
        .await
        .map_err(|e| format!("jwt-authorizer: {e}"))?;
    let app = axum::Router::new()
        .route("/api/me", axum::routing::get(me))
        .layer(authorizer.into_layer());
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .map_err(|e| format!("bind {listen}: {e}"))?;
    println!("ready");
    axum::serve(listener, app).await.map_err(|e| format!("serve: {e}"))
}

#[tokio::main]
async fn main() -> ExitCode {
    match serve().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("load-jwt-authorizer: {e}");
            ExitCode::from(2)
        }
    }
}
