//! `#[consumer]` run through an inbox in memory: a message arrives as its typed payload, decoded
//! at the schema version its header gives; its handler's writes commit once with the inbox
//! record, or not at all; redeliveries, types it does not handle and payloads that do not decode
//! are told apart as the broker drivers need them.

#![allow(clippy::unwrap_used, reason = "tests")]

use dtx::inbox::{
    self, Consumer, Handled, InboundMessage, Inbox, InboxStore, MemoryInbox, Refused,
};
use dtx::{
    DomainEvent, EventMetadata, EventStore, ExpectedVersion, MemoryEventStore, NewEvent,
    RecordedEvent, StreamId, UnitOfWork, consumer,
};
use serde::{Deserialize, Serialize};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use uuid::Uuid;

/// An order was placed (the order service's event). Version 2 added the currency.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderPlaced {
    /// The order.
    pub order: String,
    /// What it costs, in cents.
    pub total: u64,
    /// Its currency; absent from version 1, which was always euros.
    #[serde(default)]
    pub currency: Option<String>,
}

/// An order was cancelled (the order service's event).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderCancelled {
    /// The order.
    pub order: String,
}

/// The order service's events, as this service reads them.
#[derive(Debug, Clone, DomainEvent)]
pub enum OrderEvent {
    /// See [`OrderPlaced`].
    #[event(version = 2)]
    OrderPlaced(OrderPlaced),
    /// See [`OrderCancelled`].
    OrderCancelled(OrderCancelled),
}

/// A payment was requested for an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRequested {
    /// In cents.
    pub amount: u64,
    /// Its currency.
    pub currency: String,
}

/// A requested payment was voided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentVoided {}

/// The payment service's events.
#[derive(Debug, Clone, DomainEvent)]
pub enum PaymentEvent {
    /// See [`PaymentRequested`].
    PaymentRequested(PaymentRequested),
    /// See [`PaymentVoided`].
    PaymentVoided(PaymentVoided),
}

/// The payment service's consumer of order events: it writes its own events through the unit
/// of work the inbox record commits in.
#[derive(Default)]
pub struct Payments {
    store: MemoryEventStore,
    /// Every handler call, committed or not: (message id, schema version header).
    calls: Mutex<Vec<(Uuid, Option<u32>)>>,
    /// While set, voiding fails after its write.
    provider_down: AtomicBool,
}

#[consumer(name = "payments")]
impl Payments {
    async fn on_placed(
        &self,
        event: OrderPlaced,
        message: &InboundMessage,
        uow: &mut dyn UnitOfWork,
    ) -> Result<(), dtx::Error> {
        self.call(message);
        let requested = PaymentEvent::from(PaymentRequested {
            amount: event.total,
            currency: event.currency.unwrap_or_else(|| "EUR".into()),
        });
        self.append(uow, &event.order, &requested, message).await
    }

    async fn on_cancelled(
        &self,
        event: &OrderCancelled,
        uow: &mut dyn UnitOfWork,
        message: &InboundMessage,
    ) -> Result<(), String> {
        self.call(message);
        let voided = PaymentEvent::from(PaymentVoided {});
        self.append(uow, &event.order, &voided, message)
            .await
            .map_err(|e| e.to_string())?;
        if self.provider_down.load(Ordering::SeqCst) {
            return Err("the payment provider is down".into());
        }
        Ok(())
    }
}

impl Payments {
    fn call(&self, message: &InboundMessage) {
        self.calls
            .lock()
            .unwrap()
            .push((message.message_id, message.schema_version));
    }

    fn calls(&self) -> Vec<(Uuid, Option<u32>)> {
        self.calls.lock().unwrap().clone()
    }

    /// Appends `event` to the order's payment stream in `uow`, caused by `message`.
    async fn append(
        &self,
        uow: &mut dyn UnitOfWork,
        order: &str,
        event: &PaymentEvent,
        message: &InboundMessage,
    ) -> dtx::Result<()> {
        let stream = payment_stream(order);
        let metadata = EventMetadata {
            correlation_id: message.correlation_id,
            causation_id: Some(message.message_id),
            ..EventMetadata::default()
        };
        let new = NewEvent::encode(&stream, event, metadata)?;
        self.store
            .append_in(uow, &stream, ExpectedVersion::Any, vec![new])
            .await?;
        Ok(())
    }

