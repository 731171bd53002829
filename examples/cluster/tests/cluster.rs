//! Runs the `cluster` binary against a fresh PostgreSQL database (`KEYROT_TEST_POSTGRES_URL`)
//! and checks that it reports exactly one rotation and exits 0; and with `--rings`, that
//! ring managers rotate every due ring exactly once and say so in the summary line.

use keyrot_sqlx::sqlx::{self, AssertSqlSafe, PgPool};
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
    let stdout = String::from_utf8_lossy(&output.stdout);
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
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .subsec_nanos();
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let db = format!("keyrot_cluster_{}_{n}_{nanos}", std::process::id());
    let admin = PgPool::connect(&url)
        .await
        .expect("connect to KEYROT_TEST_POSTGRES_URL");
    sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {db}")))
        .execute(&admin)
        .await
        .expect("create the test database");
    let binary = env!("CARGO_BIN_EXE_cluster");
    let db_url = with_database(&url, &db);
    let output = tokio::task::spawn_blocking(move || {
        Command::new(binary)
            .args(args)
            .env("KEYROT_DATABASE_URL", db_url)
            .env_remove("KEYROT_MASTER_KEY")
            .env_remove("KEYROT_MASTER_KEY_FILE")
            .output()
    })
    .await
    .expect("the runner task finished");
    sqlx::raw_sql(AssertSqlSafe(format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")))
        .execute(&admin)
        .await
        .expect("drop the test database");
    admin.close().await;
    Some(output.expect("run the cluster binary"))
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
