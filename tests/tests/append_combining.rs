//! Write combining in `PgEventStore` on a real PostgreSQL: concurrent appends to different
//! streams share one statement and one commit, and each keeps its own expectation and outcome.
//!
//! Batches are made to form without any timing assumption: a transaction holds the event table
//! (`LOCK TABLE .. IN EXCLUSIVE MODE`) so that the first append waits inside the database while
//! the others queue behind it; the tests wait until the store reports them waiting
//! (`combining_stats().waiting`), then let go. Every wait has a deadline of minutes.

#![allow(clippy::unwrap_used, clippy::too_many_lines, reason = "tests")]

use dtx::UnitOfWork as _;
use dtx::outbox::{MemoryPublisher, RelayOptions};
use dtx::{AppendResult, Error, EventStore, ExpectedVersion, NewEvent, StreamId};
use dtx_postgres::{Combining, PgEventStore, PgOutbox};
use sqlx::{Connection, PgConnection, PgPool};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};
use tests::fault_proxy::{Fault, FaultProxy, Statement};
use tokio::task::JoinHandle;
use uuid::Uuid;

/// How long a test waits for the state it expects before it fails.
const DEADLINE: Duration = Duration::from_mins(3);

/// Text only the combined statement contains (what the fault proxy waits for).
const COMBINED: &str = "WITH a AS MATERIALIZED";

fn event(n: u64) -> NewEvent {
    NewEvent::from_json("Happened", &serde_json::json!({ "n": n })).unwrap()
}

fn stream(name: impl std::fmt::Display) -> StreamId {
    StreamId::new(name.to_string()).unwrap()
}

/// A store on a fresh database that combines with one statement in flight (so that everything
/// arriving meanwhile goes together).
async fn store() -> PgEventStore {
    tests::pg_store()
        .await
        .with_combining(Combining::on().max_in_flight(1))
}

/// Polls `check` until it holds, for at most [`DEADLINE`].
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "{what}: not so after {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until `n` appends wait in `store`'s queue.
async fn waiting(store: &PgEventStore, n: usize) {
    eventually(&format!("{n} appends waiting"), async || {
        store.combining_stats().waiting >= n
    })
    .await;
}

/// A transaction on a connection of its own holding the event table against writes: appends
/// wait inside the database until it ends.
async fn hold_writes(pool: &PgPool) -> PgConnection {
    let mut conn = PgConnection::connect_with(&pool.connect_options())
        .await
        .unwrap();
    sqlx::raw_sql("BEGIN; LOCK TABLE event_store IN EXCLUSIVE MODE")
        .execute(&mut conn)
        .await
        .unwrap();
    conn
}

/// Ends a [`hold_writes`] transaction.
async fn release(mut conn: PgConnection) {
    sqlx::raw_sql("COMMIT").execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
}

/// Waits until `n` statements wait for a lock in the database of `pool`.
async fn blocked(pool: &PgPool, n: i64) {
    eventually(&format!("{n} statements waiting for a lock"), async || {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
             WHERE NOT l.granted AND a.datname = current_database()",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        waiting >= n
    })
    .await;
}

type Task = JoinHandle<dtx::Result<AppendResult>>;

fn spawn_append(
    store: &PgEventStore,
    stream: &StreamId,
    expected: ExpectedVersion,
    events: Vec<NewEvent>,
) -> Task {
    let store = store.clone();
    let stream = stream.clone();
    tokio::spawn(async move { store.append(&stream, expected, events).await })
}

/// Sends one-event appends to `count` new streams `{prefix}-1` .. `{prefix}-{count}` (each
/// expecting no stream, event `n` to stream `n`).
fn spawn_new_streams(store: &PgEventStore, prefix: &str, count: u64) -> Vec<Task> {
    (1..=count)
        .map(|n| {
            spawn_append(
                store,
                &stream(format!("{prefix}-{n}")),
                ExpectedVersion::NoStream,
                vec![event(n)],
            )
        })
        .collect()
}

/// Holds the event table (see [`hold_writes`] on `direct`) and sends a one-event append to
/// `blocker` through `store`, returning once that append waits inside the database: the appends
/// sent after it queue and go together when the table is released.
async fn blocked_append(
    store: &PgEventStore,
    direct: &PgPool,
    blocker: &StreamId,
    expected: ExpectedVersion,
) -> (PgConnection, Task) {
    let held = hold_writes(direct).await;
    let task = spawn_append(store, blocker, expected, vec![event(0)]);
    blocked(direct, 1).await;
    (held, task)
}

