//! `inbox_consume_kafka`: time per record consumed from a 3-partition Kafka topic
//! (`KAFKA_BROKERS` or `127.0.0.1:9092`; skipped when no broker answers) by a
//! [`KafkaConsumer`] whose handler inserts one row per record through the unit of work (inbox
//! record, effect and offset committed together per batch), vs a hand-written consumer doing the
//! same insert per record: one task per partition fetching a batch of the same size, inserting
//! it and committing, with nothing kept for redeliveries. Each round both sides read the same
//! freshly produced topic, one after the other, alternating which goes first.

use crate::{BoxError, Options, Stats, report};
use dtx::inbox::{Consumer, ConsumerOptions, InboundMessage, Inbox};
use dtx::projection::HandlerError;
use dtx::uow::{BoxFuture, UnitOfWork};
use dtx_postgres::PgInbox;
use dtx_postgres::kafka::{KafkaConsumer, KafkaConsumerOptions, KafkaPublisher};
use rskafka::client::partition::{Compression, OffsetAt, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::record::Record;
use sqlx::PgPool;
use std::time::{Duration, Instant};

const PARTITIONS: i32 = 3;
const RECORDS: usize = 3_000;
const BATCH: usize = 100;
const ROUNDS: usize = 5;
const INSERT: &str = "INSERT INTO bench_kafka_effects (side, message_id, key) VALUES ($1, $2, $3)";

/// Inserts one effect row per record, in the unit of work.
struct Insert;

impl Consumer for Insert {
    const NAME: &'static str = "bench_kafka";

    fn event_types() -> &'static [&'static str] {
        &["Ticked"]
    }

    fn handle<'a>(
        &'a self,
        message: &'a InboundMessage,
        uow: &'a mut dyn UnitOfWork,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let conn = dtx_postgres::PgUnitOfWork::connection_of(uow)
                .await
                .map_err(HandlerError::failed)?;
            sqlx::query(INSERT)
                .bind("dtx")
                .bind(message.message_id)
                .bind(message.key.as_deref().unwrap_or_default())
                .execute(conn)
                .await
                .map_err(HandlerError::failed)?;
            Ok(())
        })
    }
}

/// The rows of this module.
pub(crate) async fn inbox_rows(options: &Options, pool: &PgPool) -> Result<(), BoxError> {
    if options.wants("inbox_consume_kafka") {
        consume_kafka(options, pool).await?;
    }
    Ok(())
}

async fn consume_kafka(options: &Options, pool: &PgPool) -> Result<(), BoxError> {
    let brokers: Vec<String> = std::env::var("KAFKA_BROKERS")
        .unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
        .split(',')
        .map(str::to_owned)
        .collect();
    let backoff = rskafka::BackoffConfig {
        deadline: Some(Duration::from_secs(3)),
        ..rskafka::BackoffConfig::default()
    };
    let connect = ClientBuilder::new(brokers.clone())
        .backoff_config(backoff)
        .build();
    let client = match tokio::time::timeout(Duration::from_secs(5), connect).await {
        Ok(Ok(client)) => client,
        Ok(Err(e)) => {
            eprintln!("inbox_consume_kafka skipped (no Kafka broker): {e}");
            return Ok(());
        }
        Err(e) => {
            eprintln!("inbox_consume_kafka skipped (no Kafka broker): {e}");
            return Ok(());
        }
    };
    sqlx::raw_sql(
        "DROP TABLE IF EXISTS bench_kafka_effects;
         CREATE TABLE bench_kafka_effects (
             id BIGSERIAL PRIMARY KEY, side TEXT NOT NULL, message_id UUID NOT NULL, key TEXT NOT NULL)",
    )
    .execute(pool)
    .await?;
    let (mut dtx_samples, mut base_samples) = (Vec::new(), Vec::new());
    for round in 0..=ROUNDS {
        let topic = format!("dtx_bench_inbox_{}", dtx::Uuid::now_v7().simple());
        client
            .controller_client()?
            .create_topic(topic.clone(), PARTITIONS, 1, 5_000)
            .await?;
        produce(&client, &topic).await?;
        let mut sides = [true, false];
        if round % 2 == 1 {
            sides.reverse();
        }
        for dtx_side in sides {
            sqlx::query("TRUNCATE bench_kafka_effects")
                .execute(pool)
                .await?;
            let took = if dtx_side {
                consume_dtx(&brokers, pool, &topic).await?
            } else {
                consume_baseline(&client, pool, &topic).await?
            };
            // round 0 warms up
            if round > 0 {
                if dtx_side {
                    dtx_samples.push(took);
                } else {
                    base_samples.push(took);
                }
            }
        }
        client
            .controller_client()?
            .delete_topic(topic, 5_000)
            .await
            .ok();
    }
    let records = u32::try_from(RECORDS)?;
    let row = (
        Stats::of(dtx_samples, records),
        Stats::of(base_samples, records),
    );
    if !options.json {
        println!(
            "{:<22} {:.0} records/s vs {:.0} (throughput ratio {:.2})",
            "",
            1e6 / row.0.p50_us,
            1e6 / row.1.p50_us,
            row.1.p50_us / row.0.p50_us
        );
    }
    report(options, "inbox_consume_kafka", "fetch_insert_commit", &row);
    Ok(())
}

