use dtx::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct OrderPlaced {}

#[derive(DomainEvent)]
#[event(crat = dtx)]
enum OrderEvent {
    Placed(OrderPlaced),
}

fn main() {}
