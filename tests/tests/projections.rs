//! Projections on the gap-free feed, on PostgreSQL and in memory: the read model equals a fold
//! computed straight from the store (each event applied once, in stream order), whatever
//! runners, late commits, failures, skips and resets do.

#![allow(clippy::unwrap_used, clippy::too_many_lines, reason = "tests")]

use dtx::UnitOfWork;
use dtx::projection::{
    CheckpointKey, CheckpointStore, MemoryCheckpointStore, Projection, ProjectionRunner,
    ProjectionStatus, RunnerConfig,
};
use dtx::{EventStore, ExpectedVersion, MemoryEventStore, NewEvent, StreamId};
use dtx_postgres::{PgCheckpointStore, PgUnitOfWork};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tests::projections::{Fold, MemoryFolds, PgFolds, Tick, expected_folds};

fn tick(n: u64) -> NewEvent {
    NewEvent::from_json("Tick", &Tick { n }).unwrap()
}

fn config() -> RunnerConfig {
    RunnerConfig {
        batch_size: 64,
        scan_size: 256,
        poll_interval: Duration::from_millis(200),
        retry: dtx::Backoff::new(
            Duration::from_millis(5),
            Duration::from_millis(20),
            dtx::Jitter::Equal,
        ),
        max_attempts: 3,
        ..RunnerConfig::default()
    }
}

