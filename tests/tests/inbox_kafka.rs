//! The Kafka inbox consumer against a real Kafka-compatible broker (`KAFKA_BROKERS`, default
//! `127.0.0.1:9092`; `scripts/test.sh` starts tansu) and PostgreSQL: a consumer process killed
//! with SIGKILL again and again applies every record exactly once; two processes split the
//! partitions and one takes the other's over when it is killed; a poison record is dead-lettered
//! while the others flow, then requeued and applied once; a failing record is retried without
//! losing the order of its partition.

#![allow(
    clippy::unwrap_used,
    clippy::too_many_lines,
    clippy::similar_names,
    reason = "tests"
)]

use dtx::inbox::{ConsumerOptions, Inbox, InboxStore};
use dtx_postgres::PgInbox;
use dtx_postgres::kafka::{KafkaConsumer, KafkaConsumerOptions};
use std::collections::BTreeSet;
use std::process::{Child, Command};
use std::time::{Duration, Instant};
use tests::kafka_inbox::{
    Effects, Produced, TABLES, check_exactly_once_in_order, effect_count, fresh_topic, kafka,
    produce, ticks,
};
use uuid::Uuid;

const DEADLINE: Duration = Duration::from_mins(3);

async fn database() -> sqlx::PgPool {
    let pool = tests::pg_store().await.pool().clone();
    sqlx::raw_sql(TABLES).execute(&pool).await.unwrap();
    pool
}

fn spawn_worker(url: &str, topic: &str, owner: Uuid, lease_ms: u64, slow_ms: u64) -> Child {
    Command::new(env!("CARGO_BIN_EXE_inbox_kafka_worker"))
        .env("DATABASE_URL", url)
        .env("TOPIC", topic)
        .env("OWNER", owner.to_string())
        .env("LEASE_MS", lease_ms.to_string())
        .env("SLOW_MS", slow_ms.to_string())
        .spawn()
        .unwrap()
}

