use dtx::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct PlacedV1 {}

#[derive(Deserialize)]
struct PlacedV2 {}

#[derive(Serialize, Deserialize)]
struct OrderPlaced {}

impl From<PlacedV2> for OrderPlaced {
    fn from(_: PlacedV2) -> Self {
        Self {}
    }
}

#[derive(DomainEvent)]
enum OrderEvent {
    #[event(version = 3, upcast(from = 1, type = PlacedV1), upcast(from = 2, type = PlacedV2))]
    Placed(OrderPlaced),
}

fn main() {}
