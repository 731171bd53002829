//! Everything the two quickstart services share: configuration from the environment, the
//! store, the key ring, the rotator, the scheduler, the demo token service, the banner and
//! the `main` around it all ([`run`]). The axum and actix-web binaries only mount routes.

mod banner;
mod config;

pub use config::{QuickstartConfig, init_tracing, init_tracing_with};

use crate::oauth::TokenService;
use crate::{Backend, ErrorChain, MasterKeySource, SetupError, connect, master_keys, policy_from_env};
use banner::{BREAKGLASS_SECRET_VAR, SCHEDULER_SECRET_VAR, Secret};
use keyrot_core::RefresherHandle;
use keyrot_core::custody::CustodyMonitor;
use keyrot_core::{
    KeyRing, Outcome, RequestContext, RotationReport, Rotator, SchedulerConfig, SchedulerHandle, TokenCache,
    TokenCacheConfig, Validation,
};
use keyrot_http::{HttpEndpoints, HttpResponse, IssuerMetadata, ResponseBody};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::error::Error;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// Path of the protected demo route that echoes verified claims.
pub const ME_PATH: &str = "/api/me";
/// Path of the OAuth token endpoint.
pub const TOKEN_PATH: &str = "/oauth/token";
/// Path of the demo login.
pub const LOGIN_PATH: &str = "/demo/login";
/// Path of the Prometheus metrics. Unauthenticated here: in production serve it only on
/// an internal listener or network (it names rings and shows their schedule).
pub const METRICS_PATH: &str = "/metrics";
/// The `Content-Type` of the Prometheus text exposition format.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How long a starting instance waits for another one that is initialising the same ring.
const INIT_PATIENCE: Duration = Duration::from_secs(10);
/// How often it looks again meanwhile.
const INIT_RETRY: Duration = Duration::from_millis(50);

/// Initialises the ring from a starting instance whose `keyring` is `rotator`'s, and makes
/// sure `keyring` serves the ring's Active key whoever created it: when several instances
/// start at once on one database, the others lose the race (`lost_race`), find the lock
/// held (`lock_busy`) or find the ring already initialised (`nothing_due`) before their own
/// key ring has loaded the winner's commit. Then the key ring is refreshed from storage,
/// and while the lock is held or the race was lost and no Active key is visible yet, init
/// is tried again every 50 ms for at most `patience`. A ring with no Active key to serve
/// (retired) returns at once. The report of the last attempt.
pub async fn init_ring(rotator: &Rotator, keyring: &KeyRing, patience: Duration) -> Result<RotationReport, SetupError> {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        let report = rotator
            .init(RequestContext::actor("quickstart:startup"))
            .await
            .map_err(SetupError::InitRing)?;
        if keyring.snapshot().active_kid().is_none() {
            keyring.refresh().await.map_err(SetupError::LoadRing)?;
        }
        let waiting = matches!(report.outcome, Outcome::LockBusy | Outcome::LostRace);
        if keyring.snapshot().active_kid().is_some() || !waiting || tokio::time::Instant::now() >= deadline {
            return Ok(report);
        }
        tokio::time::sleep(INIT_RETRY).await;
    }
}

/// The `main` of a quickstart binary called `program`: logging, configuration from the
/// environment, [`Quickstart::start`], then `serve` (which binds, calls
/// [`Quickstart::announce`] and serves until Ctrl-C), then [`Quickstart::shutdown`]. A
/// failure is printed with its causes and exits with code 2.
pub async fn run<F>(program: &str, serve: F) -> ExitCode
where
    F: AsyncFnOnce(&Quickstart) -> Result<(), Box<dyn Error>>,
{
    init_tracing();
    let result = async {
        let app = Quickstart::start(QuickstartConfig::from_env()?).await?;
        serve(&app).await?;
        app.shutdown().await;
        Ok::<(), Box<dyn Error>>(())
    };
    match result.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{program}: {}", ErrorChain(&*e));
            ExitCode::from(2)
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
    metrics: PrometheusHandle,
    backend: Backend,
    master: MasterKeySource,
    scheduler_secret: Secret,
    breakglass_secret: Secret,
    scheduler: Option<SchedulerHandle>,
    refresher: Option<RefresherHandle>,
    /// Probes the custody backend (master keys under custody only); stops when dropped.
    custody_monitor: Option<CustodyMonitor>,
    /// Probes the HSM or KMS holding the signing keys (`KEYROT_SIGNING_KEYS_URI` only).
    signing_monitor: Option<CustodyMonitor>,
}