/// Appends `per_writer` ticks from each of `writers` concurrent tasks over `streams` streams,
/// with other event types in between that the projection must pass over.
async fn write(store: Arc<dyn EventStore>, writers: usize, per_writer: usize, streams: usize) {
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                for i in 0..per_writer {
                    let stream = StreamId::new(format!("Tick-{}", (w * 7 + i) % streams)).unwrap();
                    let mut events = vec![tick((w * 1000 + i) as u64)];
                    if i % 5 == 0 {
                        events.push(NewEvent::from_json("Other", &serde_json::json!({})).unwrap());
                    }
                    store
                        .append(&stream, ExpectedVersion::Any, events)
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

async fn wait_for(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !done().await {
        assert!(
            started.elapsed() < Duration::from_mins(2),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The fold of the store once the feed yields all `ticks` ticks (it holds back what is above
/// the oldest open transaction of the cluster: another test's, say).
async fn settled(store: &dyn EventStore, ticks: u64) -> BTreeMap<String, Fold> {
    loop {
        let folds = expected_folds(store).await.unwrap();
        if folds.values().map(|f| f.0).sum::<u64>() >= ticks {
            return folds;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn checkpoint(checkpoints: &dyn CheckpointStore, name: &str) -> dtx::projection::Checkpoint {
    checkpoints
        .list()
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.key.name == name)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_pg_read_model_equals_the_fold_of_the_store_with_two_runners() {
    let store = tests::pg_store().await;
    let pool = store.pool().clone();
    let folds = PgFolds {
        table: "folds_live",
    };
    folds.create(&pool).await.unwrap();
    let store: Arc<dyn EventStore> = Arc::new(store);
    let checkpoints = Arc::new(PgCheckpointStore::new(pool.clone()));
    // Two runners compete for the one projection; the fold's version check fails on any event
    // applied twice or out of order.
    let runners: Vec<_> = (0..2)
        .map(|_| {
            ProjectionRunner::new(Arc::clone(&store), checkpoints.clone())
                .config(RunnerConfig {
                    lease: Duration::from_secs(2),
                    ..config()
                })
                .projection(folds.clone())
                .start()
                .unwrap()
        })
        .collect();
    write(Arc::clone(&store), 4, 250, 20).await;
    wait_for("the read model", async || {
        settled(&*store, 1000).await == folds.read(&pool).await.unwrap()
    })
    .await;
    let cp = checkpoint(&*checkpoints, PgFolds::NAME).await;
    assert_eq!(cp.status, ProjectionStatus::Running, "{cp:?}");
    assert_eq!(cp.applied, 1000);
    // Stop one: the other keeps following.
    let mut runners = runners.into_iter();
    runners.next().unwrap().stop().await;
    write(Arc::clone(&store), 1, 50, 20).await;
    wait_for("the read model after a runner stopped", async || {
        settled(&*store, 1050).await == folds.read(&pool).await.unwrap()
    })
    .await;
    for runner in runners {
        runner.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_memory_read_model_equals_the_fold_of_the_store_with_two_runners() {
    let store = Arc::new(MemoryEventStore::new());
    let folds = MemoryFolds::default();
    let checkpoints = Arc::new(MemoryCheckpointStore::new());
    let runners: Vec<_> = (0..2)
        .map(|_| {
            ProjectionRunner::new(store.clone(), checkpoints.clone())
                .config(config())
                .projection(folds.clone())
                .start()
                .unwrap()
        })
        .collect();
    write(store.clone(), 4, 250, 20).await;
    let expected = settled(&*store, 1000).await;
    wait_for("the read model", async || folds.read() == expected).await;
    assert_eq!(
        folds.violations.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    assert_eq!(
        checkpoint(&*checkpoints, MemoryFolds::NAME).await.applied,
        1000
    );
    for runner in runners {
        runner.stop().await;
    }
}

/// An event whose transaction commits after later events were applied is applied, never
/// skipped: the feed holds the later ones back until it commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_committed_late_is_applied_never_skipped() {
    let store = tests::pg_store().await;
    let pool = store.pool().clone();
    let folds = PgFolds {
        table: "folds_late",
    };
    folds.create(&pool).await.unwrap();
    let checkpoints = Arc::new(PgCheckpointStore::new(pool.clone()));
    let store = Arc::new(store);
    let runner = ProjectionRunner::new(store.clone(), checkpoints.clone())
        .config(config())
        .projection(folds.clone())
        .start()
        .unwrap();
    // A transaction takes its id (and so its place in the feed) and stays open...
    let late = StreamId::new("Tick-late").unwrap();
    let mut uow = PgUnitOfWork::begin(&pool).await.unwrap();
    store
        .append_in(&mut uow, &late, ExpectedVersion::Any, vec![tick(7)])
        .await
        .unwrap();
    // ...while later events commit and the runner follows.
    write(store.clone(), 2, 30, 5).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !folds.read(&pool).await.unwrap().contains_key("Tick-late"),
        "not committed yet"
    );
    uow.commit().await.unwrap();
    let expected = settled(&*store, 61).await;
    assert!(expected.contains_key("Tick-late"));
    wait_for("the late event", async || {
        folds.read(&pool).await.unwrap() == expected
    })
    .await;
    runner.stop().await;
}

/// A poison event stops only its projection, visibly; an operator's skip (recorded) resumes
/// it, and a reset rebuilds the same read model as the live one.
async fn poison_skip_and_reset(
    store: Arc<dyn EventStore>,
    checkpoints: Arc<dyn CheckpointStore>,
    runner_of: impl Fn() -> ProjectionRunner,
    name: &str,
    read: impl AsyncFn() -> BTreeMap<String, Fold>,
) {
    let stream = StreamId::new("Tick-p").unwrap();
    store
        .append(&stream, ExpectedVersion::Any, vec![tick(1), tick(2)])
        .await
        .unwrap();
    let poison = NewEvent::from_json("Tick", &serde_json::json!({ "n": "not a number" })).unwrap();
    let poison_id = poison.event_id;
    store
        .append(&stream, ExpectedVersion::Any, vec![poison])
        .await
        .unwrap();
    store
        .append(
            &StreamId::new("Tick-q").unwrap(),
            ExpectedVersion::Any,
            vec![tick(3)],
        )
        .await
        .unwrap();
    wait_for("the feed horizon", async || {
        store
            .read_all(dtx::GlobalPosition::START, 100)
            .await
            .unwrap()
            .len()
            == 4
    })
    .await;
    let runner = runner_of();
    runner.run_once().await.unwrap();
    let cp = checkpoint(&*checkpoints, name).await;
    assert_eq!(cp.status, ProjectionStatus::Failed, "{cp:?}");
    let failure = cp.failure.clone().unwrap();
    assert_eq!(failure.event_id, poison_id);
    assert_eq!(failure.stream_id, "Tick-p");
    assert_eq!(failure.version, 3);
    assert!(failure.error.contains("malformed"), "{}", failure.error);
    // Nothing after the poison event was applied, nothing before it was lost.
    let partial = read().await;
    assert_eq!(partial.get("Tick-p").map(|f| f.0), Some(2));
    assert!(!partial.contains_key("Tick-q"));
    // A failed projection stays failed while nobody acts.
    runner.run_once().await.unwrap();
    assert_eq!(
        checkpoint(&*checkpoints, name).await.status,
        ProjectionStatus::Failed
    );
    let key = cp.key.clone();
    let skipped = checkpoints
        .skip(&key, "bad payload, see ticket 12")
        .await
        .unwrap();
    assert_eq!(skipped.failure.event_id, poison_id);
    assert!(
        checkpoints.skip(&key, "again").await.is_err(),
        "nothing left to skip"
    );
    runner.run_once().await.unwrap();
    let live = read().await;
    assert_eq!(live.get("Tick-q").map(|f| f.0), Some(1));
    assert_eq!(live.get("Tick-p").map(|f| f.0), Some(2));
    let skips = checkpoints.skips(name).await.unwrap();
    assert_eq!(skips.len(), 1);
    assert_eq!(skips[0].reason, "bad payload, see ticket 12");
    // A reset clears and rebuilds; the poison event stops the rebuild again, and a skip
    // brings it to the same state as live.
    runner.reset(name).await.unwrap();
    let reset = checkpoint(&*checkpoints, name).await;
    assert_eq!(reset.position, dtx::GlobalPosition::START);
    runner.run_once().await.unwrap();
    assert_eq!(
        checkpoint(&*checkpoints, name).await.status,
        ProjectionStatus::Failed
    );
    checkpoints.skip(&key, "same bad payload").await.unwrap();
    runner.run_once().await.unwrap();
    assert_eq!(read().await, live, "rebuild equals live");
    let _ = CheckpointKey::new(name, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_a_poison_event_stops_its_projection_until_skipped_and_reset_rebuilds() {
    let store = tests::pg_store().await;
    let pool = store.pool().clone();
    let folds = PgFolds {
        table: "folds_poison",
    };
    folds.create(&pool).await.unwrap();
    let store: Arc<dyn EventStore> = Arc::new(store);
    let checkpoints: Arc<dyn CheckpointStore> = Arc::new(PgCheckpointStore::new(pool.clone()));
    let runner_of = || {
        ProjectionRunner::new(Arc::clone(&store), Arc::clone(&checkpoints))
            .config(config())
            .projection(folds.clone())
    };
    poison_skip_and_reset(
        Arc::clone(&store),
        Arc::clone(&checkpoints),
        runner_of,
        PgFolds::NAME,
        async || folds.read(&pool).await.unwrap(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_a_poison_event_stops_its_projection_until_skipped_and_reset_rebuilds() {
    let store: Arc<dyn EventStore> = Arc::new(MemoryEventStore::new());
    let folds = MemoryFolds::default();
    let checkpoints: Arc<dyn CheckpointStore> = Arc::new(MemoryCheckpointStore::new());
    let runner_of = || {
        ProjectionRunner::new(Arc::clone(&store), Arc::clone(&checkpoints))
            .config(config())
            .projection(folds.clone())
    };
    poison_skip_and_reset(
        Arc::clone(&store),
        Arc::clone(&checkpoints),
        runner_of,
        MemoryFolds::NAME,
        async || folds.read(),
    )
    .await;
}

/// The store filters by type: a page of other types moves the checkpoint without a handler
/// call, and `read_feed` returns only the requested types.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_is_filtered_by_type_where_it_is_stored() {
    let pg = tests::pg_store().await;
    let memory = MemoryEventStore::new();
    for store in [&pg as &dyn EventStore, &memory] {
        let stream = StreamId::new("Mixed-1").unwrap();
        let mut events = Vec::new();
        for i in 0..30 {
            events.push(if i % 10 == 9 {
                tick(i)
            } else {
                NewEvent::from_json("Other", &serde_json::json!({})).unwrap()
            });
        }
        store
            .append(&stream, ExpectedVersion::NoStream, events)
            .await
            .unwrap();
        // The feed yields nothing above the oldest open transaction of the cluster (another
        // test's, say): wait until it passed these events.
        wait_for("the feed horizon", async || {
            store
                .read_all(dtx::GlobalPosition::START, 100)
                .await
                .unwrap()
                .len()
                == 30
        })
        .await;
        let page = store
            .read_feed(dtx::GlobalPosition::START, &["Tick"], 15)
            .await
            .unwrap();
        assert_eq!(page.events.len(), 1, "{page:?}");
        let all = store
            .read_all(dtx::GlobalPosition::START, 100)
            .await
            .unwrap();
        assert_eq!(page.scanned_to, all[14].position);
        let rest = store
            .read_feed(page.scanned_to, &["Tick"], 100)
            .await
            .unwrap();
        assert_eq!(rest.events.len(), 2);
        assert_eq!(rest.scanned_to, all[29].position);
        let none = store
            .read_feed(rest.scanned_to, &["Tick"], 100)
            .await
            .unwrap();
        assert!(none.events.is_empty());
        assert_eq!(none.scanned_to, rest.scanned_to);
    }
}

/// A subscription: its handler gets no unit of work and the event id as its idempotency key;
/// a failing event is retried alone, and the events before it in the batch are not handled
/// again.
#[derive(Clone, Default)]
struct Mailer {
    sent: Arc<std::sync::Mutex<Vec<(String, u64, dtx::Uuid)>>>,
    failures_left: Arc<std::sync::atomic::AtomicU32>,
}

#[dtx::projection(name = "mailer", subscription)]
impl Mailer {
    #[allow(clippy::unused_async, reason = "handlers are async")]
    async fn tick(&self, tick: &Tick, event: &dtx::RecordedEvent) -> Result<(), String> {
        use std::sync::atomic::Ordering;
        if tick.n == 3
            && self
                .failures_left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            return Err("the mail server is down".to_owned());
        }
        self.sent.lock().unwrap().push((
            event.stream_id.to_string(),
            event.version,
            event.event_id,
        ));
        Ok(())
    }
}

#[tokio::test]
async fn a_subscription_retries_a_failing_event_without_repeating_the_others() {
    let store = Arc::new(MemoryEventStore::new());
    let stream = StreamId::new("Tick-mail").unwrap();
    let events: Vec<NewEvent> = (1..=5).map(tick).collect();
    let ids: Vec<dtx::Uuid> = events.iter().map(|e| e.event_id).collect();
    store
        .append(&stream, ExpectedVersion::NoStream, events)
        .await
        .unwrap();
    let mailer = Mailer::default();
    mailer
        .failures_left
        .store(2, std::sync::atomic::Ordering::SeqCst);
    let checkpoints = Arc::new(MemoryCheckpointStore::new());
    let runner = ProjectionRunner::new(store.clone(), checkpoints.clone())
        .config(config())
        .projection(mailer.clone());
    assert_eq!(runner.run_once().await.unwrap(), 5);
    let sent = mailer.sent.lock().unwrap().clone();
    let sent_ids: Vec<dtx::Uuid> = sent.iter().map(|s| s.2).collect();
    assert_eq!(
        sent_ids, ids,
        "each event once, in order, the failing one after its retries"
    );
    assert_eq!(
        checkpoint(&*checkpoints, "mailer").await.status,
        ProjectionStatus::Running
    );

    // One that keeps failing stops the subscription at it, visibly.
    mailer
        .failures_left
        .store(100, std::sync::atomic::Ordering::SeqCst);
    store
        .append(&stream, ExpectedVersion::Any, vec![tick(3)])
        .await
        .unwrap();
    runner.run_once().await.unwrap();
    let cp = checkpoint(&*checkpoints, "mailer").await;
    assert_eq!(cp.status, ProjectionStatus::Failed);
    let failure = cp.failure.unwrap();
    assert_eq!((failure.version, failure.attempts), (6, 3));
    assert!(failure.error.contains("mail server"), "{}", failure.error);
}

/// A stored row that cannot be read (a value dtx never writes) stops the projection at its
/// position, after the events before it, instead of failing every read; a skip passes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_row_stops_its_projection_at_its_position() {
    let store = tests::pg_store().await;
    let pool = store.pool().clone();
    let folds = PgFolds {
        table: "folds_unreadable",
    };
    folds.create(&pool).await.unwrap();
    let stream = StreamId::new("Tick-u").unwrap();
    store
        .append(&stream, ExpectedVersion::NoStream, vec![tick(1), tick(2)])
        .await
        .unwrap();
    // Another program writes a row with a schema version dtx never writes.
    let bad_id = dtx::Uuid::now_v7();
    sqlx::query(
        "INSERT INTO event_store (stream_id, version, commit_order, event_id, event_type,
                                  schema_version, data)
         VALUES ('Tick-u', 3, pg_current_xact_id()::text::bigint, $1, 'Tick', 0, '{\"n\": 3}')",
    )
    .bind(bad_id)
    .execute(&pool)
    .await
    .unwrap();
    store
        .append(
            &StreamId::new("Tick-v").unwrap(),
            ExpectedVersion::NoStream,
            vec![tick(4)],
        )
        .await
        .unwrap();
    wait_for("the feed horizon", async || {
        let page = store
            .read_feed(dtx::GlobalPosition::START, &[], 10)
            .await
            .unwrap();
        let Some(bad) = page.unreadable else {
            return false;
        };
        assert_eq!(page.events.len(), 2, "the page stops before the row");
        let after = store.read_feed(bad.position, &[], 10).await.unwrap();
        after.events.len() == 1
    })
    .await;
    let checkpoints = Arc::new(PgCheckpointStore::new(pool.clone()));
    let runner = ProjectionRunner::new(Arc::new(store), checkpoints.clone())
        .config(config())
        .projection(folds.clone());
    assert_eq!(runner.run_once().await.unwrap(), 2, "the events before it");
    let cp = checkpoint(&*checkpoints, PgFolds::NAME).await;
    assert_eq!(cp.status, ProjectionStatus::Failed, "{cp:?}");
    let failure = cp.failure.unwrap();
    assert_eq!(
        (failure.stream_id.as_str(), failure.event_id),
        ("Tick-u", bad_id)
    );
    assert!(
        failure.error.contains("schema_version"),
        "{}",
        failure.error
    );
    checkpoints.skip(&cp.key, "written by hand").await.unwrap();
    assert_eq!(runner.run_once().await.unwrap(), 1, "the event after it");
    let read = folds.read(&pool).await.unwrap();
    assert_eq!(read.get("Tick-u").map(|f| f.0), Some(2));
    assert_eq!(read.get("Tick-v").map(|f| f.0), Some(1));
}