fn kill(child: &mut Child) {
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

/// Polls `condition` every 50 ms until it holds, failing with `what` after [`DEADLINE`].
async fn wait_for(what: &str, mut condition: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !condition().await {
        assert!(started.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The owners of the live leases on `topic`'s partitions, by partition.
async fn owners(inbox: &PgInbox, topic: &str) -> Vec<(i32, Option<Uuid>)> {
    let now = chrono::Utc::now();
    inbox
        .partitions(Some("effects"))
        .await
        .unwrap()
        .into_iter()
        .filter(|p| p.key.topic == topic)
        .map(|p| {
            let live = p.lease_until.is_some_and(|u| u > now);
            (p.key.partition, p.owner.filter(|_| live))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_killed_with_sigkill_applies_every_record_exactly_once() {
    const PARTITIONS: i32 = 4;
    const KILLS: usize = 8;
    let client = kafka().await;
    let topic = fresh_topic(&client, PARTITIONS).await;
    let pool = database().await;
    let url = tests::database_url(&pool);
    // 100 keys of 100 records: 10 000 records, every 40th produced twice.
    let produced = ticks(100, 100, 40);
    produce(&client, &topic, PARTITIONS, &produced).await;
    let distinct =
        i64::try_from(produced.iter().map(|p| p.id).collect::<BTreeSet<_>>().len()).unwrap();
    assert_eq!(distinct, 10_000);

    // One instance, restarted under its owner id after each kill: it takes its partitions back
    // at once instead of waiting for its own leases to expire.
    let owner = Uuid::now_v7();
    let mut worker = spawn_worker(&url, &topic, owner, 30_000, 1);
    let mut rng = 0x5eed_u64;
    let mut kills_mid_work = 0;
    for _ in 0..KILLS {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        // Let it apply something first, so that every kill meets a consumer at work.
        let before = effect_count(&pool).await;
        wait_for("progress after a restart", async || {
            effect_count(&pool).await > before
        })
        .await;
        tokio::time::sleep(Duration::from_millis(rng % 200)).await;
        if effect_count(&pool).await < distinct {
            kills_mid_work += 1;
        }
        kill(&mut worker);
        worker = spawn_worker(&url, &topic, owner, 30_000, 1);
    }
    wait_for("every record applied", async || {
        effect_count(&pool).await >= distinct
    })
    .await;
    // Anything still in flight would show as a second effect: give it a moment, then stop.
    tokio::time::sleep(Duration::from_millis(500)).await;
    kill(&mut worker);

    let duplicates = check_exactly_once_in_order(&pool, &produced, &[]).await;
    let inbox = PgInbox::new(pool.clone());
    assert!(
        inbox
            .dead_letters(Some("effects"))
            .await
            .unwrap()
            .is_empty()
    );
    println!(
        "{KILLS} SIGKILLs ({kills_mid_work} mid-work); {} records, {distinct} effects, {duplicates} duplicates skipped",
        produced.len()
    );
    assert_eq!(duplicates, produced.len() - 10_000);
    assert!(duplicates > 0);
    assert!(
        kills_mid_work >= KILLS / 2,
        "only {kills_mid_work} kills hit a consumer at work"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_split_the_partitions_and_one_takes_over_when_the_other_dies() {
    const PARTITIONS: i32 = 4;
    const LEASE_MS: u64 = 2_000;
    let client = kafka().await;
    let topic = fresh_topic(&client, PARTITIONS).await;
    let pool = database().await;
    let url = tests::database_url(&pool);
    let inbox = PgInbox::new(pool.clone());
    let produced = ticks(40, 100, 0);
    produce(&client, &topic, PARTITIONS, &produced).await;
    let total = i64::try_from(produced.len()).unwrap();

    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let mut worker_a = spawn_worker(&url, &topic, a, LEASE_MS, 3);
    let mut worker_b = spawn_worker(&url, &topic, b, LEASE_MS, 3);
    wait_for("both instances holding partitions", async || {
        let owners = owners(&inbox, &topic).await;
        let held: BTreeSet<Uuid> = owners.iter().filter_map(|(_, o)| *o).collect();
        owners.len() == 4 && held == BTreeSet::from([a, b])
    })
    .await;
    let split = owners(&inbox, &topic).await;
    println!("split: {split:?}");
    let of_a: Vec<i32> = split
        .iter()
        .filter(|(_, o)| *o == Some(a))
        .map(|(p, _)| *p)
        .collect();
    assert!(!of_a.is_empty() && of_a.len() < 4, "{split:?}");

    // Both at work (a has committed batches of its own) before a dies.
    wait_for("progress", async || effect_count(&pool).await >= 200).await;
    let before_kill = effect_count(&pool).await;
    kill(&mut worker_a);
    wait_for("b holding every partition", async || {
        owners(&inbox, &topic)
            .await
            .iter()
            .all(|(_, o)| *o == Some(b))
    })
    .await;
    wait_for("every record applied", async || {
        effect_count(&pool).await >= total
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    kill(&mut worker_b);
    println!("{before_kill} of {total} applied when a was killed");
    assert!(before_kill < total, "a was killed after the work was done");
    check_exactly_once_in_order(&pool, &produced, &[]).await;
}

fn options() -> KafkaConsumerOptions {
    KafkaConsumerOptions {
        delivery: ConsumerOptions {
            max_deliveries: 3,
            backoff: Duration::from_millis(10),
            batch_size: 25,
            ..ConsumerOptions::default()
        },
        poll_interval: Duration::from_millis(100),
        fetch_wait: Duration::from_millis(100),
        ..KafkaConsumerOptions::default()
    }
}

/// Runs a consumer in this process until the returned sender is dropped or sent to.
async fn start(
    pool: &sqlx::PgPool,
    topic: &str,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let consumer = KafkaConsumer::connect(
        tests::kafka_inbox::brokers(),
        topic,
        Inbox::new(PgInbox::new(pool.clone())),
        Effects::default(),
    )
    .await
    .unwrap()
    .with_options(options());
    tests::spawn_until_stopped(|stopped| async move { consumer.run(stopped).await.unwrap() })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_record_is_dead_lettered_while_the_others_flow_then_requeued_and_applied_once() {
    const PARTITIONS: i32 = 2;
    let client = kafka().await;
    let topic = fresh_topic(&client, PARTITIONS).await;
    let pool = database().await;
    let inbox = PgInbox::new(pool.clone());
    let mut produced = ticks(6, 30, 0);
    let poison: &mut Produced = produced
        .iter_mut()
        .find(|p| p.tick.key == "K-3" && p.tick.seq == 10)
        .unwrap();
    poison.tick.poison = true;
    let poison_id = poison.id;
    produce(&client, &topic, PARTITIONS, &produced).await;
    let total = i64::try_from(produced.len()).unwrap();

    let (stop, task) = start(&pool, &topic).await;
    wait_for(
        "the others applied and the poison dead-lettered",
        async || {
            effect_count(&pool).await == total - 1
                && inbox.dead_letters(Some("effects")).await.unwrap().len() == 1
        },
    )
    .await;
    let letters = inbox.dead_letters(Some("effects")).await.unwrap();
    assert_eq!(letters[0].message.message_id, poison_id);
    assert_eq!(letters[0].attempts, 3, "{letters:?}");
    assert!(letters[0].error.contains("poison"), "{}", letters[0].error);
    assert!(
        letters[0]
            .message
            .source
            .as_deref()
            .unwrap()
            .starts_with(&format!("{topic}/")),
        "{:?}",
        letters[0].message.source
    );
    // The records after it on its key were applied: it did not block its partition.
    let after: i64 =
        sqlx::query_scalar("SELECT count(*) FROM inbox_effects WHERE key = 'K-3' AND seq > 10")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(after, 20);

    sqlx::query("INSERT INTO inbox_cure VALUES (1)")
        .execute(&pool)
        .await
        .unwrap();
    assert!(inbox.requeue("effects", poison_id).await.unwrap());
    wait_for("the requeued poison applied", async || {
        effect_count(&pool).await == total
            && inbox
                .dead_letters(Some("effects"))
                .await
                .unwrap()
                .is_empty()
    })
    .await;
    stop.send(()).unwrap();
    task.await.unwrap();
    check_exactly_once_in_order(&pool, &produced, &["K-3"]).await;
    // Released on shutdown: nobody holds the partitions.
    assert!(
        owners(&inbox, &topic)
            .await
            .iter()
            .all(|(_, o)| o.is_none()),
        "{:?}",
        owners(&inbox, &topic).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_records_are_retried_and_each_partition_keeps_its_order() {
    const PARTITIONS: i32 = 3;
    let client = kafka().await;
    let topic = fresh_topic(&client, PARTITIONS).await;
    let pool = database().await;
    let inbox = PgInbox::new(pool.clone());
    // Every 7th record fails on its first delivery, in the middle of its batch.
    let mut produced = ticks(12, 40, 0);
    for (i, p) in produced.iter_mut().enumerate() {
        p.tick.flaky = i % 7 == 3;
    }
    produce(&client, &topic, PARTITIONS, &produced).await;
    let total = i64::try_from(produced.len()).unwrap();

    let (stop, task) = start(&pool, &topic).await;
    wait_for("every record applied", async || {
        effect_count(&pool).await >= total
    })
    .await;
    stop.send(()).unwrap();
    task.await.unwrap();
    check_exactly_once_in_order(&pool, &produced, &[]).await;
    assert!(
        inbox
            .dead_letters(Some("effects"))
            .await
            .unwrap()
            .is_empty()
    );
    // Each partition's offset stands past its last record.
    let offsets: i64 = inbox
        .partitions(Some("effects"))
        .await
        .unwrap()
        .iter()
        .filter(|p| p.key.topic == topic)
        .map(|p| p.next_offset)
        .sum();
    assert_eq!(offsets, total);
}
