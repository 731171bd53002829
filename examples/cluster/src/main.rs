//! keyrot cluster demo: `cargo run -p cluster -- --database-url postgres://…` (or
//! `mysql://…`, `mariadb://…`, `sqlite:FILE`).
//!
//! Starts several instances in one process, each with its own connection pool, its own
//! [`KeyRing`] and its own [`Rotator`], all on one shared database: PostgreSQL (the key rings
//! kept fresh by `LISTEN/NOTIFY`, with polling as a fallback), MySQL/MariaDB or a SQLite file
//! (no change feed: the key rings poll the ring's generation). Every instance initialises the ring at the
//! same moment (exactly one bootstraps it), then every instance forces a rotation at the same
//! moment: exactly one rotates, the others are told the lock is busy, that they lost the race,
//! or that a forced rotation just happened. The timeline shows each attempt's outcome and the
//! moment each instance serves the new Active key.
//!
//! Exit status: 0 when exactly one instance rotated and every instance served the new key
//! within 5 seconds, 1 otherwise, 2 on usage or configuration errors.

mod fleet;

use clap::Parser;
use keyrot_core::ErrorChain;
use keyrot_core::RefresherHandle;
use keyrot_core::{
    KeyRing, MasterKey, MasterKeySealer, Outcome, RequestContext, RingName, RotateError, RotationReport, Rotator,
    Sealer,
};
use keyrot_examples_support::custody::{custody_sealer, master_key_uri};
use keyrot_examples_support::{SetupError, load_master_key, policy_from_env};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Barrier;

/// How long every instance gets to serve a new key.
const DEADLINE: Duration = Duration::from_secs(5);
/// How often the demo looks at each instance's snapshot.
const WATCH_EVERY: Duration = Duration::from_millis(10);
/// The refreshers' polling fallback (besides the change feed).
const POLL_FALLBACK: Duration = Duration::from_secs(1);
/// The change feed where the database has none (MySQL/MariaDB, SQLite): how often each
/// instance reads the ring's generation.
const POLL_FEED: Duration = Duration::from_millis(250);
/// The forced rotation's reason, as written to the audit log.
const REASON: &str = "cluster demo";

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "cluster",
    about = "Starts several keyrot instances on one shared database and shows exactly one rotation",
    long_about = "Starts several keyrot instances on one shared database and shows exactly one rotation.\n\n\
                  Databases: PostgreSQL (postgres://…; instances learn of changes by LISTEN/NOTIFY, \
                  polling every second as a fallback), MySQL or MariaDB (mysql://…, mariadb://…) and a \
                  SQLite file (sqlite:FILE), which have no change feed: instances poll the ring's \
                  generation every 250 ms. `--rings` needs PostgreSQL."
)]
struct Args {
    /// How many instances to start in this process.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=16))]
    instances: u16,
    /// The database every instance shares: postgres://…, mysql://…, mariadb://… or sqlite:FILE
    /// (`--rings`: PostgreSQL only).
    #[arg(long, env = "KEYROT_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// The ring (default: `cluster-<unix seconds>`, new on every run, so repeated runs do not
    /// hit the forced-rotation rate limit).
    #[arg(long)]
    ring: Option<String>,
    /// Many rings instead of one: each instance runs one ring manager over this many new
    /// rings (`fleet-<unix seconds>-<n>`), and the run ends with one summary line
    /// (PostgreSQL only: it counts each instance's connections in `pg_stat_activity`).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000), conflicts_with = "ring")]
    rings: Option<u32>,
    /// With `--rings`: the share of the rings (percent) that falls due at the same moment.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u8).range(1..=100), requires = "rings")]
    due_percent: u8,
    /// With `--rings`: how long the idle instances are watched (their queries counted).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600), requires = "rings")]
    idle_seconds: u64,
    /// With `--rings`: the managers' scheduler interval (jitter: a third of it).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600), requires = "rings")]
    tick_seconds: u64,
    /// With `--rings`: rings each manager works at the same time.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64), requires = "rings")]
    concurrency: u64,
}

