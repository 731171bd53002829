//! Cases on many rings in one store: the next-due index, the listing, the feed over all
//! rings.

use super::*;

fn commit_due(r: &RingName, expected: u64, due: Option<DateTime<Utc>>) -> Commit {
    let at = t0() + TimeDelta::seconds(i64::try_from(expected).unwrap());
    let mut c = commit(r, expected, vec![sample_key(r.as_str(), KeyState::Active, t0())], at);
    c.next_due = due;
    c
}

async fn committed(b: &RingBackend, c: &Commit) {
    assert_eq!(
        b.storage.commit(c, &linker()).await.expect("commit"),
        CommitOutcome::Committed
    );
}

fn names(rings: &[RingName]) -> Vec<&str> {
    rings.iter().map(RingName::as_str).collect()
}

pub async fn commits_keep_the_next_due_time_and_due_rings_lists_the_due(b: &RingBackend) {
    let (early, late, never) = (ring("conf-due-early"), ring("conf-due-late"), ring("conf-due-never"));
    committed(b, &commit_due(&late, 0, Some(t0() + TimeDelta::hours(2)))).await;
    committed(b, &commit_due(&early, 0, Some(t0() + TimeDelta::hours(1)))).await;
    committed(b, &commit_due(&never, 0, None)).await;
    let due = |at| async move { b.storage.due_rings(at, 10).await.expect("due rings") };
    assert!(due(t0()).await.is_empty(), "nothing is due before its time");
    let one_ms_early = t0() + TimeDelta::hours(1) - TimeDelta::milliseconds(1);
    assert!(due(one_ms_early).await.is_empty(), "next-due times keep milliseconds");
    assert_eq!(
        names(&due(t0() + TimeDelta::hours(1)).await),
        ["conf-due-early"],
        "due at exactly its time"
    );
    assert_eq!(
        names(&due(t0() + TimeDelta::days(365)).await),
        ["conf-due-early", "conf-due-late"],
        "soonest first; a ring with nothing planned is never due"
    );
    let limited = b.storage.due_rings(t0() + TimeDelta::days(1), 1).await.expect("due");
    assert_eq!(names(&limited), ["conf-due-early"], "the limit keeps the soonest");
    // The next commit replaces the time.
    committed(b, &commit_due(&early, 1, Some(t0() + TimeDelta::hours(3)))).await;
    assert_eq!(
        names(&due(t0() + TimeDelta::hours(2)).await),
        ["conf-due-late"],
        "a commit replaces the ring's next-due time"
    );
    committed(b, &commit_due(&late, 1, None)).await;
    assert_eq!(names(&due(t0() + TimeDelta::hours(3)).await), ["conf-due-early"]);
}

pub async fn reschedule_applies_only_at_the_same_generation(b: &RingBackend) {
    let r = ring("conf-reschedule");
    committed(b, &commit_due(&r, 0, Some(t0() + TimeDelta::days(1)))).await;
    assert!(
        !b.storage.reschedule(&r, 0, Some(t0())).await.expect("reschedule"),
        "a stale generation does not reschedule"
    );
    assert!(b.storage.due_rings(t0(), 10).await.expect("due").is_empty());
    assert!(b.storage.reschedule(&r, 1, Some(t0())).await.expect("reschedule"));
    assert_eq!(
        names(&b.storage.due_rings(t0(), 10).await.expect("due")),
        ["conf-reschedule"]
    );
    assert!(b.storage.reschedule(&r, 1, None).await.expect("reschedule"));
    assert!(
        b.storage
            .due_rings(t0() + TimeDelta::days(999), 10)
            .await
            .expect("due")
            .is_empty(),
        "None: never due"
    );
    assert!(
        !b.storage
            .reschedule(&ring("conf-reschedule-unknown"), 0, Some(t0()))
            .await
            .expect("unknown"),
        "an unknown ring is not created by a reschedule"
    );
    assert_eq!(
        b.storage.generation(&r).await.expect("generation"),
        1,
        "the generation stays"
    );
}

pub async fn list_rings_pages_by_name(b: &RingBackend) {
    let names_in = ["conf-list-c", "conf-list-a", "conf-list-b"];
    for (i, n) in names_in.iter().enumerate() {
        let r = ring(n);
        let due = Some(t0() + TimeDelta::minutes(i64::try_from(i).unwrap()));
        committed(b, &commit_due(&r, 0, due)).await;
        if i == 0 {
            committed(b, &commit_due(&r, 1, due)).await;
        }
    }
    let all = b.storage.list_rings(None, 10).await.expect("list");
    let got: Vec<(&str, u64, Option<DateTime<Utc>>)> = all
        .iter()
        .map(|e| (e.name.as_str(), e.generation, e.next_due))
        .collect();
    assert_eq!(
        got,
        [
            ("conf-list-a", 1, Some(t0() + TimeDelta::minutes(1))),
            ("conf-list-b", 1, Some(t0() + TimeDelta::minutes(2))),
            ("conf-list-c", 2, Some(t0())),
        ],
        "every ring by name, with its generation and next-due time"
    );
    let first = b.storage.list_rings(None, 2).await.expect("page 1");
    assert_eq!(first.len(), 2);
    let second = b.storage.list_rings(Some(&first[1].name), 2).await.expect("page 2");
    assert_eq!(second.len(), 1);
    assert_eq!(
        second[0].name.as_str(),
        "conf-list-c",
        "the next page starts after the cursor"
    );
}

