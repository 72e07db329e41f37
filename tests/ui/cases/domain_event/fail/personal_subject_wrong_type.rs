use dtx::DomainEvent;
use dtx::personal::Personal;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct CustomerRegistered {
    score: f64,
    name: Personal<String>,
}

#[derive(DomainEvent)]
enum CustomerEvent {
    #[event(personal(subject = score))]
    Registered(CustomerRegistered),
}

fn main() {}
