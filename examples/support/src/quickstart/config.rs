//! The quickstart's settings from the environment, and its logging.

use crate::{SetupError, database_url_from_env};
use keyrot_core::RingName;
use std::net::SocketAddr;
use std::time::Duration;

/// Logs to standard error; `RUST_LOG` filters (default `info,sqlx=warn`). Never logs the
/// `Authorization` header: keyrot's adapters do not record it.
pub fn init_tracing() {
    init_tracing_with("info,sqlx=warn");
}

/// [`init_tracing`] with another default filter. Colours only on a terminal, and never
/// when `NO_COLOR` is set (<https://no-color.org>): logs sent to a file or a collector
/// carry no escape codes.
pub fn init_tracing_with(default_filter: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(colour_logs())
        .init();
}

/// Whether logs on standard error may be coloured: a terminal, and no `NO_COLOR`.
fn colour_logs() -> bool {
    use std::io::IsTerminal as _;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
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
    /// The public URL tokens name as `iss` and verifiers require: `KEYROT_ISSUER`
    /// (default `http://` + the listen address). Every instance of one deployment sets the
    /// same value, so a token from one is accepted by the others.
    pub issuer: String,
    /// The `aud` of the access tokens the token endpoint and the demo login issue, which
    /// this service requires too: `KEYROT_AUDIENCE` (default: the issuer URL).
    pub audience: String,
    /// How many verified tokens the middleware keeps to skip repeated signature checks:
    /// `KEYROT_TOKEN_CACHE_ENTRIES` (default 0, no cache). A revoked or expired key still
    /// refuses its cached tokens at once.
    pub token_cache_entries: usize,
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
        let issuer = match std::env::var("KEYROT_ISSUER") {
            Ok(value) => checked_issuer(value)?,
            Err(_) => format!("http://{listen}"),
        };
        let audience = match std::env::var("KEYROT_AUDIENCE") {
            Ok(value) => checked_audience(value)?,
            Err(_) => issuer.clone(),
        };
        let token_cache_entries = match std::env::var("KEYROT_TOKEN_CACHE_ENTRIES") {
            Ok(value) => value
                .trim()
                .parse()
                .map_err(|_| SetupError::TokenCacheEntries { value })?,
            Err(_) => 0,
        };
        Ok(Self {
            listen,
            token_cache_entries,
            database_url: database_url_from_env(),
            ring,
            tick: Duration::from_secs(tick),
            issuer,
            audience,
        })
    }
}

/// An audience: 1-512 printable ASCII characters (a URL or a name), no spaces.
fn checked_audience(value: String) -> Result<String, SetupError> {
    if (1..=512).contains(&value.len()) && value.chars().all(|c| c.is_ascii_graphic()) {
        Ok(value)
    } else {
        Err(SetupError::Audience { value })
    }
}

/// An issuer identifier as OpenID Connect Discovery and RFC 8414 define it: an `https`
/// (or, for local use, `http`) URL without query or fragment, written without a trailing
/// slash so that `issuer + "/.well-known/…"` is the discovery URL.
fn checked_issuer(value: String) -> Result<String, SetupError> {
    let rest = value.strip_prefix("https://").or_else(|| value.strip_prefix("http://"));
    let ok = match rest {
        Some(rest) => {
            !rest.is_empty()
                && !rest.starts_with('/')
                && value.len() <= 512
                && !value.ends_with('/')
                && !value.contains(['?', '#'])
                && value.chars().all(|c| c.is_ascii_graphic())
        }
        None => false,
    };
    if ok {
        Ok(value)
    } else {
        Err(SetupError::Issuer { value })
    }
}

#[cfg(test)]
mod tests {
    use super::{checked_audience, checked_issuer};

    #[test]
    fn audiences_are_printable_without_spaces() {
        for good in ["https://api.example.com", "orders-api"] {
            assert_eq!(checked_audience(good.into()).ok().as_deref(), Some(good));
        }
        for bad in ["", "two words", "tab\there", "é"] {
            assert!(checked_audience(bad.into()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn issuers_are_urls_without_query_fragment_or_trailing_slash() {
        for good in [
            "https://auth.example.com",
            "http://127.0.0.1:8080",
            "https://example.com/tenant-1",
        ] {
            assert_eq!(checked_issuer(good.into()).ok().as_deref(), Some(good));
        }
        for bad in [
            "auth.example.com",
            "https://",
            "https:///path",
            "https://example.com/",
            "https://example.com/?a=1",
            "https://example.com#x",
            "https://exa mple.com",
            "ftp://example.com",
        ] {
            assert!(checked_issuer(bad.into()).is_err(), "{bad}");
        }
    }
}