/// `RECORDS` records over 30 keys, each with a fresh event id.
async fn produce(client: &Client, topic: &str) -> Result<(), BoxError> {
    let mut batches: Vec<Vec<Record>> = vec![Vec::new(); PARTITIONS.unsigned_abs() as usize];
    for n in 0..RECORDS {
        let key = format!("Bench-{}", n % 30);
        let p = KafkaPublisher::partition_for(&key, PARTITIONS.unsigned_abs()) as usize;
        let headers = [
            (
                dtx::outbox::headers::EVENT_ID,
                dtx::Uuid::now_v7().to_string(),
            ),
            (dtx::outbox::headers::EVENT_TYPE, "Ticked".to_owned()),
            (dtx::outbox::headers::STREAM_ID, key.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.into_bytes()))
        .collect();
        batches[p].push(Record {
            key: Some(key.into_bytes()),
            value: Some(format!(r#"{{"n":{n}}}"#).into_bytes()),
            headers,
            timestamp: rskafka::chrono::Utc::now(),
        });
    }
    for (p, records) in batches.into_iter().enumerate() {
        let partition = client
            .partition_client(topic, i32::try_from(p)?, UnknownTopicHandling::Retry)
            .await?;
        for chunk in records.chunks(500) {
            partition
                .produce(chunk.to_vec(), Compression::NoCompression)
                .await?;
        }
    }
    Ok(())
}

async fn count(pool: &PgPool) -> Result<usize, BoxError> {
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM bench_kafka_effects")
        .fetch_one(pool)
        .await?;
    Ok(usize::try_from(n)?)
}

/// The consumer from start until every record's effect is committed.
async fn consume_dtx(brokers: &[String], pool: &PgPool, topic: &str) -> Result<Duration, BoxError> {
    let consumer = KafkaConsumer::connect(
        brokers.to_vec(),
        topic,
        Inbox::new(PgInbox::new(pool.clone())),
        Insert,
    )
    .await?
    .with_options(KafkaConsumerOptions {
        delivery: ConsumerOptions {
            batch_size: BATCH,
            ..ConsumerOptions::default()
        },
        fetch_wait: Duration::from_millis(100),
        ..KafkaConsumerOptions::default()
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let started = Instant::now();
    let run = tokio::spawn(async move {
        consumer
            .run(async {
                let _ = stopped.await;
            })
            .await
    });
    while count(pool).await? < RECORDS {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let took = started.elapsed();
    let _ = stop.send(());
    run.await??;
    Ok(took)
}

/// The hand-written consumer: per partition, fetch a batch, insert each record, commit.
async fn consume_baseline(
    client: &Client,
    pool: &PgPool,
    topic: &str,
) -> Result<Duration, BoxError> {
    let mut partitions = Vec::new();
    for p in 0..PARTITIONS {
        partitions.push(
            client
                .partition_client(topic, p, UnknownTopicHandling::Retry)
                .await?,
        );
    }
    let started = Instant::now();
    let tasks: Vec<_> = partitions
        .into_iter()
        .map(|partition| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut offset = partition.get_offset(OffsetAt::Earliest).await?;
                loop {
                    let (mut records, high_watermark) = partition
                        .fetch_records(offset, 1..4 * 1024 * 1024, 100)
                        .await?;
                    records.retain(|r| r.offset >= offset);
                    if records.is_empty() && offset >= high_watermark {
                        break;
                    }
                    records.truncate(BATCH);
                    let mut tx = pool.begin().await?;
                    for r in &records {
                        let header = |name: &str| {
                            r.record
                                .headers
                                .get(name)
                                .map(|v| String::from_utf8_lossy(v).into_owned())
                                .unwrap_or_default()
                        };
                        let id: dtx::Uuid = header(dtx::outbox::headers::EVENT_ID).parse()?;
                        sqlx::query(INSERT)
                            .bind("baseline")
                            .bind(id)
                            .bind(header(dtx::outbox::headers::STREAM_ID))
                            .execute(&mut *tx)
                            .await?;
                    }
                    tx.commit().await?;
                    if let Some(last) = records.last() {
                        offset = last.offset + 1;
                    }
                }
                Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
            })
        })
        .collect();
    for task in tasks {
        task.await?
            .map_err(|e| -> BoxError { e.to_string().into() })?;
    }
    let took = started.elapsed();
    let applied = count(pool).await?;
    if applied != RECORDS {
        return Err(format!("the baseline applied {applied} records of {RECORDS}").into());
    }
    Ok(took)
}
