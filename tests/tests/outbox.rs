//! The PostgreSQL outbox and relay: events written in the append's statement arrive in order per
//! stream with their headers, transactions decide what is published, poison messages are
//! dead-lettered alone, two relays keep per-stream order, `LISTEN/NOTIFY` wakes the relay, and
//! every outbox statement is served by an index.

#![allow(
    clippy::unwrap_used,
    clippy::too_many_lines,
    clippy::similar_names,
    reason = "tests"
)]

use async_trait::async_trait;
use dtx::UnitOfWork as _;
use dtx::outbox::{
    MemoryPublisher, NewOutboxMessage, OutboxMessage, PublishError, Publisher, RelayOptions,
    headers,
};
use dtx::{EventMetadata, EventStore, ExpectedVersion, NewEvent, StreamId, Uuid};
use dtx_postgres::{PgEventStore, PgOutbox};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

fn event(n: u64, metadata: EventMetadata) -> NewEvent {
    let mut event = NewEvent::from_json("Happened", &serde_json::json!({ "n": n })).unwrap();
    event.metadata = metadata;
    event
}

/// Appends event 1 to a new stream `name`.
async fn first_event(store: &PgEventStore, name: &str) {
    store
        .append(
            &StreamId::new(name).unwrap(),
            ExpectedVersion::NoStream,
            vec![event(1, EventMetadata::default())],
        )
        .await
        .unwrap();
}

fn fast() -> RelayOptions {
    RelayOptions {
        max_retries: 2,
        base_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
        poll_interval: Duration::from_millis(50),
        ..RelayOptions::default()
    }
}

async fn outbox_store() -> (PgEventStore, PgOutbox) {
    let store = tests::pg_store().await.with_outbox(true);
    let outbox = PgOutbox::new(store.pool().clone());
    (store, outbox)
}

/// Per key, the published sequences in publish order.
fn by_key(messages: &[OutboxMessage]) -> HashMap<String, Vec<u64>> {
    let mut keys: HashMap<String, Vec<u64>> = HashMap::new();
    for m in messages {
        keys.entry(m.key.clone())
            .or_default()
            .push(m.sequence.unwrap());
    }
    keys
}

#[tokio::test]
async fn every_appended_event_is_published_in_order_with_headers() {
    let (store, outbox) = outbox_store().await;
    let correlation = Uuid::now_v7();
    let causation = Uuid::now_v7();
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let metadata = EventMetadata::correlated(correlation)
        .caused_by(causation)
        .with_traceparent(traceparent);
    for s in 0..20 {
        let stream = StreamId::new(format!("Order-{s}")).unwrap();
        // batches of 1 and of 4 events
        store
            .append(
                &stream,
                ExpectedVersion::NoStream,
                vec![event(1, metadata.clone())],
            )
            .await
            .unwrap();
        let batch = (2..=5).map(|n| event(n, metadata.clone())).collect();
        store
            .append(&stream, ExpectedVersion::Exact(1), batch)
            .await
            .unwrap();
    }
    assert_eq!(outbox.counts().await.unwrap().pending, 100);
    assert!(outbox.counts().await.unwrap().oldest_pending_age.is_some());

    let publisher = MemoryPublisher::new();
    let relay = outbox.relay(publisher.clone(), fast());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(async move {
        relay
            .run(async {
                stopped.await.ok();
            })
            .await
    });
    assert!(publisher.wait_for(100, Duration::from_secs(10)).await);
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();

    let published = publisher.published();
    assert_eq!(published.len(), 100, "no duplicates without failures");
    for (key, sequences) in by_key(&published) {
        assert_eq!(sequences, [1, 2, 3, 4, 5], "{key}");
    }
    let stored = store
        .read_stream(&StreamId::new("Order-3").unwrap(), 1, 10)
        .await
        .unwrap();
    let first = published
        .iter()
        .find(|m| m.key == "Order-3" && m.sequence == Some(1))
        .unwrap();
    assert_eq!(first.message_id, stored[0].event_id);
    assert_eq!(first.message_type, "Happened");
    let payload: serde_json::Value = serde_json::from_str(&first.payload).unwrap();
    assert_eq!(payload, serde_json::json!({ "n": 1 }));
    let h = &first.headers;
    assert_eq!(h[headers::EVENT_ID], stored[0].event_id.to_string());
    assert_eq!(h[headers::EVENT_TYPE], "Happened");
    assert_eq!(h[headers::STREAM_ID], "Order-3");
    assert_eq!(h[headers::CORRELATION_ID], correlation.to_string());
    assert_eq!(h[headers::CAUSATION_ID], causation.to_string());
    assert_eq!(h[headers::TRACEPARENT], traceparent);

    let counts = outbox.counts().await.unwrap();
    assert_eq!((counts.pending, counts.published, counts.dead), (0, 100, 0));
    assert_eq!(counts.oldest_pending_age, None);
}

