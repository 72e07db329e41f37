//! Saga rows: `saga_start` (persisting a new saga vs a single-row INSERT) and `saga_3_steps`
//! (sagas of three no-op steps completed per second by two workers).

use crate::{BoxError, Options, pair, payload, report, to_i64};
use dtx::saga::{SagaOrchestrator, SagaStatus, StepError, WorkerOptions};
use dtx_postgres::PgSagaStore;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A saga whose three steps do nothing: what remains is the runtime's own cost.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Noop {
    order: u64,
    memo: String,
}

#[dtx::saga(name = "BenchNoop")]
impl Noop {
    #[step(compensate = undo)]
    #[expect(clippy::unused_async, reason = "a no-op step")]
    async fn first(&mut self) -> Result<(), StepError> {
        Ok(())
    }

    #[expect(clippy::unused_async, reason = "a no-op compensation")]
    async fn undo(&mut self) -> Result<(), StepError> {
        Ok(())
    }

    #[step]
    #[expect(clippy::unused_async, reason = "a no-op step")]
    async fn second(&mut self) -> Result<(), StepError> {
        Ok(())
    }

    #[step]
    #[expect(clippy::unused_async, reason = "a no-op step")]
    async fn third(&mut self) -> Result<(), StepError> {
        Ok(())
    }
}

pub(crate) async fn saga_rows(options: &Options, pool: &PgPool) -> Result<(), BoxError> {
    let sagas = SagaOrchestrator::builder(Arc::new(PgSagaStore::new(pool.clone())))
        .registry()
        .build()?;
    if options.wants("saga_start") {
        let row = pair(
            options.iterations,
            async |i| {
                sagas
                    .start(Noop { order: i, memo: "start a saga of three no-op steps".into() })
                    .await
                    .expect("start");
            },
            async |i| {
                sqlx::query("INSERT INTO baseline_events (stream_id, version, data) VALUES ($1, $2, $3::jsonb)")
                    .bind("baseline-saga-start")
                    .bind(to_i64(i) + 1)
                    .bind(payload(i))
                    .execute(pool)
                    .await
                    .expect("insert");
            },
        )
        .await;
        report(options, "saga_start", "insert_1_row", &row);
    }
    if options.wants("saga_3_steps") {
        sqlx::query("DELETE FROM saga_state").execute(pool).await?;
        let count = 400;
        for order in 0..count {
            sagas
                .start(Noop {
                    order,
                    memo: String::new(),
                })
                .await?;
        }
        let started = Instant::now();
        let workers: Vec<_> = (0..2)
            .map(|n| {
                let worker = sagas.worker(WorkerOptions {
                    id: format!("bench-{n}"),
                    batch: 16,
                    poll_interval: Duration::from_millis(5),
                    ..WorkerOptions::default()
                });
                tokio::spawn(async move { worker.run_until_idle().await })
            })
            .collect();
        for worker in workers {
            worker.await??;
        }
        let elapsed = started.elapsed();
        let completed = sagas
            .counts()
            .await?
            .get(&SagaStatus::Completed)
            .copied()
            .unwrap_or(0);
        assert_eq!(completed, count, "every saga completed");
        #[allow(clippy::cast_precision_loss, reason = "a rate")]
        let per_second = count as f64 / elapsed.as_secs_f64();
        if options.json {
            println!(
                "{}",
                serde_json::json!({
                    "name": "saga_3_steps",
                    "sagas_per_s": (per_second * 10.0).round() / 10.0,
                    "p50_us": (elapsed.as_secs_f64() * 1e6 / 400.0 * 1000.0).round() / 1000.0,
                    "workers": 2,
                    "baseline": null,
                })
            );
        } else {
            println!(
                "saga_3_steps           {per_second:>10.1} sagas/s with 2 workers (no baseline: throughput)"
            );
        }
    }
    Ok(())
}
