use dtx::{Aggregate, Apply, Id};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Opened {}

#[derive(Debug, Clone, Serialize, Deserialize, Aggregate)]
#[aggregate(event = Opened)]
struct Ticket {
    id: Id<Ticket>,
    open: bool,
}

impl Apply<Opened> for Ticket {
    fn apply(&mut self, _: &Opened) {}
}

fn main() {}
