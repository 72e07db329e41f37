//! The event-store contract suite (feature `testing`): every backend must pass it.
//!
//! Each function takes a fresh store and panics with a description of the broken promise.
//! [`event_store_contract_tests!`](crate::event_store_contract_tests) turns the whole suite into
//! `#[tokio::test]` functions for one backend:
//!
//! ```ignore
//! dtx::event_store_contract_tests!(dtx::MemoryEventStore::new());
//! ```

#![allow(clippy::missing_panics_doc, reason = "test assertions panic by design")]
#![allow(clippy::unwrap_used, reason = "test code")]

use crate::{
    Aggregate, Apply, DomainEvent, Error, EventMetadata, ExpectedVersion, GlobalPosition, Id,
    NewEvent, Repository, SharedEventStore, Snapshot, StoreLimits, StreamId,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use uuid::Uuid;

pub mod idempotency;

/// Generates one `#[tokio::test]` per contract case; `$store` is an expression (it may
/// `.await`) evaluated once per test that yields a fresh `impl EventStore`.
#[macro_export]
macro_rules! event_store_contract_tests {
    ($store:expr) => {
        $crate::event_store_contract_tests!(@cases $store;
            append_and_read, expected_version_rules, concurrent_exact_writers,
            concurrent_any_writers, idempotent_retry, batch_limits, global_feed_order,
            decode_errors_name_stream_and_version, snapshots_keep_newest,
            snapshot_replay_equals_full_replay, corrupted_snapshot_falls_back,
            invariant_violation_stores_nothing, large_batch_one_append);
    };
    (@cases $store:expr; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let store: $crate::SharedEventStore = ::std::sync::Arc::new($store);
                $crate::testing::$case(store).await;
            }
        )*
    };
}

fn stream(prefix: &str) -> StreamId {
    StreamId::new(format!("{prefix}-{}", Uuid::now_v7())).unwrap()
}

fn event(n: u64) -> NewEvent {
    NewEvent::from_json("Credited", &Credited { amount: n }).unwrap()
}

