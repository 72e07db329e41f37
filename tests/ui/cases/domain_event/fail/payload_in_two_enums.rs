use dtx::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Deposited {
    amount: u64,
}

#[derive(Debug, Clone, DomainEvent)]
enum AccountEvent {
    Deposited(Deposited),
}

/// Wraps `Deposited` too: both enums implement `dtx::projection::Event` for it, unless one opts
/// out with `#[event(payload_impl = false)]`.
#[derive(Debug, Clone, DomainEvent)]
enum WalletEvent {
    Deposited(Deposited),
}

fn main() {}