    /// The committed events of the order's payment stream.
    async fn payments(&self, order: &str) -> Vec<RecordedEvent> {
        self.store
            .read_stream(&payment_stream(order), 0, 100)
            .await
            .unwrap()
    }
}

fn payment_stream(order: &str) -> StreamId {
    StreamId::new(format!("Payment-{order}")).unwrap()
}

/// A message as the order service publishes `event`: its type and schema version in headers.
fn published(event: &OrderEvent) -> InboundMessage {
    let payload = event.to_payload().unwrap().get().as_bytes().to_vec();
    let mut message = InboundMessage::new(Uuid::now_v7(), event.event_type(), payload);
    message.schema_version = Some(event.schema_version());
    message.correlation_id = Some(Uuid::now_v7());
    message
}

fn placed(order: &str, total: u64) -> InboundMessage {
    published(
        &OrderPlaced {
            order: order.into(),
            total,
            currency: Some("CHF".into()),
        }
        .into(),
    )
}

fn setup() -> (Inbox, MemoryInbox, Payments) {
    let store = MemoryInbox::new();
    (Inbox::new(store.clone()), store, Payments::default())
}

#[test]
fn the_macro_declares_the_name_and_the_event_types_and_registers_the_consumer() {
    assert_eq!(Payments::NAME, "payments");
    assert_eq!(Payments::event_types(), ["OrderPlaced", "OrderCancelled"]);
    let registered = inbox::registered().unwrap();
    assert_eq!(registered.len(), 1);
    assert_eq!(registered[0].name, "payments");
    assert_eq!((registered[0].event_types)(), Payments::event_types());
    assert!(
        registered[0]
            .location()
            .starts_with("consumers::Payments (")
            && registered[0].location().contains("consumers.rs:"),
        "{}",
        registered[0].location()
    );
}

#[tokio::test]
async fn a_typed_event_arrives_decoded_at_the_schema_version_its_header_gives() {
    let (inbox, _, payments) = setup();

    // Version 2, as published now.
    let current = placed("1", 4200);
    assert_eq!(
        inbox.receive(&payments, &current).await.unwrap(),
        Handled::Applied
    );

    // Version 1, from a producer that has not upgraded: no currency, decoded all the same.
    let mut older = InboundMessage::new(
        Uuid::now_v7(),
        "OrderPlaced",
        br#"{"order":"2","total":900}"#.to_vec(),
    );
    older.schema_version = Some(1);
    assert_eq!(
        inbox.receive(&payments, &older).await.unwrap(),
        Handled::Applied
    );

    // The handler is given the message in its current form: version 2, the payload
    // re-encoded from what version 1 decoded to.
    assert_eq!(
        payments.calls(),
        [(current.message_id, Some(2)), (older.message_id, Some(2))]
    );
    let requested = |events: Vec<RecordedEvent>| -> Vec<PaymentRequested> {
        events
            .iter()
            .map(|e| match e.decode::<PaymentEvent>().unwrap() {
                PaymentEvent::PaymentRequested(p) => p,
                PaymentEvent::PaymentVoided(_) => panic!("unexpected {e:?}"),
            })
            .collect()
    };
    let first = payments.payments("1").await;
    assert_eq!(first[0].metadata.causation_id, Some(current.message_id));
    assert_eq!(first[0].metadata.correlation_id, current.correlation_id);
    assert_eq!(
        requested(first),
        [PaymentRequested {
            amount: 4200,
            currency: "CHF".into()
        }]
    );
    assert_eq!(
        requested(payments.payments("2").await),
        [PaymentRequested {
            amount: 900,
            currency: "EUR".into()
        }]
    );

    // A version newer than this build reads: no retry can help.
    let mut newer = placed("3", 100);
    newer.schema_version = Some(3);
    let refused = inbox.receive(&payments, &newer).await;
    let Err(Refused::Poison(error)) = refused else {
        panic!("expected a poison message, got {refused:?}");
    };
    assert!(
        error.to_string().contains(&newer.message_id.to_string()),
        "{error}"
    );
    assert!(payments.payments("3").await.is_empty());
}