/// Waits until `stream` has announced each of `expected` (ring, generation): a `Resync`
/// counts for every ring the store shows at its generation.
async fn expect_all_announced(
    b: &RingBackend,
    stream: &mut Box<dyn crate::storage::RingsStream>,
    expected: &[(RingName, u64)],
) {
    let mut missing: Vec<(RingName, u64)> = expected.to_vec();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !missing.is_empty() {
        let event = tokio::time::timeout_at(deadline, stream.next())
            .await
            .unwrap_or_else(|_| panic!("the feed announced {missing:?} in time"))
            .expect("the feed keeps working");
        match event {
            RingEvent::Changed { ring, generation } => {
                missing.retain(|(r, g)| !(r == &ring && *g <= generation));
            }
            _ => {
                let mut still = Vec::new();
                for (r, g) in missing {
                    if b.storage.generation(&r).await.expect("generation") < g {
                        still.push((r, g));
                    }
                }
                missing = still;
            }
        }
    }
}

pub async fn rings_feed_announces_every_rings_commits(b: &RingBackend) {
    let feed = b.rings_feed();
    let mut stream = feed.subscribe_all().await.expect("subscribe to all rings");
    let rings: Vec<RingName> = (0..5).map(|i| ring(&format!("conf-all-{i}"))).collect();
    for r in &rings {
        committed(b, &commit_due(r, 0, None)).await;
    }
    let expected: Vec<(RingName, u64)> = rings.iter().map(|r| (r.clone(), 1)).collect();
    expect_all_announced(b, &mut stream, &expected).await;
    committed(b, &commit_due(&rings[3], 1, None)).await;
    expect_all_announced(b, &mut stream, &[(rings[3].clone(), 2)]).await;
}

pub async fn rotator_commits_write_the_planned_next_due_time(b: &RingBackend) {
    let r = ring("conf-rotator-due");
    let clock = ManualClock::new(t0());
    let rot = Rotator::builder(r.clone(), b.storage.clone(), b.lock.clone(), Arc::new(sealer()))
        .with_clock(Arc::new(clock.clone()))
        .build();
    rot.init(RequestContext::actor("conformance")).await.expect("init");
    let loaded = b.storage.load(&r).await.expect("load");
    let planned = loaded
        .next_transition(rot.policy())
        .expect("a bootstrapped ring has a next transition")
        .at;
    let listed = b.storage.list_rings(None, 10).await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(
        listed[0].next_due,
        Some(planned),
        "the commit wrote the planner's next transition"
    );
    assert!(
        b.storage
            .due_rings(planned - TimeDelta::milliseconds(1), 10)
            .await
            .expect("due")
            .is_empty()
    );
    assert_eq!(
        names(&b.storage.due_rings(planned, 10).await.expect("due")),
        ["conf-rotator-due"]
    );
    clock.set(planned);
    assert_eq!(
        rot.tick().await.expect("tick").outcome,
        Outcome::Scheduled,
        "what is due is what a tick does"
    );
    let after = b.storage.list_rings(None, 10).await.expect("list");
    assert!(
        after[0].next_due.expect("still planned") > planned,
        "the tick's commit moved it on"
    );
}

pub async fn rings_changed_since_lists_the_rings_committed_after_its_cursor(b: &RingBackend) {
    let rings: Vec<RingName> = (0..3).map(|i| ring(&format!("conf-changed-{i}"))).collect();
    for r in &rings {
        committed(b, &commit_due(r, 0, None)).await;
    }
    let all = b.storage.rings_changed_since(None).await.expect("every ring");
    for r in &rings {
        assert!(
            all.rings.iter().any(|e| &e.name == r && e.generation == 1),
            "{r}: without a cursor, every ring is listed"
        );
    }
    committed(b, &commit_due(&rings[1], 1, Some(t0()))).await;
    let since = b
        .storage
        .rings_changed_since(Some(all.cursor))
        .await
        .expect("changed since");
    let entry = since
        .rings
        .iter()
        .find(|e| e.name == rings[1])
        .expect("the ring committed after the cursor is listed");
    assert_eq!((entry.generation, entry.next_due), (2, Some(t0())));
    for e in &since.rings {
        let now = b.storage.generation(&e.name).await.expect("generation");
        assert_eq!(e.generation, now, "{}: listed at its current generation", e.name);
    }
    assert!(since.cursor >= all.cursor, "the cursor never goes back");
    let none = b
        .storage
        .rings_changed_since(Some(ChangeCursor(i64::MAX)))
        .await
        .expect("changed since the end of time");
    assert!(none.rings.is_empty(), "only changed rings are read: {:?}", none.rings);
}
