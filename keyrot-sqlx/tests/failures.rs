//! Failures: a rotation whose connections are killed mid-transaction, a lock guard
//! dropped without release, a lock holder cut off without closing its sockets, a crashed
//! SQLite lease holder, and a database that becomes unreachable and comes back.

mod common;

use chrono::{TimeDelta, Utc};
use common::{MySqlTest, PgTest, Proxy, SqliteFile, ring, sealer};
use keyrot_core::to_millis;
use keyrot_core::{
    KeyRing, Lock, LockGuard, ManualClock, MasterKeySealer, Outcome, RequestContext, Ring, RingName, RotateError,
    RotationReport, Rotator, Storage,
};
use keyrot_sqlx::sqlx::{self, AssertSqlSafe};
use keyrot_sqlx::{MySqlStore, SqliteStore};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

const TTL: Duration = Duration::from_secs(30);

/// Polls `try_acquire` until the lock is granted; returns how long it took. Fails after
/// `bound`.
async fn acquire_within(lock: &dyn Lock, r: &RingName, bound: Duration) -> (Box<dyn LockGuard>, Duration) {
    let start = Instant::now();
    loop {
        if let Some(g) = lock.try_acquire(r, "waiter", TTL).await.expect("try_acquire") {
            return (g, start.elapsed());
        }
        assert!(start.elapsed() < bound, "the lock was not freed within {bound:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits (bounded) until `probe` reports true.
async fn wait_until<F, Fut>(what: &str, bound: Duration, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !probe().await {
        assert!(start.elapsed() < bound, "timed out after {bound:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Instance `instance`'s rotator, with `store` as its storage and its lock.
fn rotator<S>(r: &RingName, store: &S, sealer: Arc<MasterKeySealer>, clock: &ManualClock, instance: &str) -> Rotator
where
    S: Storage + Lock + Clone + 'static,
{
    Rotator::builder(r.clone(), Arc::new(store.clone()), Arc::new(store.clone()), sealer)
        .with_clock(Arc::new(clock.clone()))
        .with_instance(instance)
        .build()
}

/// Instance A's forced rotation, in a task (it is to block on the ring row the test holds).
fn spawn_crash_drill(rot_a: &Rotator) -> JoinHandle<Result<RotationReport, RotateError>> {
    let rot_a = rot_a.clone();
    tokio::spawn(async move {
        rot_a
            .force_rotate(RequestContext::actor("a"), "crash drill", false)
            .await
    })
}

/// The drill's rotation, whose instance was killed mid-commit, returns and fails closed.
async fn assert_fails_closed(task: JoinHandle<Result<RotationReport, RotateError>>) {
    let result = tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("A returns")
        .expect("join");
    assert!(
        matches!(result, Err(RotateError::Storage(_))),
        "the killed rotation fails closed: {result:?}"
    );
}

/// After the crash, on the surviving instance `b` (rotating with `rot_b`): the ring is
/// exactly as `before`, the lock is free again and the next rotation commits.
async fn assert_recovers(
    name: &str,
    killed: &str,
    b: &(impl Storage + Lock),
    rot_b: &Rotator,
    r: &RingName,
    before: &Ring,
) {
    assert_eq!(b.load(r).await.expect("load"), *before, "the ring is exactly as before");
    let (guard, waited) = acquire_within(b, r, Duration::from_secs(5)).await;
    println!("{name}: lock free again {waited:?} after its holder's {killed} were killed");
    guard.release().await.expect("release");
    let next = rot_b
        .force_rotate(RequestContext::actor("b"), "after the crash", false)
        .await
        .expect("rotate");
    assert_eq!(next.outcome, Outcome::Rotated);
    assert_eq!(b.generation(r).await.expect("generation"), before.generation + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connection_killed_mid_commit_leaves_ring_unchanged() {
    let Some(t) = PgTest::new("postgres crash", false).await else {
        return;
    };
    let r = ring("crash");
    let app_a = format!("{}-a", t.schema);
    let a = t.instance(3, &app_a).await;
    let b = t.instance(3, &format!("{}-b", t.schema)).await;
    let clock = ManualClock::new(to_millis(Utc::now()));
    let sealer = sealer();
    let rot_a = rotator(&r, &a, sealer.clone(), &clock, "a");
    let rot_b = rotator(&r, &b, sealer, &clock, "b");
    rot_a.init(RequestContext::actor("test")).await.expect("init");
    clock.advance(TimeDelta::hours(2));
    let before = b.load(&r).await.expect("load");

    // Hold the ring row so A's commit blocks inside its transaction.
    let mut blocker = t.admin().begin().await.expect("begin");
    sqlx::query(AssertSqlSafe(format!(
        r#"SELECT generation FROM "{}".keyrot_rings WHERE name = $1 FOR UPDATE"#,
        t.schema
    )))
    .bind(r.as_str())
    .execute(&mut *blocker)
    .await
    .expect("lock ring row");
    let task = spawn_crash_drill(&rot_a);
    let admin = t.admin().clone();
    wait_until("A's commit to block mid-transaction", Duration::from_secs(10), || {
        let (admin, app_a) = (admin.clone(), app_a.clone());
        async move {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'",
            )
            .bind(&app_a)
            .fetch_one(&admin)
            .await
            .expect("pg_stat_activity");
            n > 0
        }
    })
    .await;
    // Instance A "crashes": every one of its sessions (the lock holder and the open
    // commit transaction) is terminated.
    let killed: Vec<bool> =
        sqlx::query_scalar("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1")
            .bind(&app_a)
            .fetch_all(t.admin())
            .await
            .expect("terminate");
    assert!(
        killed.len() >= 2 && killed.iter().all(|k| *k),
        "lock session and commit session killed: {killed:?}"
    );
    blocker.rollback().await.expect("rollback blocker");

    assert_fails_closed(task).await;
    assert_recovers("postgres", "sessions", &b, &rot_b, &r, &before).await;
    a.pool().close().await;
    b.pool().close().await;
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_connection_killed_mid_commit_leaves_ring_unchanged() {
    let Some(t) = MySqlTest::new("mysql crash", false).await else {
        return;
    };
    let r = ring("crash");
    let a = t.instance(3).await;
    let clock = ManualClock::new(to_millis(Utc::now()));
    let sealer = sealer();
    let rot_a = rotator(&r, &a, sealer.clone(), &clock, "a");
    rot_a.init(RequestContext::actor("test")).await.expect("init");
    clock.advance(TimeDelta::hours(2));
    let before = a.load(&r).await.expect("load");

    // The blocker is on the test database too; the admin pool is not.
    let blocker_pool = t.pool(1).await;
    let mut blocker = blocker_pool.begin().await.expect("begin");
    let blocker_id: i64 = sqlx::query_scalar("SELECT CAST(CONNECTION_ID() AS SIGNED)")
        .fetch_one(&mut *blocker)
        .await
        .expect("connection id");
    sqlx::query("SELECT generation FROM keyrot_rings WHERE name = ? FOR UPDATE")
        .bind(r.as_str())
        .execute(&mut *blocker)
        .await
        .expect("lock ring row");
    let task = spawn_crash_drill(&rot_a);
    let admin = t.admin().clone();
    wait_until("A's commit to block mid-transaction", Duration::from_secs(10), || {
        let (admin, db) = (admin.clone(), t.database.clone());
        async move {
            let n: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST \
                 WHERE DB = ? AND STATE = 'Updating' AND INFO LIKE 'UPDATE `keyrot_rings`%'",
            )
            .bind(db)
            .fetch_one(&admin)
            .await
            .expect("processlist");
            n > 0
        }
    })
    .await;
    // Instance A "crashes": every one of its connections (the GET_LOCK holder and the
    // open commit transaction) is killed.
    let ids: Vec<i64> = sqlx::query_scalar("SELECT ID FROM information_schema.PROCESSLIST WHERE DB = ? AND ID <> ?")
        .bind(&t.database)
        .bind(blocker_id)
        .fetch_all(t.admin())
        .await
        .expect("processlist");
    assert!(ids.len() >= 2, "lock connection and commit connection: {ids:?}");
    for id in &ids {
        sqlx::raw_sql(AssertSqlSafe(format!("KILL {id}")))
            .execute(t.admin())
            .await
            .expect("kill");
    }
    blocker.rollback().await.expect("rollback blocker");

    assert_fails_closed(task).await;
    let b = t.instance(3).await;
    let rot_b = rotator(&r, &b, sealer, &clock, "b");
    assert_recovers("mysql", "connections", &b, &rot_b, &r, &before).await;
    for p in [a.pool(), b.pool(), &blocker_pool] {
        p.close().await;
    }
    t.finish().await;
}

/// A guard dropped without release frees the lock by itself, promptly.
async fn dropped_guard_frees_lock(name: &str, holder: &dyn Lock, other: &dyn Lock) {
    let r = ring("dropped");
    let g = holder
        .try_acquire(&r, "a", TTL)
        .await
        .expect("acquire")
        .expect("free lock");
    assert!(
        other.try_acquire(&r, "b", TTL).await.expect("acquire").is_none(),
        "{name}: held"
    );
    drop(g);
    let (g2, waited) = acquire_within(other, &r, Duration::from_secs(5)).await;
    println!("{name}: lock free {waited:?} after its guard was dropped without release");
    g2.release().await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_dropped_guard_frees_the_lock() {
    let Some(t) = PgTest::new("postgres dropped guard", false).await else {
        return;
    };
    let a = t.instance(2, "keyrot-drop-a").await;
    let b = t.instance(2, "keyrot-drop-b").await;
    dropped_guard_frees_lock("postgres", &a, &b).await;
    // The holder's pool still works: its other connection and a replacement serve it.
    assert_eq!(a.generation(&ring("dropped")).await.expect("generation"), 0);
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_dropped_guard_frees_the_lock() {
    let Some(t) = MySqlTest::new("mysql dropped guard", false).await else {
        return;
    };
    let a = t.instance(2).await;
    let b = t.instance(2).await;
    dropped_guard_frees_lock("mysql", &a, &b).await;
    assert_eq!(a.generation(&ring("dropped")).await.expect("generation"), 0);
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_dropped_guard_frees_the_lock() {
    let file = SqliteFile::new();
    let a = file.instance(2).await;
    let b = file.instance(2).await;
    dropped_guard_frees_lock("sqlite", &a, &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_crashed_lease_holder_loses_the_lock_after_its_ttl() {
    let file = SqliteFile::new();
    let clock = ManualClock::new(to_millis(Utc::now()));
    let store = |pool| {
        SqliteStore::builder(pool)
            .with_clock(Arc::new(clock.clone()))
            .build()
            .expect("store")
    };
    let a = store(file.pool(2).await);
    a.migrate().await.expect("migrate");
    let b = store(file.pool(2).await);
    let r = ring("lease");
    let ttl = Duration::from_secs(5);
    let g = a.try_acquire(&r, "a", ttl).await.expect("acquire").expect("free lock");
    // A crash: the guard never runs its release nor its drop.
    std::mem::forget(g);
    assert!(
        b.try_acquire(&r, "b", ttl).await.expect("acquire").is_none(),
        "held until the ttl"
    );
    clock.advance(TimeDelta::milliseconds(4_999));
    assert!(
        b.try_acquire(&r, "b", ttl).await.expect("acquire").is_none(),
        "still held just before the ttl"
    );
    clock.advance(TimeDelta::milliseconds(1));
    let g = b
        .try_acquire(&r, "b", ttl)
        .await
        .expect("acquire")
        .expect("expired lease is taken over");
    g.release().await.expect("release");
}

/// A database that becomes unreachable (the proxy in front of it is cut) and comes back.
async fn outage(name: &str, storage: Arc<dyn Storage>, lock: Arc<dyn Lock>, proxy: &Proxy) {
    let r = ring("outage");
    let clock = ManualClock::new(to_millis(Utc::now()));
    let sealer = sealer();
    let keyring = KeyRing::builder(r.clone(), storage.clone(), sealer.clone())
        .with_clock(Arc::new(clock.clone()))
        .build()
        .await
        .expect("keyring");
    let rot = Rotator::builder(r.clone(), storage, lock, sealer)
        .with_clock(Arc::new(clock.clone()))
        .with_keyring(keyring.clone())
        .with_instance("a")
        .build();
    let boot = rot.init(RequestContext::actor("test")).await.expect("init");
    let claims = |clock: &ManualClock| serde_json::json!({ "sub": "alice", "exp": clock.now().timestamp() + 600 });
    use keyrot_core::Clock as _;
    let before = keyring.sign(&claims(&clock)).expect("sign");
    let signed_at = clock.now();

    proxy.cut();
    // Signing and verification go on from the snapshot.
    let during = keyring.sign(&claims(&clock)).expect("signs while the database is down");
    for token in [&before, &during] {
        assert_eq!(
            keyring
                .verify(token)
                .expect("verifies while the database is down")
                .claims["sub"],
            "alice"
        );
    }
    assert!(
        keyring.refresh().await.is_err(),
        "{name}: refresh fails while unreachable"
    );
    assert!(keyring.is_stale(), "{name}: the key ring reports itself stale");
    clock.advance(TimeDelta::hours(2));
    let failed = rot
        .force_rotate(RequestContext::actor("ops"), "during the outage", false)
        .await;
    match &failed {
        Err(e @ RotateError::Storage(_)) => {
            assert!(e.to_string().contains("failed closed"), "{name}: clear error: {e}");
        }
        other => panic!("{name}: rotation must fail closed with a storage error: {other:?}"),
    }
    assert_eq!(
        keyring.snapshot().active_kid(),
        boot.new_kid.as_deref(),
        "{name}: still signing with the old key"
    );

    proxy.restore();
    assert!(keyring.refresh().await.is_ok(), "{name}: refresh resumes");
    assert!(!keyring.is_stale(), "{name}: no longer stale");
    let rotated = rot
        .force_rotate(RequestContext::actor("ops"), "after the outage", false)
        .await
        .expect("rotate");
    assert_eq!(
        rotated.outcome,
        Outcome::Rotated,
        "{name}: rotation resumes without a restart"
    );
    assert_eq!(keyring.snapshot().active_kid(), rotated.new_kid.as_deref());
    let after = keyring.sign(&claims(&clock)).expect("sign");
    assert!(
        keyring.verify(&after).is_ok(),
        "{name}: a token of the new key verifies"
    );
    for token in [&before, &during] {
        assert!(
            keyring.verify_at(token, signed_at).is_ok(),
            "{name}: tokens of the old key still verify"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_keeps_serving_and_fails_rotation_closed() {
    let Some(t) = PgTest::new("postgres outage", false).await else {
        return;
    };
    let options = t.options();
    let proxy = Proxy::start(options.get_host(), options.get_port()).await;
    let pool = keyrot_sqlx::sqlx::postgres::PgPoolOptions::new()
        .max_connections(3)
        .acquire_timeout(Duration::from_secs(2))
        .connect_with(
            options
                .host("127.0.0.1")
                .port(proxy.port)
                .application_name("keyrot-outage"),
        )
        .await
        .expect("connect through the proxy");
    let store = t.store(pool);
    store.migrate().await.expect("migrate");
    outage("postgres", Arc::new(store.clone()), Arc::new(store.clone()), &proxy).await;
    store.pool().close().await;
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_outage_keeps_serving_and_fails_rotation_closed() {
    let Some(t) = MySqlTest::new("mysql outage", false).await else {
        return;
    };
    let options = t.options();
    let proxy = Proxy::start(options.get_host(), options.get_port()).await;
    let pool = keyrot_sqlx::sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(3)
        .acquire_timeout(Duration::from_secs(2))
        .connect_with(options.host("127.0.0.1").port(proxy.port))
        .await
        .expect("connect through the proxy");
    let store = MySqlStore::new(pool);
    store.migrate().await.expect("migrate");
    outage("mysql", Arc::new(store.clone()), Arc::new(store.clone()), &proxy).await;
    store.pool().close().await;
    t.finish().await;
}

/// The lock holder's host vanishes without closing its sockets (the proxy in front of
/// it freezes): the server ends the idle session after the lock's ttl, which frees the
/// lock. Waits for the server's own timeout (1 s), on the wall clock.
async fn partitioned_holder_loses_lock(name: &str, holder: &dyn Lock, other: &dyn Lock, proxy: &Proxy) {
    let r = ring("partition");
    let ttl = Duration::from_secs(1);
    let g = holder
        .try_acquire(&r, "a", ttl)
        .await
        .expect("acquire")
        .expect("free lock");
    proxy.freeze();
    let frozen_at = Instant::now();
    assert!(
        other.try_acquire(&r, "b", TTL).await.expect("acquire").is_none(),
        "{name}: held after the partition"
    );
    let (g2, _) = acquire_within(other, &r, Duration::from_secs(10)).await;
    let waited = frozen_at.elapsed();
    println!("{name}: a partitioned holder (lock ttl {ttl:?}) lost the lock after {waited:?}");
    assert!(
        waited >= Duration::from_millis(900),
        "{name}: the lock was held until its ttl"
    );
    g2.release().await.expect("release");
    drop(g);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_partitioned_holder_loses_the_lock_within_its_ttl() {
    let Some(t) = PgTest::new("postgres partition", false).await else {
        return;
    };
    let options = t.options();
    let proxy = Proxy::start(options.get_host(), options.get_port()).await;
    let holder = t.store(
        t.pool_with(options.host("127.0.0.1").port(proxy.port), 2, "keyrot-partition-a")
            .await,
    );
    holder.migrate().await.expect("migrate");
    let other = t.instance(2, "keyrot-partition-b").await;
    partitioned_holder_loses_lock("postgres", &holder, &other, &proxy).await;
    other.pool().close().await;
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_partitioned_holder_loses_the_lock_within_its_ttl() {
    let Some(t) = MySqlTest::new("mysql partition", false).await else {
        return;
    };
    let options = t.options();
    let proxy = Proxy::start(options.get_host(), options.get_port()).await;
    let holder = MySqlStore::new(t.pool_with(options.host("127.0.0.1").port(proxy.port), 2).await);
    holder.migrate().await.expect("migrate");
    let other = t.instance(2).await;
    partitioned_holder_loses_lock("mysql", &holder, &other, &proxy).await;
    other.pool().close().await;
    t.finish().await;
}
