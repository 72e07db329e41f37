//! An outbox relay process for the crash test: publishes the outbox of the database named by
//! `DATABASE_URL` into the table `outbox_received` (a stand-in broker that keeps every delivery,
//! duplicates included) until it is killed.

use async_trait::async_trait;
use dtx::outbox::{OutboxMessage, PublishError, Publisher, RelayOptions};
use sqlx::PgPool;
use std::time::Duration;

/// Records each delivery in its own autocommit statement, as a broker would accept it.
struct TableBroker(PgPool);

#[async_trait]
impl Publisher for TableBroker {
    async fn publish(&self, message: &OutboxMessage) -> Result<(), PublishError> {
        sqlx::query("INSERT INTO outbox_received (key, seq, message_id) VALUES ($1, $2, $3)")
            .bind(&message.key)
            .bind(message.sequence.and_then(|s| i64::try_from(s).ok()))
            .bind(message.message_id)
            .execute(&self.0)
            .await
            .map_err(PublishError::from_source)?;
        // a broker round trip: widens the window a kill can hit mid-batch
        tokio::time::sleep(Duration::from_millis(2)).await;
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL")?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .connect(&url)
        .await?;
    let outbox = dtx_postgres::PgOutbox::new(pool.clone());
    let relay = outbox.relay(
        TableBroker(pool),
        RelayOptions {
            batch_size: 20,
            batches_per_pass: 4,
            poll_interval: Duration::from_millis(50),
            ..RelayOptions::default()
        },
    );
    relay.run(std::future::pending()).await?;
    Ok(())
}
