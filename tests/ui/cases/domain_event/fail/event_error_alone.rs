//! A `#[derive(DomainEvent)]` with a mistake reports that mistake alone: the aggregate that
//! applies the events and the code converting payloads still compile against stand-in impls.
use dtx::{Aggregate, Apply, DomainEvent, Id};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Opened {}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Closed {}

#[derive(Debug, Clone, DomainEvent)]
enum TicketEvent {
    Opened(Opened),
    #[event(name = "Opened")]
    Closed(Closed),
}

#[derive(Debug, Clone, Serialize, Deserialize, Aggregate)]
#[aggregate(event = TicketEvent)]
struct Ticket {
    id: Id<Ticket>,
    open: bool,
}

impl Apply<Opened> for Ticket {
    fn apply(&mut self, _: &Opened) {
        self.open = true;
    }
}

impl Apply<Closed> for Ticket {
    fn apply(&mut self, _: &Closed) {
        self.open = false;
    }
}

fn main() {
    let _: TicketEvent = Closed {}.into();
    let _ = <TicketEvent as DomainEvent>::EVENT_TYPES;
}
