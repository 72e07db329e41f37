//! Upcasting on `#[derive(DomainEvent)]`: a chain of JSON steps, a chain of typed old versions
//! converting `From` one into the next, both mixed, and an alias for a renamed type.
#![deny(warnings)]

use dtx::DomainEvent;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct OrderPlaced {
    total: i64,
    currency: String,
}

fn v1_to_v2(mut v1: Value) -> Value {
    json!({ "total": v1["cents"].take(), "currency": null })
}

fn v2_to_v3(mut v2: Value) -> Result<Value, String> {
    if !v2["total"].is_i64() {
        return Err(format!("no total in {v2}"));
    }
    if v2["currency"].is_null() {
        v2["currency"] = json!("EUR");
    }
    Ok(v2)
}

#[derive(Debug, PartialEq, Deserialize)]
struct ShippedV1 {
    carrier: String,
}

#[derive(Debug, PartialEq, Deserialize)]
struct ShippedV2 {
    carrier: String,
    tracked: bool,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Shipped {
    carrier: String,
    tracked: bool,
    parcels: u32,
}

impl From<ShippedV1> for ShippedV2 {
    fn from(v1: ShippedV1) -> Self {
        Self {
            carrier: v1.carrier,
            tracked: false,
        }
    }
}

impl From<ShippedV2> for Shipped {
    fn from(v2: ShippedV2) -> Self {
        Self {
            carrier: v2.carrier,
            tracked: v2.tracked,
            parcels: 1,
        }
    }
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Cancelled {
    reason: String,
}

#[derive(Debug, PartialEq, Deserialize)]
struct CancelledV2 {
    why: String,
}

impl From<CancelledV2> for Cancelled {
    fn from(v2: CancelledV2) -> Self {
        Self { reason: v2.why }
    }
}

fn cancelled_v1_to_v2(mut v1: Value) -> Value {
    json!({ "why": v1["text"].take() })
}

#[derive(Debug, PartialEq, DomainEvent)]
enum OrderEvent {
    #[event(
        name = "order.placed",
        version = 3,
        alias = "OrderPlaced",
        alias = "Placed",
        upcast(from = 1, with = v1_to_v2),
        upcast(from = 2, with = v2_to_v3)
    )]
    Placed(OrderPlaced),
    #[event(version = 3, upcast(from = 1, type = ShippedV1), upcast(from = 2, type = ShippedV2))]
    Shipped(Shipped),
    #[event(
        version = 3,
        upcast(from = 1, with = cancelled_v1_to_v2),
        upcast(from = 2, type = CancelledV2)
    )]
    Cancelled(Cancelled),
}

fn main() {
    assert_eq!(
        OrderEvent::EVENT_TYPES,
        [
            "order.placed",
            "Shipped",
            "Cancelled",
            "OrderPlaced",
            "Placed"
        ]
    );
    let placed = OrderEvent::Placed(OrderPlaced {
        total: 5,
        currency: "EUR".into(),
    });
    for (name, version, data) in [
        ("OrderPlaced", 1, r#"{"cents": 5}"#),
        ("Placed", 2, r#"{"total": 5, "currency": null}"#),
        ("order.placed", 3, r#"{"total": 5, "currency": "EUR"}"#),
    ] {
        assert_eq!(
            OrderEvent::from_payload(name, version, data).expect("upcasts"),
            placed
        );
    }
    let shipped = |tracked| {
        OrderEvent::Shipped(Shipped {
            carrier: "rail".into(),
            tracked,
            parcels: 1,
        })
    };
    assert_eq!(
        OrderEvent::from_payload("Shipped", 1, r#"{"carrier": "rail"}"#).expect("upcasts"),
        shipped(false)
    );
    assert_eq!(
        OrderEvent::from_payload("Shipped", 2, r#"{"carrier": "rail", "tracked": true}"#)
            .expect("upcasts"),
        shipped(true)
    );
    assert_eq!(
        OrderEvent::from_payload("Cancelled", 1, r#"{"text": "late"}"#).expect("upcasts"),
        OrderEvent::Cancelled(Cancelled {
            reason: "late".into()
        })
    );
    assert_eq!(
        OrderEvent::current_form("OrderPlaced"),
        Some(("order.placed", 3))
    );
    assert!(OrderEvent::from_payload("Shipped", 4, "{}").is_err());
    assert!(OrderEvent::from_payload("Placed", 2, r#"{"currency": null}"#).is_err());
}
