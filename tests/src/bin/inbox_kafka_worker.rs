//! A Kafka inbox consumer process for the inbox tests: consumes `TOPIC` (`KAFKA_BROKERS`) into
//! the effects table of the database named by `DATABASE_URL` until it is killed. `OWNER` (a
//! UUID) names the instance, `LEASE_MS` its lease, `SLOW_MS` a pause per record, `BATCH` the
//! records per unit of work.

use dtx::inbox::{ConsumerOptions, Inbox};
use dtx_postgres::PgInbox;
use dtx_postgres::kafka::{KafkaConsumer, KafkaConsumerOptions};
use std::time::Duration;
use tests::kafka_inbox::{Effects, brokers};

fn env_u64(name: &str, default: u64) -> Result<u64, Box<dyn std::error::Error>> {
    Ok(match std::env::var(name) {
        Ok(v) => v.parse()?,
        Err(_) => default,
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL")?;
    let topic = std::env::var("TOPIC")?;
    let owner = match std::env::var("OWNER") {
        Ok(owner) => owner.parse()?,
        Err(_) => uuid::Uuid::now_v7(),
    };
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .connect(&url)
        .await?;
    let options = KafkaConsumerOptions {
        delivery: ConsumerOptions {
            batch_size: usize::try_from(env_u64("BATCH", 50)?)?,
            backoff: Duration::from_millis(20),
            ..ConsumerOptions::default()
        },
        lease: Duration::from_millis(env_u64("LEASE_MS", 30_000)?),
        poll_interval: Duration::from_millis(200),
        fetch_wait: Duration::from_millis(200),
        ..KafkaConsumerOptions::default()
    };
    let consumer = KafkaConsumer::connect(
        brokers(),
        topic,
        Inbox::new(PgInbox::new(pool)),
        Effects {
            slow: Duration::from_millis(env_u64("SLOW_MS", 0)?),
        },
    )
    .await?
    .with_owner(owner)
    .with_options(options);
    consumer.run(std::future::pending()).await?;
    Ok(())
}
