//! Event contracts: the JSON Schema of every event the examples publish, exported through
//! `dtx::schema`, validates the messages as the outbox relay really publishes them to NATS
//! `JetStream` (`NATS_URL`, default `127.0.0.1:4222`); a wrong payload fails validation.

#![allow(clippy::unwrap_used, clippy::too_many_lines, reason = "tests")]

use async_nats::jetstream;
use dtx::cqrs::{CommandBus, Committed};
use dtx::money::Money;
use dtx::outbox::{NewOutboxMessage, RelayOptions, headers};
use dtx::schema::EventSchema;
use dtx::{Id, Uuid};
use dtx_postgres::PgOutbox;
use dtx_postgres::nats::NatsPublisher;
use examples::order::{AddLine, CancelOrder, ConfirmOrder, Line, OrderId, PlaceOrder};
use examples::two_services::{CURRENCY, Charge, PaymentRequested};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tests::inbox_nats::nats;

/// Every event type and version the examples declare.
const EXAMPLE_EVENTS: [(&str, u32); 6] = [
    ("Confirmed", 1),
    ("LineAdded", 1),
    ("OrderCancelled", 1),
    ("PaymentRequested", 1),
    ("PaymentSettled", 1),
    ("Placed", 1),
];

fn schema_of<'a>(schemas: &'a [EventSchema], event_type: &str, version: u32) -> &'a EventSchema {
    schemas
        .iter()
        .find(|s| s.event_type() == event_type && s.version() == version)
        .unwrap_or_else(|| panic!("no schema exported for {event_type} v{version}"))
}

fn validator(schema: &EventSchema) -> jsonschema::Validator {
    jsonschema::draft202012::new(schema.document())
        .unwrap_or_else(|e| panic!("the schema of {} is invalid: {e}", schema.id()))
}

