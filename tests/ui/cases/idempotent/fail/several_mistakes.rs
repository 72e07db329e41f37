use dtx::idempotency::IdempotencyError;
use dtx::idempotent;

#[idempotent(key = 7, ttl_secs = 0)]
fn charge(id: u32) -> Result<u32, IdempotencyError> {
    Ok(id)
}

fn main() {}