/// What the table holds: per stream, its (version, event id) in version order.
async fn table(pool: &PgPool) -> BTreeMap<String, Vec<(i64, Uuid)>> {
    let rows: Vec<(String, i64, Uuid)> = sqlx::query_as(
        "SELECT stream_id, version, event_id FROM event_store ORDER BY stream_id, version",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let mut streams: BTreeMap<String, Vec<(i64, Uuid)>> = BTreeMap::new();
    for (stream, version, id) in rows {
        streams.entry(stream).or_default().push((version, id));
    }
    streams
}

/// 32 writers over `streams` streams, half with `Any`, half reading the version and appending
/// with `Exact` (and reading again after a conflict), 1–3 events an append, all starting while
/// the table is held so that the first appends are combined for sure. Then the table must hold
/// exactly the acknowledged appends: versions 1..n per stream, each event id once, each at the
/// version its append was told.
async fn writers(streams: u64) {
    const WRITERS: u64 = 32;
    const APPENDS: u64 = 25;
    let store = store().await;
    let held = hold_writes(store.pool()).await;
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut acked: Vec<(StreamId, AppendResult, Vec<Uuid>)> = Vec::new();
                let mut conflicts = 0u64;
                for i in 0..APPENDS {
                    let s = stream(format!("W-{}", (w * 7 + i * 13) % streams));
                    let events: Vec<NewEvent> = (0..=(w + i) % 3)
                        .map(|k| event(w * 1000 + i * 10 + k))
                        .collect();
                    let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
                    loop {
                        let expected = if w % 2 == 0 {
                            ExpectedVersion::Any
                        } else {
                            ExpectedVersion::Exact(store.stream_version(&s).await.unwrap())
                        };
                        match store.append(&s, expected, events.clone()).await {
                            Ok(result) => {
                                assert!(!result.deduplicated);
                                assert_eq!(
                                    result.last_version - result.first_version + 1,
                                    ids.len() as u64
                                );
                                if let ExpectedVersion::Exact(v) = expected {
                                    assert_eq!(result.first_version, v + 1);
                                }
                                acked.push((s.clone(), result, ids.clone()));
                                break;
                            }
                            Err(Error::Conflict {
                                expected: e,
                                actual,
                                ..
                            }) => {
                                assert_eq!(e, expected);
                                assert!(matches!(e, ExpectedVersion::Exact(v) if actual > v));
                                conflicts += 1;
                            }
                            Err(other) => panic!("writer {w}: {other}"),
                        }
                    }
                }
                (acked, conflicts)
            })
        })
        .collect();
    // Everyone but the append in flight (waiting on the held table) queues.
    waiting(&store, usize::try_from(WRITERS).unwrap() - 1).await;
    release(held).await;
    let mut acked = Vec::new();
    let mut conflicts = 0;
    for task in tasks {
        let (a, c) = task.await.unwrap();
        acked.extend(a);
        conflicts += c;
    }
    // The table against the acknowledgements.
    let stored = table(store.pool()).await;
    let mut told: HashMap<Uuid, (String, u64)> = HashMap::new();
    let mut acked_events = 0;
    for (s, result, ids) in &acked {
        for (k, id) in ids.iter().enumerate() {
            let fresh = told.insert(*id, (s.to_string(), result.first_version + k as u64));
            assert!(fresh.is_none(), "event {id} acknowledged twice");
            acked_events += 1;
        }
        assert_eq!(result.positions.len(), ids.len());
    }
    let mut rows = 0;
    let mut seen = HashSet::new();
    for (s, events) in &stored {
        for (index, (version, id)) in events.iter().enumerate() {
            assert_eq!(
                *version,
                i64::try_from(index).unwrap() + 1,
                "{s}: versions 1..n, no gap"
            );
            assert!(seen.insert(*id), "event {id} stored twice");
            let (at_stream, at_version) = told
                .get(id)
                .unwrap_or_else(|| panic!("{s}: event {id} stored but never acknowledged"));
            assert_eq!(
                (at_stream.as_str(), *at_version),
                (s.as_str(), u64::try_from(*version).unwrap())
            );
            rows += 1;
        }
    }
    assert_eq!(rows, acked_events, "every acknowledged event stored, once");
    assert_eq!(acked.len(), usize::try_from(WRITERS * APPENDS).unwrap());
    let stats = store.combining_stats();
    assert!(
        stats.combined_statements >= 1 && stats.combined_appends >= 2,
        "appends were combined: {stats:?}"
    );
    // The first batch held everyone that queued behind the held table (one append per stream).
    let first_batch = usize::try_from(streams.min(WRITERS)).unwrap() - 1;
    assert!(stats.largest_batch >= first_batch.min(31), "{stats:?}");
    eprintln!(
        "{WRITERS} writers on {streams} streams: {} appends ({acked_events} events) acknowledged \
         and stored once, {conflicts} conflicts; {} combined statements carried {} appends \
         (largest {}), {} alone, {} split",
        acked.len(),
        stats.combined_statements,
        stats.combined_appends,
        stats.largest_batch,
        stats.alone,
        stats.split
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_two_writers_on_eight_streams() {
    writers(8).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_two_writers_on_five_hundred_streams() {
    writers(500).await;
}

/// One batch with appends that hold and appends that do not: each gets its own outcome, the
/// conflicts only the appends that conflict, a retry of stored events its stored versions, a
/// partial overlap `DuplicateEvent`; two appends to one stream go one after the other, each at
/// its version.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_append_of_a_batch_keeps_its_own_outcome() {
    let store = store().await;
    let at_two = stream("At-2");
    store
        .append(&at_two, ExpectedVersion::NoStream, vec![event(1), event(2)])
        .await
        .unwrap();
    let stored_before = vec![event(3)];
    let retried = stream("Retried");
    let first = store
        .append(&retried, ExpectedVersion::NoStream, stored_before.clone())
        .await
        .unwrap();
    let partial = stream("Partial");

    let (held, blocker) = blocked_append(
        &store,
        store.pool(),
        &stream("Blocker"),
        ExpectedVersion::NoStream,
    )
    .await;
    let mut queued: Vec<(&str, Task)> = Vec::new();
    let mut push = async |name: &'static str, task: Task| {
        queued.push((name, task));
        waiting(&store, queued.len()).await;
    };
    push(
        "fresh",
        spawn_append(
            &store,
            &stream("Fresh"),
            ExpectedVersion::NoStream,
            vec![event(4), event(5)],
        ),
    )
    .await;
    push(
        "exact-wrong",
        spawn_append(&store, &at_two, ExpectedVersion::Exact(5), vec![event(6)]),
    )
    .await;
    push(
        "new-but-exists",
        spawn_append(
            &store,
            &stream("Retried"),
            ExpectedVersion::Exact(3),
            vec![event(7)],
        ),
    )
    .await;
    push(
        "retry",
        spawn_append(
            &store,
            &retried,
            ExpectedVersion::NoStream,
            stored_before.clone(),
        ),
    )
    .await;
    push(
        "partial",
        spawn_append(
            &store,
            &partial,
            ExpectedVersion::Any,
            vec![event(8), stored_before[0].clone()],
        ),
    )
    .await;
    push(
        "any",
        spawn_append(&store, &stream("Any"), ExpectedVersion::Any, vec![event(9)]),
    )
    .await;
    push(
        "exact-right",
        spawn_append(
            &store,
            &stream("Exact-2"),
            ExpectedVersion::NoStream,
            vec![event(10)],
        ),
    )
    .await;
    let same = stream("Same");
    push(
        "same-1",
        spawn_append(&store, &same, ExpectedVersion::NoStream, vec![event(11)]),
    )
    .await;
    push(
        "same-2",
        spawn_append(&store, &same, ExpectedVersion::Exact(1), vec![event(12)]),
    )
    .await;
    let before = store.combining_stats();
    release(held).await;
    assert!(blocker.await.unwrap().is_ok());
    let mut outcomes = HashMap::new();
    for (name, task) in queued {
        outcomes.insert(name, task.await.unwrap());
    }
    let ok = |name: &str| -> AppendResult {
        match &outcomes[name] {
            Ok(result) => result.clone(),
            Err(e) => panic!("{name}: {e}"),
        }
    };
    assert_eq!(
        (ok("fresh").first_version, ok("fresh").last_version),
        (1, 2)
    );
    assert!(matches!(
        &outcomes["exact-wrong"],
        Err(Error::Conflict { stream: s, expected: ExpectedVersion::Exact(5), actual: 2 }) if *s == at_two
    ));
    assert!(matches!(
        &outcomes["new-but-exists"],
        Err(Error::Conflict {
            expected: ExpectedVersion::Exact(3),
            actual: 1,
            ..
        })
    ));
    let retry = ok("retry");
    assert!(retry.deduplicated);
    assert_eq!(retry.positions, first.positions);
    assert!(matches!(
        &outcomes["partial"],
        Err(Error::DuplicateEvent { stream: s, event_id, stored_in })
            if *s == partial && *event_id == stored_before[0].event_id && stored_in == "Retried"
    ));
    assert_eq!(ok("any").first_version, 1);
    assert_eq!(ok("exact-right").first_version, 1);
    assert_eq!(ok("same-1").first_version, 1);
    assert_eq!(ok("same-2").first_version, 2);
    let after = store.combining_stats();
    assert!(
        after.combined_statements > before.combined_statements
            && after.combined_appends - before.combined_appends >= 8,
        "the queued appends went together: {after:?}"
    );
    // The partial overlap (an `Any` append one of whose ids is stored) fails the combined
    // statement on the event-id constraint, which is not looked up first: the batch went again
    // one append at a time, once, and each append still got its own outcome above.
    assert_eq!(
        after.split - before.split,
        1,
        "only the stored id split the batch: {after:?}"
    );
    // Nothing of the appends that failed is stored.
    let stored = table(store.pool()).await;
    assert_eq!(stored["At-2"].len(), 2);
    assert_eq!(stored["Retried"].len(), 1);
    assert!(!stored.contains_key("Partial"));
    assert_eq!(stored["Same"].len(), 2);
}

