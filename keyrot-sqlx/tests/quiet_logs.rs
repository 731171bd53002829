//! Quiet logs: a scheduler tick that changes nothing writes no line at INFO or above on
//! any store (the lock's acquire and release are DEBUG); a tick that changes the ring
//! writes exactly one INFO line. Real PostgreSQL, MariaDB and SQLite, tracing captured
//! through a real `tracing-subscriber` formatter.

mod common;

use chrono::{TimeDelta, TimeZone, Utc};
use common::*;
use keyrot_core::{Lock, ManualClock, Outcome, Policy, RequestContext, Rotator, Storage};
use std::io::Write;
use std::sync::{Arc, Mutex};
use tracing_subscriber::fmt::MakeWriter;

/// Everything the formatter writes, kept in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Captured {
    /// The lines written since the last call, each starting with its level.
    fn take(&self) -> Vec<String> {
        let bytes = std::mem::take(&mut *self.0.lock().expect("log buffer"));
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(|l| l.trim_start().to_owned())
            .collect()
    }
}

fn at_info_or_above(lines: &[String]) -> Vec<&String> {
    lines
        .iter()
        .filter(|l| ["INFO", "WARN", "ERROR"].iter().any(|lvl| l.starts_with(lvl)))
        .collect()
}

/// On current-thread runtimes every event of the test is on this thread, where the
/// subscriber is the default.
async fn idle_tick_is_quiet(name: &str, storage: Arc<dyn Storage>, lock: Arc<dyn Lock>) {
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .without_time()
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);
    let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).single().expect("time"));
    let rotator = Rotator::builder(ring("quiet"), storage, lock, sealer())
        .with_clock(Arc::new(clock.clone()))
        .with_policy(Policy::default())
        .with_instance("quiet-1")
        .build();
    rotator.init(RequestContext::actor("t")).await.expect("init");
    let init = logs.take();
    assert_eq!(
        at_info_or_above(&init).len(),
        1,
        "{name}: one INFO line for the bootstrap: {init:#?}"
    );

    clock.advance(TimeDelta::minutes(1));
    let r = rotator.tick().await.expect("tick");
    assert_eq!(r.outcome, Outcome::NothingDue, "{name}");
    let idle = logs.take();
    assert!(
        at_info_or_above(&idle).is_empty(),
        "{name}: an idle tick logs nothing at INFO or above: {idle:#?}"
    );
    assert!(
        idle.iter()
            .any(|l| l.starts_with("DEBUG") && l.contains("rotation lock acquired")),
        "{name}: the lock is still traced, at DEBUG: {idle:#?}"
    );

    // Six days later (the default policy publishes the next key 1 day before it is
    // due): one real change, one INFO line.
    clock.advance(TimeDelta::days(6));
    let r = rotator.tick().await.expect("tick");
    assert_eq!(r.outcome, Outcome::Scheduled, "{name}");
    let changed = logs.take();
    let info = at_info_or_above(&changed);
    assert_eq!(info.len(), 1, "{name}: one INFO line per change: {changed:#?}");
    assert!(
        info[0].contains("outcome=\"scheduled\"") || info[0].contains("outcome=scheduled"),
        "{name}: {info:?}"
    );
}

#[tokio::test]
async fn idle_ticks_are_quiet_on_sqlite() {
    let file = SqliteFile::new();
    let store = file.instance(2).await;
    idle_tick_is_quiet("sqlite", Arc::new(store.clone()), Arc::new(store)).await;
}

#[tokio::test]
async fn idle_ticks_are_quiet_on_postgres() {
    let Some(pg) = PgTest::new("idle_ticks_are_quiet_on_postgres", false).await else {
        return;
    };
    let store = pg.instance(2, "quiet").await;
    idle_tick_is_quiet("postgres", Arc::new(store.clone()), Arc::new(store)).await;
    pg.finish().await;
}

#[tokio::test]
async fn idle_ticks_are_quiet_on_mysql() {
    let Some(my) = MySqlTest::new("idle_ticks_are_quiet_on_mysql", false).await else {
        return;
    };
    let store = my.instance(2).await;
    idle_tick_is_quiet("mysql", Arc::new(store.clone()), Arc::new(store)).await;
    my.finish().await;
}
