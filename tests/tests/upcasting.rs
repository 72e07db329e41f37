//! Event upcasting on both backends: events stored by older deploys at schema versions 1 and 2
//! (under the type's old name) and by this one at version 3 load as version 3 through every read
//! path — repository loads, stream reads, the global feed, a projection and the event it is
//! given, a consumer and the message it is given, the inbox's decode — and the outbox relay
//! publishes them as stored or upcast, as asked (in memory, and on PostgreSQL to NATS
//! `JetStream`). A stored version no upcast reaches, and an upcaster's error, are typed errors
//! naming the stream, the version and the type.

#![allow(
    clippy::unwrap_used,
    clippy::too_many_lines,
    clippy::similar_names,
    clippy::unused_async,
    reason = "tests"
)]

use dtx::inbox::{Consumer, InboundMessage};
use dtx::outbox::{MemoryOutbox, MemoryPublisher, RelayOptions, headers};
use dtx::projection::{MemoryCheckpointStore, ProjectionRunner, SharedCheckpointStore};
use dtx::{
    Aggregate, Apply, DecodeError, DomainEvent, Error, EventMetadata, EventStore, ExpectedVersion,
    Id, MemoryEventStore, MemoryUnitOfWork, NewEvent, RecordedEvent, Repository, StreamId, Uuid,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};

/// The first deploy: `OrderPlaced` version 1, the total in cents.
mod v1 {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub(crate) struct Placed {
        pub(crate) cents: i64,
    }

    #[derive(Debug, Clone, dtx::DomainEvent)]
    #[event(schema = false)]
    pub(crate) enum OrderEvent {
        #[event(name = "OrderPlaced")]
        Placed(Placed),
    }
}

/// The second deploy: `OrderPlaced` version 2, the field renamed and a currency added.
mod v2 {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub(crate) struct Placed {
        pub(crate) total_cents: i64,
        pub(crate) currency: String,
    }

    #[derive(Debug, Clone, dtx::DomainEvent)]
    #[event(schema = false)]
    pub(crate) enum OrderEvent {
        #[event(name = "OrderPlaced", version = 2)]
        Placed(Placed),
    }
}

/// This deploy: version 3 nests the total, and the type is renamed `order.placed`; rows stored
/// as `OrderPlaced` still decode (an alias), through a chain of JSON steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Placed {
    total: Total,
    note: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Total {
    cents: i64,
    currency: String,
}

#[derive(Debug, Clone, DomainEvent)]
#[event(schema = false)]
enum OrderEvent {
    #[event(
        name = "order.placed",
        version = 3,
        alias = "OrderPlaced",
        upcast(from = 1, with = placed_v1_to_v2),
        upcast(from = 2, with = placed_v2_to_v3),
    )]
    Placed(Placed),
}

/// Version 1 had no currency: every order was in euros. A negative total is refused.
fn placed_v1_to_v2(mut v1: Value) -> Result<Value, String> {
    let cents = v1["cents"].take();
    if cents.as_i64().is_none_or(|c| c < 0) {
        return Err(format!("`cents` is not a total: {cents}"));
    }
    Ok(json!({ "total_cents": cents, "currency": "EUR" }))
}

fn placed_v2_to_v3(mut v2: Value) -> Value {
    json!({
        "total": { "cents": v2["total_cents"].take(), "currency": v2["currency"].take() },
        "note": null
    })
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, Aggregate)]
#[aggregate(event = OrderEvent, snapshots = false)]
struct Order {
    id: Id<Order>,
    placed: Vec<Placed>,
}

impl Apply<Placed> for Order {
    fn apply(&mut self, event: &Placed) {
        self.placed.push(event.clone());
    }
}

/// Typed old versions: `Invoiced` version 3, whose versions 1 and 2 are their own structs that
/// convert `From` one into the next.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct InvoicedV1 {
    amount: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct InvoicedV2 {
    amount: i64,
    due_days: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Invoiced {
    amount: i64,
    due_days: u32,
    reminder: bool,
}

impl From<InvoicedV1> for InvoicedV2 {
    fn from(v1: InvoicedV1) -> Self {
        Self {
            amount: v1.amount,
            due_days: 30,
        }
    }
}

impl From<InvoicedV2> for Invoiced {
    fn from(v2: InvoicedV2) -> Self {
        Self {
            amount: v2.amount,
            due_days: v2.due_days,
            reminder: false,
        }
    }
}

#[derive(Debug, Clone, DomainEvent)]
#[event(schema = false)]
enum InvoiceEvent {
    #[event(
        version = 3,
        upcast(from = 1, type = InvoicedV1),
        upcast(from = 2, type = InvoicedV2)
    )]
    Invoiced(Invoiced),
}

