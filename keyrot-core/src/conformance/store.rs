//! Cases on the ring rows: generations, compare-and-swap, idempotency, isolation.

use super::*;

pub async fn empty_ring_loads_at_generation_zero(b: &Backend) {
    let r = ring("conf-empty");
    let loaded = b.storage.load(&r).await.expect("load");
    assert_eq!(loaded.generation, 0);
    assert!(loaded.keys.is_empty());
    assert_eq!(b.storage.generation(&r).await.expect("generation"), 0);
    assert!(
        b.storage
            .audit_log(&r, AuditQuery::default())
            .await
            .expect("audit")
            .is_empty()
    );
    assert!(b.storage.idempotency(&r, "nope").await.expect("idem").is_none());
}

pub async fn commit_round_trips_every_field(b: &Backend) {
    let r = ring("conf-roundtrip");
    let mut key = sample_key(r.as_str(), KeyState::Expired, t0());
    key.purged_at = Some(t0() + TimeDelta::milliseconds(7));
    let mut c = commit(&r, 0, vec![key.clone()], t0());
    c.idempotency = Some(IdempotencyRecord {
        ring: r.to_string(),
        key: "idem-1".into(),
        request_hash: "hash".into(),
        response: r#"{"outcome":"rotated"}"#.into(),
        created_at: t0(),
    });
    assert_eq!(
        b.storage.commit(&c, &linker()).await.expect("commit"),
        CommitOutcome::Committed
    );
    let loaded = b.storage.load(&r).await.expect("load");
    assert_eq!(loaded.generation, 1);
    assert_eq!(
        loaded.keys,
        vec![key],
        "every key field round-trips at millisecond precision"
    );
    assert_eq!(b.storage.generation(&r).await.expect("generation"), 1);
    let audit = b.storage.audit_log(&r, AuditQuery::default()).await.expect("audit");
    assert_eq!(audit.len(), 1);
    assert_eq!(
        audit,
        vec![appended(&c.audit, &audit[0], 1)],
        "every audit field round-trips"
    );
    assert_chain(b, &r, 1).await;
    assert_eq!(
        loaded.manifest.as_deref(),
        Some(c.manifest.as_str()),
        "the manifest round-trips"
    );
    let idem = b.storage.idempotency(&r, "idem-1").await.expect("idem");
    assert_eq!(idem, c.idempotency);
}

pub async fn stale_generation_conflicts_and_writes_nothing(b: &Backend) {
    let r = ring("conf-stale");
    let k1 = sample_key(r.as_str(), KeyState::Active, t0());
    assert_eq!(
        b.storage
            .commit(&commit(&r, 0, vec![k1.clone()], t0()), &linker())
            .await
            .expect("c1"),
        CommitOutcome::Committed
    );
    let k2 = sample_key(r.as_str(), KeyState::Pending, t0());
    let mut stale = commit(&r, 0, vec![k2], t0());
    stale.idempotency = Some(IdempotencyRecord {
        ring: r.to_string(),
        key: "stale-key".into(),
        request_hash: "h".into(),
        response: "{}".into(),
        created_at: t0(),
    });
    assert_eq!(
        b.storage.commit(&stale, &linker()).await.expect("c2"),
        CommitOutcome::Conflict { current: 1 }
    );
    let loaded = b.storage.load(&r).await.expect("load");
    assert_eq!(loaded.generation, 1);
    assert_eq!(loaded.keys, vec![k1], "a conflicting commit writes no key");
    assert_eq!(
        b.storage
            .audit_log(&r, AuditQuery::default())
            .await
            .expect("audit")
            .len(),
        1
    );
    assert!(b.storage.idempotency(&r, "stale-key").await.expect("idem").is_none());
}

/// A commit moves the ring to exactly its audit record's generation: `expected + 1`
/// normally, and back down for a repair of a generation column that was altered.
pub async fn commit_moves_the_ring_to_its_audit_records_generation(b: &Backend) {
    let r = ring("conf-next-gen");
    let k1 = sample_key(r.as_str(), KeyState::Active, t0());
    b.storage
        .commit(&commit(&r, 0, vec![k1], t0()), &linker())
        .await
        .expect("c1");
    assert_eq!(b.storage.generation(&r).await.expect("generation"), 1);
    let mut repair = commit(&r, 1, Vec::new(), t0());
    repair.audit.generation = 7;
    assert_eq!(
        b.storage.commit(&repair, &linker()).await.expect("c2"),
        CommitOutcome::Committed
    );
    assert_eq!(b.storage.generation(&r).await.expect("generation"), 7);
    assert_eq!(b.storage.load(&r).await.expect("load").generation, 7);
    let mut down = commit(&r, 7, Vec::new(), t0());
    down.audit.generation = 3;
    assert_eq!(
        b.storage.commit(&down, &linker()).await.expect("c3"),
        CommitOutcome::Committed
    );
    assert_eq!(b.storage.generation(&r).await.expect("generation"), 3);
    assert_eq!(
        b.storage
            .commit(&commit(&r, 7, Vec::new(), t0()), &linker())
            .await
            .expect("c4"),
        CommitOutcome::Conflict { current: 3 }
    );
}

