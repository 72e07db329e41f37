use dtx::idempotency::IdempotencyError;
use dtx::idempotent;

const REQUEST: &str = "req-1";

#[idempotent(key = REQUEST)]
async fn charge(order: u32, amount: u64) -> Result<u64, IdempotencyError> {
    Ok(u64::from(order) + amount)
}

fn main() {}