/// An enum whose upcasts start at version 2: a row stored at version 1 cannot be read.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Shipped {
    carrier: String,
}

#[derive(Debug, Clone, DomainEvent)]
#[event(schema = false)]
enum ShipmentEvent {
    #[event(version = 3, upcast(from = 2, with = shipped_v2_to_v3))]
    Shipped(Shipped),
}

fn shipped_v2_to_v3(mut v2: Value) -> Value {
    json!({ "carrier": v2["via"].take() })
}

/// What the three deploys stored: totals 100 (v1), 200 EUR (v2), 300 CHF (v3).
fn current(cents: i64, currency: &str) -> Placed {
    Placed {
        total: Total {
            cents,
            currency: currency.to_owned(),
        },
        note: None,
    }
}

fn expected() -> Vec<Placed> {
    vec![
        current(100, "EUR"),
        current(200, "EUR"),
        current(300, "CHF"),
    ]
}

/// Appends what each deploy wrote, each through the store with its own enum, as it did.
async fn store_three_versions(store: &dyn EventStore, stream: &StreamId) {
    let metadata = EventMetadata::correlated(Uuid::now_v7());
    let events = vec![
        NewEvent::encode(
            stream,
            &v1::OrderEvent::from(v1::Placed { cents: 100 }),
            metadata.clone(),
        )
        .unwrap(),
        NewEvent::encode(
            stream,
            &v2::OrderEvent::from(v2::Placed {
                total_cents: 200,
                currency: "EUR".into(),
            }),
            metadata.clone(),
        )
        .unwrap(),
        NewEvent::encode(stream, &OrderEvent::from(current(300, "CHF")), metadata).unwrap(),
    ];
    store
        .append(stream, ExpectedVersion::Any, events)
        .await
        .unwrap();
}

fn payloads(events: Vec<OrderEvent>) -> Vec<Placed> {
    events
        .into_iter()
        .map(|OrderEvent::Placed(placed)| placed)
        .collect()
}

/// What a projection's and a consumer's handlers were given.
type Seen = Arc<Mutex<Vec<(Placed, String, u32, Value)>>>;

#[derive(Clone, Default)]
struct PlacedOrders(Seen);

#[dtx::projection(name = "placed_orders", subscription)]
impl PlacedOrders {
    async fn placed(&self, placed: &Placed, event: &RecordedEvent) -> Result<(), String> {
        let data = serde_json::from_str(&event.data).map_err(|e| e.to_string())?;
        self.0.lock().unwrap().push((
            placed.clone(),
            event.event_type.clone(),
            event.schema_version,
            data,
        ));
        Ok(())
    }
}

#[derive(Clone, Default)]
struct PlacedMessages(Seen);

#[dtx::consumer(name = "placed_messages")]
impl PlacedMessages {
    async fn placed(&self, placed: Placed, message: &InboundMessage) -> Result<(), String> {
        let data = serde_json::from_slice(&message.payload).map_err(|e| e.to_string())?;
        assert_eq!(
            message.headers[headers::SCHEMA_VERSION],
            message.schema_version.unwrap().to_string()
        );
        self.0.lock().unwrap().push((
            placed,
            message.event_type.clone(),
            message.schema_version.unwrap(),
            data,
        ));
        Ok(())
    }
}

/// The message a broker would deliver for `event`, published as stored.
fn message_of(event: &RecordedEvent) -> InboundMessage {
    let mut message = InboundMessage::new(
        event.event_id,
        event.event_type.clone(),
        event.data.as_bytes().to_vec(),
    );
    message.schema_version = Some(event.schema_version);
    message.headers.insert(
        headers::SCHEMA_VERSION.to_owned(),
        event.schema_version.to_string(),
    );
    message
}

/// Whether every handler saw version 3 under the current name, with the payload's current JSON.
fn assert_all_current(seen: &Seen) {
    let seen = seen.lock().unwrap();
    let payloads: Vec<Placed> = seen.iter().map(|s| s.0.clone()).collect();
    assert_eq!(payloads, expected());
    for (placed, event_type, version, data) in seen.iter() {
        assert_eq!((event_type.as_str(), *version), ("order.placed", 3));
        assert_eq!(*data, serde_json::to_value(placed).unwrap());
    }
}

