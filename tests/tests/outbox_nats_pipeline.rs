//! The NATS publisher pipelines a batch (every message sent before any ack is awaited) and keeps
//! each key's order anyway, on the real NATS `JetStream` server (`NATS_URL`, default
//! `127.0.0.1:4222`):
//!
//! - `JetStream` refuses one message in the middle of a key's batch (it is larger than the
//!   stream allows): nothing behind it of that key is stored, the other keys are published
//!   whole, the message is retried and then dead-lettered with its key stopped behind it; once
//!   the stream allows it and it is requeued, the key resumes in order and nothing is lost.
//! - A message before others of its key that is a duplicate (stored earlier, not the stream's
//!   last) breaks the chain of expectations: the rest is sent again, and still arrives once and
//!   in order.
//!
//! A broker killed and restarted while the relay publishes is `outbox_broker_faults`.

#![allow(
    clippy::unwrap_used,
    clippy::too_many_lines,
    clippy::similar_names,
    reason = "tests"
)]

use async_nats::jetstream;
use dtx::outbox::{OutboxMessage, Publisher, RelayOptions, headers};
use dtx::{EventStore, ExpectedVersion, NewEvent, StreamId, Uuid};
use dtx_postgres::PgOutbox;
use dtx_postgres::nats::NatsPublisher;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};
use tests::inbox_nats::nats;

const STREAMS: u64 = 10;
const PER_STREAM: u64 = 20;
/// The key with the message `JetStream` refuses, and that message's version.
const POISONED: u64 = 3;
const REFUSED: u64 = 8;
/// The stream's message size limit: the refused message is larger, the others far smaller.
const MAX_MSG_SIZE: i32 = 2048;

/// The version of each event of `name`'s messages, per `dtx-stream-id`, first copies only, in
/// the stream's order.
async fn first_copies(js: &jetstream::Context, name: &str) -> HashMap<String, Vec<u64>> {
    let mut seen = HashSet::new();
    let mut per_stream: HashMap<String, Vec<u64>> = HashMap::new();
    let all = usize::try_from(STREAMS * PER_STREAM).unwrap() * 2;
    for message in tests::inbox_nats::read_all(js, name, all, Duration::from_secs(2)).await {
        let h = message.headers.as_ref().unwrap();
        let id = h.get(headers::EVENT_ID).unwrap().to_string();
        if !seen.insert(id) {
            continue;
        }
        let payload: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
        per_stream
            .entry(h.get(headers::STREAM_ID).unwrap().to_string())
            .or_default()
            .push(payload["n"].as_u64().unwrap());
    }
    per_stream
}

/// Runs relay passes until `done` holds, for at most a minute.
async fn passes_until(
    relay: &dtx_postgres::OutboxRelay,
    what: &str,
    mut done: impl AsyncFnMut(&dtx_postgres::RelayPass) -> bool,
) {
    let deadline = Instant::now() + Duration::from_mins(1);
    loop {
        let pass = relay.run_once().await.unwrap();
        if done(&pass).await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_refused_mid_batch_stops_its_key_without_reordering_or_losing_anything() {
    let client = nats().await;
    let js = jetstream::new(client.clone());
    let (name, prefix) = tests::inbox_nats::fresh_stream(&js, "PIPE").await;
    let mut config = js
        .get_stream(&name)
        .await
        .unwrap()
        .cached_info()
        .config
        .clone();
    config.max_message_size = MAX_MSG_SIZE;
    js.update_stream(&config).await.unwrap();

    // Each key's events in one append: the relay's batch holds them all, pipelined.
    let store = tests::pg_store().await.with_outbox(true);
    let outbox = PgOutbox::new(store.pool().clone());
    for s in 0..STREAMS {
        let events = (1..=PER_STREAM)
            .map(|n| {
                let pad = if s == POISONED && n == REFUSED {
                    "x".repeat(4 * 1024)
                } else {
                    String::new()
                };
                NewEvent::from_json("Placed", &serde_json::json!({ "n": n, "pad": pad })).unwrap()
            })
            .collect();
        store
            .append(
                &StreamId::new(format!("Order-{s}")).unwrap(),
                ExpectedVersion::NoStream,
                events,
            )
            .await
            .unwrap();
    }
    let publisher = NatsPublisher::new(client.clone(), prefix.clone());
    let relay = outbox.relay(
        publisher,
        RelayOptions {
            batch_size: 500,
            max_retries: 2,
            base_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
            ..RelayOptions::default()
        },
    );
    let total = STREAMS * PER_STREAM;
    let behind = PER_STREAM - REFUSED;

    // The batch is published pipelined: every key whole but the poisoned one, which stops at
    // the refused message; what follows it of that key is set aside, and never stored. (Passes
    // add up: the feed may hold some events back while another transaction runs.)
    let (mut published, mut failed) = (0, 0);
    passes_until(&relay, "the batch published", async |pass| {
        published += pass.published;
        failed += pass.failed;
        published == usize::try_from(total - behind - 1).unwrap() && failed > 0
    })
    .await;
    let stored = first_copies(&js, &name).await;
    for s in 0..STREAMS {
        let expected: Vec<u64> = if s == POISONED {
            (1..REFUSED).collect()
        } else {
            (1..=PER_STREAM).collect()
        };
        assert_eq!(stored[&format!("Order-{s}")], expected, "Order-{s}");
    }

    // Retried with backoff, then dead-lettered; its key stops behind it, nothing else moves.
    passes_until(&relay, "the refused message dead-lettered", async |_| {
        outbox.counts().await.unwrap().dead == 1
    })
    .await;
    let counts = outbox.counts().await.unwrap();
    assert_eq!(
        (counts.dead, counts.pending),
        (1, behind),
        "the dead letter and the messages behind it: {counts:?}"
    );
    let dead = outbox.dead(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].key.as_str(), dead[0].sequence, dead[0].attempts),
        ("Order-3", Some(REFUSED), 3)
    );
    assert!(
        dead[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("maximum")),
        "{:?}",
        dead[0].last_error
    );
    assert_eq!(relay.run_until_idle().await.unwrap(), 0, "the key waits");
    assert_eq!(
        first_copies(&js, &name).await[&format!("Order-{POISONED}")],
        (1..REFUSED).collect::<Vec<_>>(),
        "nothing behind the dead letter is published"
    );

    // The stream allows it now; requeued, the key resumes in order and nothing is lost.
    config.max_message_size = -1;
    js.update_stream(&config).await.unwrap();
    assert!(outbox.requeue(dead[0].id).await.unwrap());
    assert_eq!(
        relay.run_until_idle().await.unwrap(),
        usize::try_from(behind + 1).unwrap()
    );
    let counts = outbox.counts().await.unwrap();
    assert_eq!((counts.dead, counts.pending), (0, 0), "{counts:?}");
    let stored = first_copies(&js, &name).await;
    assert_eq!(stored.len(), usize::try_from(STREAMS).unwrap());
    for (stream, ns) in stored {
        assert!(ns.iter().copied().eq(1..=PER_STREAM), "{stream}: {ns:?}");
    }
    js.delete_stream(&name).await.unwrap();
}

