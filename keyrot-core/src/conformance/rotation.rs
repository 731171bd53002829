//! Cases on the lock and a real rotator over the backend.

use super::*;

pub async fn lock_is_exclusive_until_released(b: &Backend) {
    let r = ring("conf-lock");
    let ttl = Duration::from_secs(30);
    let g1 = b
        .lock
        .try_acquire(&r, "a", ttl)
        .await
        .expect("acquire")
        .expect("free lock is granted");
    assert!(
        b.lock.try_acquire(&r, "b", ttl).await.expect("acquire").is_none(),
        "held lock is refused"
    );
    g1.release().await.expect("release");
    let g2 = b
        .lock
        .try_acquire(&r, "b", ttl)
        .await
        .expect("acquire")
        .expect("released lock is granted");
    g2.release().await.expect("release");
}

pub async fn locks_are_per_ring(b: &Backend) {
    let ttl = Duration::from_secs(30);
    let g1 = b
        .lock
        .try_acquire(&ring("conf-lock-a"), "a", ttl)
        .await
        .expect("a")
        .expect("granted");
    let g2 = b
        .lock
        .try_acquire(&ring("conf-lock-b"), "a", ttl)
        .await
        .expect("b")
        .expect("other ring is independent");
    g1.release().await.expect("release");
    g2.release().await.expect("release");
}

fn rotator(b: &Backend, r: &RingName, clock: &ManualClock, sealer: Arc<MasterKeySealer>, instance: &str) -> Rotator {
    Rotator::builder(r.clone(), b.storage.clone(), b.lock.clone(), sealer)
        .with_clock(Arc::new(clock.clone()))
        .with_instance(instance)
        .build()
}

pub async fn rotator_lifecycle_on_backend(b: &Backend) {
    let r = ring("conf-lifecycle");
    let clock = ManualClock::new(t0());
    let sealer = Arc::new(sealer());
    let rot = rotator(b, &r, &clock, sealer, "a");
    let boot = rot.init(RequestContext::actor("conformance")).await.expect("init");
    assert_eq!(boot.outcome, Outcome::Bootstrapped);
    let first = boot.new_kid.clone().expect("new kid");
    // Within min_interval a normal rotation is refused with the exact retry-after.
    clock.advance(TimeDelta::days(1));
    let limited = rot.rotate(RequestContext::actor("svc")).await.expect("rotate");
    assert_eq!(limited.outcome, Outcome::RateLimited);
    assert_eq!(limited.retry_after_ms, Some(TimeDelta::days(5).num_milliseconds()));
    // After rotation_interval − publish_lead the scheduler publishes a Pending key …
    clock.advance(TimeDelta::days(5));
    let sched = rot.tick().await.expect("tick");
    assert_eq!(sched.outcome, Outcome::Scheduled);
    let next = sched.new_kid.clone().expect("pending kid");
    // … which activates after publish_lead.
    clock.advance(TimeDelta::days(1));
    let rotated = rot.tick().await.expect("tick");
    assert_eq!(rotated.outcome, Outcome::Rotated);
    assert_eq!(rotated.old_kid.as_deref(), Some(first.as_str()));
    assert_eq!(rotated.new_kid.as_deref(), Some(next.as_str()));
    let ring_now = b.storage.load(&r).await.expect("load");
    assert_eq!(ring_now.active().map(|k| k.kid.as_str()), Some(next.as_str()));
    assert_eq!(ring_now.key(&first).map(|k| k.state), Some(KeyState::Retiring));
    assert_eq!(ring_now.generation, 3);
    let audit = b.storage.audit_log(&r, AuditQuery { limit: 100 }).await.expect("audit");
    let outcomes: Vec<_> = audit.iter().rev().map(|a| a.outcome).collect();
    assert_eq!(
        outcomes,
        vec![
            Outcome::Bootstrapped,
            Outcome::RateLimited,
            Outcome::Scheduled,
            Outcome::Rotated
        ]
    );
    assert!(to_millis(clock.now()) == clock.now());
}

pub async fn concurrent_rotators_rotate_exactly_once(b: &Backend) {
    let r = ring("conf-rotators");
    let clock = ManualClock::new(t0());
    let sealer = Arc::new(sealer());
    let first = rotator(b, &r, &clock, sealer.clone(), "boot");
    first.init(RequestContext::actor("conformance")).await.expect("init");
    clock.advance(TimeDelta::hours(2));
    let rotators: Vec<Rotator> = (0..8)
        .map(|i| rotator(b, &r, &clock, sealer.clone(), &format!("i{i}")))
        .collect();
    let reports = futures_join_all(
        rotators
            .iter()
            .map(|rot| rot.force_rotate(RequestContext::actor("breakglass"), "leak drill", false)),
    )
    .await;
    let rotated = reports
        .iter()
        .filter(|x| matches!(x, Ok(rep) if rep.outcome == Outcome::Rotated))
        .count();
    assert_eq!(rotated, 1, "exactly one forced rotation happens: {reports:?}");
    for rep in &reports {
        let rep = rep.as_ref().expect("no attempt fails");
        assert!(
            matches!(
                rep.outcome,
                Outcome::Rotated | Outcome::LockBusy | Outcome::LostRace | Outcome::RateLimited
            ),
            "{rep:?}"
        );
    }
    let loaded = b.storage.load(&r).await.expect("load");
    assert_eq!(loaded.in_state(KeyState::Active).count(), 1);
    assert_eq!(loaded.keys.len(), 2);
    assert_eq!(loaded.generation, 2);
    let audit = b.storage.audit_log(&r, AuditQuery { limit: 100 }).await.expect("audit");
    assert_eq!(
        audit.len(),
        1 + 8,
        "the bootstrap and every one of the 8 attempts is audited"
    );
}