/// The contract both backends pass: every read path yields version 3.
async fn every_read_path_upcasts(store: Arc<dyn EventStore>, checkpoints: SharedCheckpointStore) {
    let id = Id::<Order>::new();
    let stream = Order::stream_id(&id).unwrap();
    store_three_versions(&*store, &stream).await;

    // As stored: two old rows under the old name, one current.
    let stored = store.read_stream(&stream, 0, 10).await.unwrap();
    let forms: Vec<(&str, u32)> = stored
        .iter()
        .map(|e| (e.event_type.as_str(), e.schema_version))
        .collect();
    assert_eq!(
        forms,
        [("OrderPlaced", 1), ("OrderPlaced", 2), ("order.placed", 3)]
    );

    // Repository loads.
    let orders = Repository::<Order>::shared(Arc::clone(&store), &dtx::DtxConfig::default());
    let order = orders.load(&id).await.unwrap();
    assert_eq!((order.version(), &order.state().placed), (3, &expected()));

    // Stream reads, with and without metadata.
    let decoded = stored.iter().map(|e| e.decode().unwrap()).collect();
    assert_eq!(payloads(decoded), expected());
    let data = store.read_stream_data(&stream, 0, 10).await.unwrap();
    let decoded = data.iter().map(|e| e.decode(&stream).unwrap()).collect();
    assert_eq!(payloads(decoded), expected());

    // The global feed (once no transaction elsewhere in the cluster holds it back).
    let feed = tests::feed_showing(&*store, 3).await;
    let feed: Vec<_> = feed.into_iter().filter(|e| e.stream_id == stream).collect();
    let decoded = feed.iter().map(|e| e.decode().unwrap()).collect();
    assert_eq!(payloads(decoded), expected());

    // A projection: the store's filter sends it the events of both names, and the event its
    // handler takes is in its current form.
    let projection = PlacedOrders::default();
    let runner =
        ProjectionRunner::new(Arc::clone(&store), checkpoints).projection(projection.clone());
    runner.run_once().await.unwrap();
    assert_all_current(&projection.0);

    // The inbox: a message of each stored form decodes as version 3 by its header, and a
    // consumer's handler is given the message in its current form.
    for (event, expected) in stored.iter().zip(expected()) {
        let decoded: Placed = dtx::inbox::decode(&message_of(event)).unwrap();
        assert_eq!(decoded, expected);
    }
    assert!(PlacedMessages::event_types().contains(&"OrderPlaced"));
    let consumer = PlacedMessages::default();
    for event in &stored {
        let mut uow = MemoryUnitOfWork::new();
        consumer.handle(&message_of(event), &mut uow).await.unwrap();
    }
    assert_all_current(&consumer.0);

    // Typed old versions, `From` one into the next.
    let invoice = StreamId::new(format!("Invoice-{}", Uuid::now_v7())).unwrap();
    let rows = [
        ("Invoiced", 1, json!({ "amount": 10 })),
        ("Invoiced", 2, json!({ "amount": 20, "due_days": 14 })),
        (
            "Invoiced",
            3,
            json!({ "amount": 30, "due_days": 7, "reminder": true }),
        ),
    ];
    let events = rows
        .iter()
        .map(|(name, version, data)| {
            let mut event = NewEvent::from_json(*name, data).unwrap();
            event.schema_version = *version;
            event
        })
        .collect();
    store
        .append(&invoice, ExpectedVersion::NoStream, events)
        .await
        .unwrap();
    let invoices: Vec<Invoiced> = store
        .read_stream(&invoice, 0, 10)
        .await
        .unwrap()
        .iter()
        .map(|e| {
            let InvoiceEvent::Invoiced(invoiced) = e.decode().unwrap();
            invoiced
        })
        .collect();
    let invoiced = |amount, due_days, reminder| Invoiced {
        amount,
        due_days,
        reminder,
    };
    assert_eq!(
        invoices,
        [
            invoiced(10, 30, false),
            invoiced(20, 14, false),
            invoiced(30, 7, true)
        ]
    );
}

