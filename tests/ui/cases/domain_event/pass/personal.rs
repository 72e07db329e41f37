//! Personal fields: the subject named by a field of any id type, a tuple payload's field by
//! index, personal values in collections and options.

use dtx::personal::Personal;
use dtx::{DomainEvent, Id};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Registered {
    customer_id: dtx::Uuid,
    name: Personal<String>,
    phones: Vec<Personal<String>>,
    birthday: Option<Personal<String>>,
    tier: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Renamed(u64, Personal<String>);

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Reviewed {
    reviewer: Id<Registered>,
    note: Personal<String>,
}

#[derive(Debug, Clone, DomainEvent)]
enum CustomerEvent {
    #[event(personal(subject = customer_id))]
    Registered(Registered),
    #[event(name = "customer.renamed", version = 2, personal(subject = 0))]
    Renamed(Renamed),
    #[event(personal(subject = reviewer))]
    Reviewed(Reviewed),
}

fn main() {
    let event = CustomerEvent::Renamed(Renamed(7, Personal::new("Ada".to_owned())));
    let payload = dtx::DomainEvent::to_payload(&event).expect("encodes");
    // In clear until a store seals it, marked with its subject.
    assert_eq!(payload.get(), r#"[7,{"dtx:personal":"7","value":"Ada"}]"#);
}
