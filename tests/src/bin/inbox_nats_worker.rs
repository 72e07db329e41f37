//! A NATS inbox consumer process for the crash test: feeds [`tests::inbox_nats::EffectWriter`]
//! from the durable consumer `NATS_DURABLE` on the `JetStream` stream `NATS_STREAM`, into the
//! database named by `DATABASE_URL`, until it is killed.

use dtx::inbox::{ConsumerOptions, Inbox};
use dtx_postgres::PgInbox;
use dtx_postgres::nats::{NatsConsumer, NatsConsumerConfig};
use std::time::Duration;
use tests::inbox_nats::EffectWriter;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL")?;
    let stream = std::env::var("NATS_STREAM")?;
    let durable = std::env::var("NATS_DURABLE")?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await?;
    let client = async_nats::connect(tests::inbox_nats::nats_url()).await?;
    let config = NatsConsumerConfig::new(stream, durable)
        .options(ConsumerOptions {
            // Kills count as deliveries: leave room for several in a row.
            max_deliveries: 20,
            batch_size: 50,
            ..ConsumerOptions::default()
        })
        // A killed worker's messages come back after this.
        .ack_wait(Duration::from_secs(3))
        .idle_wait(Duration::from_secs(1));
    let consumer = NatsConsumer::new(client, Inbox::new(PgInbox::new(pool)), EffectWriter, config);
    consumer.run(std::future::pending()).await?;
    Ok(())
}
