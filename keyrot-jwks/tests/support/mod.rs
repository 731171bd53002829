//! A real HTTP server on 127.0.0.1 that counts requests and answers what the test sets,
//! plus token and JWKS fixtures signed with keyrot.
#![allow(dead_code)]

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Response, StatusCode};
use keyrot_core::testing::token::{encode_header, sign};
use keyrot_core::{Algorithm, PrivateKey, RsaBits};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the server answers on one path.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub delay: Duration,
}

impl Reply {
    pub fn ok(body: Vec<u8>) -> Self {
        Reply {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body,
            delay: Duration::ZERO,
        }
    }

    pub fn status(status: u16) -> Self {
        Reply {
            status,
            headers: Vec::new(),
            body: b"oops".to_vec(),
            delay: Duration::ZERO,
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }
}

#[derive(Default)]
struct Shared {
    replies: Mutex<HashMap<String, Reply>>,
    hits: Mutex<HashMap<String, Vec<Instant>>>,
    if_none_match: Mutex<Vec<Option<String>>>,
}

pub struct Server {
    pub base: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let shared = Arc::new(Shared::default());
        let app = axum::Router::new().fallback(handle).with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Server { base, shared, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn set(&self, path: &str, reply: Reply) {
        self.shared.replies.lock().expect("lock").insert(path.into(), reply);
    }

    pub fn hits(&self, path: &str) -> usize {
        self.hit_times(path).len()
    }

    /// When each request for `path` arrived, in order.
    pub fn hit_times(&self, path: &str) -> Vec<Instant> {
        self.shared
            .hits
            .lock()
            .expect("lock")
            .get(path)
            .cloned()
            .unwrap_or_default()
    }

    /// The `If-None-Match` of every request, in order.
    pub fn if_none_match(&self) -> Vec<Option<String>> {
        self.shared.if_none_match.lock().expect("lock").clone()
    }

    /// Closes the listening socket: new connections are refused.
    pub fn stop(&self) {
        self.task.abort();
    }
}

async fn handle(State(s): State<Arc<Shared>>, req: Request) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let inm = req
        .headers()
        .get("if-none-match")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    s.hits
        .lock()
        .expect("lock")
        .entry(path.clone())
        .or_default()
        .push(Instant::now());
    s.if_none_match.lock().expect("lock").push(inm.clone());
    let reply = s.replies.lock().expect("lock").get(&path).cloned();
    let Some(reply) = reply else {
        return Response::builder().status(404).body(Body::empty()).expect("response");
    };
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let etag = reply
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("etag"))
        .map(|(_, v)| v.clone());
    let not_modified = reply.status == 200 && etag.is_some() && inm == etag;
    let mut response = Response::new(if not_modified {
        Body::empty()
    } else {
        Body::from(reply.body.clone())
    });
    *response.status_mut() = if not_modified {
        StatusCode::NOT_MODIFIED
    } else {
        StatusCode::from_u16(reply.status).expect("status")
    };
    for (n, v) in &reply.headers {
        response.headers_mut().append(
            HeaderName::from_bytes(n.as_bytes()).expect("name"),
            HeaderValue::from_str(v).expect("value"),
        );
    }
    response
}

/// A client without connection reuse, so a stopped server is unreachable at once.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client")
}

pub fn ed25519() -> PrivateKey {
    PrivateKey::generate(Algorithm::EdDsa, RsaBits::B2048).expect("key")
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs() as i64
}

/// A token signed by `key` under `kid`, with `claims` plus an `exp` ten minutes ahead.
pub fn token_with(key: &PrivateKey, kid: &str, mut claims: Value) -> String {
    let now = now();
    claims["exp"] = json!(now + 600);
    sign(
        &key.signing_key(),
        &encode_header(key.algorithm(), kid),
        &claims,
        now,
        3600,
    )
    .expect("sign")
}

pub fn token(key: &PrivateKey, kid: &str) -> String {
    token_with(key, kid, json!({"sub": "alice"}))
}

pub fn jwk(key: &PrivateKey, kid: &str) -> Value {
    key.public_key().to_jwk(kid)
}

pub fn jwks(keys: &[Value]) -> Vec<u8> {
    serde_json::to_vec(&json!({ "keys": keys })).expect("json")
}

/// Polls `condition` every 5 ms until it holds; panics, naming `what`, once `deadline`
/// has passed without it.
pub async fn wait_until(what: &str, deadline: Duration, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(
            started.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

pub fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}
