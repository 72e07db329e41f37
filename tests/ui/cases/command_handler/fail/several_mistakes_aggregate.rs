// Every mistake in every method is reported at once, each under its own tokens.
use dtx::{Aggregate, Apply, DomainEvent, Id, command_handler};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Opened {}

#[derive(Debug, Clone, DomainEvent)]
enum TicketEvent {
    Opened(Opened),
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, Aggregate)]
#[aggregate(event = TicketEvent)]
struct Ticket {
    id: Id<Ticket>,
    open: bool,
}

impl Apply<Opened> for Ticket {
    fn apply(&mut self, _: &Opened) {}
}

#[derive(Debug, Clone)]
struct OpenTicket {
    ticket_id: Id<Ticket>,
}

#[derive(Debug, Clone)]
struct CloseTicket {
    ticket_id: Id<Ticket>,
}

#[command_handler]
impl Ticket {
    #[command(target = ticket_id, retry = 3)]
    async fn open(cmd: OpenTicket) -> Result<Opened, std::io::Error> {
        let _ = cmd;
        Ok(Opened {})
    }

    fn close(&mut self, cmd: CloseTicket) -> Option<Opened> {
        let _ = cmd;
        self.open = false;
        None
    }

    fn is_open(&self) -> bool {
        self.open
    }
}

fn main() {}
