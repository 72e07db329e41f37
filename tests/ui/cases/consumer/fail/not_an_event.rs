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

/// Serialisable, but no variant of an event enum wraps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PaymentTaken {
    amount: u64,
}

struct Payments;

#[consumer]
impl Payments {
    async fn on_taken(&self, event: &PaymentTaken) -> Result<(), String> {
        let _ = event.amount;
        Ok(())
    }
}

fn main() {}
