//! Propagation: instance B (its own pool and key ring) learns of a rotation committed by
//! instance A — through `NOTIFY` on PostgreSQL with polling effectively disabled, through
//! polling on MySQL and SQLite.

mod common;

use chrono::{TimeDelta, Utc};
use common::{MySqlTest, PgTest, SqliteFile, ring, sealer};
use keyrot_core::to_millis;
use keyrot_core::{ChangeFeed, KeyRing, Lock, ManualClock, Outcome, RequestContext, Rotator, Storage};
use keyrot_sqlx::sqlx;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// No poll within the test: only the change feed can tell B.
const NO_POLLING: Duration = Duration::from_secs(3600);
const POLL: Duration = Duration::from_millis(200);

/// A rotates 5 times; each time, measures how long until B's snapshot shows it.
/// Returns the latencies.
async fn propagate(
    name: &str,
    a: (Arc<dyn Storage>, Arc<dyn Lock>),
    b_storage: Arc<dyn Storage>,
    b_feed: Arc<dyn ChangeFeed>,
    poll_interval: Duration,
    bound: Duration,
    ready: impl AsyncFnOnce(),
) -> Vec<Duration> {
    let r = ring("propagation");
    let clock = ManualClock::new(to_millis(Utc::now()));
    let sealer = sealer();
    let rot_a = Rotator::builder(r.clone(), a.0, a.1, sealer.clone())
        .with_clock(Arc::new(clock.clone()))
        .with_instance("a")
        .build();
    rot_a.init(RequestContext::actor("test")).await.expect("init");
    let b = KeyRing::builder(r.clone(), b_storage, sealer)
        .with_clock(Arc::new(clock.clone()))
        .build()
        .await
        .expect("B");
    assert_eq!(b.snapshot().generation(), 1);
    let refresher = b.spawn_refresher(Some(b_feed), poll_interval);
    ready().await;

    let mut latencies = Vec::new();
    for round in 0..5 {
        clock.advance(TimeDelta::minutes(61));
        // Measured from before A starts its rotation (lock, generate, commit, release):
        // an upper bound on the time from A's commit to B's snapshot.
        let started = Instant::now();
        let rep = rot_a
            .force_rotate(RequestContext::actor("a"), "propagation", false)
            .await
            .expect("rotate");
        assert_eq!(rep.outcome, Outcome::Rotated);
        let seen = tokio::time::timeout(bound, async {
            while b.snapshot().generation() < rep.generation {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await;
        let latency = started.elapsed();
        assert!(
            seen.is_ok(),
            "{name} round {round}: B did not see generation {} within {bound:?}",
            rep.generation
        );
        assert_eq!(
            b.snapshot().active_kid(),
            rep.new_kid.as_deref(),
            "{name}: B signs with A's new key"
        );
        latencies.push(latency);
    }
    refresher.shutdown().await;
    let max = latencies.iter().max().copied().unwrap_or_default();
    println!("{name}: B saw A's rotations after {latencies:?} (max {max:?}, bound {bound:?})");
    assert!(max < bound);
    latencies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_notify_reaches_another_instance_within_a_second() {
    let Some(t) = PgTest::new("postgres propagation", false).await else {
        return;
    };
    let a = t.instance(3, "keyrot-prop-a").await;
    let app_b = format!("{}-b", t.schema);
    let b = t.instance(3, &app_b).await;
    let admin = t.admin().clone();
    let listening = async || {
        // B's refresher has subscribed: its listener session ran LISTEN.
        let start = Instant::now();
        loop {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND query LIKE 'LISTEN%'",
            )
            .bind(&app_b)
            .fetch_one(&admin)
            .await
            .expect("pg_stat_activity");
            if n > 0 {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "B never listened");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    propagate(
        "postgres NOTIFY",
        (Arc::new(a.clone()), Arc::new(a.clone())),
        Arc::new(b.clone()),
        Arc::new(b.clone()),
        NO_POLLING,
        Duration::from_secs(1),
        listening,
    )
    .await;
    a.pool().close().await;
    b.pool().close().await;
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_change_feed_resyncs_after_reconnect() {
    let Some(t) = PgTest::new("postgres feed resync", false).await else {
        return;
    };
    let app = format!("{}-feed", t.schema);
    let store = t.instance(3, &app).await;
    let r = ring("resync");
    let mut stream = store.subscribe(&r).await.expect("subscribe");
    // The listener's session is killed: the stream reconnects and asks for a full reload.
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1 AND query LIKE 'LISTEN%'",
    )
    .bind(&app)
    .fetch_all(t.admin())
    .await
    .expect("terminate");
    assert_eq!(killed, vec![true]);
    let ev = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("event");
    assert_eq!(ev.expect("reconnected"), keyrot_core::FeedEvent::Resync);
    // And it listens again afterwards.
    let other = t.instance(2, "keyrot-feed-writer").await;
    let clock = ManualClock::new(to_millis(Utc::now()));
    let rot = Rotator::builder(r.clone(), Arc::new(other.clone()), Arc::new(other.clone()), sealer())
        .with_clock(Arc::new(clock))
        .build();
    rot.init(RequestContext::actor("test")).await.expect("init");
    let ev = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("event");
    assert_eq!(ev.expect("notification"), keyrot_core::FeedEvent::Changed(1));
    drop(stream);
    store.pool().close().await;
    other.pool().close().await;
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_polling_reaches_another_instance_within_the_interval() {
    let Some(t) = MySqlTest::new("mysql propagation", false).await else {
        return;
    };
    let a = t.instance(3).await;
    let b = t.instance(3).await;
    propagate(
        "mysql polling",
        (Arc::new(a.clone()), Arc::new(a.clone())),
        Arc::new(b.clone()),
        Arc::new(b.polling_feed(POLL)),
        NO_POLLING,
        POLL * 3,
        async || {},
    )
    .await;
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_polling_reaches_another_instance_within_the_interval() {
    let file = SqliteFile::new();
    let a = file.instance(2).await;
    // B opens the same file with the crate's defaults; migrating again is a no-op.
    let b = keyrot_sqlx::SqliteStore::connect_file(&file.path).await.expect("open");
    b.migrate().await.expect("migrate again");
    propagate(
        "sqlite polling",
        (Arc::new(a.clone()), Arc::new(a.clone())),
        Arc::new(b.clone()),
        Arc::new(b.polling_feed(POLL)),
        NO_POLLING,
        POLL * 3,
        async || {},
    )
    .await;
}
