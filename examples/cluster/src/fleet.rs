//! `cluster --rings N --instances I`: I ring managers (one per instance, each with its
//! own pool) on N rings of one PostgreSQL database. A share of the rings falls due at the
//! same moment; the run checks every transition happened exactly once, then measures what
//! the instances cost when idle and how fast one ring's change reaches the others.
//!
//! Time is simulated (one manual clock for every instance), so rings fall due on demand.

use keyrot_core::testing::Counting;
use keyrot_core::{
    Clock, ErrorChain, ManagerConfig, ManagerHandle, ManualClock, Outcome, Policy, RequestContext, RingManager,
    RingName, RingStorage, Sealer, Storage,
};
use keyrot_sqlx::PostgresStore;
use keyrot_sqlx::sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use keyrot_sqlx::sqlx::{self, PgPool};
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the instances get to start their loops and subscriptions before the idle
/// count starts.
const SETTLE: Duration = Duration::from_secs(2);

/// What the many-rings run is asked to do.
#[derive(Debug, Clone)]
pub struct FleetArgs {
    pub url: String,
    pub rings: u32,
    pub instances: u16,
    pub due_percent: u8,
    pub idle_seconds: u64,
    pub tick_seconds: u64,
    pub concurrency: usize,
}

/// One instance: its manager over a counting wrapper of its own store.
struct Node {
    name: String,
    manager: RingManager,
    counted: Counting<PostgresStore>,
    handle: Option<ManagerHandle>,
}

/// The numbers the run prints.
#[derive(Debug, Default)]
struct Numbers {
    create: Duration,
    publish: Duration,
    rotate: Duration,
    rotations: usize,
    exactly_once: bool,
    idle_per_minute: f64,
    peak_connections: i64,
    approx_ring_bytes: usize,
    rss_ring_bytes: Option<i64>,
    propagation: Option<(Duration, Duration)>,
}

fn app_name(run: &str, i: usize) -> String {
    format!("keyrot-fleet-{run}-{i}")
}

async fn pool(url: &str, app: &str, max: u32) -> Result<PgPool, String> {
    let options = PgConnectOptions::from_str(url)
        .map_err(|e| format!("--database-url: {}", ErrorChain(&e)))?
        .application_name(app);
    PgPoolOptions::new()
        .max_connections(max)
        .connect_with(options)
        .await
        .map_err(|e| format!("connect: {}", ErrorChain(&e)))
}

async fn nodes(
    args: &FleetArgs,
    run: &str,
    sealer: &Arc<dyn Sealer>,
    clock: &ManualClock,
    policy: &Policy,
) -> Result<Vec<Node>, String> {
    let mut out = Vec::new();
    let per_pool = u32::try_from(2 * args.concurrency + 1).unwrap_or(u32::MAX);
    for i in 0..usize::from(args.instances) {
        let store = PostgresStore::new(pool(&args.url, &app_name(run, i), per_pool).await?);
        if i == 0 {
            store
                .migrate()
                .await
                .map_err(|e| format!("migrate: {}", ErrorChain(&e)))?;
        }
        let counted = Counting::new(store.clone());
        let config = ManagerConfig {
            interval: Duration::from_secs(args.tick_seconds),
            jitter: Duration::from_secs(args.tick_seconds / 3),
            concurrency: args.concurrency,
            max_loaded_rings: usize::try_from(args.rings).unwrap_or(usize::MAX),
            max_loaded_bytes: usize::MAX,
            ..ManagerConfig::default()
        };
        let name = format!("node-{i}");
        let manager = RingManager::builder(Arc::new(counted.clone()), Arc::new(counted.clone()), sealer.clone())
            .with_clock(Arc::new(clock.clone()))
            .with_instance(name.clone())
            .with_policy(policy.clone())
            .with_feed(Arc::new(store))
            .with_config(config)
            .build();
        out.push(Node {
            name,
            manager,
            counted,
            handle: None,
        });
    }
    Ok(out)
}

