//! Outbox rows that can never be published, on PostgreSQL: a message with an invalid header, a
//! row whose headers are not a JSON object of strings (written by another program or by hand),
//! a publisher that panics. Each is set aside alone (dead-lettered with its error) while the
//! healthy messages of the same pass are published once and marked sent.

#![allow(clippy::unwrap_used, reason = "tests")]

use async_trait::async_trait;
use dtx::outbox::{
    MemoryPublisher, NewOutboxMessage, OutboxMessage, PublishError, Publisher, RelayOptions,
};
use dtx_postgres::PgOutbox;
use std::time::Duration;

/// A publisher that panics on the messages of one key, as a broker client asserting on its
/// input does, and hands the others to a [`MemoryPublisher`].
struct PanicsOnKey(MemoryPublisher, &'static str);

#[async_trait]
impl Publisher for PanicsOnKey {
    async fn publish(&self, message: &OutboxMessage) -> Result<(), PublishError> {
        assert_ne!(
            message.key, self.1,
            "the publisher cannot take this message"
        );
        self.0.publish(message).await
    }
}

/// Writes a message row as another program would, with `headers` as they are.
async fn insert_raw(pool: &sqlx::PgPool, key: &str, headers: &str) {
    sqlx::query(
        "INSERT INTO outbox_events (stream_key, id, event_id, event_type, payload, headers)
         VALUES ($1, nextval('event_store_global_position_seq'), gen_random_uuid(), 'Raw',
                 '{}', $2::jsonb)",
    )
    .bind(key)
    .bind(headers)
    .execute(pool)
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsendable_rows_are_dead_lettered_alone_and_their_neighbours_marked_sent() {
    let store = tests::pg_store().await.with_outbox(true);
    let pool = store.pool().clone();
    let outbox = PgOutbox::new(pool.clone());
    let message = |key: &str| NewOutboxMessage::new(key, "Sent", &key).unwrap();

    // Enqueue refuses an invalid header, naming the message, and adds nothing.
    let mut bad = message("refused");
    bad.headers.insert("x-ok".into(), "a\r\nx-admin: 1".into());
    let mut conn = pool.acquire().await.unwrap();
    let refused = outbox.enqueue(&mut conn, vec![message("ok-0"), bad]).await;
    assert!(
        matches!(&refused, Err(dtx::Error::Invalid { what: "outbox header", value, .. }) if value.contains("refused")),
        "{refused:?}"
    );
    outbox
        .enqueue(
            &mut conn,
            vec![message("ok-1"), message("panics"), message("ok-2")],
        )
        .await
        .unwrap();
    drop(conn);
    // Rows stored before the check, or by another program.
    insert_raw(&pool, "bad-name", r#"{"x bad": "v"}"#).await;
    insert_raw(&pool, "bad-value", r#"{"x-ok": "a\r\nx-admin: 1"}"#).await;
    insert_raw(&pool, "not-a-map", "[1, 2]").await;
    insert_raw(&pool, "not-strings", r#"{"x-n": 1}"#).await;
    insert_raw(&pool, "null", "null").await;

    let sent = MemoryPublisher::new();
    let relay = outbox.relay(
        PanicsOnKey(sent.clone(), "panics"),
        RelayOptions {
            max_retries: 1,
            base_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(1),
            ..RelayOptions::default()
        },
    );
    // Passes succeed; the panicking key is retried once (due after a millisecond), then dead.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while outbox.counts().await.unwrap().pending > 0 {
        relay.run_until_idle().await.unwrap();
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            outbox.counts().await
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut keys: Vec<_> = sent.published().into_iter().map(|m| m.key).collect();
    keys.sort();
    assert_eq!(keys, ["ok-1", "ok-2"], "each healthy message once");
    let counts = outbox.counts().await.unwrap();
    assert_eq!((counts.pending, counts.dead), (0, 6), "{counts:?}");

    let dead = outbox.dead(10).await.unwrap();
    let error = |key: &str| {
        let message = dead.iter().find(|m| m.key == key).unwrap();
        (message.attempts, message.last_error.clone().unwrap())
    };
    for (key, attempts, says) in [
        ("bad-name", 1, "header name \"x bad\" is not a token"),
        (
            "bad-value",
            1,
            "the value of header `x-ok` holds a line break",
        ),
        ("not-a-map", 1, "are not a JSON object of strings"),
        ("not-strings", 1, "are not a JSON object of strings"),
        ("null", 1, "are not a JSON object of strings"),
        ("panics", 2, "the publisher panicked"),
    ] {
        let (tried, last) = error(key);
        assert_eq!(tried, attempts, "{key}: {last}");
        assert!(last.contains(says) && last.contains(key), "{key}: {last}");
    }
    // Nothing more to do: nothing is published again.
    relay.run_until_idle().await.unwrap();
    assert_eq!(sent.count(), 2);
}
