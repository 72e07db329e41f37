//! A saga worker process for the crash test: runs `CrashSaga`s from the database named by
//! `DATABASE_URL` until it is killed.

use dtx::saga::{Saga, SagaOrchestrator, WorkerOptions};
use std::sync::Arc;
use std::time::Duration;
use tests::crash::{CrashSaga, POOL};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL")?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(6)
        .connect(&url)
        .await?;
    POOL.set(pool.clone()).map_err(|_| "pool set twice")?;
    let sagas = SagaOrchestrator::builder(Arc::new(dtx_postgres::PgSagaStore::new(pool)))
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .saga(CrashSaga::definition())
        .build()?;
    let worker = sagas.worker(WorkerOptions {
        id: format!("crash-worker-{}", std::process::id()),
        lease: Duration::from_secs(1),
        batch: 4,
        poll_interval: Duration::from_millis(20),
    });
    worker.run(std::future::pending()).await?;
    Ok(())
}
