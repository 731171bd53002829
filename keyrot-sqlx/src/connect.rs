//! A store from a database URL ([`connect`]), and URLs fit to print ([`redact_url`]).

#[cfg(feature = "mysql")]
use crate::MySqlStore;
#[cfg(feature = "postgres")]
use crate::PostgresStore;
#[cfg(feature = "sqlite")]
use crate::SqliteStore;
use keyrot_core::custody::MasterKeyStorage;
use keyrot_core::{ChangeFeed, Lock, Storage, StorageError};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The store behind a URL, one variant per database (each behind its cargo feature).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum AnyStore {
    /// `postgres://…`, `postgresql://…`.
    #[cfg(feature = "postgres")]
    Postgres(PostgresStore),
    /// `mysql://…`, `mariadb://…`.
    #[cfg(feature = "mysql")]
    MySql(MySqlStore),
    /// `sqlite:PATH`, `sqlite://PATH`.
    #[cfg(feature = "sqlite")]
    Sqlite(SqliteStore),
}

impl AnyStore {
    /// `postgres`, `mysql` or `sqlite`.
    pub fn kind(&self) -> &'static str {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(_) => "postgres",
            #[cfg(feature = "mysql")]
            Self::MySql(_) => "mysql",
            #[cfg(feature = "sqlite")]
            Self::Sqlite(_) => "sqlite",
        }
    }

    /// Creates or upgrades keyrot's tables (the store's own `migrate()`).
    pub async fn migrate(&self) -> Result<(), StorageError> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(s) => s.migrate().await,
            #[cfg(feature = "mysql")]
            Self::MySql(s) => s.migrate().await,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(s) => s.migrate().await,
        }
    }

    /// The store as keyrot's [`Storage`].
    pub fn storage(&self) -> Arc<dyn Storage> {
        self.store()
    }

    /// The store's rotation [`Lock`].
    pub fn lock(&self) -> Arc<dyn Lock> {
        self.store()
    }

    /// The store's table of wrapped master keys (`<prefix>master_keys`), for master keys
    /// held by an HSM or a KMS ([`keyrot_core::custody`]).
    pub fn master_keys(&self) -> Arc<dyn MasterKeyStorage> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(s) => Arc::new(s.clone()),
            #[cfg(feature = "mysql")]
            Self::MySql(s) => Arc::new(s.clone()),
            #[cfg(feature = "sqlite")]
            Self::Sqlite(s) => Arc::new(s.clone()),
        }
    }

    fn store(&self) -> Arc<dyn StorageAndLock> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(s) => Arc::new(s.clone()),
            #[cfg(feature = "mysql")]
            Self::MySql(s) => Arc::new(s.clone()),
            #[cfg(feature = "sqlite")]
            Self::Sqlite(s) => Arc::new(s.clone()),
        }
    }

    /// The best change feed for the database: `LISTEN`/`NOTIFY` on PostgreSQL, polling the
    /// generation every `poll` elsewhere.
    pub fn change_feed(&self, poll: Duration) -> Arc<dyn ChangeFeed> {
        // `poll` is unused when only PostgreSQL is enabled.
        let _ = poll;
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(s) => Arc::new(s.clone()),
            #[cfg(feature = "mysql")]
            Self::MySql(s) => Arc::new(s.polling_feed(poll)),
            #[cfg(feature = "sqlite")]
            Self::Sqlite(s) => Arc::new(s.polling_feed(poll)),
        }
    }
}

/// Every store is both; [`AnyStore`] hands out either half.
trait StorageAndLock: Storage + Lock {}

impl<T: Storage + Lock> StorageAndLock for T {}

/// Why [`connect`] opened no store. Every URL in it is redacted ([`redact_url`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The URL names no database keyrot supports.
    #[error("unsupported database URL {url:?}: use sqlite:PATH, postgres://… or mysql://…")]
    UnsupportedUrl {
        /// The URL, redacted and cut to 40 characters.
        url: String,
    },
    /// The URL names a database this build of keyrot-sqlx leaves out.
    #[error("database URL {url:?}: keyrot-sqlx was built without its {feature:?} feature")]
    FeatureDisabled {
        /// The URL, redacted.
        url: String,
        /// The cargo feature it needs.
        feature: &'static str,
    },
    /// The directory of the SQLite file could not be created.
    #[error("{}: {source}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The database driver refused to connect.
    #[error("cannot connect to the database {url}: {source}")]
    Connect {
        /// The URL, redacted.
        url: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
}

#[cfg(any(feature = "postgres", feature = "mysql"))]
/// How long [`connect`] waits for a pool connection (PostgreSQL, MySQL).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
#[cfg(any(feature = "postgres", feature = "mysql"))]
/// How many connections a [`connect`]ed PostgreSQL or MySQL pool holds.
const MAX_CONNECTIONS: u32 = 8;

/// Opens the store behind `url`, without migrating it (call [`AnyStore::migrate`]):
///
/// - `sqlite:PATH` or `sqlite://PATH` (a query string is ignored): the file opened as
///   `SqliteStore::connect_file` does, creating its directory if missing;
/// - `postgres://…`, `postgresql://…`: a pool of 8 connections, 5 s acquire timeout;
/// - `mysql://…`, `mariadb://…`: the same.
///
/// Every store has the default table prefix (and, on PostgreSQL, the connection's
/// `search_path`); build one with its builder for other names.
pub async fn connect(url: &str) -> Result<AnyStore, ConnectError> {
    let fail = |source| ConnectError::Connect {
        url: redact_url(url),
        source,
    };
    if let Some(path) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
        let path = path.split('?').next().unwrap_or(path);
        return connect_sqlite(url, path).await.map_err(|e| e.into_connect(fail));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return connect_postgres(url).await.map_err(|e| e.into_connect(fail));
    }
    if url.starts_with("mysql://") || url.starts_with("mariadb://") {
        return connect_mysql(url).await.map_err(|e| e.into_connect(fail));
    }
    Err(ConnectError::UnsupportedUrl {
        url: redact_url(url).chars().take(40).collect(),
    })
}

