//! A resource server that verifies another service's tokens and holds no key material:
//! `cargo run -p resource-server`.
//!
//! Configuration:
//! * `KEYROT_JWKS_URL`: the issuer's JWKS. When unset, `KEYROT_ISSUER` alone is used
//!   for discovery (`/.well-known/openid-configuration`, then RFC 8414).
//! * `KEYROT_ISSUER`: the required `iss` when set.
//! * `KEYROT_AUDIENCE`: the required `aud`; when unset, `KEYROT_ISSUER` is (the
//!   quickstart's access tokens name its issuer URL as their audience unless told
//!   otherwise).
//! * `KEYROT_LISTEN`: the listen address (default `127.0.0.1:8090`).
//! * `KEYROT_JWKS_MIN_REFRESH_MS`: the floor of the JWKS cache lifetime, which is also the
//!   cooldown of unknown-kid refreshes (default: keyrot-jwks's).
//!
//! `GET /api/me` answers 200 with the verified claims, and 401 otherwise.

use axum::Router;
use axum::response::Response;
use axum::routing::get;
use keyrot_axum::{BearerAuth, BearerAuthLayer, Token, into_axum_response};
use keyrot_core::{ErrorChain, Validation};
use keyrot_http::HttpResponse;
use keyrot_jwks::{JwksError, JwksVerifier};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// The protected route.
const ME_PATH: &str = "/api/me";

/// What can stop the resource server from starting (exit code 2).
#[derive(Debug, thiserror::Error)]
enum SetupError {
    /// Neither source is configured.
    #[error("set KEYROT_JWKS_URL (the issuer's JWKS) or KEYROT_ISSUER (discovery)")]
    NoSource,
    /// `KEYROT_LISTEN` does not parse.
    #[error("KEYROT_LISTEN={value:?} is not an address: set it to HOST:PORT, like 127.0.0.1:8090")]
    Listen {
        /// The value given.
        value: String,
        /// Why it does not parse.
        #[source]
        source: std::net::AddrParseError,
    },
    /// `KEYROT_JWKS_MIN_REFRESH_MS` is not a number.
    #[error("KEYROT_JWKS_MIN_REFRESH_MS={value:?} is not a number of milliseconds")]
    MinRefresh {
        /// The value given.
        value: String,
        /// Why it does not parse.
        #[source]
        source: std::num::ParseIntError,
    },
    /// The issuer's keys could not be fetched at start.
    #[error("cannot load the issuer's keys")]
    Jwks(#[source] JwksError),
    /// The listener could not be bound, or serving failed.
    #[error("cannot serve on {listen}")]
    Serve {
        /// The address.
        listen: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal, never with NO_COLOR: logs in files carry no escapes.
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("resource-server: {}", ErrorChain(&e));
            ExitCode::from(2)
        }
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The verifier the environment describes.
async fn verifier() -> Result<JwksVerifier, SetupError> {
    let issuer = env("KEYROT_ISSUER");
    let mut validation = Validation::new();
    if let Some(iss) = &issuer {
        validation = validation.with_issuer(iss.clone());
    }
    if let Some(aud) = env("KEYROT_AUDIENCE").or_else(|| issuer.clone()) {
        validation = validation.with_audience(aud);
    }
    let mut builder = JwksVerifier::builder().validation(validation);
    builder = match (env("KEYROT_JWKS_URL"), issuer) {
        (Some(url), Some(iss)) => builder.jwks_url(url).issuer(iss),
        (Some(url), None) => builder.jwks_url(url),
        (None, Some(iss)) => builder.issuer(iss),
        (None, None) => return Err(SetupError::NoSource),
    };
    if let Some(value) = env("KEYROT_JWKS_MIN_REFRESH_MS") {
        let ms: u64 = value
            .trim()
            .parse()
            .map_err(|source| SetupError::MinRefresh { value, source })?;
        builder = builder.min_refresh(Duration::from_millis(ms));
    }
    builder.build().await.map_err(SetupError::Jwks)
}

async fn run() -> Result<(), SetupError> {
    let value = env("KEYROT_LISTEN").unwrap_or_else(|| "127.0.0.1:8090".into());
    let listen: SocketAddr = value.parse().map_err(|source| SetupError::Listen { value, source })?;
    let verifier = verifier().await?;
    let router = Router::new()
        .route(ME_PATH, get(me))
        .layer(BearerAuthLayer::new(BearerAuth::with_verifier(Arc::new(verifier))));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| SetupError::Serve { listen, source })?;
    println!("resource-server on http://{listen}: GET {ME_PATH} verifies bearer tokens; holds no key material");
    println!("ready");
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|source| SetupError::Serve { listen, source })
}

/// The protected route: the verified claims and the key that signed them.
async fn me(Token(verified): Token) -> Response {
    let body = serde_json::json!({ "kid": verified.kid, "claims": verified.claims });
    into_axum_response(HttpResponse::json(200, &body))
}
