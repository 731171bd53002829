//! The load generator: keep-alive HTTP/1.1 connections (hyper) over loopback, each sending
//! one request at a time (a closed loop: the concurrency is the number of connections).
//! Every response's status is checked; anything but 200 fails the run. Shared by
//! `--bench load` (`GET /api/me`) and `--bench token_load` (`POST /demo/login`).

use crate::population::{Rng, Zipf};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// What went wrong during a load window (never carries a token).
pub type LoadError = Box<dyn std::error::Error + Send + Sync>;

/// The verifying route under load.
pub const ME_PATH: &str = "/api/me";
/// The signing route under load: the quickstart's demo login, which signs a token.
pub const LOGIN_PATH: &str = "/demo/login";

/// Which route a load window sends its requests to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `GET /api/me` with the user's token: verification.
    Me,
    /// `POST /demo/login` as the user: a token signed per request.
    Login,
}

/// One keep-alive connection.
struct Conn {
    sender: SendRequest<Full<Bytes>>,
    host: HeaderValue,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Result<Self, LoadError> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Self {
            sender,
            host: HeaderValue::from_str(&addr.to_string())?,
        })
    }

    /// Sends `request` and reads the whole response.
    async fn send(&mut self, request: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes), LoadError> {
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    /// `GET /api/me` with `authorization`.
    async fn get_me(&mut self, authorization: &HeaderValue) -> Result<(StatusCode, Bytes), LoadError> {
        let request = Request::builder()
            .method(Method::GET)
            .uri(ME_PATH)
            .header(HOST, self.host.clone())
            .header(AUTHORIZATION, authorization.clone())
            .body(Full::new(Bytes::new()))?;
        self.send(request).await
    }

    /// `POST /demo/login` as `username`.
    async fn post_login(&mut self, username: &str) -> Result<(StatusCode, Bytes), LoadError> {
        let body = serde_json::json!({ "username": username, "scope": "read" }).to_string();
        let request = Request::builder()
            .method(Method::POST)
            .uri(LOGIN_PATH)
            .header(HOST, self.host.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))?;
        self.send(request).await
    }

    /// A demo user token from the quickstart's `POST /demo/login`, as an `Authorization`
    /// header value.
    async fn login(&mut self, username: &str) -> Result<HeaderValue, LoadError> {
        let (status, body) = self.post_login(username).await?;
        if status != StatusCode::OK {
            return Err(format!("POST {LOGIN_PATH} answered {status}").into());
        }
        let value: serde_json::Value = serde_json::from_slice(&body)?;
        let token = value["access_token"]
            .as_str()
            .ok_or("the login answer has no access_token")?;
        let mut header = HeaderValue::from_str(&format!("Bearer {token}"))?;
        header.set_sensitive(true);
        Ok(header)
    }
}

/// Logs in `users` demo users (`user-00000`, …) at the quickstart on `addr` over a few
/// connections; returns their `Authorization` headers, indexed by user.
pub async fn fetch_tokens(addr: SocketAddr, users: usize) -> Result<Vec<HeaderValue>, LoadError> {
    const PARALLEL: usize = 8;
    let mut tasks = JoinSet::new();
    for part in 0..PARALLEL {
        tasks.spawn(async move {
            let mut conn = Conn::open(addr).await?;
            let mut out = Vec::new();
            for user in (part..users).step_by(PARALLEL) {
                out.push((user, conn.login(&format!("user-{user:05}")).await?));
            }
            Ok::<_, LoadError>(out)
        });
    }
    let mut tokens = vec![HeaderValue::from_static(""); users];
    while let Some(part) = tasks.join_next().await {
        for (user, header) in part?? {
            tokens[user] = header;
        }
    }
    Ok(tokens)
}

/// What to send in a load window.
#[derive(Debug, Clone)]
pub struct Load {
    /// Where the requests go.
    pub route: Route,
    /// The users' `Authorization` headers ([`Route::Me`]).
    pub tokens: Arc<Vec<HeaderValue>>,
    /// Who sends the next request.
    pub zipf: Arc<Zipf>,
    /// Keep-alive connections, each with one request in flight.
    pub connections: usize,
    /// How long the window lasts.
    pub duration: Duration,
    /// Seeds the users' sequence (connection `i` uses `seed + i`).
    pub seed: u64,
}

/// What a load window measured.
#[derive(Debug, Default)]
pub struct Window {
    /// Every request's latency in microseconds.
    pub latencies_us: Vec<u32>,
    /// The user of every request.
    pub users: Vec<u32>,
    /// From the first request until the last connection finished.
    pub elapsed: Duration,
}

/// One connection's closed loop until `deadline`.
async fn drive(mut conn: Conn, load: Load, index: usize, deadline: Instant) -> Result<Window, LoadError> {
    let mut rng = Rng::new(load.seed.wrapping_add(index as u64));
    let mut out = Window::default();
    while Instant::now() < deadline {
        let user = load.zipf.sample(&mut rng);
        let started = Instant::now();
        let (status, body) = match load.route {
            Route::Me => conn.get_me(&load.tokens[user]).await?,
            Route::Login => conn.post_login(&format!("user-{user:05}")).await?,
        };
        let micros = started.elapsed().as_micros();
        if status != StatusCode::OK || body.is_empty() {
            return Err(format!("{:?} answered {status} for user-{user:05}", load.route).into());
        }
        out.latencies_us.push(u32::try_from(micros).unwrap_or(u32::MAX));
        out.users.push(u32::try_from(user)?);
    }
    Ok(out)
}

/// Opens the connections to `addr`, then drives them all for `load.duration`.
pub async fn window(addr: SocketAddr, load: &Load) -> Result<Window, LoadError> {
    let mut conns = Vec::with_capacity(load.connections);
    for _ in 0..load.connections {
        conns.push(Conn::open(addr).await?);
    }
    let started = Instant::now();
    let deadline = started + load.duration;
    let mut tasks = JoinSet::new();
    for (index, conn) in conns.into_iter().enumerate() {
        tasks.spawn(drive(conn, load.clone(), index, deadline));
    }
    join(tasks, started).await
}

/// The windows of every connection's loop as one, timed from `started`.
pub async fn join(mut tasks: JoinSet<Result<Window, LoadError>>, started: Instant) -> Result<Window, LoadError> {
    let mut all = Window::default();
    while let Some(part) = tasks.join_next().await {
        let part = part??;
        all.latencies_us.extend(part.latencies_us);
        all.users.extend(part.users);
    }
    all.elapsed = started.elapsed();
    Ok(all)
}
