//! The NATS `JetStream` inbox consumer against the real NATS server (`NATS_URL`, default
//! `127.0.0.1:4222`) and PostgreSQL: a consumer process killed with SIGKILL again and again
//! still applies every message exactly once and skips the redeliveries; poison and failing
//! messages are dead-lettered in the database while the others flow, then requeued and applied
//! once; per-key order is kept, across a clean stop too.
//!
//! Every test has a stream and a database of its own, and waits for conditions (never for a
//! fixed time) with generous deadlines.

#![allow(
    clippy::unwrap_used,
    clippy::too_many_lines,
    clippy::similar_names,
    reason = "tests"
)]

use async_nats::jetstream;
use dtx::inbox::{Consumer, ConsumerOptions, InboundMessage, Inbox, InboxStore};
use dtx::outbox::headers;
use dtx::projection::HandlerError;
use dtx::uow::{BoxFuture, UnitOfWork};
use dtx_postgres::PgInbox;
use dtx_postgres::nats::{NatsConsumer, NatsConsumerConfig};
use sqlx::PgPool;
use std::collections::HashMap;
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tests::inbox_nats::{
    EFFECTS, EffectWriter, TICKED, decode, fresh_stream, nats, publish, publish_raw, ticked,
    write_effect,
};
use uuid::Uuid;

/// Polls `condition` every 50 ms until it holds, or panics naming `what` after `deadline`.
async fn wait_until(what: &str, deadline: Duration, mut condition: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !condition().await {
        assert!(
            started.elapsed() < deadline,
            "gave up after {deadline:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn database() -> PgPool {
    let pool = dtx_postgres::testing::fresh_database(8)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "PostgreSQL at {} is needed for this test: {e}",
                dtx_postgres::testing::database_url()
            )
        });
    sqlx::raw_sql(EFFECTS).execute(&pool).await.unwrap();
    pool
}

