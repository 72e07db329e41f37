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

use dtx::UnitOfWork;

#[consumer]
impl Payments {
    async fn on_placed(&self, event: &OrderPlaced) -> Result<(), String> {
        let _ = &event.customer;
        Ok(())
    }

    #[clear]
    async fn clear(&self, uow: &mut dyn UnitOfWork) -> Result<(), String> {
        let _ = uow;
        Ok(())
    }
}

fn main() {}
