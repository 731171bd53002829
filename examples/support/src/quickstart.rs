//! Everything the two quickstart services share: configuration from the environment, the
//! store, the key ring, the rotator, the scheduler, the demo token service, the banner and
//! the `main` around it all ([`run`]). The axum and actix-web binaries only mount routes.

mod banner;
mod config;

pub use config::{QuickstartConfig, init_tracing, init_tracing_with};

use crate::oauth::TokenService;
use crate::{Backend, ErrorChain, MasterKeySource, SetupError, connect, load_master_key, policy_from_env};
use banner::Secret;
use keyrot_core::RefresherHandle;
use keyrot_core::{
    KeyRing, RequestContext, Rotator, SchedulerConfig, SchedulerHandle, TokenCache, TokenCacheConfig, Validation,
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
        // Installed first, so the first snapshot's gauges are recorded.
        let metrics = PrometheusBuilder::new()
            .install_recorder()
            .map_err(SetupError::Metrics)?;
        keyrot_core::describe_metrics();
        let backend = connect(&config.database_url).await?;
        let (sealer, master) = load_master_key(None, true)?;
        let sealer = Arc::new(sealer);
        let policy = policy_from_env(None)?;
        let issuer = config.issuer.clone();
        let mut keyring = KeyRing::builder(config.ring.clone(), backend.storage.clone(), sealer.clone())
            .with_policy(policy.clone())
            .with_validation(Validation::new().with_issuer(issuer.clone()));
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
        rotator
            .init(RequestContext::actor("quickstart:startup"))
            .await
            .map_err(SetupError::InitRing)?;
        // The discovery documents name the issuer, its JWKS and the token endpoint, so a
        // resource server needs only KEYROT_ISSUER to verify this service's tokens.
        let metadata = IssuerMetadata::new(issuer.clone()).with_token_endpoint(format!("{issuer}{TOKEN_PATH}"));
        let endpoints = HttpEndpoints::builder(keyring.clone(), rotator.clone())
            .with_issuer(metadata)
            .build()
            .map_err(SetupError::Endpoints)?;
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
            metrics,
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
