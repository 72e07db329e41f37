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

#[consumer]
impl Payments {
    async fn on_placed(&self, event: &OrderPlaced, attempt: u32) -> Result<(), String> {
        let _ = (&event.customer, attempt);
        Ok(())
    }
}

fn main() {}
