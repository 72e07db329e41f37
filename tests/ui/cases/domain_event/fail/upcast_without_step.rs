use dtx::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct OrderPlaced {}

#[derive(DomainEvent)]
enum OrderEvent {
    #[event(version = 2, upcast(from = 1))]
    Placed(OrderPlaced),
}

fn main() {}
