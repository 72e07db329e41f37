//! Inbox rows: `inbox_consume_nats` — messages per second from NATS `JetStream` (`NATS_URL` or
//! `127.0.0.1:4222`) through [`NatsConsumer`] into a PostgreSQL insert (the inbox record and
//! the handler's row in one transaction, ack after commit), vs a hand-written consumer of the
//! same messages: fetch a batch of the same size, then per message insert the row, commit,
//! ack. Rounds of 2000 messages (20 keys), the two sides alternating; the time per message of
//! each side. Skipped when no NATS server answers.

use crate::{BoxError, Options, Stats, report};
use async_nats::jetstream::{self, consumer};
use dtx::inbox::{Consumer, ConsumerOptions, InboundMessage, Inbox};
use dtx::outbox::headers;
use dtx::projection::HandlerError;
use dtx::uow::{BoxFuture, UnitOfWork};
use dtx_postgres::nats::{NatsConsumer, NatsConsumerConfig};
use dtx_postgres::{PgInbox, PgUnitOfWork};
use futures_util::StreamExt as _;
use sqlx::PgPool;
use std::time::{Duration, Instant};

/// Messages per round and side.
const MESSAGES: usize = 2000;
/// Messages per fetch, on both sides.
const BATCH: usize = 100;
const ROUNDS: usize = 5;

/// The effect both sides write per message.
const INSERT: &str =
    "INSERT INTO bench_nats_effects (message_id, key, payload) VALUES ($1, $2, $3::jsonb)";

/// Inserts one row per message in the inbox's unit of work.
struct Effects;

impl Consumer for Effects {
    const NAME: &'static str = "bench_effects";

    fn event_types() -> &'static [&'static str] {
        &["Deposited"]
    }

    fn handle<'a>(
        &'a self,
        message: &'a InboundMessage,
        uow: &'a mut dyn UnitOfWork,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let conn = PgUnitOfWork::connection_of(uow)
                .await
                .map_err(HandlerError::failed)?;
            sqlx::query(INSERT)
                .bind(message.message_id)
                .bind(message.key.as_deref().unwrap_or(""))
                .bind(message.payload_text().unwrap_or("null"))
                .execute(conn)
                .await
                .map_err(HandlerError::failed)?;
            Ok(())
        })
    }
}

pub(crate) async fn inbox_rows(options: &Options, pool: &PgPool) -> Result<(), BoxError> {
    if !options.wants("inbox_consume_nats") {
        return Ok(());
    }
    let Some(client) = connect().await else {
        return Ok(());
    };
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS bench_nats_effects (
            message_id UUID NOT NULL, key TEXT NOT NULL, payload JSONB NOT NULL)",
    )
    .execute(pool)
    .await?;
    let js = jetstream::new(client.clone());
    let name = format!("DTX_BENCH_INBOX_{}", uuid::Uuid::now_v7().simple());
    let prefix = name.to_lowercase();
    let stream = js
        .create_stream(jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![format!("{prefix}.>")],
            ..jetstream::stream::Config::default()
        })
        .await?;

    let dtx = NatsConsumer::new(
        client,
        Inbox::new(PgInbox::new(pool.clone())),
        Effects,
        NatsConsumerConfig::new(&name, "bench-dtx")
            .filter_subject(format!("{prefix}.dtx.>"))
            .options(ConsumerOptions {
                batch_size: BATCH,
                ..ConsumerOptions::default()
            }),
    );
    dtx.ensure().await?;
    let bare = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("bench-bare".to_owned()),
            ack_policy: consumer::AckPolicy::Explicit,
            filter_subject: format!("{prefix}.bare.>"),
            max_ack_pending: i64::try_from(BATCH)?,
            ..consumer::pull::Config::default()
        })
        .await?;

    let (mut dtx_times, mut bare_times) = (Vec::new(), Vec::new());
    for round in 0..=ROUNDS {
        publish(&js, &format!("{prefix}.dtx"), round).await?;
        let started = Instant::now();
        let stats = dtx.run_until_idle().await?;
        let dtx_time = started.elapsed();
        if stats.applied != MESSAGES {
            return Err(format!(
                "inbox_consume_nats: applied {} of {MESSAGES}",
                stats.applied
            )
            .into());
        }

        publish(&js, &format!("{prefix}.bare"), round).await?;
        let started = Instant::now();
        let consumed = consume_bare(&bare, pool).await?;
        let bare_time = started.elapsed();
        if consumed != MESSAGES {
            return Err(
                format!("inbox_consume_nats: the baseline got {consumed} of {MESSAGES}").into(),
            );
        }
        // The first round warms both up.
        if round > 0 {
            dtx_times.push(dtx_time);
            bare_times.push(bare_time);
        }
    }
    let per = u32::try_from(MESSAGES)?;
    let row = (Stats::of(dtx_times, per), Stats::of(bare_times, per));
    if !options.json {
        println!(
            "{:<22} {:.0} messages/s from NATS vs {:.0} bare (throughput ratio {:.2})",
            "",
            1e6 / row.0.p50_us,
            1e6 / row.1.p50_us,
            row.1.p50_us / row.0.p50_us
        );
    }
    report(
        options,
        "inbox_consume_nats",
        "fetch_insert_commit_ack",
        &row,
    );
    js.delete_stream(&name).await.ok();
    Ok(())
}

