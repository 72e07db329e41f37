use dtx::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct OrderPlaced {}

fn v1_to_v2(v1: serde_json::Value) -> serde_json::Value { v1 }
fn v3_to_v4(v3: serde_json::Value) -> serde_json::Value { v3 }

#[derive(DomainEvent)]
enum OrderEvent {
    #[event(version = 4, upcast(from = 1, with = v1_to_v2), upcast(from = 3, with = v3_to_v4))]
    Placed(OrderPlaced),
}

fn main() {}
