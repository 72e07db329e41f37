//! Order fulfillment as a saga: reserve inventory, charge the payment, create the shipment. A
//! shipment that cannot be made compensates the payment and the reservation, in that order.
//!
//! The "services" are in-process fakes that print what they do and honour idempotency keys,
//! as real ones must: a step retried after a crash passes the same key and gets the same result.

use crate::order::OrderId;
use dtx::saga::{StepContext, StepError};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A fake remote service: remembers the result of every idempotency key it has seen.
#[derive(Debug, Clone, Default)]
pub struct FakeService {
    name: &'static str,
    seen: Arc<Mutex<HashMap<String, String>>>,
    flaky: Arc<Mutex<u32>>,
}

impl FakeService {
    /// A service with a name for its log lines.
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            ..Self::default()
        }
    }

    /// Makes the next `n` calls fail as a network error would.
    pub fn fail_next(&self, n: u32) {
        *self
            .flaky
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = n;
    }

    /// Performs `what` once per idempotency key; repeats return the first result.
    pub fn call(&self, key: &str, what: &str) -> Result<String, StepError> {
        {
            let mut flaky = self
                .flaky
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if *flaky > 0 {
                *flaky -= 1;
                println!(
                    "   [{}] {what}: connection reset (will be retried)",
                    self.name
                );
                return Err(StepError::transient(format!("{} unavailable", self.name)));
            }
        }
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(result) = seen.get(key) {
            println!(
                "   [{}] {what}: already done under this key, {result}",
                self.name
            );
            return Ok(result.clone());
        }
        let result = format!("{}-{}", self.name.to_uppercase(), seen.len() + 1);
        println!("   [{}] {what} -> {result}", self.name);
        seen.insert(key.to_owned(), result.clone());
        Ok(result)
    }

    /// How many distinct operations it performed.
    pub fn performed(&self) -> usize {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }
}

/// The services the fulfillment saga calls, given to the orchestrator as shared state.
#[derive(Debug, Clone)]
pub struct Services {
    /// Stock.
    pub warehouse: FakeService,
    /// Money.
    pub payments: FakeService,
    /// Parcels.
    pub shipping: FakeService,
}

impl Default for Services {
    fn default() -> Self {
        Self {
            warehouse: FakeService::new("warehouse"),
            payments: FakeService::new("payments"),
            shipping: FakeService::new("shipping"),
        }
    }
}

fn services(ctx: &StepContext) -> Result<Services, StepError> {
    ctx.state::<Services>()
        .ok_or_else(|| StepError::permanent("the orchestrator was not given `Services`"))
}

/// The fulfillment saga's data, persisted after every step.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Fulfillment {
    /// The order.
    pub order_id: OrderId,
    /// What to charge, in cents.
    pub total_cents: u64,
    /// Where to ship; `"nowhere"` cannot be shipped to.
    pub address: String,
    /// The warehouse's reservation.
    pub reservation: Option<String>,
    /// The payment.
    pub payment: Option<String>,
    /// The shipment.
    pub shipment: Option<String>,
}

#[allow(
    clippy::unused_async,
    reason = "the fake services answer synchronously"
)]
#[dtx::saga(name = "OrderFulfillment", max_retries = 3, step_timeout_secs = 30)]
impl Fulfillment {
    #[step(compensate = release_inventory)]
    async fn reserve_inventory(&mut self, ctx: &StepContext) -> Result<(), StepError> {
        let what = format!("reserve stock for order {}", short(&self.order_id));
        self.reservation = Some(
            services(ctx)?
                .warehouse
                .call(&ctx.idempotency_key(), &what)?,
        );
        Ok(())
    }

    async fn release_inventory(&mut self, ctx: &StepContext) -> Result<(), StepError> {
        let what = format!(
            "release {}",
            self.reservation.as_deref().unwrap_or("nothing")
        );
        services(ctx)?
            .warehouse
            .call(&ctx.idempotency_key(), &what)?;
        self.reservation = None;
        Ok(())
    }

    #[step(compensate = refund_payment)]
    async fn charge_payment(&mut self, ctx: &StepContext) -> Result<(), StepError> {
        let what = format!(
            "charge {}.{:02}",
            self.total_cents / 100,
            self.total_cents % 100
        );
        self.payment = Some(
            services(ctx)?
                .payments
                .call(&ctx.idempotency_key(), &what)?,
        );
        Ok(())
    }

    async fn refund_payment(&mut self, ctx: &StepContext) -> Result<(), StepError> {
        let what = format!("refund {}", self.payment.as_deref().unwrap_or("nothing"));
        services(ctx)?
            .payments
            .call(&ctx.idempotency_key(), &what)?;
        self.payment = None;
        Ok(())
    }

    #[step]
    async fn create_shipment(&mut self, ctx: &StepContext) -> Result<(), StepError> {
        if self.address == "nowhere" {
            println!("   [shipping] cannot ship to {:?}", self.address);
            return Err(StepError::permanent("undeliverable address"));
        }
        let what = format!("ship to {}", self.address);
        self.shipment = Some(
            services(ctx)?
                .shipping
                .call(&ctx.idempotency_key(), &what)?,
        );
        Ok(())
    }
}

fn short(id: &OrderId) -> String {
    let text = id.to_string();
    text[text.len() - 8..].to_owned()
}
