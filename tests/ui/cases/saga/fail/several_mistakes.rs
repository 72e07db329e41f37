use dtx::saga;
use dtx::saga::{StepContext, StepError};
use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize)]
struct Checkout {
    reserved: bool,
    charged: bool,
}

#[saga(deadline = 60)]
impl Checkout {
    #[step(name = "PAY", compensate = release)]
    fn reserve(&mut self, _ctx: &StepContext) -> Result<(), StepError> {
        self.reserved = true;
        Ok(())
    }

    #[step(name = "PAY", await_timeout_secs = 60)]
    async fn charge(&self, _ctx: StepContext) -> Result<(), StepError> {
        Ok(())
    }
}

fn main() {}
