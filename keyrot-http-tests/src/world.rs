//! One test's world: a ring on MemoryStorage, a manual clock, a running server and an
//! HTTP client.

use crate::{RunningServer, Start, TestApp};
use chrono::{DateTime, TimeDelta, Utc};
use keyrot_core::{
    AuditQuery, AuditRecord, Clock, KeyRing, ManualClock, MasterKey, MasterKeySealer, MemoryLock, MemoryStorage,
    RequestContext, RingManager, RingName, Rotator, Storage,
};
use keyrot_http::{BearerAuth, HttpEndpoints, HttpEndpointsBuilder, TokenSource};
use serde_json::{Value, json};
use std::sync::Arc;

/// The test's starting time (fixed, so answers are reproducible).
pub const T0_UNIX: i64 = 1_900_000_000;

/// One test's world.
pub struct World {
    /// The time everything runs on.
    pub clock: ManualClock,
    /// The shared store ("the database").
    pub storage: Arc<MemoryStorage>,
    /// The rotation lock.
    pub lock: Arc<MemoryLock>,
    /// The sealer.
    pub sealer: Arc<MasterKeySealer>,
    /// The ring's name.
    pub ring: RingName,
    /// The server's key ring.
    pub keyring: KeyRing,
    /// The server's rotator.
    pub rotator: Rotator,
    /// The Active kid after initialisation.
    pub first_kid: String,
    /// The endpoints the server serves.
    pub endpoints: HttpEndpoints,
    /// The ring manager behind the tenant routes (same store and clock).
    pub manager: RingManager,
    client: reqwest::Client,
    base: String,
    _server: RunningServer,
}

impl std::fmt::Debug for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("World")
            .field("base", &self.base)
            .field("ring", &self.ring)
            .finish()
    }
}

