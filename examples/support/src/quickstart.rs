//! Everything the two quickstart services share: configuration from the environment, the
//! store, the key ring, the rotator, the scheduler, the demo token service and the banner.
//! The axum and actix-web binaries only mount routes.

use crate::oauth::{TokenService, USER_SCOPES};
use crate::{
    Backend, MasterKeySource, SetupError, connect, database_url_from_env, load_master_key, policy_from_env,
    random_secret,
};
use keyrot_core::RefresherHandle;
use keyrot_core::http::{
    DEFAULT_FORCE_SCOPE, DEFAULT_ROTATE_SCOPE, HttpEndpoints, JWKS_PATH, ROTATE_PATH, STATUS_PATH,
};
use keyrot_core::{KeyRing, RequestContext, RingName, Rotator, SchedulerConfig, SchedulerHandle, Validation};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Path of the protected demo route that echoes verified claims.
pub const ME_PATH: &str = "/api/me";
/// Path of the OAuth token endpoint.
pub const TOKEN_PATH: &str = "/oauth/token";
/// Path of the demo login.
pub const LOGIN_PATH: &str = "/demo/login";

/// Logs to standard error; `RUST_LOG` filters (default `info,sqlx=warn`). Never logs the
/// `Authorization` header: keyrot's adapters do not record it.
pub fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// Quickstart settings, from the environment.
#[derive(Debug, Clone)]
pub struct QuickstartConfig {
    /// `KEYROT_LISTEN` (default `127.0.0.1:8080`).
    pub listen: SocketAddr,
    /// `KEYROT_DATABASE_URL` (default: the SQLite file).
    pub database_url: String,
    /// `KEYROT_RING` (default `default`).
    pub ring: RingName,
    /// Scheduler tick interval, `KEYROT_TICK_SECONDS` (default 30).
    pub tick: Duration,
}

impl QuickstartConfig {
    /// Reads the environment.
    pub fn from_env() -> Result<Self, SetupError> {
        let listen = std::env::var("KEYROT_LISTEN").unwrap_or_else(|_| "127.0.0.1:8080".into());
        let listen = listen.parse().map_err(|_| {
            SetupError::MasterKey(format!(
                "KEYROT_LISTEN={listen:?} is not an address like 127.0.0.1:8080"
            ))
        })?;
        let ring = std::env::var("KEYROT_RING").unwrap_or_else(|_| "default".into());
        let ring = RingName::new(ring).map_err(|e| SetupError::MasterKey(e.to_string()))?;
        let tick = std::env::var("KEYROT_TICK_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(30);
        Ok(Self {
            listen,
            database_url: database_url_from_env(),
            ring,
            tick: Duration::from_secs(tick),
        })
    }
}

/// Where a client secret came from.
#[derive(Debug, Clone)]
enum Secret {
    Env(&'static str),
    Generated(String),
}

impl Secret {
    fn load(var: &'static str) -> Result<(Self, String), SetupError> {
        match std::env::var(var) {
            Ok(v) if !v.is_empty() => Ok((Secret::Env(var), v)),
            _ => {
                let s = random_secret()?;
                Ok((Secret::Generated(s.clone()), s))
            }
        }
    }

    /// How the banner's curl commands refer to it.
    fn shell(&self) -> String {
        match self {
            Secret::Env(var) => format!("${var}"),
            Secret::Generated(s) => s.clone(),
        }
    }
}

/// A running quickstart (everything but the HTTP server).
pub struct Quickstart {
    /// The settings.
    pub config: QuickstartConfig,
    /// The key ring (sign, verify, JWKS).
    pub keyring: KeyRing,
    /// The rotator.
    pub rotator: Rotator,
    /// The JWKS, rotation and status endpoints.
    pub endpoints: HttpEndpoints,
    /// The demo token service.
    pub tokens: Arc<TokenService>,
    backend: Backend,
    master: MasterKeySource,
    scheduler_secret: Secret,
    breakglass_secret: Secret,
    scheduler: Option<SchedulerHandle>,
    refresher: Option<RefresherHandle>,
}

impl std::fmt::Debug for Quickstart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Quickstart")
            .field("listen", &self.config.listen)
            .finish_non_exhaustive()
    }
}