/// Each instance onboards its share of `rings` (ring k by instance k mod I), `concurrency`
/// at a time.
async fn onboard(nodes: &[Node], rings: &[RingName], concurrency: usize) -> Result<(), String> {
    let mut set = tokio::task::JoinSet::new();
    for (i, node) in nodes.iter().enumerate() {
        for lane in 0..concurrency {
            let m = node.manager.clone();
            let mine: Vec<RingName> = rings
                .iter()
                .enumerate()
                .filter(|(k, _)| k % nodes.len() == i && (k / nodes.len()) % concurrency == lane)
                .map(|(_, r)| r.clone())
                .collect();
            set.spawn(async move {
                for r in mine {
                    m.onboard(&r, RequestContext::actor("cluster"))
                        .await
                        .map_err(|e| format!("onboard {r}: {}", ErrorChain(&e)))?;
                }
                Ok::<_, String>(())
            });
        }
    }
    for r in set.join_all().await {
        r?;
    }
    Ok(())
}

/// Every instance runs scheduler passes at the same time until nothing is due.
async fn work_until_done(nodes: &[Node], check: &PostgresStore, clock: &ManualClock) -> Result<usize, String> {
    let mut changed = 0;
    loop {
        let mut set = tokio::task::JoinSet::new();
        for n in nodes {
            let m = n.manager.clone();
            set.spawn(async move { m.run_due().await });
        }
        for pass in set.join_all().await {
            changed += pass.changed;
        }
        let left = check
            .due_rings(clock.now(), 1)
            .await
            .map_err(|e| format!("due rings: {}", ErrorChain(&e)))?;
        if left.is_empty() {
            return Ok(changed);
        }
    }
}

/// Every ring's committed transitions, from the ledger: a due ring was bootstrapped,
/// scheduled and rotated, each once; any other ring only bootstrapped.
async fn verify(check: &PostgresStore, rings: &[RingName], due: usize) -> Result<(usize, bool), String> {
    let mut rotations = 0;
    let mut exact = true;
    for (k, r) in rings.iter().enumerate() {
        let audit = check
            .audit_log(r, keyrot_core::AuditQuery { limit: usize::MAX })
            .await
            .map_err(|e| format!("audit {r}: {}", ErrorChain(&e)))?;
        let committed = keyrot_core::AuditRecord::committed_changes(&audit);
        rotations += committed.iter().filter(|(_, o)| *o == Outcome::Rotated).count();
        let expected: &[(u64, Outcome)] = if k < due {
            &[
                (1, Outcome::Bootstrapped),
                (2, Outcome::Scheduled),
                (3, Outcome::Rotated),
            ]
        } else {
            &[(1, Outcome::Bootstrapped)]
        };
        if committed != expected {
            eprintln!("cluster: {r}: transitions {committed:?}, expected {expected:?}");
            exact = false;
        }
    }
    Ok((rotations, exact))
}

