use dtx::{Aggregate, Apply, DomainEvent, Id};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Opened {}

#[derive(Debug, Clone, DomainEvent)]
enum TicketEvent {
    Opened(Opened),
}

#[derive(Debug, Clone, Serialize, Deserialize, Aggregate)]
#[aggregate(event = TicketEvent)]
struct Ticket {
    number: Id<Ticket>,
    open: bool,
}

impl Apply<Opened> for Ticket {
    fn apply(&mut self, _: &Opened) {}
}

fn main() {}
