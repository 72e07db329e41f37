//! Concurrent writers and the global feed.

use super::{event, stream};
use crate::{Error, ExpectedVersion, GlobalPosition, NewEvent, SharedEventStore, StreamId};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use uuid::Uuid;

/// 32 tasks append to one stream with `Exact` expectations: every success gets the next version,
/// no version is lost or doubled, and every loser gets [`Error::Conflict`].
pub async fn concurrent_exact_writers(store: SharedEventStore) {
    const TASKS: usize = 32;
    const ATTEMPTS: usize = 8;
    let s = stream("exact");
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let store = Arc::clone(&store);
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let (mut won, mut lost) = (Vec::new(), 0usize);
            for _ in 0..ATTEMPTS {
                let current = store.stream_version(&s).await.unwrap();
                // Let other writers run between the read and the write, as real work would.
                tokio::task::yield_now().await;
                let e = event(current + 1);
                let id = e.event_id;
                match store
                    .append(&s, ExpectedVersion::Exact(current), vec![e])
                    .await
                {
                    Ok(r) => {
                        assert_eq!(
                            r.first_version,
                            current + 1,
                            "a success must take the next version"
                        );
                        won.push((r.first_version, id));
                    }
                    Err(Error::Conflict {
                        expected, actual, ..
                    }) => {
                        assert_eq!(expected, ExpectedVersion::Exact(current));
                        assert!(actual > current, "a conflict reports the newer version");
                        lost += 1;
                    }
                    Err(other) => panic!("a loser must get a typed conflict, got {other}"),
                }
            }
            (won, lost)
        }));
    }
    let mut won = Vec::new();
    let mut lost = 0;
    for task in tasks {
        let (w, l) = task.await.unwrap();
        won.extend(w);
        lost += l;
    }
    assert_eq!(won.len() + lost, TASKS * ATTEMPTS);
    won.sort_unstable();
    let stored = store.read_stream(&s, 1, usize::MAX).await.unwrap();
    assert_eq!(
        stored.len(),
        won.len(),
        "every success stored once, nothing else"
    );
    for (expected_version, (e, (v, id))) in (1u64..).zip(stored.iter().zip(&won)) {
        assert_eq!(e.version, expected_version, "versions are contiguous");
        assert_eq!((e.version, e.event_id), (*v, *id));
    }
    assert!(lost > 0, "the test must actually race");
}

/// 20 tasks append with `Any`: every event is stored exactly once.
pub async fn concurrent_any_writers(store: SharedEventStore) {
    const TASKS: usize = 20;
    const APPENDS: usize = 10;
    let s = stream("any");
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let store = Arc::clone(&store);
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for n in 0..APPENDS {
                let batch: Vec<NewEvent> = (0..=(n % 3) as u64).map(event).collect();
                ids.extend(batch.iter().map(|e| e.event_id));
                store.append(&s, ExpectedVersion::Any, batch).await.unwrap();
            }
            ids
        }));
    }
    let mut ids = HashSet::new();
    for task in tasks {
        ids.extend(task.await.unwrap());
    }
    let stored = store.read_stream(&s, 1, usize::MAX).await.unwrap();
    assert_eq!(stored.len(), ids.len(), "no event lost or doubled");
    let stored_ids: HashSet<Uuid> = stored.iter().map(|e| e.event_id).collect();
    assert_eq!(stored_ids, ids);
    assert!(stored.iter().zip(1u64..).all(|(e, v)| e.version == v));
}

/// The global feed yields every event once, positions increasing, per-stream order kept,
/// across pages.
pub async fn global_feed_order(store: SharedEventStore) {
    let streams: Vec<StreamId> = (0..5).map(|_| stream("feed")).collect();
    let mut expected = HashSet::new();
    for round in 0..6u64 {
        for s in &streams {
            let batch: Vec<NewEvent> = (0..=round % 2).map(event).collect();
            expected.extend(batch.iter().map(|e| e.event_id));
            store.append(s, ExpectedVersion::Any, batch).await.unwrap();
        }
    }
    let mine: HashSet<&StreamId> = streams.iter().collect();
    let mut after = GlobalPosition::START;
    let mut seen = Vec::new();
    // A backend may hold events back while older transactions are in flight (PostgreSQL's
    // horizon, cluster-wide): an empty page means "nothing more yet", so follow the feed until
    // every event arrived, then make sure nothing more comes.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut quiet_pages = 0;
    while quiet_pages < 3 {
        let page = store.read_all(after, 7).await.unwrap();
        for e in &page {
            assert!(e.position > after, "positions strictly increase");
            after = e.position;
        }
        if page.is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "feed stalled at {} of {} events",
                seen.len(),
                expected.len()
            );
            if seen.len() >= expected.len() {
                quiet_pages += 1;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        seen.extend(page.into_iter().filter(|e| mine.contains(&e.stream_id)));
    }
    let ids: Vec<Uuid> = seen.iter().map(|e| e.event_id).collect();
    assert_eq!(ids.len(), expected.len(), "every event exactly once");
    assert_eq!(ids.iter().copied().collect::<HashSet<_>>(), expected);
    let mut last: BTreeMap<&StreamId, u64> = BTreeMap::new();
    for e in &seen {
        let prev = last.insert(&e.stream_id, e.version).unwrap_or(0);
        assert_eq!(e.version, prev + 1, "per-stream order in the feed");
    }
}
