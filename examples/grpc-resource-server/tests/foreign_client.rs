//! The example as a real process: it fetches a ring's JWKS over HTTP (served here through
//! keyrot-axum), and Python's `grpcio` calls it with a token, without one and with a
//! tampered one, and checks its health without one. grpcio is installed from PyPI into the
//! target directory at the first run; with `CI=true` a failed install fails the test.

use keyrot_core::{
    AccessToken, KeyRing, MasterKey, MasterKeySealer, MemoryLock, MemoryStorage, RequestContext, RingName, Rotator,
};
use keyrot_examples_support::testing;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

const AUDIENCE: &str = "https://grpc.example";

fn python_with_grpcio() -> Option<PathBuf> {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("grpcio-venv");
    testing::python_venv(&venv, &["grpcio>=1.60"], "grpc", "Python's grpcio")
}

/// The example binary; killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_example(jwks_url: &str, issuer: &str, listen: &str) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_grpc-resource-server"))
        .env("KEYROT_JWKS_URL", jwks_url)
        .env("KEYROT_ISSUER", issuer)
        .env("KEYROT_AUDIENCE", AUDIENCE)
        .env("KEYROT_LISTEN", listen)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start grpc-resource-server");
    testing::wait_for_ready(&mut child, "grpc-resource-server", Duration::from_secs(30));
    Server(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_calls_the_example_with_and_without_a_token() {
    let Some(python) = python_with_grpcio() else { return };
    // The issuer: a ring whose JWKS keyrot-axum serves.
    let storage = Arc::new(MemoryStorage::new());
    let sealer = Arc::new(MasterKeySealer::new(MasterKey::generate("mk").expect("mk"), []).expect("sealer"));
    let name = RingName::new("grpc-issuer").expect("ring");
    let keyring = KeyRing::builder(name.clone(), storage.clone(), sealer.clone())
        .build()
        .await
        .expect("keyring");
    let rotator = Rotator::builder(name, storage, Arc::new(MemoryLock::default()), sealer)
        .with_keyring(keyring.clone())
        .build();
    rotator.init(RequestContext::actor("test")).await.expect("init");
    let endpoints = keyrot_axum::HttpEndpoints::builder(keyring.clone(), rotator)
        .build()
        .expect("endpoints");
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let issuer = format!("http://{}", http.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(http, keyrot_axum::routes(endpoints)).await });

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let listen = format!("127.0.0.1:{port}");
    let _server = start_example(&format!("{issuer}/.well-known/jwks.json"), &issuer, &listen);

    let issued = keyring
        .issue_access_token(&AccessToken::new(&issuer, "alice", "grpc-client", AUDIENCE))
        .await
        .expect("access token");
    let out = Command::new(&python)
        .arg(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests")
                .join("grpcio_client.py"),
        )
        .args([&listen, issued.token()])
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "grpcio client failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON");
    assert_eq!(out["with_token"]["code"], "OK", "{out}");
    assert_eq!(out["with_token"]["sub"], "alice", "{out}");
    assert_eq!(out["without_token"]["code"], "UNAUTHENTICATED", "{out}");
    assert_eq!(out["without_token"]["details"], "a bearer token is required", "{out}");
    assert_eq!(out["tampered"]["code"], "UNAUTHENTICATED", "{out}");
    assert_eq!(out["tampered"]["details"], "the access token is not valid", "{out}");
    assert_eq!(out["health"]["code"], "OK", "{out}");
    assert_eq!(out["health"]["status"], 1, "SERVING: {out}");
}