#[tokio::test]
async fn a_redelivery_is_skipped_without_calling_the_handler() {
    let (inbox, store, payments) = setup();
    let message = placed("1", 4200);
    assert_eq!(
        inbox.receive(&payments, &message).await.unwrap(),
        Handled::Applied
    );
    let mut again = message.clone();
    again.delivery = 2;
    assert_eq!(
        inbox.receive(&payments, &again).await.unwrap(),
        Handled::Duplicate
    );
    assert_eq!(payments.calls().len(), 1);
    assert_eq!(payments.payments("1").await.len(), 1);
    assert!(
        store
            .contains("payments", message.message_id)
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn a_type_no_handler_takes_is_recorded_and_ignored() {
    let (inbox, store, payments) = setup();
    let shipped = InboundMessage::new(Uuid::now_v7(), "OrderShipped", br#"{"order":"1"}"#.to_vec());
    assert_eq!(
        inbox.receive(&payments, &shipped).await.unwrap(),
        Handled::Ignored
    );
    assert!(payments.calls().is_empty());
    assert!(
        store
            .contains("payments", shipped.message_id)
            .await
            .unwrap()
    );
    assert_eq!(
        inbox.receive(&payments, &shipped).await.unwrap(),
        Handled::Duplicate
    );
}

#[tokio::test]
async fn a_payload_that_does_not_decode_is_poison_and_names_the_message() {
    let (inbox, store, payments) = setup();
    let mut message = InboundMessage::new(
        Uuid::now_v7(),
        "OrderPlaced",
        br#"{"order":"1","total":"a lot"}"#.to_vec(),
    );
    message.source = Some("orders #17".into());
    let refused = inbox.receive(&payments, &message).await;
    let Err(Refused::Poison(error)) = refused else {
        panic!("expected a poison message, got {refused:?}");
    };
    let text = error.to_string();
    assert!(text.contains(&message.message_id.to_string()), "{text}");
    assert!(
        text.contains("OrderPlaced") && text.contains("orders #17"),
        "{text}"
    );
    assert!(payments.calls().is_empty(), "the handler is not called");
    assert!(
        !store
            .contains("payments", message.message_id)
            .await
            .unwrap()
    );

    // Not UTF-8 either.
    let binary = InboundMessage::new(Uuid::now_v7(), "OrderCancelled", vec![0xff, 0xfe]);
    let refused = inbox.receive(&payments, &binary).await;
    assert!(matches!(refused, Err(Refused::Poison(_))), "{refused:?}");
}

#[tokio::test]
async fn a_handler_error_is_retried_and_rolls_its_writes_back() {
    let (inbox, store, payments) = setup();
    let cancelled = published(&OrderCancelled { order: "1".into() }.into());
    payments.provider_down.store(true, Ordering::SeqCst);

    let refused = inbox.receive(&payments, &cancelled).await;
    let Err(Refused::Retry(error)) = refused else {
        panic!("expected a retry, got {refused:?}");
    };
    assert_eq!(error.to_string(), "the payment provider is down");
    // The handler ran and appended, but nothing committed: neither its event nor the record.
    assert_eq!(payments.calls().len(), 1);
    assert!(payments.payments("1").await.is_empty());
    assert!(
        !store
            .contains("payments", cancelled.message_id)
            .await
            .unwrap()
    );

    // The redelivery applies once the cause is gone.
    payments.provider_down.store(false, Ordering::SeqCst);
    let mut again = cancelled.clone();
    again.delivery = 2;
    assert_eq!(
        inbox.receive(&payments, &again).await.unwrap(),
        Handled::Applied
    );
    assert_eq!(payments.payments("1").await.len(), 1);
    assert!(
        store
            .contains("payments", cancelled.message_id)
            .await
            .unwrap()
    );
}