/// An append whose input is invalid fails alone, before it is queued; the appends queued with it
/// all succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_invalid_append_fails_alone() {
    let store = store().await;
    let (held, blocker) = blocked_append(
        &store,
        store.pool(),
        &stream("Blocker"),
        ExpectedVersion::Any,
    )
    .await;
    let valid = spawn_new_streams(&store, "Valid", 4);
    waiting(&store, 4).await;
    let mut bad = event(5);
    bad.event_type = "Bad\u{7}Type".to_owned();
    let invalid = store
        .append(&stream("Invalid"), ExpectedVersion::NoStream, vec![bad])
        .await;
    assert!(
        matches!(
            invalid,
            Err(Error::Invalid {
                what: "event type",
                ..
            })
        ),
        "{invalid:?}"
    );
    let empty = store
        .append(&stream("Empty"), ExpectedVersion::NoStream, Vec::new())
        .await;
    assert!(matches!(empty, Err(Error::EmptyAppend { .. })), "{empty:?}");
    assert_eq!(store.combining_stats().waiting, 4, "neither was queued");
    release(held).await;
    blocker.await.unwrap().unwrap();
    for task in valid {
        assert_eq!(task.await.unwrap().unwrap().first_version, 1);
    }
    let stored = table(store.pool()).await;
    assert_eq!(stored.len(), 5, "the blocker and the four valid appends");
    assert!(store.combining_stats().combined_appends >= 4);
}

