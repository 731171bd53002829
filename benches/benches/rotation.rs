//! Rotation on real databases (keyrot-sqlx):
//!
//! * `rotation_commit/<db>`: what one rotation costs the database — take the ring's
//!   rotation lock, commit a pre-built change (a pre-generated, sealed Ed25519 key, its
//!   audit record; compare-and-swap on the generation), release the lock. Key generation
//!   is outside the timing.
//! * `propagation/<db>`: the time from the start of a forced rotation on instance A until
//!   instance B (its own pool and key ring) serves the new key: through `NOTIFY` on
//!   PostgreSQL (polling disabled), through polling every 50 ms on SQLite.
//!
//! SQLite runs on a temporary file. PostgreSQL runs in a fresh schema at
//! `KEYROT_TEST_POSTGRES_URL` and is skipped (one printed line) when it is unset.
//!
//! Run with `cargo bench -p keyrot-benches --bench rotation`.

use chrono::{TimeDelta, Utc};
use criterion::{Criterion, criterion_group, criterion_main};
use keyrot_core::conformance::{sample_audit, sample_key};
use keyrot_core::to_millis;
use keyrot_core::{
    ChangeFeed, Commit, CommitOutcome, KeyRing, KeyState, Lock, ManualClock, MasterKey, MasterKeySealer, Outcome,
    RequestContext, RingName, Rotator, Storage,
};
use keyrot_sqlx::sqlx::postgres::{PgPool, PgPoolOptions};
use keyrot_sqlx::sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use keyrot_sqlx::sqlx::{self, AssertSqlSafe};
use keyrot_sqlx::{PostgresStore, SqliteStore};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;

const PG_VAR: &str = "KEYROT_TEST_POSTGRES_URL";
const LOCK_TTL: Duration = Duration::from_secs(30);

fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}_{:x}_{}_{nanos:x}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn ring(name: &str) -> RingName {
    RingName::new(name).expect("valid ring name")
}

/// Two instances (A and B) on one database, each with its own pool.
struct Db {
    name: &'static str,
    a: (Arc<dyn Storage>, Arc<dyn Lock>),
    b_storage: Arc<dyn Storage>,
    b_feed: Arc<dyn ChangeFeed>,
    cleanup: Option<(PgPool, String)>,
    file: Option<std::path::PathBuf>,
}

async fn sqlite() -> Db {
    let path = std::env::temp_dir().join(format!("{}.db", unique("keyrot-bench")));
    let open = async |path: &std::path::Path| {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(options)
            .await
            .expect("open sqlite");
        let store = SqliteStore::new(pool);
        store.migrate().await.expect("migrate");
        store
    };
    let a = open(&path).await;
    let b = open(&path).await;
    Db {
        name: "sqlite",
        a: (Arc::new(a.clone()), Arc::new(a)),
        b_storage: Arc::new(b.clone()),
        b_feed: Arc::new(b.polling_feed(Duration::from_millis(50))),
        cleanup: None,
        file: Some(path),
    }
}

async fn postgres() -> Option<Db> {
    let Ok(url) = std::env::var(PG_VAR) else {
        println!("skipped postgres rotation benchmarks: {PG_VAR} not set");
        return None;
    };
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .expect("PostgreSQL reachable");
    let schema = unique("keyrot_bench");
    let store = async || {
        let pool = PgPoolOptions::new()
            .max_connections(3)
            .connect(&url)
            .await
            .expect("connect");
        let store = PostgresStore::builder(pool)
            .with_schema(schema.clone())
            .build()
            .expect("store");
        store.migrate().await.expect("migrate");
        store
    };
    let a = store().await;
    let b = store().await;
    Some(Db {
        name: "postgres",
        a: (Arc::new(a.clone()), Arc::new(a)),
        b_storage: Arc::new(b.clone()),
        b_feed: Arc::new(b),
        cleanup: Some((admin, schema)),
        file: None,
    })
}