/// What a database's connect step can fail with, before the URL is attached.
enum Failed {
    Open(sqlx::Error),
    Other(ConnectError),
}

impl Failed {
    fn into_connect(self, open: impl FnOnce(sqlx::Error) -> ConnectError) -> ConnectError {
        match self {
            Self::Open(e) => open(e),
            Self::Other(e) => e,
        }
    }

    #[cfg(not(all(feature = "postgres", feature = "mysql", feature = "sqlite")))]
    fn disabled(url: &str, feature: &'static str) -> Self {
        Self::Other(ConnectError::FeatureDisabled {
            url: redact_url(url),
            feature,
        })
    }
}

#[cfg(feature = "sqlite")]
async fn connect_sqlite(_url: &str, path: &str) -> Result<AnyStore, Failed> {
    if let Some(dir) = std::path::Path::new(path)
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir).map_err(|source| {
            Failed::Other(ConnectError::CreateDir {
                path: dir.to_owned(),
                source,
            })
        })?;
    }
    let pool = SqliteStore::open_file(path).await.map_err(Failed::Open)?;
    Ok(AnyStore::Sqlite(SqliteStore::new(pool)))
}

#[cfg(not(feature = "sqlite"))]
async fn connect_sqlite(url: &str, _path: &str) -> Result<AnyStore, Failed> {
    Err(Failed::disabled(url, "sqlite"))
}

#[cfg(feature = "postgres")]
async fn connect_postgres(url: &str) -> Result<AnyStore, Failed> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(MAX_CONNECTIONS)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect(url)
        .await
        .map_err(Failed::Open)?;
    Ok(AnyStore::Postgres(PostgresStore::new(pool)))
}

#[cfg(not(feature = "postgres"))]
async fn connect_postgres(url: &str) -> Result<AnyStore, Failed> {
    Err(Failed::disabled(url, "postgres"))
}

#[cfg(feature = "mysql")]
async fn connect_mysql(url: &str) -> Result<AnyStore, Failed> {
    let url = url.replacen("mariadb://", "mysql://", 1);
    let pool = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(MAX_CONNECTIONS)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect(&url)
        .await
        .map_err(Failed::Open)?;
    Ok(AnyStore::MySql(MySqlStore::new(pool)))
}

#[cfg(not(feature = "mysql"))]
async fn connect_mysql(url: &str) -> Result<AnyStore, Failed> {
    Err(Failed::disabled(url, "mysql"))
}

/// `url` fit to print: the password of its user info becomes `***`
/// (`postgres://app:***@db/keys`), and so does the value of any query parameter whose name
/// contains `password` (`?sslpassword=***`). A URL without either comes back unchanged.
pub fn redact_url(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let mut out = match base.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((userinfo, host)) => match userinfo.split_once(':') {
                Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
                None => base.to_owned(),
            },
            None => base.to_owned(),
        },
        None => base.to_owned(),
    };
    if let Some(query) = query {
        let params = query
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _)) if k.to_ascii_lowercase().contains("password") => format!("{k}=***"),
                _ => p.to_owned(),
            })
            .collect::<Vec<_>>();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/keys"),
            "postgres://app:***@db:5432/keys"
        );
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1/test"),
            "postgres://postgres@127.0.0.1/test"
        );
        assert_eq!(
            redact_url("sqlite:.keyrot/quickstart.db"),
            "sqlite:.keyrot/quickstart.db"
        );
    }

    #[test]
    fn urls_without_user_info_are_unchanged() {
        assert_eq!(redact_url("mysql://db:3306/keys"), "mysql://db:3306/keys");
        assert_eq!(
            redact_url("postgres://db/keys?sslmode=require"),
            "postgres://db/keys?sslmode=require"
        );
    }

    #[test]
    fn passwords_in_the_query_string_are_redacted() {
        assert_eq!(
            redact_url("postgres://app@db/keys?sslmode=require&password=s3cret"),
            "postgres://app@db/keys?sslmode=require&password=***"
        );
        assert_eq!(
            redact_url("mysql://u:p@db/k?sslpassword=x&Password=y"),
            "mysql://u:***@db/k?sslpassword=***&Password=***"
        );
    }

    #[test]
    fn a_password_holding_an_at_sign_is_redacted_whole() {
        assert_eq!(redact_url("postgres://app:p@ss@db/keys"), "postgres://app:***@db/keys");
    }

    #[tokio::test]
    async fn unsupported_urls_are_refused_without_their_password() {
        let err = connect("redis://app:s3cret@cache/0").await.err().map(|e| e.to_string());
        let msg = err.unwrap_or_default();
        assert!(msg.contains("unsupported") && !msg.contains("s3cret"), "{msg}");
    }

    #[cfg(feature = "postgres")]
    #[tokio::test]
    async fn refused_connections_do_not_print_the_password() {
        // Nothing listens on port 1.
        let err = connect("postgres://app:s3cret@127.0.0.1:1/keys")
            .await
            .err()
            .map(|e| e.to_string());
        let msg = err.unwrap_or_default();
        assert!(msg.contains("app:***@127.0.0.1:1") && !msg.contains("s3cret"), "{msg}");
    }
}