/// A combined statement that the database refuses as a whole (here a race with a writer
/// outside the batch: another transaction takes a version of one of its streams after the
/// statement began) fails no append for another's sake: the batch goes again one append at a
/// time, and only the append that lost the race gets a conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_refused_as_a_whole_goes_again_one_by_one() {
    let store = store().await;
    let raced = stream("Raced");
    // Two outside transactions: one holds a version of the blocker's stream, one of `raced`.
    let outside = async |s: &StreamId| {
        let mut conn = PgConnection::connect_with(&store.pool().connect_options())
            .await
            .unwrap();
        sqlx::raw_sql("BEGIN").execute(&mut conn).await.unwrap();
        sqlx::query(
            "INSERT INTO event_store (stream_id, version, commit_order, event_id, event_type, \
             schema_version, data) VALUES ($1, 1, pg_current_xact_id()::text::bigint, $2, 'Outside', 1, '{}')",
        )
        .bind(s.as_str())
        .bind(Uuid::now_v7())
        .execute(&mut conn)
        .await
        .unwrap();
        conn
    };
    let blocker_stream = stream("Blocker");
    let mut first = outside(&blocker_stream).await;
    let mut second = outside(&raced).await;
    let blocker = spawn_append(
        &store,
        &blocker_stream,
        ExpectedVersion::NoStream,
        vec![event(0)],
    );
    blocked(store.pool(), 1).await;
    let racing = spawn_append(&store, &raced, ExpectedVersion::NoStream, vec![event(1)]);
    let others: Vec<Task> = (2..=4)
        .map(|n| {
            spawn_append(
                &store,
                &stream(format!("Other-{n}")),
                ExpectedVersion::NoStream,
                vec![event(n)],
            )
        })
        .collect();
    waiting(&store, 4).await;
    // The blocker goes (the first outside transaction rolls back), the batch starts and waits
    // for the second one's version of `raced`, which then commits.
    sqlx::raw_sql("ROLLBACK").execute(&mut first).await.unwrap();
    assert_eq!(blocker.await.unwrap().unwrap().first_version, 1);
    blocked(store.pool(), 1).await;
    sqlx::raw_sql("COMMIT").execute(&mut second).await.unwrap();
    assert!(
        matches!(racing.await.unwrap(), Err(Error::Conflict { stream: s, actual: 1, .. }) if s == raced)
    );
    for task in others {
        assert_eq!(task.await.unwrap().unwrap().first_version, 1);
    }
    let stats = store.combining_stats();
    assert_eq!(stats.split, 1, "{stats:?}");
    assert!(stats.combined_appends >= 4, "{stats:?}");
}

