//! Outbox rows: `append_1_outbox` (an append writing its outbox row in the same statement vs a
//! single-row INSERT), `outbox_latency` (append, then commit to publish through a relay woken by
//! `LISTEN/NOTIFY`, vs a single-row INSERT) and `outbox_relay_throughput` (time per message relayed
//! to the in-memory publisher vs a bare `UPDATE .. RETURNING` drain of the same rows), and
//! `outbox_relay_throughput_kafka` (the same relayed to Kafka, `KAFKA_BROKERS` or
//! `127.0.0.1:9092`, vs the bare drain producing each drained batch with `rskafka`; skipped when no
//! broker answers).

use crate::{AccountEvent, BoxError, Options, Stats, deposit, pair, payload, report, to_i64};
use dtx::outbox::{MemoryPublisher, RelayOptions};
use dtx::{EventMetadata, EventStore, ExpectedVersion, NewEvent, StreamId};
use dtx_postgres::{PgEventStore, PgOutbox};
use sqlx::PgPool;
use std::time::{Duration, Instant};

fn encoded(stream: &StreamId, n: u64) -> NewEvent {
    NewEvent::encode(
        stream,
        &AccountEvent::Deposited(deposit(n)),
        EventMetadata::default(),
    )
    .expect("encodes")
}

#[expect(clippy::too_many_lines, reason = "three rows, each read top to bottom")]
pub(crate) async fn outbox_rows(options: &Options, pool: &PgPool) -> Result<(), BoxError> {
    let store = PgEventStore::new(pool.clone()).with_outbox(true);
    let outbox = PgOutbox::new(pool.clone());
    let n = options.iterations;
    if options.wants("append_1_outbox") {
        let stream = StreamId::new("Bench-outbox-1")?;
        let row = pair(
            n,
            async |i| {
                store
                    .append(&stream, ExpectedVersion::Exact(i), vec![encoded(&stream, i)])
                    .await
                    .expect("append");
            },
            async |i| {
                sqlx::query("INSERT INTO baseline_events (stream_id, version, data) VALUES ($1, $2, $3::jsonb)")
                    .bind("baseline-outbox-1")
                    .bind(to_i64(i) + 1)
                    .bind(payload(i))
                    .execute(pool)
                    .await
                    .expect("insert");
            },
        )
        .await;
        report(options, "append_1_outbox", "insert_1_row", &row);
    }

    if options.wants("outbox_latency") {
        sqlx::query("DELETE FROM outbox_events")
            .execute(pool)
            .await?;
        let publisher = MemoryPublisher::new();
        let relay = outbox.relay(
            publisher.clone(),
            RelayOptions {
                poll_interval: Duration::from_secs(5),
                ..RelayOptions::default()
            },
        );
        let running = tokio::spawn(async move { relay.run(std::future::pending()).await });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let stream = StreamId::new("Bench-outbox-latency")?;
        let row = pair(
            n / 2,
            async |i| {
                let target = publisher.count() + 1;
                store
                    .append(&stream, ExpectedVersion::Exact(i), vec![encoded(&stream, i)])
                    .await
                    .expect("append");
                assert!(
                    publisher.wait_for(target, Duration::from_secs(10)).await,
                    "not published"
                );
            },
            async |i| {
                sqlx::query("INSERT INTO baseline_events (stream_id, version, data) VALUES ($1, $2, $3::jsonb)")
                    .bind("baseline-outbox-latency")
                    .bind(to_i64(i) + 1)
                    .bind(payload(i))
                    .execute(pool)
                    .await
                    .expect("insert");
            },
        )
        .await;
        running.abort();
        report(options, "outbox_latency", "insert_1_row", &row);
    }

    if options.wants("outbox_relay_throughput") {
        const MESSAGES: u64 = 2000;
        let mut dtx = Vec::new();
        let mut bare = Vec::new();
        for round in 0..3u64 {
            for side in 0..2 {
                refill(
                    pool,
                    &store,
                    &format!("Bench-relay-{round}-{side}"),
                    MESSAGES,
                )
                .await?;
                let started = Instant::now();
                if side == 0 {
                    let relay = outbox.relay(MemoryPublisher::new(), RelayOptions::default());
                    relay.run_until_idle().await?;
                    dtx.push(started.elapsed());
                } else {
                    loop {
                        let rows = sqlx::query(
                            "UPDATE outbox_events SET status = 'published', published_at = now()
                             WHERE id IN (SELECT id FROM outbox_events WHERE status = 'pending'
                                          ORDER BY id LIMIT 100 FOR UPDATE SKIP LOCKED)
                             RETURNING id, stream_key, payload::text",
                        )
                        .fetch_all(pool)
                        .await?;
                        if rows.is_empty() {
                            break;
                        }
                    }
                    bare.push(started.elapsed());
                }
            }
        }
        let per = u32::try_from(MESSAGES)?;
        let row = (Stats::of(dtx, per), Stats::of(bare, per));
        if !options.json {
            println!(
                "{:<22} {:.0} messages/s to the in-memory publisher",
                "",
                1e6 / row.0.p50_us
            );
        }
        report(
            options,
            "outbox_relay_throughput",
            "update_returning_drain",
            &row,
        );
    }
    if options.wants("append_8_writers_outbox") {
        eight_writers(options, pool).await?;
    }
    if options.wants("outbox_relay_throughput_kafka") {
        relay_throughput_kafka(options, pool, &store, &outbox).await?;
    }
    Ok(())
}

