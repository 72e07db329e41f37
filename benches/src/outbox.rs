//! Outbox rows: `append_1_outbox` (an append putting its event in the outbox in the same
//! statement vs a single-row INSERT), `outbox_latency` (append, then commit to publish through a
//! relay woken by `LISTEN/NOTIFY`, vs a single-row INSERT) and `outbox_relay_throughput` (time per
//! message relayed to the in-memory publisher vs a bare read of the same events from the feed with
//! a checkpoint (`bare_drain`)), and
//! `outbox_relay_throughput_kafka` (the same relayed to Kafka, `KAFKA_BROKERS` or
//! `127.0.0.1:9092`, vs the bare drain producing each drained batch with `rskafka`; skipped when no
//! broker answers), `outbox_relay_throughput_nats` (the same to NATS `JetStream`, `NATS_URL` or
//! `127.0.0.1:4222`, vs the bare drain publishing the same messages, headers included, each
//! batch pipelined, all acks awaited) and `outbox_relay_throughput_nats_payload_only` (the same
//! relay vs the drain publishing the payloads alone), and
//! `append_8_writers` / `append_8_writers_outbox` / `append_8_writers_outbox_writes` /
//! `append_8_writers_notify_each` / `append_8_writers_alone` / `append_8_writers_in_flight_2`
//! (8 concurrent writers: without the outbox, with it and a relay, with it and no relay, with it
//! and a `NOTIFY` in every append, without combining, combining with two statements in flight;
//! vs 8 concurrent raw INSERT writers), and `insert_1_row_8_writers_held` (the raw writers each
//! on a connection of its own, with no pool checkout per `INSERT`, vs the same raw writers).

use crate::{AccountEvent, BoxError, Options, Stats, deposit, pair, payload, report, to_i64};
use dtx::outbox::{MemoryPublisher, Publisher, RelayOptions};
use dtx::{EventMetadata, EventStore, ExpectedVersion, NewEvent, StreamId};
use dtx_postgres::{Combining, PgEventStore, PgOutbox};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use std::time::{Duration, Instant};

/// The baseline of the relay throughput rows: the same events read without dtx, 100 at a time,
/// from the global feed after the last position read ($1, $2), which the same statement records
/// in a checkpoint row (`bench_feed`, created by [`relay_vs_drain`]). `columns`: the event's
/// columns read besides its stream, id and payload (the NATS baseline's headers need its
/// metadata).
fn bare_drain(columns: &str) -> String {
    format!(
        "WITH batch AS (
            SELECT stream_id AS stream_key, event_id, data::text AS payload, commit_order,
                   global_position{columns}
            FROM event_store
            WHERE (commit_order, global_position) > ($1, $2)
              AND commit_order < pg_snapshot_xmin(pg_current_snapshot())::text::bigint
              AND outbox
            ORDER BY commit_order, global_position LIMIT 100),
        moved AS (
            UPDATE bench_feed SET (commit_order, global_position) = (
                SELECT commit_order, global_position FROM batch
                ORDER BY commit_order DESC, global_position DESC LIMIT 1)
            WHERE EXISTS (SELECT 1 FROM batch))
        SELECT * FROM batch ORDER BY commit_order, global_position"
    )
}

/// The metadata columns [`bare_drain`] reads for the NATS baseline's headers.
const METADATA_COLUMNS: &str =
    ", event_type, schema_version, correlation_id, causation_id, traceparent";

/// Moves the bare drain's checkpoint to the end of the feed.
const BARE_SKIP: &str = "UPDATE bench_feed SET (commit_order, global_position) = (
        SELECT COALESCE(max(commit_order), 0), COALESCE(max(global_position), 0) FROM event_store)
    RETURNING commit_order, global_position";

/// Publishes whatever the outbox holds (untimed), so that a row starts from an empty outbox.
async fn catch_up(outbox: &PgOutbox) -> Result<(), BoxError> {
    outbox
        .relay(MemoryPublisher::new(), RelayOptions::default())
        .run_until_idle()
        .await?;
    Ok(())
}

