//! Test helpers: real servers from environment variables, one fresh schema or database
//! per test, temp SQLite files, and a TCP proxy that can cut a connection.
//!
//! `KEYROT_TEST_POSTGRES_URL` / `KEYROT_TEST_MYSQL_URL` unset: the test prints one line
//! and returns, unless `CI=true`, where it fails (as it does when a server is unreachable).

#![allow(dead_code)]

use keyrot_core::{MasterKey, MasterKeySealer, RingName};
use keyrot_sqlx::sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};
use keyrot_sqlx::sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use keyrot_sqlx::sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use keyrot_sqlx::sqlx::{self, AssertSqlSafe};
use keyrot_sqlx::{MySqlStore, PostgresStore, SqliteStore};
use std::hash::BuildHasher as _;
use std::path::PathBuf;
use std::str::FromStr as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub const PG_VAR: &str = "KEYROT_TEST_POSTGRES_URL";
pub const MYSQL_VAR: &str = "KEYROT_TEST_MYSQL_URL";

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// The server URL in `var`; `None` (after printing one line unless `quiet`) when unset,
/// a failure under `CI=true`.
pub fn server_url(var: &str, test: &str, quiet: bool) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            assert!(!in_ci(), "{var} must be set when CI=true ({test} needs the server)");
            if !quiet {
                println!("skipped {test}: {var} not set");
            }
            None
        }
    }
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let r = std::collections::hash_map::RandomState::new().hash_one((std::process::id(), n));
    format!("{prefix}_{:x}_{n}_{:012x}", std::process::id(), r & 0xffff_ffff_ffff)
}

pub fn ring(name: &str) -> RingName {
    RingName::new(name).expect("valid ring name")
}

pub fn sealer() -> std::sync::Arc<MasterKeySealer> {
    std::sync::Arc::new(MasterKeySealer::new(MasterKey::generate("test-mk").expect("master key"), []).expect("sealer"))
}

/// A fresh PostgreSQL schema for one test.
pub struct PgTest {
    pub url: String,
    pub schema: String,
    admin: PgPool,
}

