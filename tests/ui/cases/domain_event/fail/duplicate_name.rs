use dtx::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct OrderPlaced {}

#[derive(Serialize, Deserialize)]
struct OrderPlacedV2 {}

#[derive(DomainEvent)]
enum OrderEvent {
    Placed(OrderPlaced),
    #[event(name = "Placed")]
    PlacedAgain(OrderPlacedV2),
}

fn main() {}
