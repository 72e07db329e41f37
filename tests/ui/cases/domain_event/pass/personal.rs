//! Personal fields: the subject named by a field of any id type, a tuple payload's field by
//! index, personal values in collections and options.

use dtx::personal::Personal;
use dtx::{DomainEvent, Id};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Registered {
    pub customer_id: dtx::Uuid,
    pub name: Personal<String>,
    pub phones: Vec<Personal<String>>,
    pub birthday: Option<Personal<String>>,
    pub tier: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Renamed(pub u64, pub Personal<String>);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reviewed {
    pub reviewer: Id<Registered>,
    pub note: Personal<String>,
}

#[derive(Debug, Clone, DomainEvent)]
pub enum CustomerEvent {
    #[event(personal(subject = customer_id))]
    Registered(Registered),
    #[event(name = "customer.renamed", version = 2, personal(subject = 0))]
    Renamed(Renamed),
    #[event(personal(subject = reviewer))]
    Reviewed(Reviewed),
}

fn main() {
    let event = CustomerEvent::Renamed(Renamed(7, Personal::new("Ada".to_owned())));
    let payload = dtx::DomainEvent::to_payload(&event).unwrap();
    // In clear until a store seals it, marked with its subject.
    assert_eq!(payload.get(), r#"[7,{"dtx:personal":"7","value":"Ada"}]"#);
}
