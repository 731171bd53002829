//! Cases on the ring manager over the backend: due-ring selection, one feed for many
//! rings, bounded snapshots, exactly-once across managers.

use super::*;
use crate::manager::{ManagerConfig, RingManager};
use crate::storage::RingsStream;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Counts subscriptions to a feed over all rings (once each is established).
#[derive(Debug)]
struct CountingFeed {
    inner: Arc<dyn RingsFeed>,
    subscriptions: AtomicUsize,
}

#[async_trait::async_trait]
impl RingsFeed for CountingFeed {
    async fn subscribe_all(&self) -> Result<Box<dyn RingsStream>, crate::StorageError> {
        let stream = self.inner.subscribe_all().await?;
        self.subscriptions.fetch_add(1, Ordering::SeqCst);
        Ok(stream)
    }
}

fn manager(
    b: &RingBackend,
    clock: &ManualClock,
    sealer: Arc<MasterKeySealer>,
    instance: &str,
    config: ManagerConfig,
) -> RingManager {
    RingManager::builder(b.storage.clone(), b.lock.clone(), sealer)
        .with_clock(Arc::new(clock.clone()))
        .with_instance(instance)
        .with_config(config)
        .build()
}

fn rings(prefix: &str, n: usize) -> Vec<RingName> {
    (0..n).map(|i| ring(&format!("{prefix}-{i:02}"))).collect()
}

async fn onboard_all(m: &RingManager, rings: &[RingName]) {
    for r in rings {
        let kr = m
            .onboard(r, RequestContext::actor("conformance"))
            .await
            .expect("onboard");
        assert!(kr.snapshot().active_kid().is_some(), "an onboarded ring signs");
    }
}

pub async fn manager_ticks_only_the_due_rings(b: &RingBackend) {
    let clock = ManualClock::new(t0());
    let m = manager(b, &clock, Arc::new(sealer()), "a", ManagerConfig::default());
    let all = rings("conf-mgr-due", 3);
    onboard_all(&m, &all).await;
    let pass = m.run_due().await;
    assert_eq!(pass.due, 0, "nothing is due right after onboarding: {pass:?}");
    // A ring listed as due whose tick finds nothing due gets its real time back.
    let g = b.storage.generation(&all[1]).await.expect("generation");
    assert!(b.storage.reschedule(&all[1], g, Some(t0())).await.expect("reschedule"));
    let pass = m.run_due().await;
    assert_eq!((pass.due, pass.rescheduled, pass.changed), (1, 1, 0), "{pass:?}");
    assert_eq!(m.run_due().await.due, 0, "it is not due again");
    // When the rotation interval (less the publish lead) has passed, every ring is due.
    let policy = m.policy(&all[0]);
    clock.advance(policy.rotation_interval() - policy.publish_lead());
    let pass = m.run_due().await;
    assert_eq!((pass.due, pass.changed), (3, 3), "{pass:?}");
    for r in &all {
        let last = &b.storage.audit_log(r, AuditQuery { limit: 1 }).await.expect("audit")[0];
        assert_eq!(last.outcome, Outcome::Scheduled, "each due ring published its next key");
        assert_eq!(last.instance, "a");
    }
    assert_eq!(
        m.run_due().await.due,
        0,
        "the commits moved every ring's next-due time on"
    );
}