fn errors(schema: &EventSchema, payload: &Value) -> Vec<String> {
    validator(schema)
        .iter_errors(payload)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

#[test]
fn every_example_event_has_a_named_schema_document() {
    let schemas = dtx::schema::export().unwrap();
    let exported: BTreeSet<(&str, u32)> = schemas
        .iter()
        .map(|s| (s.event_type(), s.version()))
        .collect();
    assert_eq!(exported, BTreeSet::from(EXAMPLE_EVENTS));
    for schema in &schemas {
        let document = schema.document();
        let (event_type, version) = (schema.event_type(), schema.version());
        assert_eq!(
            document["$schema"],
            "https://json-schema.org/draft/2020-12/schema"
        );
        assert_eq!(
            document["$id"],
            format!("urn:dtx:event:{event_type}:v{version}")
        );
        assert_eq!(document["title"], format!("{event_type} v{version}"));
        assert_eq!(document["x-dtx-event-type"], event_type);
        assert_eq!(document["x-dtx-schema-version"], version);
        validator(schema);
    }

    // The money in a payment request is the documented `Money` object.
    let requested = schema_of(&schemas, "PaymentRequested", 1).document();
    let money = &requested["$defs"]["Money"];
    assert_eq!(money["required"], json!(["amount", "currency"]));
    assert_eq!(money["additionalProperties"], false);

    let dir = std::env::temp_dir().join(format!("dtx-event-schemas-{}", Uuid::now_v7()));
    let written = dtx::schema::write_to(&dir).unwrap();
    let names: BTreeSet<String> = written
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let expected: BTreeSet<String> = EXAMPLE_EVENTS
        .iter()
        .map(|(t, v)| format!("{t}.v{v}.schema.json"))
        .collect();
    assert_eq!(names, expected);
    let stored: Value =
        serde_json::from_slice(&std::fs::read(dir.join("Placed.v1.schema.json")).unwrap()).unwrap();
    assert_eq!(&stored, schema_of(&schemas, "Placed", 1).document());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_wrong_payload_fails_validation() {
    let schemas = dtx::schema::export().unwrap();
    let requested = schema_of(&schemas, "PaymentRequested", 1);
    let order_id = Uuid::now_v7();
    let good = json!({ "order_id": order_id, "amount": { "amount": "42.00", "currency": "EUR" } });
    assert_eq!(errors(requested, &good), Vec::<String>::new());
    for wrong in [
        // the old shape: cents as a number
        json!({ "order_id": order_id, "amount_cents": 4200 }),
        // an amount as a JSON number
        json!({ "order_id": order_id, "amount": { "amount": 42.0, "currency": "EUR" } }),
        // not a decimal
        json!({ "order_id": order_id, "amount": { "amount": "4e2", "currency": "EUR" } }),
        // no currency code
        json!({ "order_id": order_id, "amount": { "amount": "42.00", "currency": "euro" } }),
        // a field too many in the money object
        json!({ "order_id": order_id, "amount": { "amount": "42.00", "currency": "EUR", "fx": 1 } }),
        // the order id missing
        json!({ "amount": { "amount": "42.00", "currency": "EUR" } }),
    ] {
        assert!(
            !errors(requested, &wrong).is_empty(),
            "{wrong} should not validate"
        );
    }

    let placed = schema_of(&schemas, "Placed", 1);
    assert!(errors(placed, &json!({ "customer": "C-1" })).is_empty());
    assert!(!errors(placed, &json!({ "customer": 7 })).is_empty());
    let added = schema_of(&schemas, "LineAdded", 1);
    let line = json!({ "line": { "sku": "A", "quantity": -1, "unit_price_cents": 100 } });
    assert!(!errors(added, &line).is_empty(), "a negative quantity");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_published_example_event_validates_against_its_schema() {
    let schemas = dtx::schema::export().unwrap();
    let client = nats().await;
    let js = jetstream::new(client.clone());
    let (name, prefix) = tests::inbox_nats::fresh_stream(&js, "SCHEMAS").await;

    // The examples' commands, on PostgreSQL with the outbox: every event they record is
    // published by the relay.
    let store = tests::pg_store().await.with_outbox(true);
    let outbox = PgOutbox::new(store.pool().clone());
    let commands = CommandBus::builder()
        .store(Arc::new(store.clone()))
        .registry()
        .build()
        .unwrap();
    let (kept, cancelled) = (OrderId::new(), OrderId::new());
    for order_id in [kept, cancelled] {
        let _: Committed = commands
            .execute(PlaceOrder {
                order_id,
                customer: "C-7".into(),
            })
            .await
            .unwrap();
        let _: Committed = commands
            .execute(AddLine {
                order_id,
                line: Line {
                    sku: "SKU-1".into(),
                    quantity: 3,
                    unit_price_cents: 1_250,
                },
            })
            .await
            .unwrap();
    }
    let _: Committed = commands
        .execute(ConfirmOrder { order_id: kept })
        .await
        .unwrap();
    let _: Committed = commands
        .execute(CancelOrder {
            order_id: cancelled,
            reason: "changed my mind".into(),
        })
        .await
        .unwrap();
    // The payment service's answers: accepted, and refused with a reason.
    for (order_id, minor) in [(kept.uuid(), 3_750), (cancelled.uuid(), 250_000)] {
        let _: Committed = commands
            .execute(Charge {
                payment_id: Id::from_uuid(order_id),
                order_id,
                amount: Money::from_minor(minor, CURRENCY),
            })
            .await
            .unwrap();
    }
    // The order service's request, enqueued as its saga step does.
    let request = NewOutboxMessage::new(
        kept.to_string(),
        "PaymentRequested",
        &PaymentRequested {
            order_id: kept.uuid(),
            amount: Money::from_minor(3_750, CURRENCY),
        },
    )
    .unwrap();
    let mut conn = store.pool().acquire().await.unwrap();
    outbox.enqueue(&mut conn, vec![request]).await.unwrap();
    drop(conn);

    let relay = outbox.relay(
        NatsPublisher::new(client.clone(), prefix.clone()),
        RelayOptions::default(),
    );
    let published = relay.run_until_idle().await.unwrap();
    assert_eq!(published, 9, "6 order events, 2 payments, 1 request");

    let mut seen = BTreeSet::new();
    let mut received = 0;
    for message in
        tests::inbox_nats::read_all(&js, &name, published + 10, Duration::from_secs(2)).await
    {
        received += 1;
        let h = message.headers.as_ref().unwrap();
        let event_type = h.get(headers::EVENT_TYPE).unwrap().as_str().to_owned();
        // A message enqueued by hand carries no version header: version 1.
        let version: u32 = h
            .get(headers::SCHEMA_VERSION)
            .map_or(Ok(1), |v| v.as_str().parse())
            .unwrap();
        let payload: Value = serde_json::from_slice(&message.payload).unwrap();
        let schema = schema_of(&schemas, &event_type, version);
        assert_eq!(
            errors(schema, &payload),
            Vec::<String>::new(),
            "{event_type} v{version}: {payload}"
        );
        seen.insert((event_type, version));
    }
    assert_eq!(received, published);
    let expected: BTreeSet<(String, u32)> = EXAMPLE_EVENTS
        .iter()
        .map(|(t, v)| ((*t).to_owned(), *v))
        .collect();
    assert_eq!(seen, expected, "every example event was published");
    js.delete_stream(&name).await.unwrap();
}