impl PgTest {
    pub async fn new(test: &str, quiet: bool) -> Option<Self> {
        let url = server_url(PG_VAR, test, quiet)?;
        let admin = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(10))
            .connect(&url)
            .await
            .expect("PostgreSQL at KEYROT_TEST_POSTGRES_URL is reachable");
        let schema = unique("keyrot_t");
        sqlx::raw_sql(AssertSqlSafe(format!(r#"CREATE SCHEMA "{schema}""#)))
            .execute(&admin)
            .await
            .expect("create test schema");
        Some(Self { url, schema, admin })
    }

    pub fn options(&self) -> PgConnectOptions {
        PgConnectOptions::from_str(&self.url).expect("valid postgres url")
    }

    /// A pool of its own (as one instance has), named `app` in `pg_stat_activity`.
    pub async fn pool_with(&self, options: PgConnectOptions, max: u32, app: &str) -> PgPool {
        PgPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.application_name(app))
            .await
            .expect("connect to PostgreSQL")
    }

    pub async fn pool(&self, max: u32, app: &str) -> PgPool {
        self.pool_with(self.options(), max, app).await
    }

    pub fn store(&self, pool: PgPool) -> PostgresStore {
        PostgresStore::builder(pool)
            .with_schema(self.schema.clone())
            .build()
            .expect("valid store names")
    }

    /// A migrated store on a pool of its own.
    pub async fn instance(&self, max: u32, app: &str) -> PostgresStore {
        let store = self.store(self.pool(max, app).await);
        store.migrate().await.expect("migrate");
        store
    }

    pub fn admin(&self) -> &PgPool {
        &self.admin
    }

    pub async fn finish(self) {
        sqlx::raw_sql(AssertSqlSafe(format!(r#"DROP SCHEMA "{}" CASCADE"#, self.schema)))
            .execute(&self.admin)
            .await
            .expect("drop test schema");
        self.admin.close().await;
    }
}

/// A fresh MySQL/MariaDB database for one test.
pub struct MySqlTest {
    pub url: String,
    pub database: String,
    admin: MySqlPool,
}

impl MySqlTest {
    pub async fn new(test: &str, quiet: bool) -> Option<Self> {
        let url = server_url(MYSQL_VAR, test, quiet)?;
        let admin = MySqlPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(10))
            .connect(&url)
            .await
            .expect("MySQL at KEYROT_TEST_MYSQL_URL is reachable");
        let database = unique("keyrot_t");
        sqlx::raw_sql(AssertSqlSafe(format!(
            "CREATE DATABASE `{database}` CHARACTER SET utf8mb4"
        )))
        .execute(&admin)
        .await
        .expect("create test database");
        Some(Self { url, database, admin })
    }

    pub fn options(&self) -> MySqlConnectOptions {
        MySqlConnectOptions::from_str(&self.url)
            .expect("valid mysql url")
            .database(&self.database)
    }

    pub async fn pool_with(&self, options: MySqlConnectOptions, max: u32) -> MySqlPool {
        MySqlPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .expect("connect to MySQL")
    }

    pub async fn pool(&self, max: u32) -> MySqlPool {
        self.pool_with(self.options(), max).await
    }

    pub async fn instance(&self, max: u32) -> MySqlStore {
        let store = MySqlStore::new(self.pool(max).await);
        store.migrate().await.expect("migrate");
        store
    }

    pub fn admin(&self) -> &MySqlPool {
        &self.admin
    }

    pub async fn finish(self) {
        sqlx::raw_sql(AssertSqlSafe(format!("DROP DATABASE `{}`", self.database)))
            .execute(&self.admin)
            .await
            .expect("drop test database");
        self.admin.close().await;
    }
}

/// A temporary SQLite database file, removed (with its WAL files) on drop.
pub struct SqliteFile {
    pub path: PathBuf,
}

impl SqliteFile {
    pub fn new() -> Self {
        Self {
            path: std::env::temp_dir().join(format!("{}.db", unique("keyrot-test"))),
        }
    }

    /// A pool of its own on the file (as one process has).
    pub async fn pool(&self, max: u32) -> SqlitePool {
        let options = SqliteConnectOptions::new()
            .filename(&self.path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(30));
        SqlitePoolOptions::new()
            .max_connections(max)
            .connect_with(options)
            .await
            .expect("open sqlite file")
    }

    pub async fn instance(&self, max: u32) -> SqliteStore {
        let store = SqliteStore::new(self.pool(max).await);
        store.migrate().await.expect("migrate");
        store
    }
}

impl Drop for SqliteFile {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut p = self.path.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    }
}

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Open,
    /// Connections stay open but no byte passes (a partition, a frozen host).
    Frozen,
    /// Connections are closed and new ones refused.
    Cut,
}

/// A TCP proxy on 127.0.0.1 in front of a real server. `cut()` drops every open
/// connection and refuses new ones (accepts and closes them) until `restore()`;
/// `freeze()` keeps open connections open but passes nothing on them.
pub struct Proxy {
    pub port: u16,
    mode: watch::Sender<Mode>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target_host: &str, target_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let (mode, mode_rx) = watch::channel(Mode::Open);
        let target = format!("{target_host}:{target_port}");
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if *mode_rx.borrow() != Mode::Open {
                    drop(inbound);
                    continue;
                }
                let mut rx = mode_rx.clone();
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&target).await else {
                        return;
                    };
                    let frozen = tokio::select! {
                        _ = copy_bidirectional(&mut inbound, &mut outbound) => false,
                        m = rx.wait_for(|m| *m != Mode::Open) => m.map(|m| *m == Mode::Frozen).unwrap_or(false),
                    };
                    if frozen {
                        // Hold both sockets open, silent, until the proxy is cut or dropped.
                        let _ = rx.wait_for(|m| *m == Mode::Cut).await;
                    }
                    drop((inbound, outbound));
                });
            }
        });
        Self { port, mode, task }
    }

    pub fn cut(&self) {
        self.mode.send_replace(Mode::Cut);
    }

    pub fn freeze(&self) {
        self.mode.send_replace(Mode::Frozen);
    }

    pub fn restore(&self) {
        self.mode.send_replace(Mode::Open);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.mode.send_replace(Mode::Cut);
        self.task.abort();
    }
}