/// The typed errors of what cannot be upcast, naming stream, version and type.
async fn what_cannot_be_upcast_is_a_typed_error(store: Arc<dyn EventStore>) {
    let stream = StreamId::new(format!("Order-{}", Uuid::now_v7())).unwrap();
    // An upcaster's error: a negative total in version 1.
    store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![
                NewEvent::encode(
                    &stream,
                    &v1::OrderEvent::from(v1::Placed { cents: -5 }),
                    EventMetadata::default(),
                )
                .unwrap(),
            ],
        )
        .await
        .unwrap();
    let stored = store.read_stream(&stream, 0, 10).await.unwrap();
    let error = stored[0].decode::<OrderEvent>().unwrap_err();
    let Error::Decode {
        stream: at,
        version,
        source:
            DecodeError::Upcast {
                event_type,
                stored: 1,
                to: 2,
                ..
            },
    } = &error
    else {
        panic!("{error:?}")
    };
    assert_eq!(
        (at, *version, event_type.as_str()),
        (&stream, 1, "OrderPlaced")
    );
    let text = error.to_string();
    assert!(
        text.contains(stream.as_str()) && text.contains("`cents` is not a total"),
        "{text}"
    );

    // A stored version below the oldest upcast.
    let shipment = StreamId::new(format!("Shipment-{}", Uuid::now_v7())).unwrap();
    let mut old = NewEvent::from_json("Shipped", &json!({ "via": "post" })).unwrap();
    old.schema_version = 1;
    let mut v2 = NewEvent::from_json("Shipped", &json!({ "via": "rail" })).unwrap();
    v2.schema_version = 2;
    store
        .append(&shipment, ExpectedVersion::NoStream, vec![old, v2])
        .await
        .unwrap();
    let stored = store.read_stream(&shipment, 0, 10).await.unwrap();
    let ShipmentEvent::Shipped(shipped) = stored[1].decode().unwrap();
    assert_eq!(shipped.carrier, "rail");
    let error = stored[0].decode::<ShipmentEvent>().unwrap_err();
    assert!(
        matches!(
            &error,
            Error::Decode {
                version: 1,
                source: DecodeError::NoUpcaster {
                    stored: 1,
                    oldest: 2,
                    ..
                },
                ..
            }
        ),
        "{error:?}"
    );
    let text = error.to_string();
    assert!(
        text.contains(shipment.as_str()) && text.contains("upcast(from = 1, ..)"),
        "{text}"
    );
}

