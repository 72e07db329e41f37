use dtx::{DomainEvent, consumer};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct OrderPlaced {
    customer: String,
}

#[derive(Debug, Clone, DomainEvent)]
enum OrderEvent {
    Placed(OrderPlaced),
}

struct Payments;

#[consumer(version = 2)]
impl Payments {
    async fn on_placed(&self, event: &OrderPlaced) -> Result<(), String> {
        let _ = &event.customer;
        Ok(())
    }
}

fn main() {}
