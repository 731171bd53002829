//! Runs the `cluster` binary against a fresh PostgreSQL database (`KEYROT_TEST_POSTGRES_URL`)
//! and checks that it reports exactly one rotation and exits 0; and with `--rings`, that
//! ring managers rotate every due ring exactly once and say so in the summary line. The same
//! one-ring demo on a fresh MariaDB/MySQL database (`KEYROT_TEST_MYSQL_URL`) and on a SQLite
//! file, which poll instead of a change feed; and databases it cannot use are refused up
//! front (exit 2).

use keyrot_sqlx::sqlx::{self, AssertSqlSafe, MySqlPool, PgPool};
use std::process::Command;

/// `url` with its database replaced by `db` (parameters kept).
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority = base.find("://").map_or(0, |i| i + 3);
    let path = base[authority..].find('/').map_or(base.len(), |i| authority + i);
    let query = query.map(|q| format!("?{q}")).unwrap_or_default();
    format!("{}/{db}{query}", &base[..path])
}

#[tokio::test]
async fn exactly_one_instance_rotates_and_every_instance_serves_the_new_key() {
    let Some(output) = run_on_fresh_database(&["--instances", "3"]).await else {
        return;
    };
    let stdout = exactly_one_rotation(&output, 3, "postgres");
    assert!(
        stdout.contains("  refresh    LISTEN/NOTIFY, polling every 1 s as a fallback"),
        "PostgreSQL instances learn of changes by NOTIFY"
    );
}

/// The one-ring demo's output passed: exit 0, one bootstrap, one rotation, every one of
/// `instances` connected to `kind`. Its standard output.
fn exactly_one_rotation(output: &std::process::Output, instances: usize, kind: &str) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(output.status.success(), "cluster exited with {}", output.status);
    assert!(
        stdout.contains("exactly one rotation"),
        "the summary reports exactly one rotation"
    );
    let rotated = stdout.lines().filter(|l| l.contains("force_rotate → rotated")).count();
    assert_eq!(rotated, 1, "one force_rotate attempt rotated");
    let bootstrapped = stdout.lines().filter(|l| l.contains("init → bootstrapped")).count();
    assert_eq!(bootstrapped, 1, "one init bootstrapped the ring");
    let connected = format!("connected ({kind}, own pool)");
    assert_eq!(
        stdout.lines().filter(|l| l.contains(&connected)).count(),
        instances,
        "every instance connected to {kind}"
    );
    let served = stdout.lines().filter(|l| l.contains("serves Active kid")).count();
    assert_eq!(served, 2 * instances, "every instance served the first and the new key");
    stdout
}

/// The demo on MariaDB/MySQL: no change feed, so every instance polls, and still exactly
/// one rotates and every one serves the new key in time.
#[tokio::test]
async fn the_demo_runs_on_mariadb_by_polling() {
    let Ok(url) = std::env::var("KEYROT_TEST_MYSQL_URL") else {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "CI=true but KEYROT_TEST_MYSQL_URL is unset: the cluster test needs MariaDB or MySQL"
        );
        println!("skipped: set KEYROT_TEST_MYSQL_URL to run the cluster demo against MariaDB/MySQL");
        return;
    };
    let db = unique_name("keyrot_cluster");
    let admin = MySqlPool::connect(&url)
        .await
        .expect("connect to KEYROT_TEST_MYSQL_URL");
    sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE `{db}` CHARACTER SET utf8mb4")))
        .execute(&admin)
        .await
        .expect("create the test database");
    // `mariadb://` is accepted as well as `mysql://`.
    let db_url = with_database(&url, &db).replacen("mysql://", "mariadb://", 1);
    let output = run_binary(vec!["--instances".into(), "3".into()], db_url).await;
    sqlx::raw_sql(AssertSqlSafe(format!("DROP DATABASE IF EXISTS `{db}`")))
        .execute(&admin)
        .await
        .expect("drop the test database");
    admin.close().await;
    let stdout = exactly_one_rotation(&output, 3, "mysql");
    assert!(
        stdout.contains("  refresh    polling the ring's generation every 250 ms (MySQL/MariaDB has no change feed)"),
        "the header says the instances poll"
    );
}

