//! The outbox relay publishing to the real NATS `JetStream` server (`NATS_URL`, default
//! `127.0.0.1:4222`), read back by a `JetStream` consumer: every event arrives, in order per
//! stream, with its headers, and a message published twice is stored once (`Nats-Msg-Id`).

#![allow(
    clippy::unwrap_used,
    clippy::too_many_lines,
    clippy::similar_names,
    reason = "tests"
)]

use async_nats::jetstream;
use dtx::outbox::{NewOutboxMessage, OutboxMessage, Publisher, RelayOptions, headers};
use dtx::{EventStore, ExpectedVersion, NewEvent, StreamId, Uuid};
use dtx_postgres::PgOutbox;
use dtx_postgres::nats::NatsPublisher;
use std::collections::HashMap;
use std::time::Duration;

use tests::inbox_nats::nats;

const STREAMS: u64 = 10;
const PER_STREAM: u64 = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_publishes_to_jetstream_in_order_with_headers_and_dedupe() {
    let client = nats().await;
    let js = jetstream::new(client.clone());
    let (name, prefix) = tests::inbox_nats::fresh_stream(&js, "TEST").await;

    let store = tests::pg_store().await.with_outbox(true);
    let outbox = PgOutbox::new(store.pool().clone());
    let correlation = Uuid::now_v7();
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    tests::append_order_streams(&store, STREAMS, PER_STREAM, correlation, traceparent).await;
    let publisher = NatsPublisher::new(client.clone(), prefix.clone());
    let relay = outbox.relay(publisher.clone(), RelayOptions::default());
    let published = relay.run_until_idle().await.unwrap();
    assert_eq!(published, usize::try_from(STREAMS * PER_STREAM).unwrap());

    // A message published again (a relay that died before deleting its row) is stored once.
    sqlx::query(
        "INSERT INTO outbox_events (stream_key, id, sequence)
         SELECT stream_id, global_position, version FROM event_store
         ORDER BY global_position LIMIT 1",
    )
    .execute(store.pool())
    .await
    .unwrap();
    assert_eq!(relay.run_until_idle().await.unwrap(), 1);

    let total = usize::try_from(STREAMS * PER_STREAM).unwrap();
    let mut per_stream: HashMap<String, Vec<u64>> = HashMap::new();
    let mut received = 0;
    for message in tests::inbox_nats::read_all(&js, &name, total + 10, Duration::from_secs(2)).await
    {
        received += 1;
        let h = message.headers.as_ref().unwrap();
        let get = |name: &str| h.get(name).map(|v| v.as_str().to_owned()).unwrap();
        let stream_id = get(headers::STREAM_ID);
        assert_eq!(message.subject.as_str(), publisher.subject(&stream_id));
        assert_eq!(get("Nats-Msg-Id"), get(headers::EVENT_ID));
        assert_eq!(get(headers::EVENT_TYPE), "OrderEvent");
        assert_eq!(get(headers::CORRELATION_ID), correlation.to_string());
        assert_eq!(get(headers::TRACEPARENT), traceparent);
        let payload: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
        per_stream
            .entry(stream_id)
            .or_default()
            .push(payload["n"].as_u64().unwrap());
    }
    assert_eq!(
        received, total,
        "every event once (the re-publish was deduplicated)"
    );
    assert_eq!(per_stream.len(), usize::try_from(STREAMS).unwrap());
    for (stream, ns) in per_stream {
        assert!(ns.iter().copied().eq(1..=PER_STREAM), "{stream}: {ns:?}");
    }
    js.delete_stream(&name).await.unwrap();
}

#[tokio::test]
async fn a_missing_jetstream_stream_is_an_error_the_relay_retries() {
    let client = nats().await;
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
    let prefix = format!("dtx_nostream_{}", Uuid::now_v7().simple());
    let relay = outbox.relay(NatsPublisher::new(client, prefix), RelayOptions::default());
    let pass = tests::pass_with_work(&relay).await;
    assert_eq!((pass.published, pass.failed, pass.dead), (0, 1, 0));
    let counts = outbox.counts().await.unwrap();
    assert_eq!(
        (counts.pending, counts.published),
        (1, 0),
        "kept for a retry, never lost"
    );
}

