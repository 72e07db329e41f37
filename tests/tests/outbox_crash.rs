//! Two outbox relay processes publish while writers append, and one of them is killed with
//! SIGKILL at random moments, again and again. Afterwards every event has been delivered at least
//! once, a consumer that drops what it has seen gets every stream in order with no gap, and the
//! duplicates are bounded by the passes in flight at the kills.

#![allow(
    clippy::unwrap_used,
    clippy::too_many_lines,
    clippy::similar_names,
    reason = "tests"
)]

use dtx::{EventStore, ExpectedVersion, NewEvent, StreamId};
use std::collections::HashMap;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const RELAYS: usize = 2;
const KILLS: usize = 8;
const STREAMS: u64 = 20;
const WRITERS: u64 = 4;
/// The relay processes' batch size.
const BATCH: usize = 20;
/// The relay processes' batches per pass (one transaction, one checkpoint).
const BATCHES_PER_PASS: usize = 4;

fn spawn_relay(url: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_outbox_relay_worker"))
        .env("DATABASE_URL", url)
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_killed_with_sigkill_lose_nothing_and_keep_order() {
    let store = tests::pg_store().await.with_outbox(true);
    let pool = store.pool().clone();
    sqlx::raw_sql(
        "CREATE TABLE outbox_received (
             n BIGSERIAL PRIMARY KEY, key TEXT NOT NULL, seq BIGINT, message_id UUID NOT NULL)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let url = tests::database_url(&pool);
    let outbox = dtx_postgres::PgOutbox::new(pool.clone());
    let mut relays: Vec<Child> = (0..RELAYS).map(|_| spawn_relay(&url)).collect();

    // The writers append until the last kill, so that every kill meets a relay with work.
    let writing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        let writing = std::sync::Arc::clone(&writing);
        writers.push(tokio::spawn(async move {
            let mut rng = 0x9e37_79b9_u64 + w;
            while writing.load(std::sync::atomic::Ordering::Relaxed) {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let stream = StreamId::new(format!("Crash-{}", rng % STREAMS)).unwrap();
                let events = (0..=rng % 3)
                    .map(|k| NewEvent::from_json("Ticked", &k).unwrap())
                    .collect();
                store
                    .append(&stream, ExpectedVersion::Any, events)
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(rng % 8)).await;
            }
        }));
    }

    let mut rng = 0x5eed_u64;
    let mut kills_mid_batch = 0;
    for _ in 0..KILLS {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        tokio::time::sleep(Duration::from_millis(150 + rng % 300)).await;
        if outbox.counts().await.unwrap().pending > 0 {
            kills_mid_batch += 1;
        }
        let victim = usize::try_from(rng % RELAYS as u64).unwrap();
        relays[victim].kill().unwrap(); // SIGKILL
        relays[victim].wait().unwrap();
        relays[victim] = spawn_relay(&url);
    }
    writing.store(false, std::sync::atomic::Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    let started = Instant::now();
    loop {
        let counts = outbox.counts().await.unwrap();
        if counts.pending == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_mins(2),
            "the outbox did not drain: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for relay in &mut relays {
        relay.kill().unwrap();
        relay.wait().unwrap();
    }

    let received: Vec<(String, i64)> =
        sqlx::query_as("SELECT key, seq FROM outbox_received ORDER BY n")
            .fetch_all(&pool)
            .await
            .unwrap();
    let mut seen: HashMap<String, i64> = HashMap::new();
    let mut duplicates = 0;
    for (key, seq) in &received {
        let max = seen.entry(key.clone()).or_insert(0);
        assert!(
            *seq <= *max + 1,
            "{key}: {seq} delivered before {}",
            *max + 1
        );
        if *seq <= *max {
            duplicates += 1;
        } else {
            *max = *seq;
        }
    }
    let mut events = 0;
    for s in 0..STREAMS {
        let stream = StreamId::new(format!("Crash-{s}")).unwrap();
        let version = store.stream_version(&stream).await.unwrap();
        events += version;
        assert_eq!(
            seen.get(stream.as_str()).copied().unwrap_or(0),
            i64::try_from(version).unwrap(),
            "{stream}: not every event was delivered"
        );
    }
    println!(
        "{KILLS} SIGKILLs ({kills_mid_batch} with work pending); {events} events, {} deliveries, {duplicates} duplicates",
        received.len()
    );
    assert!(
        kills_mid_batch >= KILLS / 2,
        "only {kills_mid_batch} kills hit a busy relay"
    );
    assert!(
        duplicates <= KILLS * BATCH * BATCHES_PER_PASS,
        "{duplicates} duplicates from {KILLS} kills of passes of {BATCHES_PER_PASS} batches of {BATCH}"
    );
}
