//! Every option of `#[derive(DomainEvent)]`: `name`, `version`, `schema = false` and
//! `crate = ..` through a re-export, used through the generated impls.
#![deny(warnings)]

use serde::{Deserialize, Serialize};

mod re {
    pub(crate) use dtx as runtime;
}

use re::runtime::{DecodeError, DomainEvent};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct OrderPlaced {
    customer: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct OrderCancelled {
    reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Shipped;

#[derive(Debug, Clone, PartialEq, DomainEvent)]
#[event(crate = re::runtime)]
enum OrderEvent {
    Placed(OrderPlaced),
    #[event(name = "OrderCancelled", version = 2)]
    Cancelled(OrderCancelled),
    #[event(version = 3, schema = false)]
    Shipped(Shipped),
}

fn round_trip(event: &OrderEvent) -> OrderEvent {
    let payload = event.to_payload().expect("payload serialises");
    OrderEvent::from_payload(event.event_type(), event.schema_version(), payload.get())
        .expect("payload decodes")
}

fn main() {
    assert_eq!(
        OrderEvent::EVENT_TYPES,
        ["Placed", "OrderCancelled", "Shipped"]
    );

    let placed: OrderEvent = OrderPlaced {
        customer: "ada".into(),
    }
    .into();
    assert_eq!(placed.event_type(), "Placed");
    assert_eq!(placed.schema_version(), 1);
    let payload = placed.to_payload().expect("payload serialises");
    assert_eq!(
        payload.get(),
        r#"{"customer":"ada"}"#,
        "the payload alone, no enum tag"
    );
    assert_eq!(round_trip(&placed), placed);

    let cancelled = OrderEvent::from(OrderCancelled {
        reason: "duplicate".into(),
    });
    assert_eq!(cancelled.event_type(), "OrderCancelled");
    assert_eq!(cancelled.schema_version(), 2);
    assert_eq!(round_trip(&cancelled), cancelled);

    let shipped = OrderEvent::from(Shipped);
    assert_eq!(
        (shipped.event_type(), shipped.schema_version()),
        ("Shipped", 3)
    );
    assert_eq!(round_trip(&shipped), shipped);

    // Older stored versions still decode; newer ones and unknown names are typed errors.
    let payload = cancelled.to_payload().expect("payload serialises");
    assert_eq!(
        OrderEvent::from_payload("OrderCancelled", 1, payload.get())
            .expect("an older version decodes"),
        cancelled
    );
    assert!(matches!(
        OrderEvent::from_payload("OrderCancelled", 3, payload.get()),
        Err(DecodeError::UnsupportedSchemaVersion {
            stored: 3,
            supported: 2,
            ..
        })
    ));
    assert!(matches!(
        OrderEvent::from_payload("Cancelled", 2, payload.get()),
        Err(DecodeError::UnknownEventType { .. })
    ));
    assert!(matches!(
        OrderEvent::from_payload("Placed", 1, payload.get()),
        Err(DecodeError::Malformed { .. })
    ));
}
