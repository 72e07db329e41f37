use dtx::idempotency::IdempotencyError;
use dtx::idempotent;

#[idempotent(ttl_secs = 60)]
async fn charge(id: u32) -> Result<u32, IdempotencyError> {
    Ok(id)
}

fn main() {}
