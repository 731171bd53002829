//! Shared pieces of keyrot's examples (quickstart, actix-quickstart, keyrotctl, cluster),
//! one module a concept:
//!
//! - [`error`]: [`SetupError`] (print it with its causes by [`ErrorChain`]);
//! - [`policy`]: the rotation policy from `KEYROT_POLICY_*_MS`;
//! - [`master_key`]: the master key from the environment or a file, or generated;
//! - [`form`]: form-urlencoded bodies and HTTP Basic credentials;
//! - [`oauth`]: the demo OAuth 2.0 client-credentials token endpoint and user login;
//! - [`quickstart`]: the whole quickstart service but its routes;
//! - here: opening a store from a database URL ([`connect`]).

pub mod error;
pub mod form;
pub mod master_key;
pub mod oauth;
pub mod policy;
pub mod quickstart;

pub use error::SetupError;
pub use form::parse_form;
pub use keyrot_core::ErrorChain;
pub use master_key::{DEFAULT_MASTER_KEY_FILE, MasterKeySource, load_master_key, write_private_file};
pub use oauth::random_secret;
pub use policy::policy_from_env;

use keyrot_core::{ChangeFeed, Lock, Storage};
use keyrot_sqlx::sqlx;
use keyrot_sqlx::{MySqlStore, PostgresStore, SqliteStore};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Where the quickstart keeps its SQLite database unless `KEYROT_DATABASE_URL` says otherwise.
pub const DEFAULT_DATABASE_PATH: &str = ".keyrot/quickstart.db";

/// An opened store: storage, lock and the best change feed for the database.
#[derive(Debug, Clone)]
pub struct Backend {
    /// The storage.
    pub storage: Arc<dyn Storage>,
    /// The rotation lock.
    pub lock: Arc<dyn Lock>,
    /// How instances learn of changes (NOTIFY on PostgreSQL, polling elsewhere).
    pub feed: Arc<dyn ChangeFeed>,
    /// `sqlite`, `postgres` or `mysql`.
    pub kind: &'static str,
}

/// The database URL: `KEYROT_DATABASE_URL`, else the quickstart's SQLite file.
pub fn database_url_from_env() -> String {
    std::env::var("KEYROT_DATABASE_URL").unwrap_or_else(|_| format!("sqlite:{DEFAULT_DATABASE_PATH}"))
}

/// Opens (and migrates) the store behind `url`: `sqlite:PATH` (`sqlite://PATH` too),
/// `postgres://…`/`postgresql://…`, `mysql://…`/`mariadb://…`.
pub async fn connect(url: &str) -> Result<Backend, SetupError> {
    let poll = Duration::from_secs(2);
    if let Some(path) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
        let path = path.split('?').next().unwrap_or(path);
        if let Some(dir) = Path::new(path).parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| SetupError::Io {
                path: dir.to_owned(),
                source,
            })?;
        }
        let store = SqliteStore::connect_file(path).await?;
        store.migrate().await?;
        let feed = Arc::new(store.polling_feed(poll));
        let store = Arc::new(store);
        return Ok(Backend {
            storage: store.clone(),
            lock: store,
            feed,
            kind: "sqlite",
        });
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(SetupError::Connect)?;
        let store = Arc::new(PostgresStore::new(pool));
        store.migrate().await?;
        return Ok(Backend {
            storage: store.clone(),
            lock: store.clone(),
            feed: store,
            kind: "postgres",
        });
    }
    if url.starts_with("mysql://") || url.starts_with("mariadb://") {
        let url = url.replacen("mariadb://", "mysql://", 1);
        let pool = sqlx::mysql::MySqlPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(5))
            .connect(&url)
            .await
            .map_err(SetupError::Connect)?;
        let store = MySqlStore::new(pool);
        store.migrate().await?;
        let feed = Arc::new(store.polling_feed(poll));
        let store = Arc::new(store);
        return Ok(Backend {
            storage: store.clone(),
            lock: store,
            feed,
            kind: "mysql",
        });
    }
    Err(SetupError::UnsupportedUrl(url.chars().take(40).collect()))
}