pub async fn manager_follows_many_rings_through_one_feed(b: &RingBackend) {
    let clock = ManualClock::new(t0());
    let sealer = Arc::new(sealer());
    let writer = manager(b, &clock, sealer.clone(), "writer", ManagerConfig::default());
    let feed = Arc::new(CountingFeed {
        inner: b.rings_feed(),
        subscriptions: AtomicUsize::new(0),
    });
    let reader = RingManager::builder(b.storage.clone(), b.lock.clone(), sealer)
        .with_clock(Arc::new(clock.clone()))
        .with_instance("reader")
        .with_feed(feed.clone())
        .build();
    let all = rings("conf-mgr-feed", 6);
    onboard_all(&writer, &all).await;
    let mut held = Vec::new();
    for r in &all {
        held.push(reader.keyring(r).await.expect("reader loads"));
    }
    let handle = reader.spawn();
    // The changes come once the subscription is established (what is sent before it
    // is not delivered), so wait for that, with a deadline.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while feed.subscriptions.load(Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the reader subscribed to the feed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut expected = Vec::new();
    for r in &all {
        let report = writer
            .rotator(r)
            .force_rotate(RequestContext::actor("conformance"), "feed test", false)
            .await
            .expect("force");
        assert_eq!(report.outcome, Outcome::Rotated);
        expected.push(report.new_kid.expect("new kid"));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for (kr, kid) in held.iter().zip(&expected) {
        while kr.snapshot().active_kid() != Some(kid.as_str()) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the reader learned {kid} through the feed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    handle.shutdown().await;
    assert_eq!(
        feed.subscriptions.load(Ordering::SeqCst),
        1,
        "one subscription for every ring"
    );
}

pub async fn manager_keeps_loaded_snapshots_within_bounds(b: &RingBackend) {
    let clock = ManualClock::new(t0());
    let sealer = Arc::new(sealer());
    let writer = manager(b, &clock, sealer.clone(), "writer", ManagerConfig::default());
    let all = rings("conf-mgr-lru", 6);
    onboard_all(&writer, &all).await;
    let by_count = ManagerConfig {
        max_loaded_rings: 3,
        ..ManagerConfig::default()
    };
    let m = manager(b, &clock, sealer.clone(), "reader", by_count);
    for r in &all[..3] {
        m.keyring(r).await.expect("load");
    }
    m.keyring(&all[0]).await.expect("use the first again");
    m.keyring(&all[3]).await.expect("load a fourth");
    assert_eq!(m.loaded_usage().0, 3, "at most 3 rings loaded");
    assert!(m.is_loaded(&all[0]), "the recently used ring stays");
    assert!(!m.is_loaded(&all[1]), "the least recently used ring went");
    let one = m.loaded_usage().1 / 3;
    assert!(one > 0, "a loaded ring has a size");
    let by_bytes = ManagerConfig {
        max_loaded_bytes: one * 2 + one / 2,
        ..ManagerConfig::default()
    };
    let m = manager(b, &clock, sealer, "reader-2", by_bytes);
    for r in &all {
        let kr = m.keyring(r).await.expect("load");
        let exp = t0().timestamp() + 60;
        let token = kr.sign(&serde_json::json!({ "sub": "x", "exp": exp })).expect("sign");
        assert!(kr.verify_at(&token, t0()).is_ok(), "a loaded ring signs and verifies");
        let (count, bytes) = m.loaded_usage();
        assert!(
            count <= 2 && bytes <= one * 2 + one / 2,
            "within the byte bound: {count} rings, {bytes} bytes"
        );
    }
}

pub async fn managers_rotate_many_rings_exactly_once(b: &RingBackend) {
    let clock = ManualClock::new(t0());
    let sealer = Arc::new(sealer());
    // The three share the backend's one pool (a few connections): one ring at a time
    // each, as a ring's tick holds the lock's connection while it commits on another.
    let one_at_a_time = ManagerConfig {
        concurrency: 1,
        ..ManagerConfig::default()
    };
    let managers: Vec<RingManager> = ["a", "b", "c"]
        .iter()
        .map(|i| manager(b, &clock, sealer.clone(), i, one_at_a_time))
        .collect();
    let all = rings("conf-mgr-race", 12);
    // Every manager onboards every ring at once: each ring is created exactly once.
    let onboarding = managers.iter().map(|m| {
        let (m, all) = (m.clone(), all.clone());
        tokio::spawn(async move { onboard_all(&m, &all).await })
    });
    for t in onboarding.collect::<Vec<_>>() {
        t.await.expect("onboarding");
    }
    let policy = managers[0].policy(&all[0]);
    let mut changed = 0;
    for step in [
        policy.rotation_interval() - policy.publish_lead(),
        policy.publish_lead(),
    ] {
        clock.advance(step);
        let passes = managers.iter().map(|m| {
            let m = m.clone();
            tokio::spawn(async move { m.run_due().await })
        });
        for t in passes.collect::<Vec<_>>() {
            let pass = t.await.expect("pass");
            assert_eq!(pass.failed, 0, "{pass:?}");
            changed += pass.changed;
        }
    }
    assert_eq!(
        changed,
        2 * all.len(),
        "each due transition was made once, by one manager"
    );
    for r in &all {
        assert_eq!(
            b.storage.generation(r).await.expect("generation"),
            3,
            "{r}: bootstrap, schedule, rotate"
        );
        let audit = b.storage.audit_log(r, AuditQuery { limit: 100 }).await.expect("audit");
        let committed = AuditRecord::committed_changes(&audit);
        assert_eq!(
            committed,
            [
                (1, Outcome::Bootstrapped),
                (2, Outcome::Scheduled),
                (3, Outcome::Rotated)
            ],
            "{r}: every transition exactly once"
        );
    }
}

pub async fn manager_retires_a_ring_for_good(b: &RingBackend) {
    let clock = ManualClock::new(t0());
    let sealer = Arc::new(sealer());
    let a = manager(b, &clock, sealer.clone(), "a", ManagerConfig::default());
    let other = manager(b, &clock, sealer.clone(), "b", ManagerConfig::default());
    let all = rings("conf-mgr-retire", 2);
    let (gone, stays) = (&all[0], &all[1]);
    onboard_all(&a, &all).await;
    let kr = a.keyring(gone).await.expect("load");
    let token = kr
        .sign(&serde_json::json!({ "sub": "x", "exp": t0().timestamp() + 3600 }))
        .expect("sign");
    let held_elsewhere = other.keyring(gone).await.expect("the other instance loads it");
    assert!(held_elsewhere.verify_at(&token, t0()).is_ok());

    let report = a
        .retire(gone, RequestContext::actor("conformance"), "tenant offboarded")
        .await
        .expect("retire");
    assert_eq!(report.outcome, Outcome::Retired, "{report:?}");
    let stored = b.storage.load(gone).await.expect("load");
    assert!(!stored.keys.is_empty());
    for k in &stored.keys {
        assert!(
            k.state == KeyState::Expired && k.revoked_at.is_some() && k.sealed.is_none(),
            "{}: every key revoked and destroyed",
            k.kid
        );
    }
    let audit = &b.storage.audit_log(gone, AuditQuery { limit: 1 }).await.expect("audit")[0];
    assert_eq!((audit.outcome, audit.instance.as_str()), (Outcome::Retired, "a"));
    assert_eq!(audit.reason.as_deref(), Some("tenant offboarded"));

    // Served as unknown here at once, and by the other instance once it has the change.
    assert!(kr.verify_at(&token, t0()).is_err(), "nothing of the ring verifies");
    assert!(a.existing_keyring(gone).await.expect("existing").is_none());
    held_elsewhere
        .reload()
        .await
        .expect("the change reaches the other instance");
    assert!(held_elsewhere.verify_at(&token, t0()).is_err());
    assert!(other.existing_keyring(gone).await.expect("existing").is_none());
    let fresh = manager(b, &clock, sealer.clone(), "c", ManagerConfig::default());
    assert!(fresh.existing_keyring(gone).await.expect("existing").is_none());
    assert!(fresh.existing_keyring(stays).await.expect("existing").is_some());

    never_due_or_onboarded_again(b, &a, &fresh, &clock, gone).await;
    let again = a
        .retire(gone, RequestContext::actor("conformance"), "twice")
        .await
        .expect("retire again");
    assert_eq!(again.outcome, Outcome::NothingDue);
}

/// A retired ring is never due, never onboarded again, and a stale index entry for it is
/// written back as never due; nothing is committed to it.
async fn never_due_or_onboarded_again(
    b: &RingBackend,
    a: &RingManager,
    fresh: &RingManager,
    clock: &ManualClock,
    gone: &RingName,
) {
    // Never due again, never onboarded again.
    let listed = b.storage.list_rings(None, 100).await.expect("list");
    let entry = listed.iter().find(|e| &e.name == gone).expect("still listed");
    assert_eq!(entry.next_due, None, "a retired ring is never due");
    assert!(matches!(
        fresh.onboard(gone, RequestContext::actor("conformance")).await,
        Err(crate::manager::ManagerError::Retired { .. })
    ));
    let generation = b.storage.generation(gone).await.expect("generation");
    let policy = a.policy(gone);
    clock.advance(policy.rotation_interval() * 3);
    let pass = a.run_due().await;
    assert_eq!(
        (pass.due, pass.changed, pass.failed),
        (1, 1, 0),
        "only the other ring: {pass:?}"
    );
    // Listed as due by mistake (an old index entry): its tick changes nothing, and it is
    // written back as never due.
    assert!(
        b.storage
            .reschedule(gone, generation, Some(t0()))
            .await
            .expect("reschedule")
    );
    let pass = a.run_due().await;
    assert_eq!((pass.due, pass.rescheduled, pass.changed), (1, 1, 0), "{pass:?}");
    assert_eq!(a.run_due().await.due, 0, "not due again");
    let listed = b.storage.list_rings(None, 100).await.expect("list");
    let entry = listed.iter().find(|e| &e.name == gone).expect("still listed");
    assert_eq!(entry.next_due, None, "written back as never due");
    assert_eq!(
        b.storage.generation(gone).await.expect("generation"),
        generation,
        "nothing was committed to the retired ring"
    );
}
