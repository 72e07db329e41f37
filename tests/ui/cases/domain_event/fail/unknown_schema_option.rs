use dtx::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct OrderPlaced {}

#[derive(Serialize, Deserialize)]
struct Audited {}

#[derive(DomainEvent)]
#[event(schemas = false)]
enum OrderEvent {
    Placed(OrderPlaced),
    #[event(schema = "no")]
    Audited(Audited),
}

fn main() {}