/// The NATS client, or `None` (the row skipped, said on stderr) when no server answers.
async fn connect() -> Option<async_nats::Client> {
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "127.0.0.1:4222".to_owned());
    match tokio::time::timeout(Duration::from_secs(3), async_nats::connect(&url)).await {
        Ok(Ok(client)) => Some(client),
        Ok(Err(e)) => {
            eprintln!("inbox_consume_nats skipped (no NATS server): {e}");
            None
        }
        Err(e) => {
            eprintln!("inbox_consume_nats skipped (no NATS server): {e}");
            None
        }
    }
}

/// Publishes a round's messages to `{subject}.{key}` with dtx's headers, all acks awaited.
async fn publish(js: &jetstream::Context, subject: &str, round: usize) -> Result<(), BoxError> {
    let mut acks = Vec::with_capacity(MESSAGES);
    for n in 0..MESSAGES {
        let key = format!("Bench-{round}-{}", n % 20);
        let id = uuid::Uuid::now_v7();
        let mut h = async_nats::HeaderMap::new();
        h.insert(headers::EVENT_ID, id.to_string().as_str());
        h.insert(headers::EVENT_TYPE, "Deposited");
        h.insert(headers::STREAM_ID, key.as_str());
        let message = jetstream::message::PublishMessage::build()
            .payload(crate::payload(n as u64).into_bytes().into())
            .headers(h)
            .message_id(id.to_string());
        acks.push(js.send_publish(format!("{subject}.{key}"), message).await?);
    }
    for ack in acks {
        ack.await?;
    }
    Ok(())
}

/// The baseline: batches of [`BATCH`] fetched until none is left; per message, the row inserted
/// in a transaction of its own, committed, then acked.
async fn consume_bare(bare: &consumer::PullConsumer, pool: &PgPool) -> Result<usize, BoxError> {
    let mut consumed = 0;
    loop {
        let mut messages = bare.fetch().max_messages(BATCH).messages().await?;
        let mut fetched = 0;
        while let Some(message) = messages.next().await {
            let message = message.map_err(|e| -> BoxError { e })?;
            fetched += 1;
            let h = message.headers.as_ref().ok_or("no headers")?;
            let id: uuid::Uuid = h.get(headers::EVENT_ID).ok_or("no id")?.as_str().parse()?;
            let key = h.get(headers::STREAM_ID).map_or("", |v| v.as_str());
            let mut tx = pool.begin().await?;
            sqlx::query(INSERT)
                .bind(id)
                .bind(key)
                .bind(std::str::from_utf8(&message.payload)?)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            message.ack().await.map_err(|e| -> BoxError { e })?;
        }
        if fetched == 0 {
            return Ok(consumed);
        }
        consumed += fetched;
    }
}
