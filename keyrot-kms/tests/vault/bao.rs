//! A real OpenBao dev server per test, on a free 127.0.0.1 port (`KEYROT_TEST_BAO`, or
//! `bao` on PATH; `.ci/custody/vault.sh` installs it), with the transit engine at
//! `transit/`. Shared by the Transit tests.
#![allow(dead_code)]

use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `bao server -dev`, killed on drop (panics included).
pub struct Bao {
    pub child: Child,
    pub addr: String,
    pub root: String,
    pub dir: PathBuf,
    pub http: reqwest::Client,
}

impl Drop for Bao {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn bao_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("KEYROT_TEST_BAO").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join("bao"))
        .find(|p| p.is_file())
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// Starts a dev server with the transit engine at `transit/`, or says why not (and fails
/// under `CI=true`).
pub async fn start(test: &str) -> Option<Bao> {
    start_with(test, false).await
}

/// [`start`], over TLS with a generated CA (`ca.pem` in `Bao::dir`) when `tls`.
pub async fn start_with(test: &str, tls: bool) -> Option<Bao> {
    let Some(bin) = bao_binary() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{test}: no bao binary (set KEYROT_TEST_BAO) and CI=true"
        );
        println!("skipped {test}: no bao binary (set KEYROT_TEST_BAO or put bao on PATH)");
        return None;
    };
    let dir = std::env::temp_dir().join(unique("keyrot-bao"));
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let root = unique("root-token");
    let mut cmd = Command::new(bin);
    cmd.args(["server", "-dev", "-dev-no-store-token"])
        .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
        .arg(format!("-dev-root-token-id={root}"))
        .env("HOME", &dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if tls {
        cmd.arg("-dev-tls").arg(format!("-dev-tls-cert-dir={}", dir.display()));
    }
    let child = cmd.spawn().unwrap();
    let scheme = if tls { "https" } else { "http" };
    let mut bao = Bao {
        child,
        addr: format!("{scheme}://127.0.0.1:{port}"),
        root,
        dir,
        http: reqwest::Client::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "{test}: bao did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(5));
        if tls {
            let Ok(pem) = std::fs::read(bao.dir.join("vault-ca.pem")) else {
                continue;
            };
            builder = builder.tls_certs_only(reqwest::Certificate::from_pem_bundle(&pem).unwrap());
        }
        bao.http = builder.build().unwrap();
        let up = bao.http.get(format!("{}/v1/sys/health", bao.addr)).send().await;
        if up.is_ok_and(|r| r.status().is_success()) {
            break;
        }
    }
    bao.admin("POST", "sys/mounts/transit", json!({"type": "transit"}))
        .await;
    Some(bao)
}

impl Bao {
    /// A request as root; panics unless it succeeds.
    pub async fn admin(&self, method: &str, path: &str, body: Value) -> Value {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let resp = self
            .http
            .request(method, format!("{}/v1/{path}", self.addr))
            .header("X-Vault-Token", &self.root)
            .body(serde_json::to_vec(&body).unwrap())
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert!(status.is_success(), "{path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    pub fn env(&self, extra: &[(&str, &str)]) -> HashMap<String, String> {
        let mut env = HashMap::from([("VAULT_ADDR".to_owned(), self.addr.clone())]);
        env.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        env
    }
}
