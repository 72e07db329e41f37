use dtx::idempotency::{IdempotencyError, IdempotencyStore, MemoryIdempotencyStore};
use dtx::idempotent;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, LazyLock};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Receipt {
    pub(crate) amount: u64,
}

#[derive(Debug)]
pub(crate) enum PayError {
    Idempotency(IdempotencyError),
}

impl From<IdempotencyError> for PayError {
    fn from(error: IdempotencyError) -> Self {
        Self::Idempotency(error)
    }
}

static STORE: LazyLock<MemoryIdempotencyStore> = LazyLock::new(MemoryIdempotencyStore::new);

/// The minimal form: a key from an argument, the process-wide store.
#[idempotent(key = request_id)]
async fn charge(request_id: &str, amount: u64) -> Result<Receipt, PayError> {
    Ok(Receipt { amount })
}

/// Every option; the key uses inline format arguments.
#[idempotent(
    key = format!("{tenant}/{id}"),
    ttl_secs = 60,
    lock_timeout_secs = 5,
    store = *STORE,
    scope = tenant,
    fingerprint = amount,
    crate = ::dtx,
)]
pub(crate) async fn refund(tenant: &str, id: u32, amount: u64) -> Result<Receipt, PayError> {
    if amount == 0 {
        return Ok(Receipt { amount: 1 });
    }
    let doubled = amount
        .checked_mul(2)
        .ok_or(IdempotencyError::storage("overflow"))?;
    Ok(Receipt { amount: doubled })
}

pub(crate) struct Adder {
    store: Arc<dyn IdempotencyStore>,
    prefix: String,
}

impl Adder {
    /// A method: the key may use `self`; the store is a field; patterns bind arguments.
    #[idempotent(key = format!("{}-{a}-{b}", self.prefix), store = self.store)]
    async fn add(&self, (a, b): (u32, u32)) -> Result<u32, PayError> {
        Ok(a + b)
    }
}

fn main() {
    tokio::runtime::Runtime::new()
        .expect("a runtime")
        .block_on(async {
            assert_eq!(charge("r-1", 5).await.expect("runs"), Receipt { amount: 5 });
            assert_eq!(
                refund("t", 1, 4).await.expect("runs"),
                Receipt { amount: 8 }
            );
            let adder = Adder {
                store: Arc::new(MemoryIdempotencyStore::new()),
                prefix: "sum".to_owned(),
            };
            assert_eq!(adder.add((2, 3)).await.expect("runs"), 5);
        });
}