/// The demo on a SQLite file its instances share.
#[tokio::test]
async fn the_demo_runs_on_a_sqlite_file_by_polling() {
    let dir = std::env::temp_dir().join(unique_name("keyrot-cluster"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let db_url = format!("sqlite:{}", dir.join("cluster.db").display());
    let output = run_binary(vec!["--instances".into(), "3".into()], db_url).await;
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = exactly_one_rotation(&output, 3, "sqlite");
    assert!(
        stdout.contains("  refresh    polling the ring's generation every 250 ms (a SQLite file has no change feed)"),
        "the header says the instances poll"
    );
}

/// What the demo cannot use is refused before anything starts, with exit 2 and a message
/// that names what it needs; `--help` names the databases.
#[tokio::test]
async fn databases_the_demo_cannot_use_are_refused_up_front() {
    for (url, rings, says) in [
        (
            "sqlite::memory:",
            false,
            "an in-memory SQLite database is each connection pool's own",
        ),
        (
            "sqlite:",
            false,
            "an in-memory SQLite database is each connection pool's own",
        ),
        (
            "redis://cache:6379/0",
            false,
            "runs on postgres://…, mysql://…, mariadb://… or sqlite:FILE, not \"redis\"",
        ),
        (
            "sqlite:cluster-never-created.db",
            true,
            "--rings needs PostgreSQL (postgres://…), not a SQLite file",
        ),
        (
            "mysql://127.0.0.1:1/x",
            true,
            "--rings needs PostgreSQL (postgres://…), not MySQL/MariaDB",
        ),
    ] {
        let mut args = vec![];
        if rings {
            args.extend(["--rings".to_owned(), "2".to_owned()]);
        }
        let output = run_binary(args, url.to_owned()).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{url}: {stderr}");
        assert!(
            stderr.starts_with("cluster: ") && stderr.contains(says),
            "{url}: {stderr}"
        );
        assert!(output.stdout.is_empty(), "{url}: nothing started");
    }
    assert!(
        !std::path::Path::new("cluster-never-created.db").exists(),
        "the refused run created no file"
    );
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_cluster"))
        .arg("--help")
        .output()
        .expect("run cluster --help");
    let help = String::from_utf8_lossy(&help.stdout);
    for says in [
        "PostgreSQL (postgres://…; instances learn of changes by LISTEN/NOTIFY",
        "MySQL or MariaDB (mysql://…, mariadb://…) and a SQLite file (sqlite:FILE), which have no change feed",
        "`--rings` needs PostgreSQL",
    ] {
        assert!(help.contains(says), "--help names {says:?}:\n{help}");
    }
}

/// A name no other test (or earlier run) uses.
fn unique_name(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .subsec_nanos();
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix}_{}_{n}_{nanos}", std::process::id())
}

/// Runs the binary with `args` on `db_url`, with a master key of its own.
async fn run_binary(args: Vec<String>, db_url: String) -> std::process::Output {
    let binary = env!("CARGO_BIN_EXE_cluster");
    tokio::task::spawn_blocking(move || {
        Command::new(binary)
            .args(args)
            .env("KEYROT_DATABASE_URL", db_url)
            .env_remove("KEYROT_MASTER_KEY")
            .env_remove("KEYROT_MASTER_KEY_FILE")
            .output()
    })
    .await
    .expect("the runner task finished")
    .expect("run the cluster binary")
}

/// Runs the binary with `args` on a fresh database; its output (`None`: skipped).
async fn run_on_fresh_database(args: &'static [&'static str]) -> Option<std::process::Output> {
    let Ok(url) = std::env::var("KEYROT_TEST_POSTGRES_URL") else {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "CI=true but KEYROT_TEST_POSTGRES_URL is unset: the cluster test needs PostgreSQL"
        );
        println!("skipped: set KEYROT_TEST_POSTGRES_URL to run the cluster demo against PostgreSQL");
        return None;
    };
    let db = unique_name("keyrot_cluster");
    let admin = PgPool::connect(&url)
        .await
        .expect("connect to KEYROT_TEST_POSTGRES_URL");
    sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {db}")))
        .execute(&admin)
        .await
        .expect("create the test database");
    let args = args.iter().map(|a| (*a).to_owned()).collect();
    let output = run_binary(args, with_database(&url, &db)).await;
    sqlx::raw_sql(AssertSqlSafe(format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")))
        .execute(&admin)
        .await
        .expect("drop the test database");
    admin.close().await;
    Some(output)
}

#[tokio::test]
async fn ring_managers_rotate_every_due_ring_exactly_once() {
    let args = &[
        "--rings",
        "24",
        "--instances",
        "3",
        "--due-percent",
        "50",
        "--idle-seconds",
        "3",
        "--tick-seconds",
        "1",
    ];
    let Some(output) = run_on_fresh_database(args).await else {
        return;
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "cluster exited with {}", output.status);
    let summary = stdout.lines().last().expect("a summary line");
    let prefix = "rings: 24, instances: 3, rotations: 12 (exactly once: yes), idle queries per instance per minute: ";
    let rest = summary
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("the summary line has the documented form: {summary:?}"));
    let (q, c) = rest
        .split_once(", peak connections per instance: ")
        .expect("the summary names peak connections");
    let q: f64 = q.parse().expect("idle queries per minute is a number");
    let c: u32 = c.parse().expect("peak connections is a whole number");
    // One pass a second (plus jitter) reads the due-ring index once: about 45-60 a minute,
    // whatever the number of rings.
    assert!(q > 0.0 && q <= 70.0, "idle queries per instance per minute: {q}");
    assert!(
        (1..=9).contains(&c),
        "peak connections per instance within the pool: {c}"
    );
}

#[test]
fn database_is_replaced_in_urls() {
    assert_eq!(
        with_database("postgres://u:p@h:5432/test", "x"),
        "postgres://u:p@h:5432/x"
    );
    assert_eq!(
        with_database("postgres://h/test?sslmode=disable", "x"),
        "postgres://h/x?sslmode=disable"
    );
    assert_eq!(with_database("postgresql://h:1", "x"), "postgresql://h:1/x");
}