fn encoded(stream: &StreamId, n: u64) -> NewEvent {
    NewEvent::encode(
        stream,
        &AccountEvent::Deposited(deposit(n)),
        EventMetadata::default(),
    )
    .expect("encodes")
}

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
        catch_up(&outbox).await?;
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
        let row = relay_vs_drain(
            pool,
            &store,
            &outbox,
            "Bench-relay",
            MemoryPublisher::new(),
            &[&bare_drain("")],
            async |_, _| Ok(()),
        )
        .await?;
        report_throughput(
            options,
            "outbox_relay_throughput",
            "bare_feed_drain",
            "the in-memory publisher",
            &row.first(),
        );
    }
    if EIGHT_WRITERS_ROWS.iter().any(|row| options.wants(row)) {
        eight_writers(options, pool).await?;
    }
    if options.wants("outbox_relay_throughput_kafka") {
        relay_throughput_kafka(options, pool, &store, &outbox).await?;
    }
    if options.wants("outbox_relay_throughput_nats") {
        relay_throughput_nats(options, pool, &store, &outbox).await?;
    }
    Ok(())
}

/// `outbox_relay_throughput_kafka`: 2000 messages of 20 streams relayed to a fresh 3-partition
/// topic, vs the bare feed drain producing each batch, one produce per partition.
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
    let row = relay_vs_drain(
        pool,
        store,
        outbox,
        "Bench-kafka",
        publisher,
        &[&bare_drain("")],
        async |_, rows| {
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
            Ok(())
        },
    )
    .await?;
    report_throughput(
        options,
        "outbox_relay_throughput_kafka",
        "drain_and_produce_batches",
        "Kafka",
        &row.first(),
    );
    client
        .controller_client()?
        .delete_topic(topic, 5_000)
        .await
        .ok();
    Ok(())
}

/// What one side of the 8-writer rows writes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Writer {
    /// Raw single-row INSERTs (the baseline).
    Raw,
    /// One-event appends.
    Append,
    /// One-event appends with the outbox (a relay publishing, wake-ups on).
    Outbox,
    /// The same appends with no relay running: what the writes alone cost.
    OutboxWrites,
    /// The same appends while a relay stays armed, so that every one of them sends a `NOTIFY`
    /// (and takes the lock that serialises committing notifiers): what waking the relay on every
    /// write would cost.
    NotifyEach,
    /// One-event appends with combining off: each its own statement and commit.
    Alone,
    /// One-event appends combined with two statements in flight.
    InFlight2,
    /// Raw single-row INSERTs, each writer on a connection of its own kept for the whole side:
    /// no pool checkout (and so no ping of the connection, sqlx's default) per `INSERT`.
    RawHeld,
}

/// The rows of [`eight_writers`], in the order of its sides after the raw writers; a filter
/// runs the sides whose rows it names (`8_writers_outbox`: the three outbox rows), and always
/// the raw writers.
const EIGHT_WRITERS_ROWS: [&str; 7] = [
    "append_8_writers",
    "append_8_writers_outbox",
    "append_8_writers_outbox_writes",
    "append_8_writers_notify_each",
    "append_8_writers_alone",
    "append_8_writers_in_flight_2",
    "insert_1_row_8_writers_held",
];

