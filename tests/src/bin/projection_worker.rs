//! A projection runner process for the crash test: runs the `folds_crash` read model (four
//! partitions) from the database named by `DATABASE_URL` until it is killed.

use dtx::projection::{ProjectionRunner, RunnerConfig};
use std::sync::Arc;
use std::time::Duration;
use tests::projections::PgFolds;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL")?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .connect(&url)
        .await?;
    let runner = ProjectionRunner::new(
        Arc::new(dtx_postgres::PgEventStore::new(pool.clone())),
        Arc::new(dtx_postgres::PgCheckpointStore::new(pool)),
    )
    .config(RunnerConfig {
        batch_size: 100,
        scan_size: 400,
        lease: Duration::from_secs(1),
        poll_interval: Duration::from_millis(100),
        ..RunnerConfig::default()
    })
    .partitioned(
        PgFolds {
            table: "folds_crash",
        },
        4,
    );
    let _running = runner.start()?;
    std::future::pending::<()>().await;
    Ok(())
}
