use dtx::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct OrderPlaced {}

#[derive(Serialize, Deserialize)]
struct OrderShipped {}

#[derive(DomainEvent)]
enum OrderEvent {
    #[event(name = "order.placed", alias = "Shipped")]
    Placed(OrderPlaced),
    Shipped(OrderShipped),
}

fn main() {}