impl Quickstart {
    /// Opens the store, loads or creates the master key, bootstraps the ring and starts the
    /// scheduler and the refresher.
    pub async fn start(config: QuickstartConfig) -> Result<Self, SetupError> {
        let backend = connect(&config.database_url).await?;
        let (sealer, master) = load_master_key(None, true)?;
        let sealer = Arc::new(sealer);
        let policy = policy_from_env(None)?;
        let issuer = format!("http://{}", config.listen);
        let keyring = KeyRing::builder(config.ring.clone(), backend.storage.clone(), sealer.clone())
            .with_policy(policy.clone())
            .with_validation(Validation::new().with_issuer(issuer.clone()))
            .build()
            .await
            .map_err(|e| SetupError::MasterKey(e.to_string()))?;
        let rotator = Rotator::builder(
            config.ring.clone(),
            backend.storage.clone(),
            backend.lock.clone(),
            sealer,
        )
        .with_policy(policy)
        .with_instance(format!("quickstart-{}", std::process::id()))
        .with_keyring(keyring.clone())
        .build();
        rotator
            .init(RequestContext::actor("quickstart:startup"))
            .await
            .map_err(|e| SetupError::MasterKey(format!("initialising the ring: {e}")))?;
        let endpoints = HttpEndpoints::builder(keyring.clone(), rotator.clone())
            .build()
            .map_err(|e| SetupError::MasterKey(e.to_string()))?;
        let (scheduler_secret, s1) = Secret::load("KEYROT_SCHEDULER_CLIENT_SECRET")?;
        let (breakglass_secret, s2) = Secret::load("KEYROT_BREAKGLASS_CLIENT_SECRET")?;
        let tokens = Arc::new(TokenService::new(
            keyring.clone(),
            issuer,
            TokenService::rotation_clients(&s1, &s2),
        ));
        let scheduler = keyrot_core::spawn_scheduler(
            rotator.clone(),
            SchedulerConfig {
                interval: config.tick,
                jitter: config.tick / 3,
            },
        );
        let refresher = keyring.spawn_refresher(Some(backend.feed.clone()), Duration::from_secs(30));
        Ok(Self {
            config,
            keyring,
            rotator,
            endpoints,
            tokens,
            backend,
            master,
            scheduler_secret,
            breakglass_secret,
            scheduler: Some(scheduler),
            refresher: Some(refresher),
        })
    }

    /// Stops the scheduler and the refresher.
    pub async fn shutdown(mut self) {
        if let Some(s) = self.scheduler.take() {
            s.shutdown().await;
        }
        if let Some(r) = self.refresher.take() {
            r.shutdown().await;
        }
    }

