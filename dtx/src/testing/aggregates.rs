//! Loading aggregates through a repository: decoding, snapshots, invariants.

use super::{Credited, Debited, Ledger, LedgerEvent, event, stream};
use crate::{
    Aggregate, Error, ExpectedVersion, Id, NewEvent, Repository, SharedEventStore, Snapshot,
};
use std::sync::Arc;

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
