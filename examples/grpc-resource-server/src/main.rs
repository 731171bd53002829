//! A gRPC resource server that verifies another service's tokens and holds no key
//! material: `cargo run -p grpc-resource-server`.
//!
//! Configuration: `KEYROT_JWKS_URL`, `KEYROT_ISSUER`, `KEYROT_AUDIENCE`,
//! `KEYROT_JWKS_MIN_REFRESH_MS` as `keyrot_examples_support::remote` reads them (the HTTP
//! resource server's), and `KEYROT_LISTEN` (default `127.0.0.1:50051`).
//!
//! `keyrot.example.v1.Me/Get` answers the caller's `sub`, and refuses a call without a
//! valid token with `UNAUTHENTICATED`; the standard health service
//! (`grpc.health.v1.Health`) answers without one.

use grpc_resource_server::{ME_GET_PATH, auth_layer, serve};
use keyrot_core::ErrorChain;
use keyrot_examples_support::remote::{RemoteSetupError, listen_address, remote_verifier_from_env};
use std::process::ExitCode;
use std::sync::Arc;

#[tokio::main]
async fn main() -> ExitCode {
    keyrot_examples_support::quickstart::init_tracing_with("info");
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("grpc-resource-server: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run() -> Result<(), String> {
    let listen = listen_address("127.0.0.1:50051").map_err(|e| ErrorChain(&e).to_string())?;
    let verifier = remote_verifier_from_env()
        .await
        .map_err(|e| ErrorChain(&e).to_string())?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| ErrorChain(&RemoteSetupError::Serve { listen, source }).to_string())?;
    println!("grpc-resource-server on {listen}: {ME_GET_PATH} verifies bearer tokens; holds no key material");
    println!("ready");
    serve(listener, auth_layer(Arc::new(verifier)), async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
    .map_err(|e| format!("serving on {listen} failed: {}", ErrorChain(&e)))
}
