//! Shared pieces of keyrot's examples (quickstart, actix-quickstart, keyrotctl, cluster):
//! opening a store from a database URL, loading or creating the master key, and the demo
//! OAuth 2.0 client-credentials token endpoint.

pub mod oauth;
pub mod quickstart;

use keyrot_core::{ChangeFeed, Lock, MasterKey, MasterKeySealer, Storage, StorageError};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Where the quickstart keeps its SQLite database unless `KEYROT_DATABASE_URL` says otherwise.
pub const DEFAULT_DATABASE_PATH: &str = ".keyrot/quickstart.db";
/// Where the quickstart writes its generated master key.
pub const DEFAULT_MASTER_KEY_FILE: &str = ".keyrot/master.key";

/// What went wrong while setting up (configuration errors: exit code 2 in the CLI).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The database URL is unsupported, or the database refused to connect.
    #[error(transparent)]
    Connect(#[from] keyrot_sqlx::ConnectError),
    /// The database could not be opened or migrated.
    #[error("database: {0}")]
    Database(#[from] StorageError),
    /// The master key is missing or invalid.
    #[error("master key: {0}")]
    MasterKey(String),
    /// The policy from the environment is invalid.
    #[error("policy: {0}")]
    Policy(String),
    /// File system error.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

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

/// Opens ([`keyrot_sqlx::connect`]) and migrates the store behind `url`: `sqlite:PATH`
/// (`sqlite://PATH` too), `postgres://…`/`postgresql://…`, `mysql://…`/`mariadb://…`.
pub async fn connect(url: &str) -> Result<Backend, SetupError> {
    let store = keyrot_sqlx::connect(url).await?;
    store.migrate().await?;
    Ok(Backend {
        storage: store.storage(),
        lock: store.lock(),
        feed: store.change_feed(Duration::from_secs(2)),
        kind: store.kind(),
    })
}

/// The rotation policy: keyrot's defaults, each duration overridable in milliseconds by
/// `KEYROT_POLICY_<NAME>_MS` (`ROTATION_INTERVAL`, `MIN_INTERVAL`, `FORCED_MIN_INTERVAL`,
/// `PUBLISH_LEAD`, `RETIRE_GRACE`, `MAX_TOKEN_TTL`, `CLOCK_SKEW`, `JWKS_MAX_AGE`,
/// `VERIFIER_CACHE`, `PURGE_AFTER`). Demos and end-to-end tests shorten them; the policy
/// is validated, so unsafe combinations are refused with the rule they break.
pub fn policy_from_env(alg: Option<keyrot_core::Algorithm>) -> Result<keyrot_core::Policy, SetupError> {
    type Setter = fn(keyrot_core::PolicyBuilder, Duration) -> keyrot_core::PolicyBuilder;
    let fields: [(&str, Setter); 10] = [
        ("ROTATION_INTERVAL", |b, d| b.with_rotation_interval(d)),
        ("MIN_INTERVAL", |b, d| b.with_min_interval(d)),
        ("FORCED_MIN_INTERVAL", |b, d| b.with_forced_min_interval(d)),
        ("PUBLISH_LEAD", |b, d| b.with_publish_lead(d)),
        ("RETIRE_GRACE", |b, d| b.with_retire_grace(d)),
        ("MAX_TOKEN_TTL", |b, d| b.with_max_token_ttl(d)),
        ("CLOCK_SKEW", |b, d| b.with_clock_skew(d)),
        ("JWKS_MAX_AGE", |b, d| b.with_jwks_max_age(d)),
        ("VERIFIER_CACHE", |b, d| b.with_verifier_cache(d)),
        ("PURGE_AFTER", |b, d| b.with_purge_after(d)),
    ];
    let mut builder = keyrot_core::Policy::builder();
    if let Some(alg) = alg {
        builder = builder.with_algorithm(alg);
    }
    for (name, set) in fields {
        let var = format!("KEYROT_POLICY_{name}_MS");
        if let Ok(v) = std::env::var(&var) {
            let ms: u64 = v
                .trim()
                .parse()
                .map_err(|_| SetupError::Policy(format!("{var}={v:?} is not a number of milliseconds")))?;
            builder = set(builder, Duration::from_millis(ms));
        }
    }
    builder.build().map_err(|e| SetupError::Policy(e.to_string()))
}

/// Where the master key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MasterKeySource {
    /// `KEYROT_MASTER_KEY` (comma-separated `ID:BASE64URL`, primary first).
    Env,
    /// A file holding the same format.
    File(PathBuf),
    /// Generated now into this file (local use only).
    Generated(PathBuf),
}

/// Loads the master key(s): `KEYROT_MASTER_KEY`, else the file `explicit_file`, else
/// `KEYROT_MASTER_KEY_FILE`, else [`DEFAULT_MASTER_KEY_FILE`]. When that default file is
/// missing and `create` is set, a key is generated into it (mode 0600) for local use.
pub fn load_master_key(
    explicit_file: Option<&Path>,
    create: bool,
) -> Result<(MasterKeySealer, MasterKeySource), SetupError> {
    if let Ok(spec) = std::env::var("KEYROT_MASTER_KEY") {
        let sealer = MasterKeySealer::from_spec(&spec).map_err(|e| SetupError::MasterKey(e.to_string()))?;
        return Ok((sealer, MasterKeySource::Env));
    }
    let (path, is_default) = match explicit_file {
        Some(p) => (p.to_owned(), false),
        None => match std::env::var("KEYROT_MASTER_KEY_FILE") {
            Ok(p) => (PathBuf::from(p), false),
            Err(_) => (PathBuf::from(DEFAULT_MASTER_KEY_FILE), true),
        },
    };
    match std::fs::read_to_string(&path) {
        Ok(spec) => {
            let sealer = MasterKeySealer::from_spec(&spec)
                .map_err(|e| SetupError::MasterKey(format!("{}: {e}", path.display())))?;
            Ok((sealer, MasterKeySource::File(path)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create && is_default => {
            let id = format!("local-{}", chrono::Utc::now().format("%Y%m%d"));
            let mk = MasterKey::generate(id).map_err(|e| SetupError::MasterKey(e.to_string()))?;
            write_private_file(&path, mk.to_spec().expose())?;
            let sealer = MasterKeySealer::new(mk, []).map_err(|e| SetupError::MasterKey(e.to_string()))?;
            Ok((sealer, MasterKeySource::Generated(path)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(SetupError::MasterKey(format!(
            "no master key: set KEYROT_MASTER_KEY, KEYROT_MASTER_KEY_FILE or --master-key-file ({} does not exist)",
            path.display()
        ))),
        Err(source) => Err(SetupError::Io { path, source }),
    }
}

/// Writes `bytes` to a new file readable only by its owner.
pub fn write_private_file(path: &Path, bytes: &[u8]) -> Result<(), SetupError> {
    use std::io::Write as _;
    let io = |source| SetupError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.write_all(b"\n").map_err(io)
}

/// A random secret for generated client credentials (URL-safe, 32 bytes of entropy).
pub fn random_secret() -> Result<String, SetupError> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|_| SetupError::MasterKey("the system random number generator failed".into()))?;
    Ok(base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        b,
    ))
}
