use dtx::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct OrderPlaced {}

fn v1_to_v2(v1: serde_json::Value) -> serde_json::Value { v1 }

#[derive(DomainEvent)]
enum OrderEvent {
    #[event(upcast(from = 1, with = v1_to_v2))]
    Placed(OrderPlaced),
}

fn main() {}
