//! Runs the `cluster` binary against a fresh PostgreSQL database (`KEYROT_TEST_POSTGRES_URL`)
//! and checks that it reports exactly one rotation and exits 0.

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
    let Ok(url) = std::env::var("KEYROT_TEST_POSTGRES_URL") else {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "CI=true but KEYROT_TEST_POSTGRES_URL is unset: the cluster test needs PostgreSQL"
        );
        println!("skipped: set KEYROT_TEST_POSTGRES_URL to run the cluster demo against PostgreSQL");
        return;
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .subsec_nanos();
    let db = format!("keyrot_cluster_{}_{nanos}", std::process::id());
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
            .args(["--instances", "3"])
            .env("KEYROT_DATABASE_URL", db_url)
            .env_remove("KEYROT_MASTER_KEY")
            .env_remove("KEYROT_MASTER_KEY_FILE")
            .output()
    })
    .await
    .expect("the runner task finished");

    let dropped = sqlx::raw_sql(AssertSqlSafe(format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")))
        .execute(&admin)
        .await;
    admin.close().await;

    let output = output.expect("run the cluster binary");
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
    dropped.expect("drop the test database");
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
