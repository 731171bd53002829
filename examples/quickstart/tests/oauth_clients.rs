//! Standard OAuth clients consume the quickstart's RFC 8414 metadata as they are: node's
//! `oauth4webapi` (`discoveryRequest` + `processDiscoveryResponse`, then a client
//! credentials grant at the discovered token endpoint) and Python's `authlib` (its
//! `AuthorizationServerMetadata` validators, then `OAuth2Session.fetch_token` with
//! `client_secret_basic` and `client_secret_post`). The quickstart has no authorization
//! endpoint, so it serves no OpenID Connect document and oauth4webapi's OpenID discovery
//! fails. oauth4webapi's `validateJwtAccessToken` then accepts the service token and a
//! demo-login user token as RFC 9068 access tokens (`typ` `at+jwt`, every required claim,
//! the discovered JWKS), and refuses each tampered, for another audience and expired. The
//! clients are installed from npm and PyPI into the target directory at the
//! first run; with `CI=true` a failed install fails the test.

use keyrot_examples_support::testing;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const CLIENT_ID: &str = "scheduler";
const CLIENT_SECRET: &str = "oauth-clients-test-secret-0123456789";

/// The quickstart on its embedded SQLite default, in a directory of its own.
struct Quickstart {
    child: Child,
    dir: PathBuf,
    issuer: String,
}

impl Drop for Quickstart {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start() -> Quickstart {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let dir = std::env::temp_dir().join(format!("keyrot-oauth-clients-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_quickstart"))
        .current_dir(&dir)
        .env_remove("KEYROT_DATABASE_URL")
        .env_remove("KEYROT_MASTER_KEY")
        .env_remove("KEYROT_ISSUER")
        .env("KEYROT_LISTEN", format!("127.0.0.1:{port}"))
        .env("KEYROT_SCHEDULER_CLIENT_SECRET", CLIENT_SECRET)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the quickstart");
    testing::wait_for_ready(&mut child, "the quickstart", Duration::from_secs(60));
    Quickstart {
        child,
        dir,
        issuer: format!("http://127.0.0.1:{port}"),
    }
}

fn node_with_oauth4webapi() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("node-oauth4webapi");
    let installed = |d: &Path| d.join("node_modules").join("oauth4webapi").is_dir();
    if !installed(&dir) {
        let _ = std::fs::create_dir_all(&dir);
        let ok = Command::new("npm")
            .args(["install", "--silent", "--no-audit", "--no-fund", "--prefix"])
            .arg(&dir)
            .arg("oauth4webapi@3")
            .status()
            .is_ok_and(|s| s.success());
        if !ok || !installed(&dir) {
            return testing::unavailable("node's oauth4webapi");
        }
    }
    Some(dir)
}

fn python_with_authlib() -> Option<PathBuf> {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("authlib-venv");
    testing::python_venv(
        &venv,
        &["authlib>=1.3", "requests>=2.31"],
        "authlib, requests",
        "Python's authlib",
    )
}

/// Runs `command`, which prints one JSON object, and parses it.
fn run(what: &str, command: &mut Command) -> serde_json::Value {
    let out = command.output().unwrap_or_else(|e| panic!("run {what}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{what} failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{what} printed no JSON ({e}): {stdout}"))
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("clients")
        .join(name)
}

#[test]
fn oauth4webapi_discovers_the_metadata_and_gets_a_token() {
    let Some(dir) = node_with_oauth4webapi() else { return };
    let q = start();
    // Copied next to node_modules, so that `import 'oauth4webapi'` resolves.
    let copy = dir.join("oauth4webapi.mjs");
    std::fs::copy(script("oauth4webapi.mjs"), &copy).expect("copy the script");
    let out = run(
        "oauth4webapi",
        Command::new("node")
            .arg(&copy)
            .args([&q.issuer, CLIENT_ID, CLIENT_SECRET]),
    );
    assert_eq!(out["issuer"], q.issuer.as_str());
    assert_eq!(out["token_endpoint"], format!("{}/oauth/token", q.issuer));
    assert_eq!(out["jwks_uri"], format!("{}/.well-known/jwks.json", q.issuer));
    assert_eq!(out["grant_types_supported"], serde_json::json!(["client_credentials"]));
    assert_eq!(out["response_types_supported"], serde_json::json!([]));
    assert_eq!(
        out["token_endpoint_auth_methods_supported"],
        serde_json::json!(["client_secret_basic", "client_secret_post"])
    );
    assert_eq!(out["token_type"], "bearer", "oauth4webapi lower-cases it: {out}");
    assert_eq!(out["access_token_parts"], 3, "a JWS compact token");
    let validated = &out["validated"];
    for (who, sub, client_id) in [("service", CLIENT_ID, CLIENT_ID), ("user", "alice", "demo-web")] {
        let v = &validated[who];
        assert_eq!(v["as_issued"]["accepted"], true, "{who}: {out}");
        assert_eq!(v["as_issued"]["sub"], sub, "{who}: {out}");
        assert_eq!(v["as_issued"]["client_id"], client_id, "{who}: {out}");
        for (case, reason) in [("tampered", "signature"), ("wrong_audience", "aud"), ("expired", "exp")] {
            assert_eq!(v[case]["accepted"], false, "{who} {case}: {out}");
            let why = v[case]["reason"].as_str().unwrap_or_default();
            assert!(why.contains(reason), "{who} {case} refused for another reason: {why}");
        }
    }
    assert_eq!(validated["user"]["as_issued"]["scope"], "profile read");
    assert_eq!(validated["service"]["as_issued"]["scope"], "service.rotate-keys");
    let openid = out["openid"].as_str().unwrap_or_default();
    assert!(
        openid.starts_with("refused"),
        "no OpenID document without an authorization endpoint: {openid}"
    );
}

#[test]
fn authlib_validates_the_metadata_and_gets_tokens() {
    let Some(python) = python_with_authlib() else { return };
    let q = start();
    let out = run(
        "authlib",
        Command::new(&python)
            .arg(script("authlib_client.py"))
            .args([&q.issuer, CLIENT_ID, CLIENT_SECRET]),
    );
    assert_eq!(out["issuer"], q.issuer.as_str());
    let verdicts = out["verdicts"].as_object().expect("verdicts");
    assert!(verdicts.len() >= 20, "authlib ran its validators: {out}");
    for (member, verdict) in verdicts {
        if member == "response_types_supported" {
            // authlib wants a non-empty list; RFC 7591 §2: no response type without an
            // authorization endpoint. keyrot lists the empty one RFC 8414 requires.
            continue;
        }
        assert_eq!(verdict, "ok", "authlib refuses {member}: {out}");
    }
    for method in ["client_secret_basic", "client_secret_post"] {
        assert_eq!(out["tokens"][method]["token_type"], "Bearer", "{method}: {out}");
        assert_eq!(out["tokens"][method]["parts"], 3, "{method}: {out}");
    }
}