/// Events, in milliseconds since the start of the program.
struct Timeline {
    start: Instant,
    events: Mutex<Vec<(u128, String, String)>>,
}

impl Timeline {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            events: Mutex::new(Vec::new()),
        }
    }

    fn now_ms(&self) -> u128 {
        self.start.elapsed().as_millis()
    }

    /// Records `what` for `who`, now.
    fn record(&self, who: &str, what: impl Into<String>) -> u128 {
        let at = self.now_ms();
        self.record_at(at, who, what);
        at
    }

    fn record_at(&self, at: u128, who: &str, what: impl Into<String>) {
        if let Ok(mut events) = self.events.lock() {
            events.push((at, who.to_owned(), what.into()));
        }
    }

    /// Prints what was recorded since the last flush, in time order.
    fn flush(&self) {
        let mut events = match self.events.lock() {
            Ok(mut events) => std::mem::take(&mut *events),
            Err(_) => return,
        };
        events.sort_by_key(|(at, _, _)| *at);
        for (at, who, what) in events {
            println!("{at:>7}  {who:<8} {what}");
        }
    }
}

/// One instance: its own pool (inside storage, lock and feed), key ring and rotator.
struct Instance {
    name: String,
    keyring: KeyRing,
    rotator: Rotator,
    refresher: RefresherHandle,
}

#[tokio::main]
async fn main() -> ExitCode {
    keyrot_examples_support::quickstart::init_tracing_with("warn");
    let args = Args::parse();
    if args.rings.is_some() {
        return many_rings(&args).await;
    }
    let timeline = Arc::new(Timeline::new());
    let instances = match setup(&args, &timeline).await {
        Ok(instances) => instances,
        Err(e) => {
            timeline.flush();
            eprintln!("cluster: {e}");
            return ExitCode::from(2);
        }
    };
    let ok = demo(&instances, &timeline).await;
    for i in instances {
        i.refresher.shutdown().await;
    }
    if ok { ExitCode::SUCCESS } else { ExitCode::from(1) }
}

/// `--rings N`: one ring manager per instance over N rings (see `fleet`).
async fn many_rings(args: &Args) -> ExitCode {
    let prepared = database_url(args).and_then(|(url, kind)| {
        if kind != Kind::Postgres {
            return Err(format!(
                "--rings needs PostgreSQL (postgres://…), not {}: it counts each instance's connections in \
                 pg_stat_activity; without --rings the demo runs on {}",
                kind.name(),
                kind.name()
            ));
        }
        let policy = policy_from_env(None).map_err(|e| ErrorChain(&e).to_string())?;
        Ok((url, policy))
    });
    let prepared = match prepared {
        Ok((url, policy)) => master_key(&url).await.map(|(sealer, _)| (url, sealer, policy)),
        Err(e) => Err(e),
    };
    let (url, sealer, policy) = match prepared {
        Ok(p) => p,
        Err(e) => {
            eprintln!("cluster: {e}");
            return ExitCode::from(2);
        }
    };
    let fleet_args = fleet::FleetArgs {
        url,
        rings: args.rings.unwrap_or(1),
        instances: args.instances,
        due_percent: args.due_percent,
        idle_seconds: args.idle_seconds,
        tick_seconds: args.tick_seconds,
        concurrency: usize::try_from(args.concurrency).unwrap_or(4),
    };
    match fleet::run(fleet_args, sealer, policy).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("cluster: {e}");
            ExitCode::from(1)
        }
    }
}

/// The databases the demo runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Postgres,
    MySql,
    Sqlite,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Postgres => "PostgreSQL",
            Kind::MySql => "MySQL/MariaDB",
            Kind::Sqlite => "a SQLite file",
        }
    }

    /// How the instances learn of each other's changes, for the header.
    fn refresh(self) -> String {
        match self {
            Kind::Postgres => format!(
                "LISTEN/NOTIFY, polling every {} s as a fallback",
                POLL_FALLBACK.as_secs()
            ),
            _ => format!(
                "polling the ring's generation every {} ms ({} has no change feed)",
                POLL_FEED.as_millis(),
                self.name()
            ),
        }
    }
}

