//! Cases on the change feed: every commit is announced to the ring's subscribers, and
//! only to them.

use super::*;

/// How long a feed may take to announce a commit (a polling feed polls every 50 ms).
const ANNOUNCED_WITHIN: Duration = Duration::from_secs(10);

/// Waits until `stream` says the ring reached `generation`: a `Changed` at that
/// generation, or a `Resync` after which the store reads that generation. A `Changed`
/// at any other generation fails the case.
async fn expect_announced(
    b: &Backend,
    r: &RingName,
    stream: &mut Box<dyn crate::storage::ChangeStream>,
    generation: u64,
) {
    let deadline = tokio::time::Instant::now() + ANNOUNCED_WITHIN;
    loop {
        let event = tokio::time::timeout_at(deadline, stream.next())
            .await
            .unwrap_or_else(|_| panic!("the feed announced generation {generation} within {ANNOUNCED_WITHIN:?}"))
            .expect("the feed keeps working");
        match event {
            FeedEvent::Changed(g) => {
                assert_eq!(g, generation, "the feed announces the committed generation");
                return;
            }
            FeedEvent::Resync => {
                if b.storage.generation(r).await.expect("generation") == generation {
                    return;
                }
            }
        }
    }
}

pub async fn change_feed_announces_each_commit(b: &Backend) {
    let r = ring("conf-feed");
    let mut stream = b.feed().subscribe(&r).await.expect("subscribe");
    let k = sample_key(r.as_str(), KeyState::Active, t0());
    assert_eq!(
        b.storage
            .commit(&commit(&r, 0, vec![k.clone()], t0()), &linker())
            .await
            .expect("c1"),
        CommitOutcome::Committed
    );
    expect_announced(b, &r, &mut stream, 1).await;
    assert_eq!(
        b.storage
            .commit(&commit(&r, 1, vec![k], t0() + TimeDelta::seconds(1)), &linker())
            .await
            .expect("c2"),
        CommitOutcome::Committed
    );
    expect_announced(b, &r, &mut stream, 2).await;
}

pub async fn change_feed_is_per_ring(b: &Backend) {
    let (watched, other) = (ring("conf-feed-watched"), ring("conf-feed-other"));
    let mut stream = b.feed().subscribe(&watched).await.expect("subscribe");
    let k = sample_key(other.as_str(), KeyState::Active, t0());
    b.storage
        .commit(&commit(&other, 0, vec![k], t0()), &linker())
        .await
        .expect("commit to the other ring");
    if let Ok(event) = tokio::time::timeout(Duration::from_millis(500), stream.next()).await {
        // A resync is allowed (it only asks for a reload); an announced change is not.
        assert!(
            !matches!(event, Ok(FeedEvent::Changed(_))),
            "a commit to another ring is not announced to this ring's subscribers: {event:?}"
        );
    }
    let k = sample_key(watched.as_str(), KeyState::Active, t0());
    b.storage
        .commit(&commit(&watched, 0, vec![k], t0()), &linker())
        .await
        .expect("commit to the watched ring");
    expect_announced(b, &watched, &mut stream, 1).await;
}