/// Samples every instance's connections (`pg_stat_activity` by application name) until
/// stopped; the highest count seen for any instance.
fn sample_connections(
    admin: PgPool,
    run: String,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<i64> {
    tokio::spawn(async move {
        let pattern = format!("keyrot-fleet-{run}-%");
        let mut peak = 0i64;
        while !*stop.borrow() {
            let rows: Result<Vec<(i64,)>, _> = sqlx::query_as(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE $1 GROUP BY application_name",
            )
            .bind(&pattern)
            .fetch_all(&admin)
            .await;
            if let Ok(rows) = rows {
                peak = rows.iter().map(|r| r.0).fold(peak, i64::max);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        peak
    })
}

fn rss_bytes() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Memory per loaded ring: a fresh manager loads every ring; the growth of the process's
/// resident memory, and the manager's own estimate, per ring.
async fn measure_memory(
    args: &FleetArgs,
    run: &str,
    sealer: &Arc<dyn Sealer>,
    policy: &Policy,
    rings: &[RingName],
) -> Result<(usize, Option<i64>), String> {
    let store = PostgresStore::new(pool(&args.url, &format!("keyrot-measure-{run}"), 4).await?);
    let m = RingManager::builder(Arc::new(store.clone()), Arc::new(store.clone()), sealer.clone())
        .with_policy(policy.clone())
        .with_config(ManagerConfig {
            max_loaded_rings: rings.len(),
            max_loaded_bytes: usize::MAX,
            ..ManagerConfig::default()
        })
        .build();
    let before = rss_bytes();
    for r in rings {
        m.keyring(r)
            .await
            .map_err(|e| format!("load {r}: {}", ErrorChain(&e)))?;
    }
    let after = rss_bytes();
    let n = rings.len().max(1);
    let (_, bytes) = m.loaded_usage();
    let rss = before.zip(after).map(|(b, a)| (a - b) / i64::try_from(n).unwrap_or(1));
    store.pool().close().await;
    Ok((bytes / n, rss))
}

/// One ring changes on instance 0: how long its forced rotation took, and how long after
/// it returned every other instance served the new key.
async fn propagation(nodes: &[Node], ring: &RingName) -> Result<(Duration, Duration), String> {
    let mut held = Vec::new();
    for n in nodes {
        held.push(
            n.manager
                .keyring(ring)
                .await
                .map_err(|e| format!("{}: {}", n.name, ErrorChain(&e)))?,
        );
    }
    let started = Instant::now();
    let report = nodes[0]
        .manager
        .rotator(ring)
        .force_rotate(RequestContext::actor("cluster"), "propagation drill", false)
        .await
        .map_err(|e| format!("force rotate: {}", ErrorChain(&e)))?;
    let committed = Instant::now();
    let kid = report.new_kid.ok_or("the forced rotation named no key")?;
    for kr in &held[1..] {
        while kr.snapshot().active_kid() != Some(kid.as_str()) {
            if committed.elapsed() > Duration::from_secs(10) {
                return Err("an instance did not learn of the change within 10 s".into());
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }
    Ok((committed - started, committed.elapsed()))
}

pub async fn run(args: FleetArgs, sealer: Arc<dyn Sealer>, policy: Policy) -> Result<bool, String> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let run = secs.to_string();
    let clock = ManualClock::new(chrono::Utc::now());
    let t0 = clock.now();
    let admin = pool(&args.url, "keyrot-fleet-admin", 2).await?;
    let mut nodes = nodes(&args, &run, &sealer, &clock, &policy).await?;
    let check = PostgresStore::new(pool(&args.url, "keyrot-fleet-check", 4).await?);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let sampler = sample_connections(admin, run.clone(), stop_rx);
    let rings: Vec<RingName> = (0..args.rings)
        .map(|k| RingName::new(format!("fleet-{run}-{k:06}")).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    let due = usize::try_from(u64::from(args.rings) * u64::from(args.due_percent) / 100).unwrap_or(0);
    println!(
        "keyrot cluster: {} rings, {} instances (own pool each, up to {} connections), {}% due at once",
        args.rings,
        args.instances,
        2 * args.concurrency + 1,
        args.due_percent
    );
    let mut numbers = Numbers::default();
    let started = Instant::now();
    onboard(&nodes, &rings[..due], args.concurrency).await?;
    // The rest is created later (simulated), so it is not due when the first share is.
    clock.advance(policy.publish_lead() + chrono::TimeDelta::days(1));
    onboard(&nodes, &rings[due..], args.concurrency).await?;
    numbers.create = started.elapsed();
    println!(
        "  created    {} rings in {:.1} s",
        rings.len(),
        numbers.create.as_secs_f64()
    );
    clock.set(t0 + (policy.rotation_interval() - policy.publish_lead()));
    let started = Instant::now();
    let published = work_until_done(&nodes, &check, &clock).await?;
    numbers.publish = started.elapsed();
    clock.set(t0 + policy.rotation_interval());
    let started = Instant::now();
    let rotated = work_until_done(&nodes, &check, &clock).await?;
    numbers.rotate = started.elapsed();
    println!(
        "  due        {due} rings: next keys published in {:.1} s ({published} commits), rotated in {:.1} s ({rotated} commits)",
        numbers.publish.as_secs_f64(),
        numbers.rotate.as_secs_f64()
    );
    let (rotations, exact) = verify(&check, &rings, due).await?;
    numbers.rotations = rotations;
    numbers.exactly_once = exact && rotations == due;
    // From now on the instances run as deployed: the scheduler loop and the one feed each.
    for n in &mut nodes {
        n.handle = Some(n.manager.spawn());
    }
    // Each feed refreshes the rings its instance holds once, as it subscribes: start
    // counting once that is over (a second with at most a pass's query on every instance).
    // Quiet: no more than the scheduler passes a window holds (one query each) and one more.
    let tick = Duration::from_secs(args.tick_seconds.max(1));
    let shortest_pass = tick - tick / 3;
    let passes = (SETTLE.as_secs_f64() / shortest_pass.as_secs_f64()).ceil() as u64;
    let settle_until = Instant::now() + Duration::from_secs(120);
    loop {
        let at: Vec<u64> = nodes.iter().map(|n| n.counted.calls()).collect();
        tokio::time::sleep(SETTLE).await;
        let quiet = nodes.iter().zip(&at).all(|(n, a)| n.counted.calls() - a <= passes + 1);
        if quiet || Instant::now() > settle_until {
            break;
        }
    }
    let before: Vec<u64> = nodes.iter().map(|n| n.counted.calls()).collect();
    let idle = Duration::from_secs(args.idle_seconds);
    tokio::time::sleep(idle).await;
    let idle_max = nodes
        .iter()
        .zip(&before)
        .map(|(n, b)| n.counted.calls() - b)
        .max()
        .unwrap_or(0);
    numbers.idle_per_minute = idle_max as f64 * 60.0 / idle.as_secs_f64().max(1.0);
    println!(
        "  idle       {idle_max} queries in {} s on the busiest instance",
        idle.as_secs()
    );
    numbers.propagation = propagation(&nodes, &rings[0])
        .await
        .map_err(|e| eprintln!("cluster: {e}"))
        .ok();
    if let Some((commit, seen)) = numbers.propagation {
        println!(
            "  propagated a forced rotation ({:.1} ms) to every other instance {:.1} ms after it returned",
            commit.as_secs_f64() * 1000.0,
            seen.as_secs_f64() * 1000.0
        );
    }
    for n in &mut nodes {
        if let Some(h) = n.handle.take() {
            h.shutdown().await;
        }
    }
    let _ = stop_tx.send(true);
    numbers.peak_connections = sampler.await.unwrap_or(0);
    let (approx, rss) = measure_memory(&args, &run, &sealer, &policy, &rings).await?;
    numbers.approx_ring_bytes = approx;
    numbers.rss_ring_bytes = rss;
    println!(
        "  memory     about {approx} bytes per loaded ring (manager's estimate); resident growth {} bytes per ring",
        rss.map_or("unknown".to_owned(), |r| r.to_string())
    );
    println!(
        "rings: {}, instances: {}, rotations: {} (exactly once: {}), idle queries per instance per minute: {}, peak connections per instance: {}",
        args.rings,
        args.instances,
        numbers.rotations,
        if numbers.exactly_once { "yes" } else { "no" },
        per_minute(numbers.idle_per_minute),
        numbers.peak_connections
    );
    Ok(numbers.exactly_once && numbers.propagation.is_some())
}

/// A rate with at most one decimal, without a trailing `.0`.
fn per_minute(q: f64) -> String {
    let r = (q * 10.0).round() / 10.0;
    if r.fract() == 0.0 {
        format!("{r:.0}")
    } else {
        format!("{r:.1}")
    }
}
