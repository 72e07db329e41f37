//! Appends in a unit of work: resends of stored events answer as outside one, and leave the
//! unit of work usable.

use super::{event, stream};
use crate::uow::BoxFuture;
use crate::{Error, ExpectedVersion, SharedEventStore, UnitOfWork};
use std::sync::Arc;
use std::time::Duration;

/// Begins a unit of work that the store under test joins.
pub type BeginUnitOfWork = Arc<dyn Fn() -> BoxFuture<'static, Box<dyn UnitOfWork>> + Send + Sync>;

/// How long a case may take: a backend that reads outside the unit of work's connection waits
/// for a pool of one connection that the unit of work holds, and fails here instead.
const LIMIT: Duration = Duration::from_secs(10);

/// `(first, last, deduplicated)` of an append, or its error.
fn versions(result: crate::Result<crate::AppendResult>) -> crate::Result<(u64, u64, bool)> {
    result.map(|r| (r.first_version, r.last_version, r.deduplicated))
}

/// Events committed before are resent in a unit of work: every expectation gets the stored
/// versions (`deduplicated`), before and after the unit of work appends to the stream itself;
/// resent to another stream or with new events, [`Error::DuplicateEvent`]. None of it stops the
/// unit of work: its appends around the resends commit.
pub async fn append_in_resends_committed_events(store: SharedEventStore, begin: BeginUnitOfWork) {
    tokio::time::timeout(LIMIT, async {
        let (s, t) = (stream("resend"), stream("resend-other"));
        let (e1, e2) = (event(1), event(2));
        let stored = store
            .append(&s, ExpectedVersion::NoStream, vec![e1.clone(), e2.clone()])
            .await
            .unwrap();
        let mut uow = begin().await;
        for expected in [
            ExpectedVersion::Any,
            ExpectedVersion::NoStream,
            ExpectedVersion::Exact(2),
            ExpectedVersion::Exact(7),
        ] {
            let resent = store
                .append_in(&mut *uow, &s, expected, vec![e1.clone(), e2.clone()])
                .await
                .unwrap();
            assert_eq!((resent.first_version, resent.last_version), (1, 2));
            assert!(resent.deduplicated, "a resend is deduplicated ({expected})");
            assert_eq!(resent.positions, stored.positions, "the stored positions");
        }
        let e3 = event(3);
        let appended = store
            .append_in(&mut *uow, &s, ExpectedVersion::Exact(2), vec![e3.clone()])
            .await;
        assert_eq!(versions(appended).unwrap(), (3, 3, false));
        let again = store
            .append_in(&mut *uow, &s, ExpectedVersion::Exact(3), vec![e2.clone()])
            .await;
        assert_eq!(
            versions(again).unwrap(),
            (2, 2, true),
            "still a resend once the unit of work appended to the stream"
        );
        let elsewhere = store
            .append_in(&mut *uow, &t, ExpectedVersion::Any, vec![e1.clone()])
            .await;
        assert!(
            matches!(&elsewhere, Err(Error::DuplicateEvent { event_id, stored_in, .. })
                if *event_id == e1.event_id && *stored_in == s.as_str()),
            "resent to another stream: {elsewhere:?}"
        );
        let partial = store
            .append_in(&mut *uow, &s, ExpectedVersion::Any, vec![e1.clone(), event(9)])
            .await;
        assert!(
            matches!(&partial, Err(Error::DuplicateEvent { event_id, .. }) if *event_id == e1.event_id),
            "only some stored: {partial:?}"
        );
        let other = store
            .append_in(&mut *uow, &t, ExpectedVersion::NoStream, vec![event(4)])
            .await;
        assert_eq!(versions(other).unwrap(), (1, 1, false));
        uow.commit_boxed().await.unwrap();
        let read = store.read_stream(&s, 1, 100).await.unwrap();
        let ids: Vec<_> = read.iter().map(|e| e.event_id).collect();
        assert_eq!(ids, [e1.event_id, e2.event_id, e3.event_id]);
        assert_eq!(store.stream_version(&t).await.unwrap(), 1);
    })
    .await
    .expect("the case ends in time");
}

/// Events appended earlier in the same unit of work are resent: [`Error::DuplicateEvent`]
/// naming the stream that holds them, whatever the expectation and the stream resent to; a
/// stream at another version is [`Error::Conflict`] at the version the unit of work sees. None
/// of it stops the unit of work: its appends commit.
pub async fn append_in_resends_events_of_the_same_unit_of_work(
    store: SharedEventStore,
    begin: BeginUnitOfWork,
) {
    tokio::time::timeout(LIMIT, async {
        let (s, t) = (stream("staged"), stream("staged-other"));
        let (first, second) = (event(1), event(2));
        let mut uow = begin().await;
        let appended = store
            .append_in(
                &mut *uow,
                &s,
                ExpectedVersion::NoStream,
                vec![first.clone(), second.clone()],
            )
            .await;
        assert_eq!(versions(appended).unwrap(), (1, 2, false));
        for (to, expected, events) in [
            (
                &s,
                ExpectedVersion::Exact(2),
                vec![first.clone(), second.clone()],
            ),
            (
                &s,
                ExpectedVersion::Any,
                vec![first.clone(), second.clone()],
            ),
            (&s, ExpectedVersion::NoStream, vec![first.clone()]),
            (&t, ExpectedVersion::Any, vec![first.clone(), event(8)]),
        ] {
            let resent = store.append_in(&mut *uow, to, expected, events).await;
            assert!(
                matches!(&resent, Err(Error::DuplicateEvent { event_id, stored_in, .. })
                    if *event_id == first.event_id && *stored_in == s.as_str()),
                "resent to {to} expecting {expected}: {resent:?}"
            );
        }
        let conflict = store
            .append_in(&mut *uow, &s, ExpectedVersion::Exact(1), vec![event(5)])
            .await;
        assert!(
            matches!(&conflict, Err(Error::Conflict { actual: 2, .. })),
            "{conflict:?}"
        );
        let third = event(3);
        let more = store
            .append_in(
                &mut *uow,
                &s,
                ExpectedVersion::Exact(2),
                vec![third.clone()],
            )
            .await;
        assert_eq!(versions(more).unwrap(), (3, 3, false));
        uow.commit_boxed().await.unwrap();
        let read = store.read_stream(&s, 1, 100).await.unwrap();
        let ids: Vec<_> = read.iter().map(|e| e.event_id).collect();
        assert_eq!(ids, [first.event_id, second.event_id, third.event_id]);
        assert_eq!(store.stream_version(&t).await.unwrap(), 0);
    })
    .await
    .expect("the case ends in time");
}