/// `outbox_relay_throughput_kafka`: 2000 messages of 20 streams relayed to a fresh 3-partition
/// topic, vs the bare `UPDATE .. RETURNING` drain producing each batch, one produce per partition.
#[expect(clippy::too_many_lines, reason = "one row, read top to bottom")]
async fn relay_throughput_kafka(
    options: &Options,
    pool: &PgPool,
    store: &PgEventStore,
    outbox: &PgOutbox,
) -> Result<(), BoxError> {
    use dtx_postgres::kafka::KafkaPublisher;
    use rskafka::client::partition::{Compression, UnknownTopicHandling};
    use rskafka::record::Record;
    use sqlx::Row;

    const MESSAGES: u64 = 2000;
    const PARTITIONS: i32 = 3;
    let brokers: Vec<String> = std::env::var("KAFKA_BROKERS")
        .unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
        .split(',')
        .map(str::to_owned)
        .collect();
    let topic = format!("dtx_bench_{}", dtx::Uuid::now_v7().simple());
    let publisher = match KafkaPublisher::connect_with_timeout(
        brokers.clone(),
        topic.clone(),
        Duration::from_secs(3),
    )
    .await
    {
        Ok(publisher) => publisher.with_timeout(Duration::from_secs(10)),
        Err(e) => {
            eprintln!("outbox_relay_throughput_kafka skipped (no Kafka broker): {e}");
            return Ok(());
        }
    };
    let client = rskafka::client::ClientBuilder::new(brokers).build().await?;
    client
        .controller_client()?
        .create_topic(topic.clone(), PARTITIONS, 1, 5_000)
        .await?;
    let mut partitions = Vec::new();
    for p in 0..PARTITIONS {
        partitions.push(
            client
                .partition_client(topic.clone(), p, UnknownTopicHandling::Retry)
                .await?,
        );
    }
    let mut dtx = Vec::new();
    let mut bare = Vec::new();
    for round in 0..3u64 {
        for side in 0..2 {
            refill(
                pool,
                store,
                &format!("Bench-kafka-{round}-{side}"),
                MESSAGES,
            )
            .await?;
            let started = Instant::now();
            if side == 0 {
                let relay = outbox.relay(publisher.clone(), RelayOptions::default());
                relay.run_until_idle().await?;
                dtx.push(started.elapsed());
            } else {
                loop {
                    let rows = sqlx::query(
                        "UPDATE outbox_events SET status = 'published', published_at = now()
                         WHERE id IN (SELECT id FROM outbox_events WHERE status = 'pending'
                                      ORDER BY id LIMIT 100 FOR UPDATE SKIP LOCKED)
                         RETURNING id, stream_key, payload::text",
                    )
                    .fetch_all(pool)
                    .await?;
                    if rows.is_empty() {
                        break;
                    }
                    let mut batches: Vec<Vec<Record>> = vec![Vec::new(); partitions.len()];
                    for row in rows {
                        let key: String = row.try_get("stream_key")?;
                        let payload: String = row.try_get("payload")?;
                        let p = KafkaPublisher::partition_for(&key, PARTITIONS.unsigned_abs());
                        batches[p as usize].push(Record {
                            key: Some(key.into_bytes()),
                            value: Some(payload.into_bytes()),
                            headers: std::collections::BTreeMap::new(),
                            timestamp: rskafka::chrono::Utc::now(),
                        });
                    }
                    for (partition, records) in partitions.iter().zip(batches) {
                        partition
                            .produce(records, Compression::NoCompression)
                            .await?;
                    }
                }
                bare.push(started.elapsed());
            }
        }
    }
    let per = u32::try_from(MESSAGES)?;
    let row = (Stats::of(dtx, per), Stats::of(bare, per));
    if !options.json {
        println!("{:<22} {:.0} messages/s to Kafka", "", 1e6 / row.0.p50_us);
    }
    report(
        options,
        "outbox_relay_throughput_kafka",
        "drain_and_produce_batches",
        &row,
    );
    client
        .controller_client()?
        .delete_topic(topic, 5_000)
        .await
        .ok();
    Ok(())
}

