use dtx::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct OrderPlaced {}

#[derive(DomainEvent)]
enum OrderEvent<T> {
    Placed(OrderPlaced),
    Other(T),
}

fn main() {}
