//! `two_services_roundtrip`: the services of the `two_services` example (an order service and a
//! payment service, each on a database of its own, talking through NATS `JetStream`), run as
//! tasks of this process. One sample: from `POST /orders` to the fulfilment saga's completion
//! seen through `GET /sagas/{id}` (polled every millisecond): the HTTP request, its commit,
//! the saga's four steps, the outbox relay to NATS, the payment service's inbox, command and
//! outbox, NATS again, the order service's inbox delivering the answer to the saga.
//!
//! Baseline (`bare_two_hops`): the least a request that crosses to another service and back
//! does, by hand: an INSERT and commit, a `JetStream` publish (acknowledged), the other side's
//! pull, INSERT, commit, ack and publish back, and this side's pull, INSERT, commit and ack.

use crate::{BoxError, Options, Stats, report};
use async_nats::jetstream;
use examples::two_services::{self, OrderClient, Shutdown};
use futures_util::StreamExt as _;
use sqlx::PgPool;
use std::time::{Duration, Instant};

const SAMPLES: usize = 60;
const WARM_UP: usize = 5;

pub(crate) async fn two_services_rows(options: &Options) -> Result<(), BoxError> {
    if !options.wants("two_services_roundtrip") {
        return Ok(());
    }
    two_services::set_verbose(false);
    let (orders_db, payments_db, transport) =
        two_services::prepare("dtx_bench_two_services", false)
            .await
            .map_err(|e| e.to_string())?;
    let (stop, shutdown) = Shutdown::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let orders = tokio::spawn({
        let (shutdown, transport) = (shutdown.clone(), transport.clone());
        async move {
            two_services::order_service(&orders_db, &transport, listener, shutdown)
                .await
                .map_err(|e| e.to_string())
        }
    });
    let payments = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            two_services::payment_service(&payments_db, &transport, shutdown)
                .await
                .map_err(|e| e.to_string())
        }
    });
    let http = OrderClient::new(port);
    let deadline = Instant::now() + Duration::from_mins(1);
    while !http.ready().await {
        if Instant::now() > deadline {
            return Err("the order service did not start".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let hops = BareHops::new().await?;

    let (mut dtx, mut bare) = (Vec::new(), Vec::new());
    for i in 0..WARM_UP + SAMPLES {
        let started = Instant::now();
        let placed = http
            .place(&uuid::Uuid::now_v7().to_string(), "bench", 1_000)
            .await
            .map_err(|e| e.to_string())?;
        let saga = placed.body["saga_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let done = http
            .finished(&saga, Duration::from_millis(1), Duration::from_mins(1))
            .await
            .map_err(|e| e.to_string())?;
        let took = started.elapsed();
        if done["status"] != "completed" {
            return Err(format!("saga {saga} ended {}", done["status"]).into());
        }
        let by_hand = hops.roundtrip(i).await?;
        if i >= WARM_UP {
            dtx.push(took);
            bare.push(by_hand);
        }
    }
    let _ = stop.send(true);
    orders.await??;
    payments.await??;
    report(
        options,
        "two_services_roundtrip",
        "bare_two_hops",
        &(Stats::of(dtx, 1), Stats::of(bare, 1)),
    );
    Ok(())
}

/// The baseline: a hand-written request to another "service" and its answer, through `JetStream`
/// and PostgreSQL (the other side runs as a task).
struct BareHops {
    pool: PgPool,
    jetstream: jetstream::Context,
    answers: jetstream::consumer::PullConsumer,
}

impl BareHops {
    async fn new() -> Result<Self, BoxError> {
        let pool =
            PgPool::connect(&two_services::database_url("dtx_bench_two_services_orders")).await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS bare_hops (id BIGINT NOT NULL, side TEXT NOT NULL)",
        )
        .execute(&pool)
        .await?;
        let client = async_nats::connect(two_services::nats_url()).await?;
        let jetstream = jetstream::new(client);
        let _ = jetstream.delete_stream("BENCH_BARE_HOPS").await;
        let stream = jetstream
            .create_stream(jetstream::stream::Config {
                name: "BENCH_BARE_HOPS".to_owned(),
                subjects: vec!["bench-bare-hops.>".to_owned()],
                ..Default::default()
            })
            .await?;
        let pull = |name: &str, subject: &str| jetstream::consumer::pull::Config {
            durable_name: Some(name.to_owned()),
            filter_subject: subject.to_owned(),
            ..Default::default()
        };
        let requests = stream
            .create_consumer(pull("requests", "bench-bare-hops.request"))
            .await?;
        let answers = stream
            .create_consumer(pull("answers", "bench-bare-hops.answer"))
            .await?;
        // The other side: take a request, record it, answer.
        let (other_pool, other_js) = (pool.clone(), jetstream.clone());
        tokio::spawn(async move {
            let Ok(mut messages) = requests.messages().await else {
                return;
            };
            while let Some(Ok(message)) = messages.next().await {
                let id: i64 = std::str::from_utf8(&message.payload)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_default();
                let Ok(mut tx) = other_pool.begin().await else {
                    return;
                };
                let inserted =
                    sqlx::query("INSERT INTO bare_hops (id, side) VALUES ($1, 'payments')")
                        .bind(id)
                        .execute(&mut *tx)
                        .await;
                if inserted.is_err() || tx.commit().await.is_err() || message.ack().await.is_err() {
                    return;
                }
                let Ok(ack) = other_js
                    .publish("bench-bare-hops.answer", id.to_string().into())
                    .await
                else {
                    return;
                };
                if ack.await.is_err() {
                    return;
                }
            }
        });
        Ok(Self {
            pool,
            jetstream,
            answers,
        })
    }

    async fn roundtrip(&self, i: usize) -> Result<Duration, BoxError> {
        let id = i64::try_from(i)?;
        let started = Instant::now();
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT INTO bare_hops (id, side) VALUES ($1, 'orders')")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.jetstream
            .publish("bench-bare-hops.request", id.to_string().into())
            .await?
            .await?;
        loop {
            let mut batch = self
                .answers
                .fetch()
                .max_messages(1)
                .expires(Duration::from_secs(5))
                .messages()
                .await?;
            if let Some(message) = batch.next().await {
                let message = message.map_err(|e| e.to_string())?;
                let mut tx = self.pool.begin().await?;
                sqlx::query("INSERT INTO bare_hops (id, side) VALUES ($1, 'answer')")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                message.ack().await.map_err(|e| e.to_string())?;
                return Ok(started.elapsed());
            }
        }
    }
}
