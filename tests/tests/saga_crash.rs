//! Several worker processes run 200 sagas while one of them is killed with SIGKILL at random
//! moments, again and again. Every saga must end completed or compensated; the effect of each
//! step (recorded under its idempotency key) happens exactly once; compensations run only for
//! completed steps, in reverse order.

#![allow(clippy::unwrap_used, clippy::too_many_lines, reason = "tests")]

use dtx::saga::{SagaOrchestrator, SagaStatus};
use std::collections::HashMap;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tests::crash::{CrashSaga, create_tables};
use uuid::Uuid;

const SAGAS: usize = 200;
const WORKERS: usize = 3;
const KILLS: usize = 8;

fn spawn_worker(url: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_saga_crash_worker"))
        .env("DATABASE_URL", url)
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_survive_workers_killed_with_sigkill() {
    let events = tests::pg_store().await;
    let pool = events.pool().clone();
    create_tables(&pool).await.unwrap();
    let url = tests::database_url(&pool);
    let store = Arc::new(dtx_postgres::PgSagaStore::new(pool.clone()));
    let sagas = SagaOrchestrator::builder(store)
        .saga(<CrashSaga as dtx::saga::Saga>::definition())
        .build()
        .unwrap();
    let mut failing = HashMap::new();
    for n in 0..SAGAS {
        let fail = n % 3 == 0;
        let id = sagas.start(CrashSaga { fail, work_ms: 15 }).await.unwrap();
        failing.insert(id, fail);
    }

    let mut workers: Vec<Child> = (0..WORKERS).map(|_| spawn_worker(&url)).collect();
    let mut rng = 0x5eed_u64;
    let mut kills = 0;
    let mut kills_mid_run = 0;
    let started = Instant::now();
    loop {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        tokio::time::sleep(Duration::from_millis(100 + rng % 300)).await;
        let active = sagas.counts().await.unwrap();
        if kills < KILLS {
            if active.get(&SagaStatus::Running).copied().unwrap_or(0)
                + active.get(&SagaStatus::Compensating).copied().unwrap_or(0)
                > 0
            {
                kills_mid_run += 1;
            }
            let victim = usize::try_from(rng % WORKERS as u64).unwrap();
            workers[victim].kill().unwrap(); // SIGKILL
            workers[victim].wait().unwrap();
            workers[victim] = spawn_worker(&url);
            kills += 1;
        }
        let counts = sagas.counts().await.unwrap();
        let finished: u64 = [
            SagaStatus::Completed,
            SagaStatus::Compensated,
            SagaStatus::Failed,
        ]
        .iter()
        .map(|s| counts.get(s).copied().unwrap_or(0))
        .sum();
        if kills == KILLS && finished == SAGAS as u64 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_mins(3),
            "sagas did not finish: {counts:?}"
        );
    }
    for worker in &mut workers {
        worker.kill().unwrap();
        worker.wait().unwrap();
    }

    let counts = sagas.counts().await.unwrap();
    assert_eq!(counts.get(&SagaStatus::Failed), None, "{counts:?}");
    assert!(
        kills_mid_run >= KILLS / 2,
        "only {kills_mid_run} kills hit running sagas"
    );
    let effects: Vec<(Uuid, String, String, i64)> =
        sqlx::query_as("SELECT saga_id, step, phase, seq FROM crash_effects ORDER BY seq")
            .fetch_all(&pool)
            .await
            .unwrap();
    let mut by_saga: HashMap<Uuid, Vec<String>> = HashMap::new();
    for (saga, step, phase, _) in &effects {
        by_saga
            .entry(*saga)
            .or_default()
            .push(if phase == "action" {
                step.clone()
            } else {
                format!("undo {step}")
            });
    }
    for (id, fail) in &failing {
        let saga = sagas.status(*id).await.unwrap();
        let ran = by_saga.get(id).cloned().unwrap_or_default();
        if *fail {
            assert_eq!(saga.status, SagaStatus::Compensated, "{id}");
            assert_eq!(
                ran,
                ["reserve", "charge", "undo charge", "undo reserve"],
                "{id}"
            );
        } else {
            assert_eq!(saga.status, SagaStatus::Completed, "{id}");
            assert_eq!(ran, ["reserve", "charge", "ship"], "{id}");
        }
    }
    let attempts: i64 = sqlx::query_scalar("SELECT count(*) FROM crash_attempts")
        .fetch_one(&pool)
        .await
        .unwrap();
    println!(
        "{KILLS} SIGKILLs ({kills_mid_run} while sagas ran); {} effects from {attempts} step executions ({} re-executions absorbed by idempotency keys)",
        effects.len(),
        attempts - i64::try_from(effects.len()).unwrap()
    );
}
