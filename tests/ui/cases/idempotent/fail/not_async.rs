use dtx::idempotency::IdempotencyError;
use dtx::idempotent;

#[idempotent(key = id)]
fn charge(id: u32) -> Result<u32, IdempotencyError> {
    Ok(id)
}

fn main() {
    let _ = charge(1);
}