/// A message NATS cannot carry (a header value with CR/LF, a header name that is no token) used
/// to panic inside async-nats and fail the relay's whole pass, so that its neighbours were
/// published again on every pass and never marked sent. Now: the publisher returns a permanent
/// error, the relay dead-letters those rows alone, and the healthy messages of the same pass
/// reach `JetStream` once, each on its own subject (keys the old subject mapping merged).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_nats_cannot_carry_are_dead_lettered_and_the_rest_arrive_once() {
    let client = nats().await;
    let js = jetstream::new(client.clone());
    let (name, prefix) = tests::inbox_nats::fresh_stream(&js, "TEST").await;
    let publisher = NatsPublisher::new(client.clone(), prefix.clone());

    // Called directly, the publisher refuses such a message instead of panicking.
    let mut message = OutboxMessage {
        id: 1,
        key: "Order-1".into(),
        sequence: None,
        message_id: Uuid::now_v7(),
        message_type: "Placed".into(),
        payload: "{}".into(),
        headers: std::collections::BTreeMap::from([("x-ok".into(), "a\r\nb".into())]),
        attempts: 0,
        last_error: None,
        created_at: sqlx::types::chrono::Utc::now(),
    };
    let refused = publisher.publish(&message).await.unwrap_err();
    assert!(refused.permanent, "{refused}");
    message.headers = std::collections::BTreeMap::from([("x bad".into(), "v".into())]);
    let refused = publisher.publish(&message).await.unwrap_err();
    assert!(
        refused.permanent && refused.message.contains("x bad"),
        "{refused}"
    );

    let store = tests::pg_store().await.with_outbox(true);
    let pool = store.pool().clone();
    let outbox = PgOutbox::new(pool.clone());
    let keys = ["Order 1", "Order.1", "Order_1", "Order-1"];
    let mut conn = pool.acquire().await.unwrap();
    let healthy = keys
        .iter()
        .map(|key| NewOutboxMessage::new(*key, "Placed", key).unwrap())
        .collect();
    outbox.enqueue(&mut conn, healthy).await.unwrap();
    for (key, bad) in [
        ("Bad-value", r#"{"x-ok": "a\r\nb"}"#),
        ("Bad-name", r#"{"x bad": "v"}"#),
    ] {
        sqlx::query(
            "INSERT INTO outbox_events (stream_key, id, event_id, event_type, payload, headers)
             VALUES ($1, nextval('event_store_global_position_seq'), gen_random_uuid(), 'Raw',
                     '{}', $2::jsonb)",
        )
        .bind(key)
        .bind(bad)
        .execute(&mut *conn)
        .await
        .unwrap();
    }
    drop(conn);
    let relay = outbox.relay(publisher.clone(), RelayOptions::default());
    assert_eq!(relay.run_until_idle().await.unwrap(), keys.len());
    let counts = outbox.counts().await.unwrap();
    assert_eq!((counts.pending, counts.dead), (0, 2), "{counts:?}");
    assert_eq!(relay.run_until_idle().await.unwrap(), 0, "nothing again");

    let mut subjects = HashMap::new();
    for message in tests::inbox_nats::read_all(&js, &name, 10, Duration::from_secs(2)).await {
        let key = message
            .headers
            .as_ref()
            .unwrap()
            .get(headers::STREAM_ID)
            .unwrap()
            .to_string();
        assert_eq!(message.subject.as_str(), publisher.subject(&key));
        assert!(subjects.insert(message.subject.to_string(), key).is_none());
    }
    assert_eq!(subjects.len(), keys.len(), "{subjects:?}");
    js.delete_stream(&name).await.unwrap();
}
