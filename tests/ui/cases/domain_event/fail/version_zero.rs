use dtx::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct OrderPlaced {}

#[derive(DomainEvent)]
enum OrderEvent {
    #[event(version = 0)]
    Placed(OrderPlaced),
}

fn main() {}
