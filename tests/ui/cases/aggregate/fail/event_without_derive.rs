use dtx::{Aggregate, Apply, DecodeError, DomainEvent, Id};
use serde::{Deserialize, Serialize};
// A user would depend on serde_json; this package keeps its dependencies minimal.
use dtx::__private::serde_json;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Opened {}

/// A hand-written `DomainEvent`: it lacks the dispatch to `Apply` impls that the derive generates.
#[derive(Debug, Clone)]
struct TicketEvent(Opened);

impl DomainEvent for TicketEvent {
    const EVENT_TYPES: &'static [&'static str] = &["Opened"];

    fn event_type(&self) -> &'static str {
        "Opened"
    }

    fn schema_version(&self) -> u32 {
        1
    }

    fn to_payload(&self) -> Result<Box<serde_json::value::RawValue>, serde_json::Error> {
        unimplemented!()
    }

    fn from_payload(_: &str, _: u32, _: &str) -> Result<Self, DecodeError> {
        unimplemented!()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Aggregate)]
#[aggregate(event = TicketEvent)]
struct Ticket {
    id: Id<Ticket>,
    open: bool,
}

impl Apply<Opened> for Ticket {
    fn apply(&mut self, _: &Opened) {}
}

fn main() {}