/// What `--database-url` accepts, for the errors.
const SUPPORTED: &str = "postgres://…, mysql://…, mariadb://… or sqlite:FILE";

/// The database URL from `--database-url` or `KEYROT_DATABASE_URL`, and which database it
/// names: one the instances can share (an in-memory SQLite database is each pool's own).
fn database_url(args: &Args) -> Result<(String, Kind), String> {
    let url = args
        .database_url
        .clone()
        .ok_or_else(|| format!("no database: set KEYROT_DATABASE_URL or --database-url ({SUPPORTED})"))?;
    let kind = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Kind::Postgres
    } else if url.starts_with("mysql://") || url.starts_with("mariadb://") {
        Kind::MySql
    } else if let Some(path) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
        let path = path.split('?').next().unwrap_or_default();
        if path.is_empty() || path.starts_with(":memory:") || url.contains("mode=memory") {
            return Err(format!(
                "the cluster demo needs a database its instances share; an in-memory SQLite database is \
                 each connection pool's own: use a file (sqlite:cluster.db) or {SUPPORTED}"
            ));
        }
        Kind::Sqlite
    } else {
        let scheme = url.split(':').next().unwrap_or_default();
        let scheme: String = scheme.chars().take(20).collect();
        return Err(format!("the cluster demo runs on {SUPPORTED}, not {scheme:?}"));
    };
    Ok((url, kind))
}

/// One instance's store: its own pool on `url`, migrated, and its change feed.
async fn open(url: &str) -> Result<keyrot_sqlx::AnyStore, String> {
    let store = keyrot_sqlx::connect(url)
        .await
        .map_err(|e| ErrorChain(&e).to_string())?;
    store
        .migrate()
        .await
        .map_err(|e| format!("migrating the database: {}", ErrorChain(&e)))?;
    Ok(store)
}

/// Checks the arguments, loads the master key and starts every instance.
async fn setup(args: &Args, timeline: &Arc<Timeline>) -> Result<Vec<Instance>, String> {
    let (url, kind) = database_url(args)?;
    let ring = match &args.ring {
        Some(r) => r.clone(),
        None => {
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default();
            format!("cluster-{secs}")
        }
    };
    let ring = RingName::new(ring).map_err(|e| format!("--ring: {e}"))?;
    let (sealer, master) = master_key(&url).await?;
    let policy = policy_from_env(None).map_err(|e| ErrorChain(&e).to_string())?;
    // KEYROT_SIGNING_KEYS_URI: every instance creates its keys in the same HSM or KMS.
    let signing = keyrot_examples_support::custody::signing_custody(&policy)
        .await
        .map_err(|e| ErrorChain(&e).to_string())?;

    println!("keyrot cluster demo");
    println!("  database   {}", keyrot_sqlx::redact_url(&url));
    println!("  ring       {ring}");
    println!(
        "  instances  {} in this process, each with its own connection pool, key ring and rotator",
        args.instances
    );
    println!("  refresh    {}", kind.refresh());
    println!("  master key {master}");
    if let Some(custody) = &signing {
        println!("  signing keys held by {}", custody.location());
    }
    println!(
        "\ntimeline (ms since start; each snapshot checked every {} ms)",
        WATCH_EVERY.as_millis()
    );

    let mut starting = Vec::new();
    for i in 0..args.instances {
        let (url, ring, sealer, policy, timeline, signing) = (
            url.clone(),
            ring.clone(),
            sealer.clone(),
            policy.clone(),
            timeline.clone(),
            signing.clone(),
        );
        starting.push(tokio::spawn(async move {
            let name = format!("node-{i}");
            let store = open(&url).await.map_err(|e| format!("{name}: {e}"))?;
            let (storage, lock) = (store.storage(), store.lock());
            let mut builder =
                KeyRing::builder(ring.clone(), storage.clone(), sealer.clone()).with_policy(policy.clone());
            if let Some(custody) = signing {
                builder = builder.with_signing_custody(custody);
            }
            let keyring = builder
                .build()
                .await
                .map_err(|e| format!("{name}: loading the ring: {}", ErrorChain(&e)))?;
            let rotator = Rotator::builder(ring, storage, lock, sealer)
                .with_policy(policy)
                .with_instance(name.clone())
                .with_keyring(keyring.clone())
                .build();
            let refresher = keyring.spawn_refresher(Some(store.change_feed(POLL_FEED)), POLL_FALLBACK);
            timeline.record(
                &name,
                format!("connected ({}, own pool), key ring loaded", store.kind()),
            );
            Ok::<_, String>(Instance {
                name,
                keyring,
                rotator,
                refresher,
            })
        }));
    }
    let mut instances = Vec::new();
    let mut first_error = None;
    for task in starting {
        match task.await {
            Ok(Ok(instance)) => instances.push(instance),
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(format!("an instance failed to start: {e}"));
            }
        }
    }
    if let Some(e) = first_error {
        for i in instances {
            i.refresher.shutdown().await;
        }
        return Err(e);
    }
    timeline.flush();
    Ok(instances)
}