#[tokio::test]
async fn plain_store_writes_no_outbox_rows_and_rollbacks_publish_nothing() {
    let (store, outbox) = outbox_store().await;
    let plain = PgEventStore::new(store.pool().clone());
    let stream = StreamId::new("Plain-1").unwrap();
    plain
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![event(1, EventMetadata::default())],
        )
        .await
        .unwrap();
    assert_eq!(outbox.counts().await.unwrap().pending, 0);

    // Rolled back: neither the events nor the messages exist.
    let stream = StreamId::new("Tx-1").unwrap();
    let mut tx = dtx_postgres::PgUnitOfWork::begin(store.pool())
        .await
        .unwrap();
    store
        .append_in(
            &mut tx,
            &stream,
            ExpectedVersion::NoStream,
            vec![event(1, EventMetadata::default())],
        )
        .await
        .unwrap();
    let message = NewOutboxMessage::new("emails", "SendWelcome", &serde_json::json!({"to": "a"}))
        .unwrap()
        .with_header("x-tenant", "7")
        .unwrap();
    outbox
        .enqueue(tx.connection(), vec![message])
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(outbox.counts().await.unwrap().pending, 0);

    // Committed: both, published together.
    let mut tx = dtx_postgres::PgUnitOfWork::begin(store.pool())
        .await
        .unwrap();
    store
        .append_in(
            &mut tx,
            &stream,
            ExpectedVersion::NoStream,
            vec![event(1, EventMetadata::default())],
        )
        .await
        .unwrap();
    let messages = (0..3)
        .map(|n| NewOutboxMessage::new("emails", "SendWelcome", &n).unwrap())
        .collect();
    outbox.enqueue(tx.connection(), messages).await.unwrap();
    tx.commit().await.unwrap();
    let publisher = MemoryPublisher::new();
    let relay = outbox.relay(publisher.clone(), fast());
    assert_eq!(relay.run_until_idle().await.unwrap(), 4);
    let published = publisher.published();
    let emails: Vec<&str> = published
        .iter()
        .filter(|m| m.key == "emails")
        .map(|m| &*m.payload)
        .collect();
    assert_eq!(emails, ["0", "1", "2"]);
    let email = published.iter().find(|m| m.key == "emails").unwrap();
    assert_eq!(
        email.headers[headers::EVENT_ID],
        email.message_id.to_string()
    );
    assert_eq!(email.headers[headers::STREAM_ID], "emails");
    assert_eq!(email.sequence, None);
}

#[tokio::test]
async fn poison_message_is_dead_lettered_while_other_streams_flow() {
    let (store, outbox) = outbox_store().await;
    for s in ["Poison", "A", "B", "C"] {
        let stream = StreamId::new(s).unwrap();
        for n in 1..=3 {
            store
                .append(
                    &stream,
                    ExpectedVersion::Any,
                    vec![event(n, EventMetadata::default())],
                )
                .await
                .unwrap();
        }
    }
    let publisher = MemoryPublisher::new();
    publisher.reject_key("Poison");
    let relay = outbox.relay(publisher.clone(), fast());

    // Other streams flow while the poison key is retried: its first failure sets it aside.
    // (Looked for up to 10 s each: a pass may wait for another test's open transaction.)
    let mut failed = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        let pass = relay.run_once().await.unwrap();
        failed += pass.failed;
        if publisher.published().len() == 9 && failed > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(publisher.published().len(), 9);
    assert!(failed >= 1);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if outbox.counts().await.unwrap().dead == 1 {
            break;
        }
        relay.run_once().await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // More events keep flowing on the other streams while the poison key is dead; a new event
    // of the poison stream waits behind the dead one.
    for s in ["A", "Poison"] {
        store
            .append(
                &StreamId::new(s).unwrap(),
                ExpectedVersion::Exact(3),
                vec![event(4, EventMetadata::default())],
            )
            .await
            .unwrap();
    }
    relay.run_until_idle().await.unwrap();

    let counts = outbox.counts().await.unwrap();
    assert_eq!((counts.published, counts.dead, counts.pending), (10, 1, 3));
    assert_eq!(publisher.rejections(), 3, "max_retries = 2: three attempts");
    let dead = outbox.dead(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].key.as_str(), dead[0].sequence, dead[0].attempts),
        ("Poison", Some(1), 3)
    );
    assert!(dead[0].last_error.as_deref().unwrap().contains("rejected"));
    // The dead message's key stops: its later messages never overtake it.
    assert!(publisher.published().iter().all(|m| m.key != "Poison"));

    // Fixed and requeued: the key resumes, in order.
    publisher.accept_key("Poison");
    assert!(outbox.requeue(dead[0].id).await.unwrap());
    assert!(
        !outbox.requeue(dead[0].id).await.unwrap(),
        "not dead any more"
    );
    relay.run_until_idle().await.unwrap();
    let keys = by_key(&publisher.published());
    assert_eq!(keys["Poison"], [1, 2, 3, 4]);
    assert_eq!(keys["A"], [1, 2, 3, 4]);
    assert_eq!(outbox.counts().await.unwrap().pending, 0);
}

/// Counts what one relay published, into a publisher shared by both relays (whose log is in
/// global publish order).
struct Counted {
    inner: MemoryPublisher,
    count: Arc<AtomicUsize>,
}

