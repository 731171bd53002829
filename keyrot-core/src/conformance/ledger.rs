//! Cases on the manifest and the audit ledger's chain.

use super::*;

pub async fn manifest_is_stored_with_each_commit(b: &Backend) {
    let r = ring("conf-manifest");
    assert_eq!(b.storage.load(&r).await.expect("load").manifest, None);
    let k = sample_key(r.as_str(), KeyState::Active, t0());
    b.storage
        .commit(&commit(&r, 0, vec![k], t0()), &linker())
        .await
        .expect("c1");
    let mut c2 = commit(&r, 1, Vec::new(), t0());
    c2.manifest = "second manifest".into();
    assert_eq!(
        b.storage.commit(&c2, &linker()).await.expect("c2"),
        CommitOutcome::Committed
    );
    let mut stale = commit(&r, 1, Vec::new(), t0());
    stale.manifest = "stale manifest".into();
    assert_eq!(
        b.storage.commit(&stale, &linker()).await.expect("c3"),
        CommitOutcome::Conflict { current: 2 }
    );
    let loaded = b.storage.load(&r).await.expect("load");
    assert_eq!(loaded.generation, 2);
    assert_eq!(
        loaded.manifest.as_deref(),
        Some("second manifest"),
        "the manifest moves with the generation; a conflicting commit writes none"
    );
}

pub async fn audit_chain_links_every_append(b: &Backend) {
    let r = ring("conf-chain");
    let lk = linker();
    b.storage
        .record_attempt(&sample_audit(r.as_str(), t0(), 0, Outcome::Refused), None, &lk)
        .await
        .expect("a1");
    b.storage
        .commit(
            &commit(&r, 0, vec![sample_key(r.as_str(), KeyState::Active, t0())], t0()),
            &lk,
        )
        .await
        .expect("c1");
    // A conflicting commit appends nothing.
    let stale = b
        .storage
        .commit(&commit(&r, 0, Vec::new(), t0()), &lk)
        .await
        .expect("c2");
    assert_eq!(
        stale,
        CommitOutcome::Conflict { current: 1 },
        "a stale commit conflicts"
    );
    b.storage
        .record_attempt(&sample_audit(r.as_str(), t0(), 1, Outcome::LockBusy), None, &lk)
        .await
        .expect("a2");
    assert_chain(b, &r, 3).await;
    // Chains are per ring.
    let other = ring("conf-chain-other");
    b.storage
        .record_attempt(&sample_audit(other.as_str(), t0(), 0, Outcome::Refused), None, &lk)
        .await
        .expect("other");
    assert_chain(b, &other, 1).await;
    assert_chain(b, &r, 3).await;
}

pub async fn concurrent_appends_keep_the_chain_contiguous(b: &Backend) {
    let r = ring("conf-chain-race");
    let lk = linker();
    b.storage
        .commit(
            &commit(&r, 0, vec![sample_key(r.as_str(), KeyState::Active, t0())], t0()),
            &lk,
        )
        .await
        .expect("base");
    let audits: Vec<AuditRecord> = (0..12)
        .map(|i| {
            let mut a = sample_audit(r.as_str(), t0() + TimeDelta::milliseconds(i), 1, Outcome::LockBusy);
            a.id = format!("attempt-{i}");
            a
        })
        .collect();
    let commits: Vec<Commit> = (0..4).map(|_| commit(&r, 1, Vec::new(), t0())).collect();
    let attempts = futures_join_all(audits.iter().map(|a| b.storage.record_attempt(a, None, &lk)));
    let races = futures_join_all(commits.iter().map(|c| b.storage.commit(c, &lk)));
    let (attempts, races) = tokio::join!(attempts, races);
    assert!(attempts.iter().all(Result::is_ok), "{attempts:?}");
    let won = races
        .iter()
        .filter(|x| matches!(x, Ok(CommitOutcome::Committed)))
        .count();
    assert_eq!(won, 1, "{races:?}");
    assert_chain(b, &r, 1 + 12 + 1).await;
}

pub async fn commit_refuses_records_of_another_ring(b: &Backend) {
    let (r, other) = (ring("conf-foreign-a"), ring("conf-foreign-b"));
    let mut c = commit(&r, 0, vec![sample_key(r.as_str(), KeyState::Active, t0())], t0());
    c.audit = sample_audit(other.as_str(), t0(), 1, Outcome::Rotated);
    assert!(
        b.storage.commit(&c, &linker()).await.is_err(),
        "an audit record of another ring is refused"
    );
    let mut c = commit(&r, 0, vec![sample_key(r.as_str(), KeyState::Active, t0())], t0());
    c.idempotency = Some(IdempotencyRecord {
        ring: other.to_string(),
        key: "foreign".into(),
        request_hash: "h".into(),
        response: "{}".into(),
        created_at: t0(),
    });
    assert!(
        b.storage.commit(&c, &linker()).await.is_err(),
        "an idempotency record of another ring is refused"
    );
    for x in [&r, &other] {
        assert_eq!(b.storage.generation(x).await.expect("generation"), 0);
        assert!(
            b.storage
                .audit_log(x, AuditQuery::default())
                .await
                .expect("audit")
                .is_empty()
        );
    }
    assert!(b.storage.idempotency(&other, "foreign").await.expect("idem").is_none());
}
