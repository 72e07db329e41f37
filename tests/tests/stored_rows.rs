//! What a read finds in rows dtx did not write: an id today's validation refuses, a missing
//! version, an impossible value. Stored rows are read as stored, never refused for their id;
//! corruption is a typed error naming the stream and version, never a silent wrong state.

#![allow(clippy::unwrap_used, reason = "tests")]

use dtx::testing::{Credited, Ledger};
use dtx::{
    Aggregate, DecodeError, Error, EventStore, ExpectedVersion, GlobalPosition, Id, NewEvent,
    RecordedEvent, Repository, StreamId,
};
use dtx_postgres::PgEventStore;
use std::time::{Duration, Instant};
use uuid::Uuid;

fn credit(amount: u64) -> NewEvent {
    NewEvent::from_json("Credited", &Credited { amount }).unwrap()
}

/// Writes an event row by hand, as another program (or an older dtx) could have.
async fn insert_row(store: &PgEventStore, stream_id: &str, version: i64, schema_version: i32) {
    sqlx::query(
        "INSERT INTO event_store (stream_id, version, commit_order, event_id, event_type,
                                  schema_version, data)
         VALUES ($1, $2, pg_current_xact_id()::text::bigint, $3, 'Credited', $4,
                 '{\"amount\": 1}'::jsonb)",
    )
    .bind(stream_id)
    .bind(version)
    .bind(Uuid::now_v7())
    .bind(schema_version)
    .execute(store.pool())
    .await
    .unwrap();
}

/// Reads the whole feed one event at a time, as a subscriber would, until `last` shows up (the
/// feed holds events back while any older transaction in the cluster still runs).
async fn read_feed_until(store: &PgEventStore, last: &StreamId) -> Vec<RecordedEvent> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut after = GlobalPosition::START;
    let mut seen = Vec::new();
    loop {
        let page = store.read_all(after, 1).await.unwrap();
        if let Some(event) = page.into_iter().next() {
            after = event.position;
            let done = event.stream_id == *last;
            seen.push(event);
            if done {
                return seen;
            }
            continue;
        }
        assert!(
            Instant::now() < deadline,
            "the feed stopped after {} events: {:?}",
            seen.len(),
            seen.iter()
                .map(|e| e.stream_id.as_str())
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Stream ids that `StreamId::new` refuses today (empty, a control character, too long), stored
/// by hand between two ordinary events: a feed reader reads past them instead of failing at
/// their position forever.
#[tokio::test]
async fn a_stored_stream_id_that_validation_refuses_does_not_stop_the_feed() {
    let store = tests::pg_store().await;
    let first = StreamId::new("Account-first").unwrap();
    let last = StreamId::new("Account-last").unwrap();
    store
        .append(&first, ExpectedVersion::NoStream, vec![credit(1)])
        .await
        .unwrap();
    let refused = [
        String::new(),
        "Account-\u{1}-legacy".to_owned(),
        "x".repeat(StreamId::MAX_LEN + 1),
    ];
    for id in &refused {
        assert!(
            StreamId::new(id.as_str()).is_err(),
            "{id:?} is refused today"
        );
        insert_row(&store, id, 1, 1).await;
    }
    store
        .append(&last, ExpectedVersion::NoStream, vec![credit(2)])
        .await
        .unwrap();

    let seen = read_feed_until(&store, &last).await;
    let ids: Vec<&str> = seen.iter().map(|e| e.stream_id.as_str()).collect();
    let mut expected = vec![first.as_str()];
    expected.extend(refused.iter().map(String::as_str));
    expected.push(last.as_str());
    assert_eq!(ids, expected);

    // The stream of such an id reads too, under the id it was stored with.
    let legacy = StreamId::from_stored(refused[1].as_str());
    let events = store.read_stream(&legacy, 1, 10).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].stream_id, legacy);
}

fn assert_gap<T: std::fmt::Debug>(read: dtx::Result<T>, stream: &StreamId, missing: u64) {
    match read {
        Err(Error::Decode {
            stream: named,
            version,
            source: DecodeError::VersionGap { expected, found },
        }) => {
            assert_eq!((&named, version), (stream, missing));
            assert_eq!((expected, found), (missing, missing + 1));
        }
        other => panic!("expected a version gap at {missing} of {stream}, got {other:?}"),
    }
}