/// An HTTP answer, fully read.
#[derive(Debug)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: reqwest::header::HeaderMap,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl Answer {
    /// The first value of a header, as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("the body is JSON")
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl World {
    /// Builds the ring (initialised: one Active key), starts the server and a client.
    pub async fn start(start: Start) -> World {
        Self::start_with(start, |_, b| b).await
    }

    /// [`World::start`] with endpoints configured by `configure` (given the server's key
    /// ring and the builder with the suite's ring and rotator).
    pub async fn start_with(
        start: Start,
        configure: impl FnOnce(&KeyRing, HttpEndpointsBuilder) -> HttpEndpointsBuilder,
    ) -> World {
        Self::start_with_auth(start, configure, async |keyring, _| BearerAuth::new(keyring)).await
    }

    /// [`World::start_with`] whose middleware runs the [`BearerAuth`] `auth` makes (given
    /// the server's key ring, once initialised, and the store); the cookie and header
    /// routes read the token with it from [`crate::TOKEN_COOKIE`] and
    /// [`crate::TOKEN_HEADER`].
    pub async fn start_with_auth(
        start: Start,
        configure: impl FnOnce(&KeyRing, HttpEndpointsBuilder) -> HttpEndpointsBuilder,
        auth: impl AsyncFnOnce(KeyRing, Arc<MemoryStorage>) -> BearerAuth,
    ) -> World {
        let t0 = DateTime::from_timestamp(T0_UNIX, 0).expect("valid start time");
        let clock = ManualClock::new(t0);
        let storage = Arc::new(MemoryStorage::new());
        let lock = Arc::new(MemoryLock::new(Arc::new(clock.clone())));
        let sealer =
            Arc::new(MasterKeySealer::new(MasterKey::generate("mk-test").expect("master key"), []).expect("sealer"));
        let ring = RingName::new("http-suite").expect("ring name");
        let keyring = KeyRing::builder(ring.clone(), storage.clone(), sealer.clone())
            .with_clock(Arc::new(clock.clone()))
            .build()
            .await
            .expect("key ring");
        let rotator = Rotator::builder(ring.clone(), storage.clone(), lock.clone(), sealer.clone())
            .with_clock(Arc::new(clock.clone()))
            .with_keyring(keyring.clone())
            .with_instance("server")
            .build();
        let init = rotator.init(RequestContext::actor("test-setup")).await.expect("init");
        let first_kid = init.new_kid.expect("bootstrap created a key");
        let endpoints = configure(&keyring, HttpEndpoints::builder(keyring.clone(), rotator.clone()))
            .build()
            .expect("endpoints");
        let auth = auth(keyring.clone(), storage.clone()).await;
        let manager = RingManager::builder(storage.clone(), lock.clone(), sealer.clone())
            .with_clock(Arc::new(clock.clone()))
            .with_instance("server")
            .with_issuers(Arc::new(|r: &RingName| crate::tenants::issuer(r.as_str())))
            .build();
        let (tenants, tenant_by_issuer, tenant_by_path, tenant_by_host) = crate::tenants::app(&manager);
        let app = TestApp {
            tenants,
            tenant_by_issuer,
            tenant_by_path,
            tenant_by_host,
            endpoints: endpoints.clone(),
            cookie_auth: auth.clone().with_token_source(TokenSource::cookie(crate::TOKEN_COOKIE)),
            header_auth: auth.clone().with_token_source(TokenSource::header(crate::TOKEN_HEADER)),
            auth,
        };
        let server = start(app).await;
        let base = format!("http://{}", server.addr());
        let client = reqwest::Client::builder().no_proxy().build().expect("http client");
        World {
            clock,
            storage,
            lock,
            sealer,
            ring,
            keyring,
            rotator,
            first_kid,
            endpoints,
            manager,
            client,
            base,
            _server: server,
        }
    }

    /// Now, on the test clock.
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Moves the clock.
    pub fn advance(&self, d: TimeDelta) {
        self.clock.advance(d);
    }

    /// Another instance: its own key ring and rotator on the same store and lock.
    pub async fn other_instance(&self) -> (KeyRing, Rotator) {
        let keyring = KeyRing::builder(self.ring.clone(), self.storage.clone(), self.sealer.clone())
            .with_clock(Arc::new(self.clock.clone()))
            .build()
            .await
            .expect("second key ring");
        let rotator = Rotator::builder(
            self.ring.clone(),
            self.storage.clone(),
            self.lock.clone(),
            self.sealer.clone(),
        )
        .with_clock(Arc::new(self.clock.clone()))
        .with_keyring(keyring.clone())
        .with_instance("other")
        .build();
        (keyring, rotator)
    }

    /// Signs `claims` with the server's Active key.
    pub fn sign(&self, claims: &Value) -> String {
        self.keyring.sign(claims).expect("sign test token")
    }

    /// A service token (`sub == client_id`) with `scope`, living 5 minutes.
    pub fn service_token(&self, client_id: &str, scope: &str) -> String {
        let now = self.now().timestamp();
        self.sign(&json!({ "sub": client_id, "client_id": client_id, "scope": scope, "iat": now, "exp": now + 300 }))
    }

    /// The scheduler's token (normal rotation scope).
    pub fn scheduler_token(&self) -> String {
        self.service_token("scheduler", "service.rotate-keys")
    }

    /// The break-glass client's token (force scope).
    pub fn admin_token(&self) -> String {
        self.service_token("breakglass", "admin.force-rotate-keys")
    }

    /// A user's token (`sub ≠ client_id`) carrying `scope`.
    pub fn user_token(&self, scope: &str) -> String {
        let now = self.now().timestamp();
        self.sign(&json!({ "sub": "alice", "client_id": "web-app", "scope": scope, "iat": now, "exp": now + 300 }))
    }

    /// The ring's generation in storage.
    pub async fn generation(&self) -> u64 {
        self.storage.generation(&self.ring).await.expect("generation")
    }

    /// The audit ledger, oldest first.
    pub async fn audit(&self) -> Vec<AuditRecord> {
        let mut log = self
            .storage
            .audit_log(&self.ring, AuditQuery { limit: 10_000 })
            .await
            .expect("audit log");
        log.reverse();
        log
    }

    /// Sends a request.
    pub async fn send(&self, method: &str, path: &str, headers: &[(&str, String)], body: Option<Vec<u8>>) -> Answer {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        for (n, v) in headers {
            req = req.header(*n, v.as_str());
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        let resp = req.send().await.expect("request reaches the server");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.expect("response body").to_vec();
        Answer { status, headers, body }
    }

    /// `GET path` with an optional bearer token.
    pub async fn get(&self, path: &str, token: Option<&str>) -> Answer {
        let headers: Vec<(&str, String)> = token
            .map(|t| ("authorization", format!("Bearer {t}")))
            .into_iter()
            .collect();
        self.send("GET", path, &headers, None).await
    }

    /// `POST /internal/rotate-keys` with an optional token, JSON body and extra headers.
    pub async fn rotate(&self, token: Option<&str>, body: Option<Value>, extra: &[(&str, &str)]) -> Answer {
        let mut headers: Vec<(&str, String)> = Vec::new();
        if let Some(t) = token {
            headers.push(("authorization", format!("Bearer {t}")));
        }
        let body = body.map(|b| {
            headers.push(("content-type", "application/json".to_owned()));
            serde_json::to_vec(&b).expect("json body")
        });
        headers.extend(extra.iter().map(|(n, v)| (*n, (*v).to_owned())));
        self.send("POST", keyrot_http::ROTATE_PATH, &headers, body).await
    }

    /// `GET /.well-known/jwks.json`, with an optional `If-None-Match`.
    pub async fn jwks(&self, if_none_match: Option<&str>) -> Answer {
        let headers: Vec<(&str, String)> = if_none_match
            .map(|v| ("if-none-match", v.to_owned()))
            .into_iter()
            .collect();
        self.send("GET", keyrot_http::JWKS_PATH, &headers, None).await
    }

    /// The kids the served JWKS lists.
    pub async fn jwks_kids(&self) -> Vec<String> {
        let a = self.jwks(None).await;
        assert_eq!(a.status, 200, "{}", a.text());
        a.json()["keys"]
            .as_array()
            .expect("keys array")
            .iter()
            .map(|k| k["kid"].as_str().expect("kid").to_owned())
            .collect()
    }
}
