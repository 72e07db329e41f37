//! A `#[derive(Aggregate)]` with a mistake reports that mistake alone: the code that uses the
//! aggregate still compiles against a stand-in `Aggregate` impl.
use dtx::{Aggregate, AggregateRoot, Apply, DomainEvent, Id};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Opened {}

#[derive(Debug, Clone, DomainEvent)]
enum TicketEvent {
    Opened(Opened),
}

#[derive(Debug, Clone, Serialize, Deserialize, Aggregate)]
#[aggregate(event = TicketEvent, snapshot_evry = 10)]
struct Ticket {
    id: Id<Ticket>,
    open: bool,
}

impl Apply<Opened> for Ticket {
    fn apply(&mut self, _: &Opened) {
        self.open = true;
    }
}

fn main() {
    let ticket = AggregateRoot::<Ticket>::new(Id::new());
    let _: &Id<Ticket> = ticket.state().id();
    let _: Vec<TicketEvent> = vec![Opened {}.into()];
}
