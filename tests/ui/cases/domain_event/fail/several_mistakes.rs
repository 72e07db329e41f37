// Every mistake is reported at once, each under its own tokens.
use dtx::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct OrderPlaced {}

#[derive(DomainEvent)]
enum OrderEvent {
    #[event(version = 0)]
    Placed(OrderPlaced),
    #[event(name = "Placed")]
    PlacedAgain(OrderPlaced),
    Cancelled,
}

fn main() {}