/// Under custody when `KEYROT_MASTER_KEY_URI` is set (the master keys stored in the
/// database at `url`; none is created here: `keyrotctl master-key create` does that), else
/// `KEYROT_MASTER_KEY` or `KEYROT_MASTER_KEY_FILE` when set; otherwise a key generated in
/// memory for this run (the demo's ring is throwaway, so nothing needs to be written).
async fn master_key(url: &str) -> Result<(Arc<dyn Sealer>, String), String> {
    let text = |e: SetupError| ErrorChain(&e).to_string();
    if let Some(uri) = master_key_uri(None).map_err(text)? {
        let store = open(url).await?;
        let (sealer, source) = custody_sealer(&uri, store.master_keys(), false).await.map_err(text)?;
        return Ok((sealer, source.describe()));
    }
    if std::env::var_os("KEYROT_MASTER_KEY").is_some() || std::env::var_os("KEYROT_MASTER_KEY_FILE").is_some() {
        let (sealer, source) = load_master_key(None, false).map_err(text)?;
        return Ok((Arc::new(sealer), source.describe()));
    }
    let mk = MasterKey::generate("cluster-demo").map_err(|e| text(SetupError::GenerateMasterKey(e)))?;
    let sealer = MasterKeySealer::new(mk, []).map_err(|e| text(SetupError::GenerateMasterKey(e)))?;
    Ok((
        Arc::new(sealer),
        "generated in memory for this run (set KEYROT_MASTER_KEY or KEYROT_MASTER_KEY_URI to use yours)".to_owned(),
    ))
}

/// A kid shortened for the timeline (the summary prints the new one in full).
fn short(kid: Option<&str>) -> String {
    match kid {
        None => "-".to_owned(),
        Some(k) if k.len() > 12 => format!("{}…", k.get(..10).unwrap_or(k)),
        Some(k) => k.to_owned(),
    }
}

/// What one attempt returned, for the timeline.
fn describe(op: &str, result: &Result<RotationReport, String>) -> String {
    let r = match result {
        Ok(r) => r,
        Err(e) => return format!("{op} → error: {e}"),
    };
    let mut s = format!("{op} → {}", r.outcome.as_str());
    match r.outcome {
        Outcome::Bootstrapped => {
            s += &format!("  kid {} (generation {})", short(r.new_kid.as_deref()), r.generation);
        }
        Outcome::Rotated => {
            s += &format!(
                "  {} → {} (generation {})",
                short(r.old_kid.as_deref()),
                short(r.new_kid.as_deref()),
                r.generation
            );
        }
        Outcome::RateLimited => {
            if let Some(secs) = r.retry_after_secs() {
                s += &format!("  (retry after {secs} s)");
            }
        }
        _ => {}
    }
    if let Some(detail) = r
        .detail
        .as_deref()
        .filter(|_| !matches!(r.outcome, Outcome::Bootstrapped | Outcome::Rotated))
    {
        s += &format!("  — {detail}");
    }
    s
}