pub async fn concurrent_commits_on_one_generation_exactly_one_wins(b: &Backend) {
    let r = ring("conf-race");
    let base = sample_key(r.as_str(), KeyState::Active, t0());
    assert_eq!(
        b.storage
            .commit(&commit(&r, 0, vec![base], t0()), &linker())
            .await
            .expect("base"),
        CommitOutcome::Committed
    );
    for round in 0..5u64 {
        let commits: Vec<Commit> = (0..8)
            .map(|_| {
                commit(
                    &r,
                    1 + round,
                    vec![sample_key(r.as_str(), KeyState::Pending, t0())],
                    t0(),
                )
            })
            .collect();
        let lk = linker();
        let results = futures_join_all(commits.iter().map(|c| b.storage.commit(c, &lk))).await;
        let won = results
            .iter()
            .filter(|x| matches!(x, Ok(CommitOutcome::Committed)))
            .count();
        let lost = results
            .iter()
            .filter(|x| matches!(x, Ok(CommitOutcome::Conflict { .. })))
            .count();
        assert_eq!(
            (won, lost),
            (1, 7),
            "round {round}: exactly one of 8 concurrent commits wins: {results:?}"
        );
        let loaded = b.storage.load(&r).await.expect("load");
        assert_eq!(loaded.generation, 2 + round);
        assert_eq!(loaded.keys.len() as u64, 2 + round, "only the winner's key was written");
        let audits = b
            .storage
            .audit_log(&r, AuditQuery { limit: 1000 })
            .await
            .expect("audit");
        assert_eq!(
            audits.len() as u64,
            2 + round,
            "only the winner's audit record was written"
        );
    }
}

pub async fn commits_replace_keys_by_kid_and_never_delete(b: &Backend) {
    let r = ring("conf-replace");
    let mut a = sample_key(r.as_str(), KeyState::Pending, t0());
    let other = sample_key(r.as_str(), KeyState::Active, t0());
    b.storage
        .commit(&commit(&r, 0, vec![a.clone(), other.clone()], t0()), &linker())
        .await
        .expect("c1");
    a.state = KeyState::Expired;
    a.sealed = None;
    a.purged_at = Some(t0() + TimeDelta::days(30));
    assert_eq!(
        b.storage
            .commit(&commit(&r, 1, vec![a.clone()], t0()), &linker())
            .await
            .expect("c2"),
        CommitOutcome::Committed
    );
    let mut loaded = b.storage.load(&r).await.expect("load").keys;
    loaded.sort_by(|x, y| x.kid.cmp(&y.kid));
    let mut want = vec![a, other];
    want.sort_by(|x, y| x.kid.cmp(&y.kid));
    assert_eq!(
        loaded, want,
        "updated by kid; the untouched key is still there; purged material is gone"
    );
}

pub async fn record_attempt_appends_without_changing_generation(b: &Backend) {
    let r = ring("conf-attempt");
    let a = sample_audit(r.as_str(), t0(), 0, Outcome::RateLimited);
    let idem = IdempotencyRecord {
        ring: r.to_string(),
        key: "k-attempt".into(),
        request_hash: "h".into(),
        response: r#"{"outcome":"rate_limited"}"#.into(),
        created_at: t0(),
    };
    b.storage
        .record_attempt(&a, Some(&idem), &linker())
        .await
        .expect("record");
    assert_eq!(b.storage.generation(&r).await.expect("generation"), 0);
    let got = b.storage.audit_log(&r, AuditQuery::default()).await.expect("audit");
    assert_eq!(got.len(), 1);
    assert_eq!(got, vec![appended(&a, &got[0], 1)]);
    assert_chain(b, &r, 1).await;
    assert_eq!(b.storage.idempotency(&r, "k-attempt").await.expect("idem"), Some(idem));
}

