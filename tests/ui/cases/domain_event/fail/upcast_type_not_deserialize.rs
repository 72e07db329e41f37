use dtx::DomainEvent;
use serde::{Deserialize, Serialize};

struct PlacedV1 {}

#[derive(Serialize, Deserialize)]
struct OrderPlaced {}

impl From<PlacedV1> for OrderPlaced {
    fn from(_: PlacedV1) -> Self { Self {} }
}

#[derive(DomainEvent)]
enum OrderEvent {
    #[event(version = 2, upcast(from = 1, type = PlacedV1))]
    Placed(OrderPlaced),
}

fn main() {}