/// `append_8_writers_outbox`: events per second from 8 concurrent writers appending one event
/// at a time with the outbox on and a relay publishing (wake-ups on), against 8 concurrent
/// writers of raw single-row INSERTs, each side for the same time on its own 10-connection pool.
async fn eight_writers(options: &Options, pool: &PgPool) -> Result<(), BoxError> {
    const WRITERS: u64 = 8;
    let run_for = Duration::from_secs(3);
    let wide = sqlx::postgres::PgPoolOptions::new()
        .max_connections(10)
        .connect_with((*pool.connect_options()).clone())
        .await?;
    sqlx::query("DELETE FROM outbox_events")
        .execute(&wide)
        .await?;
    let store = PgEventStore::new(wide.clone()).with_outbox(true);
    let relay = PgOutbox::new(wide.clone()).relay(MemoryPublisher::new(), RelayOptions::default());
    let relaying = tokio::spawn(async move { relay.run(std::future::pending()).await });

    let until = Instant::now() + run_for;
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let stream = StreamId::new(format!("Bench-8w-{w}-{}", uuid::Uuid::now_v7()))
                    .expect("stream id");
                let mut n = 0u64;
                while Instant::now() < until {
                    store
                        .append(
                            &stream,
                            ExpectedVersion::Exact(n),
                            vec![encoded(&stream, n)],
                        )
                        .await
                        .expect("append");
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut appended = 0;
    for writer in writers {
        appended += writer.await?;
    }
    relaying.abort();

    let until = Instant::now() + run_for;
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let wide = wide.clone();
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < until {
                    sqlx::query("INSERT INTO baseline_events (stream_id, version, data) VALUES ($1, $2, $3::jsonb)")
                        .bind(format!("baseline-8w-{w}"))
                        .bind(to_i64(n) + 1_000_000 * to_i64(w + 1))
                        .bind(payload(n))
                        .execute(&wide)
                        .await
                        .expect("insert");
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut inserted = 0;
    for writer in writers {
        inserted += writer.await?;
    }
    #[allow(clippy::cast_precision_loss, reason = "rates")]
    let (dtx, base) = (
        appended as f64 / run_for.as_secs_f64(),
        inserted as f64 / run_for.as_secs_f64(),
    );
    if options.json {
        println!(
            "{}",
            serde_json::json!({
                "name": "append_8_writers_outbox",
                "events_per_s": dtx.round(),
                "baseline": "insert_1_row_8_writers",
                "baseline_per_s": base.round(),
                "ratio": (dtx / base * 100.0).round() / 100.0,
            })
        );
    } else {
        println!(
            "{:<22} {dtx:>10.0} events/s   {:<26} {base:>10.0} rows/s   {:>6.2}",
            "append_8_writers_outbox",
            "insert_1_row_8_writers",
            dtx / base
        );
    }
    Ok(())
}

/// Empties the outbox and appends `messages` events over 20 streams named `{prefix}-{n}`: the
/// backlog the relay throughput rows drain.
async fn refill(
    pool: &PgPool,
    store: &PgEventStore,
    prefix: &str,
    messages: u64,
) -> Result<(), BoxError> {
    sqlx::query("DELETE FROM outbox_events")
        .execute(pool)
        .await?;
    for s in 0..20u64 {
        let stream = StreamId::new(format!("{prefix}-{s}"))?;
        let events = (0..messages / 20).map(|k| encoded(&stream, k)).collect();
        store
            .append(&stream, ExpectedVersion::NoStream, events)
            .await?;
    }
    Ok(())
}
