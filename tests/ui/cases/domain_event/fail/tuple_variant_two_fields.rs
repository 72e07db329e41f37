use dtx::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct OrderPlaced {}

#[derive(Serialize, Deserialize)]
struct Customer {}

#[derive(DomainEvent)]
enum OrderEvent {
    Placed(OrderPlaced, Customer),
}

fn main() {}