/// What an attempt returned and when (ms since start).
type Attempted = (u128, Result<RotationReport, String>);

/// Runs `op` on every instance at the same moment; the results come back in instance order.
async fn all_at_once<F, Fut>(
    instances: &[Instance],
    timeline: &Arc<Timeline>,
    label: &'static str,
    op: F,
) -> Vec<Attempted>
where
    F: Fn(Rotator, String) -> Fut,
    Fut: Future<Output = Result<RotationReport, RotateError>> + Send + 'static,
{
    let barrier = Arc::new(Barrier::new(instances.len()));
    let mut tasks = Vec::new();
    for i in instances {
        let (barrier, timeline, name) = (barrier.clone(), timeline.clone(), i.name.clone());
        let attempt = op(i.rotator.clone(), i.name.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let result = attempt.await.map_err(|e| ErrorChain(&e).to_string());
            let done = timeline.record(&name, describe(label, &result));
            (done, result)
        }));
    }
    let mut results = Vec::new();
    for task in tasks {
        results.push(
            task.await
                .unwrap_or_else(|e| (timeline.now_ms(), Err(format!("the attempt's task failed: {e}")))),
        );
    }
    results
}

/// Watches every instance's snapshot every 10 ms until its Active kid is present and differs
/// from `before` (per instance), for at most [`DEADLINE`]. Returns when each one switched and to
/// which kid, or `None` if it never did.
fn watch(
    instances: &[Instance],
    timeline: &Arc<Timeline>,
    before: Vec<Option<String>>,
) -> Vec<tokio::task::JoinHandle<Option<(u128, String)>>> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    instances
        .iter()
        .zip(before)
        .map(|(i, before)| {
            let (keyring, timeline, name) = (i.keyring.clone(), timeline.clone(), i.name.clone());
            tokio::spawn(async move {
                loop {
                    let snapshot = keyring.snapshot();
                    if let Some(kid) = snapshot.active_kid().filter(|k| Some(*k) != before.as_deref()) {
                        let at = timeline.record(
                            &name,
                            format!(
                                "serves Active kid {} (generation {})",
                                short(Some(kid)),
                                snapshot.generation()
                            ),
                        );
                        return Some((at, kid.to_owned()));
                    }
                    if tokio::time::Instant::now() >= deadline {
                        timeline.record(
                            &name,
                            format!("still not serving a new key after {} s", DEADLINE.as_secs()),
                        );
                        return None;
                    }
                    tokio::time::sleep(WATCH_EVERY).await;
                }
            })
        })
        .collect()
}

async fn join_watchers(watchers: Vec<tokio::task::JoinHandle<Option<(u128, String)>>>) -> Vec<Option<(u128, String)>> {
    let mut seen = Vec::new();
    for w in watchers {
        seen.push(w.await.ok().flatten());
    }
    seen
}

