//! Three runner processes apply 20 000 events on 100 streams into a PostgreSQL read model while
//! one of them is killed with SIGKILL at random moments, eight times. The read model must equal
//! the fold computed straight from the store: every event applied exactly once, in stream
//! order (the read model's handler fails on a version it has already seen, which would stop
//! the projection as failed).

#![allow(clippy::unwrap_used, reason = "tests")]

use dtx::projection::{CheckpointStore, ProjectionStatus};
use dtx::{EventStore, ExpectedVersion, NewEvent, StreamId};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tests::projections::{PgFolds, Tick, expected_folds};

const EVENTS: u64 = 20_000;
const STREAMS: u64 = 100;
const WORKERS: usize = 3;
const KILLS: usize = 8;

fn spawn_worker(url: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_projection_worker"))
        .env("DATABASE_URL", url)
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_model_survives_runners_killed_with_sigkill() {
    let store = tests::pg_store().await;
    let pool = store.pool().clone();
    let folds = PgFolds {
        table: "folds_crash",
    };
    folds.create(&pool).await.unwrap();
    let url = tests::database_url(&pool);
    let store: Arc<dyn EventStore> = Arc::new(store);
    // Half the events exist before the runners start (catch-up), half arrive while they run
    // and are killed (live).
    let write = |from: u64, to: u64| {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            let mut n = from;
            while n < to {
                let stream = StreamId::new(format!("Tick-{}", n % STREAMS)).unwrap();
                let events = (n..(n + 10).min(to))
                    .map(|i| NewEvent::from_json("Tick", &Tick { n: i }).unwrap())
                    .collect();
                store
                    .append(&stream, ExpectedVersion::Any, events)
                    .await
                    .unwrap();
                n += 10;
            }
        })
    };
    write(0, EVENTS / 2).await.unwrap();
    let writing = write(EVENTS / 2, EVENTS);

    let mut workers: Vec<Child> = (0..WORKERS).map(|_| spawn_worker(&url)).collect();
    let mut rng = 0x5eed_u64;
    for _ in 0..KILLS {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        tokio::time::sleep(Duration::from_millis(150 + rng % 600)).await;
        let victim = usize::try_from(rng % WORKERS as u64).unwrap();
        // `Child::kill` is SIGKILL on Unix: no chance to release a lease or finish a batch.
        workers[victim].kill().unwrap();
        workers[victim].wait().unwrap();
        workers[victim] = spawn_worker(&url);
    }
    writing.await.unwrap();

    let checkpoints = dtx_postgres::PgCheckpointStore::new(pool.clone());
    let started = Instant::now();
    loop {
        let expected = expected_folds(&*store).await.unwrap();
        let complete = expected.values().map(|f| f.0).sum::<u64>() == EVENTS;
        let list = checkpoints.list().await.unwrap();
        for checkpoint in &list {
            assert_eq!(
                checkpoint.status,
                ProjectionStatus::Running,
                "an event was applied twice or out of order: {checkpoint:?}"
            );
        }
        if complete && folds.read(&pool).await.unwrap() == expected {
            assert_eq!(list.len(), 4, "one checkpoint per partition");
            assert_eq!(list.iter().map(|c| c.applied).sum::<u64>(), EVENTS);
            break;
        }
        assert!(
            started.elapsed() < Duration::from_mins(3),
            "the read model did not catch up: {list:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for mut worker in workers {
        worker.kill().unwrap();
        worker.wait().unwrap();
    }
}
