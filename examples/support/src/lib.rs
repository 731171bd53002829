//! Shared pieces of keyrot's examples (quickstart, actix-quickstart, keyrotctl, cluster),
//! one module a concept:
//!
//! - [`error`]: [`SetupError`] (print it with its causes by [`ErrorChain`]);
//! - [`policy`]: the rotation policy from `KEYROT_POLICY_*_MS`;
//! - [`master_key`]: the master key from the environment or a file, or generated;
//! - [`custody`]: the master keys under custody of an HSM or a KMS (`KEYROT_MASTER_KEY_URI`);
//! - [`form`]: form-urlencoded bodies and HTTP Basic credentials;
//! - [`oauth`]: the demo OAuth 2.0 client-credentials token endpoint and user login;
//! - [`quickstart`]: the whole quickstart service but its routes;
//! - [`remote`]: the JWKS verifier of the resource servers, which hold no key material;
//! - [`testing`]: what the examples' tests share (a process's `ready` line, Python stacks);
//! - here: opening a store from a database URL ([`connect`]).

pub mod custody;
pub mod error;
pub mod form;
pub mod master_key;
pub mod oauth;
pub mod policy;
pub mod quickstart;
pub mod remote;
pub mod testing;

pub use custody::{MasterKeys, master_keys};
pub use error::SetupError;
pub use form::parse_form;
pub use keyrot_core::ErrorChain;
pub use master_key::{DEFAULT_MASTER_KEY_FILE, MasterKeySource, load_master_key, write_private_file};
pub use oauth::random_secret;
pub use policy::policy_from_env;

use keyrot_core::custody::MasterKeyStorage;
use keyrot_core::{ChangeFeed, Lock, Storage};
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
    /// Where master keys under custody are stored, wrapped.
    pub master_keys: Arc<dyn MasterKeyStorage>,
    /// `sqlite`, `postgres` or `mysql`.
    pub kind: &'static str,
}

/// The database URL: `KEYROT_DATABASE_URL`, else the quickstart's SQLite file.
pub fn database_url_from_env() -> String {
    std::env::var("KEYROT_DATABASE_URL").unwrap_or_else(|_| format!("sqlite:{DEFAULT_DATABASE_PATH}"))
}

/// Opens ([`keyrot_sqlx::connect`]) and migrates the store behind `url`: `sqlite:PATH`
/// (`sqlite://PATH` too), `postgres://…`/`postgresql://…`, `mysql://…`/`mariadb://…`.
pub async fn connect(url: &str) -> Result<Backend, SetupError> {
    let store = keyrot_sqlx::connect(url).await?;
    store.migrate().await?;
    Ok(Backend {
        storage: store.storage(),
        lock: store.lock(),
        feed: store.change_feed(Duration::from_secs(2)),
        master_keys: store.master_keys(),
        kind: store.kind(),
    })
}
