use dtx::{Aggregate, Apply, DomainEvent, Id};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Opened {}

#[derive(Debug, Clone, DomainEvent)]
enum TicketEvent {
    Opened(Opened),
}

#[derive(Debug, Clone, Aggregate)]
#[aggregate(event = TicketEvent)]
enum Ticket {
    Open { id: Id<Ticket> },
    Closed { id: Id<Ticket> },
}

impl Apply<Opened> for Ticket {
    fn apply(&mut self, _: &Opened) {}
}

fn main() {}
