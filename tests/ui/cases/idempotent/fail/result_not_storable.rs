use dtx::idempotency::IdempotencyError;
use dtx::idempotent;

pub struct Receipt {
    pub amount: u64,
}

#[idempotent(key = id)]
async fn charge(id: u32) -> Result<Receipt, IdempotencyError> {
    Ok(Receipt {
        amount: u64::from(id),
    })
}

fn main() {}
