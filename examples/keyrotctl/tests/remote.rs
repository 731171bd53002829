//! `keyrotctl verify --jwks-url` / `--issuer`: the real binary against a real HTTP server.

use keyrot_core::testing::token::{encode_header, sign};
use keyrot_core::{Algorithm, PrivateKey, RsaBits};
use serde_json::json;

async fn serve(routes: Vec<(&'static str, serde_json::Value)>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let mut app = axum::Router::new();
    for (path, body) in routes {
        let body = serde_json::to_vec(&body).expect("json");
        app = app.route(path, axum::routing::get(move || async move { body }));
    }
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    base
}

fn token(key: &PrivateKey, kid: &str, iss: &str) -> String {
    let now = chrono::Utc::now().timestamp();
    let claims = json!({"sub": "alice", "iss": iss, "exp": now + 600});
    sign(
        &key.signing_key(),
        &encode_header(key.algorithm(), kid),
        &claims,
        now,
        3600,
    )
    .expect("sign")
}

/// Runs keyrotctl; returns its exit code and standard output.
async fn ctl(args: Vec<String>) -> (i32, String) {
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_keyrotctl"))
            .args(&args)
            .env_remove("KEYROT_DATABASE_URL")
            .output()
            .expect("run keyrotctl")
    })
    .await
    .expect("join");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_against_a_remote_issuer() {
    let key = PrivateKey::generate(Algorithm::EdDsa, RsaBits::B2048).expect("key");
    let jwks = json!({"keys": [key.public_key().to_jwk("k1")]});
    let base = serve(vec![("/keys", jwks)]).await;
    let issuer = base.clone();
    let jwks_url = format!("{base}/keys");
    let good = token(&key, "k1", &issuer);

    let (code, out) = ctl(args(&["verify", "--jwks-url", &jwks_url, &good])).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("\"alice\""), "{out}");

    let forged = token(
        &PrivateKey::generate(Algorithm::EdDsa, RsaBits::B2048).expect("key"),
        "k1",
        &issuer,
    );
    let (code, out) = ctl(args(&["verify", "--jwks-url", &jwks_url, &forged])).await;
    assert_eq!(code, 1, "bad signature: {out}");
    assert!(out.contains("BadSignature"), "{out}");

    let later = (chrono::Utc::now().timestamp() + 7200).to_string();
    let (code, _) = ctl(args(&["verify", "--jwks-url", &jwks_url, "--at", &later, &good])).await;
    assert_eq!(code, 1, "expired as of --at");

    // --issuer with a JWKS URL: the issuer is the required iss.
    let (code, _) = ctl(args(&[
        "verify",
        "--jwks-url",
        &jwks_url,
        "--issuer",
        "https://other.example",
        &good,
    ]))
    .await;
    assert_eq!(code, 1, "another issuer");

    let (code, _) = ctl(args(&["verify", "--jwks-url", "http://127.0.0.1:9/keys", &good])).await;
    assert_eq!(code, 2, "unreachable issuer");
    let (code, _) = ctl(args(&["verify", "--jwks-url", "http://id.example/keys", &good])).await;
    assert_eq!(code, 2, "plain http off loopback");
    let (code, _) = ctl(args(&[
        "--database-url",
        "sqlite::memory:",
        "verify",
        "--jwks-url",
        &jwks_url,
        &good,
    ]))
    .await;
    assert_eq!(code, 2, "remote and the local ring are exclusive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_by_issuer_discovery() {
    let key = PrivateKey::generate(Algorithm::EdDsa, RsaBits::B2048).expect("key");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let issuer = format!("http://{}", listener.local_addr().expect("addr"));
    let meta = serde_json::to_vec(&json!({"issuer": issuer, "jwks_uri": format!("{issuer}/keys")})).expect("json");
    let jwks = serde_json::to_vec(&json!({"keys": [key.public_key().to_jwk("k1")]})).expect("json");
    let app = axum::Router::new()
        .route(
            "/.well-known/openid-configuration",
            axum::routing::get(move || async move { meta }),
        )
        .route("/keys", axum::routing::get(move || async move { jwks }));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let (code, out) = ctl(args(&["verify", "--issuer", &issuer, &token(&key, "k1", &issuer)])).await;
    assert_eq!(code, 0, "{out}");
    let (code, _) = ctl(args(&[
        "verify",
        "--issuer",
        &issuer,
        &token(&key, "k1", "https://other.example"),
    ]))
    .await;
    assert_eq!(code, 1, "iss must be the issuer");
    let (code, _) = ctl(args(&[
        "verify",
        "--issuer",
        &format!("{issuer}/nowhere"),
        &token(&key, "k1", &issuer),
    ]))
    .await;
    assert_eq!(code, 2, "no discovery document");
}