impl std::fmt::Debug for Quickstart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Quickstart")
            .field("listen", &self.config.listen)
            .finish_non_exhaustive()
    }
}

impl Quickstart {
    /// Opens the store, loads or creates the master key (under custody when
    /// `KEYROT_MASTER_KEY_URI` is set: the first master key is created when none is stored,
    /// and the backend is probed every `KEYROT_CUSTODY_PROBE_SECONDS`), bootstraps the ring
    /// and starts the scheduler and the refresher.
    pub async fn start(config: QuickstartConfig) -> Result<Self, SetupError> {
        // Installed first, so the first snapshot's gauges are recorded.
        let metrics = PrometheusBuilder::new()
            .install_recorder()
            .map_err(SetupError::Metrics)?;
        keyrot_core::describe_metrics();
        let backend = connect(&config.database_url).await?;
        let keys = master_keys(&backend, None, true).await?;
        let custody_monitor = keys.spawn_monitor()?;
        let (sealer, master) = (keys.sealer, keys.source);
        let policy = policy_from_env(None)?;
        let issuer = config.issuer.clone();
        let mut keyring = KeyRing::builder(config.ring.clone(), backend.storage.clone(), sealer.clone())
            .with_policy(policy.clone())
            .with_validation(
                Validation::new()
                    .with_issuer(issuer.clone())
                    .with_audience(config.audience.clone()),
            );
        let signing = crate::custody::signing_custody(&policy).await?;
        if let Some(custody) = &signing {
            keyring = keyring.with_signing_custody(custody.clone());
        }
        if config.token_cache_entries > 0 {
            let bounds = TokenCacheConfig::new().with_max_entries(config.token_cache_entries);
            keyring = keyring.with_token_cache(TokenCache::new(bounds));
        }
        let keyring = keyring.build().await.map_err(SetupError::LoadRing)?;
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
        init_ring(&rotator, &keyring, INIT_PATIENCE).await?;
        // The RFC 8414 metadata names the issuer, its JWKS and the token endpoint with its
        // one grant and client authentication methods, so a resource server needs only
        // KEYROT_ISSUER to verify this service's tokens. No authorization endpoint: no
        // OpenID Connect document.
        let metadata = IssuerMetadata::new(issuer.clone())
            .with_token_endpoint(format!("{issuer}{TOKEN_PATH}"))
            .with_grant_types_supported(["client_credentials"])
            .with_token_endpoint_auth_methods_supported(["client_secret_basic", "client_secret_post"]);
        let endpoints = HttpEndpoints::builder(keyring.clone(), rotator.clone())
            .with_issuer(metadata)
            .build()
            .map_err(SetupError::Endpoints)?;
        let (scheduler_secret, s1) = Secret::load(SCHEDULER_SECRET_VAR)?;
        let (breakglass_secret, s2) = Secret::load(BREAKGLASS_SECRET_VAR)?;
        let tokens = Arc::new(TokenService::new(
            keyring.clone(),
            issuer,
            config.audience.clone(),
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
        let signing_monitor = keyring.spawn_signing_monitor(crate::custody::probe_interval()?);
        Ok(Self {
            config,
            keyring,
            rotator,
            endpoints,
            tokens,
            metrics,
            backend,
            master,
            scheduler_secret,
            breakglass_secret,
            scheduler: Some(scheduler),
            refresher: Some(refresher),
            custody_monitor,
            signing_monitor,
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
        self.custody_monitor.take();
        self.signing_monitor.take();
    }

    /// The `GET /metrics` handler for a router: every metric of this process in the
    /// Prometheus text format.
    pub fn metrics_response_fn(&self) -> impl Fn() -> HttpResponse + Clone + Send + Sync + 'static {
        let handle = self.metrics.clone();
        move || HttpResponse {
            status: 200,
            headers: vec![
                ("content-type", METRICS_CONTENT_TYPE.to_owned()),
                ("cache-control", "no-store".to_owned()),
            ],
            body: ResponseBody::Owned(handle.render().into_bytes()),
        }
    }

    /// Prints the [banner](Quickstart::banner) and then `ready` (which the end-to-end
    /// test waits for): call it once the listener is bound.
    pub fn announce(&self, framework: &str) {
        print!("{}", self.banner(framework));
        println!("ready");
    }
}
