use dtx::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct OrderPlaced {}

fn v1_to_v2(v1: serde_json::Value) -> serde_json::Value { v1 }
fn v2_to_v3(v2: serde_json::Value) -> serde_json::Value { v2 }

#[derive(DomainEvent)]
enum OrderEvent {
    #[event(version = 3, upcast(from = 2, with = v2_to_v3), upcast(from = 1, with = v1_to_v2))]
    Placed(OrderPlaced),
}

fn main() {}
