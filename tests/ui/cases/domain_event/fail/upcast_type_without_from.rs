use dtx::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct PlacedV1 {}

#[derive(Serialize, Deserialize)]
struct OrderPlaced {}

#[derive(DomainEvent)]
enum OrderEvent {
    #[event(version = 2, upcast(from = 1, type = PlacedV1))]
    Placed(OrderPlaced),
}

fn main() {}