/// A combined statement whose answer is lost: every append of that batch, and nothing else, is
/// `OutcomeUnknown` (its own stream named); cut before the statement reached the server nothing
/// is stored, cut after it ran everything is; retrying each append is safe either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_commit_is_outcome_unknown_for_exactly_its_batch() {
    const BATCH: u64 = 6;
    let direct = tests::pg_store().await;
    let proxy = FaultProxy::in_front_of(direct.pool()).await.unwrap();
    let proxied = PgEventStore::new(proxy.pool(4).await.unwrap())
        .with_combining(Combining::on().max_in_flight(1));
    for fault in [
        Fault::before(Statement::containing(COMBINED)),
        Fault::during(Statement::containing(COMBINED)),
    ] {
        let cut = fault.cut;
        let (held, blocker) = blocked_append(
            &proxied,
            direct.pool(),
            &stream(format!("Blocker-{cut:?}")),
            ExpectedVersion::NoStream,
        )
        .await;
        let batch: Vec<(StreamId, Vec<NewEvent>)> = (1..=BATCH)
            .map(|n| {
                (
                    stream(format!("Cut-{cut:?}-{n}")),
                    vec![event(n), event(n + 100)],
                )
            })
            .collect();
        let tasks: Vec<Task> = batch
            .iter()
            .map(|(s, events)| spawn_append(&proxied, s, ExpectedVersion::NoStream, events.clone()))
            .collect();
        waiting(&proxied, usize::try_from(BATCH).unwrap()).await;
        proxy.arm(fault);
        release(held).await;
        assert!(
            blocker.await.unwrap().is_ok(),
            "{cut:?}: the append before the batch"
        );
        tokio::time::timeout(DEADLINE, proxy.fired()).await.unwrap();
        for ((s, _), task) in batch.iter().zip(tasks) {
            let outcome = task.await.unwrap();
            assert!(
                matches!(&outcome, Err(Error::OutcomeUnknown { stream: at, .. }) if at == s),
                "{cut:?}: {outcome:?}"
            );
        }
        let stored = table(direct.pool()).await;
        let committed = cut == tests::fault_proxy::Cut::During;
        for (s, _) in &batch {
            assert_eq!(
                stored.get(s.as_str()).map_or(0, Vec::len),
                if committed { 2 } else { 0 },
                "{cut:?}: {s}"
            );
        }
        // The callers retry: the same events, stored once.
        for (s, events) in &batch {
            let retry = proxied
                .append(s, ExpectedVersion::NoStream, events.clone())
                .await
                .unwrap();
            assert_eq!(retry.deduplicated, committed, "{cut:?}");
            assert_eq!((retry.first_version, retry.last_version), (1, 2));
        }
    }
    assert_eq!(proxy.counts().faults, 2);
}