/// Appends, then reads back: contiguous versions, payloads and metadata preserved.
pub async fn append_and_read(store: SharedEventStore) {
    let s = stream("append");
    let correlation = Uuid::now_v7();
    let metadata = EventMetadata::correlated(correlation)
        .caused_by(Uuid::now_v7())
        .with_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
    let mut events: Vec<NewEvent> = (1..=3).map(event).collect();
    for e in &mut events {
        e.metadata = metadata.clone();
    }
    let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
    let result = store
        .append(&s, ExpectedVersion::NoStream, events)
        .await
        .unwrap();
    assert_eq!((result.first_version, result.last_version), (1, 3));
    assert!(!result.deduplicated);
    assert_eq!(result.positions.len(), 3);
    assert!(result.positions.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(store.stream_version(&s).await.unwrap(), 3);

    let read = store.read_stream(&s, 1, usize::MAX).await.unwrap();
    assert_eq!(
        read.iter().map(|e| e.version).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(read.iter().map(|e| e.event_id).collect::<Vec<_>>(), ids);
    for (n, e) in (1..).zip(&read) {
        assert_eq!(e.stream_id, s);
        assert_eq!(e.event_type, "Credited");
        assert_eq!(e.schema_version, 1);
        assert_eq!(e.metadata, metadata);
        let payload: Credited = serde_json::from_str(&e.data).unwrap();
        assert_eq!(payload.amount, n);
    }
    assert_eq!(
        read.iter().map(|e| e.position).collect::<Vec<_>>(),
        result.positions
    );

    let data = store.read_stream_data(&s, 2, usize::MAX).await.unwrap();
    assert_eq!(data.len(), 2, "read_stream_data honours from_version");
    for (d, e) in data.iter().zip(&read[1..]) {
        assert_eq!(
            (d.version, &d.event_type, d.schema_version, &d.data),
            (e.version, &e.event_type, e.schema_version, &e.data)
        );
    }
    assert_eq!(
        store.read_stream_data(&s, 1, 1).await.unwrap().len(),
        1,
        "and max_count"
    );

    let tail = store.read_stream(&s, 2, 1).await.unwrap();
    assert_eq!(tail.len(), 1);
    assert_eq!(tail[0].version, 2);
    assert!(store.read_stream(&s, 4, 10).await.unwrap().is_empty());
    assert!(
        store
            .read_stream(&stream("missing"), 1, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.stream_version(&stream("missing")).await.unwrap(), 0);
}

/// `NoStream`, `Exact` and `Any`, and the typed conflict.
pub async fn expected_version_rules(store: SharedEventStore) {
    let s = stream("expect");
    store
        .append(&s, ExpectedVersion::NoStream, vec![event(1)])
        .await
        .unwrap();
    match store
        .append(&s, ExpectedVersion::NoStream, vec![event(2)])
        .await
    {
        Err(Error::Conflict {
            stream,
            expected,
            actual,
        }) => {
            assert_eq!(stream, s);
            assert_eq!(expected, ExpectedVersion::NoStream);
            assert_eq!(actual, 1);
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    match store
        .append(&s, ExpectedVersion::Exact(5), vec![event(2)])
        .await
    {
        Err(Error::Conflict {
            expected, actual, ..
        }) => {
            assert_eq!(expected, ExpectedVersion::Exact(5));
            assert_eq!(actual, 1);
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    let r = store
        .append(&s, ExpectedVersion::Exact(1), vec![event(2)])
        .await
        .unwrap();
    assert_eq!(r.last_version, 2);
    let r = store
        .append(&s, ExpectedVersion::Any, vec![event(3), event(4)])
        .await
        .unwrap();
    assert_eq!((r.first_version, r.last_version), (3, 4));
    // A stale expectation on a longer stream, with one event and with several: nothing stored.
    for batch in [vec![event(5)], vec![event(5), event(6)]] {
        match store.append(&s, ExpectedVersion::Exact(2), batch).await {
            Err(Error::Conflict {
                expected, actual, ..
            }) => {
                assert_eq!(expected, ExpectedVersion::Exact(2));
                assert_eq!(actual, 4);
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
    }
    assert_eq!(store.stream_version(&s).await.unwrap(), 4);
    let fresh = stream("expect-any");
    let r = store
        .append(&fresh, ExpectedVersion::Any, vec![event(1)])
        .await
        .unwrap();
    assert_eq!(r.last_version, 1);
    let conflict = store
        .append(
            &stream("expect-exact"),
            ExpectedVersion::Exact(1),
            vec![event(1)],
        )
        .await;
    assert!(
        matches!(conflict, Err(Error::Conflict { actual: 0, .. })),
        "{conflict:?}"
    );
}

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

/// Re-appending stored event ids is an idempotent success; a partial overlap is an error.
pub async fn idempotent_retry(store: SharedEventStore) {
    let s = stream("retry");
    let batch: Vec<NewEvent> = (1..=3).map(event).collect();
    let first = store
        .append(&s, ExpectedVersion::NoStream, batch.clone())
        .await
        .unwrap();
    let fourth = event(4);
    let appended = store
        .append(&s, ExpectedVersion::Exact(3), vec![fourth.clone()])
        .await
        .unwrap();
    let again = store
        .append(&s, ExpectedVersion::Exact(3), vec![fourth])
        .await
        .unwrap();
    assert!(again.deduplicated, "a retried `Exact` append is a success");
    assert_eq!(
        (again.last_version, again.positions),
        (4, appended.positions)
    );

    let again = store
        .append(&s, ExpectedVersion::NoStream, batch.clone())
        .await
        .unwrap();
    assert!(again.deduplicated);
    assert_eq!((again.first_version, again.last_version), (1, 3));
    assert_eq!(again.positions, first.positions);
    assert_eq!(
        store.stream_version(&s).await.unwrap(),
        4,
        "a retry writes nothing"
    );

    let mut mixed = vec![batch[0].clone(), event(9)];
    mixed.rotate_left(1);
    match store.append(&s, ExpectedVersion::Any, mixed).await {
        Err(Error::DuplicateEvent {
            event_id,
            stored_in,
            ..
        }) => {
            assert_eq!(event_id, batch[0].event_id);
            assert_eq!(stored_in, s.as_str());
        }
        other => panic!("expected DuplicateEvent, got {other:?}"),
    }
    let elsewhere = stream("retry-other");
    assert!(matches!(
        store
            .append(&elsewhere, ExpectedVersion::Any, vec![batch[1].clone()])
            .await,
        Err(Error::DuplicateEvent { .. })
    ));
    assert_eq!(store.stream_version(&s).await.unwrap(), 4);
    assert_eq!(store.stream_version(&elsewhere).await.unwrap(), 0);
}

/// Empty, oversized and malformed batches are refused with typed errors before anything is stored.
pub async fn batch_limits(store: SharedEventStore) {
    let s = stream("limits");
    assert!(matches!(
        store.append(&s, ExpectedVersion::Any, vec![]).await,
        Err(Error::EmptyAppend { .. })
    ));
    let limits = StoreLimits::default();
    let too_many: Vec<NewEvent> = (0..=limits.max_batch_events as u64).map(event).collect();
    match store.append(&s, ExpectedVersion::Any, too_many).await {
        Err(Error::BatchTooLarge {
            stream,
            events,
            max,
        }) => {
            assert_eq!(stream, s);
            assert_eq!(
                (events, max),
                (limits.max_batch_events + 1, limits.max_batch_events)
            );
        }
        other => panic!("expected BatchTooLarge, got {other:?}"),
    }
    let huge = "x".repeat(limits.max_event_bytes + 1);
    let big = NewEvent::from_json("Big", &huge).unwrap();
    assert!(matches!(
        store.append(&s, ExpectedVersion::Any, vec![big]).await,
        Err(Error::PayloadTooLarge { .. })
    ));
    let mut bad_type = event(1);
    "bad\u{0}type".clone_into(&mut bad_type.event_type);
    assert!(matches!(
        store.append(&s, ExpectedVersion::Any, vec![bad_type]).await,
        Err(Error::Invalid {
            what: "event type",
            ..
        })
    ));
    let twice = event(1);
    assert!(matches!(
        store
            .append(&s, ExpectedVersion::Any, vec![twice.clone(), twice])
            .await,
        Err(Error::Invalid { what: "batch", .. })
    ));
    for schema_version in [0, u32::MAX] {
        let mut unversioned = event(1);
        unversioned.schema_version = schema_version;
        assert!(matches!(
            store
                .append(&s, ExpectedVersion::Any, vec![unversioned])
                .await,
            Err(Error::Invalid {
                what: "schema version",
                ..
            })
        ));
    }
    assert!(StreamId::new("").is_err());
    assert!(StreamId::new("a\nb").is_err());
    assert_eq!(store.stream_version(&s).await.unwrap(), 0, "nothing stored");
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

/// A malformed payload or an unknown event type is a typed error naming stream and version.
pub async fn decode_errors_name_stream_and_version(store: SharedEventStore) {
    let repo = Repository::<Ledger>::shared(Arc::clone(&store), &crate::DtxConfig::default());
    let id = Id::<Ledger>::new();
    let s = Ledger::stream_id(&id).unwrap();
    store
        .append(&s, ExpectedVersion::NoStream, vec![event(5)])
        .await
        .unwrap();
    let malformed =
        NewEvent::from_json("Credited", &serde_json::json!({"amount": "five"})).unwrap();
    store
        .append(&s, ExpectedVersion::Exact(1), vec![malformed])
        .await
        .unwrap();
    match repo.load(&id).await {
        Err(Error::Decode {
            stream,
            version,
            source,
        }) => {
            assert_eq!((stream, version), (s.clone(), 2));
            assert!(
                matches!(source, crate::DecodeError::Malformed { .. }),
                "{source}"
            );
        }
        other => panic!("expected a decode error, got {other:?}"),
    }

    let id = Id::<Ledger>::new();
    let s = Ledger::stream_id(&id).unwrap();
    let unknown = NewEvent::from_json("Teleported", &serde_json::json!({})).unwrap();
    store
        .append(&s, ExpectedVersion::NoStream, vec![unknown])
        .await
        .unwrap();
    let error = repo.load(&id).await.unwrap_err();
    let text = error.to_string();
    assert!(
        matches!(
            &error,
            Error::Decode {
                version: 1,
                source: crate::DecodeError::UnknownEventType { .. },
                ..
            }
        ),
        "{error:?}"
    );
    assert!(
        text.contains(s.as_str()) && text.contains("Teleported"),
        "{text}"
    );
    assert_eq!(
        store.stream_version(&s).await.unwrap(),
        1,
        "nothing stored is lost"
    );
}

/// A snapshot is replaced by a newer one, never by an older one.
pub async fn snapshots_keep_newest(store: SharedEventStore) {
    let s = stream("snap");
    assert!(store.load_snapshot(&s).await.unwrap().is_none());
    let snap = |version: u64| Snapshot {
        aggregate_type: "Ledger".into(),
        version,
        schema_hash: 7,
        state: serde_json::value::to_raw_value(&version).unwrap(),
    };
    store.save_snapshot(&s, snap(10)).await.unwrap();
    store.save_snapshot(&s, snap(5)).await.unwrap();
    assert_eq!(store.load_snapshot(&s).await.unwrap().unwrap().version, 10);
    store.save_snapshot(&s, snap(20)).await.unwrap();
    let loaded = store.load_snapshot(&s).await.unwrap().unwrap();
    assert_eq!((loaded.version, loaded.schema_hash), (20, 7));
    assert_eq!(loaded.state.get(), "20");
}

/// Loading through snapshots gives the same state as replaying every event.
pub async fn snapshot_replay_equals_full_replay(store: SharedEventStore) {
    let config = crate::DtxConfig::default();
    let repo = Repository::<Ledger>::shared(Arc::clone(&store), &config);
    let id = Id::<Ledger>::new();
    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    for _ in 0..40 {
        let mut root = repo.load(&id).await.unwrap();
        let count = 1 + rng % 4;
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let events: Vec<LedgerEvent> = (0..count)
            .map(|n| {
                if (rng >> n).is_multiple_of(3) && root.state().balance > 30 {
                    Debited { amount: 3 + n }.into()
                } else {
                    Credited { amount: 5 + n }.into()
                }
            })
            .collect();
        root.record(events).unwrap();
        repo.save(&mut root).await.unwrap();
    }
    let s = Ledger::stream_id(&id).unwrap();
    let snapshot = store
        .load_snapshot(&s)
        .await
        .unwrap()
        .expect("a snapshot was taken");
    assert!(snapshot.version >= Ledger::EVERY);
    assert!(
        snapshot.version % Ledger::EVERY < 4,
        "taken by the save that crossed a boundary"
    );

    let with_snapshot = repo.load(&id).await.unwrap();
    let mut replayed = Ledger::init(id);
    let events = store.read_stream(&s, 1, usize::MAX).await.unwrap();
    for e in &events {
        replayed.apply_event(&e.decode::<LedgerEvent>().unwrap());
    }
    assert_eq!(with_snapshot.state(), &replayed);
    assert_eq!(with_snapshot.version(), events.len() as u64);

    // Prove that load really starts from the snapshot: a (deliberately wrong) snapshot at the
    // head version is what load returns.
    let mut planted = replayed.clone();
    planted.balance = 999_999;
    store
        .save_snapshot(
            &s,
            Snapshot {
                version: events.len() as u64,
                state: serde_json::value::to_raw_value(&planted).unwrap(),
                ..snapshot
            },
        )
        .await
        .unwrap();
    assert_eq!(repo.load(&id).await.unwrap().state().balance, 999_999);
}

/// A snapshot that does not decode is ignored and the stream replayed.
pub async fn corrupted_snapshot_falls_back(store: SharedEventStore) {
    let repo = Repository::<Ledger>::shared(Arc::clone(&store), &crate::DtxConfig::default());
    let id = Id::<Ledger>::new();
    let mut root = repo.load(&id).await.unwrap();
    root.record((1..=Ledger::EVERY).map(|amount| Credited { amount }))
        .unwrap();
    repo.save(&mut root).await.unwrap();
    let s = Ledger::stream_id(&id).unwrap();
    let good = store
        .load_snapshot(&s)
        .await
        .unwrap()
        .expect("snapshot taken");
    let expected_balance = (1..=Ledger::EVERY).sum::<u64>();

    let garbage = Snapshot {
        state: serde_json::value::to_raw_value(&serde_json::json!({"balance": "lots"})).unwrap(),
        version: good.version + 1,
        ..good.clone()
    };
    store.save_snapshot(&s, garbage).await.unwrap();
    let loaded = repo.load(&id).await.unwrap();
    assert_eq!(
        loaded.state().balance,
        expected_balance,
        "fell back to full replay"
    );
    assert_eq!(loaded.version(), Ledger::EVERY);

    // A snapshot of another schema is never trusted, even when it decodes.
    let foreign = Snapshot {
        schema_hash: Ledger::STATE_SCHEMA ^ 1,
        state: serde_json::value::to_raw_value(
            &serde_json::json!({"id": id, "balance": 1_000_000}),
        )
        .unwrap(),
        version: good.version + 2,
        ..good
    };
    store.save_snapshot(&s, foreign).await.unwrap();
    assert_eq!(
        repo.load(&id).await.unwrap().state().balance,
        expected_balance
    );
}

/// Events that would break an invariant are refused and nothing is stored.
pub async fn invariant_violation_stores_nothing(store: SharedEventStore) {
    let repo = Repository::<Ledger>::shared(Arc::clone(&store), &crate::DtxConfig::default());
    let id = Id::<Ledger>::new();
    let mut root = repo.load(&id).await.unwrap();
    root.record([Credited { amount: 10 }]).unwrap();
    repo.save(&mut root).await.unwrap();
    let error = root
        .record([LedgerEvent::from(Debited { amount: 11 })])
        .unwrap_err();
    match &error {
        Error::Invariant {
            aggregate,
            id: shown,
            violation,
        } => {
            assert_eq!(*aggregate, "Ledger");
            assert_eq!(shown, &id.to_string());
            assert!(violation.to_string().contains("negative"));
        }
        other => panic!("expected an invariant violation, got {other:?}"),
    }
    assert!(root.pending().is_empty());
    assert_eq!(root.state().balance, 10, "state unchanged");
    assert!(
        repo.save(&mut root).await.unwrap().is_none(),
        "nothing to store"
    );
    assert_eq!(
        store
            .stream_version(&Ledger::stream_id(&id).unwrap())
            .await
            .unwrap(),
        1
    );
}

/// A batch of 1 000 events is one append with contiguous versions.
pub async fn large_batch_one_append(store: SharedEventStore) {
    let s = stream("large");
    let batch: Vec<NewEvent> = (0..1000).map(event).collect();
    let r = store
        .append(&s, ExpectedVersion::NoStream, batch)
        .await
        .unwrap();
    assert_eq!((r.first_version, r.last_version), (1, 1000));
    let read = store.read_stream(&s, 990, usize::MAX).await.unwrap();
    assert_eq!(read.len(), 11);
    assert_eq!(read[0].version, 990);
}

// Hidden: a fixture of the contract suites, kept out of the types rustc suggests to users.
#[doc(hidden)]
/// Money paid in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Credited {
    /// How much.
    pub amount: u64,
}

// Hidden: a fixture of the contract suites, kept out of the types rustc suggests to users.
#[doc(hidden)]
/// Money paid out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Debited {
    /// How much.
    pub amount: u64,
}

// Hidden: a fixture of the contract suites, kept out of the types rustc suggests to users.
#[doc(hidden)]
/// The contract suite's event enum.
#[derive(Debug, Clone, PartialEq, DomainEvent)]
pub enum LedgerEvent {
    /// See [`Credited`].
    Credited(Credited),
    /// See [`Debited`].
    Debited(Debited),
}

// Hidden: a fixture of the contract suites, kept out of the types rustc suggests to users.
#[doc(hidden)]
/// The contract suite's aggregate: a balance that must never go negative.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Aggregate)]
#[aggregate(event = LedgerEvent, snapshot_every = 10, invariants = Self::never_negative)]
pub struct Ledger {
    id: Id<Ledger>,
    /// The balance.
    pub balance: u64,
    overdrawn: bool,
}

impl Ledger {
    /// The snapshot frequency.
    pub const EVERY: u64 = 10;

    fn never_negative(&self) -> Result<(), &'static str> {
        if self.overdrawn {
            Err("balance would go negative")
        } else {
            Ok(())
        }
    }
}

impl Apply<Credited> for Ledger {
    fn apply(&mut self, event: &Credited) {
        self.balance += event.amount;
    }
}

impl Apply<Debited> for Ledger {
    fn apply(&mut self, event: &Debited) {
        match self.balance.checked_sub(event.amount) {
            Some(balance) => self.balance = balance,
            None => self.overdrawn = true,
        }
    }
}
