use dtx::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct PlacedV1 {}

#[derive(Serialize, Deserialize)]
struct OrderPlaced {}

fn v2_to_v3(v2: serde_json::Value) -> serde_json::Value { v2 }

#[derive(DomainEvent)]
enum OrderEvent {
    #[event(version = 3, upcast(from = 1, type = PlacedV1), upcast(from = 2, with = v2_to_v3))]
    Placed(OrderPlaced),
}

fn main() {}