/// Initialises the ring from every instance, then forces a rotation from every instance,
/// prints the timeline and the summary. `true` when exactly one instance rotated and every
/// instance served the new key in time.
async fn demo(instances: &[Instance], timeline: &Arc<Timeline>) -> bool {
    // 1. Every instance initialises the ring at once: exactly one bootstraps it.
    let watchers = watch(instances, timeline, vec![None; instances.len()]);
    timeline.record("all", "init from every instance at once");
    let init = all_at_once(instances, timeline, "init", |rotator, name| async move {
        rotator.init(RequestContext::actor(format!("cluster:{name}"))).await
    })
    .await;
    let bootstrapped = init
        .iter()
        .filter(|(_, r)| matches!(r, Ok(r) if r.outcome == Outcome::Bootstrapped))
        .count();
    let initial = join_watchers(watchers).await;
    timeline.flush();
    if initial.iter().any(Option::is_none) {
        println!("\nFAILED: not every instance serves an Active key after init.");
        return false;
    }

    // 2. Every instance forces a rotation at once: exactly one rotates.
    let before: Vec<Option<String>> = instances
        .iter()
        .map(|i| i.keyring.snapshot().active_kid().map(str::to_owned))
        .collect();
    let watchers = watch(instances, timeline, before.clone());
    let trigger = timeline.record("all", format!("force_rotate(\"{REASON}\") from every instance at once"));
    let results = all_at_once(instances, timeline, "force_rotate", |rotator, name| async move {
        rotator
            .force_rotate(RequestContext::actor(format!("cluster:{name}")), REASON, false)
            .await
    })
    .await;
    let winners: Vec<(usize, u128, &RotationReport)> = results
        .iter()
        .enumerate()
        .filter_map(|(i, (done, r))| {
            r.as_ref()
                .ok()
                .filter(|r| r.outcome == Outcome::Rotated)
                .map(|r| (i, *done, r))
        })
        .collect();
    if winners.is_empty() {
        for w in &watchers {
            w.abort();
        }
    }
    let seen = join_watchers(watchers).await;
    timeline.flush();

    // 3. Summary.
    println!("\nsummary");
    println!(
        "  init: {bootstrapped} of {} instances bootstrapped the ring",
        instances.len()
    );
    let unexpected: Vec<String> = results
        .iter()
        .zip(instances)
        .filter_map(|((_, r), i)| match r {
            Ok(r)
                if matches!(
                    r.outcome,
                    Outcome::Rotated | Outcome::LockBusy | Outcome::LostRace | Outcome::RateLimited
                ) =>
            {
                None
            }
            Ok(r) => Some(format!("{}: {}", i.name, r.outcome.as_str())),
            Err(e) => Some(format!("{}: {e}", i.name)),
        })
        .collect();
    let (winner, committed, report) = match winners.as_slice() {
        [one] => *one,
        [] => {
            println!("  FAILED: no instance rotated");
            return false;
        }
        many => {
            let names: Vec<&str> = many.iter().map(|(i, _, _)| instances[*i].name.as_str()).collect();
            println!(
                "  FAILED: {} rotations ({}), expected exactly one",
                many.len(),
                names.join(", ")
            );
            return false;
        }
    };
    let new_kid = report.new_kid.as_deref().unwrap_or("?");
    println!(
        "  rotations: exactly one rotation, by {} ({} → {new_kid}, generation {})",
        instances[winner].name,
        report.old_kid.as_deref().unwrap_or("-"),
        report.generation
    );
    let mut ok = unexpected.is_empty();
    if !ok {
        println!("  FAILED: unexpected outcomes: {}", unexpected.join("; "));
    }
    println!(
        "  new key served, per instance: ms after the trigger ({trigger} ms) · ms relative to {}'s force_rotate \
         returning ({committed} ms; negative = served before that call returned)",
        instances[winner].name
    );
    for (i, s) in instances.iter().zip(&seen) {
        match s {
            Some((at, kid)) if kid == new_kid => {
                let after_commit =
                    i128::try_from(*at).unwrap_or(i128::MAX) - i128::try_from(committed).unwrap_or(i128::MAX);
                let after_trigger = format!("+{} ms", at.saturating_sub(trigger));
                println!("    {:<8} {after_trigger:>8} · {after_commit:+} ms", i.name);
            }
            Some((_, kid)) => {
                ok = false;
                println!("    {:<8} FAILED: serves {kid}, not the new key {new_kid}", i.name);
            }
            None => {
                ok = false;
                println!(
                    "    {:<8} FAILED: never served the new key within {} s",
                    i.name,
                    DEADLINE.as_secs()
                );
            }
        }
    }
    println!("{}", if ok { "OK" } else { "FAILED" });
    ok
}