/// Raw SQL on a store's tables, as someone with write access to the database (and, where
/// a test says so, the rights to get the ledger's triggers out of the way) but without the
/// master key would issue it.
#[derive(Clone)]
pub enum RawDb {
    Postgres { pool: PgPool, schema: String },
    MySql { pool: MySqlPool },
    Sqlite { pool: SqlitePool },
}

/// A SQL string literal (test values only: no backslashes, which MySQL would interpret).
pub fn lit(s: &str) -> String {
    assert!(!s.contains('\\'), "test literal with a backslash: {s:?}");
    format!("'{}'", s.replace('\'', "''"))
}

/// A nullable millisecond timestamp as SQL.
pub fn ms(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map_or_else(|| "NULL".to_owned(), |t| t.timestamp_millis().to_string())
}

impl RawDb {
    /// Replaces `{rings}`, `{keys}`, `{audit}`, `{audit_guard}`, `{master_keys}` and
    /// `{migrations}` with the store's (qualified) table names.
    pub fn render(&self, sql: &str) -> String {
        let q = match self {
            RawDb::Postgres { schema, .. } => format!(r#""{schema}"."#),
            _ => String::new(),
        };
        let mut out = sql.to_owned();
        for t in ["rings", "keys", "audit_guard", "audit", "master_keys", "migrations"] {
            out = out.replace(&format!("{{{t}}}"), &format!("{q}keyrot_{t}"));
        }
        out
    }

    /// Runs `sql` (rendered); the rows it affected, or the database's error message.
    pub async fn exec(&self, sql: &str) -> Result<u64, String> {
        let sql = AssertSqlSafe(self.render(sql));
        let r = match self {
            RawDb::Postgres { pool, .. } => sqlx::raw_sql(sql).execute(pool).await.map(|r| r.rows_affected()),
            RawDb::MySql { pool } => sqlx::raw_sql(sql).execute(pool).await.map(|r| r.rows_affected()),
            RawDb::Sqlite { pool } => sqlx::raw_sql(sql).execute(pool).await.map(|r| r.rows_affected()),
        };
        r.map_err(|e| e.to_string())
    }

    /// Runs `sql`, which must succeed.
    pub async fn must(&self, sql: &str) -> u64 {
        match self.exec(sql).await {
            Ok(n) => n,
            Err(e) => panic!("{sql}: {e}"),
        }
    }

    /// Runs `sql` with the ledger's triggers out of the way, as a database superuser or
    /// anyone with DDL rights could: on PostgreSQL `session_replication_role = replica` in
    /// the same transaction (triggers stay in place), on MySQL and SQLite the triggers are
    /// dropped.
    pub async fn exec_without_triggers(&self, sql: &str) -> u64 {
        let rendered = self.render(sql);
        let r = match self {
            RawDb::Postgres { pool, .. } => {
                let mut tx = pool.begin().await.expect("begin");
                sqlx::raw_sql("SET LOCAL session_replication_role = replica")
                    .execute(&mut *tx)
                    .await
                    .expect("replica role (superuser)");
                let n = sqlx::raw_sql(AssertSqlSafe(rendered))
                    .execute(&mut *tx)
                    .await
                    .map(|r| r.rows_affected());
                tx.commit().await.expect("commit");
                n
            }
            RawDb::MySql { pool } => {
                for t in ["keyrot_audit_no_update", "keyrot_audit_no_delete"] {
                    sqlx::raw_sql(AssertSqlSafe(format!("DROP TRIGGER IF EXISTS {t}")))
                        .execute(pool)
                        .await
                        .expect("drop trigger");
                }
                sqlx::raw_sql(AssertSqlSafe(rendered))
                    .execute(pool)
                    .await
                    .map(|r| r.rows_affected())
            }
            RawDb::Sqlite { pool } => {
                sqlx::raw_sql(
                    r#"DROP TRIGGER IF EXISTS "keyrot_audit_no_update"; DROP TRIGGER IF EXISTS "keyrot_audit_no_delete"; DROP TRIGGER IF EXISTS "keyrot_audit_no_replace""#,
                )
                .execute(pool)
                .await
                .expect("drop triggers");
                sqlx::raw_sql(AssertSqlSafe(rendered))
                    .execute(pool)
                    .await
                    .map(|r| r.rows_affected())
            }
        };
        r.unwrap_or_else(|e| panic!("{sql}: {e}"))
    }
}

enum Owner {
    Postgres(PgTest, PostgresStore),
    MySql(MySqlTest, MySqlStore, MySqlPool),
    Sqlite(SqliteFile, SqliteStore, SqlitePool),
}

/// A migrated store on a fresh schema (PostgreSQL), database (MySQL) or file (SQLite),
/// with raw access to its tables on a connection of its own.
pub struct TestDb {
    pub name: &'static str,
    pub storage: std::sync::Arc<dyn keyrot_core::Storage>,
    pub lock: std::sync::Arc<dyn keyrot_core::Lock>,
    pub raw: RawDb,
    owner: Owner,
}

impl TestDb {
    pub async fn postgres(test: &str) -> Option<Self> {
        let t = PgTest::new(test, false).await?;
        let store = t.instance(4, "keyrot-test-store").await;
        let raw = RawDb::Postgres {
            pool: t.admin().clone(),
            schema: t.schema.clone(),
        };
        Some(Self {
            name: "postgres",
            storage: std::sync::Arc::new(store.clone()),
            lock: std::sync::Arc::new(store.clone()),
            raw,
            owner: Owner::Postgres(t, store),
        })
    }