/// Events per second from 8 writers of one kind for `run_for`.
async fn eight_writers_rate(
    wide: &PgPool,
    writer: Writer,
    round: usize,
    run_for: Duration,
) -> Result<f64, BoxError> {
    const WRITERS: u64 = 8;
    let plain = PgEventStore::new(wide.clone()).with_combining(match writer {
        Writer::Alone => Combining::off(),
        Writer::InFlight2 => Combining::on().max_in_flight(2),
        _ => Combining::on(),
    });
    let outbox = plain.clone().with_outbox(true);
    let until = Instant::now() + run_for;
    let run = uuid::Uuid::now_v7();
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = if matches!(
                writer,
                Writer::Outbox | Writer::OutboxWrites | Writer::NotifyEach
            ) {
                outbox.clone()
            } else {
                plain.clone()
            };
            let wide = wide.clone();
            tokio::spawn(async move {
                let stream =
                    StreamId::new(format!("Bench-8w-{round}-{w}-{run}")).expect("stream id");
                let baseline = format!("baseline-8w-{run}-{w}");
                let mut held = if writer == Writer::RawHeld {
                    Some(wide.acquire().await.expect("connection"))
                } else {
                    None
                };
                let mut n = 0u64;
                while Instant::now() < until {
                    if let Some(conn) = held.as_mut() {
                        raw_insert(&mut **conn, &baseline, n).await;
                    } else if writer == Writer::Raw {
                        raw_insert(&wide, &baseline, n).await;
                    } else {
                        store
                            .append(
                                &stream,
                                ExpectedVersion::Exact(n),
                                vec![encoded(&stream, n)],
                            )
                            .await
                            .expect("append");
                    }
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut written = 0;
    for task in tasks {
        written += task.await?;
    }
    if !matches!(writer, Writer::Raw | Writer::RawHeld | Writer::Alone) {
        let stats = if matches!(
            writer,
            Writer::Outbox | Writer::OutboxWrites | Writer::NotifyEach
        ) {
            outbox.combining_stats()
        } else {
            plain.combining_stats()
        };
        #[allow(clippy::cast_precision_loss, reason = "a mean")]
        let mean = stats.combined_appends as f64 / stats.combined_statements.max(1) as f64;
        eprintln!(
            "  {writer:?} {} appends: {} combined statements (mean {mean:.1} appends, largest {}), {} alone",
            written, stats.combined_statements, stats.largest_batch, stats.alone
        );
    }
    #[allow(clippy::cast_precision_loss, reason = "a rate")]
    Ok(written as f64 / run_for.as_secs_f64())
}

/// A raw writer's single-row `INSERT` of the `n`th row of `stream` into `baseline_events`.
async fn raw_insert<'c>(executor: impl sqlx::PgExecutor<'c>, stream: &str, n: u64) {
    sqlx::query(
        "INSERT INTO baseline_events (stream_id, version, data) VALUES ($1, $2, $3::jsonb)",
    )
    .bind(stream)
    .bind(to_i64(n) + 1)
    .bind(payload(n))
    .execute(executor)
    .await
    .expect("insert");
}

/// `append_8_writers` and `append_8_writers_outbox`: events per second from 8 concurrent writers
/// appending one event at a time with combining on (`Combining::on()`), without and with the
/// outbox (then a relay publishes to the
/// in-memory publisher, emptied between sides, wake-ups on), against 8 concurrent writers of raw
/// single-row INSERTs;
/// `append_8_writers_outbox_writes`, the outbox writes with no relay running (the backlog is
/// published after that side, untimed); `append_8_writers_notify_each`, the same writes
/// while the wake-up stays armed, so that every append notifies; `append_8_writers_alone`, the
/// plain appends with combining off (the store's default: every append its own statement and
/// commit), and `append_8_writers_in_flight_2`, combining with two statements in flight instead
/// of one; `insert_1_row_8_writers_held`, the raw writers each keeping one connection for the
/// whole side, against the raw writers on the pool (which pings a connection at every checkout):
/// divide an append row's ratio by it for that append against raw writers that pay no ping.
/// Five rounds of 2 s per side,
/// the order of the sides rotating, all on one 10-connection pool; each row reports the median
/// rates, and the median of its rounds' ratios to the raw writers of the same round.
async fn eight_writers(options: &Options, pool: &PgPool) -> Result<(), BoxError> {
    const ROUNDS: usize = 5;
    let run_for = Duration::from_secs(2);
    let wide = sqlx::postgres::PgPoolOptions::new()
        .max_connections(10)
        .connect_with((*pool.connect_options()).clone())
        .await?;
    catch_up(&PgOutbox::new(wide.clone())).await?;
    let publisher = MemoryPublisher::new();
    let relay = PgOutbox::new(wide.clone()).relay(publisher.clone(), RelayOptions::default());
    let sides = [
        Writer::Raw,
        Writer::Append,
        Writer::Outbox,
        Writer::OutboxWrites,
        Writer::NotifyEach,
        Writer::Alone,
        Writer::InFlight2,
        Writer::RawHeld,
    ];
    let mut rates: [Vec<f64>; 8] = Default::default();
    for round in 0..ROUNDS {
        for k in 0..sides.len() {
            let side = (round + k) % sides.len();
            if side > 0 && !options.wants(EIGHT_WRITERS_ROWS[side - 1]) {
                continue;
            }
            let relaying = (sides[side] == Writer::Outbox).then(|| {
                let relay = relay.clone();
                tokio::spawn(async move { relay.run(std::future::pending()).await })
            });
            // An armed relay's wake lock, held by hand: every outbox write then notifies.
            let armed = if sides[side] == Writer::NotifyEach {
                let mut conn = wide.acquire().await?.detach();
                dtx_postgres::outbox::hold_wake_lock(&mut conn).await?;
                Some(conn)
            } else {
                None
            };
            rates[side].push(eight_writers_rate(&wide, sides[side], round, run_for).await?);
            if let Some(relaying) = relaying {
                relaying.abort();
            }
            if let Some(conn) = armed {
                sqlx::Connection::close(conn).await?;
            }
            relay.run_until_idle().await?;
            // What the relay published is not kept from one side to the next: each side's relay
            // starts with an empty publisher, as a broker client keeps nothing.
            drop(publisher.take());
        }
    }
    let median = |mut r: Vec<f64>| {
        r.sort_by(f64::total_cmp);
        r.get(r.len() / 2).copied().unwrap_or_default()
    };
    // Each side against the raw writers of its own round (the rounds are 10 s apart, and this
    // machine drifts by tens of percent over a run).
    let round_ratios: Vec<Vec<f64>> = (1..sides.len())
        .map(|side| {
            rates[side]
                .iter()
                .zip(&rates[0])
                .map(|(rate, raw)| rate / raw)
                .collect()
        })
        .collect();
    let ratios: Vec<f64> = round_ratios.iter().cloned().map(median).collect();
    let [raw, rates @ ..] = rates.map(median);
    for (((name, rate), ratio), rounds) in EIGHT_WRITERS_ROWS
        .into_iter()
        .zip(rates)
        .zip(ratios)
        .zip(round_ratios)
    {
        if !options.wants(name) {
            continue;
        }
        let rounds: Vec<f64> = rounds.iter().map(|r| (r * 100.0).round() / 100.0).collect();
        if options.json {
            println!(
                "{}",
                serde_json::json!({
                    "name": name,
                    "events_per_s": rate.round(),
                    "baseline": "insert_1_row_8_writers",
                    "baseline_per_s": raw.round(),
                    "ratio": (ratio * 100.0).round() / 100.0,
                    "round_ratios": rounds,
                })
            );
        } else {
            let (low, high) = rounds.iter().fold((f64::INFINITY, 0.0_f64), |(lo, hi), r| {
                (lo.min(*r), hi.max(*r))
            });
            println!(
                "{name:<30} {rate:>6.0} events/s   {:<26} {raw:>8.0} rows/s   {ratio:>6.2}   (rounds {low:.2}–{high:.2})",
                "insert_1_row_8_writers",
            );
        }
    }
    Ok(())
}

/// `outbox_relay_throughput_nats`: 2000 messages of 20 streams relayed to a fresh `JetStream`
/// stream, vs the bare drain publishing the same messages, each batch pipelined and all acks
/// awaited: the payload, `Nats-Msg-Id` and the headers the relay sends with an event (its id,
/// type, stream and schema version, and its correlation, causation and trace context when it
/// has them), without the relay's chaining of each stream's messages
/// (`Nats-Expected-Last-Msg-Id`), which is part of what it costs. Also
/// `outbox_relay_throughput_nats_payload_only`: the same relay against the drain publishing the
/// payload and `Nats-Msg-Id` alone (the row's baseline before it carried the headers).
async fn relay_throughput_nats(
    options: &Options,
    pool: &PgPool,
    store: &PgEventStore,
    outbox: &PgOutbox,
) -> Result<(), BoxError> {
    use async_nats::jetstream;
    use dtx::outbox::headers;
    use dtx_postgres::nats::NatsPublisher;
    use sqlx::Row;

    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "127.0.0.1:4222".to_owned());
    let client = match tokio::time::timeout(Duration::from_secs(3), async_nats::connect(&url)).await
    {
        Ok(Ok(client)) => client,
        Ok(Err(e)) => {
            eprintln!("outbox_relay_throughput_nats skipped (no NATS server): {e}");
            return Ok(());
        }
        Err(e) => {
            eprintln!("outbox_relay_throughput_nats skipped (no NATS server): {e}");
            return Ok(());
        }
    };
    let js = jetstream::new(client.clone());
    let name = format!("DTX_BENCH_{}", uuid::Uuid::now_v7().simple());
    let prefix = name.to_lowercase();
    js.create_stream(jetstream::stream::Config {
        name: name.clone(),
        subjects: vec![format!("{prefix}.>")],
        ..jetstream::stream::Config::default()
    })
    .await?;
    let publisher = NatsPublisher::new(client, prefix);
    let subjects = publisher.clone();
    // Side 0 publishes the messages with their headers, side 1 the payload alone.
    let with_headers = bare_drain(METADATA_COLUMNS);
    let payload_only = bare_drain("");
    let rows = relay_vs_drain(
        pool,
        store,
        outbox,
        "Bench-nats",
        publisher,
        &[&with_headers, &payload_only],
        async |side, rows| {
            let mut acks = Vec::with_capacity(rows.len());
            for row in rows {
                let key: String = row.try_get("stream_key")?;
                let id: uuid::Uuid = row.try_get("event_id")?;
                let payload: String = row.try_get("payload")?;
                let mut message = jetstream::message::PublishMessage::build()
                    .payload(payload.into_bytes().into());
                if side == 0 {
                    let mut all = async_nats::HeaderMap::new();
                    all.insert(headers::EVENT_ID, id.to_string().as_str());
                    all.insert(
                        headers::EVENT_TYPE,
                        row.try_get::<String, _>("event_type")?.as_str(),
                    );
                    all.insert(headers::STREAM_ID, key.as_str());
                    all.insert(
                        headers::SCHEMA_VERSION,
                        row.try_get::<i32, _>("schema_version")?
                            .to_string()
                            .as_str(),
                    );
                    for (name, column) in [
                        (headers::CORRELATION_ID, "correlation_id"),
                        (headers::CAUSATION_ID, "causation_id"),
                    ] {
                        if let Some(id) = row.try_get::<Option<uuid::Uuid>, _>(column)? {
                            all.insert(name, id.to_string().as_str());
                        }
                    }
                    if let Some(traceparent) = row.try_get::<Option<String>, _>("traceparent")? {
                        all.insert(headers::TRACEPARENT, traceparent.as_str());
                    }
                    message = message.headers(all);
                }
                // After the headers, which would replace it.
                let message = message.message_id(id.to_string());
                acks.push(js.send_publish(subjects.subject(&key), message).await?);
            }
            for ack in acks {
                ack.await?;
            }
            Ok(())
        },
    )
    .await?;
    report_throughput(
        options,
        "outbox_relay_throughput_nats",
        "drain_and_publish_pipelined_with_headers",
        "NATS",
        &rows.first(),
    );
    report(
        options,
        "outbox_relay_throughput_nats_payload_only",
        "drain_and_publish_pipelined",
        &rows.side(1),
    );
    js.delete_stream(&name).await.ok();
    Ok(())
}

/// What [`relay_vs_drain`] measured: the relay's time per message, and each bare side's.
struct RelayRows {
    relayed: Stats,
    drained: Vec<Stats>,
}

impl RelayRows {
    /// The relay against the first bare side.
    fn first(&self) -> (Stats, Stats) {
        self.side(0)
    }

    /// The relay against bare side `side`.
    fn side(&self, side: usize) -> (Stats, Stats) {
        (self.relayed, self.drained[side])
    }
}

/// The relay throughput rows: three rounds of relaying a fresh backlog of 2000 messages (20
/// streams) through `publisher`, against draining one with each of the `drains` statements (see
/// [`bare_drain`]) and handing each drained batch to `bare` with the side's index; the time per
/// message of each side. The event table is analysed after each refill (untimed), so that every
/// side is planned on statistics of the table as it is.
async fn relay_vs_drain(
    pool: &PgPool,
    store: &PgEventStore,
    outbox: &PgOutbox,
    prefix: &str,
    publisher: impl Publisher + Clone,
    drains: &[&str],
    mut bare: impl AsyncFnMut(usize, Vec<PgRow>) -> Result<(), BoxError>,
) -> Result<RelayRows, BoxError> {
    const MESSAGES: u64 = 2000;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS bench_feed (commit_order BIGINT NOT NULL, global_position BIGINT NOT NULL);
         INSERT INTO bench_feed SELECT 0, 0 WHERE NOT EXISTS (SELECT 1 FROM bench_feed)",
    )
    .execute(pool)
    .await?;
    let mut relayed = Vec::new();
    let mut drained: Vec<Vec<Duration>> = vec![Vec::new(); drains.len()];
    for round in 0..3u64 {
        catch_up(outbox).await?;
        refill(pool, store, &format!("{prefix}-{round}-relay"), MESSAGES).await?;
        let started = Instant::now();
        let relay = outbox.relay(publisher.clone(), RelayOptions::default());
        relay.run_until_idle().await?;
        relayed.push(started.elapsed());

        for (side, drain) in drains.iter().enumerate() {
            let mut last: (i64, i64) = sqlx::query_as(BARE_SKIP).fetch_one(pool).await?;
            refill(
                pool,
                store,
                &format!("{prefix}-{round}-bare{side}"),
                MESSAGES,
            )
            .await?;
            let started = Instant::now();
            loop {
                let rows = sqlx::query(drain)
                    .bind(last.0)
                    .bind(last.1)
                    .fetch_all(pool)
                    .await?;
                let Some(end) = rows.last() else {
                    break;
                };
                last = (
                    end.try_get("commit_order")?,
                    end.try_get("global_position")?,
                );
                bare(side, rows).await?;
            }
            drained[side].push(started.elapsed());
        }
    }
    let per = u32::try_from(MESSAGES)?;
    Ok(RelayRows {
        relayed: Stats::of(relayed, per),
        drained: drained
            .into_iter()
            .map(|times| Stats::of(times, per))
            .collect(),
    })
}