pub async fn audit_log_is_newest_first_and_limited(b: &Backend) {
    let r = ring("conf-audit");
    for i in 0..5 {
        let a = sample_audit(r.as_str(), t0() + TimeDelta::seconds(i), 0, Outcome::LockBusy);
        b.storage.record_attempt(&a, None, &linker()).await.expect("record");
    }
    let got = b.storage.audit_log(&r, AuditQuery { limit: 3 }).await.expect("audit");
    let times: Vec<_> = got.iter().map(|a| a.at).collect();
    assert_eq!(
        times,
        vec![
            t0() + TimeDelta::seconds(4),
            t0() + TimeDelta::seconds(3),
            t0() + TimeDelta::seconds(2)
        ]
    );
}

pub async fn idempotency_first_answer_wins(b: &Backend) {
    let r = ring("conf-idem");
    let first = IdempotencyRecord {
        ring: r.to_string(),
        key: "same".into(),
        request_hash: "h1".into(),
        response: "first".into(),
        created_at: t0(),
    };
    let second = IdempotencyRecord {
        response: "second".into(),
        ..first.clone()
    };
    b.storage
        .record_attempt(
            &sample_audit(r.as_str(), t0(), 0, Outcome::Refused),
            Some(&first),
            &linker(),
        )
        .await
        .expect("1");
    b.storage
        .record_attempt(
            &sample_audit(r.as_str(), t0(), 0, Outcome::Refused),
            Some(&second),
            &linker(),
        )
        .await
        .expect("a second answer for a stored key is not an error: the attempt is recorded, the first answer kept");
    assert_eq!(
        b.storage
            .audit_log(&r, AuditQuery::default())
            .await
            .expect("audit")
            .len(),
        2,
        "both attempts are in the ledger"
    );
    assert_eq!(
        b.storage
            .idempotency(&r, "same")
            .await
            .expect("idem")
            .map(|i| i.response)
            .as_deref(),
        Some("first")
    );
}

pub async fn rings_are_isolated(b: &Backend) {
    let (r1, r2) = (ring("conf-iso-a"), ring("conf-iso-b"));
    let k = sample_key(r1.as_str(), KeyState::Active, t0());
    b.storage
        .commit(&commit(&r1, 0, vec![k.clone()], t0()), &linker())
        .await
        .expect("c1");
    assert_eq!(b.storage.generation(&r2).await.expect("g"), 0);
    assert!(b.storage.load(&r2).await.expect("load").keys.is_empty());
    // The same kid may exist in two rings.
    assert_eq!(
        b.storage
            .commit(&commit(&r2, 0, vec![k], t0()), &linker())
            .await
            .expect("c2"),
        CommitOutcome::Committed
    );
    assert_eq!(
        b.storage.audit_log(&r1, AuditQuery::default()).await.expect("a").len(),
        1
    );
}

pub async fn load_public_is_load_without_sealed_material(b: &Backend) {
    let r = ring("conf-public");
    let empty = b.storage.load_public(&r).await.expect("load_public of an unknown ring");
    assert_eq!(empty.generation, 0);
    assert!(empty.keys.is_empty());
    let sealed = sample_key(r.as_str(), KeyState::Active, t0());
    let mut purged = sample_key(r.as_str(), KeyState::Expired, t0());
    purged.sealed = None;
    purged.purged_at = Some(t0() + TimeDelta::milliseconds(9));
    let c = commit(&r, 0, vec![sealed, purged], t0());
    assert_eq!(
        b.storage.commit(&c, &linker()).await.expect("commit"),
        CommitOutcome::Committed
    );
    let full = b.storage.load(&r).await.expect("load");
    let public = b.storage.load_public(&r).await.expect("load_public");
    assert!(
        full.keys.iter().any(|k| k.sealed.is_some()),
        "load returns sealed material"
    );
    assert!(
        public.keys.iter().all(|k| k.sealed.is_none()),
        "load_public returns no sealed material"
    );
    let stripped: Vec<KeyRecord> = full
        .keys
        .iter()
        .cloned()
        .map(|mut k| {
            k.sealed = None;
            k
        })
        .collect();
    assert_eq!(
        public.keys, stripped,
        "every other field equals load's, in load's order"
    );
    assert_eq!(public.generation, full.generation);
    assert_eq!(public.manifest, full.manifest, "the manifest is public and read alike");
    assert_eq!(public.name, full.name);
}