/// With the outbox, combined appends mark every event for the relay, wake an armed relay and an
/// armed feed reader (each wake lock held by hand, so that every writing transaction notifies:
/// the append in flight before the batch, then the batch), and the relay publishes them all, in
/// order per stream. Appends in a unit of work are never combined.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn combined_appends_feed_the_outbox_and_wake_readers() {
    let store = store().await.with_outbox(true);
    let outbox = PgOutbox::new(store.pool().clone());
    let feed_channel: String =
        sqlx::query_scalar("SELECT 'dtx_feed_' || 'event_store'::regclass::oid::text")
            .fetch_one(store.pool())
            .await
            .unwrap();
    let mut listener = sqlx::postgres::PgListener::connect_with(store.pool())
        .await
        .unwrap();
    listener
        .listen_all([
            outbox.notify_channel().await.unwrap().as_str(),
            feed_channel.as_str(),
        ])
        .await
        .unwrap();
    let mut armed = store.pool().acquire().await.unwrap().detach();
    dtx_postgres::outbox::hold_wake_lock(&mut armed)
        .await
        .unwrap();
    // The feed readers' wake lock ("dtxr", the event table's oid), as an idle reader holds it.
    sqlx::query(
        "SELECT pg_advisory_lock(1685354610, 'event_store'::regclass::oid::int8::bit(32)::int4)",
    )
    .execute(&mut armed)
    .await
    .unwrap();

    let (held, blocker) = blocked_append(
        &store,
        store.pool(),
        &stream("Blocker"),
        ExpectedVersion::Any,
    )
    .await;
    let tasks: Vec<Task> = (1..=5)
        .map(|n| {
            spawn_append(
                &store,
                &stream(format!("Outbox-{n}")),
                ExpectedVersion::NoStream,
                (1..=3).map(|k| event(n * 10 + k)).collect(),
            )
        })
        .collect();
    waiting(&store, 5).await;
    release(held).await;
    blocker.await.unwrap().unwrap();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let stats = store.combining_stats();
    assert_eq!(
        (stats.combined_statements, stats.combined_appends),
        (1, 5),
        "{stats:?}"
    );
    // Two writing transactions (the blocker's and the batch's), each notifying both channels
    // once.
    let mut notified: HashMap<String, usize> = HashMap::new();
    while notified.values().sum::<usize>() < 4 {
        let notification = tokio::time::timeout(DEADLINE, listener.recv())
            .await
            .expect("every writing transaction wakes the relay and the feed readers")
            .unwrap();
        *notified
            .entry(notification.channel().to_owned())
            .or_default() += 1;
    }
    assert_eq!(notified.len(), 2, "{notified:?}");
    assert!(notified.values().all(|n| *n == 2), "{notified:?}");
    let marked: i64 = sqlx::query_scalar("SELECT count(*) FROM event_store WHERE outbox")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(marked, 16, "every event is its own outbox record");
    armed.close().await.unwrap();
    let publisher = MemoryPublisher::new();
    let relay = outbox.relay(publisher.clone(), RelayOptions::default());
    assert_eq!(relay.run_until_idle().await.unwrap(), 16);
    let mut per_stream: BTreeMap<String, Vec<Uuid>> = BTreeMap::new();
    for message in publisher.published() {
        per_stream
            .entry(message.key.clone())
            .or_default()
            .push(message.message_id);
    }
    assert_eq!(per_stream.len(), 6);
    let stored = table(store.pool()).await;
    for (s, ids) in &per_stream {
        let in_order: Vec<Uuid> = stored[s].iter().map(|(_, id)| *id).collect();
        assert_eq!(ids, &in_order, "{s} published in order");
    }

    // A unit of work appends on its own transaction, never combined.
    let before = store.combining_stats();
    let mut uow = dtx_postgres::PgUnitOfWork::begin(store.pool())
        .await
        .unwrap();
    store
        .append_in(
            &mut uow,
            &stream("In-uow"),
            ExpectedVersion::NoStream,
            vec![event(99)],
        )
        .await
        .unwrap();
    uow.commit().await.unwrap();
    let after = store.combining_stats();
    assert_eq!(
        (after.alone, after.combined_appends),
        (before.alone, before.combined_appends)
    );
}

/// `Combining::off()`: every append alone, nothing counted as combined.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn combining_off_sends_every_append_alone() {
    let store = tests::pg_store().await.with_combining(Combining::off());
    for task in spawn_new_streams(&store, "Off", 16) {
        task.await.unwrap().unwrap();
    }
    let stats = store.combining_stats();
    assert_eq!(
        (stats.combined_statements, stats.alone),
        (0, 0),
        "{stats:?}"
    );
    assert_eq!(table(store.pool()).await.len(), 16);
}

