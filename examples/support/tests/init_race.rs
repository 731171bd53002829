//! A quickstart instance that starts while another one initialises the same ring serves
//! that ring's Active key at once (its banner names it), whether it finds the ring
//! already initialised or the rotation lock held: two instances, each with its own pool,
//! key ring and rotator, on one SQLite file.

use keyrot_core::{KeyRing, MasterKey, MasterKeySealer, Outcome, RequestContext, RingName, Rotator};
use keyrot_examples_support::quickstart::init_ring;
use keyrot_examples_support::{Backend, connect};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// A fresh directory for one test's database, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!("keyrot-init-race-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }

    fn url(&self) -> String {
        format!("sqlite:{}", self.0.join("keys.db").display())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One instance as the quickstart starts it: its store, its key ring (loaded before
/// init, as the quickstart loads it) and its rotator.
struct Instance {
    backend: Backend,
    keyring: KeyRing,
    rotator: Rotator,
}

async fn instance(url: &str, sealer: &Arc<MasterKeySealer>, name: &str) -> Instance {
    let backend = connect(url).await.expect("open the store");
    let ring = RingName::new("default").expect("ring name");
    let keyring = KeyRing::builder(ring.clone(), backend.storage.clone(), sealer.clone())
        .build()
        .await
        .expect("load the ring");
    let rotator = Rotator::builder(ring, backend.storage.clone(), backend.lock.clone(), sealer.clone())
        .with_instance(name)
        .with_keyring(keyring.clone())
        .build();
    Instance {
        backend,
        keyring,
        rotator,
    }
}

fn sealer() -> Arc<MasterKeySealer> {
    Arc::new(MasterKeySealer::new(MasterKey::generate("init-race").expect("master key"), []).expect("sealer"))
}

/// The loser loaded its key ring (empty) before the winner committed, then finds the ring
/// initialised: it serves the winner's key, not none.
#[tokio::test]
async fn an_instance_that_finds_the_ring_initialised_serves_its_active_key() {
    let dir = TempDir::new("found");
    let sealer = sealer();
    let loser = instance(&dir.url(), &sealer, "loser").await;
    let winner = instance(&dir.url(), &sealer, "winner").await;
    assert_eq!(
        loser.keyring.snapshot().active_kid(),
        None,
        "loaded before the winner's commit"
    );
    let won = winner
        .rotator
        .init(RequestContext::actor("winner"))
        .await
        .expect("the winner's init");
    assert_eq!(won.outcome, Outcome::Bootstrapped);
    let kid = won.new_kid.expect("the winner's kid");

    let report = init_ring(&loser.rotator, &loser.keyring, Duration::from_secs(5))
        .await
        .expect("the loser's init");
    assert_ne!(report.outcome, Outcome::Bootstrapped, "the loser created no key");
    assert_eq!(loser.keyring.snapshot().active_kid(), Some(kid.as_str()));
}

/// The winner holds the rotation lock when the loser tries: the loser waits for the
/// lock, then serves the ring's Active key.
#[tokio::test]
async fn an_instance_that_finds_the_lock_held_waits_and_serves_the_active_key() {
    let dir = TempDir::new("busy");
    let sealer = sealer();
    let loser = instance(&dir.url(), &sealer, "loser").await;
    let winner = instance(&dir.url(), &sealer, "winner").await;
    let ring = RingName::new("default").expect("ring name");
    let held = winner
        .backend
        .lock
        .try_acquire(&ring, "winner", Duration::from_secs(60))
        .await
        .expect("lock")
        .expect("the lock is free");
    // While the lock is held, a plain init is turned away and leaves no key to serve.
    let busy = loser.rotator.init(RequestContext::actor("loser")).await.expect("init");
    assert_eq!(busy.outcome, Outcome::LockBusy);
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        held.release().await.expect("release the lock");
        winner
            .rotator
            .init(RequestContext::actor("winner"))
            .await
            .expect("the winner's init");
        winner
    });
    init_ring(&loser.rotator, &loser.keyring, Duration::from_secs(10))
        .await
        .expect("the loser's init");
    let winner = release.await.expect("the winner's task");
    let served = loser.keyring.snapshot().active_kid().map(str::to_owned);
    assert!(served.is_some(), "the loser serves an Active key");
    winner.keyring.refresh().await.expect("refresh");
    assert_eq!(
        served.as_deref(),
        winner.keyring.snapshot().active_kid(),
        "the ring's one Active key"
    );
}

/// Patience runs out while the lock stays held: init_ring returns (the instance starts)
/// instead of waiting forever.
#[tokio::test]
async fn an_instance_waits_for_the_lock_no_longer_than_its_patience() {
    let dir = TempDir::new("patience");
    let sealer = sealer();
    let loser = instance(&dir.url(), &sealer, "loser").await;
    let ring = RingName::new("default").expect("ring name");
    let _held = loser
        .backend
        .lock
        .try_acquire(&ring, "someone", Duration::from_secs(60))
        .await
        .expect("lock")
        .expect("the lock is free");
    let started = std::time::Instant::now();
    let report = init_ring(&loser.rotator, &loser.keyring, Duration::from_millis(300))
        .await
        .expect("init");
    assert_eq!(report.outcome, Outcome::LockBusy);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
}
