use dtx::idempotency::IdempotencyError;
use dtx::idempotent;

pub struct Payments {
    pub pool: String,
}

impl Payments {
    #[idempotent(key = id, store = self.pool)]
    async fn charge(&self, id: u32) -> Result<u32, IdempotencyError> {
        Ok(id)
    }
}

fn main() {}
