//! The quickstart's settings from the environment, and its logging.

use crate::{SetupError, database_url_from_env};
use keyrot_core::RingName;
use std::net::SocketAddr;
use std::time::Duration;

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
        let value = std::env::var("KEYROT_LISTEN").unwrap_or_else(|_| "127.0.0.1:8080".into());
        let listen = value
            .parse()
            .map_err(|source| SetupError::ListenAddress { value, source })?;
        let value = std::env::var("KEYROT_RING").unwrap_or_else(|_| "default".into());
        let ring = RingName::new(value.clone()).map_err(|source| SetupError::RingName { value, source })?;
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
