//! Every option of `#[dtx::circuit_breaker]`, on a free fn and a method, with `#[dtx::retry]`
//! and `#[dtx::trace]`.

use dtx::breaker::{BreakerOpen, BreakerRegistry};
use std::sync::LazyLock;
use std::time::Duration;

#[derive(Debug)]
enum PaymentError {
    Declined,
    Open(BreakerOpen),
}

impl From<BreakerOpen> for PaymentError {
    fn from(open: BreakerOpen) -> Self {
        Self::Open(open)
    }
}

impl PaymentError {
    fn is_outage(&self) -> bool {
        !matches!(self, Self::Declined)
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Open(open) => Some(open.retry_after()),
            Self::Declined => None,
        }
    }
}

static BREAKERS: LazyLock<BreakerRegistry> = LazyLock::new(BreakerRegistry::new);

#[dtx::circuit_breaker(
    name = "payments",
    failure_threshold = 3,
    failure_rate = 0.5,
    window_secs = 30,
    minimum_calls = 20,
    open_secs = 10,
    half_open_probes = 2,
    is_failure = PaymentError::is_outage,
    registry = *BREAKERS,
    crate = ::dtx,
)]
#[dtx::retry(attempts = 3, when = PaymentError::is_outage, retry_after = PaymentError::retry_after)]
#[dtx::trace(name = "payments.charge")]
async fn charge(amount: u64) -> Result<u64, PaymentError> {
    if amount == 0 {
        return Err(PaymentError::Declined);
    }
    Ok(amount)
}

struct Payments {
    fee: u64,
}

impl Payments {
    #[dtx::circuit_breaker(name = "payments.fees")]
    async fn fee(&self, amount: &u64) -> Result<u64, PaymentError> {
        Ok(amount * self.fee / 100)
    }
}

fn main() {
    tokio::runtime::Runtime::new()
        .expect("a runtime")
        .block_on(async {
            assert_eq!(charge(5).await.expect("paid"), 5);
            assert!(matches!(charge(0).await, Err(PaymentError::Declined)));
            assert_eq!(Payments { fee: 10 }.fee(&200).await.expect("a fee"), 20);
        });
}
