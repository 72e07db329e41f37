use dtx::saga;
use dtx::saga::{StepContext, StepError};
use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize)]
struct Checkout {
    reserved: bool,
    charged: bool,
}

#[saga]
impl Checkout {
    #[step(compensate = charge)]
    async fn reserve(&mut self, _ctx: &StepContext) -> Result<(), StepError> {
        self.reserved = true;
        Ok(())
    }

    #[step]
    async fn charge(&mut self, _ctx: &StepContext) -> Result<(), StepError> {
        self.charged = true;
        Ok(())
    }
}

fn main() {}
