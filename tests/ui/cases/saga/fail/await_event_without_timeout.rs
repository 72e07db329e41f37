use dtx::saga;
use dtx::saga::{StepContext, StepError};
use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize)]
struct Checkout {
    requested: bool,
}

#[saga]
impl Checkout {
    #[step(await_event = "PaymentConfirmed")]
    async fn request_payment(&mut self, _ctx: &StepContext) -> Result<(), StepError> {
        self.requested = true;
        Ok(())
    }
}

fn main() {}