#[tokio::test]
async fn memory_every_read_path_upcasts() {
    every_read_path_upcasts(
        Arc::new(MemoryEventStore::new()),
        Arc::new(MemoryCheckpointStore::new()),
    )
    .await;
    what_cannot_be_upcast_is_a_typed_error(Arc::new(MemoryEventStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_every_read_path_upcasts() {
    let store = tests::pg_store().await;
    let checkpoints = Arc::new(dtx_postgres::PgCheckpointStore::new(store.pool().clone()));
    every_read_path_upcasts(Arc::new(store.clone()), checkpoints).await;
    what_cannot_be_upcast_is_a_typed_error(Arc::new(store)).await;
}

/// Rows an old deploy wrote, inserted with SQL as it did: they load as version 3 too.
#[tokio::test]
async fn pg_rows_written_by_sql_load_upcast() {
    let store = tests::pg_store().await;
    let id = Id::<Order>::new();
    let stream = Order::stream_id(&id).unwrap();
    for (version, event_type, schema_version, data) in [
        (1, "OrderPlaced", 1, r#"{"cents": 100}"#),
        (
            2,
            "OrderPlaced",
            2,
            r#"{"total_cents": 200, "currency": "EUR"}"#,
        ),
    ] {
        sqlx::query(
            "INSERT INTO event_store
                 (stream_id, version, commit_order, event_id, event_type, schema_version, data)
             VALUES ($1, $2, pg_current_xact_id()::text::bigint, $3, $4, $5, $6::jsonb)",
        )
        .bind(stream.as_str())
        .bind(version)
        .bind(Uuid::now_v7())
        .bind(event_type)
        .bind(schema_version)
        .bind(data)
        .execute(store.pool())
        .await
        .unwrap();
    }
    let orders = Repository::<Order>::new(store);
    let order = orders.load(&id).await.unwrap();
    assert_eq!(
        order.state().placed,
        [current(100, "EUR"), current(200, "EUR")]
    );
}

/// What a relay published: `(type, version, payload)` per message, in order.
fn forms(published: &[dtx::outbox::OutboxMessage]) -> Vec<(String, String, Value)> {
    published
        .iter()
        .map(|m| {
            (
                m.message_type.clone(),
                m.headers[headers::SCHEMA_VERSION].clone(),
                serde_json::from_str(&m.payload).unwrap(),
            )
        })
        .collect()
}

fn stored_forms() -> Vec<(String, String, Value)> {
    vec![
        ("OrderPlaced".into(), "1".into(), json!({ "cents": 100 })),
        (
            "OrderPlaced".into(),
            "2".into(),
            json!({ "total_cents": 200, "currency": "EUR" }),
        ),
        (
            "order.placed".into(),
            "3".into(),
            serde_json::to_value(current(300, "CHF")).unwrap(),
        ),
    ]
}

fn current_forms() -> Vec<(String, String, Value)> {
    expected()
        .into_iter()
        .map(|p| {
            (
                "order.placed".into(),
                "3".into(),
                serde_json::to_value(p).unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn memory_relay_publishes_stored_or_current_payloads() {
    for (options, expected) in [
        (RelayOptions::default(), stored_forms()),
        (
            RelayOptions::default().publish_current::<OrderEvent>(),
            current_forms(),
        ),
    ] {
        let outbox = MemoryOutbox::new();
        let store = MemoryEventStore::new().with_outbox(outbox.clone());
        let stream = StreamId::new(format!("Order-{}", Uuid::now_v7())).unwrap();
        store_three_versions(&store, &stream).await;
        let publisher = MemoryPublisher::new();
        assert_eq!(outbox.publish_pending(&publisher, &options).await, 3);
        let published = publisher.published();
        assert_eq!(forms(&published), expected);
        for message in &published {
            assert_eq!(
                message.headers[headers::EVENT_TYPE],
                message.message_type,
                "the type header follows the published form"
            );
        }
    }
}

#[tokio::test]
async fn memory_relay_dead_letters_what_does_not_upcast() {
    let outbox = MemoryOutbox::new();
    let store = MemoryEventStore::new().with_outbox(outbox.clone());
    let stream = StreamId::new("Order-negative").unwrap();
    let bad = NewEvent::encode(
        &stream,
        &v1::OrderEvent::from(v1::Placed { cents: -1 }),
        EventMetadata::default(),
    )
    .unwrap();
    store
        .append(&stream, ExpectedVersion::NoStream, vec![bad])
        .await
        .unwrap();
    let publisher = MemoryPublisher::new();
    let options = RelayOptions::default().publish_current::<OrderEvent>();
    outbox.publish_pending(&publisher, &options).await;
    assert!(
        publisher.published().is_empty(),
        "never published in another form"
    );
    let counts = outbox.counts();
    assert_eq!(
        counts.dead, 1,
        "dead-lettered at once: no retry can upcast it"
    );
}

mod nats {
    use super::*;
    use async_nats::jetstream;
    use dtx_postgres::PgOutbox;
    use dtx_postgres::nats::NatsPublisher;
    use std::time::Duration;

    /// Relays the three stored versions from PostgreSQL to a fresh `JetStream` stream with
    /// `options`, and reads back `(type, version, payload)` of each message received.
    async fn relayed(options: RelayOptions) -> Vec<(String, String, Value)> {
        let client = tests::inbox_nats::nats().await;
        let js = jetstream::new(client.clone());
        let (name, prefix) = tests::inbox_nats::fresh_stream(&js, "UPCAST").await;
        let store = tests::pg_store().await.with_outbox(true);
        let stream = StreamId::new("Order-1").unwrap();
        store_three_versions(&store, &stream).await;
        let relay =
            PgOutbox::new(store.pool().clone()).relay(NatsPublisher::new(client, prefix), options);
        assert_eq!(relay.run_until_idle().await.unwrap(), 3);
        let mut received = Vec::new();
        for message in tests::inbox_nats::read_all(&js, &name, 3, Duration::from_secs(5)).await {
            let h = message.headers.as_ref().unwrap();
            let get = |name: &str| h.get(name).unwrap().as_str().to_owned();
            received.push((
                get(headers::EVENT_TYPE),
                get(headers::SCHEMA_VERSION),
                serde_json::from_slice(&message.payload).unwrap(),
            ));
        }
        js.delete_stream(&name).await.unwrap();
        received
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pg_relay_publishes_stored_payloads_by_default() {
        assert_eq!(relayed(RelayOptions::default()).await, stored_forms());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pg_relay_publishes_current_payloads_when_asked() {
        let options = RelayOptions::default().publish_current::<OrderEvent>();
        assert_eq!(relayed(options).await, current_forms());
    }
}
