use dtx::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct OrderPlaced {}

#[derive(DomainEvent)]
enum OrderEvent {
    Placed(OrderPlaced),
    Cancelled { reason: String },
}

fn main() {}