/// Reports a relay throughput row, with its messages per second in the table.
fn report_throughput(
    options: &Options,
    name: &str,
    baseline: &str,
    to: &str,
    row: &(Stats, Stats),
) {
    if !options.json {
        println!("{:<22} {:.0} messages/s to {to}", "", 1e6 / row.0.p50_us);
    }
    report(options, name, baseline, row);
}

/// Appends `messages` events over 20 streams named `{prefix}-{n}`: the backlog the relay
/// throughput rows drain. Then analyses the event table, so that the side that follows is
/// planned on fresh statistics: on a small table never analysed the bare drain's statement gets
/// a plan that reads and sorts the whole table for every batch, twice as slow per message as
/// the index scan it gets on a table the size of a real feed (as in a full run, after the
/// other rows have appended).
async fn refill(
    pool: &PgPool,
    store: &PgEventStore,
    prefix: &str,
    messages: u64,
) -> Result<(), BoxError> {
    for s in 0..20u64 {
        let stream = StreamId::new(format!("{prefix}-{s}"))?;
        let events = (0..messages / 20).map(|k| encoded(&stream, k)).collect();
        store
            .append(&stream, ExpectedVersion::NoStream, events)
            .await?;
    }
    sqlx::query("ANALYZE event_store").execute(pool).await?;
    Ok(())
}