impl Db {
    async fn finish(self) {
        if let Some((admin, schema)) = self.cleanup {
            sqlx::raw_sql(AssertSqlSafe(format!(r#"DROP SCHEMA "{schema}" CASCADE"#)))
                .execute(&admin)
                .await
                .expect("drop bench schema");
        }
        if let Some(path) = self.file {
            for suffix in ["", "-wal", "-shm"] {
                let mut p = path.clone().into_os_string();
                p.push(suffix);
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

/// Lock + commit of a pre-built change + release, `iters` times on a fresh ring.
async fn lock_and_commit(db: &Db, iters: u64) -> Duration {
    let r = ring(&unique("commit"));
    let (storage, lock) = &db.a;
    let at = to_millis(Utc::now());
    // Pre-generated and sealed outside the timing.
    let keys: Vec<_> = (0..iters)
        .map(|_| sample_key(r.as_str(), KeyState::Active, at))
        .collect();
    let sealer = Arc::new(MasterKeySealer::new(MasterKey::generate("bench").expect("mk"), []).expect("sealer"));
    let linker = keyrot_core::SealerLinker::new(sealer);
    let mut total = Duration::ZERO;
    for (generation, key) in (0u64..).zip(keys) {
        let commit = Commit {
            ring: r.clone(),
            expected_generation: generation,
            keys: vec![key],
            audit: sample_audit(r.as_str(), at, generation + 1, Outcome::Rotated),
            idempotency: None,
            // The size of a real ten-key manifest.
            manifest: "m".repeat(1_012),
            next_due: None,
        };
        let start = Instant::now();
        let guard = lock
            .try_acquire(&r, "bench", LOCK_TTL)
            .await
            .expect("lock")
            .expect("free lock");
        let outcome = storage.commit(&commit, &linker).await.expect("commit");
        guard.release().await.expect("release");
        total += start.elapsed();
        assert_eq!(outcome, CommitOutcome::Committed);
    }
    total
}

/// A forced rotation on A, until B serves the new key; `iters` times.
async fn propagation(db: &Db, iters: u64) -> Duration {
    let r = ring(&unique("propagation"));
    let clock = ManualClock::new(to_millis(Utc::now()));
    let sealer = Arc::new(MasterKeySealer::new(MasterKey::generate("bench").expect("mk"), []).expect("sealer"));
    let rot = Rotator::builder(r.clone(), db.a.0.clone(), db.a.1.clone(), sealer.clone())
        .with_clock(Arc::new(clock.clone()))
        .build();
    rot.init(RequestContext::actor("bench")).await.expect("init");
    let b = KeyRing::builder(r.clone(), db.b_storage.clone(), sealer)
        .with_clock(Arc::new(clock.clone()))
        .build()
        .await
        .expect("B");
    // Polling of the generation disabled: only the change feed tells B.
    let refresher = b.spawn_refresher(Some(db.b_feed.clone()), Duration::from_secs(3600));
    // Let B subscribe before measuring.
    let warm = Instant::now();
    while b.snapshot().generation() < 1 && warm.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        clock.advance(TimeDelta::minutes(61));
        let start = Instant::now();
        let rep = rot
            .force_rotate(RequestContext::actor("bench"), "bench", false)
            .await
            .expect("rotate");
        assert_eq!(rep.outcome, Outcome::Rotated);
        while b.snapshot().generation() < rep.generation {
            assert!(start.elapsed() < Duration::from_secs(5), "B never saw the rotation");
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        total += start.elapsed();
    }
    refresher.shutdown().await;
    total
}

fn bench(c: &mut Criterion) {
    let rt = Runtime::new().expect("tokio runtime");
    let mut dbs = vec![rt.block_on(sqlite())];
    if let Some(pg) = rt.block_on(postgres()) {
        dbs.push(pg);
    }

    let mut g = c.benchmark_group("rotation_commit");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for db in &dbs {
        g.bench_function(db.name, |b| {
            b.iter_custom(|iters| rt.block_on(lock_and_commit(db, iters)))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("propagation");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    for db in &dbs {
        let id = if db.name == "postgres" {
            "postgres_notify"
        } else {
            "sqlite_polling_50ms"
        };
        g.bench_function(id, |b| b.iter_custom(|iters| rt.block_on(propagation(db, iters))));
    }
    g.finish();

    for db in dbs {
        rt.block_on(db.finish());
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