/// A stream with a deleted middle version is refused by every load (a plain stream read, the
/// repository's read, and a load from a snapshot before the gap) with a `Decode` error naming
/// the stream and the missing version, instead of loading as if it were complete.
#[tokio::test]
async fn a_missing_version_is_a_decode_error_naming_it() {
    let store = tests::pg_store().await;
    let id = Id::<Ledger>::new();
    let stream = Ledger::stream_id(&id).unwrap();
    let repo = Repository::<Ledger>::new(store.clone());
    // 10 events (a snapshot at 10), then 5 more.
    for n in 0..15 {
        let mut root = repo.load(&id).await.unwrap();
        root.record([Credited { amount: n + 1 }]).unwrap();
        repo.save(&mut root).await.unwrap();
    }
    assert_eq!(
        store.load_snapshot(&stream).await.unwrap().unwrap().version,
        Ledger::EVERY
    );

    // A gap after the snapshot: the snapshot + tail load must see it.
    sqlx::query("DELETE FROM event_store WHERE stream_id = $1 AND version = 12")
        .bind(stream.as_str())
        .execute(store.pool())
        .await
        .unwrap();
    assert_gap(repo.load(&id).await, &stream, 12);
    assert_gap(store.read_stream(&stream, 1, 100).await, &stream, 12);
    assert_gap(store.read_stream(&stream, 11, 100).await, &stream, 12);
    assert_gap(store.read_stream_data(&stream, 11, 100).await, &stream, 12);
    // Reading from after the gap is sound.
    assert_eq!(store.read_stream(&stream, 13, 100).await.unwrap().len(), 3);

    // A gap before the snapshot: a full replay must see it.
    sqlx::query("DELETE FROM event_store WHERE stream_id = $1 AND version = 4")
        .bind(stream.as_str())
        .execute(store.pool())
        .await
        .unwrap();
    assert_gap(store.read_stream(&stream, 1, 100).await, &stream, 4);
    assert_gap(store.read_stream_data(&stream, 1, 100).await, &stream, 4);
}

/// A negative (or zero) `schema_version` is refused as a `Decode` error naming the stream and
/// the event's version, by stream reads, the repository's read and the feed, instead of being
/// read as 0.
#[tokio::test]
async fn an_impossible_schema_version_is_a_decode_error() {
    let store = tests::pg_store().await;
    let stream = StreamId::new(format!("Account-{}", Uuid::now_v7())).unwrap();
    store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![credit(1), credit(2)],
        )
        .await
        .unwrap();
    for bad in [-1, 0] {
        sqlx::query(
            "UPDATE event_store SET schema_version = $2 WHERE stream_id = $1 AND version = 2",
        )
        .bind(stream.as_str())
        .bind(bad)
        .execute(store.pool())
        .await
        .unwrap();
        let check = |read: dtx::Result<()>| match read {
            Err(Error::Decode {
                stream: named,
                version: 2,
                source:
                    DecodeError::ImpossibleValue {
                        column: "schema_version",
                        value,
                    },
            }) if named == stream && value == i64::from(bad) => {}
            other => panic!("expected an impossible schema version {bad}, got {other:?}"),
        };
        check(store.read_stream(&stream, 1, 10).await.map(drop));
        check(store.read_stream_data(&stream, 1, 10).await.map(drop));
        // The feed refuses it too (it is the same row), naming the stream.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match store.read_all(GlobalPosition::START, 10).await {
                Ok(events) if events.len() < 2 => {
                    assert!(Instant::now() < deadline, "the feed never reached the row");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                read => {
                    check(read.map(drop));
                    break;
                }
            }
        }
    }
}

/// A store that loses one version of every stream it reads, as a corrupted backend would: the
/// repository refuses the load whatever backend is below it.
struct Losing<S> {
    inner: S,
    lost: u64,
}

#[async_trait::async_trait]
impl<S: EventStore> EventStore for Losing<S> {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> dtx::Result<dtx::AppendResult> {
        self.inner.append(stream, expected, events).await
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from_version: u64,
        max_count: usize,
    ) -> dtx::Result<Vec<RecordedEvent>> {
        let mut events = self
            .inner
            .read_stream(stream, from_version, max_count)
            .await?;
        events.retain(|e| e.version != self.lost);
        Ok(events)
    }

    async fn read_all(
        &self,
        after: GlobalPosition,
        max_count: usize,
    ) -> dtx::Result<Vec<RecordedEvent>> {
        self.inner.read_all(after, max_count).await
    }

    async fn stream_version(&self, stream: &StreamId) -> dtx::Result<u64> {
        self.inner.stream_version(stream).await
    }

    async fn load_snapshot(&self, stream: &StreamId) -> dtx::Result<Option<dtx::Snapshot>> {
        self.inner.load_snapshot(stream).await
    }

    async fn save_snapshot(&self, stream: &StreamId, snapshot: dtx::Snapshot) -> dtx::Result<()> {
        self.inner.save_snapshot(stream, snapshot).await
    }
}

/// The repository checks contiguity itself, from the snapshot it loads, so a backend
/// that loses a row (here: the in-memory one behind a lossy wrapper) cannot load a wrong state.
#[tokio::test]
async fn the_repository_refuses_a_stream_with_a_gap_on_any_backend() {
    // Right after the snapshot (at 10), and in the middle of the tail.
    for lost in [11, 13] {
        let memory = dtx::MemoryEventStore::new();
        let repo = Repository::<Ledger>::new(memory.clone());
        let id = Id::<Ledger>::new();
        for n in 0..15 {
            let mut root = repo.load(&id).await.unwrap();
            root.record([Credited { amount: n + 1 }]).unwrap();
            repo.save(&mut root).await.unwrap();
        }
        let stream = Ledger::stream_id(&id).unwrap();
        let lossy = Repository::<Ledger>::new(Losing {
            inner: memory,
            lost,
        });
        assert_gap(lossy.load(&id).await, &stream, lost);
    }
}