async fn effects(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM inbox_effects")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Whether the durable consumer has every message of its stream acknowledged (or
/// terminated): nothing pending, nothing waiting for an ack.
async fn drained(js: &jetstream::Context, stream: &str, durable: &str) -> bool {
    let info = js
        .get_stream(stream)
        .await
        .unwrap()
        .consumer_info(durable)
        .await
        .unwrap();
    info.num_pending == 0 && info.num_ack_pending == 0
}

/// Per key, the sequence numbers of the effects in the order they committed; panics unless
/// each key's run is exactly 1, 2, 3, ...
async fn assert_in_order(pool: &PgPool) -> usize {
    let rows: Vec<(String, i64)> = sqlx::query_as("SELECT key, seq FROM inbox_effects ORDER BY n")
        .fetch_all(pool)
        .await
        .unwrap();
    let mut last: HashMap<String, i64> = HashMap::new();
    for (key, seq) in rows {
        let before = last.insert(key.clone(), seq).unwrap_or(0);
        assert_eq!(seq, before + 1, "{key}: {seq} applied after {before}");
    }
    last.len()
}

fn spawn_worker(url: &str, stream: &str, durable: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_inbox_nats_worker"))
        .env("DATABASE_URL", url)
        .env("NATS_STREAM", stream)
        .env("NATS_DURABLE", durable)
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_killed_8_times_applies_10_000_messages_exactly_once() {
    const MESSAGES: i64 = 10_000;
    const KEYS: i64 = 100;
    const KILLS: usize = 8;
    /// Every `COPY_EVERY`-th message is published a second time, `COPY_LAG` messages later,
    /// with the same `dtx-event-id` and another `Nats-Msg-Id`: a redelivery `JetStream` keeps.
    const COPY_EVERY: i64 = 97;
    const COPY_LAG: i64 = 250;
    /// The worker's batch size (`inbox_nats_worker`).
    const BATCH: usize = 50;

    let pool = database().await;
    let client = nats().await;
    let js = jetstream::new(client);
    let (stream, prefix) = fresh_stream(&js, "CRASH").await;
    let durable = "crash-effects";

    let mut ids = Vec::with_capacity(usize::try_from(MESSAGES).unwrap());
    let mut acks = Vec::new();
    let mut copies = 0;
    for i in 0..MESSAGES + COPY_LAG {
        if i < MESSAGES {
            let (key, seq, id) = (format!("K{}", i % KEYS), i / KEYS + 1, Uuid::now_v7());
            ids.push((key.clone(), seq, id));
            acks.push(publish(&js, &prefix, &key, id, Uuid::now_v7(), ticked(seq)).await);
        }
        let original = i - COPY_LAG;
        if original >= 0 && original % COPY_EVERY == 0 {
            let (key, seq, id) = &ids[usize::try_from(original).unwrap()];
            acks.push(publish(&js, &prefix, key, *id, Uuid::now_v7(), ticked(*seq)).await);
            copies += 1;
        }
        if acks.len() >= 1000 {
            for ack in acks.drain(..) {
                ack.await.unwrap();
            }
        }
    }
    for ack in acks {
        ack.await.unwrap();
    }

    let url = tests::database_url(&pool);
    let mut worker = spawn_worker(&url, &stream, durable);
    let mut rng = 0x1b0c_5eed_u64;
    for kill in 0..KILLS {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        // Some progress since the last start (the first batches of a restarted worker are
        // what the killed one held), then a kill at a moment the worker is busy.
        let target = effects(&pool).await + 100 + i64::try_from(rng % 700).unwrap();
        wait_until(
            &format!(
                "the worker applied {target} messages before kill {}",
                kill + 1
            ),
            Duration::from_mins(2),
            async || effects(&pool).await >= target.min(MESSAGES),
        )
        .await;
        assert!(
            effects(&pool).await < MESSAGES,
            "the messages ran out before kill {}: the test kills too late",
            kill + 1
        );
        worker.kill().unwrap(); // SIGKILL
        worker.wait().unwrap();
        worker = spawn_worker(&url, &stream, durable);
    }
    wait_until(
        "every message is applied and acknowledged",
        Duration::from_mins(3),
        async || effects(&pool).await >= MESSAGES && drained(&js, &stream, durable).await,
    )
    .await;
    worker.kill().unwrap();
    worker.wait().unwrap();

    let (rows, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT message_id) FROM inbox_effects")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        (rows, distinct),
        (MESSAGES, MESSAGES),
        "every message's effect exactly once"
    );
    let recorded: i64 =
        sqlx::query_scalar("SELECT count(*) FROM inbox_messages WHERE consumer = 'effects'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(recorded, MESSAGES);
    let inbox = PgInbox::new(pool.clone());
    assert_eq!(inbox.dead_letters(None).await.unwrap(), Vec::new());
    // Order: a crash lets later messages of a key pass those the killed worker held unacked
    // (they come back after `ack_wait`); how many is bounded by what it had acknowledged of
    // its last batch (`max_ack_pending` = the batch size).
    let rows: Vec<(String, i64)> = sqlx::query_as("SELECT key, seq FROM inbox_effects ORDER BY n")
        .fetch_all(&pool)
        .await
        .unwrap();
    let mut highest: HashMap<String, i64> = HashMap::new();
    let mut overtaken = 0;
    for (key, seq) in rows {
        let high = highest.entry(key).or_insert(0);
        if seq < *high {
            overtaken += 1;
        }
        *high = (*high).max(seq);
    }
    assert_eq!(highest.len(), usize::try_from(KEYS).unwrap());
    assert!(
        overtaken <= KILLS * BATCH,
        "{overtaken} messages applied after a later one of their key"
    );

    // JetStream counts every delivery (a redelivery gets a new consumer sequence).
    let info = js
        .get_stream(&stream)
        .await
        .unwrap()
        .consumer_info(durable)
        .await
        .unwrap();
    let deliveries = info.delivered.consumer_sequence;
    let stored = u64::try_from(MESSAGES).unwrap() + copies;
    assert_eq!(info.delivered.stream_sequence, stored);
    let redelivered = deliveries - stored;
    println!(
        "{KILLS} SIGKILLs; {stored} messages in the stream ({copies} published twice), {deliveries} deliveries ({redelivered} redeliveries after kills), {} deliveries beyond one per message, none applied twice: {MESSAGES} effects, {overtaken} applied after a later one of their key",
        deliveries - u64::try_from(MESSAGES).unwrap()
    );
    assert!(
        redelivered > 0,
        "no kill hit a worker holding messages: the test did not test"
    );
    js.delete_stream(&stream).await.unwrap();
}

/// A consumer whose handler refuses one message until it is "fixed", and whose decoding
/// refuses anything but a `Ticked` until then.
struct Flaky {
    failing: Uuid,
    fixed: Arc<AtomicBool>,
}

impl Consumer for Flaky {
    const NAME: &'static str = "flaky";

    fn event_types() -> &'static [&'static str] {
        &[TICKED]
    }

    fn handle<'a>(
        &'a self,
        message: &'a InboundMessage,
        uow: &'a mut dyn UnitOfWork,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let fixed = self.fixed.load(Ordering::SeqCst);
            let ticked = match decode(message) {
                Ok(ticked) => ticked,
                // The fix: a payload that is not JSON is a note, applied as seq 0.
                Err(_) if fixed => tests::inbox_nats::Ticked { seq: 0 },
                Err(e) => return Err(e),
            };
            if message.message_id == self.failing && !fixed {
                return Err(HandlerError::failed("the payment service refuses it"));
            }
            write_effect(uow, message, ticked).await
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_and_failing_messages_are_dead_lettered_while_the_others_flow_then_requeued() {
    const KEYS: i64 = 10;
    const PER_KEY: i64 = 20;
    let good = KEYS * PER_KEY;
    let pool = database().await;
    let client = nats().await;
    let js = jetstream::new(client.clone());
    let (stream, prefix) = fresh_stream(&js, "POISON").await;
    let durable = "flaky";

    // First the bad ones, so that the good ones flow while they are retried.
    let failing = Uuid::now_v7();
    let poison = Uuid::now_v7();
    publish(&js, &prefix, "F", failing, Uuid::now_v7(), ticked(1))
        .await
        .await
        .unwrap();
    publish(
        &js,
        &prefix,
        "P",
        poison,
        Uuid::now_v7(),
        b"<not json>".to_vec(),
    )
    .await
    .await
    .unwrap();
    let mut no_id = async_nats::HeaderMap::new();
    no_id.insert(headers::EVENT_TYPE, TICKED);
    let no_id_ack = publish_raw(
        &js,
        format!("{prefix}.noid"),
        no_id,
        Uuid::now_v7(),
        ticked(1),
    )
    .await
    .await
    .unwrap();
    let mut acks = Vec::new();
    for i in 0..good {
        let key = format!("G{}", i % KEYS);
        acks.push(
            publish(
                &js,
                &prefix,
                &key,
                Uuid::now_v7(),
                Uuid::now_v7(),
                ticked(i / KEYS + 1),
            )
            .await,
        );
    }
    for ack in acks {
        ack.await.unwrap();
    }

    let fixed = Arc::new(AtomicBool::new(false));
    let inbox = Inbox::new(PgInbox::new(pool.clone()));
    let config = NatsConsumerConfig::new(&stream, durable)
        .options(ConsumerOptions {
            max_deliveries: 3,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(500),
            batch_size: 16,
        })
        .idle_wait(Duration::from_millis(300));
    let consumer = Arc::new(NatsConsumer::new(
        client,
        inbox.clone(),
        Flaky {
            failing,
            fixed: Arc::clone(&fixed),
        },
        config,
    ));
    consumer.ensure().await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn({
        let consumer = Arc::clone(&consumer);
        async move {
            consumer
                .run(async {
                    let _ = stopped.await;
                })
                .await
        }
    });

    let store = inbox.store();
    wait_until(
        "the good messages are applied and the three bad ones dead-lettered",
        Duration::from_mins(2),
        async || effects(&pool).await == good && store.dead_letters(None).await.unwrap().len() == 3,
    )
    .await;
    let letters: HashMap<Uuid, dtx::inbox::DeadLetter> = store
        .dead_letters(Some("flaky"))
        .await
        .unwrap()
        .into_iter()
        .map(|l| (l.message.message_id, l))
        .collect();
    let failed = &letters[&failing];
    assert_eq!(failed.attempts, 3, "{failed:?}");
    assert!(failed.error.contains("refuses it"), "{}", failed.error);
    assert_eq!(failed.message.key.as_deref(), Some("F"));
    let poisoned = &letters[&poison];
    assert_eq!(poisoned.attempts, 1, "poison is not retried: {poisoned:?}");
    assert!(
        poisoned.error.contains("does not decode"),
        "{}",
        poisoned.error
    );
    assert_eq!(poisoned.message.payload, b"<not json>");
    let source = format!("{prefix}.noid #{}", no_id_ack.sequence);
    let stand_in = InboundMessage::stand_in_id(&source);
    let headless = &letters[&stand_in];
    assert!(
        headless.error.contains(headers::EVENT_ID),
        "{}",
        headless.error
    );
    assert_eq!(headless.message.source.as_deref(), Some(source.as_str()));
    wait_until(
        "JetStream has every message answered",
        Duration::from_mins(1),
        async || drained(&js, &stream, durable).await,
    )
    .await;

    // The fix, then the operator requeues the two the fix is for and discards the other.
    fixed.store(true, Ordering::SeqCst);
    assert!(store.requeue("flaky", failing).await.unwrap());
    assert!(store.requeue("flaky", poison).await.unwrap());
    assert!(store.discard("flaky", stand_in).await.unwrap());
    wait_until(
        "the requeued messages are applied",
        Duration::from_mins(1),
        async || effects(&pool).await == good + 2,
    )
    .await;
    assert_eq!(store.dead_letters(None).await.unwrap(), Vec::new());

    // A redelivery of the fixed message (another copy through JetStream) is skipped.
    publish(&js, &prefix, "F", failing, Uuid::now_v7(), ticked(1))
        .await
        .await
        .unwrap();
    wait_until("the copy is answered", Duration::from_mins(1), async || {
        drained(&js, &stream, durable).await
    })
    .await;
    let per_message: Vec<(Uuid, i64)> = sqlx::query_as(
        "SELECT message_id, count(*) FROM inbox_effects GROUP BY message_id HAVING count(*) > 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(per_message, Vec::new(), "every message applied once");
    assert_eq!(effects(&pool).await, good + 2);

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_mins(1), running)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    js.delete_stream(&stream).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_order_is_kept_across_batches_and_a_clean_stop() {
    const KEYS: i64 = 20;
    const PER_KEY: i64 = 60;
    let total = KEYS * PER_KEY;
    let pool = database().await;
    let client = nats().await;
    let js = jetstream::new(client.clone());
    let (stream, prefix) = fresh_stream(&js, "ORDER").await;
    let durable = "ordered";

    let mut acks = Vec::new();
    let mut rng = 0x00de_5eed_u64;
    let mut next = vec![1_i64; usize::try_from(KEYS).unwrap()];
    while acks.len() < usize::try_from(total).unwrap() {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let k = usize::try_from(rng % u64::try_from(KEYS).unwrap()).unwrap();
        if next[k] > PER_KEY {
            continue;
        }
        let seq = next[k];
        next[k] += 1;
        acks.push(
            publish(
                &js,
                &prefix,
                &format!("O{k}"),
                Uuid::now_v7(),
                Uuid::now_v7(),
                ticked(seq),
            )
            .await,
        );
    }
    for ack in acks {
        ack.await.unwrap();
    }

    let config = NatsConsumerConfig::new(&stream, durable)
        .filter_subject(format!("{prefix}.>"))
        .options(ConsumerOptions {
            batch_size: 37,
            ..ConsumerOptions::default()
        })
        .idle_wait(Duration::from_millis(500));
    let start = || {
        let consumer = NatsConsumer::new(
            client.clone(),
            Inbox::new(PgInbox::new(pool.clone())),
            EffectWriter,
            config.clone(),
        );
        tests::spawn_until_stopped(|stopped| async move { consumer.run(stopped).await })
    };

    // A first instance, stopped cleanly part way: the message in hand is finished and the rest
    // of its batch handed back at once, so the second one goes on without waiting for
    // `ack_wait` (30 s) and in order.
    let (stop, running) = start();
    wait_until(
        "a third of the messages are applied",
        Duration::from_mins(1),
        async || effects(&pool).await >= total / 3,
    )
    .await;
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(20), running)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let at_stop = effects(&pool).await;
    assert!(
        at_stop < total,
        "the first instance finished everything: nothing left to test"
    );

    let (stop, running) = start();
    wait_until(
        "every message is applied",
        Duration::from_secs(25),
        async || effects(&pool).await == total,
    )
    .await;
    wait_until(
        "JetStream has every message acknowledged",
        Duration::from_mins(1),
        async || drained(&js, &stream, durable).await,
    )
    .await;
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
    assert_eq!(assert_in_order(&pool).await, usize::try_from(KEYS).unwrap());
    assert_eq!(effects(&pool).await, total, "each message applied once");
    js.delete_stream(&stream).await.unwrap();
}
