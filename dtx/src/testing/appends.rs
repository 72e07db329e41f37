//! Appends and reads of one writer: expectations, retries, limits, batches.

use super::{Credited, event, stream};
use crate::{
    Error, EventMetadata, ExpectedVersion, NewEvent, SharedEventStore, StoreLimits, StreamId,
};
use uuid::Uuid;

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

/// Payloads, metadata and snapshots PostgreSQL's `jsonb` and `text` refuse (`\u0000` in a
/// string or a key, a lone surrogate escape, a number beyond `numeric`, a NUL in the
/// traceparent) are refused by every backend alike, before anything is written, with
/// [`Error::Unstorable`] naming the stream and the event's index and type; their look-alikes
/// that can be stored are stored and read back unchanged.
pub async fn unstorable_payloads_are_refused(store: SharedEventStore) {
    use serde_json::value::RawValue;
    let raw = |json: &str| RawValue::from_string(json.to_owned()).unwrap();
    let s = stream("unstorable");
    for json in [
        r#"{"note": "a\u0000b"}"#,
        r#"{"\u0000": 1}"#,
        r#"{"note": "\ud800"}"#,
        r#"{"note": "\udc00\ud800"}"#,
        r#"{"amount": 1e1000000}"#,
    ] {
        let mut bad = NewEvent::from_json("Noted", &serde_json::json!({})).unwrap();
        bad.data = raw(json);
        let batch = vec![event(1), bad];
        match store.append(&s, ExpectedVersion::Any, batch).await {
            Err(Error::Unstorable { stream, what, .. }) => {
                assert_eq!(stream.as_ref(), Some(&s));
                assert!(
                    what.contains("event 1") && what.contains("`Noted`"),
                    "{json}: {what}"
                );
            }
            other => panic!("{json} must be refused as unstorable, got {other:?}"),
        }
    }
    let mut bad_trace = event(1);
    bad_trace.metadata = EventMetadata::default().with_traceparent("00-\0-01");
    assert!(matches!(
        store
            .append(&s, ExpectedVersion::Any, vec![bad_trace])
            .await,
        Err(Error::Unstorable { .. })
    ));
    assert_eq!(store.stream_version(&s).await.unwrap(), 0, "nothing stored");

    let storable = [
        r#"{"note":"\\u0000"}"#,
        r#"{"note":"\ud83d\ude00"}"#,
        r#"{"amount":1e300}"#,
    ];
    let events = storable
        .iter()
        .map(|json| {
            let mut e = NewEvent::from_json("Noted", &serde_json::json!({})).unwrap();
            e.data = raw(json);
            e
        })
        .collect();
    store
        .append(&s, ExpectedVersion::NoStream, events)
        .await
        .unwrap();
    let read = store.read_stream(&s, 1, 10).await.unwrap();
    for (json, event) in storable.iter().zip(&read) {
        let stored: serde_json::Value = serde_json::from_str(&event.data).unwrap();
        let sent: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(stored, sent, "{json}");
    }

    let snapshot = |state: &str| crate::Snapshot {
        aggregate_type: "Ledger".to_owned(),
        version: 3,
        schema_hash: 1,
        state: raw(state),
    };
    match store
        .save_snapshot(&s, snapshot(r#"{"note": "\u0000"}"#))
        .await
    {
        Err(Error::Unstorable { stream, what, .. }) => {
            assert_eq!(stream.as_ref(), Some(&s));
            assert!(what.contains("snapshot"), "{what}");
        }
        other => panic!("an unstorable snapshot must be refused, got {other:?}"),
    }
    assert!(store.load_snapshot(&s).await.unwrap().is_none());
}
