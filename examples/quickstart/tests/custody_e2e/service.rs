//! The quickstart as a child process and the HTTP calls the scenarios make.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Short intervals so that forced rotations are never rate limited.
pub const FAST_POLICY: [(&str, &str); 6] = [
    ("KEYROT_POLICY_MIN_INTERVAL_MS", "1"),
    ("KEYROT_POLICY_FORCED_MIN_INTERVAL_MS", "1"),
    ("KEYROT_POLICY_PUBLISH_LEAD_MS", "1"),
    ("KEYROT_POLICY_JWKS_MAX_AGE_MS", "0"),
    ("KEYROT_POLICY_VERIFIER_CACHE_MS", "0"),
    ("KEYROT_POLICY_CLOCK_SKEW_MS", "0"),
];

pub fn unique(prefix: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()))
}

pub fn skip(test: &str, why: &str) {
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{test}: {why} (CI=true)");
    println!("skipped {test}: {why}");
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A folder removed on drop.
pub struct Dir(pub PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The running quickstart, killed on drop.
pub struct Service {
    child: Child,
    pub banner: String,
    pub base: String,
    pub port: u16,
    /// The custody environment it was started with.
    pub env: Vec<(String, String)>,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the quickstart in `dir` on `port` with the custody `uri` (empty: a local master
/// key file) and `env`, and waits for `ready`.
pub fn start(dir: &Path, port: u16, uri: &str, env: &[(String, String)]) -> Service {
    let mut c = Command::new(env!("CARGO_BIN_EXE_quickstart"));
    c.current_dir(dir)
        .envs(FAST_POLICY)
        .env_remove("KEYROT_MASTER_KEY")
        .env_remove("KEYROT_MASTER_KEY_FILE")
        .env_remove("KEYROT_DATABASE_URL")
        .env("KEYROT_MASTER_KEY_URI", uri)
        .env("KEYROT_CUSTODY_PROBE_SECONDS", "1")
        .env("KEYROT_LISTEN", format!("127.0.0.1:{port}"))
        .env("KEYROT_TICK_SECONDS", "3600")
        .env("RUST_LOG", "warn")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if uri.is_empty() {
        c.env_remove("KEYROT_MASTER_KEY_URI");
    }
    let mut child = c.spawn().unwrap();
    let banner =
        keyrot_examples_support::testing::wait_for_ready(&mut child, "the quickstart", Duration::from_secs(60));
    Service {
        child,
        banner,
        base: format!("http://127.0.0.1:{port}"),
        port,
        env: env.to_vec(),
    }
}

pub fn secret_from_banner(banner: &str, client: &str) -> String {
    banner
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("client {client}")))
        .and_then(|l| l.split("secret ").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .expect("generated secret in the banner")
        .to_owned()
}

pub async fn json(r: reqwest::Response) -> (u16, serde_json::Value) {
    let status = r.status().as_u16();
    let body = r.bytes().await.unwrap();
    (status, serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null))
}

/// A client-credentials token of `client` (with `scope` when given).
pub async fn client_token(svc: &Service, client: &str, scope: Option<&str>) -> String {
    let secret = secret_from_banner(&svc.banner, client);
    let mut body = "grant_type=client_credentials".to_owned();
    if let Some(s) = scope {
        body.push_str(&format!("&scope={s}"));
    }
    let r = reqwest::Client::new()
        .post(format!("{}/oauth/token", svc.base))
        .basic_auth(client, Some(&secret))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    let (status, v) = json(r).await;
    assert_eq!(status, 200, "{v}");
    v["access_token"].as_str().unwrap().to_owned()
}

/// `POST /demo/login` as bob, the response as it came (a 503 while the backend is away).
pub async fn login_response(svc: &Service) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/demo/login", svc.base))
        .header("content-type", "application/json")
        .body(r#"{"username":"bob","scope":"read"}"#)
        .send()
        .await
        .unwrap()
}

/// bob's token from `POST /demo/login`.
pub async fn login(svc: &Service) -> String {
    let (status, v) = json(login_response(svc).await).await;
    assert_eq!(status, 200, "{v}");
    v["access_token"].as_str().unwrap().to_owned()
}

pub async fn me(svc: &Service, token: &str) -> u16 {
    reqwest::Client::new()
        .get(format!("{}/api/me", svc.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// `POST /internal/rotate-keys` forced, with the break-glass client: the status and body.
pub async fn force_rotate(svc: &Service, reason: &str) -> (u16, serde_json::Value) {
    let token = client_token(svc, "breakglass", Some("admin.force-rotate-keys")).await;
    let r = reqwest::Client::new()
        .post(format!("{}/internal/rotate-keys", svc.base))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(format!(r#"{{"force":true,"reason":"{reason}"}}"#))
        .send()
        .await
        .unwrap();
    json(r).await
}

/// `GET /internal/keys/status` with the scheduler client.
pub async fn status(svc: &Service) -> serde_json::Value {
    let token = client_token(svc, "scheduler", None).await;
    status_with(svc, &token).await
}

/// `GET /internal/keys/status` with a scheduler token issued before (for when the token
/// endpoint cannot sign).
pub async fn status_with(svc: &Service, token: &str) -> serde_json::Value {
    let r = reqwest::Client::new()
        .get(format!("{}/internal/keys/status", svc.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let (code, v) = json(r).await;
    assert_eq!(code, 200, "{v}");
    v
}
