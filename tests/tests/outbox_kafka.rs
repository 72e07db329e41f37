//! The outbox relay publishing to a real Kafka-compatible broker (`KAFKA_BROKERS`, default
//! `127.0.0.1:9092`; `scripts/test.sh` starts tansu), read back by an `rskafka` consumer: every
//! event arrives, in order per stream within the stream's partition, with its headers; a missing
//! topic is an error the relay retries; an unreachable broker fails fast with a clear message.

#![allow(
    clippy::unwrap_used,
    clippy::too_many_lines,
    clippy::similar_names,
    reason = "tests"
)]

use dtx::outbox::{RelayOptions, headers};
use dtx::{EventStore, ExpectedVersion, NewEvent, StreamId, Uuid};
use dtx_postgres::PgOutbox;
use dtx_postgres::kafka::KafkaPublisher;
use rskafka::client::partition::{OffsetAt, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const STREAMS: u64 = 10;
const PER_STREAM: u64 = 20;
const PARTITIONS: i32 = 3;

fn brokers() -> Vec<String> {
    std::env::var("KAFKA_BROKERS")
        .unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
        .split(',')
        .map(str::to_owned)
        .collect()
}

/// Connects to the test broker, failing fast with a clear message when it is not there.
async fn kafka() -> Client {
    let brokers = brokers();
    let backoff = rskafka::BackoffConfig {
        deadline: Some(Duration::from_secs(3)),
        ..rskafka::BackoffConfig::default()
    };
    let connect = ClientBuilder::new(brokers.clone())
        .backoff_config(backoff)
        .build();
    match tokio::time::timeout(Duration::from_secs(5), connect).await {
        Ok(Ok(client)) => client,
        Ok(Err(e)) => panic!(
            "a Kafka broker at {brokers:?} is needed for this test (set KAFKA_BROKERS; scripts/test.sh starts tansu): {e}"
        ),
        Err(elapsed) => {
            panic!("a Kafka broker at {brokers:?} is needed for this test: connecting: {elapsed}")
        }
    }
}

/// A fresh topic of `PARTITIONS` partitions.
async fn fresh_topic(client: &Client) -> String {
    let topic = format!("dtx_test_{}", Uuid::now_v7().simple());
    client
        .controller_client()
        .unwrap()
        .create_topic(topic.clone(), PARTITIONS, 1, 5_000)
        .await
        .unwrap();
    topic
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_publishes_to_kafka_in_order_per_stream_with_headers() {
    let client = kafka().await;
    let topic = fresh_topic(&client).await;

    let store = tests::pg_store().await.with_outbox(true);
    let outbox = PgOutbox::new(store.pool().clone());
    let correlation = Uuid::now_v7();
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    tests::append_order_streams(&store, STREAMS, PER_STREAM, correlation, traceparent).await;
    let publisher = KafkaPublisher::connect(brokers(), topic.clone())
        .await
        .unwrap();
    let relay = outbox.relay(publisher, RelayOptions::default());
    let published = relay.run_until_idle().await.unwrap();
    let total = usize::try_from(STREAMS * PER_STREAM).unwrap();
    assert_eq!(published, total);

    // Read every partition from offset 0 up to its high watermark.
    let mut per_stream: HashMap<String, Vec<u64>> = HashMap::new();
    let mut partition_of: HashMap<String, i32> = HashMap::new();
    let mut event_ids = std::collections::HashSet::new();
    let mut received = 0;
    for partition in 0..PARTITIONS {
        let consumer = client
            .partition_client(topic.clone(), partition, UnknownTopicHandling::Retry)
            .await
            .unwrap();
        let end = consumer.get_offset(OffsetAt::Latest).await.unwrap();
        let mut offset = 0;
        while offset < end {
            let (records, _high_watermark) = consumer
                .fetch_records(offset, 1..1_000_000, 1_000)
                .await
                .unwrap();
            assert!(!records.is_empty(), "records below the high watermark");
            for r in records {
                assert!(r.offset >= offset);
                offset = r.offset + 1;
                received += 1;
                let record = r.record;
                let get = |name: &str| {
                    String::from_utf8(record.headers.get(name).cloned().unwrap()).unwrap()
                };
                let stream_id = get(headers::STREAM_ID);
                assert_eq!(record.key.as_deref(), Some(stream_id.as_bytes()));
                assert_eq!(get(headers::EVENT_TYPE), "OrderEvent");
                assert_eq!(get(headers::CORRELATION_ID), correlation.to_string());
                assert_eq!(get(headers::TRACEPARENT), traceparent);
                assert!(
                    event_ids.insert(get(headers::EVENT_ID)),
                    "one record per event"
                );
                let payload: serde_json::Value =
                    serde_json::from_slice(record.value.as_deref().unwrap()).unwrap();
                assert_eq!(
                    *partition_of.entry(stream_id.clone()).or_insert(partition),
                    partition,
                    "{stream_id}: one partition per stream"
                );
                assert_eq!(
                    u32::try_from(partition).unwrap(),
                    KafkaPublisher::partition_for(&stream_id, PARTITIONS.unsigned_abs())
                );
                per_stream
                    .entry(stream_id)
                    .or_default()
                    .push(payload["n"].as_u64().unwrap());
            }
        }
    }
    assert_eq!(received, total, "every event once");
    assert_eq!(per_stream.len(), usize::try_from(STREAMS).unwrap());
    for (stream, ns) in per_stream {
        assert!(ns.iter().copied().eq(1..=PER_STREAM), "{stream}: {ns:?}");
    }
    client
        .controller_client()
        .unwrap()
        .delete_topic(topic, 5_000)
        .await
        .ok();
}

#[tokio::test]
async fn a_missing_topic_is_an_error_the_relay_retries() {
    let store = tests::pg_store().await.with_outbox(true);
    let outbox = PgOutbox::new(store.pool().clone());
    store
        .append(
            &StreamId::new("Nowhere-1").unwrap(),
            ExpectedVersion::NoStream,
            vec![NewEvent::from_json("E", &1).unwrap()],
        )
        .await
        .unwrap();
    kafka().await;
    let topic = format!("dtx_notopic_{}", Uuid::now_v7().simple());
    let publisher = KafkaPublisher::connect_with_timeout(brokers(), topic, Duration::from_secs(3))
        .await
        .unwrap();
    let relay = outbox.relay(publisher, RelayOptions::default());
    let pass = tests::pass_with_work(&relay).await;
    assert_eq!((pass.published, pass.failed, pass.dead), (0, 1, 0));
    let counts = outbox.counts().await.unwrap();
    assert_eq!(
        (counts.pending, counts.published),
        (1, 0),
        "kept for a retry, never lost"
    );
}

#[tokio::test]
async fn an_unreachable_broker_fails_fast_with_a_clear_message() {
    // Nothing listens on the discard port of localhost.
    let started = Instant::now();
    let error =
        KafkaPublisher::connect_with_timeout(["127.0.0.1:9"], "events", Duration::from_secs(2))
            .await
            .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "took {:?}",
        started.elapsed()
    );
    let message = error.to_string();
    assert!(
        message.contains("connecting to Kafka at 127.0.0.1:9"),
        "{message}"
    );
}
