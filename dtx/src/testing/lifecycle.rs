//! Closed and archived streams: appends refused, archived streams read on request, the feed
//! unchanged by archiving.

use super::units_of_work::BeginUnitOfWork;
use super::{Ledger, event, stream};
use crate::{
    Error, ExpectedVersion, GlobalPosition, Id, RecordedEvent, Repository, SharedEventStore,
    StreamId, StreamState,
};
use std::collections::HashSet;

/// Every event of the feed after `after`, read in pages of `page`.
async fn feed(
    store: &SharedEventStore,
    mut after: GlobalPosition,
    page: usize,
) -> Vec<RecordedEvent> {
    let mut events = Vec::new();
    loop {
        let read = store.read_all(after, page).await.unwrap();
        let Some(last) = read.last() else {
            return events;
        };
        after = last.position;
        events.extend(read);
    }
}

/// The feed after `after` once it shows `count` events: the feed shows events once every older
/// transaction of the server has ended, so on a shared server this waits (three minutes at most).
async fn visible(
    store: &SharedEventStore,
    after: GlobalPosition,
    count: usize,
) -> Vec<RecordedEvent> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(180);
    loop {
        let events = feed(store, after, 3).await;
        if events.len() >= count || tokio::time::Instant::now() > deadline {
            assert_eq!(events.len(), count);
            return events;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

fn is_closed(error: &Error, stream: &StreamId) -> bool {
    matches!(error, Error::StreamClosed { stream: s } if s == stream)
}

/// A closed stream refuses appends of every expectation with [`Error::StreamClosed`] naming
/// it, and only appends: its events stay readable, a retry of stored events still succeeds as
/// a duplicate, closing again changes nothing, and other streams are unaffected.
pub async fn closed_streams_refuse_appends(store: SharedEventStore) {
    let s = stream("closed");
    let other = stream("open");
    let stored: Vec<_> = (1..=3).map(event).collect();
    store
        .append(&s, ExpectedVersion::NoStream, stored.clone())
        .await
        .unwrap();
    assert_eq!(store.stream_state(&s).await.unwrap(), StreamState::Open);
    assert_eq!(store.close_stream(&s).await.unwrap(), 3);
    assert_eq!(
        store.stream_state(&s).await.unwrap(),
        StreamState::Closed { version: 3 }
    );
    for expected in [
        ExpectedVersion::Exact(3),
        ExpectedVersion::Any,
        ExpectedVersion::NoStream,
        ExpectedVersion::Exact(2),
    ] {
        let error = store
            .append(&s, expected, vec![event(9)])
            .await
            .unwrap_err();
        assert!(is_closed(&error, &s), "{expected}: {error}");
        assert!(error.to_string().contains(s.as_str()), "{error}");
    }
    let many = store
        .append(&s, ExpectedVersion::Exact(3), vec![event(1), event(2)])
        .await
        .unwrap_err();
    assert!(is_closed(&many, &s), "{many}");
    assert_eq!(store.stream_version(&s).await.unwrap(), 3);
    assert_eq!(store.read_stream(&s, 1, usize::MAX).await.unwrap().len(), 3);
    let retry = store
        .append(&s, ExpectedVersion::NoStream, stored)
        .await
        .unwrap();
    assert!(
        retry.deduplicated,
        "a retry of stored events is no new append"
    );
    assert_eq!(store.close_stream(&s).await.unwrap(), 3, "closing again");
    store
        .append(&other, ExpectedVersion::NoStream, vec![event(1)])
        .await
        .unwrap();

    // Through a repository: the save is refused, nothing stored.
    let id = Id::<Ledger>::new();
    let repository = Repository::<Ledger>::shared(store.clone(), &crate::DtxConfig::default());
    let mut ledger = repository.load(&id).await.unwrap();
    ledger
        .record([crate::testing::Credited { amount: 5 }])
        .unwrap();
    repository.save(&mut ledger).await.unwrap();
    let ledger_stream = <Ledger as crate::Aggregate>::stream_id(&id).unwrap();
    assert_eq!(store.close_stream(&ledger_stream).await.unwrap(), 1);
    let mut ledger = repository.load(&id).await.unwrap();
    assert_eq!(ledger.state().balance, 5, "a closed stream still loads");
    ledger
        .record([crate::testing::Credited { amount: 1 }])
        .unwrap();
    let error = repository.save(&mut ledger).await.unwrap_err();
    assert!(is_closed(&error, &ledger_stream), "{error}");
    assert_eq!(repository.load(&id).await.unwrap().version(), 1);
}

/// Archiving moves a closed stream's events out of the plain reads: they refuse with
/// [`Error::StreamArchived`], the archive reads them, a repository loads the aggregate with
/// `load_archived`, and the feed yields exactly what it yielded before archiving, once each
/// and in order, to a reader positioned before them and to one reading from the start.
pub async fn archived_streams_load_on_request_and_stay_in_the_feed(store: SharedEventStore) {
    let start = store
        .read_all(GlobalPosition::START, usize::MAX)
        .await
        .unwrap()
        .last()
        .map_or(GlobalPosition::START, |e| e.position);
    let s = stream("archived");
    let other = stream("neighbour");
    // Interleaved with another stream, so the archived events sit between live ones.
    for n in 1..=4 {
        store
            .append(&s, ExpectedVersion::Any, vec![event(n), event(n + 10)])
            .await
            .unwrap();
        store
            .append(&other, ExpectedVersion::Any, vec![event(n)])
            .await
            .unwrap();
    }
    let before = visible(&store, start, 12).await;
    // A reader that started before the archiving, part of the way through.
    let reader = before[4].position;

    let refused = store.archive_stream(&s).await.unwrap_err();
    assert!(
        matches!(&refused, Error::Archive { stream, .. } if *stream == s),
        "an open stream is not archived: {refused}"
    );
    assert_eq!(store.close_stream(&s).await.unwrap(), 8);
    assert_eq!(store.archive_stream(&s).await.unwrap(), 8);
    assert_eq!(store.archive_stream(&s).await.unwrap(), 0, "archived once");
    assert_eq!(
        store.stream_state(&s).await.unwrap(),
        StreamState::Archived { version: 8 }
    );
    assert_eq!(store.stream_version(&s).await.unwrap(), 8);

    let error = store.read_stream(&s, 1, usize::MAX).await.unwrap_err();
    assert!(
        matches!(&error, Error::StreamArchived { stream } if *stream == s),
        "{error}"
    );
    let error = store.read_stream_data(&s, 1, usize::MAX).await.unwrap_err();
    assert!(matches!(error, Error::StreamArchived { .. }), "{error}");
    let archived = store
        .read_archived_stream_data(&s, 1, usize::MAX)
        .await
        .unwrap();
    assert_eq!(
        archived.iter().map(|e| e.version).collect::<Vec<_>>(),
        (1..=8).collect::<Vec<_>>()
    );
    assert_eq!(
        store
            .read_archived_stream_data(&s, 3, 2)
            .await
            .unwrap()
            .iter()
            .map(|e| e.version)
            .collect::<Vec<_>>(),
        [3, 4]
    );
    for expected in [ExpectedVersion::Exact(8), ExpectedVersion::NoStream] {
        let error = store.append(&s, expected, vec![event(1)]).await;
        assert!(is_closed(&error.unwrap_err(), &s), "{expected}");
    }
    assert_eq!(
        store
            .read_stream(&other, 1, usize::MAX)
            .await
            .unwrap()
            .len(),
        4
    );

    let ids = |events: &[RecordedEvent]| events.iter().map(|e| e.event_id).collect::<Vec<_>>();
    for page in [1, 2, 5, 100] {
        let after = feed(&store, start, page).await;
        assert_eq!(ids(&after), ids(&before), "the whole feed, pages of {page}");
        let positions: Vec<_> = after.iter().map(|e| e.position).collect();
        assert_eq!(
            positions,
            before.iter().map(|e| e.position).collect::<Vec<_>>(),
            "at the positions they had"
        );
        let resumed = feed(&store, reader, page).await;
        assert_eq!(
            ids(&resumed),
            ids(&before[5..]),
            "a reader positioned before the archiving, pages of {page}"
        );
        let unique: HashSet<_> = resumed.iter().map(|e| e.event_id).collect();
        assert_eq!(unique.len(), resumed.len(), "each event once");
    }
    let filtered = store.read_feed(start, &["Credited"], 100).await.unwrap();
    assert_eq!(ids(&filtered.events), ids(&before), "read_feed too");

    archived_aggregates_load_on_request(&store).await;
}

/// Repositories: a plain load of an archived aggregate refuses, loading it from the archive
/// rebuilds its state (from its snapshot and the archived events after it).
async fn archived_aggregates_load_on_request(store: &SharedEventStore) {
    let id = Id::<Ledger>::new();
    let repository = Repository::<Ledger>::shared(store.clone(), &crate::DtxConfig::default());
    let mut ledger = repository.load(&id).await.unwrap();
    ledger
        .record((1..=12).map(|amount| crate::testing::Credited { amount }))
        .unwrap();
    repository.save(&mut ledger).await.unwrap();
    let ledger_stream = <Ledger as crate::Aggregate>::stream_id(&id).unwrap();
    store.close_stream(&ledger_stream).await.unwrap();
    assert_eq!(store.archive_stream(&ledger_stream).await.unwrap(), 12);
    let error = repository.load(&id).await.unwrap_err();
    assert!(matches!(error, Error::StreamArchived { .. }), "{error}");
    let loaded = repository.load_archived(&id).await.unwrap();
    assert_eq!((loaded.version(), loaded.state().balance), (12, 78));
}

/// Inside a unit of work, an append to a closed stream is [`Error::StreamClosed`]; and an
/// append racing with the close either lands before it (the close's version counts it) or is
/// refused at the commit, never after the close's version.
pub async fn closed_streams_refuse_appends_in_units_of_work(
    store: SharedEventStore,
    begin: BeginUnitOfWork,
) {
    let s = stream("closed-uow");
    store
        .append(&s, ExpectedVersion::NoStream, vec![event(1)])
        .await
        .unwrap();
    store.close_stream(&s).await.unwrap();
    let mut uow = begin().await;
    let error = store
        .append_in(uow.as_mut(), &s, ExpectedVersion::Exact(1), vec![event(2)])
        .await
        .unwrap_err();
    assert!(is_closed(&error, &s), "{error}");
    uow.rollback_boxed().await.unwrap();

    let racing = stream("closed-race");
    store
        .append(&racing, ExpectedVersion::NoStream, vec![event(1)])
        .await
        .unwrap();
    let mut uow = begin().await;
    store
        .append_in(
            uow.as_mut(),
            &racing,
            ExpectedVersion::Exact(1),
            vec![event(2)],
        )
        .await
        .unwrap();
    let closing = {
        let store = store.clone();
        let racing = racing.clone();
        tokio::spawn(async move { store.close_stream(&racing).await })
    };
    // Let the close start (it may finish, or wait for this unit of work) before the commit.
    tokio::task::yield_now().await;
    let committed = uow.commit_boxed().await;
    let version = closing.await.unwrap().unwrap();
    match committed {
        Ok(()) => assert_eq!(version, 2, "the append landed before the close"),
        Err(error) => {
            assert!(is_closed(&error, &racing), "{error}");
            assert_eq!(version, 1);
        }
    }
    assert_eq!(store.stream_version(&racing).await.unwrap(), version);
}