#[async_trait]
impl Publisher for Counted {
    async fn publish(&self, message: &OutboxMessage) -> Result<(), PublishError> {
        // a broker round trip, so the relays' batches overlap in time
        tokio::time::sleep(Duration::from_micros(200)).await;
        self.inner.publish(message).await?;
        self.count.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_keep_per_stream_order_over_10_000_events_on_100_streams() {
    const STREAMS: u64 = 100;
    const PER_STREAM: u64 = 100;
    let (store, outbox) = outbox_store().await;
    let shared = MemoryPublisher::new();
    let counts = [Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0))];
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut relays = Vec::new();
    for count in &counts {
        let relay = outbox.relay(
            Counted {
                inner: shared.clone(),
                count: Arc::clone(count),
            },
            fast(),
        );
        let mut stopped = stopped.clone();
        relays.push(tokio::spawn(async move {
            relay
                .run(async move {
                    stopped.wait_for(|s| *s).await.ok();
                })
                .await
        }));
    }
    // Writers append while the relays run: 10 rounds of 10 events on each stream.
    let mut writers = Vec::new();
    for w in 0..4 {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            for round in 0..PER_STREAM / 10 {
                for s in (w..STREAMS).step_by(4) {
                    let stream = StreamId::new(format!("S-{s}")).unwrap();
                    let events = (1..=10)
                        .map(|k| event(round * 10 + k, EventMetadata::default()))
                        .collect();
                    store
                        .append(&stream, ExpectedVersion::Exact(round * 10), events)
                        .await
                        .unwrap();
                }
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let total = usize::try_from(STREAMS * PER_STREAM).unwrap();
    assert!(
        shared.wait_for(total, Duration::from_mins(2)).await,
        "published {} of {total}",
        shared.count()
    );
    stop.send(true).unwrap();
    for relay in relays {
        relay.await.unwrap().unwrap();
    }
    let published = shared.published();
    assert_eq!(published.len(), total, "a message was published twice");
    let keys = by_key(&published);
    assert_eq!(keys.len(), 100);
    for (key, sequences) in keys {
        assert!(
            sequences.iter().copied().eq(1..=PER_STREAM),
            "{key}: {sequences:?}"
        );
    }
    let (a, b) = (
        counts[0].load(Ordering::Relaxed),
        counts[1].load(Ordering::Relaxed),
    );
    println!("relay A published {a}, relay B {b}");
    assert!(a > 0 && b > 0, "both relays worked: {a} / {b}");
}

#[tokio::test]
async fn notify_wakes_an_idle_relay_long_before_its_poll() {
    let (store, outbox) = outbox_store().await;
    let publisher = MemoryPublisher::new();
    let relay = outbox.relay(
        publisher.clone(),
        RelayOptions {
            poll_interval: Duration::from_mins(1),
            ..RelayOptions::default()
        },
    );
    let running = tokio::spawn(async move { relay.run(std::future::pending()).await });
    let armed = async || outbox.armed().await.unwrap();
    for _ in 0..100 {
        if armed().await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(armed().await, "an idle relay arms the wake-up");
    for n in 1..=3 {
        let started = std::time::Instant::now();
        store
            .append(
                &StreamId::new("Wake").unwrap(),
                ExpectedVersion::Any,
                vec![event(n, EventMetadata::default())],
            )
            .await
            .unwrap();
        assert!(
            publisher
                .wait_for(usize::try_from(n).unwrap(), Duration::from_secs(5))
                .await
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        for _ in 0..100 {
            if armed().await {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    running.abort();
}

/// The relay reads the feed below the oldest running transaction: an event committed while an
/// older transaction is still open waits for it, is never skipped, and is published as soon as
/// that transaction ends (which sends no `NOTIFY`: the relay looks again shortly by itself).
#[tokio::test]
async fn events_behind_an_open_transaction_wait_for_it_and_are_never_skipped() {
    let (store, outbox) = outbox_store().await;
    let mut open = dtx_postgres::PgUnitOfWork::begin(store.pool())
        .await
        .unwrap();
    store
        .append_in(
            &mut open,
            &StreamId::new("Early").unwrap(),
            ExpectedVersion::NoStream,
            vec![event(1, EventMetadata::default())],
        )
        .await
        .unwrap();
    first_event(&store, "Late").await;
    let publisher = MemoryPublisher::new();
    let relay = outbox.relay(
        publisher.clone(),
        RelayOptions {
            poll_interval: Duration::from_secs(30),
            ..fast()
        },
    );
    let pass = relay.run_once().await.unwrap();
    assert!(pass.waiting && pass.is_idle(), "{pass:?}");
    assert_eq!(outbox.counts().await.unwrap().pending, 1);

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(async move {
        relay
            .run(async {
                stopped.await.ok();
            })
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(publisher.count(), 0, "nothing passes the open transaction");
    open.commit().await.unwrap();
    assert!(publisher.wait_for(2, Duration::from_secs(5)).await);
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
    let keys: Vec<String> = publisher.published().into_iter().map(|m| m.key).collect();
    assert_eq!(keys, ["Early", "Late"], "in the feed's order");
    assert_eq!(outbox.counts().await.unwrap().pending, 0);
}

/// Holds every publish until released: a slow broker.
#[derive(Clone)]
struct Held {
    entered: Arc<tokio::sync::Notify>,
    release: Arc<tokio::sync::Semaphore>,
}

impl Default for Held {
    fn default() -> Self {
        Self {
            entered: Arc::default(),
            release: Arc::new(tokio::sync::Semaphore::new(0)),
        }
    }
}

#[async_trait]
impl Publisher for Held {
    async fn publish(&self, _message: &OutboxMessage) -> Result<(), PublishError> {
        self.entered.notify_one();
        self.release.acquire().await.unwrap().forget();
        Ok(())
    }
}

/// A relay waiting on a slow broker holds no transaction id: other readers of the feed (here
/// `read_all`, as projections read it) still see the events committed meanwhile.
#[tokio::test]
async fn a_relay_publishing_does_not_hold_back_the_feed_for_other_readers() {
    let (store, outbox) = outbox_store().await;
    first_event(&store, "First").await;
    let publisher = Held::default();
    let relay = outbox.relay(publisher.clone(), fast());
    let entered = publisher.entered.notified();
    // Passes until one publishes (a pass may find the event still waiting for a transaction
    // of the cluster that began before it committed, such as an autovacuum's ANALYZE).
    let publishing = tokio::spawn(async move {
        loop {
            let pass = relay.run_once().await?;
            if pass.published > 0 {
                return Ok::<_, dtx::Error>(pass);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    entered.await;
    let plain = PgEventStore::new(store.pool().clone());
    first_event(&plain, "Meanwhile").await;
    // While the relay is still held, the feed shows the event committed meanwhile (looked for
    // a while: another test's open transaction can hold every feed back for a moment).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let feed = store
            .read_all(dtx::GlobalPosition::START, 10)
            .await
            .unwrap();
        let streams: Vec<&str> = feed.iter().map(|e| e.stream_id.as_str()).collect();
        if streams == ["First", "Meanwhile"] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the held relay holds back the feed: {streams:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!publishing.is_finished(), "the relay is still publishing");
    publisher.release.add_permits(1);
    assert_eq!(publishing.await.unwrap().unwrap().published, 1);
}

/// `run_until_idle` returns only once it has read the feed to its end: a pass that finds
/// another relay reading the feed is not idle, since that relay may stop after its batch (as the
/// last pass of an aborted relay does) and leave the rest of the feed behind.
#[tokio::test]
async fn run_until_idle_reads_on_after_a_relay_that_held_the_feed() {
    let (store, outbox) = outbox_store().await;
    first_event(&store, "First").await;
    first_event(&store, "Second").await;
    let held = Held::default();
    let other = outbox.relay(
        held.clone(),
        RelayOptions {
            batch_size: 1,
            batches_per_pass: 1,
            ..fast()
        },
    );
    let entered = held.entered.notified();
    let one_batch = tokio::spawn(async move { tests::pass_with_work(&other).await });
    entered.await;
    // The other relay holds the feed while it publishes "First", then stops.
    let publisher = MemoryPublisher::new();
    let relay = outbox.relay(publisher.clone(), fast());
    let until_idle = tokio::spawn(async move { relay.run_until_idle().await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !until_idle.is_finished(),
        "run_until_idle returned while another relay read the feed: {:?}",
        until_idle.await
    );
    held.release.add_permits(1);
    assert_eq!(one_batch.await.unwrap().published, 1);
    assert_eq!(until_idle.await.unwrap().unwrap(), 1);
    let keys: Vec<String> = publisher.published().into_iter().map(|m| m.key).collect();
    assert_eq!(keys, ["Second"]);
    assert_eq!(outbox.counts().await.unwrap().pending, 0);
}

/// Relay tasks aborted at any moment (mid-pass, mid-publish, armed and waiting) leave nothing
/// behind: no pooled connection inside a transaction, no wake lock held, and every event is
/// still published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_aborted_at_any_moment_leave_no_transaction_or_lock_behind() {
    let (store, outbox) = outbox_store().await;
    let publisher = MemoryPublisher::new();
    let mut appended = 0u64;
    for round in 0..100u64 {
        // A backlog, so that the relay is mostly inside a pass when it is aborted.
        for s in 0..3 {
            let stream = StreamId::new(format!("Abort-{s}")).unwrap();
            let events = (0..10)
                .map(|n| event(n, EventMetadata::default()))
                .collect();
            tokio::time::timeout(
                Duration::from_secs(10),
                store.append(&stream, ExpectedVersion::Any, events),
            )
            .await
            .expect("the append waited on a connection left inside a transaction")
            .unwrap();
            appended += 10;
        }
        let relay = outbox.relay(
            publisher.clone(),
            RelayOptions {
                batch_size: 7,
                ..fast()
            },
        );
        let running = tokio::spawn(async move { relay.run(std::future::pending()).await });
        tokio::time::sleep(Duration::from_micros(round * 337 % 2500)).await;
        running.abort();
    }
    // The aborted relays' passes finish on their own; their wake-lock connections close.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let in_transaction: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND state LIKE 'idle in transaction%'",
        )
        .fetch_one(store.pool())
        .await
        .unwrap();
        if in_transaction == 0 && !outbox.armed().await.unwrap() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{in_transaction} connections left in a transaction, armed: {}",
            outbox.armed().await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A pass of an aborted relay may still be reading the feed (a statement in flight is no
    // connection idle in a transaction): `run_until_idle` waits for it and reads on after it.
    let relay = outbox.relay(publisher.clone(), fast());
    relay.run_until_idle().await.unwrap();
    let keys = by_key(&publisher.published());
    let mut delivered = 0;
    for (key, sequences) in &keys {
        let mut seen = 0;
        for &sequence in sequences {
            assert!(sequence <= seen + 1, "{key}: {sequence} after {seen}");
            seen = seen.max(sequence);
        }
        delivered += seen;
    }
    if delivered != appended {
        use std::fmt::Write as _;
        let mut report = outbox_report(&store, &outbox, &publisher).await;
        let again = relay.run_until_idle().await;
        let _ = write!(
            report,
            "a second run_until_idle: {again:?}, then {} published",
            publisher.count()
        );
        panic!("every event published: {delivered} of {appended}\n{report}");
    }
    assert_eq!(outbox.counts().await.unwrap().pending, 0);
}

/// What the outbox holds, for the message of a failed assertion that not every event was
/// published: the events not published (and how many of them lie behind the feed's checkpoint,
/// which would be a lost event), those published twice, the counts, the checkpoint, the
/// horizon, the backlog table, the advisory locks held and the sessions of the test's database.
async fn outbox_report(
    store: &PgEventStore,
    outbox: &PgOutbox,
    publisher: &MemoryPublisher,
) -> String {
    use std::collections::BTreeSet;
    use std::fmt::Write as _;
    let pool = store.pool();
    let mut report = String::new();
    // The checkpoint first: a relay publishes before it moves the checkpoint, so an event behind
    // this checkpoint that the publisher has not seen afterwards was lost, whatever a relay
    // still running does meanwhile.
    let checkpoint: Option<(i64, i64, i64)> = sqlx::query_as(
        "SELECT commit_order, global_position, published FROM outbox_feed WHERE feed = 'events'",
    )
    .fetch_optional(pool)
    .await
    .unwrap();
    let published: BTreeSet<(String, u64)> = publisher
        .published()
        .into_iter()
        .map(|m| (m.key, m.sequence.unwrap_or(0)))
        .collect();
    let stored: Vec<(String, i64, i64, i64, bool)> = sqlx::query_as(
        "SELECT stream_id, version, commit_order, global_position, outbox FROM event_store
         ORDER BY commit_order, global_position",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let missing: Vec<_> = stored
        .iter()
        .filter(|(stream, version, ..)| {
            !published.contains(&(stream.clone(), u64::try_from(*version).unwrap()))
        })
        .collect();
    let _ = writeln!(
        report,
        "{} events stored, {} published (distinct), {} not published{}",
        stored.len(),
        published.len(),
        missing.len(),
        if missing.is_empty() {
            ""
        } else {
            " (stream, version, commit_order, global_position, outbox):"
        }
    );
    for row in missing.iter().take(40) {
        let _ = writeln!(report, "  {row:?}");
    }
    let mut seen = BTreeSet::new();
    let order: Vec<(String, u64, i64)> = publisher
        .published()
        .into_iter()
        .map(|m| (m.key, m.sequence.unwrap_or(0), m.id))
        .collect();
    let twice: Vec<_> = order
        .iter()
        .filter(|m| !seen.insert((m.0.clone(), m.1)))
        .collect();
    let _ = writeln!(report, "published twice (stream, version, id): {twice:?}");
    let _ = writeln!(report, "counts: {:?}", outbox.counts().await);
    let horizon: i64 =
        sqlx::query_scalar("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
            .fetch_one(pool)
            .await
            .unwrap();
    let _ = writeln!(
        report,
        "feed checkpoint (commit_order, global_position, published): {checkpoint:?}, horizon now: {horizon}"
    );
    if let Some((order, position, _)) = checkpoint {
        let behind = missing
            .iter()
            .filter(|(_, _, o, p, _)| (*o, *p) <= (order, position))
            .count();
        let _ = writeln!(
            report,
            "not published and behind the checkpoint: {behind}, after it: {}",
            missing.len() - behind
        );
    }
    let backlog: Vec<String> = sqlx::query_scalar(
        "SELECT (stream_key, id, sequence, status, attempts, last_error)::text FROM outbox_events
         ORDER BY stream_key, id LIMIT 40",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let _ = writeln!(report, "backlog table (first 40 rows): {backlog:?}");
    let locks: Vec<String> = sqlx::query_scalar(
        "SELECT (classid, objid, pid, mode, granted)::text FROM pg_locks
         WHERE locktype = 'advisory'
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let _ = writeln!(
        report,
        "advisory locks (classid, objid, pid, mode, granted): {locks:?}"
    );
    let sessions: Vec<String> = sqlx::query_scalar(
        "SELECT (pid, state, backend_xid, left(query, 80))::text FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let _ = writeln!(report, "sessions (pid, state, xid, query): {sessions:?}");
    report
}

/// A relay that finds the feed's checkpoint gone stops with an error naming it (starting over
/// would publish the whole store again), loses nothing, and goes on once it is restored.
#[tokio::test]
async fn a_missing_feed_checkpoint_is_an_error_and_nothing_is_lost() {
    let (store, outbox) = outbox_store().await;
    first_event(&store, "Kept").await;
    let saved: (i64, i64, i64) = sqlx::query_as(
        "DELETE FROM outbox_feed WHERE feed = 'events'
         RETURNING commit_order, global_position, published",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    let publisher = MemoryPublisher::new();
    let relay = outbox.relay(publisher.clone(), fast());
    let error = relay.run_once().await.unwrap_err().to_string();
    assert!(error.contains("outbox_feed"), "{error}");
    assert!(publisher.published().is_empty());
    let error = outbox.counts().await.unwrap_err().to_string();
    assert!(
        error.contains("outbox_feed"),
        "counts do not report an empty outbox: {error}"
    );

    sqlx::query(
        "INSERT INTO outbox_feed (feed, commit_order, global_position, published)
         VALUES ('events', $1, $2, $3)",
    )
    .bind(saved.0)
    .bind(saved.1)
    .bind(saved.2)
    .execute(store.pool())
    .await
    .unwrap();
    assert_eq!(relay.run_until_idle().await.unwrap(), 1);
    assert_eq!(publisher.published()[0].key, "Kept");
}

/// A pass publishes up to `batches_per_pass` batches of the feed in one transaction, reading
/// each while the one before is being published: every stream in order, and a stream whose
/// publish failed in one batch is set aside in the pass's later batches too, never published
/// past its failure. Once the publisher takes it again, the stream is published in order from
/// its failure on.
#[tokio::test]
async fn a_pass_publishes_several_batches_and_a_failed_stream_stays_behind_its_failure() {
    let (store, outbox) = outbox_store().await;
    // The feed alternates the streams: A1 B1 C1 A2 B2 C2 ...
    for n in 1..=4u64 {
        for name in ["A", "B", "C"] {
            store
                .append(
                    &StreamId::new(name).unwrap(),
                    ExpectedVersion::Exact(n - 1),
                    vec![event(n, EventMetadata::default())],
                )
                .await
                .unwrap();
        }
    }
    tests::feed_showing(&store, 12).await;
    let publisher = MemoryPublisher::new();
    publisher.reject_key("B");
    let relay = outbox.relay(
        publisher.clone(),
        RelayOptions {
            batch_size: 3,
            batches_per_pass: 3,
            // B1 is not retried by the backlog pass that follows in the same `run_once`.
            base_backoff: Duration::from_millis(300),
            max_backoff: Duration::from_millis(300),
            ..fast()
        },
    );
    let numbers = |key: &str| -> Vec<u64> {
        publisher
            .published()
            .iter()
            .filter(|m| m.key == key)
            .map(|m| {
                serde_json::from_str::<serde_json::Value>(&m.payload).unwrap()["n"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    };

    let pass = relay.run_once().await.unwrap();
    // Three batches of three events: B failed at B1, and B2, B3 were set aside behind it.
    assert_eq!(
        (pass.from_feed, pass.published, pass.failed),
        (9, 6, 1),
        "{pass:?}"
    );
    assert_eq!(publisher.rejections(), 1);
    assert_eq!(numbers("A"), [1, 2, 3]);
    assert_eq!(numbers("B"), Vec::<u64>::new());
    assert_eq!(numbers("C"), [1, 2, 3]);
    // B1 to B3 in the backlog table, A4 to C4 still in the feed.
    assert_eq!(outbox.counts().await.unwrap().pending, 6);

    publisher.accept_key("B");
    tokio::time::sleep(Duration::from_millis(350)).await;
    relay.run_until_idle().await.unwrap();
    for key in ["A", "B", "C"] {
        assert_eq!(numbers(key), [1, 2, 3, 4], "stream {key}");
    }
    assert_eq!(outbox.counts().await.unwrap().pending, 0);
}

/// A feed pass that fails inside its transaction (here its checkpoint, timed out behind a lock
/// another session holds on the checkpoint row, after the batch was published) closes its
/// connection instead of giving it back to the pool inside the transaction: the pool's next
/// user gets a connection outside any transaction, and once the lock is gone the event is
/// published again (at least once), nothing lost.
#[tokio::test]
async fn a_feed_pass_that_fails_mid_transaction_never_hands_its_connection_back_inside_it() {
    let (store, _) = outbox_store().await;
    first_event(&store, "Locked").await;
    tests::feed_showing(&store, 1).await;
    let options = (*store.pool().connect_options())
        .clone()
        .options([("lock_timeout", "200ms")]);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .unwrap();
    let outbox = PgOutbox::new(pool.clone());
    let mut holder = store.pool().begin().await.unwrap();
    sqlx::query("SELECT 1 FROM outbox_feed WHERE feed = 'events' FOR UPDATE")
        .execute(&mut *holder)
        .await
        .unwrap();

    let publisher = MemoryPublisher::new();
    let relay = outbox.relay(publisher.clone(), fast());
    let error = relay.run_once().await.unwrap_err().to_string();
    assert!(error.contains("lock timeout"), "{error}");
    assert_eq!(publisher.published().len(), 1);
    // Inside the pass's transaction, the feed's lock is recorded in a setting of the
    // transaction (and inside it once failed, every statement fails).
    let leader: String =
        sqlx::query_scalar("SELECT COALESCE(current_setting('dtx.outbox_feed_leader', true), '')")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        leader, "",
        "the pool's connection is inside the pass's transaction"
    );

    holder.rollback().await.unwrap();
    assert_eq!(relay.run_until_idle().await.unwrap(), 1);
    let keys: Vec<String> = publisher.published().into_iter().map(|m| m.key).collect();
    assert_eq!(keys, ["Locked", "Locked"]);
    assert_eq!(outbox.counts().await.unwrap().pending, 0);
}

/// An event set aside after a failed publish and then deleted from the store is dead-lettered
/// with an error naming it, never skipped silently.
#[tokio::test]
async fn an_event_gone_from_the_store_is_dead_lettered_with_a_clear_error() {
    let (store, outbox) = outbox_store().await;
    let gone = StreamId::new("Gone").unwrap();
    let kept = StreamId::new("Kept").unwrap();
    for stream in [&gone, &kept] {
        store
            .append(
                stream,
                ExpectedVersion::NoStream,
                vec![event(1, EventMetadata::default())],
            )
            .await
            .unwrap();
    }
    // Both in the relay's first pass (the second would retry `Gone` if `Kept` waited behind
    // another test's transaction past the backoff).
    tests::feed_showing(&store, 2).await;
    let publisher = MemoryPublisher::new();
    publisher.reject_key("Gone");
    let relay = outbox.relay(
        publisher.clone(),
        RelayOptions {
            max_retries: 1,
            base_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_millis(200),
            ..fast()
        },
    );
    relay.run_until_idle().await.unwrap();
    assert_eq!(publisher.rejections(), 1);
    publisher.accept_key("Gone");
    sqlx::query("DELETE FROM event_store WHERE stream_id = 'Gone'")
        .execute(store.pool())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    relay.run_until_idle().await.unwrap();
    let published = publisher.published();
    assert_eq!(published.len(), 1);
    assert_eq!(published[0].key, "Kept");
    let dead = outbox.dead(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].key, "Gone");
    let error = dead[0].last_error.as_deref().unwrap();
    assert!(
        error.contains("event 1 of stream `Gone` is no longer in the event store"),
        "{error}"
    );
}

/// Passes over the backlog table go round its keys: with 30 keys of 5 messages and batches of
/// 4, every key has had its first message published after 8 passes, however the keys sort.
#[tokio::test]
async fn passes_go_round_every_key_with_work() {
    let (store, outbox) = outbox_store().await;
    let mut tx = dtx_postgres::PgUnitOfWork::begin(store.pool())
        .await
        .unwrap();
    for k in 0..30 {
        let messages = (1..=5)
            .map(|n| NewOutboxMessage::new(format!("Round-{k:02}"), "Happened", &n).unwrap())
            .collect();
        outbox.enqueue(tx.connection(), messages).await.unwrap();
    }
    tx.commit().await.unwrap();
    let publisher = MemoryPublisher::new();
    let relay = outbox.relay(
        publisher.clone(),
        RelayOptions {
            batch_size: 4,
            ..fast()
        },
    );
    let payloads = |published: &[OutboxMessage]| {
        let mut keys: HashMap<String, Vec<u64>> = HashMap::new();
        for m in published {
            keys.entry(m.key.clone())
                .or_default()
                .push(m.payload.parse().unwrap());
        }
        keys
    };
    for _ in 0..8 {
        assert_eq!(relay.run_once().await.unwrap().published, 4);
    }
    let keys = payloads(&publisher.published());
    assert_eq!(keys.len(), 30, "every key had a turn: {keys:?}");
    for (key, sequences) in &keys {
        assert_eq!(sequences[0], 1, "{key} in order");
    }
    assert_eq!(relay.run_until_idle().await.unwrap(), 150 - 32);
    for (key, sequences) in payloads(&publisher.published()) {
        assert!(sequences.iter().copied().eq(1..=5), "{key}: {sequences:?}");
    }
}

/// Takes the wake lock on its own connection, as an armed relay does.
async fn arm_by_hand(pool: &sqlx::PgPool) -> sqlx::pool::PoolConnection<sqlx::Postgres> {
    let mut conn = pool.acquire().await.unwrap();
    dtx_postgres::outbox::hold_wake_lock(&mut conn)
        .await
        .unwrap();
    conn
}

#[tokio::test]
async fn appends_notify_only_while_a_relay_is_armed() {
    let (store, outbox) = outbox_store().await;
    let mut listener = sqlx::postgres::PgListener::connect_with(store.pool())
        .await
        .unwrap();
    listener
        .listen(&outbox.notify_channel().await.unwrap())
        .await
        .unwrap();
    let stream = StreamId::new("Quiet").unwrap();
    let append = async |n: u64| {
        store
            .append(
                &stream,
                ExpectedVersion::Any,
                vec![event(n, EventMetadata::default())],
            )
            .await
            .unwrap();
    };
    // Not armed (no idle relay): appends never notify.
    assert!(!outbox.armed().await.unwrap());
    for n in 1..=5 {
        append(n).await;
    }
    assert!(listener.try_recv_timeout_none().await);
    // Armed: appends notify.
    let armed = arm_by_hand(store.pool()).await;
    assert!(outbox.armed().await.unwrap());
    append(6).await;
    assert!(listener.notified().await, "an append while armed notifies");
    // Every append statement notifies, a batch once for all its events.
    let other = StreamId::new("Quiet-batch").unwrap();
    let batch = (8..=10)
        .map(|n| event(n, EventMetadata::default()))
        .collect();
    store
        .append(&other, ExpectedVersion::NoStream, batch)
        .await
        .unwrap();
    assert!(
        listener.notified().await,
        "a batch appended while armed notifies"
    );
    assert!(listener.try_recv_timeout_none().await, "once");
    store
        .append(
            &other,
            ExpectedVersion::Exact(3),
            vec![event(11, EventMetadata::default())],
        )
        .await
        .unwrap();
    assert!(
        listener.notified().await,
        "an `Exact` append while armed notifies"
    );
    // Disarmed (the relay is busy again): quiet.
    drop(armed.detach());
    for _ in 0..100 {
        if !outbox.armed().await.unwrap() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    while !listener.try_recv_timeout_none().await {}
    append(7).await;
    assert!(listener.try_recv_timeout_none().await);
}

/// The race a wake-up flag loses: a write that checked the wake-up before the relay armed it and
/// commits after the relay's last look. Here arming waits for such a write to commit, so the
/// relay's last look sees it.
#[tokio::test]
async fn arming_waits_for_writes_that_found_the_relay_busy() {
    let (store, outbox) = outbox_store().await;
    let mut tx = dtx_postgres::PgUnitOfWork::begin(store.pool())
        .await
        .unwrap();
    outbox
        .enqueue(
            tx.connection(),
            vec![NewOutboxMessage::new("In-flight", "Sent", &serde_json::json!({})).unwrap()],
        )
        .await
        .unwrap();
    // The write has checked the wake-up (not armed) and is not committed yet: arming waits.
    let pool = store.pool().clone();
    let arming = tokio::spawn(async move { arm_by_hand(&pool).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !arming.is_finished(),
        "arming waits for the write in flight"
    );
    assert!(!outbox.armed().await.unwrap());
    tx.commit().await.unwrap();
    let _armed = tokio::time::timeout(Duration::from_secs(5), arming)
        .await
        .expect("armed once the write committed")
        .unwrap();
    assert!(outbox.armed().await.unwrap());
    // Meanwhile a new write sees the relay armed (or arming) and notifies.
    let relay = outbox.relay(MemoryPublisher::new(), fast());
    assert_eq!(relay.run_until_idle().await.unwrap(), 1);
}

/// `PgListener` without a notification within 200 ms.
trait NoNotification {
    /// Whether no notification arrives within 200 ms.
    async fn try_recv_timeout_none(&mut self) -> bool;
    /// Whether a notification arrives within 2 s.
    async fn notified(&mut self) -> bool;
}

impl NoNotification for sqlx::postgres::PgListener {
    async fn try_recv_timeout_none(&mut self) -> bool {
        tokio::time::timeout(Duration::from_millis(200), self.recv())
            .await
            .is_err()
    }

    async fn notified(&mut self) -> bool {
        tokio::time::timeout(Duration::from_secs(2), self.recv())
            .await
            .is_ok()
    }
}

/// Published messages of the backlog table are kept in the archive for the retention and then
/// purged in bounded batches; events published from the feed stay in the event store, counted
/// as published.
#[tokio::test]
async fn retention_deletes_published_rows_in_bounded_batches() {
    let (store, outbox) = outbox_store().await;
    let stream = StreamId::new("Old").unwrap();
    let events = (1..=5)
        .map(|n| event(n, EventMetadata::default()))
        .collect();
    store
        .append(&stream, ExpectedVersion::NoStream, events)
        .await
        .unwrap();
    let mut tx = dtx_postgres::PgUnitOfWork::begin(store.pool())
        .await
        .unwrap();
    let messages = (1..=25)
        .map(|n| NewOutboxMessage::new("mail", "Sent", &n).unwrap())
        .collect();
    outbox.enqueue(tx.connection(), messages).await.unwrap();
    tx.commit().await.unwrap();
    let relay = outbox.relay(MemoryPublisher::new(), fast());
    assert_eq!(relay.run_until_idle().await.unwrap(), 30);
    assert_eq!(outbox.counts().await.unwrap().published, 30);
    // Too young for a retention of an hour.
    assert_eq!(
        outbox
            .purge_published(Duration::from_hours(1), 10)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        outbox.purge_published(Duration::ZERO, 10).await.unwrap(),
        25
    );
    let counts = outbox.counts().await.unwrap();
    assert_eq!((counts.published, counts.pending), (5, 0));
}

/// Every outbox statement (the append with the outbox, the relay's, the status API's) is
/// served by an index, never a sequential scan.
#[tokio::test]
async fn indexes_serve_every_outbox_statement() {
    let (store, outbox) = outbox_store().await;
    let statements = store
        .statements()
        .into_iter()
        .filter(|(name, _)| name.ends_with("_outbox"))
        .chain(outbox.statements())
        // The operator's status queries read the whole backlog or archive on purpose.
        .filter(|(name, _)| {
            ![
                "outbox_counts",
                "outbox_dead",
                "outbox_requeue",
                "outbox_requeue_all",
            ]
            .contains(name)
        });
    let plans = tests::generic_plans(store.pool(), statements).await;
    for (name, plan) in &plans {
        assert!(
            !plan.contains("Seq Scan on outbox_events")
                && !plan.contains("Seq Scan on event_store"),
            "{name} scans a table:\n{plan}"
        );
    }
    // The nine outbox appends (six, two inside a unit of work and the combined one) and the
    // relay's nine statements (the one that opens a feed pass's transaction and takes the feed's
    // lock reads no table).
    assert_eq!(plans.len(), 18);
}

/// A running relay and the writers it publishes share a pool of one connection: the relay never
/// keeps the pool's last connection from one pass to the next, so appends keep their turn while
/// it works through a backlog, and every event is published once, in order.
#[tokio::test]
async fn a_relay_and_writers_share_a_pool_of_one_connection() {
    let pool = dtx_postgres::testing::fresh_database(1).await.unwrap();
    let store = PgEventStore::new(pool.clone()).with_outbox(true);
    let outbox = PgOutbox::new(pool);
    let publisher = MemoryPublisher::new();
    let relay = outbox.relay(
        publisher.clone(),
        RelayOptions {
            batch_size: 10,
            ..fast()
        },
    );
    let (stop, running) =
        tests::spawn_until_stopped(|stopped| async move { relay.run(stopped).await });
    // 8 writers, 25 one-event appends each: a backlog the relay works through in passes of 10
    // while the writers keep appending.
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let stream = StreamId::new(format!("Shared-{w}")).unwrap();
                for n in 0..25u64 {
                    store
                        .append(
                            &stream,
                            ExpectedVersion::Exact(n),
                            vec![event(n + 1, EventMetadata::default())],
                        )
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        tokio::time::timeout(Duration::from_mins(1), writer)
            .await
            .expect("the writers finish while the relay runs")
            .unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_mins(1);
    while publisher.published().len() < 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} of 200 published after 60 s",
            publisher.published().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
    let published = publisher.published();
    assert_eq!(published.len(), 200, "each event once");
    let keys = by_key(&published);
    assert_eq!(keys.len(), 8);
    for (key, sequences) in keys {
        assert_eq!(sequences, (1..=25).collect::<Vec<u64>>(), "{key}");
    }
}