/// A closed stream's append in a combined batch is refused with `StreamClosed`, naming the
/// stream; the other appends of the batch are stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_closed_stream_is_refused_alone_in_a_batch() {
    let store = store().await;
    let closed = stream("Closed");
    store
        .append(&closed, ExpectedVersion::NoStream, vec![event(0)])
        .await
        .unwrap();
    assert_eq!(store.close_stream(&closed).await.unwrap(), 1);
    let (held, blocker) = blocked_append(
        &store,
        store.pool(),
        &stream("Blocker"),
        ExpectedVersion::Any,
    )
    .await;
    let refused = spawn_append(&store, &closed, ExpectedVersion::Any, vec![event(1)]);
    let open = spawn_new_streams(&store, "Open", 3);
    waiting(&store, 4).await;
    release(held).await;
    blocker.await.unwrap().unwrap();
    let refused = refused.await.unwrap();
    assert!(
        matches!(&refused, Err(Error::StreamClosed { stream }) if *stream == closed),
        "{refused:?}"
    );
    for task in open {
        assert_eq!(task.await.unwrap().unwrap().first_version, 1);
    }
    let stored = table(store.pool()).await;
    assert_eq!(
        stored["Closed"].len(),
        1,
        "nothing appended after the close"
    );
    assert!(store.combining_stats().combined_appends >= 4);
}

/// `Combining::linger`: an append that finds nothing in flight waits for the linger instead of
/// going alone, and the appends that arrive meanwhile leave with it, in one statement, when the
/// linger ends (not before).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_linger_gathers_appends_that_arrive_one_by_one() {
    // Long enough that three appends started one after the other surely arrive within it on a
    // busy machine: the test waits for them to be queued before it lets anything go.
    const LINGER: Duration = Duration::from_secs(10);
    let store = tests::pg_store()
        .await
        .with_combining(Combining::on().linger(LINGER));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for n in 0..4 {
        tasks.push(spawn_append(
            &store,
            &stream(format!("Lingered-{n}")),
            ExpectedVersion::NoStream,
            vec![event(n)],
        ));
        waiting(&store, tasks.len()).await;
    }
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap().first_version, 1);
    }
    assert!(
        started.elapsed() >= LINGER,
        "the batch left before the linger ended"
    );
    let stats = store.combining_stats();
    assert_eq!(
        (
            stats.combined_statements,
            stats.combined_appends,
            stats.alone
        ),
        (1, 4, 0),
        "{stats:?}"
    );
    assert_eq!(table(store.pool()).await.len(), 4);
}

/// On a pool of one connection, 24 concurrent writers (each with a conflict to settle and a
/// retry to recognise, which take connections of their own after their batch) all finish: the
/// task sending batches never holds its connection while it waits for another.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pool_of_one_connection_never_waits_for_itself() {
    let pool = dtx_postgres::testing::fresh_database(1).await.unwrap();
    let store = PgEventStore::new(pool).with_combining(Combining::on());
    let tasks: Vec<JoinHandle<()>> = (0..24)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let s = stream(format!("One-{w}"));
                let first = vec![event(w)];
                store
                    .append(&s, ExpectedVersion::NoStream, first.clone())
                    .await
                    .unwrap();
                let conflict = store
                    .append(&s, ExpectedVersion::NoStream, vec![event(100 + w)])
                    .await;
                assert!(
                    matches!(&conflict, Err(Error::Conflict { actual: 1, .. })),
                    "{conflict:?}"
                );
                let retry = store
                    .append(&s, ExpectedVersion::NoStream, first)
                    .await
                    .unwrap();
                assert!(retry.deduplicated);
                store
                    .append(&s, ExpectedVersion::Exact(1), vec![event(200 + w)])
                    .await
                    .unwrap();
            })
        })
        .collect();
    tokio::time::timeout(DEADLINE, async {
        for task in tasks {
            task.await.unwrap();
        }
    })
    .await
    .expect("every writer finished");
    let stored = table(store.pool()).await;
    assert_eq!(stored.len(), 24);
    assert!(stored.values().all(|events| events.len() == 2));
}