    pub async fn mysql(test: &str) -> Option<Self> {
        let t = MySqlTest::new(test, false).await?;
        let store = t.instance(4).await;
        let pool = t.pool(2).await;
        Some(Self {
            name: "mysql",
            storage: std::sync::Arc::new(store.clone()),
            lock: std::sync::Arc::new(store.clone()),
            raw: RawDb::MySql { pool: pool.clone() },
            owner: Owner::MySql(t, store, pool),
        })
    }

    pub async fn sqlite() -> Self {
        let file = SqliteFile::new();
        let store = file.instance(4).await;
        let pool = file.pool(2).await;
        Self {
            name: "sqlite",
            storage: std::sync::Arc::new(store.clone()),
            lock: std::sync::Arc::new(store.clone()),
            raw: RawDb::Sqlite { pool: pool.clone() },
            owner: Owner::Sqlite(file, store, pool),
        }
    }

    /// The store's table of wrapped master keys.
    pub fn master_keys(&self) -> std::sync::Arc<dyn keyrot_core::custody::MasterKeyStorage> {
        match &self.owner {
            Owner::Postgres(_, s) => std::sync::Arc::new(s.clone()),
            Owner::MySql(_, s, _) => std::sync::Arc::new(s.clone()),
            Owner::Sqlite(_, s, _) => std::sync::Arc::new(s.clone()),
        }
    }

    /// Runs the store's `migrate()` again.
    pub async fn migrate(&self) -> Result<(), keyrot_core::StorageError> {
        match &self.owner {
            Owner::Postgres(_, s) => s.migrate().await,
            Owner::MySql(_, s, _) => s.migrate().await,
            Owner::Sqlite(_, s, _) => s.migrate().await,
        }
    }

    pub async fn finish(self) {
        match self.owner {
            Owner::Postgres(t, store) => {
                store.pool().close().await;
                t.finish().await;
            }
            Owner::MySql(t, store, pool) => {
                store.pool().close().await;
                pool.close().await;
                t.finish().await;
            }
            Owner::Sqlite(file, store, pool) => {
                store.pool().close().await;
                pool.close().await;
                drop(file);
            }
        }
    }
}

/// One `#[tokio::test]` per database for each `async fn scenario(db: &TestDb)` named:
/// `postgres::scenario`, `mysql::scenario`, `sqlite::scenario`.
#[macro_export]
macro_rules! on_every_database {
    ($($scenario:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    if let Some(db) = super::common::TestDb::postgres(concat!("postgres ", stringify!($scenario))).await {
                        super::$scenario(&db).await;
                        db.finish().await;
                    }
                }
            )*
        }
        mod mysql {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    if let Some(db) = super::common::TestDb::mysql(concat!("mysql ", stringify!($scenario))).await {
                        super::$scenario(&db).await;
                        db.finish().await;
                    }
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let db = super::common::TestDb::sqlite().await;
                    super::$scenario(&db).await;
                    db.finish().await;
                }
            )*
        }
    };
}
