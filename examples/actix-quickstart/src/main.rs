//! keyrot quickstart on actix-web 4: `cargo run -p actix-quickstart`.
//!
//! The same service as the axum `quickstart`: the JWKS, the rotation endpoint, ring status,
//! an OAuth 2.0 client-credentials token endpoint, a demo login and a protected route, on an
//! embedded SQLite file (or `KEYROT_DATABASE_URL`), with the in-process scheduler running.
//! At start it prints the URLs and `curl` commands that work as printed. Everything but the
//! routes lives in `keyrot_examples_support::quickstart`. `KEYROT_ACTIX_WORKERS` sets
//! actix-web's worker threads (default: actix-web's own, one per core).

use actix_web::{App, HttpRequest, HttpServer, web};
use keyrot_actix::{BearerAuth, BearerAuthMiddleware, Token, into_actix_response};
use keyrot_examples_support::quickstart::{self, LOGIN_PATH, ME_PATH, METRICS_PATH, Quickstart, TOKEN_PATH};
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    quickstart::run("actix-quickstart", serve).await
}

/// Mounts the routes on actix-web and serves until Ctrl-C.
async fn serve(app: &Quickstart) -> Result<(), Box<dyn std::error::Error>> {
    let auth = BearerAuth::new(app.keyring.clone());
    let endpoints = app.endpoints.clone();
    let tokens = app.tokens.clone();
    let metrics = app.metrics_response_fn();
    let workers = workers_from_env()?;
    let mut server = HttpServer::new(move || {
        let cc_tokens = tokens.clone();
        let login_tokens = tokens.clone();
        let metrics = metrics.clone();
        App::new()
            .service(
                web::resource(ME_PATH)
                    .wrap(BearerAuthMiddleware::new(auth.clone()))
                    .route(web::get().to(me)),
            )
            .route(
                TOKEN_PATH,
                web::post().to(move |req: HttpRequest, body: web::Bytes| {
                    let tokens = cc_tokens.clone();
                    async move {
                        let auth = req.headers().get("authorization").and_then(|v| v.to_str().ok());
                        into_actix_response(tokens.client_credentials(auth, &body).await)
                    }
                }),
            )
            .route(
                LOGIN_PATH,
                web::post().to(move |body: web::Bytes| {
                    let tokens = login_tokens.clone();
                    async move { into_actix_response(tokens.demo_login(&body).await) }
                }),
            )
            // Unauthenticated on the quickstart; in production keep it on an internal listener.
            .route(
                METRICS_PATH,
                web::get().to(move || std::future::ready(into_actix_response(metrics()))),
            )
            .configure(keyrot_actix::configure(endpoints.clone()))
    });
    if let Some(n) = workers {
        server = server.workers(n);
    }
    let server = server
        .shutdown_signal(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .bind(app.config.listen)?
        .run();
    app.announce("actix-web");
    server.await?;
    Ok(())
}

/// `KEYROT_ACTIX_WORKERS`: how many workers actix-web runs (each a single-threaded runtime
/// that keeps the connections it accepted), or `None` for actix-web's default.
fn workers_from_env() -> Result<Option<usize>, Box<dyn std::error::Error>> {
    let Ok(value) = std::env::var("KEYROT_ACTIX_WORKERS") else {
        return Ok(None);
    };
    match value.parse::<usize>() {
        Ok(n) if n > 0 => Ok(Some(n)),
        _ => Err(format!(
            "KEYROT_ACTIX_WORKERS={value:?} is not a number of worker threads: set 1 or more, or unset it"
        )
        .into()),
    }
}

/// The protected route: echoes the verified claims.
async fn me(Token(verified): Token) -> web::Json<serde_json::Value> {
    web::Json(serde_json::json!({ "kid": verified.kid, "claims": verified.claims }))
}
