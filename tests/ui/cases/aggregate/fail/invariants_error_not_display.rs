use dtx::{Aggregate, Apply, DomainEvent, Id};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Opened {}

#[derive(Debug, Clone, DomainEvent)]
enum TicketEvent {
    Opened(Opened),
}

#[derive(Debug)]
struct TicketClosed;

#[derive(Debug, Clone, Serialize, Deserialize, Aggregate)]
#[aggregate(event = TicketEvent, invariants = Self::check)]
struct Ticket {
    id: Id<Ticket>,
    open: bool,
}

impl Ticket {
    fn check(&self) -> Result<(), TicketClosed> {
        if self.open { Ok(()) } else { Err(TicketClosed) }
    }
}

impl Apply<Opened> for Ticket {
    fn apply(&mut self, _: &Opened) {}
}

fn main() {}
