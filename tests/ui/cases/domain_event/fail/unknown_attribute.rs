use dtx::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct OrderPlaced {}

#[derive(DomainEvent)]
enum OrderEvent {
    #[event(nmae = "OrderPlaced")]
    Placed(OrderPlaced),
}

fn main() {}