    /// What the service prints at start: URLs and ready-to-paste `curl` commands. The
    /// commands between the `--- curl ---` markers work exactly as printed (the end-to-end
    /// test runs them).
    pub fn banner(&self, framework: &str) -> String {
        let base = format!("http://{}", self.config.listen);
        let sched = self.scheduler_secret.shell();
        let bg = self.breakglass_secret.shell();
        let token = r#"sed -E 's/.*"access_token":"([^"]+)".*/\1/'"#;
        let mut b = String::new();
        let _ = writeln!(b, "keyrot quickstart ({framework}) on {base}");
        let _ = writeln!(
            b,
            "  store     {} ({})",
            keyrot_sqlx::redact_url(&self.config.database_url),
            self.backend.kind
        );
        let _ = writeln!(
            b,
            "  ring      {} · active key {}",
            self.config.ring,
            self.keyring.snapshot().active_kid().unwrap_or("-")
        );
        match &self.master {
            MasterKeySource::Generated(p) => {
                let _ = writeln!(b, "  master key generated into {} (mode 0600).", p.display());
                let _ = writeln!(
                    b,
                    "  WARNING: a master key in a local file is for local use only; set KEYROT_MASTER_KEY in production."
                );
            }
            MasterKeySource::File(p) => {
                let _ = writeln!(b, "  master key from {} (local use only)", p.display());
            }
            MasterKeySource::Env => {
                let _ = writeln!(b, "  master key from KEYROT_MASTER_KEY");
            }
        }
        for (id, s) in [
            ("scheduler", &self.scheduler_secret),
            ("breakglass", &self.breakglass_secret),
        ] {
            match s {
                Secret::Generated(v) => {
                    let _ = writeln!(b, "  client {id:<10} secret {v} (generated; shown once)");
                }
                Secret::Env(var) => {
                    let _ = writeln!(b, "  client {id:<10} secret from ${var}");
                }
            }
        }
        let _ = writeln!(b, "\nEndpoints:");
        let _ = writeln!(b, "  GET  {base}{JWKS_PATH}          public keys (JWKS)");
        let _ = writeln!(
            b,
            "  POST {base}{TOKEN_PATH}                 OAuth 2.0 client credentials"
        );
        let _ = writeln!(
            b,
            "  POST {base}{LOGIN_PATH}                 demo user login (scopes: {})",
            USER_SCOPES.join(", ")
        );
        let _ = writeln!(
            b,
            "  GET  {base}{ME_PATH}                     protected: echoes your verified claims"
        );
        let _ = writeln!(
            b,
            "  POST {base}{ROTATE_PATH}        rotation ({DEFAULT_ROTATE_SCOPE} / {DEFAULT_FORCE_SCOPE})"
        );
        let _ = writeln!(
            b,
            "  GET  {base}{STATUS_PATH}        ring status ({DEFAULT_ROTATE_SCOPE})"
        );
        let _ = writeln!(b, "\nTry it (paste into a shell):");
        let _ = writeln!(b, "--- curl ---");
        let _ = writeln!(b, "curl -s -w '\\n' {base}{JWKS_PATH}");
        let _ = writeln!(
            b,
            "USER_TOKEN=$(curl -s -X POST {base}{LOGIN_PATH} -H 'content-type: application/json' -d '{{\"username\":\"alice\",\"scope\":\"profile\"}}' | {token})"
        );
        let _ = writeln!(
            b,
            "curl -s -w '\\n' {base}{ME_PATH} -H \"authorization: Bearer $USER_TOKEN\""
        );
        let _ = writeln!(
            b,
            "SCHED_TOKEN=$(curl -s -u \"scheduler:{sched}\" -d grant_type=client_credentials {base}{TOKEN_PATH} | {token})"
        );
        let _ = writeln!(
            b,
            "curl -s -w '\\n' {base}{STATUS_PATH} -H \"authorization: Bearer $SCHED_TOKEN\""
        );
        let _ = writeln!(
            b,
            "curl -s -i -w '\\n' -X POST {base}{ROTATE_PATH} -H \"authorization: Bearer $SCHED_TOKEN\" -H 'idempotency-key: demo-1'"
        );
        let _ = writeln!(
            b,
            "BG_TOKEN=$(curl -s -u \"breakglass:{bg}\" -d grant_type=client_credentials -d scope={DEFAULT_FORCE_SCOPE} {base}{TOKEN_PATH} | {token})"
        );
        let _ = writeln!(
            b,
            "curl -s -w '\\n' -X POST {base}{ROTATE_PATH} -H \"authorization: Bearer $BG_TOKEN\" -H 'content-type: application/json' -d '{{\"force\":true,\"reason\":\"quickstart drill\"}}'"
        );
        let _ = writeln!(b, "--- end ---");
        let _ = writeln!(
            b,
            "A normal rotation right after the first start answers 429 with Retry-After (at most one per 6 days);\n\
             the forced one rotates at once (at most one per hour). keyrotctl operates the same store:\n  \
             cargo run -p keyrotctl -- status"
        );
        b
    }
}
