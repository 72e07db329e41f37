// Every mistake is reported at once, each under its own tokens.
use dtx::{Aggregate, Id};

#[derive(Debug, Clone, Aggregate)]
#[aggregate(snapshot_every = 0, name = "")]
struct Ticket<T> {
    number: Id<Ticket<T>>,
    tags: Vec<T>,
}

fn main() {}
