//! Outboxes in two schemas of one database (two tenants): their relays never block each other
//! (the feed's lock and the per-key locks are scoped to the schema's tables) and one tenant's
//! writes never wake the other's relay (one `NOTIFY` channel and wake lock per schema).

#![allow(clippy::unwrap_used, reason = "tests")]

use async_trait::async_trait;
use dtx::outbox::{MemoryPublisher, OutboxMessage, PublishError, Publisher, RelayOptions};
use dtx::{EventStore, ExpectedVersion, NewEvent, StreamId};
use dtx_postgres::{PgEventStore, PgOutbox};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};

const TENANTS: [&str; 2] = ["tenant_a", "tenant_b"];

/// Two tenants' stores and outboxes on one fresh database.
async fn tenants() -> Vec<(PgEventStore, PgOutbox)> {
    let pool = tests::pg_store().await.pool().clone();
    let mut tenants = Vec::new();
    for schema in TENANTS {
        dtx_postgres::migrate_in_schema(&pool, schema)
            .await
            .unwrap();
        let store = PgEventStore::new(pool.clone())
            .with_schema(schema)
            .unwrap()
            .with_outbox(true);
        let outbox = PgOutbox::new(pool.clone()).with_schema(schema).unwrap();
        tenants.push((store, outbox));
    }
    tenants
}

/// Appends one event to each of `streams` (the same names in every tenant).
async fn append(store: &PgEventStore, streams: &[&str]) {
    for name in streams {
        store
            .append(
                &StreamId::new(*name).unwrap(),
                ExpectedVersion::Any,
                vec![NewEvent::from_json("Happened", name).unwrap()],
            )
            .await
            .unwrap();
    }
}

/// A publisher that holds every publish until it is let through, and says when one arrives.
#[derive(Clone)]
struct Gate {
    entered: Arc<Notify>,
    open: Arc<Semaphore>,
    inner: MemoryPublisher,
}

#[async_trait]
impl Publisher for Gate {
    async fn publish(&self, message: &OutboxMessage) -> Result<(), PublishError> {
        self.entered.notify_one();
        let _permit = self.open.acquire().await.unwrap();
        self.inner.publish(message).await
    }
}

/// Tenant A's relay is stopped in the middle of a pass (inside its publisher, holding its
/// transaction with the feed's lock and the locks of its streams); tenant B's relay publishes
/// all of B's events meanwhile, streams of the same names included. Before the locks were
/// scoped, B found the feed "taken" and its streams locked, and published nothing until A was
/// done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_relay_publishes_while_another_tenants_relay_holds_its_locks() {
    let tenants = tenants().await;
    let streams = ["Order-1", "Order-2", "Order-3"];
    for (store, _) in &tenants {
        append(store, &streams).await;
    }
    let gate = Gate {
        entered: Arc::new(Notify::new()),
        open: Arc::new(Semaphore::new(0)),
        inner: MemoryPublisher::new(),
    };
    let relay_a = tenants[0].1.relay(gate.clone(), RelayOptions::default());
    let entered = gate.entered.notified();
    let a = tokio::spawn(async move { relay_a.run_until_idle().await });
    tokio::time::timeout(Duration::from_secs(30), entered)
        .await
        .expect("tenant A's relay reaches its publisher");

    let published_b = MemoryPublisher::new();
    let relay_b = tenants[1]
        .1
        .relay(published_b.clone(), RelayOptions::default());
    let published = tokio::time::timeout(Duration::from_secs(30), relay_b.run_until_idle())
        .await
        .expect("tenant B's relay is not held back by A's")
        .unwrap();
    assert_eq!(
        published,
        streams.len(),
        "B publishes while A holds its locks"
    );
    assert_eq!(tenants[1].1.counts().await.unwrap().pending, 0);
    assert_eq!(gate.inner.count(), 0, "A is still held");

    gate.open.add_permits(1_000);
    assert_eq!(a.await.unwrap().unwrap(), streams.len());
    assert_eq!(tenants[0].1.counts().await.unwrap().pending, 0);
}

/// Waits for the next notification on `listener` and returns its payload.
async fn next_payload(listener: &mut sqlx::postgres::PgListener) -> String {
    tokio::time::timeout(Duration::from_secs(30), listener.recv())
        .await
        .expect("a notification")
        .unwrap()
        .payload()
        .to_owned()
}

/// One `NOTIFY` channel and wake lock per tenant: with A's relay armed, A's appends notify A's
/// channel and B's appends notify nobody. Checked without waiting for an absence: after the
/// appends a marker is sent on each channel, and the marker must be the next notification (a
/// listener gets notifications in commit order).
#[tokio::test]
async fn one_tenants_writes_never_wake_another_tenants_relay() {
    let tenants = tenants().await;
    let (store_a, outbox_a) = &tenants[0];
    let (store_b, outbox_b) = &tenants[1];
    let channel_a = outbox_a.notify_channel().await.unwrap();
    let channel_b = outbox_b.notify_channel().await.unwrap();
    assert_ne!(channel_a, channel_b);
    let mut listen_a = sqlx::postgres::PgListener::connect_with(store_a.pool())
        .await
        .unwrap();
    listen_a.listen(&channel_a).await.unwrap();
    let mut listen_b = sqlx::postgres::PgListener::connect_with(store_b.pool())
        .await
        .unwrap();
    listen_b.listen(&channel_b).await.unwrap();

    // Arm tenant A's wake-up by hand, as its idle relay does.
    let mut armed = store_a.pool().acquire().await.unwrap();
    outbox_a.hold_wake_lock(&mut armed).await.unwrap();
    assert!(outbox_a.armed().await.unwrap());
    assert!(!outbox_b.armed().await.unwrap(), "B's relay is not armed");

    append(store_b, &["Order-1"]).await;
    append(store_a, &["Order-1"]).await;
    append(store_b, &["Order-2"]).await;
    for channel in [&channel_a, &channel_b] {
        sqlx::query("SELECT pg_notify($1, 'marker')")
            .bind(channel)
            .execute(store_a.pool())
            .await
            .unwrap();
    }
    assert_eq!(next_payload(&mut listen_a).await, "", "A's append woke A");
    assert_eq!(
        next_payload(&mut listen_a).await,
        "marker",
        "B's appends did not"
    );
    assert_eq!(
        next_payload(&mut listen_b).await,
        "marker",
        "nothing woke B: its relay is not armed, and A's append notifies A's channel"
    );
    drop(armed);
}