fn message(key: &str, n: u64) -> OutboxMessage {
    OutboxMessage {
        id: i64::try_from(n).unwrap(),
        key: key.into(),
        sequence: Some(n),
        message_id: Uuid::now_v7(),
        message_type: "Placed".into(),
        payload: serde_json::json!({ "n": n }).to_string().into(),
        headers: BTreeMap::from([
            (headers::EVENT_ID.to_owned(), String::new()),
            (headers::STREAM_ID.to_owned(), key.to_owned()),
        ]),
        attempts: 0,
        last_error: None,
        created_at: sqlx::types::chrono::Utc::now(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_chain_is_sent_again_and_arrives_once_in_order() {
    let client = nats().await;
    let js = jetstream::new(client.clone());
    let (name, prefix) = tests::inbox_nats::fresh_stream(&js, "CHAIN").await;
    let publisher = NatsPublisher::new(client.clone(), prefix.clone());
    let mut batch: Vec<OutboxMessage> = (1..=5)
        .map(|n| message("Order-a", n))
        .chain((1..=3).map(|n| message("Order-b", n)))
        .collect();
    for m in &mut batch {
        m.headers
            .insert(headers::EVENT_ID.to_owned(), m.message_id.to_string());
    }

    // The first message is stored already, and another message comes after it: in the batch
    // it is a duplicate, not the stream's last, so the next message's expectation fails.
    publisher.publish(&batch[0]).await.unwrap();
    let mut other = message("Order-c", 1);
    other
        .headers
        .insert(headers::EVENT_ID.to_owned(), other.message_id.to_string());
    publisher.publish(&other).await.unwrap();

    let outcomes = publisher.publish_batch(&batch).await;
    assert_eq!(outcomes.len(), batch.len());
    for (m, outcome) in batch.iter().zip(&outcomes) {
        assert!(outcome.is_ok(), "{} {:?}: {outcome:?}", m.key, m.sequence);
    }
    let stored = tests::inbox_nats::read_all(&js, &name, 100, Duration::from_secs(2)).await;
    assert_eq!(stored.len(), 2 + 4 + 3, "every message once");
    let mut per_key: HashMap<String, Vec<u64>> = HashMap::new();
    for m in stored {
        let h = m.headers.as_ref().unwrap();
        let payload: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        per_key
            .entry(h.get(headers::STREAM_ID).unwrap().to_string())
            .or_default()
            .push(payload["n"].as_u64().unwrap());
    }
    assert_eq!(per_key["Order-a"], [1, 2, 3, 4, 5]);
    assert_eq!(per_key["Order-b"], [1, 2, 3]);
    js.delete_stream(&name).await.unwrap();
}
